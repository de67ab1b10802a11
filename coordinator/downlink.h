// The outer update's way down to the sites (codec.downlink), and the state
// it keeps: with `sparseloco` the coordinator compresses u the way workers
// compress their deltas, with error feedback of its own (docs/design.md
// 3.8):
//
//   v = u + e;  payload = SparseLoCo(v);  t = decode(payload);  e = v - t
//
// and every replica, the coordinator's included, applies t instead of u,
// so the replicas stay bit-identical while the downlink costs what an
// upload costs. What t left out of v is carried to the next round. With
// `sparse_fp32` or `dense_fp32` u goes down as it is (t = u, no state).
//
// Like OuterOptimizer it is round state: it moves into each CloseJob and
// back out of its CloseResult, its buffer goes into every checkpoint, and a
// replayed round (coordinator/resume.h) runs the same Encode, so a resumed
// campaign recomputes the same payloads and buffer bit for bit. Encode is
// deterministic for a given u, buffer and plan (codec/sparseloco_host.h).
// One thread at a time (whoever holds it: the loop, or the compute thread
// while a job runs). Torch-free.
#pragma once

#include <vector>

#include "base/status.h"
#include "base/thread_pool.h"
#include "codec/codec.h"
#include "config/config.h"

namespace lowband {

class DownlinkEncoder {
 public:
  DownlinkEncoder() = default;  // a placeholder to move one into
  // `kind`: codec.downlink (sparseloco, sparse_fp32 or dense_fp32; CHECK);
  // `num_params`: the layout's (the error buffer starts at zero).
  DownlinkEncoder(CodecKind kind, size_t num_params);

  CodecKind kind() const { return kind_; }
  // Keeps an error-feedback buffer (sparseloco).
  bool compressed() const { return kind_ == CodecKind::kSparseLoCo; }

  // The payload every whole-model site gets for the outer update u
  // (`down`), and the update they will apply (t; u itself unless
  // compressed). sparse_fp32: PackAggregate's choice; dense_fp32: always
  // dense. `pool` (may be null) spreads the SparseLoCo selection.
  // InvalidArgument (nothing changed) on a non-finite u or buffer.
  StatusOr<Update> Encode(const ParamLayout& layout, const LayoutPlan& plan, Update u, ThreadPool* pool, Encoded* down);

  // The error-feedback buffer e: empty unless compressed, else one value
  // per parameter.
  const std::vector<float>& error() const { return error_; }
  void set_error(std::vector<float> e) { error_ = std::move(e); }

 private:
  // A sparse u's v = u + e may be built in e's buffer: e and v all finite
  // and bounded, so the encoding cannot refuse v and leave e changed.
  bool SafeInPlace(const LayoutPlan& plan, const Update& u) const;
  CodecKind kind_ = CodecKind::kSparseFp32;
  std::vector<float> error_;
};

}  // namespace lowband
