#include "ml/precision.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

namespace lowband {
namespace {

// LibTorch 2.4 made autocast per device type; 1.13 (Debian 12) has one
// switch for CUDA and one for the CPU.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool AutocastEnabled(torch::DeviceType t) { return at::autocast::is_autocast_enabled(t); }
void SetAutocast(torch::DeviceType t, bool on) { at::autocast::set_autocast_enabled(t, on); }
at::ScalarType AutocastDtype(torch::DeviceType t) { return at::autocast::get_autocast_dtype(t); }
void SetAutocastDtype(torch::DeviceType t, at::ScalarType d) { at::autocast::set_autocast_dtype(t, d); }
#else
bool AutocastEnabled(torch::DeviceType t) {
  return t == torch::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
}
void SetAutocast(torch::DeviceType t, bool on) {
  if (t == torch::kCUDA) {
    at::autocast::set_enabled(on);
  } else {
    at::autocast::set_cpu_enabled(on);
  }
}
at::ScalarType AutocastDtype(torch::DeviceType t) {
  return t == torch::kCUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
}
void SetAutocastDtype(torch::DeviceType t, at::ScalarType d) {
  if (t == torch::kCUDA) {
    at::autocast::set_autocast_gpu_dtype(d);
  } else {
    at::autocast::set_autocast_cpu_dtype(d);
  }
}
#endif

}  // namespace

Precision ResolvePrecision(Precision precision, const torch::Device& device) {
  if (precision != Precision::kAuto) return precision;
  return device.is_cuda() ? Precision::kBf16 : Precision::kFp32;
}

MatmulScope::MatmulScope(Precision resolved, const torch::Device& device) : cuda_(device.is_cuda()) {
  if (!cuda_) return;
  auto& ctx = at::globalContext();
  tf32_cublas_ = ctx.allowTF32CuBLAS();
  tf32_cudnn_ = ctx.allowTF32CuDNN();
  const bool tf32 = resolved == Precision::kTf32 || resolved == Precision::kBf16;
  ctx.setAllowTF32CuBLAS(tf32);
  ctx.setAllowTF32CuDNN(tf32);
}

MatmulScope::~MatmulScope() {
  if (!cuda_) return;
  auto& ctx = at::globalContext();
  ctx.setAllowTF32CuBLAS(tf32_cublas_);
  ctx.setAllowTF32CuDNN(tf32_cudnn_);
}

AutocastScope::AutocastScope(Precision resolved, const torch::Device& device)
    : type_(device.type()), on_(resolved == Precision::kBf16) {
  if (!on_) return;
  was_enabled_ = AutocastEnabled(type_);
  previous_dtype_ = AutocastDtype(type_);
  SetAutocast(type_, true);
  SetAutocastDtype(type_, at::kBFloat16);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!on_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  SetAutocast(type_, was_enabled_);
  SetAutocastDtype(type_, previous_dtype_);
}

}  // namespace lowband
