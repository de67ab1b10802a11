// Host-side update codecs: the chunk plan, the six bulk formats (round
// trips, exact sizes, byte layout), hostile payloads (each rejection named,
// random mutations never crash), aggregation bit-exact against a dense
// reference, and the sparse/dense update arithmetic.
#include "codec/codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "base/thread_pool.h"
#include "codec/params.h"
#include "tests/fakes/layouts.h"

namespace lowband {
namespace {

// ---------------------------------------------------------------- fixtures

using testing::MakeLayout;
using testing::Shape;

// Four tensors whose streams exercise every edge: a 2-D tensor with right,
// bottom and corner tiles (K = 143, odd and not a multiple of 4), a full
// tile, a short 1-D tensor and a scalar (K = 1).
ParamLayout EdgeLayout() {
  return MakeLayout({{"emb", {130, 70}}, {"blocks.0.attn.w", {64, 64}}, {"bias", {100}}, {"gain", {}}});
}

float Bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

// k sorted distinct values from [0, n) (selection sampling).
void ChooseSorted(std::mt19937_64& rng, int64_t n, int64_t k, std::vector<uint16_t>* out) {
  for (int64_t l = 0; l < n && k > 0; ++l) {
    if (static_cast<int64_t>(rng() % static_cast<uint64_t>(n - l)) < k) {
      out->push_back(static_cast<uint16_t>(l));
      --k;
    }
  }
}

// Values with spread-out exponents, so the order of a float sum matters.
float RandomValue(std::mt19937_64& rng) {
  std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-12, 12);
  return std::ldexp(mant(rng), ex(rng));
}

SparseLoCoParts RandomParts(const LayoutPlan& plan, std::mt19937_64& rng) {
  SparseLoCoParts parts;
  parts.tables.reserve(4 * plan.tensors.size());
  parts.indices.reserve(plan.kept);
  parts.codes.reserve(plan.kept);
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const float m = 0.001f * static_cast<float>(1 + t % 7);
    parts.tables.insert(parts.tables.end(), {-2 * m, -m, m, 2 * m});
  }
  for (const Chunk& ch : plan.chunks) ChooseSorted(rng, ch.numel(), ch.k, &parts.indices);
  for (int64_t i = 0; i < plan.kept; ++i) parts.codes.push_back(static_cast<uint8_t>(rng() & 3));
  return parts;
}

// A random sparse update: per chunk 0..max_per_chunk entries (often few).
Update RandomSparse(const LayoutPlan& plan, std::mt19937_64& rng, int64_t max_per_chunk) {
  Update u;
  u.dense = false;
  u.begin.push_back(0);
  for (const Chunk& ch : plan.chunks) {
    const int64_t cap = std::min<int64_t>(ch.numel(), max_per_chunk);
    const int64_t k = static_cast<int64_t>(rng() % static_cast<uint64_t>(cap + 1));
    const size_t first = u.index.size();
    ChooseSorted(rng, ch.numel(), k, &u.index);
    for (size_t i = first; i < u.index.size(); ++i) u.value.push_back(RandomValue(rng));
    u.begin.push_back(static_cast<uint32_t>(u.index.size()));
  }
  return u;
}

// sparse_2bit parts holding u's support, random codes and tables.
Sparse2BitParts Parts2Bit(const LayoutPlan& plan, const Update& u, std::mt19937_64& rng) {
  Sparse2BitParts parts;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    for (int j = 0; j < 4; ++j) parts.tables.push_back(RandomValue(rng));
  }
  parts.begin = u.begin;
  parts.indices = u.index;
  for (size_t i = 0; i < u.index.size(); ++i) parts.codes.push_back(static_cast<uint8_t>(rng() & 3));
  return parts;
}

Update RandomDense(const LayoutPlan& plan, std::mt19937_64& rng) {
  Update u;
  u.values.resize(plan.numel);
  for (float& v : u.values) v = RandomValue(rng);
  return u;
}

bool SameFloats(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), 4 * a.size()) == 0);
}

bool SameUpdate(const Update& a, const Update& b) {
  return a.dense == b.dense && SameFloats(a.values, b.values) && a.begin == b.begin && a.index == b.index &&
         SameFloats(a.value, b.value);
}

// Recompute byte_length and checksum after a deliberate edit of the bulk, so
// the parser's content checks (not the checksum) must catch it.
void Reseal(Encoded* e) {
  e->header.byte_length = e->bulk.size();
  e->header.checksum = BulkChecksum(e->bulk.data(), e->bulk.size());
}

// Independent 12-bit writer (keeps the neighbouring nibble).
void Set12(uint8_t* stream, size_t i, uint32_t v) {
  uint8_t* q = stream + (i / 2) * 3;
  if (i % 2 == 0) {
    q[0] = static_cast<uint8_t>(v & 0xff);
    q[1] = static_cast<uint8_t>((q[1] & 0xf0) | (v >> 8));
  } else {
    q[1] = static_cast<uint8_t>((q[1] & 0x0f) | ((v & 0xf) << 4));
    q[2] = static_cast<uint8_t>(v >> 4);
  }
}
uint32_t Get12(const uint8_t* stream, size_t i) {
  const uint8_t* q = stream + (i / 2) * 3;
  return i % 2 == 0 ? q[0] | ((q[1] & 0xfu) << 8) : (q[1] >> 4) | (static_cast<uint32_t>(q[2]) << 4);
}

uint64_t Bytes12(uint64_t k) { return (3 * k + 1) / 2; }
uint64_t Bytes2(uint64_t k) { return (k + 3) / 4; }

// Byte offset of tensor t's block in a sparseloco bulk.
size_t SparseLoCoOffset(const LayoutPlan& plan, size_t t) {
  size_t off = 0;
  for (size_t i = 0; i < t; ++i) off += 16 + Bytes12(plan.tensors[i].kept) + Bytes2(plan.tensors[i].kept);
  return off;
}

void PutFloat(Bytes* b, size_t off, float v) { std::memcpy(b->data() + off, &v, 4); }

// ParseUpdate must fail with `code` and a message holding every needle.
void ExpectReject(const ParamLayout& layout, const LayoutPlan& plan, const Encoded& e, StatusCode code,
                  std::initializer_list<const char*> needles) {
  auto r = ParseUpdate(layout, plan, e.header, e.bulk);
  REQUIRE_FALSE(r.ok());
  INFO(r.status().ToString());
  CHECK(r.status().code() == code);
  for (const char* n : needles) CHECK(r.status().message().find(n) != std::string::npos);
}

// Dense reference of the aggregate: per coordinate start at 0.0f, add every
// update's (densified) value in order, then times 1/R or 1/choosers.
std::vector<float> ReferenceMean(const LayoutPlan& plan, const std::vector<const Update*>& ups,
                                 AggregationRule rule) {
  std::vector<float> sum(plan.numel, 0.0f);
  std::vector<int> choosers(plan.numel, 0);
  for (const Update* u : ups) {
    const std::vector<float> d = Densify(plan, *u);
    for (int64_t i = 0; i < plan.numel; ++i) sum[i] += d[i];
    if (u->dense) {
      for (int& c : choosers) ++c;
    } else {
      for (size_t t = 0; t < plan.tensors.size(); ++t) {
        const TensorPlan& tp = plan.tensors[t];
        for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
          for (uint32_t e = u->begin[c]; e < u->begin[c + 1]; ++e) ++choosers[plan.FlatIndex(t, c, u->index[e])];
        }
      }
    }
  }
  for (int64_t i = 0; i < plan.numel; ++i) {
    if (rule == AggregationRule::kMeanAll) {
      sum[i] = sum[i] * (1.0f / static_cast<float>(ups.size()));
    } else if (choosers[i] > 0) {
      sum[i] = sum[i] * (1.0f / static_cast<float>(choosers[i]));
    }
  }
  return sum;
}

// ---------------------------------------------------------------- plan

// Every flat index of the layout is reached exactly once through FlatIndex,
// chunks stay inside their tensor and hold at most 4096 elements.
void CheckCoverage(const ParamLayout& layout, const LayoutPlan& plan) {
  REQUIRE(plan.numel == layout.numel());
  REQUIRE(plan.tensors.size() == layout.tensors.size());
  std::vector<int> seen(plan.numel, 0);
  bool inside = true, sizes_ok = true;
  size_t next_chunk = 0;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    REQUIRE(tp.first_chunk == next_chunk);
    next_chunk += tp.num_chunks;
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      const Chunk& ch = plan.chunks[c];
      sizes_ok = sizes_ok && ch.numel() >= 1 && ch.numel() <= kChunkElems && ch.rows <= kTileSide * kTileSide;
      for (int64_t l = 0; l < ch.numel(); ++l) {
        const int64_t i = plan.FlatIndex(t, c, l);
        if (i < tp.offset || i >= tp.offset + tp.numel) {
          inside = false;
        } else {
          ++seen[i];
        }
      }
    }
  }
  REQUIRE(next_chunk == plan.chunks.size());
  CHECK(inside);
  CHECK(sizes_ok);
  CHECK(std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; }));
}

struct ChunkGeom {
  int64_t origin;
  int32_t rows, cols;
};
std::vector<ChunkGeom> Geometry(const LayoutPlan& plan, size_t t) {
  std::vector<ChunkGeom> g;
  const TensorPlan& tp = plan.tensors[t];
  for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
    g.push_back({plan.chunks[c].origin, plan.chunks[c].rows, plan.chunks[c].cols});
  }
  return g;
}
bool operator==(const ChunkGeom& a, const ChunkGeom& b) {
  return a.origin == b.origin && a.rows == b.rows && a.cols == b.cols;
}

