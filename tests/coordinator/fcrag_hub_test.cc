// FcragHub driven directly, with stand-in sites that answer from a fixed
// score table (the real site side is in the FC-RAG integration test).
#include "coordinator/fcrag_hub.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <map>

#include "fcrag/fcrag.h"
#include "codec/dither.h"

namespace lowband {
namespace {

using Time = FcragHub::TimePoint;

struct Sent {
  std::string site;
  FcragRequest request;
  Bytes bulk;
};

// A site with `n` queries; query q of site s has true label (q % labels)
// and scores 0.5 for it and 3 for every other label (a perfect classifier).
struct FakeSite {
  std::string name;
  int n = 0;
  int labels = 4;
  std::vector<double> mean;  // from the last calibrate
  std::vector<size_t> test;

  std::string Text(int q) const { return name + "#" + std::to_string(q); }
  int Truth(int q) const { return q % labels; }

  FcragReply Answer(const FcragRequest& rq, const Bytes& bulk, Bytes* out) {
    FcragReply r;
    r.id = rq.id;
    r.kind = rq.kind;
    const ScoreRange range{0, rq.score_max};
    if (rq.kind == FcragKind::kQueries) {
      std::vector<std::string> texts;
      for (int q = 0; q < n; ++q) texts.push_back(Text(q));
      *out = PackTextList(texts);
      r.count = static_cast<uint32_t>(n);
    } else if (rq.kind == FcragKind::kScore) {
      auto texts = UnpackTextList(bulk, rq.count);
      REQUIRE(texts.ok());
      std::vector<double> scores;
      for (const std::string& t : *texts) {
        const int truth = std::stoi(t.substr(t.find('#') + 1)) % labels;
        for (int y = 0; y < labels; ++y) scores.push_back(y == truth ? 0.5 : 3.0);
      }
      *out = EncodeScores(scores, range, rq.bits, DitherSeedFor(rq.seed, static_cast<uint32_t>(rq.id), name));
      r.count = rq.count;
    } else if (rq.kind == FcragKind::kCalibrate) {
      REQUIRE(rq.count == static_cast<uint32_t>(n));
      REQUIRE(bulk.size() == static_cast<size_t>(n) * labels * sizeof(float));
      mean.resize(static_cast<size_t>(n) * labels);
      for (size_t i = 0; i < mean.size(); ++i) {
        float v;
        std::memcpy(&v, bulk.data() + i * 4, 4);
        mean[i] = v;
      }
      std::vector<size_t> cal;
      SplitQueries(static_cast<size_t>(n), rq.calibration_fraction, rq.seed, &cal, &test);
      std::vector<double> conformity;
      for (size_t j : cal) conformity.push_back(mean[j * labels + static_cast<size_t>(Truth(static_cast<int>(j)))]);
      *out = PackSummary(SummarizeScores(conformity, range, rq.bits));
      r.count = static_cast<uint32_t>(conformity.size());
    } else {
      for (size_t j : test) {
        const std::vector<double> row(mean.begin() + j * labels, mean.begin() + (j + 1) * labels);
        const auto set = PredictionSet(row, rq.threshold);
        r.covered += std::count(set.begin(), set.end(), Truth(static_cast<int>(j))) > 0;
        r.set_size += set.size();
        const auto set_qq = PredictionSet(row, rq.threshold_qq);
        r.covered_qq += std::count(set_qq.begin(), set_qq.end(), Truth(static_cast<int>(j))) > 0;
        r.set_size_qq += set_qq.size();
      }
      r.count = static_cast<uint32_t>(test.size());
    }
    return r;
  }
};

CampaignConfig Config() {
  CampaignConfig c;
  c.fcrag.enabled = true;
  c.fcrag.labels = {"a", "b", "c", "d"};
  c.fcrag.score_max = 4;
  c.quorum.round_deadline_s = 30;
  return c;
}

TEST_CASE("fcrag hub: queries, scores, calibration and test over fake sites - scores are cached per B_i",
          "[unit][coordinator]") {
  FcragHub hub(Config());
  std::map<std::string, FakeSite> sites{{"s1", FakeSite{"s1", 40, 4, {}, {}}}, {"s2", FakeSite{"s2", 60, 4, {}, {}}}};
  std::vector<Sent> outbox;
  const FcragHub::Send send = [&](const std::string& site, FcragRequest rq, Bytes bulk) {
    outbox.push_back({site, rq, std::move(bulk)});
  };
  std::vector<FcragResult> done;
  std::map<FcragKind, int> requests;
  const Time now{};
  auto deliver = [&] {
    while (!outbox.empty()) {
      std::vector<Sent> batch;
      batch.swap(outbox);
      for (Sent& s : batch) {
        ++requests[s.request.kind];
        Bytes out;
        const FcragReply r = sites.at(s.site).Answer(s.request, s.bulk, &out);
        CHECK(hub.OnReply(s.site, r, out, now, send, &done).empty());
      }
    }
  };
  FcragPlan plan;
  plan.ticket = 7;
  plan.score_bits = 8;
  plan.summary_bits = 8;
  plan.alpha = 0.1;
  plan.trials = 3;
  hub.Enqueue(plan);
  hub.Pump({"s1", "s2"}, now, send, &done);
  deliver();
  REQUIRE(done.size() == 1);
  INFO(done[0].message);
  CHECK(done[0].ok);
  CHECK(done[0].ticket == 7);
  // A perfect classifier: every set is exactly the true label.
  CHECK(done[0].json.find("\"coverage_mean\":1,") != std::string::npos);
  CHECK(done[0].json.find("\"set_size_mean\":1,") != std::string::npos);
  CHECK(done[0].json.find("\"queries\":100") != std::string::npos);
  CHECK(requests[FcragKind::kQueries] == 2);
  CHECK(requests[FcragKind::kScore] == 2);
  CHECK(requests[FcragKind::kCalibrate] == 6);
  CHECK(requests[FcragKind::kTest] == 6);
  REQUIRE(hub.threshold().has_value());
  CHECK(hub.threshold()->second == 0.1);

  // The same B_i again: no new queries or scores, only the splits.
  done.clear();
  plan.ticket = 8;
  plan.trials = 1;
  plan.alpha = 0.2;
  hub.Enqueue(plan);
  hub.Pump({"s1", "s2"}, now, send, &done);
  deliver();
  REQUIRE(done.size() == 1);
  CHECK(requests[FcragKind::kQueries] == 2);
  CHECK(requests[FcragKind::kScore] == 2);

  // predict: one text, scored by every site, set under the newest threshold.
  done.clear();
  FcragPlan p;
  p.ticket = 9;
  p.predict = true;
  p.text = "s1#2";
  p.score_bits = 8;
  hub.Enqueue(p);
  hub.Pump({"s1", "s2"}, now, send, &done);
  deliver();
  REQUIRE(done.size() == 1);
  CHECK(done[0].ok);
  CHECK(done[0].message.rfind("{c}", 0) == 0);
}

TEST_CASE("fcrag hub: unasked, duplicate and malformed replies change nothing - a silent site is not waited for",
          "[unit][coordinator]") {
  FcragHub hub(Config());
  std::vector<Sent> outbox;
  const FcragHub::Send send = [&](const std::string& site, FcragRequest rq, Bytes bulk) {
    outbox.push_back({site, rq, std::move(bulk)});
  };
  std::vector<FcragResult> done;
  const Time now{};
  FcragReply stray;
  stray.id = 99;
  CHECK_FALSE(hub.OnReply("s1", stray, {}, now, send, &done).empty());  // nothing open

  SECTION("predict before any calibration is refused") {
    FcragPlan p;
    p.predict = true;
    p.text = "x";
    hub.Enqueue(p);
    hub.Pump({"s1"}, now, send, &done);
    REQUIRE(done.size() == 1);
    CHECK_FALSE(done[0].ok);
    CHECK(done[0].message.find("no calibration") != std::string::npos);
  }
  SECTION("bad replies") {
    FcragPlan plan;
    hub.Enqueue(plan);
    hub.Pump({"s1", "s2"}, now, send, &done);
    REQUIRE(outbox.size() == 2);
    const uint64_t id = outbox[0].request.id;
    FcragReply r;
    r.id = id;
    r.kind = FcragKind::kQueries;
    r.count = 3;  // but the bulk holds one text: refused at the end, the site skipped
    CHECK(hub.OnReply("s3", r, PackTextList({"x"}), now, send, &done).find("unasked") != std::string::npos);
    CHECK(hub.OnReply("s1", r, PackTextList({"x"}), now, send, &done).empty());
    CHECK(hub.OnReply("s1", r, PackTextList({"x"}), now, send, &done).find("second") != std::string::npos);
    outbox.clear();
    // s2 never answers: at the deadline the exchange goes on without it, and
    // with no usable queries from anyone the plan fails cleanly.
    hub.OnTick(now + std::chrono::seconds(10), send, &done);
    CHECK(done.empty());
    hub.OnTick(now + std::chrono::seconds(31), send, &done);
    REQUIRE(done.size() == 1);
    CHECK_FALSE(done[0].ok);
    CHECK(done[0].message.find("no site sent queries") != std::string::npos);
    CHECK(hub.idle());
  }
}

}  // namespace
}  // namespace lowband
