// Membership: hellos, rejoins, syncs, the re-sync limit, eviction, loss and
// heartbeats, against a fake host.
#include "coordinator/membership.h"

#include <catch2/catch.hpp>

#include "tests/fakes/fake_cluster.h"

namespace lowband {
namespace {

using testing::HelloFrom;
using testing::TinyCampaign;
using testing::TinyParams;

// Stands in for the coordinator core: a campaign view the test sets, and a
// log of what Membership asked of it.
struct FakeHost : Membership::Host {
  Membership::CampaignView view;
  uint64_t seq = 0;
  std::map<std::string, int> rejected;
  std::vector<std::string> dropped, gone, announced;
  int after_leave = 0;

  Membership::CampaignView View() const override { return view; }
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
  void DropUpload(const std::string& site) override { dropped.push_back(site); }
  void SiteGone(const std::string& site, TimePoint, CoreOutput*) override { gone.push_back(site); }
  void AfterLeave(TimePoint, CoreOutput*) override { ++after_leave; }
  void AnnounceRounds(WorkerInfo& w, bool open_only, CoreOutput*) override {
    announced.push_back(w.site + (open_only ? ":open" : ":all"));
  }
};

struct Fixture {
  explicit Fixture(CampaignConfig c = TinyCampaign(), ParamSet p = TinyParams())
      : config(std::move(c)), params(std::move(p)) {
    plan = PlanLayout(params.layout, config.codec.topk);
    mode = CampaignMode::Make(config, params, plan);
    Aggregation::Setup a;
    mode->Describe(&a);
    agg = std::make_unique<Aggregation>(std::move(a));
    mode->ComputeDigests(*agg, params);  // pipeline: each stage's digest
    host.view.params = &params;
    host.view.aggregation = agg.get();
    host.view.digest = params.Digest();
    host.view.phase = "waiting";
    members = std::make_unique<Membership>(config, mode.get(), &evals, &host);
  }
  CampaignConfig config;
  ParamSet params;
  LayoutPlan plan;
  std::unique_ptr<CampaignMode> mode;
  std::unique_ptr<Aggregation> agg;
  EvalRecords evals;
  FakeHost host;
  std::unique_ptr<Membership> members;
};

template <typename T>
std::vector<const T*> Bodies(const CoreOutput& out, const std::string& peer) {
  std::vector<const T*> v;
  for (const auto& o : out.messages) {
    if (o.peer != peer) continue;
    if (const auto* b = std::get_if<T>(&o.msg.body)) v.push_back(b);
  }
  return v;
}

const TimePoint kT0 = TimePoint{} + std::chrono::hours(1);

TEST_CASE("membership: a hello registers the site with welcome and model, a bad one changes nothing",
          "[unit][coordinator]") {
  Fixture f;
  CoreOutput out;
  CHECK(f.members->HandleHello("p1", HelloFrom("site-a"), kT0, &out));
  REQUIRE(Bodies<Welcome>(out, "p1").size() == 1);
  CHECK(Bodies<Welcome>(out, "p1")[0]->worker_id == "site-a");
  REQUIRE(Bodies<ModelSync>(out, "p1").size() == 1);
  CHECK(Bodies<ModelSync>(out, "p1")[0]->digest == f.params.Digest());
  CHECK(f.members->SiteOfPeer("p1") == "site-a");
  CHECK(f.members->JoinedAt("p1") == f.members->Find("site-a"));
  CHECK(f.members->LiveWorkers() == 1);
  CHECK(f.host.announced.empty());  // no round collects uploads yet

  out = CoreOutput{};
  CHECK_FALSE(f.members->HandleHello("p2", HelloFrom(""), kT0, &out));
  Hello too_many = HelloFrom("site-b");
  too_many.ranks = kMaxSiteRanks + 1;
  CHECK_FALSE(f.members->HandleHello("p2", too_many, kT0, &out));
  REQUIRE(Bodies<Error>(out, "p2").size() == 2);
  CHECK(Bodies<Error>(out, "p2")[0]->code == ErrorCode::kMalformed);
  CHECK(Bodies<Error>(out, "p2")[1]->code == ErrorCode::kBadPayload);
  CHECK(f.members->workers().size() == 1);
  CHECK(f.members->SiteOfPeer("p2").empty());
}

TEST_CASE("membership: a rejoin replaces the peer, voids the upload and hears of the open rounds",
          "[unit][coordinator]") {
  Fixture f;
  CoreOutput out;
  REQUIRE(f.members->HandleHello("p1", HelloFrom("site-a"), kT0, &out));
  f.host.view.training = true;
  f.host.view.committed_round = 2;
  f.host.dropped.clear();
  out = CoreOutput{};
  REQUIRE(f.members->HandleHello("p9", HelloFrom("site-a"), kT0, &out));
  CHECK(f.members->JoinedAt("p1") == nullptr);  // the old peer speaks for nobody
  CHECK(f.members->JoinedAt("p9") != nullptr);
  CHECK(f.members->SiteOfPeer("p1").empty());
  CHECK(f.host.dropped == std::vector<std::string>{"site-a"});
  CHECK(f.host.announced == std::vector<std::string>{"site-a:all"});
  CHECK(f.members->Find("site-a")->announced_round == 2);
  CHECK(f.members->Find("site-a")->synced_round == 2);
  CHECK(Bodies<ModelSync>(out, "p9").size() == 1);
  CHECK(f.members->workers().size() == 1);
}

TEST_CASE("membership: a repeated hello on the same connection is welcomed again without a second model",
          "[unit][coordinator]") {
  Fixture f;
  CoreOutput out;
  REQUIRE(f.members->HandleHello("p1", HelloFrom("site-a"), kT0, &out));
  REQUIRE(Bodies<ModelSync>(out, "p1").size() == 1);
  f.host.dropped.clear();
  // It says hello every second until its Welcome is processed: the model
  // on its way is not sent again, nor its upload voided.
  for (int i = 1; i <= 3; ++i) {
    out = CoreOutput{};
    CHECK_FALSE(f.members->HandleHello("p1", HelloFrom("site-a"), kT0 + std::chrono::seconds(i), &out));
    CHECK(Bodies<Welcome>(out, "p1").size() == 1);
    CHECK(Bodies<ModelSync>(out, "p1").empty());
  }
  CHECK(f.host.dropped.empty());
  CHECK(f.members->Find("site-a")->last_seen == kT0 + std::chrono::seconds(3));
  // A restarted worker is a new connection: welcome and model again.
  out = CoreOutput{};
  REQUIRE(f.members->HandleHello("p2", HelloFrom("site-a"), kT0 + std::chrono::seconds(4), &out));
  CHECK(Bodies<ModelSync>(out, "p2").size() == 1);
}

TEST_CASE("membership: no more than four times the expected sites register", "[unit][coordinator]") {
  Fixture f(TinyCampaign(1));
  CoreOutput out;
  for (int i = 0; i < 4; ++i) {
    REQUIRE(f.members->HandleHello("p" + std::to_string(i), HelloFrom("s" + std::to_string(i)), kT0, &out));
  }
  CHECK_FALSE(f.members->HandleHello("p4", HelloFrom("s4"), kT0, &out));
  REQUIRE(Bodies<Error>(out, "p4").size() == 1);
  CHECK(Bodies<Error>(out, "p4")[0]->message == "too many sites registered");
  // A known site may still say hello again.
  CHECK(f.members->HandleHello("p5", HelloFrom("s0"), kT0, &out));
}

TEST_CASE("membership: syncs wait while a round is aggregated", "[unit][coordinator]") {
  Fixture f;
  CoreOutput out;
  REQUIRE(f.members->HandleHello("p1", HelloFrom("site-a"), kT0, &out));
  f.host.view.closing = true;
  out = CoreOutput{};
  f.members->SendSync(*f.members->Find("site-a"), &out);
  CHECK(out.messages.empty());
  CHECK(f.members->TakeDeferredSyncs() == std::set<std::string>{"site-a"});
  CHECK(f.members->TakeDeferredSyncs().empty());
  f.members->SendSync(*f.members->Find("site-a"), &out);
  CHECK(f.members->TakeDeferredSync("site-a"));
  CHECK_FALSE(f.members->TakeDeferredSync("site-a"));
  f.host.view.closing = false;
  f.members->SendSync(*f.members->Find("site-a"), &out);
  CHECK(Bodies<ModelSync>(out, "p1").size() == 1);
}

TEST_CASE("membership: one re-sync per round, eviction after the limit in a row", "[unit][coordinator]") {
  Fixture f;
  CoreOutput out;
  REQUIRE(f.members->HandleHello("p1", HelloFrom("site-a"), kT0, &out));
  WorkerInfo& w = *f.members->Find("site-a");
  out = CoreOutput{};
  CHECK(f.members->Resync(w, "test", kT0, &out));
  CHECK(Bodies<ModelSync>(out, "p1").size() == 1);
  // A second report in the same round waits for the re-sync in flight.
  CHECK_FALSE(f.members->Resync(w, "test", kT0, &out));
  CHECK(Bodies<ModelSync>(out, "p1").size() == 1);
  CHECK(f.host.rejected["resync_limited"] == 1);
  for (int i = 1; i < Membership::kMaxUnconfirmedResyncs; ++i) {
    f.host.view.committed_round = static_cast<uint32_t>(i);
    CHECK(f.members->Resync(w, "test", kT0, &out));
  }
  CHECK(w.unconfirmed_resyncs == Membership::kMaxUnconfirmedResyncs);
  f.host.view.committed_round = 9;
  CHECK_FALSE(f.members->Resync(w, "bad replica", kT0, &out));
  CHECK(w.state == WorkerState::kEvicted);
  REQUIRE(Bodies<CampaignEnd>(out, "p1").size() == 1);
  CHECK(Bodies<CampaignEnd>(out, "p1")[0]->reason ==
        "evicted: its replica was still wrong after 3 re-syncs in a row (bad replica)");
  CHECK(f.host.rejected["resync_limited"] == 2);
  // An evicted site is re-synced no more.
  CHECK_FALSE(f.members->Resync(w, "test", kT0, &out));
}

TEST_CASE("membership: eviction ends the site's campaign once, and it may rejoin by hello", "[unit][coordinator]") {
  Fixture f;
  CoreOutput out;
  REQUIRE(f.members->HandleHello("p1", HelloFrom("site-a"), kT0, &out));
  REQUIRE(f.members->HandleHello("p2", HelloFrom("site-b"), kT0, &out));
  f.host.dropped.clear();
  out = CoreOutput{};
  f.members->Evict(*f.members->Find("site-a"), "evicted by operator", kT0, &out);
  REQUIRE(Bodies<CampaignEnd>(out, "p1").size() == 1);
  CHECK(Bodies<CampaignEnd>(out, "p1")[0]->reason == "evicted by operator");
  CHECK(f.host.dropped == std::vector<std::string>{"site-a"});
  CHECK(f.host.gone == std::vector<std::string>{"site-a"});
  CHECK(f.host.after_leave == 1);
  CHECK(f.members->JoinedAt("p1") == nullptr);
  CHECK_FALSE(f.members->IsLive("site-a"));
  CHECK(f.members->LiveWorkers() == 1);
  // Evicting it again sends nothing more.
  out = CoreOutput{};
  f.members->Evict(*f.members->Find("site-a"), "again", kT0, &out);
  CHECK(out.messages.empty());
  REQUIRE(f.members->HandleHello("p3", HelloFrom("site-a"), kT0, &out));
  CHECK(f.members->IsLive("site-a"));
}

TEST_CASE("membership: heartbeats every interval, a silent site is lost at the timeout", "[unit][coordinator]") {
  Fixture f;
  CoreOutput out;
  REQUIRE(f.members->HandleHello("p1", HelloFrom("site-a"), kT0, &out));
  REQUIRE(f.members->HandleHello("p2", HelloFrom("site-b"), kT0, &out));
  f.host.view.phase = "training";
  f.host.view.committed_round = 4;
  out = CoreOutput{};
  f.members->OnTick(kT0 + std::chrono::milliseconds(50), &out);
  CHECK(out.messages.empty());
  f.members->OnTick(kT0 + std::chrono::milliseconds(100), &out);
  REQUIRE(Bodies<Heartbeat>(out, "p1").size() == 1);
  CHECK(Bodies<Heartbeat>(out, "p1")[0]->round == 4);
  CHECK(Bodies<Heartbeat>(out, "p1")[0]->state == "training");
  CHECK(Bodies<Heartbeat>(out, "p2").size() == 1);
  // site-b keeps talking; site-a goes quiet past heartbeat_timeout_ms.
  f.members->Find("site-b")->last_seen = kT0 + std::chrono::milliseconds(900);
  out = CoreOutput{};
  f.members->OnTick(kT0 + std::chrono::milliseconds(1001), &out);
  CHECK(f.members->Find("site-a")->state == WorkerState::kLost);
  CHECK(Bodies<CampaignEnd>(out, "p1").empty());  // lost, not told
  CHECK(Bodies<Heartbeat>(out, "p2").size() == 1);
  CHECK(f.host.gone == std::vector<std::string>{"site-a"});
  CHECK(f.host.after_leave == 1);
  CHECK(f.members->LiveWorkers() == 1);
}

TEST_CASE("membership: a pipeline worker waits, unwelcomed, until its replica is complete", "[unit][coordinator]") {
  CampaignConfig cfg = TinyCampaign(2, 2);
  cfg.pipeline.stages = 2;
  ParamSet p;
  p.layout.tensors = {{"stage0.emb", {4, 2}}, {"stage0.b", {3}}, {"stage1.head", {2, 5}}};
  p.values.assign(21, 0.5f);
  Fixture f(cfg, p);
  CoreOutput out;
  Hello a = HelloFrom("site-a");
  CHECK_FALSE(f.members->HandleHello("pa", a, kT0, &out));  // no peer endpoint
  CHECK(Bodies<Error>(out, "pa").size() == 1);
  a.peer_endpoint = "tcp://127.0.0.1:5601";
  CHECK(f.members->HandleHello("pa", a, kT0, &out));
  CHECK(Bodies<Welcome>(out, "pa").empty());
  CHECK_FALSE(f.members->Find("site-a")->welcomed);
  // A repeated hello while waiting is quiet.
  CHECK_FALSE(f.members->HandleHello("pa", a, kT0, &out));
  Hello b = HelloFrom("site-b");
  b.peer_endpoint = "tcp://127.0.0.1:5602";
  f.host.view.training = true;
  CHECK(f.members->HandleHello("pb", b, kT0, &out));
  REQUIRE(Bodies<Welcome>(out, "pa").size() == 1);
  REQUIRE(Bodies<Welcome>(out, "pb").size() == 1);
  CHECK(Bodies<Welcome>(out, "pb")[0]->stage_endpoints ==
        std::vector<std::string>{"tcp://127.0.0.1:5601", "tcp://127.0.0.1:5602"});
  CHECK(Bodies<ModelSync>(out, "pa").size() == 1);
  CHECK(f.host.announced == std::vector<std::string>{"site-a:open", "site-b:open"});
  // Every slot held: a third site is refused.
  Hello c = HelloFrom("site-c");
  c.peer_endpoint = "tcp://127.0.0.1:5603";
  CHECK_FALSE(f.members->HandleHello("pc", c, kT0, &out));
  CHECK(Bodies<Error>(out, "pc").size() == 1);
}

}  // namespace
}  // namespace lowband
