#include "codec/sparseloco_host.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace lowband {
namespace {

// Chunks handed to one thread at a time: enough work per range (a 64x64
// tile is ~20 us) that the pool's hand-off does not show.
constexpr int64_t kChunksPerRange = 64;

// A selection key that orders by |x| descending, then local index
// ascending, as one integer compare: the magnitude's bits (sign cleared,
// monotone in |x| for every non-negative float, NaN above infinity) inverted
// in the high word, the index in the low word.
uint64_t Key(float x, uint32_t local) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  return (static_cast<uint64_t>(~(bits & 0x7fffffffu)) << 32) | local;
}

// Chunk c of tensor t: its k largest, written in increasing index order to
// indices[0, k) (local) and kept[0, k) (values). `keys` is scratch.
void SelectChunk(const LayoutPlan& plan, size_t t, size_t c, const float* v, std::vector<uint64_t>* keys,
                 uint16_t* indices, float* kept) {
  const TensorPlan& tp = plan.tensors[t];
  const Chunk& ch = plan.chunks[c];
  const int64_t n = ch.numel();
  const size_t k = static_cast<size_t>(ch.k);
  keys->resize(static_cast<size_t>(n));
  uint64_t* key = keys->data();
  uint32_t l = 0;
  for (int32_t r = 0; r < ch.rows; ++r) {
    const float* row = v + tp.offset + ch.origin + static_cast<int64_t>(r) * tp.row_stride;
    for (int32_t col = 0; col < ch.cols; ++col, ++l) key[l] = Key(row[col], l);
  }
  if (k < static_cast<size_t>(n)) std::nth_element(key, key + k, key + n);
  for (size_t j = 0; j < k; ++j) key[j] &= 0xffffffffu;  // the k smallest keys' indices
  std::sort(key, key + k);
  for (size_t j = 0; j < k; ++j) {
    const int64_t local = static_cast<int64_t>(key[j]);
    indices[j] = static_cast<uint16_t>(local);
    kept[j] = v[plan.FlatIndex(t, c, local)];
  }
}

}  // namespace

void QuantiseSparseLoCo(const float* x, int64_t K, float* table, uint8_t* codes) {
  if (K == 0) {
    std::fill(table, table + 4, 0.0f);
    return;
  }
  double sum = 0;
  for (int64_t i = 0; i < K; ++i) sum += x[i];
  const float shift = static_cast<float>(sum / static_cast<double>(K));
  double dev = 0;
  for (int64_t i = 0; i < K; ++i) dev += std::abs(x[i] - shift);
  const float scale = static_cast<float>(dev / static_cast<double>(K));
  const float lo = shift - scale, hi = shift + scale;
  double bin_sum[4] = {0, 0, 0, 0};
  int64_t bin_count[4] = {0, 0, 0, 0};
  for (int64_t i = 0; i < K; ++i) {
    const uint8_t code = static_cast<uint8_t>((x[i] >= lo) + (x[i] >= shift) + (x[i] >= hi));
    codes[i] = code;
    bin_sum[code] += x[i];
    ++bin_count[code];
  }
  for (int b = 0; b < 4; ++b) {
    table[b] = bin_count[b] > 0
                   ? static_cast<float>(bin_sum[b] / static_cast<double>(bin_count[b]))
                   : static_cast<float>(static_cast<double>(shift) + (b - 1.5) * static_cast<double>(scale));
  }
}

SparseLoCoParts SelectSparseLoCo(const LayoutPlan& plan, const std::vector<float>& v, ThreadPool* pool) {
  LOWBAND_CHECK(v.size() == static_cast<size_t>(plan.numel));
  // Where each chunk's kept entries start in the layout-wide stream, and
  // each chunk's tensor.
  std::vector<int64_t> first_kept(plan.chunks.size() + 1, 0);
  std::vector<uint32_t> tensor_of(plan.chunks.size(), 0);
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) tensor_of[c] = static_cast<uint32_t>(t);
  }
  for (size_t c = 0; c < plan.chunks.size(); ++c) first_kept[c + 1] = first_kept[c] + plan.chunks[c].k;
  LOWBAND_CHECK(first_kept.back() == plan.kept);

  SparseLoCoParts parts;
  parts.tables.assign(4 * plan.tensors.size(), 0.0f);
  parts.indices.resize(static_cast<size_t>(plan.kept));
  parts.codes.resize(static_cast<size_t>(plan.kept));
  std::vector<float> kept(static_cast<size_t>(plan.kept));
  auto select = [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> keys;
    for (int64_t c = begin; c < end; ++c) {
      SelectChunk(plan, tensor_of[c], static_cast<size_t>(c), v.data(), &keys, &parts.indices[first_kept[c]],
                  &kept[first_kept[c]]);
    }
  };
  auto quantise = [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const TensorPlan& tp = plan.tensors[t];
      const int64_t at = first_kept[tp.first_chunk];
      QuantiseSparseLoCo(&kept[at], tp.kept, &parts.tables[4 * t], &parts.codes[at]);
    }
  };
  const int64_t chunks = static_cast<int64_t>(plan.chunks.size());
  const int64_t tensors = static_cast<int64_t>(plan.tensors.size());
  if (pool == nullptr) {
    select(0, chunks);
    quantise(0, tensors);
  } else {
    // Neither loop throws (no allocation but the scratch vector's).
    LOWBAND_CHECK(pool->ParallelFor(chunks, kChunksPerRange, select).ok());
    LOWBAND_CHECK(pool->ParallelFor(tensors, 1, quantise).ok());
  }
  return parts;
}

StatusOr<Encoded> EncodeSparseLoCoHost(const ParamLayout& layout, const LayoutPlan& plan, const std::vector<float>& v,
                                       ThreadPool* pool) {
  if (v.size() != static_cast<size_t>(plan.numel) || plan.numel != layout.numel()) {
    return InvalidArgument("sparseloco encode: " + std::to_string(v.size()) + " values, a plan of " +
                           std::to_string(plan.numel) + " and a layout of " + std::to_string(layout.numel()));
  }
  return PackSparseLoCo(layout, plan, SelectSparseLoCo(plan, v, pool));
}

}  // namespace lowband
