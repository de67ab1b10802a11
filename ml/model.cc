#include "ml/model.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <string>

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

// Causal multi-head self-attention with one fused qkv projection.
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(int d_model, int heads, int context) : heads_(heads) {
    qkv_ = register_module("qkv", torch::nn::Linear(d_model, 3 * d_model));
    proj_ = register_module("proj", torch::nn::Linear(d_model, d_model));
#if !LOWBAND_HAVE_SDPA
    // true above the diagonal = a future position, masked out. A buffer, so
    // it follows the module across devices but is not a parameter.
    mask_ = register_buffer("mask", torch::ones({context, context}, torch::kBool).triu(1));
#else
    static_cast<void>(context);
#endif
  }

  torch::Tensor forward(const torch::Tensor& x) {
    const int64_t b = x.size(0), t = x.size(1), c = x.size(2);
    const int64_t hd = c / heads_;
    auto qkv = qkv_->forward(x).chunk(3, /*dim=*/2);
    auto q = qkv[0].view({b, t, heads_, hd}).transpose(1, 2);
    auto k = qkv[1].view({b, t, heads_, hd}).transpose(1, 2);
    auto v = qkv[2].view({b, t, heads_, hd}).transpose(1, 2);
#if LOWBAND_HAVE_SDPA
    auto y = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true);
#else
    auto att = torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(hd)));
    using torch::indexing::Slice;
    auto mask = mask_.index({Slice(0, t), Slice(0, t)});
    att = att.masked_fill(mask, -std::numeric_limits<float>::infinity());
    att = torch::softmax(att, -1);
    auto y = torch::matmul(att, v);
#endif
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

  torch::Tensor forward(torch::Tensor x) {
    x = x + attn_->forward(ln_1_->forward(x));
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

Status ValidateModelConfig(const ModelConfig& c) {
  if (c.layers < 1 || c.d_model < 1 || c.heads < 1 || c.context < 1 || c.vocab < 1) {
    return InvalidArgument("model: layers, d_model, heads, context and vocab must be positive");
  }
  if (c.d_model % c.heads != 0) {
    return InvalidArgument("model: d_model (" + std::to_string(c.d_model) + ") must be divisible by heads (" +
                           std::to_string(c.heads) + ")");
  }
  return Status::Ok();
}

}  // namespace

GptImpl::GptImpl(const ModelConfig& config) : config_(config) {
  TORCH_CHECK(config.layers > 0 && config.d_model > 0 && config.heads > 0 && config.context > 0 &&
                  config.vocab > 0,
              "model dimensions must be positive");
  TORCH_CHECK(config.d_model % config.heads == 0, "d_model must be divisible by heads");
  // Registration order defines named_parameters() order, i.e. the ParamLayout.
  tok_emb_ = register_module("tok_emb", torch::nn::Embedding(config.vocab, config.d_model));
  pos_emb_ = register_module("pos_emb", torch::nn::Embedding(config.context, config.d_model));
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int i = 0; i < config.layers; ++i) {
    blocks_->push_back(Block(config.d_model, config.heads, config.context));
  }
  ln_f_ = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({config.d_model})));

  // GPT-2 init: N(0, 0.02) weights, zero biases, unit LayerNorm gains,
  // residual projections scaled down by 1/sqrt(2 * layers).
  torch::NoGradGuard no_grad;
  for (auto& item : named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    const bool is_norm = name.find("ln_") != std::string::npos;
    if (is_norm) {
      if (name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0) {
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
  const double residual_std = 0.02 / std::sqrt(2.0 * config.layers);
  for (size_t i = 0; i < blocks_->size(); ++i) {
    auto block = blocks_->ptr<BlockImpl>(i);
    block->attn_proj_weight().normal_(0.0, residual_std);
    block->mlp_proj_weight().normal_(0.0, residual_std);
  }
}

torch::Tensor GptImpl::forward(const torch::Tensor& tokens) {
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [B, T]");
  const int64_t t = tokens.size(1);
  TORCH_CHECK(t >= 1 && t <= config_.context, "sequence length ", t, " exceeds context ", config_.context);
  auto pos = torch::arange(t, torch::TensorOptions().dtype(torch::kInt64).device(tokens.device()));
  auto x = tok_emb_->forward(tokens) + pos_emb_->forward(pos).unsqueeze(0);
  for (size_t i = 0; i < blocks_->size(); ++i) {
    x = blocks_->ptr<BlockImpl>(i)->forward(x);
  }
  x = ln_f_->forward(x);
  // Tied output head: logits = h @ tok_emb.weight^T (no separate parameter).
  return torch::matmul(x, tok_emb_->weight.t());
}

torch::Tensor GptImpl::Loss(const torch::Tensor& tokens, const torch::Tensor& targets) {
  auto logits = forward(tokens);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

namespace {

// GPT-2 init of a module tree: N(0, 0.02) weights, zero biases, unit
// LayerNorm gains (names containing "ln_").
void InitGpt2(torch::nn::Module& m) {
  torch::NoGradGuard no_grad;
  for (auto& item : m.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    if (name.find("ln_") != std::string::npos) {
      if (name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0) {
        p.fill_(1.0);
      } else {
        p.zero_();
      }
    } else if (p.dim() == 1) {
      p.zero_();
    } else {
      p.normal_(0.0, 0.02);
    }
  }
}

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

Gpt MakeGpt(const ModelConfig& config, uint64_t seed) {
  torch::manual_seed(seed);
  return Gpt(config);
}

ParamLayout LayoutOf(Gpt& model) {
  ParamLayout layout;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) {
    TensorSpec spec;
    spec.name = item.key();
    spec.shape = item.value().sizes().vec();
    layout.tensors.push_back(std::move(spec));
  }
  return layout;
}

ParamSet ExportParams(Gpt& model) {
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

Status ImportParams(Gpt& model, const ParamSet& params) {
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
    Gpt model = MakeGpt(config, seed);
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
    // Mirrors GptImpl's registration order; model_test checks it against
    // LayoutOf(MakeGpt(...)) so the two cannot drift apart.
    const int64_t d = config.d_model;
    ParamLayout layout;
    auto add = [&layout](std::string name, std::vector<int64_t> shape) {
      layout.tensors.push_back(TensorSpec{std::move(name), std::move(shape)});
    };
    add("tok_emb.weight", {config.vocab, d});
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
