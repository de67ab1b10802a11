// RoundCollector: which uploads a round takes (due, late, duplicate, wrong
// round, bad payload, early under overlap), when it is complete, and what
// closing it does (stragglers, norm outliers, the record), against a fake
// host.
#include "coordinator/round_collector.h"

#include <catch2/catch.hpp>

#include "tests/fakes/fake_cluster.h"

namespace lowband {
namespace {

using testing::HelloFrom;
using testing::TinyCampaign;
using testing::TinyParams;
using testing::Wrap;

// Stands in for the coordinator core for both pieces: a campaign view the
// test sets, and the replies it was asked to send.
struct FakeHost : Membership::Host, RoundCollector::Host {
  CampaignView view;
  const CampaignMode* mode = nullptr;
  std::map<uint32_t, uint64_t> round_digests;
  std::map<std::string, int> rejected;
  uint64_t seq = 0;

  CampaignView View() const override { return view; }
  Message Make(Body body) override {
    Message m;
    m.seq = ++seq;
    m.body = std::move(body);
    return m;
  }
  void Reply(const std::string& peer, ErrorCode code, const std::string& what, uint32_t round, CoreOutput* out,
             const char* reason) override {
    ++rejected[reason ? reason : ErrorCodeName(code)];
    out->messages.push_back({peer, Make(Error{code, what, round})});
  }
  void CountRejected(const char* reason) override { ++rejected[reason]; }
  void DropUpload(const std::string&) override {}
  void SiteGone(const std::string&, TimePoint, CoreOutput*) override {}
  void AfterLeave(TimePoint, CoreOutput*) override {}
  void AnnounceRounds(WorkerInfo&, bool, CoreOutput*) override {}
  uint64_t DigestFor(const WorkerInfo& w) const override { return mode->DigestFor(w, view.digest); }
  uint64_t DigestOfRound(uint32_t round) const override {
    auto it = round_digests.find(round);
    return it == round_digests.end() ? 0 : it->second;
  }
};

const TimePoint kT0 = TimePoint{} + std::chrono::hours(1);
const std::vector<std::string> kSites = {"site-a", "site-b", "site-c"};

struct Fixture {
  explicit Fixture(CampaignConfig c = TinyCampaign()) : config(std::move(c)), params(TinyParams()) {
    plan = PlanLayout(params.layout, config.codec.topk);
    mode = CampaignMode::Make(config, params, plan);
    Aggregation::Setup a;
    mode->Describe(&a);
    agg = std::make_unique<Aggregation>(std::move(a));
    mode->ComputeDigests(*agg, params);
    host.mode = mode.get();
    host.view.params = &params;
    host.view.aggregation = agg.get();
    host.view.digest = params.Digest();
    members = std::make_unique<Membership>(config, mode.get(), &evals, &host);
    collector = std::make_unique<RoundCollector>(config, mode.get(), &evals, members.get(), &host, kT0);
    CoreOutput out;
    for (const auto& s : kSites) members->HandleHello("p-" + s, HelloFrom(s), kT0, &out);
  }
  // Round committed + 1 opens.
  void OpenRound(TimePoint now = kT0) {
    host.view.training = true;
    collector->Open(host.view.committed_round + 1, now);
  }
  WorkerInfo& W(const std::string& site) { return *members->Find(site); }
  // A dense upload of `delta` (every entry `value`) for `round`.
  Message Upload(uint32_t round, float value, uint64_t base = 0) {
    DeltaUpload up;
    up.round = round;
    up.base_digest = base ? base : params.Digest();
    up.train_loss = 1.0;
    up.tokens = 10;
    auto enc = PackDenseFp32(params.layout, std::vector<float>(params.values.size(), value));
    up.blob = enc->header;
    Message m = Wrap(up);
    m.bulk = enc->bulk;
    return m;
  }
  bool Send(const std::string& site, const Message& m, CoreOutput* out) {
    return collector->HandleUpload(W(site), m, std::get<DeltaUpload>(m.body), out);
  }
  CampaignConfig config;
  ParamSet params;
  LayoutPlan plan;
  std::unique_ptr<CampaignMode> mode;
  std::unique_ptr<Aggregation> agg;
  EvalRecords evals;
  FakeHost host;
  std::unique_ptr<Membership> members;
  std::unique_ptr<RoundCollector> collector;
};

std::vector<const Error*> Errors(const CoreOutput& out) {
  std::vector<const Error*> v;
  for (const auto& o : out.messages) {
    if (const auto* e = std::get_if<Error>(&o.msg.body)) v.push_back(e);
  }
  return v;
}

TEST_CASE("collector: an upload is taken for the open round, once per site", "[unit][coordinator]") {
  Fixture f;
  CoreOutput out;
  // No round collects yet.
  CHECK_FALSE(f.Send("site-a", f.Upload(1, 0.01f), &out));
  REQUIRE(Errors(out).size() == 1);
  CHECK(Errors(out)[0]->code == ErrorCode::kWrongRound);
  CHECK(Errors(out)[0]->message == "upload for round 1 but no round is collecting uploads");
  f.OpenRound();
  out = CoreOutput{};
  CHECK(f.Send("site-a", f.Upload(1, 0.01f), &out));
  CHECK(out.messages.empty());
  CHECK(f.collector->Has("site-a"));
  CHECK_FALSE(f.Send("site-a", f.Upload(1, 0.01f), &out));
  CHECK_FALSE(f.Send("site-b", f.Upload(3, 0.01f), &out));
  REQUIRE(Errors(out).size() == 2);
  CHECK(Errors(out)[0]->code == ErrorCode::kDuplicate);
  CHECK(Errors(out)[1]->code == ErrorCode::kWrongRound);
  CHECK(Errors(out)[1]->message == "upload for round 3 but round 1 is open");
  CHECK(f.collector->uploads() == 1);
}

TEST_CASE("collector: a late upload is refused and counted on its round's record", "[unit][coordinator]") {
  Fixture f;
  f.host.view.committed_round = 1;
  RoundRecord r1;
  r1.round = 1;
  f.evals.Open(r1, kT0, kT0);
  f.OpenRound();  // round 2
  CoreOutput out;
  f.W("site-a").step_ms = 0;
  Message late = f.Upload(1, 0.01f);
  std::get<DeltaUpload>(late.body).step_time_ms = 40;
  CHECK_FALSE(f.Send("site-a", late, &out));
  REQUIRE(Errors(out).size() == 1);
  CHECK(Errors(out)[0]->message == "upload for round 1 arrived after the round closed");
  CHECK(f.evals.Find(1)->record.late_uploads == 1);
  CHECK(f.W("site-a").last_step_time_ms == 40);  // its step time still counts
  // The open round closed and is being aggregated: late on the open record.
  f.host.view.closing = true;
  CHECK_FALSE(f.Send("site-b", f.Upload(2, 0.01f), &out));
  CHECK(f.collector->record().late_uploads == 1);
}

TEST_CASE("collector: an upload from other parameters or with a bad payload changes nothing", "[unit][coordinator]") {
  Fixture f;
  f.OpenRound();
  CoreOutput out;
  CHECK_FALSE(f.Send("site-a", f.Upload(1, 0.01f, 12345), &out));
  Message nan_loss = f.Upload(1, 0.01f);
  std::get<DeltaUpload>(nan_loss.body).train_loss = std::nan("");
  CHECK_FALSE(f.Send("site-a", nan_loss, &out));
  Message greedy = f.Upload(1, 0.01f);
  std::get<DeltaUpload>(greedy.body).tokens = uint64_t{1} << 40;
  CHECK_FALSE(f.Send("site-a", greedy, &out));
  CHECK_FALSE(f.Send("site-a", f.Upload(1, 1e7f), &out));  // beyond the magnitude bound
  REQUIRE(Errors(out).size() == 4);
  CHECK(Errors(out)[0]->code == ErrorCode::kDigestMismatch);
  CHECK(Errors(out)[1]->code == ErrorCode::kBadPayload);
  CHECK(Errors(out)[2]->code == ErrorCode::kBadPayload);
  CHECK(Errors(out)[3]->code == ErrorCode::kBadPayload);
  CHECK(f.collector->uploads() == 0);
}

TEST_CASE("collector: complete when every live site uploaded, or at the deadline with min_workers",
          "[unit][coordinator]") {
  CampaignConfig cfg = TinyCampaign();
  cfg.quorum.min_workers = 2;
  Fixture f(cfg);
  f.OpenRound();
  CoreOutput out;
  REQUIRE(f.Send("site-a", f.Upload(1, 0.01f), &out));
  CHECK_FALSE(f.collector->Complete(false));
  CHECK_FALSE(f.collector->Complete(true));  // one upload, min_workers 2
  REQUIRE(f.Send("site-b", f.Upload(1, 0.02f), &out));
  CHECK_FALSE(f.collector->Complete(false));
  CHECK(f.collector->Complete(true));
  f.W("site-c").state = WorkerState::kLost;  // nobody else is awaited
  CHECK(f.collector->Complete(false));
}

TEST_CASE("collector: closing at the deadline marks stragglers and sums the record", "[unit][coordinator]") {
  CampaignConfig cfg = TinyCampaign();
  cfg.quorum.min_workers = 1;
  Fixture f(cfg);
  f.OpenRound();
  CoreOutput out;
  for (const auto& s : kSites) f.collector->StepsFor(f.W(s));  // each was asked for H_i
  REQUIRE(f.Send("site-a", f.Upload(1, 0.01f), &out));
  REQUIRE(f.Send("site-b", f.Upload(1, 0.02f), &out));
  f.W("site-c").step_ms = 1;
  CloseJob job = f.collector->Close(kT0 + std::chrono::seconds(30), "deadline", &out);
  CHECK(job.round == 1);
  CHECK(job.uploads.size() == 2);
  CHECK(f.collector->uploads() == 0);
  const RoundRecord& r = f.collector->record();
  CHECK(r.contributors == 2);
  CHECK(r.tokens == 20);
  CHECK(r.train_s == 30);
  CHECK(r.stragglers == 1);
  CHECK(r.sites.at("site-c").late);
  CHECK(r.sites.at("site-c").inner_steps == 2);
  CHECK(r.sites.at("site-a").uploaded);
  // Not finishing 2 steps in 30 s means a step takes at least 15 s.
  CHECK(f.W("site-c").step_ms == 15000);
}

TEST_CASE("collector: an upload far above the round's median norm is dropped", "[unit][coordinator]") {
  CampaignConfig cfg = TinyCampaign();
  cfg.quorum.max_norm_ratio = 5;
  Fixture f(cfg);
  f.OpenRound();
  CoreOutput out;
  REQUIRE(f.Send("site-a", f.Upload(1, 0.01f), &out));
  REQUIRE(f.Send("site-b", f.Upload(1, 0.011f), &out));
  REQUIRE(f.Send("site-c", f.Upload(1, 1.0f), &out));
  CloseJob job = f.collector->Close(kT0, "complete", &out);
  CHECK(job.uploads.size() == 2);
  CHECK_FALSE(job.uploads.count("site-c"));
  REQUIRE(Errors(out).size() == 1);
  CHECK(out.messages[0].peer == "p-site-c");
  CHECK(f.host.rejected["norm_outlier"] == 1);
  CHECK(f.collector->record().contributors == 2);
}

TEST_CASE("collector: under overlap, uploads of the next rounds wait for their round", "[unit][coordinator]") {
  CampaignConfig cfg = TinyCampaign(3, 5);
  cfg.training.overlap = true;
  Fixture f(cfg);
  f.OpenRound();  // round 1
  CoreOutput out;
  CHECK_FALSE(f.Send("site-a", f.Upload(2, 0.01f), &out));
  CHECK(out.messages.empty());  // held, not refused
  CHECK_FALSE(f.Send("site-a", f.Upload(2, 0.01f), &out));
  REQUIRE(Errors(out).size() == 1);
  CHECK(Errors(out)[0]->code == ErrorCode::kDuplicate);
  CHECK_FALSE(f.Send("site-b", f.Upload(4, 0.01f), &out));  // beyond committed + 2
  CHECK(Errors(out).size() == 2);
  CHECK(f.collector->uploads() == 0);
  f.host.view.committed_round = 1;
  auto due = f.collector->Open(2, kT0);
  REQUIRE(due.size() == 1);
  CHECK(due[0].first == "site-a");
  CHECK(std::get<DeltaUpload>(due[0].second.body).round == 2);
  CHECK(f.collector->Open(3, kT0).empty());  // taken once
}

}  // namespace
}  // namespace lowband