TEST_CASE("PlanLayout orders 2-D tiles: full, right edge, bottom edge, corner", "[unit]") {
  const ParamLayout layout = MakeLayout({{"a", {128, 128}},
                                         {"b", {130, 70}},
                                         {"c", {3, 100}},
                                         {"d", {64, 1}},
                                         {"e", {64, 64}},
                                         {"f", {0, 5}}});
  const LayoutPlan plan = PlanLayout(layout, 64);
  CheckCoverage(layout, plan);

  // [128, 128]: four full tiles, row-major over tiles.
  CHECK(Geometry(plan, 0) == std::vector<ChunkGeom>{{0, 64, 64}, {64, 64, 64}, {64 * 128, 64, 64},
                                                    {64 * 128 + 64, 64, 64}});
  // [130, 70]: Rf 2, Cf 1, rr 2, rc 6.
  CHECK(Geometry(plan, 1) == std::vector<ChunkGeom>{{0, 64, 64},
                                                    {64 * 70, 64, 64},
                                                    {64, 64, 6},
                                                    {64 * 70 + 64, 64, 6},
                                                    {128 * 70, 2, 64},
                                                    {128 * 70 + 64, 2, 6}});
  // [3, 100]: no full rows of tiles: one bottom-edge tile and the corner.
  CHECK(Geometry(plan, 2) == std::vector<ChunkGeom>{{0, 3, 64}, {64, 3, 36}});
  // [64, 1]: a single right-edge tile.
  CHECK(Geometry(plan, 3) == std::vector<ChunkGeom>{{0, 64, 1}});
  CHECK(Geometry(plan, 4) == std::vector<ChunkGeom>{{0, 64, 64}});
  // A zero-element tensor has no chunks but keeps its place.
  CHECK(plan.tensors[5].num_chunks == 0);
  CHECK(plan.tensors[5].numel == 0);
  CHECK(plan.tensors[5].offset == layout.numel());

  // Offsets are the layout's running sums; row_stride is C.
  CHECK(plan.tensors[1].offset == 128 * 128);
  CHECK(plan.tensors[2].offset == 128 * 128 + 130 * 70);
  CHECK(plan.tensors[1].row_stride == 70);
  // FlatIndex walks a tile row by row: local (1, 0) of the right-edge tile.
  CHECK(plan.FlatIndex(1, plan.tensors[1].first_chunk + 2, 6) == plan.tensors[1].offset + 70 + 64);
  CHECK(plan.FlatIndex(1, plan.tensors[1].first_chunk + 5, 11) == plan.tensors[1].offset + 129 * 70 + 69);
}

TEST_CASE("PlanLayout flattens other ranks into 4096-element chunks", "[unit]") {
  const ParamLayout layout = MakeLayout({{"v4096", {4096}},
                                         {"v4097", {4097}},
                                         {"one", {1}},
                                         {"v100", {100}},
                                         {"cube", {3, 50, 70}},
                                         {"scalar", {}},
                                         {"empty", {0}},
                                         {"big", {3 * 4096 + 5}}});
  const LayoutPlan plan = PlanLayout(layout, 64);
  CheckCoverage(layout, plan);
  CHECK(Geometry(plan, 0) == std::vector<ChunkGeom>{{0, 1, 4096}});
  CHECK(Geometry(plan, 1) == std::vector<ChunkGeom>{{0, 1, 4096}, {4096, 1, 1}});
  CHECK(Geometry(plan, 2) == std::vector<ChunkGeom>{{0, 1, 1}});
  CHECK(Geometry(plan, 3) == std::vector<ChunkGeom>{{0, 1, 100}});
  CHECK(Geometry(plan, 4) == std::vector<ChunkGeom>{{0, 1, 4096}, {4096, 1, 4096}, {8192, 1, 10500 - 8192}});
  CHECK(Geometry(plan, 5) == std::vector<ChunkGeom>{{0, 1, 1}});
  CHECK(plan.tensors[6].num_chunks == 0);
  CHECK(Geometry(plan, 7).size() == 4);
  CHECK(Geometry(plan, 7).back() == ChunkGeom{3 * 4096, 1, 5});
}

TEST_CASE("PlanLayout keeps ceil(topk * n / 4096) per chunk", "[unit]") {
  const ParamLayout layout = MakeLayout(
      {{"w", {130, 70}}, {"v", {4097}}, {"b", {100}}, {"s", {}}, {"m", {3, 100}}, {"z", {0, 4}}, {"r", {64, 1}}});
  for (int topk : {64, 63, 1, 7, 4095, 4096}) {
    INFO("topk " << topk);
    const LayoutPlan plan = PlanLayout(layout, topk);
    CheckCoverage(layout, plan);
    CHECK(plan.topk == topk);
    int64_t total = 0;
    bool ok = true;
    for (const TensorPlan& tp : plan.tensors) {
      int64_t sum = 0;
      for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
        const int64_t n = plan.chunks[c].numel();
        const auto want = static_cast<int64_t>(std::min<double>(n, std::ceil(topk * static_cast<double>(n) / 4096)));
        ok = ok && plan.chunks[c].k == want && plan.chunks[c].k >= 1;
        sum += plan.chunks[c].k;
      }
      ok = ok && tp.kept == sum;
      total += sum;
    }
    CHECK(ok);
    CHECK(plan.kept == total);
  }
  // Spot values: a full tile, the [130,70] edges (384, 128, 12 elements), 4097's tail.
  const LayoutPlan p64 = PlanLayout(layout, 64);
  std::vector<int> k;
  for (const Chunk& ch : p64.chunks) k.push_back(ch.k);
  // w: 4 tiles of [130,70]; v: 4096 + 1; b; s; m: [3,64] + [3,36]; r: [64,1].
  CHECK(k == std::vector<int>{64, 64, 6, 6, 2, 1, 64, 1, 2, 1, 3, 2, 1});
  CHECK(p64.kept == 64 + 64 + 6 + 6 + 2 + 1 + 64 + 1 + 2 + 1 + 3 + 2 + 1);
  const LayoutPlan p63 = PlanLayout(layout, 63);
  CHECK(p63.chunks[0].k == 63);
  CHECK(p63.chunks[2].k == 6);  // ceil(63 * 384 / 4096) = ceil(5.9)
  CHECK(p63.chunks[8].k == 2);  // ceil(63 * 100 / 4096)
  const LayoutPlan p4096 = PlanLayout(layout, 4096);
  CHECK(p4096.kept == layout.numel());
  CHECK(PlanLayout(layout, 1).chunks[0].k == 1);
  // Out-of-range topk is clamped (dense campaigns build a plan too).
  CHECK(PlanLayout(layout, 0).topk == 1);
  CHECK(PlanLayout(layout, 100000).topk == 4096);
}

// ---------------------------------------------------------------- formats

TEST_CASE("sparseloco byte layout: 12-bit pairs, odd tail, 2-bit codes", "[unit]") {
  const ParamLayout layout = MakeLayout({{"v", {4096}}});
  const LayoutPlan plan = PlanLayout(layout, 3);
  REQUIRE(plan.kept == 3);
  SparseLoCoParts parts{{-1.0f, -0.5f, 0.5f, 1.0f}, {0x123, 0x456, 0xabc}, {1, 2, 3}};
  auto e = PackSparseLoCo(layout, plan, parts);
  REQUIRE(e.ok());
  REQUIRE(e->bulk.size() == 16 + 5 + 1);
  CHECK(std::memcmp(e->bulk.data(), parts.tables.data(), 16) == 0);
  const std::vector<uint8_t> tail(e->bulk.begin() + 16, e->bulk.end());
  CHECK(tail == std::vector<uint8_t>{0x23, 0x61, 0x45, 0xbc, 0x0a, 0x39});
  CHECK(e->header.codec == CodecKind::kSparseLoCo);
  CHECK(e->header.topk == 3);
  CHECK(e->header.num_elements == 4096);
  CHECK(e->header.layout_digest == layout.Digest());
  CHECK(e->header.byte_length == 22);
  CHECK(e->header.checksum == BulkChecksum(e->bulk.data(), e->bulk.size()));
  auto u = ParseUpdate(layout, plan, e->header, e->bulk);
  REQUIRE(u.ok());
  CHECK(u->index == std::vector<uint16_t>{0x123, 0x456, 0xabc});
  CHECK(u->value == std::vector<float>{-0.5f, 0.5f, 1.0f});
}

TEST_CASE("sparseloco round trip: every index, odd K, edge tiles, 1-D", "[unit]") {
  std::mt19937_64 rng(7);
  struct Case {
    ParamLayout layout;
    int topk;
  };
  const std::vector<Case> cases = {
      {MakeLayout({{"full", {4096}}}), 4096},  // k = 4096: indices 0..4095
      {MakeLayout({{"tile", {64, 64}}}), 4096},
      {EdgeLayout(), 64},
      {EdgeLayout(), 63},
      {EdgeLayout(), 1},
      {MakeLayout({{"a", {130, 70}}, {"b", {4097}}, {"c", {3, 50, 7}}, {"e", {0}}, {"d", {1}}}), 4095},
      {MakeLayout({{"a", {200, 3}}, {"b", {5}}}), 333},
  };
  for (const Case& cs : cases) {
    const LayoutPlan plan = PlanLayout(cs.layout, cs.topk);
    INFO("topk " << cs.topk << ", " << cs.layout.tensors.size() << " tensors, kept " << plan.kept);
    const SparseLoCoParts parts = RandomParts(plan, rng);
    auto e = PackSparseLoCo(cs.layout, plan, parts);
    REQUIRE(e.ok());
    uint64_t want = 0;
    for (const TensorPlan& tp : plan.tensors) {
      want += 16 + static_cast<uint64_t>(std::ceil(1.5 * tp.kept)) + static_cast<uint64_t>(std::ceil(tp.kept / 4.0));
    }
    CHECK(e->bulk.size() == want);
    CHECK(BulkBytes(plan, CodecKind::kSparseLoCo) == want);
    auto u = ParseUpdate(cs.layout, plan, e->header, e->bulk);
    REQUIRE(u.ok());
    REQUIRE_FALSE(u->dense);
    CHECK(u->index == parts.indices);
    std::vector<float> want_values;
    std::vector<uint32_t> want_begin{0};
    size_t i = 0;
    for (size_t t = 0; t < plan.tensors.size(); ++t) {
      const TensorPlan& tp = plan.tensors[t];
      for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
        for (int j = 0; j < plan.chunks[c].k; ++j, ++i) want_values.push_back(parts.tables[4 * t + parts.codes[i]]);
        want_begin.push_back(static_cast<uint32_t>(i));
      }
    }
    CHECK(SameFloats(u->value, want_values));
    CHECK(u->begin == want_begin);
  }
  // k = 4096 really sends 0..4095 in order.
  const ParamLayout one = MakeLayout({{"full", {4096}}});
  const LayoutPlan all = PlanLayout(one, 4096);
  const SparseLoCoParts parts = RandomParts(all, rng);
  std::vector<uint16_t> iota(4096);
  for (int i = 0; i < 4096; ++i) iota[i] = static_cast<uint16_t>(i);
  CHECK(parts.indices == iota);
  CHECK(BulkBytes(all, CodecKind::kSparseLoCo) == 16 + 6144 + 1024);
}

