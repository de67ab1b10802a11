// Wire vocabulary that campaign files also name: the update codecs, the
// dtype of pipeline boundary tensors, the precision and the architecture. Here, not in config/, so that the
// protocol depends on nothing but base/; config/config.h includes this.
// Value types and pure functions, any thread.
#pragma once

namespace lowband {

// Update codecs (codec/codec.h has the wire formats). kSparseFp32 and
// kSparse2Bit are downlink formats only (the coordinator's sparse aggregate,
// and its compressed form: codec.downlink); no upload uses them.
enum class CodecKind { kDenseFp32, kDenseBf16, kInt8, kSparseLoCo, kSparseFp32, kSparse2Bit };
// The name campaign files, logs and metrics use ("dense_fp32", "sparseloco", ...).
const char* CodecName(CodecKind kind);

// Numbers crossing a pipeline stage boundary (schemas/round.fbs WireDtype).
enum class WireDtype { kFp32, kBf16, kFp16 };
const char* WireDtypeName(WireDtype d);  // "fp32", "bf16", "fp16"

// Arithmetic of the inner steps (training.precision). fp32: full fp32;
// tf32: fp32 tensors, TF32 tensor-core matmuls on CUDA; bf16: autocast
// (matmuls and attention in bf16; fp32 master weights, optimizer state,
// norms and loss). auto: bf16 on CUDA, fp32 on the CPU: each site resolves
// it for its own device.
enum class Precision { kAuto, kFp32, kTf32, kBf16 };
const char* PrecisionName(Precision p);  // "auto", "fp32", "tf32", "bf16"

// model.arch (schemas/campaign.fbs ModelSpec.arch): GPT-2 (LayerNorm,
// learned positions, GELU MLP, biases, output head tied to the token
// embedding) or Llama-style (RMSNorm, rotary positions, SwiGLU MLP,
// grouped-query attention, no biases, untied output head).
enum class ModelArch { kGpt2, kLlama };
const char* ModelArchName(ModelArch arch);  // "gpt2", "llama"

}  // namespace lowband
