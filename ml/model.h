// The decoder-only language model in LibTorch's C++ API, in one of two
// architectures (model.arch):
//   gpt2:  token and position embeddings, pre-norm blocks (LayerNorm, causal
//          multi-head self-attention with biases, LayerNorm, GELU MLP),
//          final LayerNorm, output head tied to the token embedding;
//   llama: token embedding, pre-norm blocks (RMSNorm, causal grouped-query
//          attention with rotary positions, RMSNorm, SwiGLU MLP), final
//          RMSNorm, untied output head; no biases.
// Deterministic for a seed. Includes LibTorch: only the torch targets
// include this header; everyone else uses model_init.h.
#pragma once

#include <torch/torch.h>

#include "config/config.h"
#include "codec/params.h"

namespace lowband {

// Generation's memory: the keys and values of the tokens decoded so far,
// per layer ([B, key/value heads, T, head size]). Start empty; every
// Forward with it appends the new tokens' and advances `length` (the next
// token's position).
struct LayerCache {
  torch::Tensor k, v;
};
struct KvCache {
  std::vector<LayerCache> layers;
  int64_t length = 0;
};

// RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in fp32 and
// returned in x's dtype (as Hugging Face's LlamaRMSNorm).
class RmsNormImpl : public torch::nn::Module {
 public:
  RmsNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RmsNorm);

class LmImpl : public torch::nn::Module {
 public:
  explicit LmImpl(const ModelConfig& config);
  // tokens: [B, T] int64 with T <= context. Returns logits [B, T, vocab].
  torch::Tensor forward(const torch::Tensor& tokens);
  // The same for tokens at positions cache->length.. (generation: the
  // prompt, then one token at a time), remembering their keys and values;
  // the positions must stay within the context. Same logits as forward on
  // the whole sequence, up to rounding. A null cache: forward.
  torch::Tensor Forward(const torch::Tensor& tokens, KvCache* cache);
  // Mean cross-entropy of next-token prediction.
  torch::Tensor Loss(const torch::Tensor& tokens, const torch::Tensor& targets);
  const ModelConfig& config() const { return config_; }

 private:
  ModelConfig config_;
  torch::nn::Embedding tok_emb_{nullptr};
  torch::nn::Embedding pos_emb_{nullptr};  // gpt2
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm ln_f_{nullptr};      // gpt2
  RmsNorm norm_{nullptr};                   // llama: the final RMSNorm
  torch::nn::Linear head_{nullptr};         // llama: the untied output head
  torch::Tensor rope_cos_, rope_sin_;       // llama: [context, head size] buffers
};
TORCH_MODULE(Lm);

// Builds the model with torch::manual_seed(seed): N(0, 0.02) weights, zero
// biases, unit norm gains, the projections into the residual stream scaled
// by 1/sqrt(2 * layers) (GPT-2's init, for both architectures).
Lm MakeLm(const ModelConfig& config, uint64_t seed);

// One pipeline stage of the same architecture (docs/design.md 3.3, ResBM). Stage
// 0 holds the embeddings, the last stage the final LayerNorm and an untied
// output head; in between, `blocks` transformer blocks starting at block
// `first_block`. At a boundary with ratio > 1 the sending stage ends with the
// residual encoder z = E(LN(x)) + x[..., :b] and the receiving stage starts
// with x_hat = D(z) + pad(z), b = d_model / ratio; E and D are two-layer GELU
// MLPs whose output layers start near zero, so a fresh boundary is a rank-b
// identity. LN is a parameter-free LayerNorm: the residual stream's scale
// grows with depth, and E on the normalised stream trained to a lower loss
// (bench/resbm_quality at ratio 128: +7.3% against ratio 1 instead of +9.2%).
// ratio 1: no bottleneck, x crosses as it is.
struct StageSpec {
  int stage = 0;
  int stages = 1;
  int first_block = 0;
  int blocks = 0;
  int ratio = 1;
};

class GptStageImpl : public torch::nn::Module {
 public:
  GptStageImpl(const ModelConfig& config, const StageSpec& spec);
  // Stage 0: tokens [B, T] int64. Later stages: the boundary tensor z
  // [B, T, b] from the previous stage. Returns z for the next stage, or
  // logits [B, T, vocab] from the last stage.
  torch::Tensor forward(const torch::Tensor& input);
  // Residual encoder / decoder of a boundary (undefined tensors' identity
  // when ratio is 1); exposed for tests.
  torch::Tensor Encode(const torch::Tensor& x);
  torch::Tensor Decode(const torch::Tensor& z);
  int64_t boundary_width() const { return b_; }
  bool first() const { return spec_.stage == 0; }
  bool last() const { return spec_.stage == spec_.stages - 1; }

 private:
  ModelConfig config_;
  StageSpec spec_;
  int64_t b_;
  torch::nn::Embedding tok_emb_{nullptr};
  torch::nn::Embedding pos_emb_{nullptr};
  torch::nn::Linear dec_fc1_{nullptr}, dec_fc2_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::Linear enc_fc1_{nullptr}, enc_fc2_{nullptr};
  torch::nn::LayerNorm ln_f_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(GptStage);

// Builds stage `spec.stage` seeded by (seed, stage): every replica of a
// stage starts from the same parameters.
GptStage MakeGptStage(const ModelConfig& config, const StageSpec& spec, uint64_t seed);
// A boundary tensor in the wire dtype (fp32, bf16 or fp16) and back to fp32.
torch::Tensor ToWire(const torch::Tensor& z, WireDtype dtype);
torch::Tensor FromWire(const torch::Tensor& z);

// Parameter layout in a fixed order (named_parameters order).
ParamLayout LayoutOf(Lm& model);
// Copies all parameters into a flat CPU fp32 ParamSet.
ParamSet ExportParams(Lm& model);
// Copies values into the model's parameters (any device). Layout must match.
Status ImportParams(Lm& model, const ParamSet& params);

}  // namespace lowband
