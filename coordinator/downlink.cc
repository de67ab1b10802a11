#include "coordinator/downlink.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "codec/sparseloco_host.h"

namespace lowband {
namespace {

// Entries a chunk of n elements keeps at most under `cap` (per 4096).
int64_t CapFor(int cap, int64_t n) {
  return std::min<int64_t>(n, (static_cast<int64_t>(cap) * n + kChunkElems - 1) / kChunkElems);
}

// Orders by |x| descending, then local index ascending, as one integer
// compare (as the SparseLoCo selection does; x is finite here).
uint64_t RankKey(float x, uint32_t local) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  return (static_cast<uint64_t>(~(bits & 0x7fffffffu)) << 32) | local;
}

}  // namespace

DownlinkEncoder::DownlinkEncoder(CodecKind kind, size_t num_params, double budget) : kind_(kind), budget_(budget) {
  LOWBAND_CHECK(kind == CodecKind::kSparse2Bit || kind == CodecKind::kSparseLoCo || kind == CodecKind::kSparseFp32 ||
                kind == CodecKind::kDenseFp32);
  LOWBAND_CHECK(budget > 0);
  if (compressed()) error_.assign(num_params, 0.0f);
}

StatusOr<Update> DownlinkEncoder::EncodeSparse2Bit(const ParamLayout& layout, const LayoutPlan& plan, const Update& u,
                                                   Encoded* down) {
  // The candidates: u's support, chunk by chunk in index order, with v = u + e
  // there (e elsewhere is not touched). Built apart from e, so a refused v
  // leaves e as it was.
  const size_t chunks = plan.chunks.size();
  std::vector<uint32_t> begin(chunks + 1, 0);
  std::vector<uint16_t> index;
  std::vector<float> v;
  std::vector<int64_t> flat;
  index.reserve(u.nnz());
  v.reserve(u.nnz());
  flat.reserve(u.nnz());
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      auto add = [&](uint32_t l, float x) {
        const int64_t i = plan.FlatIndex(t, c, l);
        index.push_back(static_cast<uint16_t>(l));
        v.push_back(x + error_[i]);
        flat.push_back(i);
      };
      if (u.dense) {
        for (int64_t l = 0; l < plan.chunks[c].numel(); ++l) {
          add(static_cast<uint32_t>(l), u.values[plan.FlatIndex(t, c, l)]);
        }
      } else {
        for (uint32_t e = u.begin[c]; e < u.begin[c + 1]; ++e) add(u.index[e], u.value[e]);
      }
      begin[c + 1] = static_cast<uint32_t>(index.size());
    }
  }
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) {
      return InvalidArgument("sparse_2bit downlink: u + e is " + std::to_string(v[i]) + " at parameter " +
                             std::to_string(flat[i]));
    }
  }
  // Each candidate's rank within its chunk (0 = largest |v|).
  std::vector<uint16_t> rank(v.size());
  {
    std::vector<uint64_t> keys;
    for (size_t c = 0; c < chunks; ++c) {
      keys.clear();
      for (uint32_t i = begin[c]; i < begin[c + 1]; ++i) keys.push_back(RankKey(v[i], i - begin[c]));
      std::sort(keys.begin(), keys.end());
      for (size_t r = 0; r < keys.size(); ++r) rank[begin[c] + (keys[r] & 0xffffffffu)] = static_cast<uint16_t>(r);
    }
  }
  // Bytes of the payload that keeps at most CapFor(cap, n) per chunk.
  std::vector<uint16_t> kept;
  auto bytes_at = [&](int cap) {
    uint64_t bits = 0, m = 0;
    for (size_t c = 0; c < chunks; ++c) {
      const int64_t n = plan.chunks[c].numel();
      const int64_t k = CapFor(cap, n);
      kept.clear();
      for (uint32_t i = begin[c]; i < begin[c + 1]; ++i) {
        if (rank[i] < k) kept.push_back(index[i]);
      }
      bits += Sparse2BitIndexBits(n, kept.data(), kept.size());
      m += kept.size();
    }
    return 16 * plan.tensors.size() + 2 * chunks + (bits + 7) / 8 + (m + 3) / 4;
  };
  const double budget_bytes = budget_ * static_cast<double>(BulkBytes(plan, CodecKind::kSparseLoCo));
  int cap = static_cast<int>(kChunkElems);
  if (static_cast<double>(bytes_at(cap)) > budget_bytes) {
    // The largest cap that fits (0, tables and counts only, if none does).
    int lo = 0, hi = cap;
    while (hi - lo > 1) {
      const int mid = lo + (hi - lo) / 2;
      (static_cast<double>(bytes_at(mid)) <= budget_bytes ? lo : hi) = mid;
    }
    cap = lo;
  }

  // The kept entries, and each tensor's values quantised as SparseLoCo's.
  Sparse2BitParts parts;
  parts.tables.assign(4 * plan.tensors.size(), 0.0f);
  parts.begin.assign(chunks + 1, 0);
  std::vector<float> values;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    const size_t first = parts.indices.size();
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      const int64_t k = CapFor(cap, plan.chunks[c].numel());
      for (uint32_t i = begin[c]; i < begin[c + 1]; ++i) {
        if (rank[i] >= k) continue;
        parts.indices.push_back(index[i]);
        values.push_back(v[i]);
      }
      parts.begin[c + 1] = static_cast<uint32_t>(parts.indices.size());
    }
    parts.codes.resize(parts.indices.size());
    QuantiseSparseLoCo(values.data() + first, static_cast<int64_t>(parts.indices.size() - first), &parts.tables[4 * t],
                       parts.codes.data() + first);
  }
  auto enc = PackSparse2Bit(layout, plan, parts);
  if (!enc.ok()) return enc.status();
  // What the sites will decode, parsed from the very bytes they get.
  auto sent = ParseUpdate(layout, plan, enc->header, enc->bulk);
  LOWBAND_CHECK(sent.ok());  // everything the packer accepts, ParseUpdate accepts
  LOWBAND_CHECK(sent->value.size() == parts.indices.size());
  // e = v - t on the candidates: t's entries are the kept candidates, in order.
  size_t j = 0;
  for (size_t c = 0; c < chunks; ++c) {
    const int64_t k = CapFor(cap, plan.chunks[c].numel());
    for (uint32_t i = begin[c]; i < begin[c + 1]; ++i) {
      error_[flat[i]] = rank[i] < k ? v[i] - sent->value[j++] : v[i];
    }
  }
  last_cap_ = cap;
  *down = std::move(enc).value();
  return sent;
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
  if (kind_ == CodecKind::kSparse2Bit) {
    if (u.dense) {
      LOWBAND_CHECK(u.values.size() == error_.size());
    } else {
      LOWBAND_CHECK(u.begin.size() == plan.chunks.size() + 1);
    }
    return EncodeSparse2Bit(layout, plan, u, down);
  }
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