TEST_CASE("sparseloco wire size: about 1.75 d P bytes, >= 140x smaller than fp32", "[unit]") {
  // A small transformer-like layout of ~4.2M parameters at d = 64/4096.
  const ParamLayout layout = MakeLayout({{"tok_emb", {4096, 256}},
                                         {"blocks.0.attn.qkv", {256, 768}},
                                         {"blocks.0.attn.out", {256, 256}},
                                         {"blocks.0.mlp.up", {256, 1024}},
                                         {"blocks.0.mlp.down", {1024, 256}},
                                         {"blocks.1.mlp.up", {256, 1024}},
                                         {"head", {256, 4096}},
                                         {"blocks.0.ln.w", {256}},
                                         {"blocks.0.ln.b", {256}},
                                         {"ln_f.w", {256}},
                                         {"blocks.1.mlp.down", {1024, 1024}},
                                         {"pos", {64, 256}}});
  const LayoutPlan plan = PlanLayout(layout, 64);
  const double p = static_cast<double>(layout.numel());
  const double d = 64.0 / 4096;
  const double t = static_cast<double>(layout.tensors.size());
  const double bytes = static_cast<double>(BulkBytes(plan, CodecKind::kSparseLoCo));
  INFO("P " << p << ", sparseloco bytes " << bytes);
  CHECK(std::abs(bytes - (1.75 * d * p + 16 * t)) <= 0.02 * (1.75 * d * p + 16 * t));
  CHECK(static_cast<double>(BulkBytes(plan, CodecKind::kDenseFp32)) / bytes >= 140);
  CHECK(BulkBytes(plan, CodecKind::kDenseFp32) == 4 * static_cast<uint64_t>(layout.numel()));
  CHECK(BulkBytes(plan, CodecKind::kDenseBf16) == 2 * static_cast<uint64_t>(layout.numel()));
  CHECK(BulkBytes(plan, CodecKind::kInt8) == 4 * plan.chunks.size() + layout.numel());

  // A real pack of the whole layout lands on exactly that size and parses back.
  std::mt19937_64 rng(11);
  const SparseLoCoParts parts = RandomParts(plan, rng);
  auto e = PackSparseLoCo(layout, plan, parts);
  REQUIRE(e.ok());
  CHECK(e->bulk.size() == BulkBytes(plan, CodecKind::kSparseLoCo));
  auto u = ParseUpdate(layout, plan, e->header, e->bulk);
  REQUIRE(u.ok());
  CHECK(u->index == parts.indices);
}

TEST_CASE("round trips of the dense codecs", "[unit]") {
  std::mt19937_64 rng(3);
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 64);

  SECTION("dense_fp32") {
    const Update src = RandomDense(plan, rng);
    auto e = PackDenseFp32(layout, src.values);
    REQUIRE(e.ok());
    CHECK(e->header.codec == CodecKind::kDenseFp32);
    CHECK(e->header.topk == 0);
    CHECK(e->bulk.size() == BulkBytes(plan, CodecKind::kDenseFp32));
    auto u = ParseUpdate(layout, plan, e->header, e->bulk);
    REQUIRE(u.ok());
    CHECK(u->dense);
    CHECK(SameFloats(u->values, src.values));
  }
  SECTION("dense_bf16 decodes bits << 16 exactly") {
    std::vector<uint16_t> bits(layout.numel());
    for (auto& b : bits) {
      do {
        b = static_cast<uint16_t>(rng());
      } while ((b & 0x7f80) == 0x7f80);
    }
    bits[0] = 0x3f80;  // 1.0
    bits[1] = 0xc000;  // -2.0
    bits[2] = 0x0001;  // a subnormal
    bits[3] = 0x8000;  // -0.0
    auto e = PackDenseBf16(layout, bits);
    REQUIRE(e.ok());
    CHECK(e->header.codec == CodecKind::kDenseBf16);
    CHECK(e->bulk.size() == 2 * static_cast<size_t>(layout.numel()));
    auto u = ParseUpdate(layout, plan, e->header, e->bulk);
    REQUIRE(u.ok());
    CHECK(u->values[0] == 1.0f);
    CHECK(u->values[1] == -2.0f);
    CHECK(std::signbit(u->values[3]));
    bool exact = true;
    for (size_t i = 0; i < bits.size(); ++i) {
      const float want = Bits(static_cast<uint32_t>(bits[i]) << 16);
      exact = exact && std::memcmp(&want, &u->values[i], 4) == 0;
    }
    CHECK(exact);
  }
  SECTION("int8: value = q * scale at the chunk's flat positions") {
    Int8Parts parts;
    for (size_t c = 0; c < plan.chunks.size(); ++c) parts.scales.push_back(0.01f * static_cast<float>(c + 1));
    parts.q.resize(layout.numel());
    for (auto& q : parts.q) q = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
    parts.q[0] = 3;
    parts.scales[0] = 0.5f;
    auto e = PackInt8(layout, plan, parts);
    REQUIRE(e.ok());
    CHECK(e->header.codec == CodecKind::kInt8);
    CHECK(e->bulk.size() == BulkBytes(plan, CodecKind::kInt8));
    auto u = ParseUpdate(layout, plan, e->header, e->bulk);
    REQUIRE(u.ok());
    REQUIRE(u->dense);
    CHECK(u->values[0] == 1.5f);
    bool exact = true;
    size_t pos = 0;
    for (size_t t = 0; t < plan.tensors.size(); ++t) {
      const TensorPlan& tp = plan.tensors[t];
      for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
        for (int64_t l = 0; l < plan.chunks[c].numel(); ++l, ++pos) {
          const float want = static_cast<float>(parts.q[pos]) * parts.scales[c];
          exact = exact && u->values[plan.FlatIndex(t, c, l)] == want;
        }
      }
    }
    CHECK(pos == parts.q.size());
    CHECK(exact);
  }
}

TEST_CASE("sparse_fp32 round trip through PackAggregate", "[unit]") {
  std::mt19937_64 rng(5);
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  for (int rep = 0; rep < 20; ++rep) {
    const Update src = RandomSparse(plan, rng, 40);
    auto e = PackAggregate(layout, plan, src);
    REQUIRE(e.ok());
    REQUIRE(e->header.codec == CodecKind::kSparseFp32);
    CHECK(e->header.topk == 0);
    CHECK(e->bulk.size() == BulkBytes(plan, CodecKind::kSparseFp32, src.nnz()));
    CHECK(e->bulk.size() == 2 * plan.chunks.size() + (3 * src.nnz() + 1) / 2 + 4 * src.nnz());
    auto u = ParseUpdate(layout, plan, e->header, e->bulk);
    REQUIRE(u.ok());
    CHECK(SameUpdate(*u, src));
  }
}

// The sparse_2bit payload of the tests below: 3 entries in the bias chunk
// (n = 100; indices 3, 10, 99; codes 2, 0, 3), none elsewhere.
Sparse2BitParts SmallParts2Bit(const LayoutPlan& plan) {
  Sparse2BitParts parts;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const float m = static_cast<float>(t + 1);
    parts.tables.insert(parts.tables.end(), {-2 * m, -m, m, 2 * m});
  }
  const size_t bias_chunk = plan.tensors[2].first_chunk;
  parts.begin.push_back(0);
  for (size_t c = 0; c < plan.chunks.size(); ++c) {
    if (c == bias_chunk) {
      parts.indices.insert(parts.indices.end(), {3, 10, 99});
      parts.codes.insert(parts.codes.end(), {2, 0, 3});
    }
    parts.begin.push_back(static_cast<uint32_t>(parts.indices.size()));
  }
  return parts;
}

