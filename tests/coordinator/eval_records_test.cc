// EvalRecords: records waiting for evaluations, completion, digests, history.
#include "coordinator/eval_records.h"

#include <catch2/catch.hpp>

#include "tests/fakes/fake_cluster.h"

namespace lowband {
namespace {

std::unique_ptr<CampaignMode> PlainMode() {
  const ParamSet p = testing::TinyParams();
  return CampaignMode::Make(testing::TinyCampaign(), p, PlanLayout(p.layout, 0));
}

EvalReport Report(uint32_t round, double loss, uint64_t tokens) {
  EvalReport r;
  r.round = round;
  r.val_loss = loss;
  r.val_tokens = tokens;
  return r;
}

TEST_CASE("eval records: complete once every live expected site reported, or at the deadline",
          "[unit][coordinator]") {
  auto mode = PlainMode();
  const TimePoint t0{std::chrono::seconds(10)};
  const auto deadline = std::chrono::seconds(30);
  std::set<std::string> live = {"a", "b"};
  auto is_live = [&](const std::string& s) { return live.count(s) > 0; };
  EvalRecords records;
  RoundRecord r;
  r.round = 1;
  EvalRecord& e = records.Open(r, t0, t0);
  records.Expect(1, "a");
  records.Expect(1, "b");
  records.Expect(7, "a");  // nothing waits for round 7: no-op
  CHECK_FALSE(EvalRecords::Complete(e, is_live, *mode, 1, 1, deadline, t0));
  e.evals["a"] = Report(1, 2.0, 10);
  CHECK_FALSE(EvalRecords::Complete(e, is_live, *mode, 1, 1, deadline, t0));
  // min_workers reached at the deadline.
  CHECK(EvalRecords::Complete(e, is_live, *mode, 1, 1, deadline, t0 + std::chrono::seconds(31)));
  CHECK_FALSE(EvalRecords::Complete(e, is_live, *mode, 2, 1, deadline, t0 + std::chrono::seconds(31)));
  // b is lost (or forgotten): nobody else is awaited.
  live.erase("b");
  CHECK(EvalRecords::Complete(e, is_live, *mode, 1, 1, deadline, t0));
  live.insert("b");
  records.Forget("b");
  CHECK(EvalRecords::Complete(e, is_live, *mode, 1, 1, deadline, t0));
  // An earlier overlapped round needs no quorum of its own.
  CHECK_FALSE(EvalRecords::Complete(e, is_live, *mode, 3, 1, deadline, t0));
  CHECK(EvalRecords::Complete(e, is_live, *mode, 3, 2, deadline, t0));
}

TEST_CASE("eval records: records come out oldest first, and a re-evaluated round is not written twice",
          "[unit][coordinator]") {
  auto mode = PlainMode();
  const TimePoint t0{std::chrono::seconds(10)};
  auto stage0 = [](const std::string&) { return 0; };
  EvalRecords records;
  RoundRecord r1, r2;
  r1.round = 1;
  r1.digest = 11;
  r2.round = 2;
  records.Open(r2, t0, t0);
  records.Open(r1, t0, t0);
  CHECK(records.Find(1)->record.digest == 11);
  CHECK(records.Oldest().record.round == 1);
  EvalRecord e = records.PopOldest();
  e.evals["a"] = Report(1, 1.0, 1);
  e.evals["b"] = Report(1, 4.0, 3);
  const RoundRecord written = records.Write(std::move(e), *mode, stage0, t0 - std::chrono::seconds(5),
                                            t0 + std::chrono::seconds(2));
  CHECK(written.val_loss == Approx(3.25));  // token-weighted
  CHECK(written.evaluated == 2);
  CHECK(written.wall_s == Approx(2));
  CHECK(written.elapsed_s == Approx(7));
  CHECK(written.sites.at("b").val_loss == 4.0);
  CHECK_FALSE(written.reevaluated);
  REQUIRE(records.history().size() == 1);
  CHECK(records.Find(1) == nullptr);
  // A restarted coordinator's re-evaluation of the newest written round.
  EvalRecord again;
  again.record.round = 1;
  const RoundRecord second = records.Write(std::move(again), *mode, stage0, t0, t0);
  CHECK(second.reevaluated);
  CHECK(std::isnan(second.val_loss));
  CHECK(records.history().size() == 1);
  CHECK(records.Oldest().record.round == 2);
  records.Clear();
  CHECK(records.empty());
}

TEST_CASE("eval records: a report of no tokens (a round training.eval_every skips) carries no loss",
          "[unit][coordinator]") {
  auto mode = PlainMode();
  const TimePoint t0{std::chrono::seconds(10)};
  auto stage0 = [](const std::string&) { return 0; };
  EvalRecords records;
  RoundRecord r;
  r.round = 3;
  records.Open(r, t0, t0);
  EvalRecord e = records.PopOldest();
  e.evals["a"] = Report(3, 0.0, 0);
  e.evals["b"] = Report(3, 0.0, 0);
  const RoundRecord skipped = records.Write(std::move(e), *mode, stage0, t0, t0);
  CHECK(std::isnan(skipped.val_loss));
  CHECK(skipped.evaluated == 2);  // both digests were checked
  CHECK(skipped.sites.count("a") == 0);  // no per-site loss recorded from a digest-only report
  // One site measured, one did not: the loss is the measured one's.
  r.round = 4;
  records.Open(r, t0, t0);
  e = records.PopOldest();
  e.evals["a"] = Report(4, 0.0, 0);
  e.evals["b"] = Report(4, 3.0, 10);
  CHECK(records.Write(std::move(e), *mode, stage0, t0, t0).val_loss == Approx(3.0));
}

TEST_CASE("eval records: a pipeline's loss is the last stage's", "[unit][coordinator]") {
  CampaignConfig c = testing::TinyCampaign(2);
  c.pipeline.stages = 2;
  ParamSet p;
  p.layout.tensors = {{"stage0.emb", {4, 2}}, {"stage1.head", {2, 5}}};
  p.values.resize(18);
  auto mode = CampaignMode::Make(c, p, PlanLayout(p.layout, 0));
  EvalRecords records;
  EvalRecord e;
  e.record.round = 1;
  e.evals["first"] = Report(1, 9.0, 1);
  e.evals["last"] = Report(1, 2.0, 1);
  auto stage_of = [](const std::string& s) { return s == "last" ? 1 : 0; };
  const RoundRecord r = records.Write(std::move(e), *mode, stage_of, TimePoint{}, TimePoint{});
  CHECK(r.val_loss == 2.0);
  CHECK(r.evaluated == 2);
  CHECK_FALSE(r.sites.count("first"));
}

TEST_CASE("eval records: the digest a report shows, rank by rank", "[unit][coordinator]") {
  EvalReport m = Report(3, 1.0, 1);
  m.digest = 5;
  CHECK(ReportedDigest(m, 1, 5, "a") == 5);
  CHECK(ReportedDigest(m, 1, 6, "a") == 5);
  // Several ranks: one digest per rank, each must match.
  CHECK(ReportedDigest(m, 2, 5, "a") == ~uint64_t{5});
  m.rank_digests = {5, 5};
  CHECK(ReportedDigest(m, 2, 5, "a") == 5);
  m.rank_digests = {5, 8};
  CHECK(ReportedDigest(m, 2, 5, "a") == 8);
}

TEST_CASE("eval records: the history keeps the newest records and totals over all of them", "[unit][coordinator]") {
  // A long campaign's memory is bounded: the newest kHistoryKept records
  // stay, the totals (tokens, wall time, late uploads, mismatches, rounds a
  // site uploaded, the first validation loss) cover every record.
  std::vector<RoundRecord> restored;
  const size_t n = EvalRecords::kHistoryKept + 5;
  for (size_t i = 0; i < n; ++i) {
    RoundRecord r;
    r.round = static_cast<uint32_t>(i);
    r.val_loss = 10.0 - static_cast<double>(i) * 0.001;
    r.tokens = 100;
    r.wall_s = 0.5;
    r.late_uploads = i % 2;
    r.digest_mismatches = i == 7 ? 1 : 0;
    r.sites["a"].uploaded = i > 0;
    r.sites["b"].uploaded = i % 3 == 1;
    restored.push_back(r);
  }
  EvalRecords records;
  records.set_history(restored);
  CHECK(records.history().size() == EvalRecords::kHistoryKept);
  CHECK(records.history().front().round == 5);
  CHECK(records.history().back().round == n - 1);
  const EvalRecords::Totals& t = records.totals();
  CHECK(t.records == n);
  CHECK(t.tokens == 100 * n);
  CHECK(t.wall_s == Approx(0.5 * static_cast<double>(n - 1)));  // round 0 excluded
  CHECK(t.late_uploads == static_cast<int>(n / 2));
  CHECK(t.digest_mismatches == 1);
  CHECK(t.uploaded_rounds.at("a") == static_cast<int>(n - 1));
  CHECK(t.first_val_loss == 10.0);
  // Written records count in the same way.
  auto mode = PlainMode();
  const TimePoint t0{std::chrono::seconds(10)};
  RoundRecord next;
  next.round = static_cast<uint32_t>(n);
  next.tokens = 7;
  records.Open(next, t0, t0);
  EvalRecord e = records.PopOldest();
  e.evals["a"] = Report(static_cast<uint32_t>(n), 1.0, 1);
  records.Write(std::move(e), *mode, [](const std::string&) { return 0; }, t0, t0);
  CHECK(records.history().size() == EvalRecords::kHistoryKept);
  CHECK(records.totals().records == n + 1);
  CHECK(records.totals().tokens == 100 * n + 7);
}

}  // namespace
}  // namespace lowband
