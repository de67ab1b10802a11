// The compressed downlink: DownlinkEncoder's four kinds (sparse_2bit: the
// union's support, 2-bit values, error feedback on the rest, and a byte
// budget it never exceeds), then whole rounds through Aggregation::Close
// with codec.downlink sparse_2bit and sparseloco against the same rounds
// with sparse_fp32 (the coordinator's parameters are the initial ones minus
// every transmitted update, bit for bit as a replica applies them, and the
// error feedback holds what was not sent), and a replay from a checkpoint
// and the logged gradients ending with the same parameters and error
// feedback.
#include "coordinator/downlink.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "codec/sparseloco_host.h"
#include "coordinator/aggregation.h"
#include "coordinator/resume.h"
#include "tests/fakes/layouts.h"

namespace lowband {
namespace {

using testing::MakeLayout;

ParamLayout Layout() { return MakeLayout({{"emb", {130, 70}}, {"w", {64, 128}}, {"b", {300}}, {"g", {}}}); }

std::vector<float> Random(size_t n, std::mt19937_64& rng, float sd) {
  std::normal_distribution<float> normal(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// An upload as a SparseLoCo site sends it: top-k of a random delta, 2 bits.
Update SparseUpload(const ParamLayout& layout, const LayoutPlan& plan, std::mt19937_64& rng) {
  auto enc = EncodeSparseLoCoHost(layout, plan, Random(static_cast<size_t>(plan.numel), rng, 0.01f), nullptr);
  REQUIRE(enc.ok());
  auto u = ParseUpdate(layout, plan, enc->header, enc->bulk);
  REQUIRE(u.ok());
  return std::move(u).value();
}

Update Decode(const ParamLayout& layout, const LayoutPlan& plan, const Encoded& e) {
  auto u = ParseUpdate(layout, plan, e.header, e.bulk);
  REQUIRE(u.ok());
  return std::move(u).value();
}

TEST_CASE("downlink: sparse_fp32 and dense_fp32 send u as it is, sparseloco sends u + e and keeps the rest",
          "[unit][coordinator]") {
  const ParamLayout layout = Layout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  const size_t n = static_cast<size_t>(plan.numel);
  std::mt19937_64 rng(1);
  const Update u = SparseUpload(layout, plan, rng);

  DownlinkEncoder sparse(CodecKind::kSparseFp32, n);
  CHECK_FALSE(sparse.compressed());
  CHECK(sparse.error().empty());
  Encoded down;
  auto same = sparse.Encode(layout, plan, u, nullptr, &down);
  REQUIRE(same.ok());
  CHECK(down.header.codec == CodecKind::kSparseFp32);
  CHECK(Densify(plan, *same) == Densify(plan, u));

  DownlinkEncoder dense(CodecKind::kDenseFp32, n);
  auto densified = dense.Encode(layout, plan, u, nullptr, &down);
  REQUIRE(densified.ok());
  CHECK(down.header.codec == CodecKind::kDenseFp32);
  CHECK(densified->dense);
  CHECK(densified->values == Densify(plan, u));

  DownlinkEncoder compressed(CodecKind::kSparseLoCo, n);
  REQUIRE(compressed.compressed());
  std::vector<float> e0 = Random(n, rng, 0.001f);
  compressed.set_error(e0);
  auto t = compressed.Encode(layout, plan, u, nullptr, &down);
  REQUIRE(t.ok());
  CHECK(down.header.codec == CodecKind::kSparseLoCo);
  CHECK(down.bulk.size() == BulkBytes(plan, CodecKind::kSparseLoCo));
  CHECK(t->nnz() == static_cast<size_t>(plan.kept));
  // t is what the payload decodes to, and e = (u + e0) - t exactly.
  const std::vector<float> sent = Densify(plan, Decode(layout, plan, down));
  CHECK(Densify(plan, *t) == sent);
  const std::vector<float> ud = Densify(plan, u);
  for (size_t i = 0; i < n; ++i) {
    const float v = ud[i] + e0[i];
    INFO(i);
    REQUIRE(compressed.error()[i] == v - sent[i]);
  }

  // A non-finite u is refused and leaves the error feedback as it was.
  const std::vector<float> before = compressed.error();
  Update bad;
  bad.values.assign(n, 0.0f);
  bad.values[17] = INFINITY;
  CHECK(compressed.Encode(layout, plan, bad, nullptr, &down).status().code() == StatusCode::kInvalidArgument);
  CHECK(compressed.error() == before);
}

// The mean of three uploads, as the coordinator's u (mean_of_choosers).
Update UnionOfThree(const ParamLayout& layout, const LayoutPlan& plan, std::mt19937_64& rng) {
  const Update a = SparseUpload(layout, plan, rng), b = SparseUpload(layout, plan, rng),
               c = SparseUpload(layout, plan, rng);
  return AggregateMean(plan, std::vector<const Update*>{&a, &b, &c}, AggregationRule::kMeanChoosers);
}

TEST_CASE("downlink: sparse_2bit sends u + e on u's support in 2 bits and keeps the rest", "[unit][coordinator]") {
  const ParamLayout layout = Layout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  const size_t n = static_cast<size_t>(plan.numel);
  std::mt19937_64 rng(7);
  const Update u = UnionOfThree(layout, plan, rng);
  REQUIRE(u.nnz() > 2 * static_cast<size_t>(plan.kept));  // the union of three sites' top-k
  const std::vector<float> ud = Densify(plan, u);
  const std::vector<float> e0 = Random(n, rng, 0.001f);

  SECTION("within the budget: the whole support") {
    DownlinkEncoder enc(CodecKind::kSparse2Bit, n, 100.0);
    REQUIRE(enc.compressed());
    REQUIRE(enc.error().size() == n);
    enc.set_error(e0);
    Encoded down;
    auto t = enc.Encode(layout, plan, u, nullptr, &down);
    REQUIRE(t.ok());
    CHECK(enc.last_cap() == 4096);
    CHECK(down.header.codec == CodecKind::kSparse2Bit);
    const Update sent = Decode(layout, plan, down);
    CHECK(sent.begin == u.begin);  // exactly the union's indices
    CHECK(sent.index == u.index);
    CHECK(t->value == sent.value);
    // At most 4 distinct values per tensor, and e = (u + e0) - t on the
    // support, e0 elsewhere, bit for bit.
    for (size_t k = 0; k < plan.tensors.size(); ++k) {
      const TensorPlan& tp = plan.tensors[k];
      std::vector<float> distinct(sent.value.begin() + sent.begin[tp.first_chunk],
                                  sent.value.begin() + sent.begin[tp.first_chunk + tp.num_chunks]);
      std::sort(distinct.begin(), distinct.end());
      CHECK(std::unique(distinct.begin(), distinct.end()) - distinct.begin() <= 4);
    }
    const std::vector<float> td = Densify(plan, sent);
    std::vector<char> on(n, 0);
    for (size_t k = 0; k < plan.tensors.size(); ++k) {
      const TensorPlan& tp = plan.tensors[k];
      for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
        for (uint32_t j = u.begin[c]; j < u.begin[c + 1]; ++j) on[plan.FlatIndex(k, c, u.index[j])] = 1;
      }
    }
    double err = 0, kept = 0;
    for (size_t i = 0; i < n; ++i) {
      INFO(i);
      const float v = ud[i] + e0[i];
      REQUIRE(enc.error()[i] == (on[i] ? v - td[i] : e0[i]));
      if (on[i]) {
        err += std::abs(v - td[i]);
        kept += std::abs(v);
      }
    }
    CHECK(err < 0.6 * kept);  // the 2-bit values follow v
  }

  SECTION("over the budget: the largest |v| of each chunk, under a common cap, within the budget") {
    for (double budget : {1.5, 1.0, 0.5}) {
      INFO(budget);
      DownlinkEncoder enc(CodecKind::kSparse2Bit, n, budget);
      enc.set_error(e0);
      Encoded down;
      auto t = enc.Encode(layout, plan, u, nullptr, &down);
      REQUIRE(t.ok());
      CHECK(down.bulk.size() <= budget * BulkBytes(plan, CodecKind::kSparseLoCo));
      const int cap = enc.last_cap();
      CHECK(cap > 0);
      CHECK(cap < 4096);
      const Update sent = Decode(layout, plan, down);
      CHECK(sent.nnz() < u.nnz());
      // Per chunk: min(candidates, ceil(cap n_c / 4096)) entries, each with
      // |v| at least that of every candidate left out; those keep e = v.
      bool ok = true;
      for (size_t k = 0; k < plan.tensors.size(); ++k) {
        const TensorPlan& tp = plan.tensors[k];
        for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
          const int64_t nc = plan.chunks[c].numel();
          const int64_t limit = std::min<int64_t>(nc, (cap * nc + 4095) / 4096);
          const int64_t cand = u.begin[c + 1] - u.begin[c];
          ok = ok && static_cast<int64_t>(sent.begin[c + 1] - sent.begin[c]) == std::min(cand, limit);
          float least_kept = INFINITY, most_left = 0;
          uint32_t s = sent.begin[c];
          for (uint32_t j = u.begin[c]; j < u.begin[c + 1]; ++j) {
            const int64_t i = plan.FlatIndex(k, c, u.index[j]);
            const float v = ud[i] + e0[i];
            if (s < sent.begin[c + 1] && sent.index[s] == u.index[j]) {
              least_kept = std::min(least_kept, std::fabs(v));
              ok = ok && enc.error()[i] == v - sent.value[s];
              ++s;
            } else {
              most_left = std::max(most_left, std::fabs(v));
              ok = ok && enc.error()[i] == v;
            }
          }
          ok = ok && s == sent.begin[c + 1] && (most_left <= least_kept || cand <= limit);
        }
      }
      CHECK(ok);
    }
    // A larger budget keeps more.
    DownlinkEncoder small(CodecKind::kSparse2Bit, n, 0.5), large(CodecKind::kSparse2Bit, n, 1.5);
    Encoded d1, d2;
    REQUIRE(small.Encode(layout, plan, u, nullptr, &d1).ok());
    REQUIRE(large.Encode(layout, plan, u, nullptr, &d2).ok());
    CHECK(small.last_cap() < large.last_cap());
    CHECK(d1.bulk.size() < d2.bulk.size());
  }

  SECTION("the same u, e and budget give the same bytes; a non-finite u changes nothing") {
    DownlinkEncoder a(CodecKind::kSparse2Bit, n, 1.5), b(CodecKind::kSparse2Bit, n, 1.5);
    a.set_error(e0);
    b.set_error(e0);
    Encoded da, db;
    REQUIRE(a.Encode(layout, plan, u, nullptr, &da).ok());
    ThreadPool pool(2);
    REQUIRE(b.Encode(layout, plan, u, &pool, &db).ok());
    CHECK(da.bulk == db.bulk);
    CHECK(a.error() == b.error());

    const std::vector<float> before = a.error();
    Update bad = u;
    bad.value[5] = NAN;
    CHECK(a.Encode(layout, plan, bad, nullptr, &da).status().code() == StatusCode::kInvalidArgument);
    CHECK(a.error() == before);
    Update dense;
    dense.values.assign(n, 0.0f);
    dense.values[17] = INFINITY;
    CHECK(a.Encode(layout, plan, dense, nullptr, &da).status().code() == StatusCode::kInvalidArgument);
    CHECK(a.error() == before);
  }

  SECTION("a dense u: every element is a candidate") {
    DownlinkEncoder enc(CodecKind::kSparse2Bit, n, 1.5);
    Update dense;
    dense.values = Random(n, rng, 0.01f);
    Encoded down;
    auto t = enc.Encode(layout, plan, dense, nullptr, &down);
    REQUIRE(t.ok());
    CHECK(down.bulk.size() <= 1.5 * BulkBytes(plan, CodecKind::kSparseLoCo));
    CHECK(t->nnz() > static_cast<size_t>(plan.kept));  // more than sparseloco's top-k at the same topk
    const std::vector<float> td = Densify(plan, *t);
    for (size_t i = 0; i < n; ++i) {
      INFO(i);
      REQUIRE(enc.error()[i] == dense.values[i] - td[i]);
    }
  }
}

struct Stream {
  ParamSet params;
  OuterOptimizer outer;
  DownlinkEncoder downlink;
};

TEST_CASE("downlink: after several rounds the coordinator holds the initial parameters minus what it sent",
          "[unit][coordinator]") {
  const ParamLayout layout = Layout();
  const LayoutPlan plan = PlanLayout(layout, 64);
  const size_t n = static_cast<size_t>(plan.numel);
  Aggregation::Setup setup;
  setup.kind = Aggregation::Kind::kMean;
  setup.layout = layout;
  setup.plan = plan;
  setup.sparse_codec = true;
  const Aggregation agg(setup);

  const CodecKind down_kind = GENERATE(CodecKind::kSparse2Bit, CodecKind::kSparseLoCo);
  INFO(CodecName(down_kind));
  for (OuterOptimizerKind kind : {OuterOptimizerKind::kSgd, OuterOptimizerKind::kNesterov}) {
    OuterOptimizerConfig oc;
    oc.kind = kind;
    oc.lr = kind == OuterOptimizerKind::kSgd ? 1.0 : 0.7;
    oc.momentum = kind == OuterOptimizerKind::kSgd ? 0.0 : 0.9;
    INFO(OuterOptimizerName(kind));
    std::mt19937_64 rng(42);
    const ParamSet initial{layout, Random(n, rng, 0.1f)};
    // The same rounds with u sent as it is (a) and compressed (b).
    Stream a{initial, OuterOptimizer(oc, n), DownlinkEncoder(CodecKind::kSparseFp32, n)};
    Stream b{initial, OuterOptimizer(oc, n), DownlinkEncoder(down_kind, n)};
    ThreadPool pool(2);
    ParamSet replica = initial;  // a site applying what it receives
    std::vector<double> sum_u(n, 0.0), sum_t(n, 0.0);
    // For the replay below: the state after round 2 and every logged gradient.
    Stream saved;
    std::vector<Encoded> logged;
    uint64_t last_digest = 0;
    const int rounds = 6;
    for (uint32_t round = 1; round <= static_cast<uint32_t>(rounds); ++round) {
      std::map<std::string, RoundUpload> uploads;
      for (const char* site : {"site-a", "site-b", "site-c"}) {
        RoundUpload up;
        up.delta = SparseUpload(layout, plan, rng);
        up.tokens = 100;
        uploads[site] = std::move(up);
      }
      CloseResult ra =
          agg.Close(CloseJob{round, uploads, std::move(a.params), std::move(a.outer), std::move(a.downlink), {}}, nullptr);
      // Alternate with and without a pool: the result must not depend on it.
      CloseResult rb =
          agg.Close(CloseJob{round, uploads, std::move(b.params), std::move(b.outer), std::move(b.downlink), {}},
                    round % 2 ? &pool : nullptr);
      REQUIRE(ra.status.ok());
      REQUIRE(rb.status.ok());
      a = Stream{std::move(ra.params), std::move(ra.outer), std::move(ra.downlink)};
      b = Stream{std::move(rb.params), std::move(rb.outer), std::move(rb.downlink)};
      CHECK(ra.down.header.codec != down_kind);
      REQUIRE(rb.down.header.codec == down_kind);
      if (down_kind == CodecKind::kSparseLoCo) {
        CHECK(rb.down.bulk.size() == BulkBytes(plan, CodecKind::kSparseLoCo));
        CHECK(rb.nnz == static_cast<uint64_t>(plan.kept));
      } else {
        CHECK(rb.down.bulk.size() <= 1.5 * BulkBytes(plan, CodecKind::kSparseLoCo));
        CHECK(rb.nnz > static_cast<uint64_t>(plan.kept));  // more values than an upload holds
      }
      CHECK(rb.logged.bulk == ra.logged.bulk);  // the log keeps g, whatever went down

      const Update t = Decode(layout, plan, rb.down);
      REQUIRE(ApplyUpdate(plan, t, &replica.values).ok());
      CHECK(replica.values == b.params.values);
      CHECK(replica.Digest() == rb.digest);
      const std::vector<float> ud = Densify(plan, Decode(layout, plan, ra.down));
      const std::vector<float> td = Densify(plan, t);
      for (size_t i = 0; i < n; ++i) {
        sum_u[i] += ud[i];
        sum_t[i] += td[i];
      }
      logged.push_back(rb.logged);
      if (round == 2) saved = Stream{b.params, b.outer, b.downlink};
      last_digest = rb.digest;
    }
    // theta = initial - sum t, and e = sum u - sum t, up to fp32 rounding.
    double worst_theta = 0, worst_e = 0, e_norm = 0;
    for (size_t i = 0; i < n; ++i) {
      worst_theta = std::max(worst_theta, std::abs(b.params.values[i] - (initial.values[i] - sum_t[i])));
      worst_e = std::max(worst_e, std::abs(b.downlink.error()[i] - (sum_u[i] - sum_t[i])));
      e_norm = std::max(e_norm, std::abs(sum_u[i] - sum_t[i]));
    }
    CHECK(worst_theta < 1e-5);
    CHECK(worst_e < 1e-5);
    CHECK(e_norm > 1e-3);  // something was held back (the test is not vacuous)

    // A restart at round 2's checkpoint replays rounds 3 to 6 from the log
    // to the same parameters and the same error feedback, bit for bit.
    OuterOptimizer outer(oc, n);
    DownlinkEncoder downlink(down_kind, n);
    REQUIRE(
        CheckRestore(initial, outer, downlink, 2, saved.params, saved.outer.momentum(), saved.downlink.error()).ok());
    if (!saved.outer.momentum().empty()) outer.set_momentum(saved.outer.momentum());
    downlink.set_error(saved.downlink.error());
    ParamSet params = saved.params;
    for (uint32_t round = 3; round <= static_cast<uint32_t>(rounds); ++round) {
      REQUIRE(ReplayGradient(round, logged[round - 1], plan, &outer, &downlink, &params).ok());
    }
    CHECK(params.Digest() == last_digest);
    CHECK(downlink.error() == b.downlink.error());
  }
}

TEST_CASE("downlink: a checkpoint must carry the error feedback of a compressed downlink", "[unit][coordinator]") {
  const ParamSet campaign{Layout(), std::vector<float>(static_cast<size_t>(Layout().numel()), 0.0f)};
  const size_t n = campaign.values.size();
  OuterOptimizerConfig sgd;
  sgd.kind = OuterOptimizerKind::kSgd;
  sgd.momentum = 0;
  const OuterOptimizer outer(sgd, n);
  const DownlinkEncoder compressed(CodecKind::kSparseLoCo, n);
  const DownlinkEncoder plain(CodecKind::kSparseFp32, n);
  CHECK(CheckRestore(campaign, outer, compressed, 0, campaign, {}, {}).ok());
  CHECK(CheckRestore(campaign, outer, compressed, 4, campaign, {}, std::vector<float>(n, 0.0f)).ok());
  CHECK(CheckRestore(campaign, outer, compressed, 4, campaign, {}, {}).message() ==
        "restore: the checkpoint of round 4 lacks the downlink's error feedback");
  CHECK(CheckRestore(campaign, outer, compressed, 4, campaign, {}, std::vector<float>(3, 0.0f)).message() ==
        "restore: the checkpoint holds 3 downlink error-feedback values, the campaign's downlink (sparseloco) keeps " +
            std::to_string(n));
  const DownlinkEncoder union_2bit(CodecKind::kSparse2Bit, n);
  CHECK(CheckRestore(campaign, outer, union_2bit, 4, campaign, {}, std::vector<float>(n, 0.0f)).ok());
  CHECK(CheckRestore(campaign, outer, union_2bit, 4, campaign, {}, {}).message() ==
        "restore: the checkpoint of round 4 lacks the downlink's error feedback");
  CHECK(CheckRestore(campaign, outer, plain, 4, campaign, {}, {}).ok());
  CHECK(CheckRestore(campaign, outer, plain, 4, campaign, {}, std::vector<float>(n, 0.0f)).code() ==
        StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lowband
