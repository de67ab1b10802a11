// The host SparseLoCo encoder: exactly k_c kept per chunk, the largest
// magnitudes (ties to the lower index), codes and tables as specified
// (against a direct transcription of the rules), payloads ParseUpdate
// accepts, the same bytes with or without a pool, non-finite input refused.
#include "codec/sparseloco_host.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "base/thread_pool.h"
#include "codec/codec.h"
#include "tests/fakes/layouts.h"

namespace lowband {
namespace {

using testing::MakeLayout;

// Edge tiles, a full tile, a long and a short 1-D tensor, a scalar, an
// empty tensor.
ParamLayout EdgeLayout() {
  return MakeLayout(
      {{"emb", {130, 70}}, {"blocks.0.w", {64, 64}}, {"long", {9000}}, {"bias", {100}}, {"gain", {}}, {"none", {0}}});
}

std::vector<float> Random(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// The chunk's values in local index order.
std::vector<float> ChunkValues(const LayoutPlan& plan, size_t t, size_t c, const std::vector<float>& v) {
  std::vector<float> out;
  for (int64_t l = 0; l < plan.chunks[c].numel(); ++l) out.push_back(v[plan.FlatIndex(t, c, l)]);
  return out;
}

bool SameBits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

TEST_CASE("host sparseloco: k_c per chunk, the largest magnitudes, increasing indices", "[unit]") {
  const ParamLayout layout = EdgeLayout();
  for (int topk : {1, 64, 1000, 4096}) {
    const LayoutPlan plan = PlanLayout(layout, topk);
    const std::vector<float> v = Random(static_cast<size_t>(plan.numel), 3 + topk);
    const SparseLoCoParts parts = SelectSparseLoCo(plan, v, nullptr);
    REQUIRE(parts.indices.size() == static_cast<size_t>(plan.kept));
    size_t at = 0;
    for (size_t t = 0; t < plan.tensors.size(); ++t) {
      const TensorPlan& tp = plan.tensors[t];
      for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
        const std::vector<float> x = ChunkValues(plan, t, c, v);
        const size_t k = static_cast<size_t>(plan.chunks[c].k);
        // The reference: indices sorted by |x| descending, then index.
        std::vector<uint16_t> order(x.size());
        std::iota(order.begin(), order.end(), uint16_t{0});
        std::stable_sort(order.begin(), order.end(),
                         [&](uint16_t a, uint16_t b) { return std::abs(x[a]) > std::abs(x[b]); });
        std::vector<uint16_t> want(order.begin(), order.begin() + static_cast<long>(k));
        std::sort(want.begin(), want.end());
        const std::vector<uint16_t> got(parts.indices.begin() + static_cast<long>(at),
                                        parts.indices.begin() + static_cast<long>(at + k));
        INFO("topk " << topk << " tensor " << t << " chunk " << c - tp.first_chunk);
        CHECK(got == want);
        at += k;
      }
    }
  }
}

TEST_CASE("host sparseloco: equal magnitudes go to the lower index, whatever their sign", "[unit]") {
  const ParamLayout layout = MakeLayout({{"w", {64, 64}}, {"b", {10}}});
  const LayoutPlan plan = PlanLayout(layout, 2);  // k = 2 per tile, 1 for the 10-value chunk
  std::vector<float> v(static_cast<size_t>(plan.numel), 0.5f);
  v[7] = -2.0f;   // the largest of the tile
  v[100] = 1.0f;  // ties with the three below; the lowest index among them wins
  v[101] = -1.0f;
  v[4000] = 1.0f;
  v[4096 + 9] = -3.0f;
  v[4096 + 3] = 3.0f;  // ties with index 9, lower
  const SparseLoCoParts parts = SelectSparseLoCo(plan, v, nullptr);
  CHECK(parts.indices == std::vector<uint16_t>{7, 100, 3});
  // All zero: the lowest indices.
  const SparseLoCoParts zeros = SelectSparseLoCo(plan, std::vector<float>(v.size(), 0.0f), nullptr);
  CHECK(zeros.indices == std::vector<uint16_t>{0, 1, 0});
}

TEST_CASE("host sparseloco: codes and tables follow the 2-bit rules", "[unit]") {
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 300);
  const std::vector<float> v = Random(static_cast<size_t>(plan.numel), 11);
  const SparseLoCoParts parts = SelectSparseLoCo(plan, v, nullptr);
  size_t at = 0;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    INFO("tensor " << t);
    std::vector<float> x;
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      for (int j = 0; j < plan.chunks[c].k; ++j) x.push_back(v[plan.FlatIndex(t, c, parts.indices[at + x.size()])]);
    }
    const float* table = &parts.tables[4 * t];
    if (x.empty()) {
      CHECK(std::vector<float>(table, table + 4) == std::vector<float>(4, 0.0f));
      continue;
    }
    double sum = 0;
    for (float a : x) sum += a;
    const float shift = static_cast<float>(sum / x.size());
    double dev = 0;
    for (float a : x) dev += std::fabs(a - shift);
    const float scale = static_cast<float>(dev / x.size());
    double bin_sum[4] = {0, 0, 0, 0};
    int bin_count[4] = {0, 0, 0, 0};
    for (size_t i = 0; i < x.size(); ++i) {
      const int code = (x[i] >= shift - scale) + (x[i] >= shift) + (x[i] >= shift + scale);
      CHECK(parts.codes[at + i] == code);
      bin_sum[code] += x[i];
      ++bin_count[code];
    }
    for (int b = 0; b < 4; ++b) {
      const float want = bin_count[b] > 0 ? static_cast<float>(bin_sum[b] / bin_count[b])
                                          : static_cast<float>(shift + (b - 1.5) * static_cast<double>(scale));
      CHECK(SameBits(table[b], want));
    }
    at += x.size();
  }
  // A one-value tensor (the scalar): shift is the value and scale 0, so all
  // three thresholds equal it and it lands in bin 3.
  const size_t gain = 4;
  CHECK(plan.tensors[gain].kept == 1);
  CHECK(SameBits(parts.tables[4 * gain + 3], v[static_cast<size_t>(plan.tensors[gain].offset)]));
}

