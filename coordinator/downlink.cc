#include "coordinator/downlink.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <utility>

#include "codec/sparseloco_host.h"

namespace lowband {
namespace {

// Chunks handed to one pool thread at a time.
constexpr int64_t kChunksPerRange = 64;

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
                                                   ThreadPool* pool, Encoded* down) {
  const size_t chunks = plan.chunks.size();
  std::vector<uint32_t> tensor_of(chunks);
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) tensor_of[c] = static_cast<uint32_t>(t);
  }
  // The candidates of chunk c are u's entries there (every element of a
  // dense u), in index order; fn(j, local index, flat index, u's value) for
  // each.
  auto candidates = [&](size_t c) -> int64_t {
    return u.dense ? plan.chunks[c].numel() : static_cast<int64_t>(u.begin[c + 1] - u.begin[c]);
  };
  auto for_candidates = [&](size_t c, auto fn) {
    const TensorPlan& tp = plan.tensors[tensor_of[c]];
    const Chunk& ch = plan.chunks[c];
    if (u.dense) {
      int64_t j = 0;
      for (int32_t r = 0; r < ch.rows; ++r) {
        const int64_t row = tp.offset + ch.origin + static_cast<int64_t>(r) * tp.row_stride;
        for (int32_t col = 0; col < ch.cols; ++col, ++j) {
          fn(j, static_cast<uint32_t>(j), row + col, u.values[row + col]);
        }
      }
    } else {
      for (uint32_t e = u.begin[c]; e < u.begin[c + 1]; ++e) {
        fn(static_cast<int64_t>(e - u.begin[c]), u.index[e], plan.FlatIndex(tensor_of[c], c, u.index[e]), u.value[e]);
      }
    }
  };
  // Chunk by chunk on the pool's threads (each chunk's figures are its own,
  // summed afterwards in chunk order: the result does not depend on the pool).
  auto for_chunks = [&](const std::function<void(int64_t, int64_t)>& fn) {
    if (pool == nullptr) {
      fn(0, static_cast<int64_t>(chunks));
    } else {
      LOWBAND_CHECK(pool->ParallelFor(static_cast<int64_t>(chunks), kChunksPerRange, fn).ok());
    }
  };
  const double budget_bytes = budget_ * static_cast<double>(BulkBytes(plan, CodecKind::kSparseLoCo));
  const double fixed_bytes = static_cast<double>(16 * plan.tensors.size() + 2 * chunks);
  auto count = [&](size_t c, int cap) { return std::min<int64_t>(candidates(c), CapFor(cap, plan.chunks[c].numel())); };
  // An upper bound on the cap: every kept entry costs at least 3 bits (its
  // gap's stop bit and its code), so no cap keeping more than that allows
  // fits. Only that many of each chunk's candidates are ever needed.
  auto may_fit = [&](int cap) {
    uint64_t m = 0;
    for (size_t c = 0; c < chunks; ++c) m += static_cast<uint64_t>(count(c, cap));
    return fixed_bytes + 3.0 * static_cast<double>(m) / 8.0 <= budget_bytes;
  };
  int cap_hi = static_cast<int>(kChunkElems);
  if (!may_fit(cap_hi)) {
    int lo = 0, hi = cap_hi;
    while (hi - lo > 1) {
      const int mid = lo + (hi - lo) / 2;
      (may_fit(mid) ? lo : hi) = mid;
    }
    cap_hi = lo;
  }
  // Each chunk's count(c, cap_hi) candidates of largest |v|, v = u + e, in
  // that order (ties: the lower index first). e is only read here, so a
  // refused v leaves it as it was.
  std::vector<uint64_t> top_begin(chunks + 1, 0);
  for (size_t c = 0; c < chunks; ++c) top_begin[c + 1] = top_begin[c] + static_cast<uint64_t>(count(c, cap_hi));
  std::vector<uint16_t> top_index(top_begin.back());
  std::vector<float> top_v(top_begin.back());
  std::vector<char> finite(chunks, 1);
  for_chunks([&](int64_t first, int64_t last) {
    std::vector<uint64_t> keys;
    std::vector<float> v;
    std::vector<uint16_t> local;
    for (int64_t c = first; c < last; ++c) {
      keys.clear();
      v.clear();
      local.clear();
      for_candidates(c, [&](int64_t j, uint32_t l, int64_t i, float x) {
        const float y = x + error_[i];
        finite[c] = finite[c] && std::isfinite(y);
        keys.push_back(RankKey(y, static_cast<uint32_t>(j)));
        v.push_back(y);
        local.push_back(static_cast<uint16_t>(l));
      });
      const size_t k = static_cast<size_t>(count(c, cap_hi));
      if (k < keys.size()) std::nth_element(keys.begin(), keys.begin() + k, keys.end());
      std::sort(keys.begin(), keys.begin() + k);
      for (size_t r = 0; r < k; ++r) {
        const uint32_t j = static_cast<uint32_t>(keys[r]);
        top_index[top_begin[c] + r] = local[j];
        top_v[top_begin[c] + r] = v[j];
      }
    }
  });
  for (size_t c = 0; c < chunks; ++c) {
    if (!finite[c]) {
      const uint32_t t = tensor_of[c];
      return InvalidArgument("sparse_2bit downlink: u + e is not finite in tensor " + std::to_string(t) + " (" +
                             layout.tensors[t].name + ") chunk " + std::to_string(c - plan.tensors[t].first_chunk));
    }
  }
  // Whether the payload that keeps the first count(c, cap) of each chunk's
  // top fits the budget (the exact size, as PackSparse2Bit makes it).
  std::vector<uint64_t> chunk_bits(chunks), chunk_kept(chunks);
  auto fits = [&](int cap) {
    for_chunks([&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        // The kept indices as a bitmap of the chunk, read back in order:
        // the same bits as Sparse2BitIndexBits of the sorted indices.
        uint64_t words[kChunkElems / 64] = {};
        const int64_t k = count(c, cap);
        for (int64_t r = 0; r < k; ++r) {
          const uint32_t l = top_index[top_begin[c] + r];
          words[l >> 6] |= uint64_t{1} << (l & 63);
        }
        const int b = Sparse2BitRiceParam(plan.chunks[c].numel(), k);
        uint64_t bits = 0;
        int64_t prev = -1;
        for (int64_t w = 0; w < kChunkElems / 64; ++w) {
          for (uint64_t x = words[w]; x != 0; x &= x - 1) {
            const int64_t l = w * 64 + __builtin_ctzll(x);
            bits += static_cast<uint64_t>((l - prev - 1) >> b) + 1 + static_cast<uint64_t>(b);
            prev = l;
          }
        }
        chunk_bits[c] = bits;
        chunk_kept[c] = static_cast<uint64_t>(k);
      }
    });
    uint64_t bits = 0, m = 0;
    for (size_t c = 0; c < chunks; ++c) {
      bits += chunk_bits[c];
      m += chunk_kept[c];
    }
    return fixed_bytes + static_cast<double>((bits + 7) / 8 + (m + 3) / 4) <= budget_bytes;
  };
  // The largest cap that fits (0, tables and counts only, if none does):
  // bisection below cap_hi + 1, which cannot fit.
  int cap = cap_hi;
  if (cap_hi < static_cast<int>(kChunkElems) || !fits(cap_hi)) {
    int lo = 0, hi = cap_hi < static_cast<int>(kChunkElems) ? cap_hi + 1 : cap_hi;
    while (hi - lo > 1) {
      const int mid = lo + (hi - lo) / 2;
      (fits(mid) ? lo : hi) = mid;
    }
    cap = lo;
  }

  // The kept entries in index order, and each tensor's values quantised as
  // SparseLoCo's.
  Sparse2BitParts parts;
  parts.tables.assign(4 * plan.tensors.size(), 0.0f);
  parts.begin.assign(chunks + 1, 0);
  std::vector<float> values;
  std::vector<std::pair<uint16_t, float>> kept;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    const size_t first = parts.indices.size();
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      kept.clear();
      for (int64_t r = 0; r < count(c, cap); ++r) {
        kept.emplace_back(top_index[top_begin[c] + r], top_v[top_begin[c] + r]);
      }
      std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      for (const auto& [l, x] : kept) {
        parts.indices.push_back(l);
        values.push_back(x);
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
  // e = v - t on the candidates, v = u + e computed again exactly as above
  // (e is unchanged until here); t's entries of a chunk are its kept
  // candidates, in index order. Chunks touch disjoint elements.
  const Update& t_sent = *sent;
  for_chunks([&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      uint32_t s = t_sent.begin[c];
      for_candidates(c, [&](int64_t, uint32_t l, int64_t i, float x) {
        const float y = x + error_[i];
        if (s < t_sent.begin[c + 1] && t_sent.index[s] == l) {
          error_[i] = y - t_sent.value[s++];
        } else {
          error_[i] = y;
        }
      });
    }
  });
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
    return EncodeSparse2Bit(layout, plan, u, pool, down);
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
