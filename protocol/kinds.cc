// The names of the wire enums, as campaign files spell them (and logs,
// metrics and the wire's human-readable fields show them).
#include "protocol/kinds.h"

namespace lowband {

const char* WireDtypeName(WireDtype d) {
  switch (d) {
    case WireDtype::kFp32: return "fp32";
    case WireDtype::kBf16: return "bf16";
    case WireDtype::kFp16: return "fp16";
  }
  return "unknown";
}

const char* PrecisionName(Precision p) {
  switch (p) {
    case Precision::kAuto: return "auto";
    case Precision::kFp32: return "fp32";
    case Precision::kTf32: return "tf32";
    case Precision::kBf16: return "bf16";
  }
  return "unknown";
}

const char* CodecName(CodecKind kind) {
  switch (kind) {
    case CodecKind::kDenseFp32: return "dense_fp32";
    case CodecKind::kDenseBf16: return "dense_bf16";
    case CodecKind::kInt8: return "int8";
    case CodecKind::kSparseLoCo: return "sparseloco";
    case CodecKind::kSparseFp32: return "sparse_fp32";
    case CodecKind::kSparse2Bit: return "sparse_2bit";
  }
  return "unknown";
}

const char* ModelArchName(ModelArch arch) { return arch == ModelArch::kLlama ? "llama" : "gpt2"; }

}  // namespace lowband
