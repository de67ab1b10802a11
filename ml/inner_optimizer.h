// The inner optimizer of a site's local steps: AdamW with decoupled weight
// decay on matrices (linear weights, embeddings) and none on biases and
// LayerNorm parameters (GPT-2 / nanoGPT), plus gradient-norm clipping.
//
// On CUDA with LibTorch >= 2.1 a step is one fused kernel per parameter
// group (at::_fused_adamw_, the kernel behind torch.optim.AdamW(fused=True))
// and clipping is a handful of multi-tensor kernels, with no host
// synchronisation: the host queues the next step while the GPU runs this
// one. Elsewhere (the CPU, LibTorch 1.13) torch::optim::AdamW and
// clip_grad_norm_, the same update rule one tensor at a time. Parameters
// without a gradient (frozen ParaBlock tensors) are skipped either way: no
// step, no decay, moments untouched. Includes LibTorch.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "config/config.h"

namespace lowband {

class InnerAdamW {
 public:
  // `params` live on one device, fp32. The learning rate is given per step.
  InnerAdamW(const std::vector<torch::Tensor>& params, const InnerOptimizerConfig& config);
  ~InnerAdamW();

  // Drops every gradient (set to undefined, as zero_grad(set_to_none)).
  void ZeroGrad();
  // Scales the gradients so their global L2 norm is at most max_norm
  // (max_norm <= 0: no clipping), then one AdamW step at `lr`.
  void Step(double lr, double max_norm);
  // Whether steps run the fused kernel (for logs and benchmarks).
  bool fused() const { return fused_; }

 private:
  struct Group {
    std::vector<torch::Tensor> params;
    double weight_decay = 0;
    // Fused path: moments and step counts, created with the first gradient.
    std::vector<torch::Tensor> exp_avg, exp_avg_sq, steps;
  };
  void ClipFused(double max_norm);
  void StepFused(double lr);

  InnerOptimizerConfig config_;
  std::vector<torch::Tensor> all_;
  std::vector<Group> groups_;
  bool fused_ = false;
  std::unique_ptr<torch::optim::AdamW> reference_;  // when not fused
};

}  // namespace lowband
