#include "ml/model.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <string>
#include <tuple>

#include <torch/version.h>

#include "ml/model_init.h"

namespace lowband {
namespace {

// LibTorch 2.0 brought scaled_dot_product_attention (flash and
// memory-efficient kernels on CUDA); 1.13 (Debian 12) builds the causal mask
// with masked_fill. Same result up to rounding.
#if TORCH_VERSION_MAJOR >= 2
#define LOWBAND_HAVE_SDPA 1
#else
#define LOWBAND_HAVE_SDPA 0
#endif

// The future-position mask of the masked path (true above the diagonal), a
// buffer so it follows the module across devices; undefined with SDPA.
torch::Tensor CausalMask(int context) {
#if LOWBAND_HAVE_SDPA
  static_cast<void>(context);
  return {};
#else
  return torch::ones({context, context}, torch::kBool).triu(1);
#endif
}

// softmax(q k^T / sqrt(hd) + causal mask) v over [B, heads, T, hd]: fused
// where LibTorch has it, masked on 1.13 (`mask` from CausalMask).
torch::Tensor CausalAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& mask) {
#if LOWBAND_HAVE_SDPA
  static_cast<void>(mask);
  return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true);
#else
  const int64_t t = q.size(2);
  auto att = torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  using torch::indexing::Slice;
  att = att.masked_fill(mask.index({Slice(0, t), Slice(0, t)}), -std::numeric_limits<float>::infinity());
  return torch::matmul(torch::softmax(att, -1), v);
#endif
}

// Attention of new queries q [B, h, Tq, hd] over every key so far k, v
// [B, h, Tk, hd] (the last Tq of which are the queries' own positions): a
// query sees the keys up to its own position.
torch::Tensor CachedAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const int64_t tq = q.size(2), tk = k.size(2);
  auto att = torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  if (tq > 1) {
    auto future = torch::ones({tq, tk}, torch::TensorOptions().dtype(torch::kBool).device(q.device())).triu(tk - tq + 1);
    att = att.masked_fill(future, -std::numeric_limits<float>::infinity());
  }
  return torch::matmul(torch::softmax(att, -1), v);
}

// Appends this step's keys and values to the layer's cache and returns all
// of them.
std::pair<torch::Tensor, torch::Tensor> Remember(LayerCache* cache, torch::Tensor k, torch::Tensor v) {
  if (cache->k.defined()) {
    k = torch::cat({cache->k, k}, 2);
    v = torch::cat({cache->v, v}, 2);
  }
  cache->k = k;
  cache->v = v;
  return {k, v};
}

// Causal multi-head self-attention with one fused qkv projection.
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(int d_model, int heads, int context) : heads_(heads) {
    qkv_ = register_module("qkv", torch::nn::Linear(d_model, 3 * d_model));
    proj_ = register_module("proj", torch::nn::Linear(d_model, d_model));
    if (auto mask = CausalMask(context); mask.defined()) mask_ = register_buffer("mask", mask);
  }

  // cache: generation (keys and values of earlier tokens, appended to).
  torch::Tensor forward(const torch::Tensor& x, LayerCache* cache = nullptr) {
    const int64_t b = x.size(0), t = x.size(1), c = x.size(2);
    const int64_t hd = c / heads_;
    auto qkv = qkv_->forward(x).chunk(3, /*dim=*/2);
    auto q = qkv[0].view({b, t, heads_, hd}).transpose(1, 2);
    auto k = qkv[1].view({b, t, heads_, hd}).transpose(1, 2);
    auto v = qkv[2].view({b, t, heads_, hd}).transpose(1, 2);
    torch::Tensor y;
    if (cache) {
      auto [ks, vs] = Remember(cache, k, v);
      y = CachedAttention(q, ks, vs);
    } else {
      y = CausalAttention(q, k, v, mask_);
    }
    return proj_->forward(y.transpose(1, 2).contiguous().view({b, t, c}));
  }

  torch::nn::Linear& proj() { return proj_; }

 private:
  int64_t heads_;
  torch::nn::Linear qkv_{nullptr};
  torch::nn::Linear proj_{nullptr};
  torch::Tensor mask_;
};
TORCH_MODULE(Attention);

// Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(int d_model, int heads, int context) {
    ln_1_ = register_module("ln_1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model})));
    attn_ = register_module("attn", Attention(d_model, heads, context));
    ln_2_ = register_module("ln_2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model})));
    mlp_fc_ = register_module("mlp_fc", torch::nn::Linear(d_model, 4 * d_model));
    mlp_proj_ = register_module("mlp_proj", torch::nn::Linear(4 * d_model, d_model));
  }

  torch::Tensor forward(torch::Tensor x, LayerCache* cache = nullptr) {
    x = x + attn_->forward(ln_1_->forward(x), cache);
    x = x + mlp_proj_->forward(torch::gelu(mlp_fc_->forward(ln_2_->forward(x))));
    return x;
  }

  // The two projections that write into the residual stream (GPT-2 scales
  // their init by 1/sqrt(2 * layers)).
  torch::Tensor attn_proj_weight() { return attn_->proj()->weight; }
  torch::Tensor mlp_proj_weight() { return mlp_proj_->weight; }

 private:
  torch::nn::LayerNorm ln_1_{nullptr};
  Attention attn_{nullptr};
  torch::nn::LayerNorm ln_2_{nullptr};
  torch::nn::Linear mlp_fc_{nullptr};
  torch::nn::Linear mlp_proj_{nullptr};
};
TORCH_MODULE(Block);

// Rotary position embedding tables for head size `hd` (Hugging Face's
// Llama convention: frequencies theta^(-2i/hd), the two halves of a head
// rotated together): cos and sin, [context, hd], fp32.
std::pair<torch::Tensor, torch::Tensor> RopeTables(int context, int64_t hd, double theta) {
  auto i = torch::arange(0, hd, 2, torch::kFloat64) / static_cast<double>(hd);
  auto inv_freq = torch::pow(theta, -i);
  auto pos = torch::arange(context, torch::kFloat64);
  auto freqs = torch::outer(pos, inv_freq);
  auto emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos().to(torch::kFloat32), emb.sin().to(torch::kFloat32)};
}

// x [B, heads, T, hd] rotated by position: x cos + rotate_half(x) sin.
torch::Tensor ApplyRope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  auto rotated = torch::cat({-x2, x1}, -1);
  return x * cos.to(x.scalar_type()) + rotated * sin.to(x.scalar_type());
}

// Causal grouped-query attention with rotary positions, no biases: `heads`
// query heads share `kv_heads` key/value heads (query head j reads key/value
// head j / (heads / kv_heads)).
class LlamaAttentionImpl : public torch::nn::Module {
 public:
  LlamaAttentionImpl(int d_model, int heads, int kv_heads, int context)
      : heads_(heads), kv_heads_(kv_heads), hd_(d_model / heads) {
    auto linear = [](int64_t in, int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
    q_ = register_module("q", linear(d_model, heads * hd_));
    k_ = register_module("k", linear(d_model, kv_heads * hd_));
    v_ = register_module("v", linear(d_model, kv_heads * hd_));
    o_ = register_module("o", linear(heads * hd_, d_model));
    if (auto mask = CausalMask(context); mask.defined()) mask_ = register_buffer("mask", mask);
  }

  // cos, sin: the rope tables' rows of the T positions of x; cache:
  // generation (keys and values of earlier tokens, appended to).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        LayerCache* cache = nullptr) {
    const int64_t b = x.size(0), t = x.size(1);
    auto q = ApplyRope(q_->forward(x).view({b, t, heads_, hd_}).transpose(1, 2), cos, sin);
    auto k = ApplyRope(k_->forward(x).view({b, t, kv_heads_, hd_}).transpose(1, 2), cos, sin);
    auto v = v_->forward(x).view({b, t, kv_heads_, hd_}).transpose(1, 2);
    if (cache) std::tie(k, v) = Remember(cache, k, v);
    if (kv_heads_ != heads_) {
      k = k.repeat_interleave(heads_ / kv_heads_, /*dim=*/1);
      v = v.repeat_interleave(heads_ / kv_heads_, /*dim=*/1);
    }
    auto y = cache ? CachedAttention(q, k, v) : CausalAttention(q, k, v, mask_);
    return o_->forward(y.transpose(1, 2).contiguous().view({b, t, heads_ * hd_}));
  }