TEST_CASE("sparse_2bit byte layout: tables, counts, Rice-coded gaps, 2-bit codes", "[unit]") {
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  REQUIRE(plan.chunks.size() == 9);
  REQUIRE(plan.tensors[2].first_chunk == 7);
  // m = 3 of n = 100: (100 - 3) / 3 = 32, so b = 5. Gaps 3, 6, 88:
  //   3: 0 | 11000        6: 0 | 01100        88 = 2*32 + 24: 110 | 00011
  // 20 bits, lowest first: 0x06 0x33 0x0c; codes 2, 0, 3 -> 0x32.
  CHECK(Sparse2BitRiceParam(100, 3) == 5);
  CHECK(Sparse2BitRiceParam(4096, 64) == 5);
  CHECK(Sparse2BitRiceParam(4096, 170) == 4);
  CHECK(Sparse2BitRiceParam(4096, 2048) == 0);
  CHECK(Sparse2BitRiceParam(100, 0) == 0);
  const uint16_t idx[] = {3, 10, 99};
  CHECK(Sparse2BitIndexBits(100, idx, 3) == 20);
  const Sparse2BitParts parts = SmallParts2Bit(plan);
  CHECK(Sparse2BitBytes(plan, parts) == 16 * 4 + 2 * 9 + 3 + 1);
  auto e = PackSparse2Bit(layout, plan, parts);
  REQUIRE(e.ok());
  CHECK(e->header.codec == CodecKind::kSparse2Bit);
  CHECK(e->header.topk == 0);
  const Bytes& b = e->bulk;
  REQUIRE(b.size() == 86);
  float t2[4];
  std::memcpy(t2, b.data() + 32, 16);
  CHECK(t2[0] == -6.0f);
  CHECK(t2[3] == 6.0f);
  for (size_t c = 0; c < 9; ++c) {
    INFO(c);
    CHECK(b.data()[64 + 2 * c] == (c == 7 ? 3 : 0));
    CHECK(b.data()[64 + 2 * c + 1] == 0);
  }
  CHECK(b.data()[82] == 0x06);
  CHECK(b.data()[83] == 0x33);
  CHECK(b.data()[84] == 0x0c);
  CHECK(b.data()[85] == 0x32);
  auto u = ParseUpdate(layout, plan, e->header, e->bulk);
  REQUIRE(u.ok());
  CHECK_FALSE(u->dense);
  CHECK(u->begin[7] == 0);
  CHECK(u->begin[8] == 3);
  CHECK(u->index == std::vector<uint16_t>{3, 10, 99});
  CHECK(u->value == std::vector<float>{3.0f, -6.0f, 6.0f});  // bias table {-6, -3, 3, 6}
}

TEST_CASE("sparse_2bit round trip: any count per chunk, empty to full", "[unit]") {
  std::mt19937_64 rng(21);
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  for (int64_t max_per_chunk : {0, 1, 40, 300, 4096}) {
    for (int rep = 0; rep < 8; ++rep) {
      INFO(max_per_chunk << " " << rep);
      const Update support = RandomSparse(plan, rng, max_per_chunk);
      const Sparse2BitParts parts = Parts2Bit(plan, support, rng);
      auto e = PackSparse2Bit(layout, plan, parts);
      REQUIRE(e.ok());
      CHECK(e->bulk.size() == Sparse2BitBytes(plan, parts));
      auto u = ParseUpdate(layout, plan, e->header, e->bulk);
      REQUIRE(u.ok());
      CHECK(u->begin == support.begin);
      CHECK(u->index == support.index);
      bool values = u->value.size() == parts.codes.size();
      for (size_t t = 0; t < plan.tensors.size() && values; ++t) {
        const TensorPlan& tp = plan.tensors[t];
        for (uint32_t i = u->begin[tp.first_chunk]; i < u->begin[tp.first_chunk + tp.num_chunks]; ++i) {
          values = values && u->value[i] == parts.tables[4 * t + parts.codes[i]];
        }
      }
      CHECK(values);
    }
  }
  // Rice coding of a 1/64 support costs less than 12 bits an index.
  Sparse2BitParts parts;
  parts.tables.assign(16, 0.0f);
  parts.begin.push_back(0);
  for (const Chunk& ch : plan.chunks) {
    ChooseSorted(rng, ch.numel(), ch.k, &parts.indices);
    parts.begin.push_back(static_cast<uint32_t>(parts.indices.size()));
  }
  parts.codes.assign(parts.indices.size(), 1);
  CHECK(Sparse2BitBytes(plan, parts) < BulkBytes(plan, CodecKind::kSparseLoCo));
}

// ---------------------------------------------------------------- hostile input

TEST_CASE("malformed sparse_2bit payloads are rejected with what and where", "[unit]") {
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  auto packed = PackSparse2Bit(layout, plan, SmallParts2Bit(plan));
  REQUIRE(packed.ok());
  const Encoded good = *packed;
  REQUIRE(good.bulk.size() == 86);
  const size_t count = 64 + 2 * 7, stream = 82, codes = 85;

  Encoded e = good;
  e.bulk.Mutable()[count] = 101;  // count 101 in a chunk of 100
  Reseal(&e);
  ExpectReject(layout, plan, e, StatusCode::kInvalidArgument,
               {"sparse_2bit tensor 2 (bias) chunk 0", "count 101 > chunk size 100"});

  e = good;
  e.bulk.Mutable()[count] = 90;  // 90 entries cannot fit in 4 bytes
  Reseal(&e);
  ExpectReject(layout, plan, e, StatusCode::kCorruption, {"at least", "90 entries"});

  e = good;
  e.bulk.Mutable()[count] = 2;  // two entries (b = 5) end inside byte 1, whose other bits are set
  Reseal(&e);
  ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"pad bits after the last index"});

  e = good;
  e.bulk.Mutable()[stream] = 0xff;  // a unary run past the chunk
  Reseal(&e);
  ExpectReject(layout, plan, e, StatusCode::kInvalidArgument,
               {"tensor 2 (bias) chunk 0", "gap of entry 0", "runs past"});

  e = good;
  e.bulk.Mutable()[stream + 1] |= 0x80;  // bit 15, the last gap's lowest remainder bit: 89, index 100
  Reseal(&e);
  ExpectReject(layout, plan, e, StatusCode::kInvalidArgument,
               {"tensor 2 (bias) chunk 0", "index 100 >= chunk size 100"});

  e = good;
  e.bulk.Mutable()[stream + 2] |= 0x10;  // a pad bit after the 20 index bits
  Reseal(&e);
  ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"pad bits after the last index"});

  e = good;
  e.bulk.Mutable()[codes] |= 0xc0;  // a fourth code slot
  Reseal(&e);
  ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"pad bits after the last 2-bit code"});

  e = good;
  PutFloat(&e.bulk.Mutable(), 32 + 4, kNaN);
  Reseal(&e);
  ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"sparse_2bit tensor 2 (bias)", "table entry 1", "nan"});

  e = good;
  e.bulk.resize(87);  // one byte too many
  Reseal(&e);
  ExpectReject(layout, plan, e, StatusCode::kCorruption, {"87 bytes", "needs 86"});

  e = good;
  e.bulk.resize(85);  // the codes cut off
  Reseal(&e);
  ExpectReject(layout, plan, e, StatusCode::kCorruption, {"85 bytes"});

  e = good;
  e.bulk.resize(70);  // shorter than the tables and counts
  Reseal(&e);
  ExpectReject(layout, plan, e, StatusCode::kCorruption, {"tables and chunk counts"});

  e = good;
  e.header.topk = 64;
  ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"sparse_2bit payload has topk 64, must be 0"});

  e = good;
  e.bulk.Mutable()[codes] ^= 0x01;  // not resealed
  ExpectReject(layout, plan, e, StatusCode::kCorruption, {"checksum"});

  // The packer refuses what the parser would.
  Sparse2BitParts bad = SmallParts2Bit(plan);
  bad.indices[1] = 3;
  CHECK(PackSparse2Bit(layout, plan, bad).status().message().find("increasing") != std::string::npos);
  bad = SmallParts2Bit(plan);
  bad.codes[0] = 4;
  CHECK_FALSE(PackSparse2Bit(layout, plan, bad).ok());
  bad = SmallParts2Bit(plan);
  bad.tables[5] = kInf;
  CHECK_FALSE(PackSparse2Bit(layout, plan, bad).ok());
  bad = SmallParts2Bit(plan);
  bad.begin[8] = 2;
  CHECK_FALSE(PackSparse2Bit(layout, plan, bad).ok());
}

