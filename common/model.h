// GPT-style decoder-only transformer in LibTorch's C++ API: token and
// position embeddings, pre-norm blocks (LayerNorm, causal multi-head
// self-attention, LayerNorm, GELU MLP), final LayerNorm, output head tied to
// the token embedding. Deterministic for a seed. Includes LibTorch: only the
// torch targets include this header; everyone else uses model_init.h.
#pragma once

#include <torch/torch.h>

#include "common/config.h"
#include "common/params.h"

namespace lowband {

class GptImpl : public torch::nn::Module {
 public:
  explicit GptImpl(const ModelConfig& config);
  // tokens: [B, T] int64 with T <= context. Returns logits [B, T, vocab].
  torch::Tensor forward(const torch::Tensor& tokens);
  // Mean cross-entropy of next-token prediction.
  torch::Tensor Loss(const torch::Tensor& tokens, const torch::Tensor& targets);
  const ModelConfig& config() const { return config_; }

 private:
  ModelConfig config_;
  torch::nn::Embedding tok_emb_{nullptr};
  torch::nn::Embedding pos_emb_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm ln_f_{nullptr};
};
TORCH_MODULE(Gpt);

// Builds the model with torch::manual_seed(seed) and the GPT-2 style init.
Gpt MakeGpt(const ModelConfig& config, uint64_t seed);

// Parameter layout in a fixed order (named_parameters order).
ParamLayout LayoutOf(Gpt& model);
// Copies all parameters into a flat CPU fp32 ParamSet.
ParamSet ExportParams(Gpt& model);
// Copies values into the model's parameters (any device). Layout must match.
Status ImportParams(Gpt& model, const ParamSet& params);

}  // namespace lowband