  torch::Tensor o_weight() { return o_->weight; }

 private:
  int64_t heads_, kv_heads_, hd_;
  torch::nn::Linear q_{nullptr}, k_{nullptr}, v_{nullptr}, o_{nullptr};
  torch::Tensor mask_;
};
TORCH_MODULE(LlamaAttention);

// SwiGLU: down(silu(gate(x)) * up(x)), no biases.
class SwiGluImpl : public torch::nn::Module {
 public:
  SwiGluImpl(int64_t d_model, int64_t hidden) {
    auto linear = [](int64_t in, int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
    gate_ = register_module("gate", linear(d_model, hidden));
    up_ = register_module("up", linear(d_model, hidden));
    down_ = register_module("down", linear(hidden, d_model));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return down_->forward(torch::silu(gate_->forward(x)) * up_->forward(x));
  }
  torch::Tensor down_weight() { return down_->weight; }

 private:
  torch::nn::Linear gate_{nullptr}, up_{nullptr}, down_{nullptr};
};
TORCH_MODULE(SwiGlu);

// Llama block: x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)).
class LlamaBlockImpl : public torch::nn::Module {
 public:
  explicit LlamaBlockImpl(const ModelConfig& c) {
    attn_norm_ = register_module("attn_norm", RmsNorm(c.d_model, c.norm_eps));
    attn_ = register_module("attn", LlamaAttention(c.d_model, c.heads, KvHeads(c), c.context));
    mlp_norm_ = register_module("mlp_norm", RmsNorm(c.d_model, c.norm_eps));
    mlp_ = register_module("mlp", SwiGlu(c.d_model, FfnHidden(c)));
  }
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin,
                        LayerCache* cache = nullptr) {
    x = x + attn_->forward(attn_norm_->forward(x), cos, sin, cache);
    return x + mlp_->forward(mlp_norm_->forward(x));
  }
  torch::Tensor attn_proj_weight() { return attn_->o_weight(); }
  torch::Tensor mlp_proj_weight() { return mlp_->down_weight(); }

 private:
  RmsNorm attn_norm_{nullptr}, mlp_norm_{nullptr};
  LlamaAttention attn_{nullptr};
  SwiGlu mlp_{nullptr};
};
TORCH_MODULE(LlamaBlock);

Status ValidateModelConfig(const ModelConfig& c) {
  if (c.layers < 1 || c.d_model < 1 || c.heads < 1 || c.context < 1 || c.vocab < 1) {
    return InvalidArgument("model: layers, d_model, heads, context and vocab must be positive");
  }
  if (c.d_model % c.heads != 0) {
    return InvalidArgument("model: d_model (" + std::to_string(c.d_model) + ") must be divisible by heads (" +
                           std::to_string(c.heads) + ")");
  }
  if (c.arch == ModelArch::kLlama) {
    if (KvHeads(c) < 1 || c.heads % KvHeads(c) != 0) {
      return InvalidArgument("model: kv_heads (" + std::to_string(KvHeads(c)) + ") must divide heads (" +
                             std::to_string(c.heads) + ")");
    }
    if ((c.d_model / c.heads) % 2 != 0) return InvalidArgument("model: llama needs an even head size (rotary positions)");
    if (FfnHidden(c) < 1 || !(c.rope_theta > 0) || !(c.norm_eps > 0)) {
      return InvalidArgument("model: llama needs ffn_hidden, rope_theta and norm_eps > 0");
    }
  }
  return Status::Ok();
}

// GPT-2's init of a module tree: N(0, 0.02) weights, zero biases, unit norm
// gains (LayerNorm "ln_*" and RMSNorm "*norm" modules).
void InitGpt2(torch::nn::Module& m) {
  torch::NoGradGuard no_grad;
  for (auto& item : m.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    const bool is_norm = name.find("ln_") != std::string::npos || name.find("norm.") != std::string::npos;
    const bool is_weight = name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0;
    if (is_norm) {
      if (is_weight) {
        p.fill_(1.0);
      } else {
        p.zero_();
      }
    } else if (p.dim() == 1) {
      p.zero_();  // Linear biases
    } else {
      p.normal_(0.0, 0.02);
    }
  }
}

}  // namespace