TEST_CASE("malformed sparseloco payloads are rejected with what and where", "[unit]") {
  std::mt19937_64 rng(9);
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  REQUIRE(plan.tensors[0].kept == 143);
  auto packed = PackSparseLoCo(layout, plan, RandomParts(plan, rng));
  REQUIRE(packed.ok());
  const Encoded good = *packed;
  REQUIRE(ParseUpdate(layout, plan, good.header, good.bulk).ok());
  const size_t emb_idx = SparseLoCoOffset(plan, 0) + 16;
  const size_t attn_idx = SparseLoCoOffset(plan, 1) + 16;
  const size_t bias_idx = SparseLoCoOffset(plan, 2) + 16;

  SECTION("index >= chunk size (corner tile of 12)") {
    Encoded e = good;
    Set12(e.bulk.Mutable().data() + emb_idx, 142, 12);  // the corner tile's only index
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument,
                 {"sparseloco tensor 0 (emb) chunk 5", "index 12 >= chunk size 12"});
  }
  SECTION("index >= chunk size (1-D tensor of 100)") {
    Encoded e = good;
    Set12(e.bulk.Mutable().data() + bias_idx, 1, 4095);
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument,
                 {"tensor 2 (bias) chunk 0", "index 4095 >= chunk size 100"});
  }
  SECTION("duplicate index") {
    Encoded e = good;
    Set12(e.bulk.Mutable().data() + attn_idx, 1, Get12(e.bulk.Mutable().data() + attn_idx, 0));
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"tensor 1 (blocks.0.attn.w) chunk 0", "increasing"});
  }
  SECTION("unsorted indices") {
    Encoded e = good;
    const uint32_t a = Get12(e.bulk.data() + attn_idx, 10), b = Get12(e.bulk.data() + attn_idx, 11);
    Set12(e.bulk.Mutable().data() + attn_idx, 10, b);
    Set12(e.bulk.Mutable().data() + attn_idx, 11, a);
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"blocks.0.attn.w", "increasing"});
  }
  SECTION("non-finite table entries") {
    for (float bad : {kNaN, kInf, -kInf}) {
      Encoded e = good;
      PutFloat(&e.bulk.Mutable(), SparseLoCoOffset(plan, 3) + 8, bad);
      Reseal(&e);
      ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"tensor 3 (gain)", "table entry 2"});
    }
  }
  SECTION("nonzero pad bits after an odd index count") {
    Encoded e = good;
    e.bulk.Mutable()[emb_idx + (142 / 2) * 3 + 1] |= 0x10;
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"tensor 0 (emb)", "pad bits", "12-bit"});
  }
  SECTION("nonzero pad bits in the last code byte") {
    Encoded e = good;
    e.bulk.Mutable()[emb_idx + Bytes12(143) + 143 / 4] |= 0x40;  // code slot 3 of a byte holding 3 codes
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"tensor 0 (emb)", "pad bits", "2-bit"});
  }
  SECTION("wrong length, stated consistently (short and long)") {
    for (int delta : {-1, 1, -static_cast<int>(good.bulk.size())}) {
      Encoded e = good;
      e.bulk.resize(e.bulk.size() + delta);
      Reseal(&e);
      ExpectReject(layout, plan, e, StatusCode::kCorruption, {"sparseloco bulk frame is", "needs"});
    }
  }
  SECTION("truncated bulk (header still says the full length)") {
    Encoded e = good;
    e.bulk.resize(e.bulk.size() / 2);
    ExpectReject(layout, plan, e, StatusCode::kCorruption, {"header says"});
  }
  SECTION("bad checksum") {
    Encoded e = good;
    e.header.checksum ^= 1;
    ExpectReject(layout, plan, e, StatusCode::kCorruption, {"checksum"});
    Encoded f = good;
    f.bulk.Mutable()[3] ^= 0x20;  // edit without resealing
    ExpectReject(layout, plan, f, StatusCode::kCorruption, {"checksum"});
  }
  SECTION("header fields: element count, digest, topk, codec") {
    Encoded e = good;
    e.header.num_elements += 1;
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"elements"});
    e = good;
    e.header.layout_digest ^= 0x10;
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"layout digest"});
    e = good;
    e.header.topk = 63;
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"topk 63", "64"});
    e.header.topk = 0;
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"topk 0"});
    e = good;
    e.header.codec = static_cast<CodecKind>(17);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"unknown codec"});
  }
  SECTION("a plan made for another layout") {
    const LayoutPlan other = PlanLayout(MakeLayout({{"x", {10}}}), 64);
    auto r = ParseUpdate(layout, other, good.header, good.bulk);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message().find("plan") != std::string::npos);
  }
}

TEST_CASE("malformed dense, int8 and sparse_fp32 payloads are rejected", "[unit]") {
  std::mt19937_64 rng(13);
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  const size_t attn = static_cast<size_t>(plan.tensors[1].offset);

  SECTION("dense_fp32: non-finite value, topk set, wrong length") {
    auto good = PackDenseFp32(layout, RandomDense(plan, rng).values);
    REQUIRE(good.ok());
    Encoded e = *good;
    PutFloat(&e.bulk.Mutable(), 4 * (attn + 5), kInf);
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"tensor 1 (blocks.0.attn.w) element 5", "inf"});
    e = *good;
    e.header.topk = 64;
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"topk 64", "must be 0"});
    e = *good;
    e.bulk.push_back(0);
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kCorruption, {"needs"});
    e = *good;
    e.header.codec = CodecKind::kDenseBf16;  // right checksum, wrong size for bf16
    ExpectReject(layout, plan, e, StatusCode::kCorruption, {"dense_bf16", "needs"});
  }
  SECTION("dense_bf16: Inf and NaN patterns") {
    std::vector<uint16_t> bits(layout.numel(), 0x3f80);
    auto good = PackDenseBf16(layout, bits);
    REQUIRE(good.ok());
    for (uint16_t bad : {0x7f80, 0xff80, 0x7fc0, 0x7f81}) {
      Encoded e = *good;
      e.bulk.Mutable()[2 * 7] = static_cast<uint8_t>(bad);
      e.bulk.Mutable()[2 * 7 + 1] = static_cast<uint8_t>(bad >> 8);
      Reseal(&e);
      ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"tensor 0 (emb) element 7", "non-finite"});
    }
  }
  SECTION("int8: bad scales and q = -128") {
    Int8Parts parts;
    parts.scales.assign(plan.chunks.size(), 0.25f);
    parts.q.assign(layout.numel(), 1);
    auto good = PackInt8(layout, plan, parts);
    REQUIRE(good.ok());
    const size_t attn_block = 4 * plan.tensors[0].num_chunks + plan.tensors[0].numel;  // tensor 1's scales
    for (float bad : {kNaN, kInf, -1.0f, 3e38f}) {
      Encoded e = *good;
      PutFloat(&e.bulk.Mutable(), attn_block, bad);
      Reseal(&e);
      ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"int8 tensor 1 (blocks.0.attn.w) chunk 0", "scale"});
    }
    Encoded e = *good;
    e.bulk.Mutable()[4 * plan.tensors[0].num_chunks + 4096 + 3] = 0x80;  // emb chunk 1, local 3
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"int8 tensor 0 (emb) chunk 1", "-128", "index 3"});
  }
  SECTION("sparse_fp32: count, index, value, pad") {
    // Entry 17 in chunk 0 and entries 0, 1 in the bias chunk (global 7): M = 3, odd.
    const size_t bias_chunk = plan.tensors[2].first_chunk;
    REQUIRE(bias_chunk == 7);
    Update src;
    src.dense = false;
    src.begin.push_back(0);
    for (size_t c = 0; c < plan.chunks.size(); ++c) {
      if (c == bias_chunk) {
        src.index.insert(src.index.end(), {0, 1});
        src.value.insert(src.value.end(), {0.5f, -0.5f});
      } else if (c == 0) {
        src.index.push_back(17);
        src.value.push_back(2.0f);
      }
      src.begin.push_back(static_cast<uint32_t>(src.index.size()));
    }
    REQUIRE(src.nnz() == 3);
    auto good = PackAggregate(layout, plan, src);
    REQUIRE(good.ok());
    REQUIRE(good->header.codec == CodecKind::kSparseFp32);
    const size_t idx = 2 * plan.chunks.size();
    const size_t vals = idx + Bytes12(3);

    Encoded e = *good;
    e.bulk.Mutable()[2 * bias_chunk] = 101;  // count 101 in a chunk of 100
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"sparse_fp32 tensor 2 (bias) chunk 0", "count 101 > chunk size 100"});

    e = *good;
    e.bulk.Mutable()[2 * bias_chunk] = 3;  // consistent counts but the frame is short
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kCorruption, {"4 entries", "needs"});

    e = *good;
    Set12(e.bulk.Mutable().data() + idx, 2, 100);  // bias entry 1 -> index 100
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"tensor 2 (bias) chunk 0", "index 100 >= chunk size 100"});

    e = *good;
    Set12(e.bulk.Mutable().data() + idx, 2, 0);  // duplicate of entry 0 in the same chunk
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"tensor 2 (bias) chunk 0", "increasing"});

    e = *good;
    PutFloat(&e.bulk.Mutable(), vals + 4, kNaN);
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"tensor 2 (bias) chunk 0", "value at index 0", "nan"});

    e = *good;
    e.bulk.Mutable()[idx + 4] |= 0x30;  // high nibble of the odd tail
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kInvalidArgument, {"pad bits"});

    e = *good;
    e.bulk.resize(5);  // shorter than the counts
    Reseal(&e);
    ExpectReject(layout, plan, e, StatusCode::kCorruption, {"chunk counts"});
  }
}

