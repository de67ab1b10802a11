#include "ml/inner_optimizer.h"

#include <torch/version.h>

#include <tuple>

// at::_fused_adamw_ and _foreach_mul_(tensors, tensor) arrived in 2.1.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
#define LOWBAND_FUSED_ADAMW 1
#else
#define LOWBAND_FUSED_ADAMW 0
#endif

namespace lowband {
namespace {

constexpr bool kHaveFusedAdamW = LOWBAND_FUSED_ADAMW;

}  // namespace

InnerAdamW::InnerAdamW(const std::vector<torch::Tensor>& params, const InnerOptimizerConfig& config)
    : config_(config), all_(params) {
  Group decay, no_decay;
  decay.weight_decay = config.weight_decay;
  for (const auto& p : params) (p.dim() >= 2 ? decay : no_decay).params.push_back(p);
  groups_.push_back(std::move(decay));
  groups_.push_back(std::move(no_decay));
  fused_ = kHaveFusedAdamW && !params.empty() && params.front().is_cuda();
  if (fused_) return;
  auto options = [&](double wd) {
    return torch::optim::AdamWOptions(config.lr)
        .betas(std::make_tuple(config.beta1, config.beta2))
        .eps(config.eps)
        .weight_decay(wd);
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (const Group& g : groups_) {
    groups.emplace_back(g.params, std::make_unique<torch::optim::AdamWOptions>(options(g.weight_decay)));
  }
  reference_ = std::make_unique<torch::optim::AdamW>(std::move(groups), options(config.weight_decay));
}

InnerAdamW::~InnerAdamW() = default;

void InnerAdamW::ZeroGrad() {
  for (auto& p : all_) p.mutable_grad() = torch::Tensor();
}

void InnerAdamW::Step(double lr, double max_norm) {
  if (!fused_) {
    if (max_norm > 0) torch::nn::utils::clip_grad_norm_(all_, max_norm);
    for (auto& group : reference_->param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    reference_->step();
    return;
  }
  if (max_norm > 0) ClipFused(max_norm);
  StepFused(lr);
}

void InnerAdamW::ClipFused(double max_norm) {
#if LOWBAND_FUSED_ADAMW
  std::vector<torch::Tensor> grads;
  for (const auto& p : all_) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return;
  torch::NoGradGuard no_grad;
  // The clip factor stays on the device: min(1, max_norm / (norm + 1e-6)),
  // as clip_grad_norm_ computes it, without reading the norm back.
  const torch::Tensor norm = torch::stack(at::_foreach_norm(grads, 2)).norm();
  const torch::Tensor factor = (max_norm / (norm + 1e-6)).clamp_max(1.0);
  at::_foreach_mul_(grads, factor);
#else
  static_cast<void>(max_norm);
#endif
}

void InnerAdamW::StepFused(double lr) {
#if LOWBAND_FUSED_ADAMW
  torch::NoGradGuard no_grad;
  for (Group& g : groups_) {
    if (g.exp_avg.empty()) {
      for (const auto& p : g.params) {
        g.exp_avg.push_back(torch::zeros_like(p));
        g.exp_avg_sq.push_back(torch::zeros_like(p));
        g.steps.push_back(torch::zeros({}, p.options()));
      }
    }
    std::vector<torch::Tensor> params, grads, m, v, steps;
    for (size_t i = 0; i < g.params.size(); ++i) {
      const torch::Tensor& grad = g.params[i].grad();
      if (!grad.defined()) continue;
      params.push_back(g.params[i]);
      grads.push_back(grad);
      m.push_back(g.exp_avg[i]);
      v.push_back(g.exp_avg_sq[i]);
      steps.push_back(g.steps[i]);
    }
    if (params.empty()) continue;
    // The kernel reads the step count for the bias corrections; counting
    // is the caller's part (as torch.optim does before calling it).
    at::_foreach_add_(steps, 1);
    at::_fused_adamw_(params, grads, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, config_.beta1, config_.beta2,
                      g.weight_decay, config_.eps, /*amsgrad=*/false, /*maximize=*/false);
  }
#else
  static_cast<void>(lr);
#endif
}

}  // namespace lowband
