// Hugging Face model directories: config.json plus model.safetensors with the
// tensor names and config keys of transformers' GPT2LMHeadModel (model.arch
// gpt2) and LlamaForCausalLM (llama), to and from lowband's models.
//
// Names: gpt2 "tok_emb.weight" is "transformer.wte.weight", "blocks.<l>.
// attn.qkv.weight" is "transformer.h.<l>.attn.c_attn.weight" (GPT-2 keeps
// its linear layers as Conv1D, [in, out]: transposed), ...; llama
// "blocks.<l>.attn.q.weight" is "model.layers.<l>.self_attn.q_proj.weight"
// (same orientation), ... (hf_model.cc has the table). GPT-2's output head
// is the token embedding (tied), so no "lm_head.weight" is written, and one
// in a file must equal the embedding. Torch-free; any thread.
#pragma once

#include <string>

#include "base/status.h"
#include "codec/params.h"
#include "config/config.h"
#include "hf/safetensors.h"

namespace lowband {

// config.json for `model` (the architecture's keys, float32, no dropout).
std::string HfConfigJson(const ModelConfig& model);
// The model a config.json describes: model_type gpt2 or llama, with the
// keys lowband models (others that change the function, e.g. a GPT-2
// activation other than exact GELU, biased Llama attention or rope scaling,
// are refused: InvalidArgument naming the key).
StatusOr<ModelConfig> ParseHfConfig(const std::string& json, const std::string& source);

// OK when `file` (a directory's config.json, `source`) describes the
// campaign's `model`: the same architecture and widths (llama: a context up
// to the file's max_position_embeddings); else InvalidArgument listing each
// key that differs.
Status CheckHfModel(const ModelConfig& model, const ModelConfig& file, const std::string& source);

// Writes DIR/config.json and DIR/model.safetensors (values as `dtype`) for
// `params`, whose layout must be the model's (ModelLayout(model)).
Status ExportHf(const ModelConfig& model, const ParamSet& params, const std::string& dir, StDtype dtype);

// DIR/config.json.
StatusOr<ModelConfig> ReadHfConfig(const std::string& dir);
// DIR/model.safetensors as the parameters of `model` in `layout`
// (ModelLayout(model)): every tensor present with its shape, converted to
// fp32, nothing left over. InvalidArgument naming the file and the tensor.
StatusOr<ParamSet> ReadHfParams(const std::string& dir, const ModelConfig& model, const ParamLayout& layout);

}  // namespace lowband