RmsNormImpl::RmsNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RmsNormImpl::forward(const torch::Tensor& x) {
  auto xf = x.to(torch::kFloat32);
  auto y = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return weight * y.to(x.scalar_type());
}

LmImpl::LmImpl(const ModelConfig& config) : config_(config) {
  TORCH_CHECK(config.layers > 0 && config.d_model > 0 && config.heads > 0 && config.context > 0 &&
                  config.vocab > 0,
              "model dimensions must be positive");
  TORCH_CHECK(config.d_model % config.heads == 0, "d_model must be divisible by heads");
  const bool llama = config.arch == ModelArch::kLlama;
  // Registration order defines named_parameters() order, i.e. the ParamLayout
  // (ModelLayout mirrors it).
  tok_emb_ = register_module("tok_emb", torch::nn::Embedding(config.vocab, config.d_model));
  if (!llama) pos_emb_ = register_module("pos_emb", torch::nn::Embedding(config.context, config.d_model));
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int i = 0; i < config.layers; ++i) {
    if (llama) {
      blocks_->push_back(LlamaBlock(config));
    } else {
      blocks_->push_back(Block(config.d_model, config.heads, config.context));
    }
  }
  if (llama) {
    norm_ = register_module("norm", RmsNorm(config.d_model, config.norm_eps));
    head_ = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(config.d_model, config.vocab).bias(false)));
    auto [cos, sin] = RopeTables(config.context, config.d_model / config.heads, config.rope_theta);
    rope_cos_ = register_buffer("rope_cos", cos);
    rope_sin_ = register_buffer("rope_sin", sin);
  } else {
    ln_f_ = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({config.d_model})));
  }
  // Residual projections scaled down by 1/sqrt(2 * layers).
  InitGpt2(*this);
  torch::NoGradGuard no_grad;
  const double residual_std = 0.02 / std::sqrt(2.0 * config.layers);
  for (size_t i = 0; i < blocks_->size(); ++i) {
    if (llama) {
      auto block = blocks_->ptr<LlamaBlockImpl>(i);
      block->attn_proj_weight().normal_(0.0, residual_std);
      block->mlp_proj_weight().normal_(0.0, residual_std);
    } else {
      auto block = blocks_->ptr<BlockImpl>(i);
      block->attn_proj_weight().normal_(0.0, residual_std);
      block->mlp_proj_weight().normal_(0.0, residual_std);
    }
  }
}

torch::Tensor LmImpl::forward(const torch::Tensor& tokens) { return Forward(tokens, nullptr); }

torch::Tensor LmImpl::Forward(const torch::Tensor& tokens, KvCache* cache) {
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [B, T]");
  const int64_t t = tokens.size(1);
  const int64_t pos0 = cache ? cache->length : 0;
  TORCH_CHECK(t >= 1 && pos0 + t <= config_.context, "positions up to ", pos0 + t, " exceed context ",
              config_.context);
  if (cache) {
    if (cache->layers.empty()) cache->layers.resize(blocks_->size());
    cache->length += t;
  }
  auto layer = [&](size_t i) { return cache ? &cache->layers[i] : nullptr; };
  torch::Tensor x;
  if (config_.arch == ModelArch::kLlama) {
    auto cos = rope_cos_.narrow(0, pos0, t), sin = rope_sin_.narrow(0, pos0, t);
    x = tok_emb_->forward(tokens);
    for (size_t i = 0; i < blocks_->size(); ++i) x = blocks_->ptr<LlamaBlockImpl>(i)->forward(x, cos, sin, layer(i));
    return head_->forward(norm_->forward(x));
  }
  auto pos = torch::arange(pos0, pos0 + t, torch::TensorOptions().dtype(torch::kInt64).device(tokens.device()));
  x = tok_emb_->forward(tokens) + pos_emb_->forward(pos).unsqueeze(0);
  for (size_t i = 0; i < blocks_->size(); ++i) x = blocks_->ptr<BlockImpl>(i)->forward(x, layer(i));
  x = ln_f_->forward(x);
  // Tied output head: logits = h @ tok_emb.weight^T (no separate parameter).
  return torch::matmul(x, tok_emb_->weight.t());
}