TEST_CASE("host sparseloco: payloads parse back to the kept values' bin means", "[unit]") {
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  const std::vector<float> v = Random(static_cast<size_t>(plan.numel), 5);
  auto enc = EncodeSparseLoCoHost(layout, plan, v, nullptr);
  REQUIRE(enc.ok());
  CHECK(enc->header.codec == CodecKind::kSparseLoCo);
  CHECK(enc->bulk.size() == BulkBytes(plan, CodecKind::kSparseLoCo));
  auto u = ParseUpdate(layout, plan, enc->header, enc->bulk);
  REQUIRE(u.ok());
  REQUIRE_FALSE(u->dense);
  const SparseLoCoParts parts = SelectSparseLoCo(plan, v, nullptr);
  CHECK(u->index == parts.indices);
  size_t i = 0;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    for (int64_t j = 0; j < plan.tensors[t].kept; ++j, ++i) {
      CHECK(SameBits(u->value[i], parts.tables[4 * t + parts.codes[i]]));
    }
  }
  // The decoded update is close to v where it kept something: 2 bits of a
  // normal's tail keep the sign and the rough size.
  const std::vector<float> dense = Densify(plan, *u);
  double err = 0, norm = 0;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      for (uint32_t e = u->begin[c]; e < u->begin[c + 1]; ++e) {
        const int64_t f = plan.FlatIndex(t, c, u->index[e]);
        err += (dense[f] - v[f]) * (dense[f] - v[f]);
        norm += v[f] * v[f];
      }
    }
  }
  CHECK(err < 0.1 * norm);
}

TEST_CASE("host sparseloco: deterministic, and a pool changes nothing", "[unit]") {
  const ParamLayout layout = MakeLayout({{"emb", {700, 300}}, {"w", {256, 1024}}, {"b", {50000}}, {"g", {7}}});
  const LayoutPlan plan = PlanLayout(layout, 64);
  const std::vector<float> v = Random(static_cast<size_t>(plan.numel), 9);
  auto one = EncodeSparseLoCoHost(layout, plan, v, nullptr);
  auto again = EncodeSparseLoCoHost(layout, plan, v, nullptr);
  ThreadPool pool(3);
  auto pooled = EncodeSparseLoCoHost(layout, plan, v, &pool);
  REQUIRE(one.ok());
  REQUIRE(again.ok());
  REQUIRE(pooled.ok());
  CHECK(one->bulk == again->bulk);
  CHECK(one->bulk == pooled->bulk);
  CHECK(one->header.checksum == pooled->header.checksum);
}

TEST_CASE("host sparseloco: a NaN or an infinity is refused, a wrong size too", "[unit]") {
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
    std::vector<float> v = Random(static_cast<size_t>(plan.numel), 1);
    v[5000] = bad;
    auto enc = EncodeSparseLoCoHost(layout, plan, v, nullptr);
    CHECK(enc.status().code() == StatusCode::kInvalidArgument);
  }
  CHECK(EncodeSparseLoCoHost(layout, plan, std::vector<float>(3, 0.0f), nullptr).status().code() ==
        StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lowband
