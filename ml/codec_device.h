// Device side of the update codecs: error feedback, per-chunk top-k,
// quantisation, all on the tensor's device (CPU or CUDA), then one small
// device->host copy and the host packers of codec/codec.h (on CUDA with the
// kernels of ml/codec_cuda.h: the bulk itself is packed on the device).
//
// DeviceEncoder owns one fp32 error-feedback buffer per layout tensor on the
// device (zero at start; none for dense_fp32 or error_feedback == 0). Encode
// does, for the configured codec kind:
//   all but dense_fp32:  e <- beta * e + delta   (beta = error_feedback)
//   sparseloco: per chunk of the plan keep the k_c largest |e| (which of
//     equal magnitudes is kept: the lower local index on a CPU, torch::topk's
//     choice on CUDA); over the kept values v of a tensor, shift = mean(v),
//     scale = mean(|v - shift|), code = (v >= shift - scale) + (v >= shift) +
//     (v >= shift + scale), table[b] = mean of the v with code b (empty bin:
//     shift + (b - 1.5) * scale); e[kept] -= table[code].
//   int8: per chunk scale = max|e| / 127, q = round(e / scale) clamped to
//     [-127, 127] (0 where scale is 0); e -= q * scale.
//   dense_bf16: b = bf16(e) (round to nearest even); e -= b.
//   dense_fp32: sends delta as it is.
// With error_feedback == 0 the residual is dropped (e is just delta).
// Means are fp64 sums in a fixed order: an encode is deterministic on a
// device whatever the thread count; CPU and CUDA agree on the kept indices
// for tie-free input (tables to within an ulp or so).
//
// CPU: sparseloco runs its own error-feedback pass, a per-chunk selection
// kernel and a host quantiser on at::get_num_threads() threads (results do
// not depend on the count); int8 and bf16 use torch ops (as CUDA does
// without the kernels). CUDA with the kernels: int8 and bf16 payloads are
// byte for byte the CPU's for the same e (no fused multiply-add in the
// quantiser; the error-feedback update e = delta + beta * e may be fused).
// Device memory beyond e (P = layout numel): sparseloco with the CUDA
// kernels 15 bytes per kept value and the bulk; with torch ops a P-float
// workspace and 24 bytes of index tensors per kept value; int8 with the
// kernels the bulk (P bytes and 4 per chunk), with torch ops two P-float
// buffers and P bytes; bf16 P bf16 values.
//
// Thread: lives on the thread that trains (the worker's training thread);
// not thread-safe. LibTorch exceptions are caught and returned as Status.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "codec/codec.h"
#include "config/config.h"
#include "codec/params.h"

namespace lowband {

struct DeviceEncoderOptions {
  // CPU only: select the top-k with the fused per-chunk kernel (one pass over
  // the error buffer) instead of torch::topk on gathered chunk matrices (the
  // path CUDA takes). Both give the same result; tests run both.
  bool cpu_select_kernel = true;
  // CUDA only, in builds with the CUDA kernels (ml/codec_cuda.h): run
  // sparseloco, int8 and dense_bf16 as kernels that pack the bulk on the
  // device, instead of torch ops plus host packing. Same bytes (sparseloco:
  // up to the last bit of a table entry, fp64 sums in another order); tests
  // compare both.
  bool cuda_kernels = true;
  // Benchmarks only, with cuda_kernels: each encode synchronises after each
  // kernel and stores (phase, milliseconds) here: the kernels, then "d2h"
  // (the copy to the host, with any kernel still running) and "host"
  // (checks, the copy into the blob, its checksum).
  std::vector<std::pair<std::string, double>>* cuda_phases = nullptr;
};

class DeviceEncoder {
 public:
  // InvalidArgument for a codec a worker cannot upload with (sparse_fp32),
  // a topk outside [1, 4096] (sparseloco) or a negative/non-finite
  // error_feedback; Internal if the device allocation fails.
  static StatusOr<std::unique_ptr<DeviceEncoder>> Create(const ParamLayout& layout, const CodecConfig& config,
                                                         torch::Device device, DeviceEncoderOptions options = {});
  ~DeviceEncoder();
  DeviceEncoder(const DeviceEncoder&) = delete;
  DeviceEncoder& operator=(const DeviceEncoder&) = delete;

  // Encodes one pseudo-gradient: one fp32 tensor per layout tensor, on this
  // encoder's device, shapes as in the layout (any strides); the inputs are
  // not modified. If `sent` is given it receives the decoded update that the
  // payload carries, one fp32 tensor per layout tensor on the device
  // (bit-identical to Densify(ParseUpdate(payload))).
  // InvalidArgument for a wrong count, shape, dtype or device, or for a
  // non-finite value reaching the payload; the error buffers are then reset
  // to zero (they would carry the non-finite value into every later round).
  // Internal for a LibTorch failure (e.g. out of memory).
  StatusOr<Encoded> Encode(const std::vector<torch::Tensor>& deltas, std::vector<torch::Tensor>* sent = nullptr);

  // The error-feedback buffers, one per layout tensor (views into one flat
  // device buffer), empty when the codec keeps none. Valid until destruction.
  const std::vector<torch::Tensor>& error_buffers() const;
  // Sets the error-feedback buffers to zero.
  void Reset();

  const LayoutPlan& plan() const;
  const CodecConfig& config() const;
  torch::Device device() const;

 private:
  struct Impl;
  explicit DeviceEncoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The device mirror of CPU parameters: `flat`, one fp32 buffer on `device`
// in layout order, and `views`, one view of it per layout tensor, allocated
// on first use (when `flat` is undefined); then `params` are copied in.
// Throws c10::Error like any LibTorch call.
void MirrorToDevice(const ParamSet& params, torch::Device device, torch::Tensor* flat,
                    std::vector<torch::Tensor>* views);

// theta <- theta - u on the device, `theta` a flat contiguous fp32 tensor of
// plan.numel elements in layout order. Same fp32 arithmetic as ApplyUpdate,
// hence bit-identical to it. Host work: flat indices of a sparse update; one
// host->device copy. InvalidArgument on a size mismatch, Internal on a
// LibTorch failure.
Status ApplyUpdateOnDevice(const LayoutPlan& plan, const Update& u, torch::Tensor& theta);

}  // namespace lowband