torch::Tensor LmImpl::Loss(const torch::Tensor& tokens, const torch::Tensor& targets) {
  auto logits = forward(tokens);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

namespace {

// ResBM MLP hidden width: small next to the blocks' 4 * d_model.
int64_t BoundaryHidden(int64_t d_model, int64_t b) { return std::max<int64_t>(b, d_model / 4); }

}  // namespace

GptStageImpl::GptStageImpl(const ModelConfig& config, const StageSpec& spec)
    : config_(config), spec_(spec), b_(config.d_model / std::max(spec.ratio, 1)) {
  TORCH_CHECK(spec.stages >= 1 && spec.stage >= 0 && spec.stage < spec.stages, "bad stage index");
  TORCH_CHECK(spec.ratio >= 1 && config.d_model % spec.ratio == 0, "ratio must divide d_model");
  TORCH_CHECK(config.d_model % config.heads == 0, "d_model must be divisible by heads");
  const int64_t d = config.d_model, h = BoundaryHidden(d, b_);
  const bool bottleneck = spec.ratio > 1;
  if (first()) {
    tok_emb_ = register_module("tok_emb", torch::nn::Embedding(config.vocab, config.d_model));
    pos_emb_ = register_module("pos_emb", torch::nn::Embedding(config.context, config.d_model));
  } else if (bottleneck) {
    dec_fc1_ = register_module("dec_fc1", torch::nn::Linear(b_, h));
    dec_fc2_ = register_module("dec_fc2", torch::nn::Linear(h, d));
  }
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int i = 0; i < spec.blocks; ++i) blocks_->push_back(Block(config.d_model, config.heads, config.context));
  if (!last() && bottleneck) {
    enc_fc1_ = register_module("enc_fc1", torch::nn::Linear(d, h));
    enc_fc2_ = register_module("enc_fc2", torch::nn::Linear(h, b_));
  }
  if (last()) {
    ln_f_ = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({config.d_model})));
    head_ = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(d, config.vocab).bias(false)));
  }
  InitGpt2(*this);
  torch::NoGradGuard no_grad;
  // Residual projections scaled by 1/sqrt(2 * layers of the whole model), as
  // in the unsplit model; boundary output layers near zero (rank-b identity).
  const double residual_std = 0.02 / std::sqrt(2.0 * config.layers);
  for (size_t i = 0; i < blocks_->size(); ++i) {
    auto block = blocks_->ptr<BlockImpl>(i);
    block->attn_proj_weight().normal_(0.0, residual_std);
    block->mlp_proj_weight().normal_(0.0, residual_std);
  }
  if (dec_fc2_) dec_fc2_->weight.normal_(0.0, 1e-3);
  if (enc_fc2_) enc_fc2_->weight.normal_(0.0, 1e-3);
}

torch::Tensor GptStageImpl::Encode(const torch::Tensor& x) {
  if (!enc_fc1_) return x;
  using torch::indexing::Slice;
  auto xn = torch::nn::functional::layer_norm(x, torch::nn::functional::LayerNormFuncOptions({x.size(-1)}));
  return enc_fc2_->forward(torch::gelu(enc_fc1_->forward(xn))) + x.index({"...", Slice(0, b_)});
}

torch::Tensor GptStageImpl::Decode(const torch::Tensor& z) {
  if (!dec_fc1_) return z;
  return dec_fc2_->forward(torch::gelu(dec_fc1_->forward(z))) +
         torch::nn::functional::pad(z, torch::nn::functional::PadFuncOptions({0, config_.d_model - b_}));
}

