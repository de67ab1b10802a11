// The outer update's way down to the sites (codec.downlink), and the state
// it keeps. The compressed kinds keep an error-feedback buffer e of their
// own (docs/design.md 3.8):
//
//   v = u + e;  payload = C(v);  t = decode(payload);  e = v - t
//
// and every replica, the coordinator's included, applies t instead of u,
// so the replicas stay bit-identical. What t left out of v is carried to
// the next round. C is
//   sparse_2bit  v on u's support (the union of the uploaded indices; all
//                of a dense u), 2-bit values per tensor (the SparseLoCo
//                quantiser), Rice-coded indices; when that would take more
//                than `budget` times an upload's bytes (BulkBytes of
//                sparseloco at the plan's topk), only the entries of
//                largest |v| within each chunk, at most
//                ceil(cap * n_c / 4096) of a chunk of n_c, for the largest
//                cap that fits (found by bisection; the payload never
//                exceeds the budget);
//   sparseloco   top-k of v per chunk at the plan's topk, 2 bits: exactly
//                an upload's size.
// With `sparse_fp32` or `dense_fp32` u goes down as it is (t = u, no state).
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
  // `kind`: codec.downlink (sparse_2bit, sparseloco, sparse_fp32 or
  // dense_fp32; CHECK); `num_params`: the layout's (the error buffer starts
  // at zero); `budget`: codec.downlink_budget, sparse_2bit's bytes at most
  // per upload byte (> 0; CHECK).
  DownlinkEncoder(CodecKind kind, size_t num_params, double budget = 1.5);

  CodecKind kind() const { return kind_; }
  // Keeps an error-feedback buffer (sparseloco, sparse_2bit).
  bool compressed() const { return kind_ == CodecKind::kSparseLoCo || kind_ == CodecKind::kSparse2Bit; }

  // The payload every whole-model site gets for the outer update u
  // (`down`), and the update they will apply (t; u itself unless
  // compressed). sparse_fp32: PackAggregate's choice; dense_fp32: always
  // dense. `pool` (may be null) spreads the selection and (sparse_2bit) the
  // ranking and the cap's bisection over chunks; the result does not depend
  // on it.
  // InvalidArgument (nothing changed) on a non-finite u or buffer.
  StatusOr<Update> Encode(const ParamLayout& layout, const LayoutPlan& plan, Update u, ThreadPool* pool, Encoded* down);

  // sparse_2bit: the cap of the last Encode (values kept per 4096 of a
  // chunk at most; 4096 when the whole support fitted the budget). 0 before
  // any.
  int last_cap() const { return last_cap_; }

  // The error-feedback buffer e: empty unless compressed, else one value
  // per parameter.
  const std::vector<float>& error() const { return error_; }
  void set_error(std::vector<float> e) { error_ = std::move(e); }

 private:
  // A sparse u's v = u + e may be built in e's buffer: e and v all finite
  // and bounded, so the encoding cannot refuse v and leave e changed.
  bool SafeInPlace(const LayoutPlan& plan, const Update& u) const;
  StatusOr<Update> EncodeSparse2Bit(const ParamLayout& layout, const LayoutPlan& plan, const Update& u,
                                    ThreadPool* pool, Encoded* down);
  CodecKind kind_ = CodecKind::kSparseFp32;
  double budget_ = 1.5;
  int last_cap_ = 0;
  std::vector<float> error_;
};

}  // namespace lowband