TEST_CASE("random mutations and lengths never crash the parser", "[unit]") {
  std::mt19937_64 rng(2024);
  const ParamLayout layout = MakeLayout({{"w", {66, 70}}, {"b", {100}}, {"s", {}}});
  const LayoutPlan plan = PlanLayout(layout, 64);
  std::vector<Encoded> seeds;
  {
    auto a = PackSparseLoCo(layout, plan, RandomParts(plan, rng));
    auto b = PackDenseFp32(layout, RandomDense(plan, rng).values);
    auto c = PackDenseBf16(layout, std::vector<uint16_t>(layout.numel(), 0x3f00));
    Int8Parts ip{std::vector<float>(plan.chunks.size(), 0.1f), std::vector<int8_t>(layout.numel(), -5)};
    auto d = PackInt8(layout, plan, ip);
    auto f = PackAggregate(layout, plan, RandomSparse(plan, rng, 30));
    auto g = PackSparse2Bit(layout, plan, Parts2Bit(plan, RandomSparse(plan, rng, 200), rng));
    REQUIRE((a.ok() && b.ok() && c.ok() && d.ok() && f.ok() && g.ok()));
    REQUIRE(f->header.codec == CodecKind::kSparseFp32);
    seeds = {*a, *b, *c, *d, *f, *g};
  }
  int accepted = 0, rejected = 0;
  bool accepted_ok = true, check_agrees = true;
  std::vector<float> theta(layout.numel());
  for (int iter = 0; iter < 6000; ++iter) {
    Encoded e = seeds[iter % seeds.size()];
    switch (rng() % 6) {
      case 0:  // a few random bytes, resealed so the content checks run
      case 1:
        for (int n = 1 + rng() % 3; n > 0; --n) e.bulk.Mutable()[rng() % e.bulk.size()] ^= static_cast<uint8_t>(1 + rng() % 255);
        Reseal(&e);
        break;
      case 2:  // random length and random content, resealed
        e.bulk.resize(rng() % (2 * e.bulk.size() + 8));
        for (size_t i = 0; i < e.bulk.size(); i += 1 + rng() % 64) e.bulk.Mutable()[i] = static_cast<uint8_t>(rng());
        Reseal(&e);
        break;
      case 3:  // header fields
        e.header.num_elements = rng() % 3 ? e.header.num_elements : rng();
        e.header.topk = static_cast<uint32_t>(rng() % 3 ? e.header.topk : rng() % 5000);
        e.header.codec = static_cast<CodecKind>(rng() % 3 ? static_cast<int>(e.header.codec) : static_cast<int>(rng() % 7));
        e.header.byte_length = rng() % 2 ? e.header.byte_length : rng() % (2 * e.bulk.size() + 1);
        break;
      case 4:  // a sparse frame's counts or indices rewritten (sparse_2bit: from its tables on)
        if (e.header.codec == CodecKind::kSparse2Bit && rng() % 2) {
          e.bulk.Mutable()[rng() % e.bulk.size()] = static_cast<uint8_t>(rng());
        } else if (e.bulk.size() > 4) {
          const size_t i = rng() % (e.bulk.size() / 2);
          e.bulk.Mutable()[2 * i] = static_cast<uint8_t>(rng());
          e.bulk.Mutable()[2 * i + 1] = static_cast<uint8_t>(rng() % 32);
        }
        Reseal(&e);
        break;
      default:  // truncation without resealing
        e.bulk.resize(rng() % (e.bulk.size() + 1));
        break;
    }
    auto r = ParseUpdate(layout, plan, e.header, e.bulk);
    if (e.header.codec == CodecKind::kSparseLoCo) {
      // The coordinator's check without the parsed copy agrees, figures included.
      PayloadStats stats;
      const Status c = CheckSparseLoCoPayload(layout, plan, e.header, e.bulk, &stats);
      check_agrees = check_agrees && c.ok() == r.ok() && (r.ok() || c.code() == r.status().code());
      if (r.ok() && c.ok()) {
        float peak = 0;
        double sum_sq = 0;
        for (float v : r->value) {
          peak = std::max(peak, std::fabs(v));
          sum_sq += static_cast<double>(v) * v;
        }
        // The largest exactly; the sum of squares summed per table entry,
        // so equal up to the rounding of a sum in entry order.
        check_agrees = check_agrees && stats.max_abs == peak && std::fabs(stats.sum_sq - sum_sq) <= 1e-12 * sum_sq;
      }
    }
    if (!r.ok()) {
      ++rejected;
      accepted_ok = accepted_ok && !r.status().message().empty();
      continue;
    }
    ++accepted;
    // Whatever gets through is a well-formed, finite update.
    std::fill(theta.begin(), theta.end(), 0.0f);
    accepted_ok = accepted_ok && ApplyUpdate(plan, *r, &theta).ok();
    for (float v : theta) accepted_ok = accepted_ok && std::isfinite(v);
  }
  INFO("accepted " << accepted << ", rejected " << rejected);
  CHECK(accepted_ok);
  CHECK(check_agrees);
  CHECK(rejected > 3000);
  CHECK(accepted > 100);  // value-only edits of dense frames and sparse values go through
}

TEST_CASE("CheckBlob checks codec, layout, length, checksum and topk", "[unit]") {
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  std::mt19937_64 rng(1);
  auto sl = PackSparseLoCo(layout, plan, RandomParts(plan, rng));
  REQUIRE(sl.ok());
  CHECK(CheckBlob(layout, CodecKind::kSparseLoCo, sl->header, sl->bulk).ok());
  CHECK_FALSE(CheckBlob(layout, CodecKind::kDenseFp32, sl->header, sl->bulk).ok());
  BlobHeader h = sl->header;
  h.topk = 0;
  CHECK_FALSE(CheckBlob(layout, CodecKind::kSparseLoCo, h, sl->bulk).ok());
  h.topk = 4097;
  CHECK_FALSE(CheckBlob(layout, CodecKind::kSparseLoCo, h, sl->bulk).ok());
  auto d = PackDenseFp32(layout, std::vector<float>(layout.numel(), 1.0f));
  REQUIRE(d.ok());
  CHECK(CheckBlob(layout, CodecKind::kDenseFp32, d->header, d->bulk).ok());
  h = d->header;
  h.topk = 1;
  CHECK(CheckBlob(layout, CodecKind::kDenseFp32, h, d->bulk).code() == StatusCode::kInvalidArgument);
  h = d->header;
  h.checksum ^= 1;
  CHECK(CheckBlob(layout, CodecKind::kDenseFp32, h, d->bulk).code() == StatusCode::kCorruption);
  Bytes shorter(d->bulk.begin(), d->bulk.end() - 1);
  CHECK(CheckBlob(layout, CodecKind::kDenseFp32, d->header, shorter).code() == StatusCode::kCorruption);
}

TEST_CASE("packers reject inconsistent parts", "[unit]") {
  std::mt19937_64 rng(17);
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  const SparseLoCoParts good = RandomParts(plan, rng);
  REQUIRE(PackSparseLoCo(layout, plan, good).ok());
  auto fails = [&](const SparseLoCoParts& p, const char* needle) {
    auto r = PackSparseLoCo(layout, plan, p);
    REQUIRE_FALSE(r.ok());
    INFO(r.status().ToString());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find(needle) != std::string::npos);
  };
  SparseLoCoParts p = good;
  p.codes[5] = 4;
  fails(p, "code 4");
  p = good;
  p.indices.pop_back();
  fails(p, "indices");
  p = good;
  p.tables[6] = kNaN;
  fails(p, "table entry 2");
  p = good;
  p.indices[plan.tensors[0].kept + plan.tensors[1].kept + 1] = 100;  // bias's second index
  fails(p, "index 100 >= chunk size 100");
  p = good;
  p.indices[1] = p.indices[0];
  fails(p, "increasing");

  Int8Parts ip{std::vector<float>(plan.chunks.size(), 1.0f), std::vector<int8_t>(layout.numel(), 0)};
  REQUIRE(PackInt8(layout, plan, ip).ok());
  ip.q[10] = -128;
  CHECK_FALSE(PackInt8(layout, plan, ip).ok());
  ip.q[10] = 0;
  ip.scales[2] = -0.5f;
  CHECK_FALSE(PackInt8(layout, plan, ip).ok());
  ip.scales.pop_back();
  CHECK_FALSE(PackInt8(layout, plan, ip).ok());

  CHECK_FALSE(PackDenseFp32(layout, std::vector<float>(layout.numel() - 1)).ok());
  std::vector<float> nan_values(layout.numel(), 0.0f);
  nan_values[3] = kNaN;
  CHECK_FALSE(PackDenseFp32(layout, nan_values).ok());
  std::vector<uint16_t> bits(layout.numel(), 0);
  bits[9] = 0x7f80;
  CHECK_FALSE(PackDenseBf16(layout, bits).ok());
}

// ---------------------------------------------------------------- aggregation

TEST_CASE("AggregateMean of sparse updates is bit-exact with the dense reference", "[unit]") {
  std::mt19937_64 rng(21);
  const ParamLayout layout = MakeLayout({{"emb", {130, 70}}, {"attn", {128, 64}}, {"b", {4097}}, {"s", {}}, {"z", {0}}});
  const LayoutPlan plan = PlanLayout(layout, 64);
  for (AggregationRule rule : {AggregationRule::kMeanAll, AggregationRule::kMeanChoosers}) {
    for (size_t r = 1; r <= 4; ++r) {
      for (int rep = 0; rep < 3; ++rep) {
        INFO("rule " << static_cast<int>(rule) << ", R " << r << ", rep " << rep);
        // Dense-ish chunks (rep 2) take the scan path, sparse ones the sort path.
        std::vector<Update> ups;
        for (size_t i = 0; i < r; ++i) ups.push_back(RandomSparse(plan, rng, rep == 2 ? 4096 : 200));
        std::vector<const Update*> ptrs;
        for (const Update& u : ups) ptrs.push_back(&u);
        const Update agg = AggregateMean(plan, ptrs, rule);
        REQUIRE_FALSE(agg.dense);
        CHECK(SameFloats(Densify(plan, agg), ReferenceMean(plan, ptrs, rule)));
        // The sparse result holds exactly the sorted union of the inputs' indices.
        bool union_ok = agg.begin.size() == plan.chunks.size() + 1;
        for (size_t c = 0; union_ok && c < plan.chunks.size(); ++c) {
          std::set<uint16_t> want;
          for (const Update& u : ups) want.insert(u.index.begin() + u.begin[c], u.index.begin() + u.begin[c + 1]);
          const std::vector<uint16_t> got(agg.index.begin() + agg.begin[c], agg.index.begin() + agg.begin[c + 1]);
          union_ok = got == std::vector<uint16_t>(want.begin(), want.end());
        }
        CHECK(union_ok);
      }
    }
  }
}

// A sparse update of a single-chunk layout.
Update OneChunkSparse(std::vector<uint16_t> idx, std::vector<float> val) {
  Update u;
  u.dense = false;
  u.begin = {0, static_cast<uint32_t>(idx.size())};
  u.index = std::move(idx);
  u.value = std::move(val);
  return u;
}