torch::Tensor GptStageImpl::forward(const torch::Tensor& input) {
  torch::Tensor x;
  if (first()) {
    TORCH_CHECK(input.dim() == 2, "stage 0 takes tokens [B, T]");
    const int64_t t = input.size(1);
    TORCH_CHECK(t >= 1 && t <= config_.context, "sequence length ", t, " exceeds context ", config_.context);
    auto pos = torch::arange(t, torch::TensorOptions().dtype(torch::kInt64).device(input.device()));
    x = tok_emb_->forward(input) + pos_emb_->forward(pos).unsqueeze(0);
  } else {
    const int64_t width = spec_.ratio > 1 ? b_ : config_.d_model;
    TORCH_CHECK(input.dim() == 3 && input.size(2) == width, "stage ", spec_.stage, " takes [B, T, ", width,
                "] from the previous stage");
    x = Decode(input);
  }
  for (size_t i = 0; i < blocks_->size(); ++i) x = blocks_->ptr<BlockImpl>(i)->forward(x);
  if (last()) return head_->forward(ln_f_->forward(x));
  return Encode(x);
}

GptStage MakeGptStage(const ModelConfig& config, const StageSpec& spec, uint64_t seed) {
  torch::manual_seed(seed * 1000003ull + static_cast<uint64_t>(spec.stage));
  return GptStage(config, spec);
}

torch::Tensor ToWire(const torch::Tensor& z, WireDtype dtype) {
  switch (dtype) {
    case WireDtype::kFp32: return z.to(torch::kFloat32);
    case WireDtype::kBf16: return z.to(torch::kBFloat16);
    case WireDtype::kFp16: return z.to(torch::kFloat16);
  }
  return z;
}

torch::Tensor FromWire(const torch::Tensor& z) { return z.to(torch::kFloat32); }

Lm MakeLm(const ModelConfig& config, uint64_t seed) {
  torch::manual_seed(seed);
  return Lm(config);
}

ParamLayout LayoutOf(Lm& model) {
  ParamLayout layout;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) {
    TensorSpec spec;
    spec.name = item.key();
    spec.shape = item.value().sizes().vec();
    layout.tensors.push_back(std::move(spec));
  }
  return layout;
}

ParamSet ExportParams(Lm& model) {
  ParamSet out;
  out.layout = LayoutOf(model);
  out.values.resize(static_cast<size_t>(out.layout.numel()));
  torch::NoGradGuard no_grad;
  size_t offset = 0;
  for (const auto& p : model->parameters(/*recurse=*/true)) {
    auto cpu = p.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    const size_t n = static_cast<size_t>(cpu.numel());
    std::memcpy(out.values.data() + offset, cpu.data_ptr<float>(), n * sizeof(float));
    offset += n;
  }
  return out;
}

