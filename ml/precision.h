// training.precision on a device: resolving `auto`, and the scope that sets
// LibTorch's matmul and autocast state around the inner steps and
// evaluations of one trainer. Includes LibTorch.
#pragma once

#include <torch/torch.h>

#include "config/config.h"

namespace lowband {

// auto -> bf16 on CUDA, fp32 elsewhere; any other value as it is.
Precision ResolvePrecision(Precision precision, const torch::Device& device);

// For its lifetime, TF32 tensor-core matmuls on (tf32, bf16) or off (fp32)
// on CUDA: around a round's forward and backward passes. Process-wide
// flags, restored on exit.
class MatmulScope {
 public:
  MatmulScope(Precision resolved, const torch::Device& device);
  ~MatmulScope();
  MatmulScope(const MatmulScope&) = delete;
  MatmulScope& operator=(const MatmulScope&) = delete;

 private:
  bool cuda_;
  bool tf32_cublas_ = false;
  bool tf32_cudnn_ = false;
};

// bf16: for its lifetime, autocast to bfloat16 on the device's type
// (matmuls, linear layers and attention in bf16; LayerNorm, softmax and the
// loss in fp32; the parameters stay fp32). Around forward passes only, as
// torch.autocast is used: the backward pass follows the forward's dtypes.
// On exit it restores the previous state and empties the autocast cache,
// whose bf16 copies of the weights go stale when the optimizer steps.
// Other precisions: no effect. Thread-local state.
class AutocastScope {
 public:
  AutocastScope(Precision resolved, const torch::Device& device);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  torch::DeviceType type_;
  bool on_;
  bool was_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kFloat;
};

}  // namespace lowband
