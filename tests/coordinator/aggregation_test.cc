// Aggregation::Close's plain mean of sparseloco uploads with sgd lr 1 and
// the sparse_fp32 downlink: the mean written straight into the logged
// payload, in buffers reused from round to round (PayloadBuffers). Rounds
// in a row through reused buffers give what fresh buffers and the
// reference (parse, AggregateMean, PackAggregate, ApplyUpdate) give, bit
// for bit; a payload still held elsewhere (the catch-up log, a transport)
// is never written over; one let go is written again in place.
#include "coordinator/aggregation.h"

#include <map>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "base/hash.h"
#include "base/thread_pool.h"
#include "codec/sparseloco_host.h"
#include "tests/fakes/layouts.h"

namespace lowband {
namespace {

using testing::MakeLayout;

ParamLayout Layout() { return MakeLayout({{"emb", {130, 70}}, {"w", {640, 200}}, {"b", {300}}, {"g", {}}}); }

std::vector<float> Random(size_t n, std::mt19937_64& rng, float sd) {
  std::normal_distribution<float> normal(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

Aggregation MeanAggregation(const ParamLayout& layout, const LayoutPlan& plan) {
  Aggregation::Setup setup;
  setup.kind = Aggregation::Kind::kMean;
  setup.layout = layout;
  setup.plan = plan;
  setup.sparse_codec = true;
  return Aggregation(setup);
}

OuterOptimizerConfig SgdLr1() {
  OuterOptimizerConfig oc;
  oc.kind = OuterOptimizerKind::kSgd;
  oc.lr = 1.0;
  oc.momentum = 0.0;
  return oc;
}

// `sites` uploads as the coordinator keeps them: sparseloco payloads as they
// arrived (read in place), tokens differing (a weighted mean).
std::map<std::string, RoundUpload> Uploads(const ParamLayout& layout, const LayoutPlan& plan, int sites,
                                           std::mt19937_64& rng) {
  std::map<std::string, RoundUpload> uploads;
  for (int s = 0; s < sites; ++s) {
    auto enc = EncodeSparseLoCoHost(layout, plan, Random(static_cast<size_t>(plan.numel), rng, 0.01f), nullptr);
    REQUIRE(enc.ok());
    RoundUpload up;
    up.sparseloco = enc->bulk;
    up.tokens = 100 + 10 * static_cast<uint64_t>(s);
    uploads["site-" + std::to_string(s)] = std::move(up);
  }
  return uploads;
}

// What the round must give, computed the long way from parsed uploads.
struct Reference {
  Bytes logged;
  std::vector<float> params;
};
Reference Expected(const ParamLayout& layout, const LayoutPlan& plan, const std::map<std::string, RoundUpload>& uploads,
                   std::vector<float> params) {
  std::vector<Update> parsed;
  std::vector<double> weights;
  for (const auto& [site, up] : uploads) {
    BlobHeader h;
    h.codec = CodecKind::kSparseLoCo;
    h.num_elements = static_cast<uint64_t>(plan.numel);
    h.layout_digest = layout.Digest();
    h.byte_length = up.sparseloco.size();
    h.checksum = BulkChecksum(up.sparseloco.data(), up.sparseloco.size());
    h.topk = static_cast<uint32_t>(plan.topk);
    auto u = ParseUpdate(layout, plan, h, up.sparseloco);
    REQUIRE(u.ok());
    parsed.push_back(std::move(u).value());
    weights.push_back(static_cast<double>(up.tokens));
  }
  std::vector<const Update*> ptrs;
  for (const Update& u : parsed) ptrs.push_back(&u);
  const Update g = AggregateMean(plan, ptrs, AggregationRule::kMeanAll, weights);
  auto packed = PackAggregate(layout, plan, g);
  REQUIRE(packed.ok());
  REQUIRE(ApplyUpdate(plan, g, &params).ok());
  return Reference{packed->bulk.bytes(), std::move(params)};
}

TEST_CASE("close: rounds in a row on reused payload buffers give what fresh buffers give", "[unit][coordinator]") {
  const ParamLayout layout = Layout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  const size_t n = static_cast<size_t>(plan.numel);
  const Aggregation agg = MeanAggregation(layout, plan);
  std::mt19937_64 rng(7);
  ParamSet params{layout, Random(n, rng, 0.1f)};
  OuterOptimizer outer(SgdLr1(), n);
  DownlinkEncoder downlink(CodecKind::kSparseFp32, n);
  PayloadBuffers buffers;
  ThreadPool pool(3);
  Frame held;  // the last round's payload, held as the catch-up log holds it
  Bytes held_bytes;
  // Rounds of different sizes: a payload larger than the buffer's, then
  // smaller ones (a longer one's tail stays in the buffer), and so on.
  const std::vector<int> sites = {3, 1, 4, 2, 5, 3, 3};
  for (uint32_t round = 1; round <= sites.size(); ++round) {
    INFO("round " << round);
    const auto uploads = Uploads(layout, plan, sites[round - 1], rng);
    const Reference want = Expected(layout, plan, uploads, params.values);
    CloseResult fresh = agg.Close(CloseJob{round, uploads, params, outer, downlink, PayloadBuffers()}, nullptr);
    CloseResult r = agg.Close(
        CloseJob{round, uploads, std::move(params), std::move(outer), std::move(downlink), std::move(buffers)},
        round % 2 ? &pool : nullptr);
    REQUIRE(r.status.ok());
    REQUIRE(fresh.status.ok());
    CHECK(r.logged.header.codec == CodecKind::kSparseFp32);
    CHECK(r.logged.bulk == want.logged);
    CHECK(r.logged.bulk == fresh.logged.bulk);
    CHECK(r.logged.header.checksum == fresh.logged.header.checksum);
    CHECK(r.down.bulk.data() == r.logged.bulk.data());  // one payload, logged and sent
    CHECK(r.params.values == want.params);
    CHECK(r.digest == fresh.digest);
    CHECK(r.digest == ParamSet{layout, want.params}.Digest());
    CHECK(r.nnz == fresh.nnz);
    // Last round's payload, still held, was not written over.
    CHECK(held.bytes() == held_bytes);
    CHECK(r.logged.bulk.data() != held.data());
    held = r.logged.bulk;
    held_bytes = held.bytes();
    params = std::move(r.params);
    outer = std::move(r.outer);
    downlink = std::move(r.downlink);
    buffers = std::move(r.payloads);
    CHECK(buffers.size() <= 2);
  }
}

TEST_CASE("close: a payload buffer let go is written again in place", "[unit][coordinator]") {
  const ParamLayout layout = Layout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  const size_t n = static_cast<size_t>(plan.numel);
  const Aggregation agg = MeanAggregation(layout, plan);
  std::mt19937_64 rng(11);
  ParamSet params{layout, Random(n, rng, 0.1f)};
  OuterOptimizer outer(SgdLr1(), n);
  DownlinkEncoder downlink(CodecKind::kSparseFp32, n);
  PayloadBuffers buffers;
  // Each round's payload is held (as the catch-up log holds it) until the
  // next one is written: two buffers, taking turns.
  std::vector<const uint8_t*> data;
  Frame held;
  for (uint32_t round = 1; round <= 5; ++round) {
    INFO("round " << round);
    const auto uploads = Uploads(layout, plan, 3, rng);
    const Reference want = Expected(layout, plan, uploads, params.values);
    CloseResult r = agg.Close(
        CloseJob{round, uploads, std::move(params), std::move(outer), std::move(downlink), std::move(buffers)},
        nullptr);
    REQUIRE(r.status.ok());
    CHECK(r.logged.bulk == want.logged);
    CHECK(r.params.values == want.params);
    data.push_back(r.logged.bulk.data());
    if (round >= 3) CHECK(data[round - 1] == data[round - 3]);
    held = r.logged.bulk;  // the one before is let go
    params = std::move(r.params);
    outer = std::move(r.outer);
    downlink = std::move(r.downlink);
    buffers = std::move(r.payloads);
    CHECK(buffers.size() == (round == 1 ? 1u : 2u));
  }
  CHECK(data[0] != data[1]);
}

}  // namespace
}  // namespace lowband