Status ImportParams(Lm& model, const ParamSet& params) {
  try {
    ParamLayout layout = LayoutOf(model);
    if (!(layout == params.layout)) {
      return InvalidArgument("parameter layout mismatch: model " + DigestHex(layout.Digest()) + " (" +
                             std::to_string(layout.tensors.size()) + " tensors), given " +
                             DigestHex(params.layout.Digest()) + " (" +
                             std::to_string(params.layout.tensors.size()) + " tensors)");
    }
    if (static_cast<int64_t>(params.values.size()) != layout.numel()) {
      return InvalidArgument("parameter count mismatch: layout has " + std::to_string(layout.numel()) +
                             " values, given " + std::to_string(params.values.size()));
    }
    torch::NoGradGuard no_grad;
    size_t offset = 0;
    for (auto& p : model->parameters(/*recurse=*/true)) {
      // from_blob only reads here: copy_ never writes to its source.
      auto src = torch::from_blob(const_cast<float*>(params.values.data() + offset), p.sizes(),
                                  torch::TensorOptions().dtype(torch::kFloat32));
      p.copy_(src);
      offset += static_cast<size_t>(p.numel());
    }
    return Status::Ok();
  } catch (const c10::Error& e) {
    return Internal(std::string("ImportParams: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(std::string("ImportParams: ") + e.what());
  }
}

StatusOr<ParamSet> InitialParameters(const ModelConfig& config, uint64_t seed) {
  LOWBAND_RETURN_IF_ERROR(ValidateModelConfig(config));
  try {
    Lm model = MakeLm(config, seed);
    return ExportParams(model);
  } catch (const c10::Error& e) {
    return Internal(std::string("InitialParameters: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(std::string("InitialParameters: ") + e.what());
  }
}

StatusOr<ParamSet> InitialPipelineParameters(const ModelConfig& config, const PipelineConfig& pipeline, uint64_t seed) {
  LOWBAND_RETURN_IF_ERROR(ValidateModelConfig(config));
  try {
    ParamSet out;
    const std::vector<int> blocks = StageBlocks(config.layers, pipeline);
    int first = 0;
    for (int s = 0; s < pipeline.stages; ++s) {
      const StageSpec spec{s, pipeline.stages, first, blocks[static_cast<size_t>(s)], pipeline.ratio};
      first += spec.blocks;
      GptStage stage = MakeGptStage(config, spec, seed + 7919u * static_cast<uint64_t>(s));
      for (const auto& item : stage->named_parameters(/*recurse=*/true)) {
        torch::Tensor v = item.value().detach().to(torch::kCPU).contiguous();
        out.layout.tensors.push_back(TensorSpec{StagePrefix(s) + item.key(), v.sizes().vec()});
        const float* p = v.data_ptr<float>();
        out.values.insert(out.values.end(), p, p + v.numel());
      }
    }
    return out;
  } catch (const c10::Error& e) {
    return Internal(std::string("InitialPipelineParameters: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(std::string("InitialPipelineParameters: ") + e.what());
  }
}

StatusOr<ParamLayout> ModelLayout(const ModelConfig& config) {
  LOWBAND_RETURN_IF_ERROR(ValidateModelConfig(config));
  try {
    // Mirrors LmImpl's registration order; model_test checks it against
    // LayoutOf(MakeLm(...)) so the two cannot drift apart.
    const int64_t d = config.d_model;
    ParamLayout layout;
    auto add = [&layout](std::string name, std::vector<int64_t> shape) {
      layout.tensors.push_back(TensorSpec{std::move(name), std::move(shape)});
    };
    add("tok_emb.weight", {config.vocab, d});
    if (config.arch == ModelArch::kLlama) {
      const int64_t kv = static_cast<int64_t>(KvHeads(config)) * (d / config.heads), f = FfnHidden(config);
      for (int i = 0; i < config.layers; ++i) {
        const std::string b = "blocks." + std::to_string(i) + ".";
        add(b + "attn_norm.weight", {d});
        add(b + "attn.q.weight", {d, d});
        add(b + "attn.k.weight", {kv, d});
        add(b + "attn.v.weight", {kv, d});
        add(b + "attn.o.weight", {d, d});
        add(b + "mlp_norm.weight", {d});
        add(b + "mlp.gate.weight", {f, d});
        add(b + "mlp.up.weight", {f, d});
        add(b + "mlp.down.weight", {d, f});
      }
      add("norm.weight", {d});
      add("head.weight", {config.vocab, d});
      return layout;
    }
    add("pos_emb.weight", {config.context, d});
    for (int i = 0; i < config.layers; ++i) {
      const std::string b = "blocks." + std::to_string(i) + ".";
      add(b + "ln_1.weight", {d});
      add(b + "ln_1.bias", {d});
      add(b + "attn.qkv.weight", {3 * d, d});
      add(b + "attn.qkv.bias", {3 * d});
      add(b + "attn.proj.weight", {d, d});
      add(b + "attn.proj.bias", {d});
      add(b + "ln_2.weight", {d});
      add(b + "ln_2.bias", {d});
      add(b + "mlp_fc.weight", {4 * d, d});
      add(b + "mlp_fc.bias", {4 * d});
      add(b + "mlp_proj.weight", {d, 4 * d});
      add(b + "mlp_proj.bias", {d});
    }
    add("ln_f.weight", {d});
    add("ln_f.bias", {d});
    return layout;
  } catch (const std::exception& e) {
    return Internal(std::string("ModelLayout: ") + e.what());
  }
}

}  // namespace lowband
