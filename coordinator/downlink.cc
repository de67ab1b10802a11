#include "coordinator/downlink.h"

#include <cmath>
#include <utility>

#include "codec/sparseloco_host.h"

namespace lowband {

DownlinkEncoder::DownlinkEncoder(CodecKind kind, size_t num_params) : kind_(kind) {
  LOWBAND_CHECK(kind == CodecKind::kSparseLoCo || kind == CodecKind::kSparseFp32 || kind == CodecKind::kDenseFp32);
  if (compressed()) error_.assign(num_params, 0.0f);
}

bool DownlinkEncoder::SafeInPlace(const LayoutPlan& plan, const Update& u) const {
  // Below this bound a kept value, its tensor's mean and mean deviation and
  // every table entry stay finite in fp32.
  constexpr float kBound = 1e30f;
  for (float x : error_) {
    if (!(std::fabs(x) <= kBound)) return false;
  }
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      for (uint32_t e = u.begin[c]; e < u.begin[c + 1]; ++e) {
        if (!(std::fabs(u.value[e] + error_[plan.FlatIndex(t, c, u.index[e])]) <= kBound)) return false;
      }
    }
  }
  return true;
}

StatusOr<Update> DownlinkEncoder::Encode(const ParamLayout& layout, const LayoutPlan& plan, Update u, ThreadPool* pool,
                                         Encoded* down) {
  if (kind_ == CodecKind::kSparseFp32) {
    auto enc = PackAggregate(layout, plan, u);
    if (!enc.ok()) return enc.status();
    *down = std::move(enc).value();
    return u;
  }
  if (kind_ == CodecKind::kDenseFp32) {
    if (!u.dense) {
      u.values = Densify(plan, u);
      u.dense = true;
      u.begin.clear();
      u.index.clear();
      u.value.clear();
    }
    auto enc = PackDenseFp32(layout, u.values);
    if (!enc.ok()) return enc.status();
    *down = std::move(enc).value();
    return u;
  }
  LOWBAND_CHECK(error_.size() == static_cast<size_t>(plan.numel));
  // v = u + e, in a buffer of its own so that a refused v leaves e as it
  // was (a dense u's own, which it no longer needs).
  std::vector<float> v;
  if (u.dense) {
    LOWBAND_CHECK(u.values.size() == error_.size());
    v = std::move(u.values);
    for (size_t i = 0; i < v.size(); ++i) v[i] = v[i] + error_[i];
  } else {
    // When every value of v is finite and far from overflowing, the
    // encoding below cannot refuse it: v is built in e's own buffer (no
    // second model-sized copy; at 1B parameters 4 GB). Otherwise in a copy.
    v = SafeInPlace(plan, u) ? std::move(error_) : error_;
    for (size_t t = 0; t < plan.tensors.size(); ++t) {
      const TensorPlan& tp = plan.tensors[t];
      for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
        for (uint32_t e = u.begin[c]; e < u.begin[c + 1]; ++e) {
          float& x = v[plan.FlatIndex(t, c, u.index[e])];
          x = u.value[e] + x;
        }
      }
    }
  }
  u = Update();  // its memory goes before the payload's
  auto enc = EncodeSparseLoCoHost(layout, plan, v, pool);
  if (!enc.ok()) return enc.status();
  // What the sites will decode, parsed from the very bytes they get.
  auto sent = ParseUpdate(layout, plan, enc->header, enc->bulk);
  LOWBAND_CHECK(sent.ok());  // everything a packer accepts, ParseUpdate accepts
  const Update& t_sent = *sent;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      for (uint32_t e = t_sent.begin[c]; e < t_sent.begin[c + 1]; ++e) {
        float& x = v[plan.FlatIndex(t, c, t_sent.index[e])];
        x = x - t_sent.value[e];
      }
    }
  }
  error_ = std::move(v);
  *down = std::move(enc).value();
  return sent;
}

}  // namespace lowband