TEST_CASE("AggregateMean: the order of the sum and the rule matter as specified", "[unit]") {
  const ParamLayout layout = MakeLayout({{"v", {8}}});
  const LayoutPlan plan = PlanLayout(layout, 64);
  // 1e8 + 1 - 1e8 is 0 in fp32 when summed left to right; 1 when not.
  const Update a = OneChunkSparse({2, 5}, {1e8f, 3.0f}), b = OneChunkSparse({2}, {1.0f}), c = OneChunkSparse({2, 7}, {-1e8f, 6.0f});
  const Update all = AggregateMean(plan, {&a, &b, &c}, AggregationRule::kMeanAll);
  CHECK(all.index == std::vector<uint16_t>{2, 5, 7});
  CHECK(all.value == std::vector<float>{0.0f, 3.0f * (1.0f / 3.0f), 6.0f * (1.0f / 3.0f)});
  const Update ch = AggregateMean(plan, {&a, &b, &c}, AggregationRule::kMeanChoosers);
  CHECK(ch.value == std::vector<float>{0.0f, 3.0f, 6.0f});
  const Update reordered = AggregateMean(plan, {&a, &c, &b}, AggregationRule::kMeanChoosers);
  CHECK(reordered.value[0] == 1.0f * (1.0f / 3.0f));
  // Every sum starts from +0.0f, so a lone -0.0f entry comes out as +0.0f.
  const Update neg = OneChunkSparse({4}, {-0.0f});
  for (AggregationRule rule : {AggregationRule::kMeanAll, AggregationRule::kMeanChoosers}) {
    const Update z = AggregateMean(plan, {&neg}, rule);
    REQUIRE(z.value.size() == 1);
    CHECK_FALSE(std::signbit(z.value[0]));
  }
}

TEST_CASE("AggregateMean reads sparseloco payloads in place, bit-identical to the parsed ones, on any pool",
          "[unit]") {
  std::mt19937_64 rng(31);
  // Over 512 chunks: the sparse result is assembled from several waves of ranges.
  const ParamLayout layout =
      MakeLayout({{"emb", {130, 70}}, {"w", {640, 1100}}, {"v", {2000000}}, {"b", {100}}, {"s", {}}});
  const LayoutPlan plan = PlanLayout(layout, 64);
  REQUIRE(plan.chunks.size() > 512);
  std::vector<Encoded> payloads;
  std::vector<Update> parsed;
  for (int i = 0; i < 5; ++i) {
    auto e = PackSparseLoCo(layout, plan, RandomParts(plan, rng));
    REQUIRE(e.ok());
    auto u = ParseUpdate(layout, plan, e->header, e->bulk);
    REQUIRE(u.ok());
    payloads.push_back(*e);
    parsed.push_back(*u);
  }
  const Update sparse = RandomSparse(plan, rng, 100), dense = RandomDense(plan, rng);
  ThreadPool two(2), three(3);
  for (AggregationRule rule : {AggregationRule::kMeanAll, AggregationRule::kMeanChoosers}) {
    for (const std::vector<double>& weights : {std::vector<double>{}, std::vector<double>{3, 1, 4, 1, 5, 9}}) {
      for (const Update* extra : {&sparse, &dense}) {
        // Payloads 0..4 and one parsed update (sparse, or dense: a dense result).
        std::vector<const Update*> reference;
        std::vector<AggregateInput> in_place;
        for (size_t i = 0; i < payloads.size(); ++i) {
          reference.push_back(&parsed[i]);
          in_place.push_back(AggregateInput{nullptr, &payloads[i].bulk.bytes()});
          if (i == 2) {
            reference.push_back(extra);
            in_place.push_back(AggregateInput{extra, nullptr});
          }
        }
        const Update want = AggregateMean(plan, reference, rule, weights);
        REQUIRE(want.dense == extra->dense);
        for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &two, &three}) {
          INFO("rule " << static_cast<int>(rule) << ", weighted " << !weights.empty() << ", dense " << extra->dense
                       << ", pool " << (pool ? pool->size() : 0));
          CHECK(SameUpdate(AggregateMean(plan, in_place, rule, weights, pool), want));
          std::vector<AggregateInput> parsed_inputs;
          for (const Update* u : reference) parsed_inputs.push_back(AggregateInput{u, nullptr});
          CHECK(SameUpdate(AggregateMean(plan, parsed_inputs, rule, weights, pool), want));
        }
      }
    }
  }
}

// PackAggregateMean against the reference it replaces: AggregateMean, then
// PackAggregate, then ApplyUpdate.
void CheckPackedMean(const ParamLayout& layout, const LayoutPlan& plan, const std::vector<AggregateInput>& inputs,
                     AggregationRule rule, const std::vector<double>& weights, ThreadPool* pool,
                     const std::shared_ptr<Bytes>& buffer, const std::vector<float>& theta0) {
  const Update mean = AggregateMean(plan, inputs, rule, weights, nullptr);
  auto want = PackAggregate(layout, plan, mean);
  REQUIRE(want.ok());
  std::vector<float> want_theta = theta0;
  REQUIRE(ApplyUpdate(plan, mean, &want_theta).ok());
  std::vector<float> theta = theta0;
  uint64_t nnz = 0, digest = 0;
  auto got = PackAggregateMean(layout, plan, inputs, rule, weights, pool, buffer, &theta, &nnz, &digest);
  REQUIRE(got.ok());
  CHECK(digest == ValuesDigest(want_theta.data(), want_theta.size()));
  CHECK(got->header.codec == want->header.codec);
  CHECK(got->header.num_elements == want->header.num_elements);
  CHECK(got->header.layout_digest == want->header.layout_digest);
  CHECK(got->header.byte_length == want->header.byte_length);
  CHECK(got->header.checksum == want->header.checksum);
  CHECK(got->header.topk == want->header.topk);
  CHECK(got->bulk == want->bulk);
  CHECK(got->bulk.data() == buffer->data());  // written in the caller's buffer
  CHECK(nnz == mean.nnz());
  CHECK(SameFloats(theta, want_theta));
}

TEST_CASE("PackAggregateMean packs and applies the mean bit for bit as AggregateMean, PackAggregate, ApplyUpdate",
          "[unit]") {
  std::mt19937_64 rng(47);
  // Edge tiles, odd stream lengths, 1-D chunks, a scalar; over 512 chunks.
  const ParamLayout layout =
      MakeLayout({{"emb", {130, 70}}, {"w", {640, 1100}}, {"v", {2000000}}, {"b", {100}}, {"s", {}}});
  for (int topk : {64, 1500}) {  // sparse_fp32; at 1500 of 4096 the union of 5 is dense_fp32
    const LayoutPlan plan = PlanLayout(layout, topk);
    std::vector<Encoded> payloads;
    for (int i = 0; i < 5; ++i) {
      auto e = PackSparseLoCo(layout, plan, RandomParts(plan, rng));
      REQUIRE(e.ok());
      payloads.push_back(*e);
    }
    const Update sparse = RandomSparse(plan, rng, 100);
    std::vector<float> theta0(static_cast<size_t>(plan.numel));
    for (float& v : theta0) v = RandomValue(rng);
    ThreadPool two(2), three(3);
    for (AggregationRule rule : {AggregationRule::kMeanAll, AggregationRule::kMeanChoosers}) {
      for (const std::vector<double>& weights : {std::vector<double>{}, std::vector<double>{3, 1, 4, 1, 5, 9}}) {
        std::vector<AggregateInput> inputs;
        for (size_t i = 0; i < payloads.size(); ++i) {
          inputs.push_back(AggregateInput{nullptr, &payloads[i].bulk.bytes()});
          if (i == 2) inputs.push_back(AggregateInput{&sparse, nullptr});
        }
        for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &two, &three}) {
          INFO("topk " << topk << ", rule " << static_cast<int>(rule) << ", weighted " << !weights.empty() << ", pool "
                       << (pool ? pool->size() : 0));
          CheckPackedMean(layout, plan, inputs, rule, weights, pool, std::make_shared<Bytes>(), theta0);
        }
      }
    }
    // Without theta: the payload alone.
    std::vector<AggregateInput> inputs;
    for (const Encoded& e : payloads) inputs.push_back(AggregateInput{nullptr, &e.bulk.bytes()});
    uint64_t nnz = 0;
    auto alone = PackAggregateMean(layout, plan, inputs, AggregationRule::kMeanAll, {}, nullptr,
                                   std::make_shared<Bytes>(), nullptr, &nnz);
    REQUIRE(alone.ok());
    CHECK(alone->header.codec == (topk == 64 ? CodecKind::kSparseFp32 : CodecKind::kDenseFp32));
    CHECK(alone->bulk ==
          PackAggregate(layout, plan, AggregateMean(plan, inputs, AggregationRule::kMeanAll, {}, nullptr))->bulk);
  }
}

TEST_CASE("PackAggregateMean: a reused buffer carries nothing from one round to the next", "[unit]") {
  std::mt19937_64 rng(53);
  const ParamLayout layout = MakeLayout({{"emb", {130, 70}}, {"w", {640, 1100}}, {"b", {100}}, {"s", {}}});
  const LayoutPlan plan = PlanLayout(layout, 64);
  std::vector<float> theta0(static_cast<size_t>(plan.numel));
  for (float& v : theta0) v = RandomValue(rng);
  // Rounds of different sizes in a row, on one buffer: each as from a fresh
  // one. Many inputs (a large sparse payload), then few (smaller: the tail
  // of the last one stays in the buffer), then many again, then a dense_fp32
  // payload (larger), then few.
  auto round_of = [&](int sites, int max_per_chunk) {
    std::vector<Update> ups;
    for (int i = 0; i < sites; ++i) ups.push_back(RandomSparse(plan, rng, max_per_chunk));
    return ups;
  };
  const std::vector<std::vector<Update>> rounds = {round_of(6, 64), round_of(2, 16), round_of(7, 64), round_of(9, 3000),
                                                   round_of(1, 5)};
  auto buffer = std::make_shared<Bytes>();
  ThreadPool two(2);
  for (size_t r = 0; r < rounds.size(); ++r) {
    INFO("round " << r);
    std::vector<AggregateInput> inputs;
    for (const Update& u : rounds[r]) inputs.push_back(AggregateInput{&u, nullptr});
    CheckPackedMean(layout, plan, inputs, AggregationRule::kMeanChoosers, {}, r % 2 ? &two : nullptr, buffer, theta0);
  }
}

TEST_CASE("PackAggregateMean refuses inputs that could overflow, touching nothing", "[unit]") {
  const ParamLayout layout = MakeLayout({{"v", {8}}});
  const LayoutPlan plan = PlanLayout(layout, 64);
  const Update big = OneChunkSparse({2, 5}, {3e37f, 1.0f}), small = OneChunkSparse({2}, {1.0f});
  const Update nan = OneChunkSparse({3}, {kNaN});
  std::vector<float> theta(8, 1.0f);
  auto buffer = std::make_shared<Bytes>(5, 7);
  uint64_t nnz = 0;
  for (const Update* odd : {&big, &nan}) {
    auto r = PackAggregateMean(layout, plan, {AggregateInput{odd, nullptr}, AggregateInput{&small, nullptr}},
                               AggregationRule::kMeanAll, {}, nullptr, buffer, &theta, &nnz);
    CHECK(r.status().code() == StatusCode::kFailedPrecondition);
    CHECK(theta == std::vector<float>(8, 1.0f));
    CHECK(*buffer == Bytes(5, 7));
  }
  // Large but bounded: packed (3e37 / 2 is the mean).
  const Update large = OneChunkSparse({2}, {3e35f});
  auto ok = PackAggregateMean(layout, plan, {AggregateInput{&large, nullptr}, AggregateInput{&small, nullptr}},
                              AggregationRule::kMeanAll, {}, nullptr, buffer, &theta, &nnz);
  CHECK(ok.ok());
}

TEST_CASE("AggregateMean with a dense input gives a dense result", "[unit]") {
  std::mt19937_64 rng(23);
  const ParamLayout layout = MakeLayout({{"emb", {130, 70}}, {"b", {4097}}, {"s", {}}});
  const LayoutPlan plan = PlanLayout(layout, 64);
  for (AggregationRule rule : {AggregationRule::kMeanAll, AggregationRule::kMeanChoosers}) {
    const Update s1 = RandomSparse(plan, rng, 100), d = RandomDense(plan, rng), s2 = RandomSparse(plan, rng, 100);
    const std::vector<const Update*> ptrs{&s1, &d, &s2};
    const Update agg = AggregateMean(plan, ptrs, rule);
    REQUIRE(agg.dense);
    CHECK(SameFloats(agg.values, ReferenceMean(plan, ptrs, rule)));
    const Update only = AggregateMean(plan, {&d}, rule);
    CHECK(SameFloats(only.values, d.values));  // x * 1.0f
  }
}

TEST_CASE("AggregateMean weighted by tokens: each update counts its weight", "[unit]") {
  const ParamLayout layout = MakeLayout({{"v", {8}}});
  const LayoutPlan plan = PlanLayout(layout, 64);
  const Update a = OneChunkSparse({1, 3}, {4.0f, 8.0f}), b = OneChunkSparse({1}, {1.0f});
  // Weights 3000 : 1000 tokens -> normalised 1.5 : 0.5.
  const Update all = AggregateMean(plan, {&a, &b}, AggregationRule::kMeanAll, {3000, 1000});
  CHECK(all.index == std::vector<uint16_t>{1, 3});
  CHECK(all.value[0] == Approx((3 * 4.0 + 1 * 1.0) / 4));
  CHECK(all.value[1] == Approx(3 * 8.0 / 4));
  // Choosers: coordinate 3 was chosen by a alone, so it is a's value.
  const Update ch = AggregateMean(plan, {&a, &b}, AggregationRule::kMeanChoosers, {3000, 1000});
  CHECK(ch.value[0] == Approx((3 * 4.0 + 1 * 1.0) / 4));
  CHECK(ch.value[1] == 8.0f);
  // Dense inputs take the same weights.
  Update d1, d2;
  d1.values.assign(8, 2.0f);
  d2.values.assign(8, 6.0f);
  const Update dw = AggregateMean(plan, {&d1, &d2}, AggregationRule::kMeanAll, {1, 3});
  REQUIRE(dw.dense);
  for (float v : dw.values) CHECK(v == Approx(5.0));
  // Equal weights are exactly the unweighted mean, on both paths.
  std::mt19937_64 rng(31);
  const ParamLayout big = MakeLayout({{"emb", {130, 70}}, {"b", {4097}}});
  const LayoutPlan bplan = PlanLayout(big, 64);
  for (AggregationRule rule : {AggregationRule::kMeanAll, AggregationRule::kMeanChoosers}) {
    const Update s1 = RandomSparse(bplan, rng, 300), s2 = RandomSparse(bplan, rng, 300), dd = RandomDense(bplan, rng);
    const Update plain = AggregateMean(bplan, {&s1, &s2}, rule);
    const Update equal = AggregateMean(bplan, {&s1, &s2}, rule, {4096, 4096});
    CHECK(plain.index == equal.index);
    CHECK(SameFloats(plain.value, equal.value));
    const Update pd = AggregateMean(bplan, {&s1, &dd}, rule);
    const Update ed = AggregateMean(bplan, {&s1, &dd}, rule, {7, 7});
    CHECK(SameFloats(pd.values, ed.values));
  }
}

TEST_CASE("ApplyUpdate: sparse equals its densified form, bit for bit", "[unit]") {
  std::mt19937_64 rng(29);
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  for (int rep = 0; rep < 5; ++rep) {
    const Update u = RandomSparse(plan, rng, 500);
    Update dense;
    dense.values = Densify(plan, u);
    std::vector<float> theta = RandomDense(plan, rng).values;
    theta[0] = -0.0f;
    std::vector<float> a = theta, b = theta;
    REQUIRE(ApplyUpdate(plan, u, &a).ok());
    REQUIRE(ApplyUpdate(plan, dense, &b).ok());
    CHECK(SameFloats(a, b));
    bool exact = true;
    for (size_t i = 0; i < theta.size(); ++i) {
      const float want = theta[i] - dense.values[i];
      exact = exact && std::memcmp(&want, &a[i], 4) == 0;
    }
    CHECK(exact);
  }
  // Densify: zeros plus the entries.
  Update u = RandomSparse(plan, rng, 3);
  const std::vector<float> d = Densify(plan, u);
  CHECK(std::count_if(d.begin(), d.end(), [](float v) { return v != 0.0f; }) == static_cast<long>(u.nnz()));
  // Size mismatch and malformed updates leave theta untouched.
  std::vector<float> theta(layout.numel(), 1.0f);
  std::vector<float> short_theta(3, 1.0f);
  CHECK_FALSE(ApplyUpdate(plan, u, &short_theta).ok());
  Update bad;  // one entry, at index 1 of the scalar's 1-element chunk
  bad.dense = false;
  bad.begin.assign(plan.chunks.size() + 1, 0);
  bad.begin.back() = 1;
  bad.index = {1};
  bad.value = {1.0f};
  auto st = ApplyUpdate(plan, bad, &theta);
  CHECK(st.code() == StatusCode::kInvalidArgument);
  CHECK(st.message().find("index 1 >= chunk size 1") != std::string::npos);
  bad.index = {0};
  CHECK(ApplyUpdate(plan, bad, &short_theta).code() == StatusCode::kInvalidArgument);
  Update bad_begin = u;
  bad_begin.begin.pop_back();
  CHECK_FALSE(ApplyUpdate(plan, bad_begin, &theta).ok());
  CHECK(std::all_of(theta.begin(), theta.end(), [](float v) { return v == 1.0f; }));
}

TEST_CASE("PackAggregate picks the smaller downlink format", "[unit]") {
  std::mt19937_64 rng(31);
  const ParamLayout layout = EdgeLayout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  const uint64_t dense_bytes = BulkBytes(plan, CodecKind::kDenseFp32);
  // Largest nnz that still beats dense fp32.
  uint64_t m_star = 0;
  while (BulkBytes(plan, CodecKind::kSparseFp32, m_star + 1) < dense_bytes) ++m_star;
  auto with_nnz = [&](uint64_t m) {
    // The first m flat positions of the plan order.
    Update u;
    u.dense = false;
    u.begin.push_back(0);
    for (const Chunk& ch : plan.chunks) {
      for (int64_t l = 0; l < ch.numel() && u.index.size() < m; ++l) {
        u.index.push_back(static_cast<uint16_t>(l));
        u.value.push_back(RandomValue(rng));
      }
      u.begin.push_back(static_cast<uint32_t>(u.index.size()));
    }
    return u;
  };
  for (uint64_t m : {uint64_t{0}, uint64_t{1}, m_star, m_star + 1, static_cast<uint64_t>(layout.numel())}) {
    INFO("nnz " << m << ", threshold " << m_star);
    const Update u = with_nnz(m);
    auto e = PackAggregate(layout, plan, u);
    REQUIRE(e.ok());
    const bool want_sparse = m <= m_star;
    CHECK((e->header.codec == CodecKind::kSparseFp32) == want_sparse);
    CHECK(e->bulk.size() == (want_sparse ? BulkBytes(plan, CodecKind::kSparseFp32, m) : dense_bytes));
    CHECK(e->header.checksum == BulkChecksum(e->bulk.data(), e->bulk.size()));
    auto back = ParseUpdate(layout, plan, e->header, e->bulk);
    REQUIRE(back.ok());
    if (want_sparse) {
      CHECK(SameUpdate(*back, u));
    } else {
      CHECK(back->dense);
      CHECK(SameFloats(back->values, Densify(plan, u)));
    }
  }
  const Update d = RandomDense(plan, rng);
  auto e = PackAggregate(layout, plan, d);
  REQUIRE(e.ok());
  CHECK(e->header.codec == CodecKind::kDenseFp32);
  auto back = ParseUpdate(layout, plan, e->header, e->bulk);
  REQUIRE(back.ok());
  CHECK(SameUpdate(*back, d));
  Update nan = with_nnz(5);
  nan.value[2] = kNaN;
  CHECK_FALSE(PackAggregate(layout, plan, nan).ok());
}

}  // namespace
}  // namespace lowband
