// CoordinatorCore driven directly and through the in-process cluster.
#include "coordinator/core.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <random>

#include "codec/dither.h"
#include "codec/logit_codec.h"
#include "tests/fakes/fake_cluster.h"

namespace lowband {
namespace {

using testing::Cluster;
using testing::HelloFrom;
using testing::TinyCampaign;
using testing::TinyParams;
using testing::Wrap;

const std::vector<std::string> kSites = {"site-a", "site-b", "site-c"};

template <typename T>
std::vector<const T*> Bodies(const CoreOutput& out, const std::string& peer) {
  std::vector<const T*> v;
  for (const auto& o : out.messages) {
    if (o.peer == peer) {
      if (const auto* b = std::get_if<T>(&o.msg.body)) v.push_back(b);
    }
  }
  return v;
}

// A dense fp32 DeltaUpload message of `delta` for `round`, trained from `base`.
Message DenseUpload(uint32_t round, uint64_t base, const std::vector<float>& delta) {
  DeltaUpload up;
  up.round = round;
  up.base_digest = base;
  up.train_loss = 1.0;
  up.tokens = 10;
  auto enc = PackDenseFp32(TinyParams().layout, delta);
  up.blob = enc->header;
  Message m = Wrap(up);
  m.bulk = enc->bulk;
  return m;
}

// Brings a cluster to the point where round 1 collects uploads.
void StartRounds(Cluster& c) {
  REQUIRE(c.RunUntil([&] { return c.coordinator().phase() == CoordinatorCore::Phase::kTraining; }));
}

TEST_CASE("registration: every hello gets welcome and parameters, and rounds wait for all", "[unit][coordinator]") {
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(TinyCampaign(), TinyParams(), now);
  CoreOutput out;
  core.HandleMessage("p1", Wrap(HelloFrom("site-a"), ""), now, &out);
  REQUIRE(Bodies<Welcome>(out, "p1").size() == 1);
  REQUIRE(Bodies<Welcome>(out, "p1")[0]->worker_id == "site-a");
  auto syncs = Bodies<ModelSync>(out, "p1");
  REQUIRE(syncs.size() == 1);
  CHECK(syncs[0]->digest == TinyParams().Digest());
  CHECK(core.phase() == CoordinatorCore::Phase::kWaiting);
  core.HandleMessage("p2", Wrap(HelloFrom("site-b")), now, &out);
  core.HandleMessage("p3", Wrap(HelloFrom("site-c")), now, &out);
  CHECK(core.phase() == CoordinatorCore::Phase::kEvaluating);
  CHECK(core.workers().size() == 3);
  CHECK(core.SiteOfPeer("p3") == "site-c");
}

TEST_CASE("hello for another campaign or with an empty site is rejected", "[unit][coordinator]") {
  auto now = TimePoint{};
  CoordinatorCore core(TinyCampaign(), TinyParams(), now);
  CoreOutput out;
  core.HandleMessage("p1", Wrap(HelloFrom("site-a"), "other"), now, &out);
  REQUIRE(Bodies<Error>(out, "p1").size() == 1);
  CHECK(Bodies<Error>(out, "p1")[0]->code == ErrorCode::kWrongCampaign);
  core.HandleMessage("p1", Wrap(HelloFrom("")), now, &out);
  CHECK(Bodies<Error>(out, "p1").size() == 2);
  CHECK(core.workers().empty());
}

TEST_CASE("a full campaign runs and every replica stays bit-identical", "[unit][coordinator][inproc]") {
  Cluster c(TinyCampaign(3, 3), kSites);
  REQUIRE(c.RunUntil([&] { return c.finished(); }));
  c.Step();  // deliver CampaignEnd
  REQUIRE(c.records().size() == 4);  // round 0 evaluation + 3 rounds
  for (uint32_t r = 0; r < 4; ++r) {
    CHECK(c.records()[r].round == r);
    CHECK(c.records()[r].digest_mismatches == 0);
    CHECK(c.records()[r].evaluated == 3);
  }
  CHECK(c.records()[1].contributors == 3);
  CHECK(c.records().back().val_loss < c.records().front().val_loss);
  for (const auto& s : kSites) {
    CHECK(c.exec(s).global().Digest() == c.coordinator().digest());
    CHECK(c.exited(s));
  }
  CHECK(c.coordinator().rejected_messages() == 0);
}

TEST_CASE("overlap: rounds are announced one ahead, early uploads are held, replicas stay identical",
          "[unit][coordinator][inproc]") {
  auto config = TinyCampaign(3, 5);
  config.training.overlap = true;
  Cluster c(config, kSites);
  REQUIRE(c.RunUntil([&] { return c.finished(); }));
  c.Step();
  REQUIRE(c.records().size() == 6);
  for (uint32_t r = 1; r <= 5; ++r) {
    INFO("round " << r);
    CHECK(c.records()[r].contributors == 3);
    CHECK(c.records()[r].digest_mismatches == 0);
  }
  for (const auto& s : kSites) CHECK(c.exec(s).global().Digest() == c.coordinator().digest());
  CHECK(c.coordinator().rejected_messages() == 0);
  CHECK(c.records().back().val_loss < c.records().front().val_loss);
}

TEST_CASE("personalisation: personalised tensors are averaged within their cluster, the rest over all",
          "[unit][coordinator][inproc]") {
  auto config = TinyCampaign(3, 1);
  config.outer = {OuterOptimizerKind::kSgd, 1.0, 0.0};  // theta_1 = mean of the local models
  config.personalization.tensors = {"b"};
  config.personalization.clusters = {{"x", {"site-a", "site-b"}}, {"y", {"site-c"}}};
  auto extended = CoordinatorCore::ClusterLayout(config, TinyParams());
  REQUIRE(extended.ok());
  REQUIRE(extended->layout.tensors.size() == 4);
  CHECK(extended->layout.tensors[2].name == "cluster/x/b");
  CHECK(extended->layout.tensors[3].name == "cluster/y/b");
  auto bad = config;
  bad.personalization.tensors = {"nope"};
  CHECK(CoordinatorCore::ClusterLayout(bad, TinyParams()).status().message().find("'nope'") != std::string::npos);

  Cluster c(config, kSites);
  REQUIRE(c.RunUntil([&] { return c.finished(); }));
  c.Step();
  REQUIRE(c.records().size() == 2);
  CHECK(c.records()[1].digest_mismatches == 0);
  CHECK(c.records()[1].cluster_val_loss.count("x") == 1);
  CHECK(c.records()[1].cluster_val_loss.count("y") == 1);
  // Local model of a site: theta + 0.5 (target - theta) (the fake executor).
  const ParamSet p0 = TinyParams();
  auto local = [&](float v, float target) { return v + 0.5f * (target - v); };
  for (size_t i = 0; i < p0.values.size(); ++i) {
    const float v = p0.values[i];
    const float a = local(v, 1.0f), b = local(v, -1.0f), cc = local(v, 0.5f);
    INFO("parameter " << i);
    if (i < 16) {  // "w" is shared: the mean over all three sites
      const float all = (a + b + cc) / 3;
      CHECK(c.exec("site-a").global().values[i] == Approx(all).margin(1e-6));
      CHECK(c.exec("site-c").global().values[i] == Approx(all).margin(1e-6));
    } else {  // "b" is personalised: cluster x = {a, b}, cluster y = {c}
      CHECK(c.exec("site-a").global().values[i] == Approx((a + b) / 2).margin(1e-6));
      CHECK(c.exec("site-b").global().values[i] == Approx((a + b) / 2).margin(1e-6));
      CHECK(c.exec("site-c").global().values[i] == Approx(cc).margin(1e-6));
    }
  }
  // The coordinator keeps both copies; each site holds its cluster's view.
  CHECK(c.coordinator().params().layout.tensors.size() == 4);
  CHECK(c.exec("site-a").global().Digest() == c.exec("site-b").global().Digest());
  CHECK(c.exec("site-a").global().Digest() != c.exec("site-c").global().Digest());
}

TEST_CASE("the aggregate is the outer optimizer applied to the mean delta", "[unit][coordinator][inproc]") {
  auto config = TinyCampaign(3, 1);
  config.outer = {OuterOptimizerKind::kSgd, 1.0, 0.0};  // theta_1 = mean of local models
  Cluster c(config, kSites);
  REQUIRE(c.RunUntil([&] { return c.finished(); }));
  const ParamSet p0 = TinyParams();
  const float targets[] = {1.0f, -1.0f, 0.5f};
  for (size_t i = 0; i < p0.values.size(); ++i) {
    float mean_local = 0;
    for (float t : targets) mean_local += p0.values[i] + 0.5f * (t - p0.values[i]);
    mean_local /= 3;
    CHECK(c.coordinator().params().values[i] == Approx(mean_local).margin(1e-6));
  }
}

TEST_CASE("a worker lost mid-round: the round closes with the others", "[unit][coordinator][inproc]") {
  auto config = TinyCampaign(3, 2);
  config.quorum.min_workers = 2;
  Cluster c(config, kSites);
  StartRounds(c);
  c.Pause("site-c", true);  // stops reading and heartbeating: lost after the timeout
  REQUIRE(c.RunUntil([&] { return c.records().size() >= 2; }));
  CHECK(c.records()[1].contributors == 2);
  CHECK(c.coordinator().workers().at("site-c").state == WorkerState::kLost);
  REQUIRE(c.RunUntil([&] { return c.finished(); }));
  CHECK(c.exec("site-a").global().Digest() == c.coordinator().digest());
}

TEST_CASE("below quorum the round waits, and a rejoining worker is re-synced and completes it",
          "[unit][coordinator][inproc]") {
  auto config = TinyCampaign(3, 2);
  Cluster c(config, kSites);
  StartRounds(c);
  c.Pause("site-c", true);
  REQUIRE(c.RunUntil([&] { return c.coordinator().workers().at("site-c").state == WorkerState::kLost; }));
  for (int i = 0; i < 50; ++i) c.Step();
  CHECK(c.coordinator().committed_round() == 0);  // 2 uploads < min_workers 3
  c.RemoveWorker("site-c");
  c.AddWorker("site-c");  // restarted process: new core, same site
  REQUIRE(c.RunUntil([&] { return c.finished(); }));
  CHECK(c.exec("site-c").global().Digest() == c.coordinator().digest());
  CHECK(c.records()[1].contributors == 3);
}

// The catch-up from logged aggregates itself: integration "fault: a worker
// away for several rounds catches up ..." (a real model, whose sparse
// aggregates are far smaller than it; the fake's 24 parameters are not).
TEST_CASE("a worker back with its replica, when the rounds it missed are no smaller than the model, gets the model",
          "[unit][coordinator][inproc]") {
  auto config = TinyCampaign(3, 8);
  config.quorum.min_workers = 2;
  Cluster c(config, kSites);
  StartRounds(c);
  REQUIRE(c.exec("site-c").loads() == 1);  // the model at the start (the fake builds none of its own)
  c.Pause("site-c", true);
  REQUIRE(c.RunUntil([&] { return c.coordinator().workers().at("site-c").state == WorkerState::kLost; }));
  const uint32_t left = c.coordinator().committed_round();
  REQUIRE(c.RunUntil([&] { return c.coordinator().committed_round() >= left + 2; }));
  CHECK(c.coordinator().membership().logged_aggregates() == 0);  // each as large as the model
  c.Pause("site-c", false);  // the same process: says hello again with what it holds
  REQUIRE(c.RunUntil([&] { return c.finished(); }));
  CHECK(c.exec("site-c").loads() == 2);  // the model again
  CHECK(c.exec("site-c").global().Digest() == c.coordinator().digest());
  CHECK(c.records().back().contributors == 3);
}

TEST_CASE("a straggler past the deadline: its upload is dropped and counted, the aggregate re-syncs it",
          "[unit][coordinator][inproc]") {
  auto config = TinyCampaign(3, 3);
  config.quorum.min_workers = 2;
  config.quorum.round_deadline_s = 5;
  Cluster c(config, kSites);
  StartRounds(c);
  c.HoldJobs("site-c", true);  // still training round 1 when the deadline passes
  REQUIRE(c.RunUntil([&] { return c.records().size() >= 2; }, 100000));
  CHECK(c.records()[1].contributors == 2);
  CHECK_FALSE(c.records()[1].sites.at("site-c").uploaded);
  c.HoldJobs("site-c", false);  // it finishes round 1 late, then carries on
  REQUIRE(c.RunUntil([&] { return c.finished(); }, 100000));
  c.Step();
  REQUIRE(c.records().size() == 4);
  // Left out of round 1 and counted there; its result for the closed round
  // is not sent (the worker knows the round closed).
  CHECK(c.records()[1].stragglers == 1);
  CHECK(c.records()[1].sites.at("site-c").late);
  CHECK(c.records()[1].sites.at("site-c").inner_steps == 2);
  // Re-synced by the aggregate (no full model_sync), it contributes again.
  CHECK(c.records()[2].contributors + c.records()[3].contributors >= 5);
  CHECK(c.records()[3].sites.at("site-c").uploaded);
  CHECK(c.exec("site-c").global().Digest() == c.coordinator().digest());
  for (const auto& r : c.records()) CHECK(r.digest_mismatches == 0);
}

TEST_CASE("adaptive steps: H_i from step times, a token-weighted mean, token claims capped",
          "[unit][coordinator]") {
  auto config = TinyCampaign(3, 3);
  config.training.inner_steps = 8;
  config.training.adaptive.enabled = true;
  config.outer = {OuterOptimizerKind::kSgd, 1.0, 0.0};  // theta_1 = theta_0 - mean delta
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(config, TinyParams(), now);
  CoreOutput out;
  // Reference speeds 1 : 1 : 4 in the hellos.
  const double reference[] = {1, 1, 4};
  for (size_t i = 0; i < kSites.size(); ++i) {
    Hello h = HelloFrom(kSites[i]);
    h.step_time_ms = reference[i];
    core.HandleMessage(kSites[i], Wrap(h), now, &out);
  }
  const uint64_t d0 = core.digest();
  for (const auto& s : kSites) core.HandleMessage(s, Wrap(EvalReport{0, 2.0, 100, d0, {}, {}}), now, &out);
  REQUIRE(core.phase() == CoordinatorCore::Phase::kTraining);
  auto steps = [&](const std::string& site) {
    auto starts = Bodies<RoundStart>(out, site);
    REQUIRE_FALSE(starts.empty());
    return starts.back()->inner_steps;
  };
  CHECK(steps("site-a") == 8);
  CHECK(steps("site-b") == 8);
  CHECK(steps("site-c") == 2);

  // A claim of more tokens than 8 steps of 16 x 64 is refused.
  const size_t n = TinyParams().values.size();
  Message greedy = DenseUpload(1, d0, std::vector<float>(n, 9.0f));
  std::get<DeltaUpload>(greedy.body).tokens = 8 * 16 * 64 + 1;
  core.HandleMessage("site-a", greedy, now, &out);
  REQUIRE(Bodies<Error>(out, "site-a").size() == 1);
  CHECK(Bodies<Error>(out, "site-a")[0]->code == ErrorCode::kBadPayload);
  CHECK(Bodies<Error>(out, "site-a")[0]->message.find("tokens") != std::string::npos);

  // Deltas 1, 0.5, 0.5 with tokens 3000, 1000, 1000 and step times 10, 10, 80 ms.
  const double step_ms[] = {10, 10, 80};
  const uint64_t tokens[] = {3000, 1000, 1000};
  for (size_t i = 0; i < kSites.size(); ++i) {
    Message m = DenseUpload(1, d0, std::vector<float>(n, i == 0 ? 1.0f : 0.5f));
    auto& up = std::get<DeltaUpload>(m.body);
    up.tokens = tokens[i];
    up.step_time_ms = step_ms[i];
    core.HandleMessage(kSites[i], m, now, &out);
  }
  REQUIRE(core.committed_round() == 1);
  const ParamSet p0 = TinyParams();
  for (size_t i = 0; i < n; ++i) CHECK(core.params().values[i] == Approx(p0.values[i] - 0.8f).margin(1e-6));  // (3 + 0.5 + 0.5) / 5

  // Round 2 follows the measured times: 8 x 10 ms of work, 80 ms per step on site-c.
  out = CoreOutput{};
  const uint64_t d1 = core.digest();
  for (const auto& s : kSites) core.HandleMessage(s, Wrap(EvalReport{1, 2.0, 100, d1, {}, {}}), now, &out);
  REQUIRE(core.phase() == CoordinatorCore::Phase::kTraining);
  REQUIRE(core.history().back().round == 1);
  CHECK(core.history().back().sites.at("site-c").inner_steps == 2);
  CHECK(core.history().back().sites.at("site-c").step_time_ms == 80);
  CHECK(core.history().back().sites.at("site-a").tokens == 3000);
  CHECK(steps("site-a") == 8);
  CHECK(steps("site-c") == 1);
}

// Overlap driven message by message: round r+1 opens when round r closes,
// before anyone has evaluated round r; records wait for their evaluations
// and still come out in round order.
TEST_CASE("overlap: the next round opens at the close, records wait for evaluations in order",
          "[unit][coordinator]") {
  auto config = TinyCampaign(3, 4);
  config.training.overlap = true;
  config.network.heartbeat_timeout_ms = 600000;  // nobody is lost by the clock here
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(config, TinyParams(), now);
  CoreOutput out;
  for (const auto& s : kSites) core.HandleMessage(s, Wrap(HelloFrom(s)), now, &out);
  REQUIRE(core.phase() == CoordinatorCore::Phase::kEvaluating);
  std::map<uint32_t, uint64_t> digest_of{{0, core.digest()}};
  auto eval = [&](const std::string& site, uint32_t round, uint64_t digest, CoreOutput* o) {
    core.HandleMessage(site, Wrap(EvalReport{round, 2.0 + round, 100, digest, {}, {}}), now, o);
  };
  auto upload = [&](const std::string& site, uint32_t round, CoreOutput* o) {
    std::vector<float> delta(TinyParams().values.size(), 0.01f * static_cast<float>(round));
    core.HandleMessage(site, DenseUpload(round, digest_of.at(round >= 2 ? round - 2 : 0), delta), now, o);
  };
  for (const auto& s : kSites) eval(s, 0, digest_of[0], &out);
  REQUIRE(core.phase() == CoordinatorCore::Phase::kTraining);
  REQUIRE(core.history().size() == 1);

  out = CoreOutput{};
  for (const auto& s : kSites) upload(s, 1, &out);
  REQUIRE(out.commits.size() == 1);
  CHECK(out.commits[0].record.round == 1);
  digest_of[1] = core.digest();
  // Round 2 is open already; round 1's record waits.
  CHECK(core.committed_round() == 1);
  CHECK(core.phase() == CoordinatorCore::Phase::kTraining);
  CHECK(out.committed.empty());
  REQUIRE(Bodies<RoundStart>(out, "site-a").size() == 1);
  CHECK(Bodies<RoundStart>(out, "site-a")[0]->round == 3);  // right behind aggregate 1

  out = CoreOutput{};
  for (const auto& s : kSites) upload(s, 2, &out);  // trained from theta_0 plus local progress
  REQUIRE(out.commits.size() == 1);
  digest_of[2] = core.digest();
  CHECK(core.committed_round() == 2);
  CHECK(core.phase() == CoordinatorCore::Phase::kTraining);
  CHECK(Bodies<Error>(out, "site-a").empty());

  SECTION("evaluations of a later round wait for the earlier record") {
    out = CoreOutput{};
    for (const auto& s : kSites) eval(s, 2, digest_of[2], &out);
    CHECK(out.committed.empty());
    for (const auto& s : kSites) eval(s, 1, digest_of[1], &out);
    REQUIRE(out.committed.size() == 2);
    CHECK(out.committed[0].round == 1);
    CHECK(out.committed[0].val_loss == Approx(3.0));
    CHECK(out.committed[0].evaluated == 3);
    CHECK(out.committed[0].digest == digest_of[1]);
    CHECK(out.committed[1].round == 2);
    CHECK(out.committed[1].val_loss == Approx(4.0));
    CHECK(Bodies<Error>(out, "site-a").empty());

    // Uploads of round 4 come while round 3 is open: held; round 3's close
    // opens round 4, which closes in the same step. Two commits, in order.
    out = CoreOutput{};
    for (const auto& s : kSites) upload(s, 4, &out);
    CHECK(out.commits.empty());
    for (const auto& s : kSites) upload(s, 3, &out);
    REQUIRE(out.commits.size() == 2);
    CHECK(out.commits[0].record.round == 3);
    CHECK(out.commits[1].record.round == 4);
    CHECK(core.committed_round() == 4);
    CHECK(core.phase() == CoordinatorCore::Phase::kEvaluating);  // the last round: nothing more opens
    const uint64_t digest4 = core.digest();
    const uint64_t digest3 = out.commits[0].record.digest;
    out = CoreOutput{};
    for (const auto& s : kSites) eval(s, 4, digest4, &out);
    CHECK_FALSE(out.finished);
    for (const auto& s : kSites) eval(s, 3, digest3, &out);
    REQUIRE(out.committed.size() == 2);
    CHECK(out.committed[1].round == 4);
    CHECK(out.finished);
    CHECK_FALSE(out.failed);
    CHECK(core.history().size() == 5);
  }
  SECTION("an evaluation showing another round's parameters is a mismatch: re-synced, not counted") {
    out = CoreOutput{};
    eval("site-a", 1, digest_of[2], &out);
    REQUIRE(Bodies<Error>(out, "site-a").size() == 1);
    CHECK(Bodies<Error>(out, "site-a")[0]->code == ErrorCode::kDigestMismatch);
    REQUIRE(Bodies<ModelSync>(out, "site-a").size() == 1);
    CHECK(Bodies<ModelSync>(out, "site-a")[0]->round == 2);
    // site-a now evaluates round 2, not round 1: round 1's record needs the others only.
    eval("site-b", 1, digest_of[1], &out);
    eval("site-c", 1, digest_of[1], &out);
    REQUIRE(out.committed.size() == 1);
    CHECK(out.committed[0].evaluated == 2);
    CHECK(out.committed[0].digest_mismatches == 1);
    CHECK_FALSE(out.committed[0].sites.at("site-a").digest_ok);
  }
  SECTION("a site that never evaluates holds a record only until the deadline") {
    out = CoreOutput{};
    eval("site-a", 1, digest_of[1], &out);
    eval("site-b", 1, digest_of[1], &out);
    CHECK(out.committed.empty());
    core.OnTick(now + std::chrono::seconds(29), &out);
    CHECK(out.committed.empty());
    core.OnTick(now + std::chrono::seconds(31), &out);
    CHECK(core.workers().at("site-c").state == WorkerState::kJoined);
    REQUIRE_FALSE(out.committed.empty());
    CHECK(out.committed[0].round == 1);
    CHECK(out.committed[0].evaluated == 2);
  }
  SECTION("a site that leaves is not waited for") {
    out = CoreOutput{};
    eval("site-a", 1, digest_of[1], &out);
    eval("site-b", 1, digest_of[1], &out);
    CHECK(out.committed.empty());
    REQUIRE(core.HandleControl(ControlRequest{"worker evict", {"site-c"}}, now, &out).ok);
    REQUIRE_FALSE(out.committed.empty());
    CHECK(out.committed[0].round == 1);
    CHECK(out.committed[0].evaluated == 2);
  }
}

// FPLD: sites send probe logits; the coordinator checks and decodes them,
// averages the teacher, has the student distilled (a stand-in here) and
// sends theta - student as the round's aggregate to the sites of the
// student's architecture only.
// TinyCampaign as an FPLD campaign: probes of 2 contexts x 2 positions (4
// logit rows) at 6 bits, clip 8, and the outer step FPLD requires.
CampaignConfig TinyFpldCampaign(int workers, int rounds) {
  auto config = TinyCampaign(workers, rounds);
  config.fpld.enabled = true;
  config.fpld.contexts = 2;
  config.fpld.positions = 2;
  config.fpld.bits = 6;
  config.fpld.clip = 8;
  config.outer = OuterOptimizerConfig{OuterOptimizerKind::kSgd, 1.0, 0.0};
  return config;
}
constexpr int kFpldRows = 4;

// `site`'s LogitUpload for round 1 in a TinyFpldCampaign: row r peaks at
// entry r with `level` (0: all zero), encoded with the site's dither.
Message FpldUpload(const CampaignConfig& config, const std::string& site, float level, uint64_t tokens = 10) {
  const int vocab = config.model.vocab;
  std::vector<float> logits(static_cast<size_t>(kFpldRows) * vocab, 0.0f);
  for (int r = 0; r < kFpldRows; ++r) logits[static_cast<size_t>(r) * vocab + r] = level;
  Bytes bulk = EncodeLogits(LogitCodec{6, 8.0f, 0}, kFpldRows, vocab, logits.data(),
                            DitherSeedFor(config.training.seed, 1, site));
  LogitUpload u;
  u.round = 1;
  u.train_loss = 3.0;
  u.tokens = tokens;
  u.rows = kFpldRows;
  u.vocab = static_cast<uint32_t>(vocab);
  u.bits = 6;
  u.clip = 8.0f;
  u.blob.byte_length = bulk.size();
  Message m = Wrap(u);
  m.bulk = bulk;
  return m;
}

TEST_CASE("fpld: logit uploads are checked, averaged and distilled - own-model sites get no parameters",
          "[unit][coordinator]") {
  const auto config = TinyFpldCampaign(3, 2);
  const int rows = kFpldRows, vocab = config.model.vocab;
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(config, TinyParams(), now);
  std::vector<float> seen_teacher;
  core.SetFpld(std::vector<uint8_t>(2 * static_cast<size_t>(config.model.context), 'x'),
               [&](uint32_t, const ParamSet& start, const std::vector<float>& teacher, const std::vector<float>*) {
                 seen_teacher = teacher;
                 DistilOutcome o;
                 o.student = start.values;
                 for (float& v : o.student) v += 0.5f;
                 o.public_val_loss = 2.0;
                 return StatusOr<DistilOutcome>(o);
               });
  CoreOutput out;
  Hello own = HelloFrom("site-c");
  own.own_model = ModelSpecShape(2, 96, 4, 0, 0);
  core.HandleMessage("site-a", Wrap(HelloFrom("site-a")), now, &out);
  core.HandleMessage("site-b", Wrap(HelloFrom("site-b")), now, &out);
  core.HandleMessage("site-c", Wrap(own), now, &out);
  REQUIRE(Bodies<Welcome>(out, "site-c").size() == 1);
  CHECK(Bodies<Welcome>(out, "site-c")[0]->fpld.enabled);
  CHECK(Bodies<Welcome>(out, "site-c")[0]->fpld.probe_tokens.size() == 2u * config.model.context);
  CHECK(Bodies<ModelSync>(out, "site-c").empty());  // its model is its own
  CHECK(Bodies<ModelSync>(out, "site-a").size() == 1);
  const uint64_t digest0 = core.digest();
  for (const char* s : {"site-a", "site-b"}) {
    core.HandleMessage(s, Wrap(EvalReport{0, 5.0, 100, digest0, {}, {}}), now, &out);
  }
  REQUIRE(core.phase() == CoordinatorCore::Phase::kTraining);  // site-c evaluates nothing of the student's
  REQUIRE(Bodies<RoundStart>(out, "site-c").size() == 1);
  CHECK(Bodies<RoundStart>(out, "site-c")[0]->model_version == 0);
  CHECK(Bodies<RoundStart>(out, "site-a")[0]->model_version == digest0);

  const LogitCodec codec{6, 8.0f, 0};
  auto upload = [&](const std::string& site, float level) { return FpldUpload(config, site, level); };
  SECTION("malformed uploads are refused and change nothing") {
    auto refused = [&](Message m, ErrorCode code) {
      CoreOutput o;
      core.HandleMessage("site-a", m, now, &o);
      REQUIRE(Bodies<Error>(o, "site-a").size() == 1);
      CHECK(Bodies<Error>(o, "site-a")[0]->code == code);
      CHECK(core.uploads_received() == 0);
    };
    Message wrong_rows = upload("site-a", 4.0f);
    std::get<LogitUpload>(wrong_rows.body).rows = 3;
    refused(wrong_rows, ErrorCode::kBadPayload);
    Message wrong_bits = upload("site-a", 4.0f);
    std::get<LogitUpload>(wrong_bits.body).bits = 8;
    refused(wrong_bits, ErrorCode::kBadPayload);
    Message short_payload = upload("site-a", 4.0f);
    short_payload.bulk.pop_back();
    refused(short_payload, ErrorCode::kBadPayload);
    Message no_tokens = upload("site-a", 4.0f);
    std::get<LogitUpload>(no_tokens.body).tokens = 0;
    refused(no_tokens, ErrorCode::kBadPayload);
    Message exact_unasked = upload("site-a", 4.0f);
    std::get<LogitUpload>(exact_unasked.body).exact_bytes = 16;
    exact_unasked.bulk.resize(exact_unasked.bulk.size() + 16);
    refused(exact_unasked, ErrorCode::kBadPayload);
    Message later = upload("site-a", 4.0f);
    std::get<LogitUpload>(later.body).round = 2;
    refused(later, ErrorCode::kWrongRound);
    refused(DenseUpload(1, digest0, std::vector<float>(TinyParams().values.size(), 0.0f)), ErrorCode::kUnexpected);
  }
  SECTION("the teacher is the mean of the dequantized logits; the student goes to its architecture's sites") {
    core.HandleMessage("site-a", upload("site-a", 6.0f), now, &out);
    core.HandleMessage("site-b", upload("site-b", 2.0f), now, &out);
    out = CoreOutput{};
    core.HandleMessage("site-c", upload("site-c", 4.0f), now, &out);
    REQUIRE(out.commits.size() == 1);
    const auto& rec = out.commits[0].record;
    CHECK(rec.contributors == 3);
    CHECK(rec.fpld.payload_bytes == 3 * LogitPayloadBytes(codec, rows, vocab));
    CHECK(rec.fpld.fp32_bytes == 3u * rows * vocab * sizeof(float));
    CHECK(rec.fpld.public_val_loss == 2.0);
    // Each row, centred: the peak is level * (1 - 1/V), the rest -level / V.
    REQUIRE(seen_teacher.size() == static_cast<size_t>(rows) * vocab);
    const double step = 16.0 / 63.0;
    CHECK(seen_teacher[0] == Approx(4.0 * (1 - 1.0 / vocab)).margin(step));
    CHECK(seen_teacher[1] == Approx(-4.0 / vocab).margin(step));
    CHECK(Bodies<Aggregate>(out, "site-a").size() == 1);
    CHECK(Bodies<Aggregate>(out, "site-c").empty());
    for (size_t i = 0; i < TinyParams().values.size(); ++i) {
      CHECK(core.params().values[i] == Approx(TinyParams().values[i] + 0.5f).margin(1e-6));
    }
    CHECK(Bodies<Aggregate>(out, "site-a")[0]->digest == core.digest());
  }
}

TEST_CASE("the ledger books a message under the round it names, near the committed one", "[unit][coordinator]") {
  auto now = TimePoint{};
  CoordinatorCore core(TinyCampaign(), TinyParams(), now);
  CHECK(core.LedgerRoundOf(Wrap(EvalReport{2, 1.0, 1, 0, {}, {}}), 0) == 2);
  CHECK(core.LedgerRoundOf(Wrap(EvalReport{3, 1.0, 1, 0, {}, {}}), 0) == 0);  // beyond committed + 2: hostile or stale
  CHECK(core.LedgerRoundOf(Wrap(Heartbeat{1, "idle"}), 0) == 0);
  RoundStart rs;
  rs.round = 1;
  CHECK(core.LedgerRoundOf(Wrap(rs), 0) == 1);
}

TEST_CASE("late, duplicate and wrong-round uploads are rejected and change nothing", "[unit][coordinator]") {
  auto config = TinyCampaign(3, 3);
  config.quorum.min_workers = 2;
  Cluster c(config, kSites);
  StartRounds(c);
  CoordinatorCore& core = c.coordinator();
  core.SetAsyncClose(false);  // driven directly below: the round commits inline
  const uint64_t digest0 = core.digest();

  auto upload = [&](uint32_t round, uint64_t base) {
    return DenseUpload(round, base, std::vector<float>(TinyParams().values.size(), 0.0f));
  };

  CoreOutput out;
  SECTION("wrong round id") {
    core.HandleMessage("site-a", upload(7, digest0), c.now(), &out);
    REQUIRE(Bodies<Error>(out, "site-a").size() == 1);
    CHECK(Bodies<Error>(out, "site-a")[0]->code == ErrorCode::kWrongRound);
    CHECK(core.digest() == digest0);
  }
  SECTION("duplicate") {
    core.HandleMessage("site-a", upload(1, digest0), c.now(), &out);
    CHECK(Bodies<Error>(out, "site-a").empty());
    core.HandleMessage("site-a", upload(1, digest0), c.now(), &out);
    REQUIRE(Bodies<Error>(out, "site-a").size() == 1);
    CHECK(Bodies<Error>(out, "site-a")[0]->code == ErrorCode::kDuplicate);
    CHECK(core.committed_round() == 0);
  }
  SECTION("trained from the wrong parameters") {
    core.HandleMessage("site-a", upload(1, digest0 ^ 1), c.now(), &out);
    REQUIRE(Bodies<Error>(out, "site-a").size() == 1);
    CHECK(Bodies<Error>(out, "site-a")[0]->code == ErrorCode::kDigestMismatch);
  }
  SECTION("late: after the round closed") {
    c.HoldJobs("site-c", true);  // site-c is still training when the deadline hits
    REQUIRE(c.RunUntil([&] { return c.records().size() >= 2; }, 100000));
    CHECK(c.records()[1].contributors == 2);
    const uint64_t digest1 = core.digest();
    core.HandleMessage("site-c", upload(1, digest0), c.now(), &out);
    REQUIRE(Bodies<Error>(out, "site-c").size() == 1);
    CHECK(Bodies<Error>(out, "site-c")[0]->code == ErrorCode::kWrongRound);
    CHECK(core.digest() == digest1);
    CHECK(core.committed_round() == 1);
  }
  SECTION("unregistered peer") {
    core.HandleMessage("stranger", upload(1, digest0), c.now(), &out);
    REQUIRE(Bodies<Error>(out, "stranger").size() == 1);
    CHECK(Bodies<Error>(out, "stranger")[0]->code == ErrorCode::kNotRegistered);
  }
  SECTION("payload that does not match the layout") {
    Message m = upload(1, digest0);
    m.bulk.pop_back();
    std::get<DeltaUpload>(m.body).blob.byte_length = m.bulk.size();
    std::get<DeltaUpload>(m.body).blob.checksum = BulkChecksum(m.bulk.data(), m.bulk.size());
    core.HandleMessage("site-a", m, c.now(), &out);
    REQUIRE(Bodies<Error>(out, "site-a").size() == 1);
    CHECK(Bodies<Error>(out, "site-a")[0]->code == ErrorCode::kBadPayload);
  }
  SECTION("payload in another codec than the campaign's") {
    Message m = upload(1, digest0);
    std::vector<uint16_t> bits(TinyParams().values.size(), 0);
    auto enc = PackDenseBf16(TinyParams().layout, bits);
    REQUIRE(enc.ok());
    std::get<DeltaUpload>(m.body).blob = enc->header;
    m.bulk = enc->bulk;
    core.HandleMessage("site-a", m, c.now(), &out);
    REQUIRE(Bodies<Error>(out, "site-a").size() == 1);
    CHECK(Bodies<Error>(out, "site-a")[0]->code == ErrorCode::kBadPayload);
    CHECK(Bodies<Error>(out, "site-a")[0]->message.find("dense_bf16") != std::string::npos);
  }
  SECTION("finite but absurdly large entries") {
    Message m = upload(1, digest0);
    std::vector<float> big(TinyParams().values.size(), 0.0f);
    big[3] = 3e38f;
    auto enc = PackDenseFp32(TinyParams().layout, big);
    std::get<DeltaUpload>(m.body).blob = enc->header;
    m.bulk = enc->bulk;
    core.HandleMessage("site-a", m, c.now(), &out);
    REQUIRE(Bodies<Error>(out, "site-a").size() == 1);
    CHECK(Bodies<Error>(out, "site-a")[0]->code == ErrorCode::kBadPayload);
    CHECK(core.committed_round() == 0);
  }
}

TEST_CASE("SparseLoCo campaign: sparse uploads, a sparse aggregate, bit-identical replicas",
          "[unit][coordinator][inproc]") {
  for (AggregationRule rule : {AggregationRule::kMeanAll, AggregationRule::kMeanChoosers}) {
    auto config = TinyCampaign(3, 3);
    config.codec.kind = CodecKind::kSparseLoCo;
    config.codec.topk = 64;
    config.outer.kind = OuterOptimizerKind::kSgd;
    config.outer.lr = 1.0;
    config.outer.momentum = 0.0;
    config.quorum.aggregation = rule;
    Cluster c(config, kSites);
    REQUIRE(c.RunUntil([&] { return c.finished(); }, 100000));
    REQUIRE(c.records().size() == static_cast<size_t>(config.training.rounds) + 1);
    const LayoutPlan plan = PlanLayout(TinyParams().layout, 64);
    for (const RoundRecord& r : c.records()) {
      CHECK(r.digest_mismatches == 0);
      if (r.round == 0) continue;
      CHECK(r.contributors == 3);
      CHECK(r.down_codec == CodecKind::kSparseFp32);
      CHECK(r.aggregate_nnz > 0);
      CHECK(r.aggregate_nnz <= 3u * static_cast<uint64_t>(plan.kept));
    }
    for (const auto& site : kSites) {
      CHECK(c.exec(site).global().Digest() == c.coordinator().digest());
      CHECK(c.exec(site).last_aggregate_codec() == CodecKind::kSparseFp32);
    }
  }
}

TEST_CASE("Nesterov over sparse uploads goes down dense (momentum densifies)", "[unit][coordinator][inproc]") {
  auto config = TinyCampaign(3, 2);
  config.codec.kind = CodecKind::kSparseLoCo;
  Cluster c(config, kSites);
  REQUIRE(c.RunUntil([&] { return c.finished(); }, 100000));
  REQUIRE(c.records().size() == 3);
  CHECK(c.records()[1].down_codec == CodecKind::kDenseFp32);
  for (const auto& site : kSites) CHECK(c.exec(site).global().Digest() == c.coordinator().digest());
}

TEST_CASE("malformed bytes over the transport get an error reply and change nothing", "[unit][coordinator][inproc]") {
  Cluster c(TinyCampaign(3, 2), kSites);
  StartRounds(c);
  auto rogue = c.net().CreateEndpoint("rogue");
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    Bytes junk(1 + rng() % 300);
    for (auto& b : junk) b = static_cast<uint8_t>(rng());
    REQUIRE(rogue->Send("coordinator", Frames{junk}).ok());
  }
  const uint64_t before = c.coordinator().digest();
  const auto rejected_before = c.coordinator().rejected_messages();
  for (const auto& s : kSites) c.Pause(s, true);  // only the junk moves this step
  c.Step();
  for (const auto& s : kSites) c.Pause(s, false);
  CHECK(c.coordinator().rejected_messages() == rejected_before + 200);
  CHECK(c.coordinator().digest() == before);
  Inbound in;
  int errors = 0;
  while (rogue->TryReceive(&in)) {
    auto m = DecodeMessage(in.frames, WireLimits{});
    REQUIRE(m.ok());
    const auto* e = std::get_if<Error>(&m->body);
    REQUIRE(e != nullptr);
    CHECK(e->code == ErrorCode::kMalformed);
    ++errors;
  }
  CHECK(errors == 200);
  REQUIRE(c.RunUntil([&] { return c.finished(); }));
}

TEST_CASE("no quorum within start_timeout ends the campaign as failed", "[unit][coordinator]") {
  auto config = TinyCampaign(3, 2);
  config.quorum.start_timeout_s = 1;
  auto now = TimePoint{};
  CoordinatorCore core(config, TinyParams(), now);
  CoreOutput out;
  core.HandleMessage("p1", Wrap(HelloFrom("site-a")), now, &out);
  out = CoreOutput{};
  core.OnTick(now + std::chrono::milliseconds(500), &out);
  CHECK_FALSE(out.finished);
  core.OnTick(now + std::chrono::milliseconds(900), &out);  // heartbeat keeps p1 alive
  core.HandleMessage("p1", Wrap(Heartbeat{}), now + std::chrono::milliseconds(900), &out);
  core.OnTick(now + std::chrono::milliseconds(1500), &out);
  CHECK(out.finished);
  CHECK(out.failed);
  CHECK(Bodies<CampaignEnd>(out, "p1").size() == 1);
}

TEST_CASE("control: status and workers answer with JSON, unknown commands fail", "[unit][coordinator]") {
  Cluster c(TinyCampaign(3, 2), kSites);
  StartRounds(c);
  auto st = c.Control("status");
  CHECK(st.ok);
  CHECK(st.json.find("\"phase\":\"training\"") != std::string::npos);
  auto w = c.Control("workers");
  CHECK(w.ok);
  CHECK(w.json.find("\"site\":\"site-b\"") != std::string::npos);
  auto bad = c.Control("explode");
  CHECK_FALSE(bad.ok);
  CHECK(bad.message.find("allowed") != std::string::npos);
}

bool Has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST_CASE("control: round pause holds the next round and resume starts it", "[unit][coordinator][inproc]") {
  Cluster c(TinyCampaign(3, 2), kSites);
  StartRounds(c);
  CHECK_FALSE(c.Control("round", {"resume"}).ok);  // not paused
  auto p = c.Control("round", {"pause"});
  REQUIRE(p.ok);
  CHECK(Has(p.message, "round 1 still collects uploads"));
  auto again = c.Control("round pause");
  CHECK_FALSE(again.ok);
  CHECK(Has(again.message, "already paused"));
  // The round in flight collects its uploads, closes and is evaluated.
  REQUIRE(c.RunUntil([&] { return c.records().size() >= 2; }));
  CHECK(c.records()[1].contributors == 3);
  CHECK(c.coordinator().phase() == CoordinatorCore::Phase::kHeld);
  for (int i = 0; i < 100; ++i) c.Step();
  CHECK(c.coordinator().committed_round() == 1);
  CHECK(c.records().size() == 2);
  auto st = c.Control("status");
  CHECK(Has(st.message, "held (paused)"));
  CHECK(Has(st.json, "\"paused\":true"));
  CHECK_FALSE(c.Control("round", {"close"}).ok);  // nothing is collecting uploads
  // Ticks while held send heartbeats, never a RoundStart.
  CoreOutput out;
  c.coordinator().OnTick(c.now(), &out);
  CHECK(Bodies<RoundStart>(out, "site-a").empty());

  CoreOutput resume_out;
  auto r = c.coordinator().HandleControl({"round", {"resume"}}, c.now(), &resume_out);
  REQUIRE(r.ok);
  CHECK(Has(r.message, "round 2 started"));
  for (const auto& s : kSites) {
    REQUIRE(Bodies<RoundStart>(resume_out, s).size() == 1);
    CHECK(Bodies<RoundStart>(resume_out, s)[0]->round == 2);
  }
  CHECK(c.coordinator().phase() == CoordinatorCore::Phase::kTraining);
  CHECK_FALSE(c.coordinator().paused());
}

TEST_CASE("control: resume after pause keeps the campaign going to the end", "[unit][coordinator][inproc]") {
  Cluster c(TinyCampaign(3, 3), kSites);
  StartRounds(c);
  REQUIRE(c.Control("round", {"pause"}).ok);
  REQUIRE(c.RunUntil([&] { return c.coordinator().phase() == CoordinatorCore::Phase::kHeld; }));
  REQUIRE(c.Control("round", {"resume"}).ok);
  REQUIRE(c.RunUntil([&] { return c.finished(); }));
  c.Step();
  REQUIRE(c.records().size() == 4);
  for (const auto& s : kSites) CHECK(c.exec(s).global().Digest() == c.coordinator().digest());
  CHECK_FALSE(c.Control("round", {"pause"}).ok);  // finished
}

TEST_CASE("control: round close commits with the uploads received, ignoring min_workers",
          "[unit][coordinator][inproc]") {
  Cluster c(TinyCampaign(3, 2), kSites);
  StartRounds(c);
  auto none = c.Control("round", {"close"});
  CHECK_FALSE(none.ok);
  CHECK(none.message == "no uploads yet for round 1");
  c.HoldJobs("site-b", true);
  c.HoldJobs("site-c", true);
  REQUIRE(c.RunUntil([&] { return Has(c.Control("status").json, "\"uploads\":1"); }));
  auto closed = c.Control("round", {"close"});
  REQUIRE(closed.ok);
  CHECK(closed.message == "round 1 closed with 1 upload");
  CHECK(c.coordinator().closing());  // aggregated at the next step
  c.Step();
  CHECK(c.coordinator().committed_round() == 1);
  c.HoldJobs("site-b", false);
  c.HoldJobs("site-c", false);
  REQUIRE(c.RunUntil([&] { return c.finished(); }));
  c.Step();
  REQUIRE(c.records().size() == 3);
  CHECK(c.records()[1].contributors == 1);
  CHECK(c.records()[1].sites.at("site-a").uploaded);
  for (const auto& r : c.records()) CHECK(r.digest_mismatches == 0);
  for (const auto& s : kSites) CHECK(c.exec(s).global().Digest() == c.coordinator().digest());
}

TEST_CASE("control: campaign abort fails the campaign and ends every worker", "[unit][coordinator]") {
  SECTION("core") {
    auto now = TimePoint{};
    CoordinatorCore core(TinyCampaign(), TinyParams(), now);
    CoreOutput out;
    core.HandleMessage("p1", Wrap(HelloFrom("site-a"), ""), now, &out);
    out = CoreOutput{};
    auto r = core.HandleControl({"campaign", {"abort"}}, now, &out);
    CHECK(r.ok);
    CHECK(out.finished);
    CHECK(out.failed);
    CHECK(out.finish_reason == "aborted by operator");
    REQUIRE(Bodies<CampaignEnd>(out, "p1").size() == 1);
    CHECK(core.phase() == CoordinatorCore::Phase::kFinished);
    CoreOutput again;
    CHECK_FALSE(core.HandleControl({"campaign", {"abort"}}, now, &again).ok);
    CHECK(again.messages.empty());
  }
  SECTION("cluster") {
    Cluster c(TinyCampaign(3, 3), kSites);
    StartRounds(c);
    REQUIRE(c.Control("campaign", {"abort"}).ok);
    CHECK(c.finished());
    c.Step();
    for (const auto& s : kSites) CHECK(c.exited(s));
  }
}

TEST_CASE("control: worker evict drops the site from the round and ends it", "[unit][coordinator][inproc]") {
  auto config = TinyCampaign(3, 2);
  config.quorum.min_workers = 2;
  Cluster c(config, kSites);
  StartRounds(c);
  auto unknown = c.Control("worker", {"evict", "site-z"});
  CHECK_FALSE(unknown.ok);
  CHECK(Has(unknown.message, "unknown site 'site-z'"));
  CHECK_FALSE(c.Control("worker", {"evict"}).ok);  // no site: usage
  c.HoldJobs("site-c", true);  // still training: the round waits for it
  for (int i = 0; i < 20; ++i) c.Step();
  CHECK(c.coordinator().committed_round() == 0);
  auto ev = c.Control("worker", {"evict", "site-c"});
  REQUIRE(ev.ok);
  CHECK(c.coordinator().workers().at("site-c").state == WorkerState::kEvicted);
  CHECK_FALSE(c.Control("worker", {"evict", "site-c"}).ok);
  REQUIRE(c.RunUntil([&] { return c.records().size() >= 2; }));
  CHECK(c.records()[1].contributors == 2);
  CHECK_FALSE(c.records()[1].sites.count("site-c"));
  c.Step();
  CHECK(c.exited("site-c"));  // told by CampaignEnd
  CHECK(Has(c.Control("workers").json, "\"state\":\"evicted\""));
  REQUIRE(c.RunUntil([&] { return c.finished(); }));
  CHECK(c.exec("site-a").global().Digest() == c.coordinator().digest());
}

TEST_CASE("control: an evicted site may rejoin by saying hello again", "[unit][coordinator]") {
  auto now = TimePoint{};
  CoordinatorCore core(TinyCampaign(1, 2), TinyParams(), now);
  CoreOutput out;
  core.HandleMessage("p1", Wrap(HelloFrom("site-a"), ""), now, &out);
  REQUIRE(core.HandleControl({"worker", {"evict", "site-a"}}, now, &out).ok);
  out = CoreOutput{};
  core.HandleMessage("p1", Wrap(Heartbeat{}), now, &out);
  REQUIRE(Bodies<Error>(out, "p1").size() == 1);
  CHECK(Bodies<Error>(out, "p1")[0]->code == ErrorCode::kNotRegistered);
  core.HandleMessage("p2", Wrap(HelloFrom("site-a")), now, &out);
  CHECK(Bodies<Welcome>(out, "p2").size() == 1);
  CHECK(core.workers().at("site-a").state == WorkerState::kJoined);
}

TEST_CASE("an upload whose norm is far above its peers' is rejected and left out of the round", "[unit][coordinator]") {
  auto config = TinyCampaign(3, 3);
  config.quorum.max_norm_ratio = 10;
  Cluster c(config, kSites);
  StartRounds(c);
  CoordinatorCore& core = c.coordinator();
  core.SetAsyncClose(false);  // driven directly below: the round commits inline
  const uint64_t digest0 = core.digest();
  auto upload = [&](float scale) {
    std::vector<float> delta(TinyParams().values.size());
    for (size_t i = 0; i < delta.size(); ++i) delta[i] = scale * (0.01f + 0.001f * static_cast<float>(i % 5));
    return DenseUpload(1, digest0, delta);
  };
  CoreOutput out;
  core.HandleMessage("site-a", upload(1.0f), c.now(), &out);
  core.HandleMessage("site-b", upload(-1.5f), c.now(), &out);
  core.HandleMessage("site-c", upload(400.0f), c.now(), &out);  // finite, under the magnitude cap, 400x the others
  REQUIRE(Bodies<Error>(out, "site-c").size() == 1);
  CHECK(Bodies<Error>(out, "site-c")[0]->code == ErrorCode::kBadPayload);
  CHECK_THAT(Bodies<Error>(out, "site-c")[0]->message, Catch::Matchers::Contains("median"));
  CHECK(Bodies<Error>(out, "site-a").empty());
  REQUIRE(out.commits.size() == 1);
  CHECK(out.commits[0].record.contributors == 2);
  CHECK_FALSE(out.commits[0].record.sites.count("site-c"));
  CHECK(core.rejected_by_reason().at("norm_outlier") == 1);

  // The same three uploads with the check off: all three count.
  auto off = TinyCampaign(3, 3);
  off.quorum.max_norm_ratio = 0;
  Cluster c2(off, kSites);
  StartRounds(c2);
  c2.coordinator().SetAsyncClose(false);
  CoreOutput out2;
  c2.coordinator().HandleMessage("site-a", upload(1.0f), c2.now(), &out2);
  c2.coordinator().HandleMessage("site-b", upload(-1.5f), c2.now(), &out2);
  c2.coordinator().HandleMessage("site-c", upload(400.0f), c2.now(), &out2);
  REQUIRE(out2.commits.size() == 1);
  CHECK(out2.commits[0].record.contributors == 3);
}

CampaignConfig ResumableCampaign(CodecKind downlink = CodecKind::kSparseFp32) {
  auto config = TinyCampaign(3, 5);
  config.codec.kind = CodecKind::kSparseLoCo;  // sparse logged gradients
  config.outer.kind = OuterOptimizerKind::kNesterov;  // and outer momentum to carry
  config.codec.downlink = downlink;                   // sparseloco: downlink error feedback to carry too
  return config;
}

TEST_CASE("resume: replaying the logged gradients rebuilds every round bit-identically", "[unit][coordinator][inproc]") {
  const CodecKind downlink = GENERATE(CodecKind::kSparseFp32, CodecKind::kSparseLoCo);
  INFO("downlink " << CodecName(downlink));
  Cluster c(ResumableCampaign(downlink), kSites);
  REQUIRE(c.RunUntil([&] { return c.finished(); }, 100000));
  const auto& commits = c.commits();
  REQUIRE(commits.size() == 5);

  // From round 0 (no checkpoint yet).
  CoordinatorCore b(ResumableCampaign(downlink), TinyParams(), c.now());
  REQUIRE(b.Restore(0, TinyParams(), {}, {}).ok());
  for (const RoundCommit& k : commits) {
    INFO("round " << k.record.round);
    CHECK(k.gradient.header.codec == CodecKind::kSparseFp32);
    REQUIRE(b.Replay(k.record.round, k.gradient, k.record.digest).ok());
    CHECK(b.digest() == k.record.digest);
  }
  CHECK(b.digest() == c.coordinator().digest());
  CHECK(b.downlink_error() == c.coordinator().downlink_error());
  CHECK(c.coordinator().downlink_error().empty() == (downlink == CodecKind::kSparseFp32));
  if (downlink == CodecKind::kSparseLoCo) {
    for (const std::string& site : kSites) CHECK(c.exec(site).last_aggregate_codec() == CodecKind::kSparseLoCo);
  }

  // From a checkpoint of round 2 (parameters, momentum and downlink error
  // feedback), then the log.
  CoordinatorCore at2(ResumableCampaign(downlink), TinyParams(), c.now());
  REQUIRE(at2.Restore(0, TinyParams(), {}, {}).ok());
  for (int r = 0; r < 2; ++r) REQUIRE(at2.Replay(r + 1, commits[r].gradient, commits[r].record.digest).ok());
  CoordinatorCore d(ResumableCampaign(downlink), TinyParams(), c.now());
  REQUIRE(d.Restore(2, at2.params(), at2.outer_momentum(), at2.downlink_error()).ok());
  for (size_t r = 2; r < commits.size(); ++r) {
    REQUIRE(d.Replay(commits[r].record.round, commits[r].gradient, commits[r].record.digest).ok());
  }
  CHECK(d.digest() == c.coordinator().digest());
  CHECK(d.downlink_error() == c.coordinator().downlink_error());

  // Without the momentum (or the downlink's error feedback) the digest
  // chain breaks, and is refused up front.
  CoordinatorCore e(ResumableCampaign(downlink), TinyParams(), c.now());
  CHECK(e.Restore(2, at2.params(), {}, at2.downlink_error()).code() == StatusCode::kInvalidArgument);
  if (downlink == CodecKind::kSparseLoCo) {
    CHECK(e.Restore(2, at2.params(), at2.outer_momentum(), {}).code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("resume: a bad log or checkpoint is refused and changes nothing", "[unit][coordinator][inproc]") {
  Cluster c(ResumableCampaign(), kSites);
  REQUIRE(c.RunUntil([&] { return c.commits().size() >= 2; }, 100000));
  const RoundCommit first = c.commits()[0];
  CoordinatorCore b(ResumableCampaign(), TinyParams(), c.now());
  const uint64_t start = b.digest();
  CHECK(b.Replay(2, first.gradient, first.record.digest).code() == StatusCode::kFailedPrecondition);
  RoundCommit flipped = first;
  flipped.gradient.bulk.Mutable()[flipped.gradient.bulk.size() / 2] ^= 0x40;
  CHECK(b.Replay(1, flipped.gradient, first.record.digest).code() == StatusCode::kCorruption);
  CHECK(b.digest() == start);
  CHECK(b.committed_round() == 0);
  CHECK(b.Replay(1, first.gradient, first.record.digest ^ 1).code() == StatusCode::kCorruption);

  ParamSet other = TinyParams();
  other.layout.tensors[1].name = "renamed";
  CoordinatorCore d(ResumableCampaign(), TinyParams(), c.now());
  CHECK(d.Restore(1, other, std::vector<float>(24, 0.0f), {}).code() == StatusCode::kInvalidArgument);
  CHECK(d.Restore(1, TinyParams(), std::vector<float>(5, 0.0f), {}).code() == StatusCode::kInvalidArgument);
  CHECK(d.committed_round() == 0);
  // Once workers have joined, the state can no longer be replaced.
  CHECK(c.coordinator().Restore(0, TinyParams(), {}, {}).code() == StatusCode::kFailedPrecondition);
}

TEST_CASE("resume: a restored coordinator re-evaluates, continues and ends where the uninterrupted one did",
          "[unit][coordinator][inproc]") {
  const CodecKind downlink = GENERATE(CodecKind::kSparseFp32, CodecKind::kSparseLoCo);
  INFO("downlink " << CodecName(downlink));
  Cluster whole(ResumableCampaign(downlink), kSites);
  REQUIRE(whole.RunUntil([&] { return whole.finished(); }, 100000));
  const auto commits = whole.commits();
  const auto records = whole.records();

  // The state a coordinator killed after committing round 3 finds on disk:
  // rounds 0..2 recorded, round 3 committed but not yet evaluated.
  Cluster resumed(ResumableCampaign(downlink), kSites, [&](CoordinatorCore& core) {
    REQUIRE(core.Restore(0, TinyParams(), {}, {}).ok());
    for (int r = 0; r < 3; ++r) REQUIRE(core.Replay(r + 1, commits[r].gradient, commits[r].record.digest).ok());
    std::vector<RoundRecord> recorded(records.begin(), records.begin() + 3);
    core.RestoreHistory(recorded, commits[2].record);
  });
  REQUIRE(resumed.RunUntil([&] { return resumed.finished(); }, 100000));
  CHECK(resumed.coordinator().digest() == whole.coordinator().digest());
  REQUIRE(resumed.records().size() == 3);  // rounds 3, 4, 5
  CHECK(resumed.records()[0].round == 3);
  CHECK_FALSE(resumed.records()[0].reevaluated);  // its record had not been written yet
  CHECK(resumed.records()[0].contributors == 3);  // train figures kept from the commit
  CHECK(resumed.coordinator().history().size() == 6);

  // Killed after round 3's record was written: round 3 is only re-evaluated.
  Cluster again(ResumableCampaign(downlink), kSites, [&](CoordinatorCore& core) {
    REQUIRE(core.Restore(0, TinyParams(), {}, {}).ok());
    for (int r = 0; r < 3; ++r) REQUIRE(core.Replay(r + 1, commits[r].gradient, commits[r].record.digest).ok());
    core.RestoreHistory(std::vector<RoundRecord>(records.begin(), records.begin() + 4), std::nullopt);
  });
  REQUIRE(again.RunUntil([&] { return again.finished(); }, 100000));
  CHECK(again.coordinator().digest() == whole.coordinator().digest());
  REQUIRE(again.records().size() == 3);
  CHECK(again.records()[0].reevaluated);
  CHECK(again.coordinator().history().size() == 6);
}

}  // namespace
}  // namespace lowband

namespace lowband {
namespace {

// A 2-stage pipeline campaign's global parameters: stage 0 owns "stage0.*",
// stage 1 owns "stage1.*" (the names InitialPipelineParameters gives).
ParamSet TwoStageParams() {
  ParamSet p;
  p.layout.tensors = {{"stage0.emb", {4, 2}}, {"stage0.b", {3}}, {"stage1.head", {2, 5}}};
  p.values.resize(21);
  for (size_t i = 0; i < p.values.size(); ++i) p.values[i] = 0.1f * static_cast<float>(i);
  return p;
}

Message PipelineHello(const std::string& site, const std::string& endpoint) {
  Hello h = testing::HelloFrom(site);
  h.peer_endpoint = endpoint;
  return Wrap(h, "");
}

TEST_CASE("pipeline: slots, neighbours and per-stage syncs, uploads and aggregates", "[unit][coordinator]") {
  CampaignConfig cfg = TinyCampaign(2, 2);
  cfg.pipeline.stages = 2;
  cfg.outer.lr = 1.0;
  cfg.outer.momentum = 0.0;
  cfg.outer.kind = OuterOptimizerKind::kSgd;
  const ParamSet initial = TwoStageParams();
  const TimePoint t0 = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(cfg, initial, t0);

  CoreOutput out;
  core.HandleMessage("pa", PipelineHello("site-a", "tcp://127.0.0.1:5601"), t0, &out);
  // Alone, its replica is incomplete: no welcome yet; a repeated hello is quiet.
  CHECK(Bodies<Welcome>(out, "pa").empty());
  core.HandleMessage("pa", PipelineHello("site-a", "tcp://127.0.0.1:5601"), t0, &out);
  CHECK(out.messages.empty());
  // Without a peer endpoint a worker cannot join a pipeline.
  core.HandleMessage("px", PipelineHello("site-x", ""), t0, &out);
  CHECK(Bodies<Error>(out, "px").size() == 1);
  out = CoreOutput{};
  core.HandleMessage("pb", PipelineHello("site-b", "tcp://127.0.0.1:5602"), t0, &out);
  auto wa = Bodies<Welcome>(out, "pa");
  auto wb = Bodies<Welcome>(out, "pb");
  REQUIRE(wa.size() == 1);
  REQUIRE(wb.size() == 1);
  CHECK(wa[0]->stage == 0);
  CHECK(wb[0]->stage == 1);
  CHECK(wb[0]->stage_endpoints == std::vector<std::string>{"tcp://127.0.0.1:5601", "tcp://127.0.0.1:5602"});
  CHECK(wa[0]->data_seed == wb[0]->data_seed);  // one replica reads one data stream
  // Each stage is synced with its own slice under local names.
  auto sa = std::find_if(out.messages.begin(), out.messages.end(),
                         [](const Outgoing& o) { return o.peer == "pa" && std::holds_alternative<ModelSync>(o.msg.body); });
  REQUIRE(sa != out.messages.end());
  CHECK(sa->msg.bulk.empty());  // offered; pulled in chunks
  CHECK(std::get<ModelSync>(sa->msg.body).blob.byte_length == 11 * sizeof(float));
  const uint64_t digest_a = std::get<ModelSync>(sa->msg.body).digest;
  CHECK(digest_a == ValuesDigest(initial.values.data(), 11));
  const uint64_t digest_b = ValuesDigest(initial.values.data() + 11, 10);

  // Round 0 evaluation: only the last stage's loss counts.
  out = CoreOutput{};
  core.HandleMessage("pa", Wrap(EvalReport{0, 0.0, 0, digest_a, {}, {}}), t0, &out);
  core.HandleMessage("pb", Wrap(EvalReport{0, 4.5, 100, digest_b, {}, {}}), t0, &out);
  REQUIRE(out.committed.size() == 1);
  CHECK(out.committed[0].val_loss == Approx(4.5));
  REQUIRE(core.phase() == CoordinatorCore::Phase::kTraining);

  // Round 1: each stage uploads a delta of its own slice.
  auto upload = [&](const std::string& peer, uint64_t base, const ParamLayout& layout, std::vector<float> delta,
                    double loss) {
    DeltaUpload up;
    up.round = 1;
    up.base_digest = base;
    up.train_loss = loss;
    up.tokens = 10;
    auto enc = PackDenseFp32(layout, delta);
    up.blob = enc->header;
    Message m = Wrap(up);
    m.bulk = enc->bulk;
    core.HandleMessage(peer, m, t0, &out);
  };
  ParamLayout la, lb;
  la.tensors = {{"emb", {4, 2}}, {"b", {3}}};
  lb.tensors = {{"head", {2, 5}}};
  // An upload against the other stage's layout is refused.
  out = CoreOutput{};
  upload("pa", digest_a, lb, std::vector<float>(10, 0.5f), 2.0);
  CHECK(Bodies<Error>(out, "pa").size() == 1);
  upload("pa", digest_a, la, std::vector<float>(11, 0.5f), 0.0);
  upload("pb", digest_b, lb, std::vector<float>(10, -1.0f), 3.0);
  REQUIRE(out.commits.size() == 1);
  CHECK(out.commits[0].record.train_loss == Approx(3.0));  // the last stage's
  auto aa = Bodies<Aggregate>(out, "pa");
  auto ab = Bodies<Aggregate>(out, "pb");
  REQUIRE(aa.size() == 1);
  REQUIRE(ab.size() == 1);
  CHECK(aa[0]->blob.num_elements == 11);
  CHECK(ab[0]->blob.num_elements == 10);
  // theta <- theta - u with u = the stage's delta (SGD, lr 1): digests per slice.
  const std::vector<float>& theta = core.params().values;
  CHECK(theta[0] == Approx(initial.values[0] - 0.5f));
  CHECK(theta[20] == Approx(initial.values[20] + 1.0f));
  CHECK(aa[0]->digest == ValuesDigest(theta.data(), 11));
  CHECK(ab[0]->digest == ValuesDigest(theta.data() + 11, 10));
}

}  // namespace
}  // namespace lowband

namespace lowband {
namespace {

// Multi-rank sites (docs/ranks.md).

// Brings a core with the three kSites (peer = site name, hellos `hellos`)
// through round 0's evaluation to round 1 collecting uploads.
void JoinAndStart(CoordinatorCore& core, const std::vector<Hello>& hellos, TimePoint now, CoreOutput* out) {
  for (const Hello& h : hellos) core.HandleMessage(h.site, Wrap(h), now, out);
  REQUIRE(core.phase() == CoordinatorCore::Phase::kEvaluating);
  const uint64_t d0 = core.digest();
  for (const Hello& h : hellos) {
    const std::vector<uint64_t> ranks(h.ranks > 1 ? h.ranks : 0, d0);  // one digest per rank
    core.HandleMessage(h.site, Wrap(EvalReport{0, 2.0, 100, d0, {}, ranks}), now, out);
  }
  REQUIRE(core.phase() == CoordinatorCore::Phase::kTraining);
}

std::vector<Hello> ThreeHellos() { return {HelloFrom("site-a"), HelloFrom("site-b"), HelloFrom("site-c")}; }

Message ZeroUpload(uint32_t round, uint64_t base, uint64_t tokens) {
  Message m = DenseUpload(round, base, std::vector<float>(TinyParams().values.size(), 0.0f));
  std::get<DeltaUpload>(m.body).tokens = tokens;
  return m;
}

TEST_CASE("ranks: a site-down error takes the site out at once, the round goes on, and it may rejoin",
          "[unit][coordinator]") {
  auto config = TinyCampaign(3, 3);
  config.quorum.min_workers = 2;
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(config, TinyParams(), now);
  CoreOutput out;
  JoinAndStart(core, ThreeHellos(), now, &out);
  const uint64_t d0 = core.digest();

  out = CoreOutput{};
  core.HandleMessage("site-a", ZeroUpload(1, d0, 10), now, &out);
  core.HandleMessage("site-b", ZeroUpload(1, d0, 10), now, &out);
  CHECK(out.commits.empty());  // site-c is still joined: the round waits for it
  CHECK(core.uploads_received() == 2);

  // Same instant, no tick: lost on the error, not at the heartbeat timeout.
  core.HandleMessage("site-c", Wrap(Error{ErrorCode::kSiteDown, "rank 1 (pid 77) was killed by signal 9", 1}), now,
                     &out);
  CHECK(core.workers().at("site-c").state == WorkerState::kLost);
  CHECK(core.workers().at("site-a").state == WorkerState::kJoined);
  CHECK(Bodies<Error>(out, "site-c").empty());  // not answered
  REQUIRE(out.commits.size() == 1);
  CHECK(out.commits[0].record.round == 1);
  CHECK(out.commits[0].record.contributors == 2);
  CHECK(core.committed_round() == 1);
  CHECK(Bodies<Aggregate>(out, "site-a").size() == 1);
  CHECK(Bodies<Aggregate>(out, "site-c").empty());

  // Gone until it says hello again.
  out = CoreOutput{};
  core.HandleMessage("site-c", Wrap(Heartbeat{1, "training"}), now, &out);
  REQUIRE(Bodies<Error>(out, "site-c").size() == 1);
  CHECK(Bodies<Error>(out, "site-c")[0]->code == ErrorCode::kNotRegistered);

  // Restarted: a new process (new peer) of the same site.
  out = CoreOutput{};
  const auto later = now + std::chrono::milliseconds(200);
  core.HandleMessage("site-c-2", Wrap(HelloFrom("site-c")), later, &out);
  REQUIRE(Bodies<Welcome>(out, "site-c-2").size() == 1);
  REQUIRE(Bodies<ModelSync>(out, "site-c-2").size() == 1);
  CHECK(Bodies<ModelSync>(out, "site-c-2")[0]->round == 1);
  CHECK(Bodies<ModelSync>(out, "site-c-2")[0]->digest == core.digest());
  CHECK(core.workers().at("site-c").state == WorkerState::kJoined);
  CHECK(core.SiteOfPeer("site-c-2") == "site-c");
  CHECK(core.workers().size() == 3);

  // It takes part in the next round.
  const uint64_t d1 = core.digest();
  out = CoreOutput{};
  core.HandleMessage("site-c-2", Wrap(EvalReport{1, 2.0, 100, d1, {}, {}}), later, &out);
  core.HandleMessage("site-a", Wrap(EvalReport{1, 2.0, 100, d1, {}, {}}), later, &out);
  core.HandleMessage("site-b", Wrap(EvalReport{1, 2.0, 100, d1, {}, {}}), later, &out);
  REQUIRE(core.phase() == CoordinatorCore::Phase::kTraining);
  REQUIRE(Bodies<RoundStart>(out, "site-c-2").size() == 1);
  CHECK(Bodies<RoundStart>(out, "site-c-2")[0]->round == 2);
  CHECK(Bodies<Error>(out, "site-c-2").empty());
  for (const auto& peer : {"site-a", "site-b", "site-c-2"}) core.HandleMessage(peer, ZeroUpload(2, d1, 10), later, &out);
  REQUIRE(out.commits.size() == 1);
  CHECK(out.commits[0].record.round == 2);
  CHECK(out.commits[0].record.contributors == 3);
}

TEST_CASE("ranks: a site-down error from a peer that has not said hello changes nothing", "[unit][coordinator]") {
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(TinyCampaign(3, 2), TinyParams(), now);
  CoreOutput out;
  core.HandleMessage("site-a", Wrap(HelloFrom("site-a")), now, &out);
  out = CoreOutput{};
  core.HandleMessage("stranger", Wrap(Error{ErrorCode::kSiteDown, "rank 1 gone", 0}), now, &out);
  CHECK(out.messages.empty());  // counted as not registered; no error answers an error
  CHECK(core.rejected_by_reason().at("not_registered") == 1);
  CHECK(core.workers().at("site-a").state == WorkerState::kJoined);
}

TEST_CASE("ranks: an evaluation with a rank's digest off is a digest mismatch and re-syncs the site",
          "[unit][coordinator]") {
  auto config = TinyCampaign(3, 2);
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(config, TinyParams(), now);
  CoreOutput out;
  for (const auto& s : kSites) core.HandleMessage(s, Wrap(HelloFrom(s)), now, &out);
  REQUIRE(core.phase() == CoordinatorCore::Phase::kEvaluating);
  const uint64_t d0 = core.digest();

  SECTION("the second rank differs") {
    out = CoreOutput{};
    core.HandleMessage("site-a", Wrap(EvalReport{0, 2.0, 100, d0, {}, {d0, d0 ^ 1}}), now, &out);
    REQUIRE(Bodies<Error>(out, "site-a").size() == 1);
    CHECK(Bodies<Error>(out, "site-a")[0]->code == ErrorCode::kDigestMismatch);
    REQUIRE(Bodies<ModelSync>(out, "site-a").size() == 1);
    CHECK(Bodies<ModelSync>(out, "site-a")[0]->round == 0);
    CHECK(Bodies<ModelSync>(out, "site-a")[0]->digest == d0);
    // The others report; the round waits for site-a's report after the re-sync.
    core.HandleMessage("site-b", Wrap(EvalReport{0, 2.0, 100, d0, {}, {d0, d0}}), now, &out);
    core.HandleMessage("site-c", Wrap(EvalReport{0, 2.0, 100, d0, {}, {}}), now, &out);
    CHECK(core.phase() == CoordinatorCore::Phase::kEvaluating);
    CHECK(Bodies<Error>(out, "site-b").empty());
    CHECK(Bodies<Error>(out, "site-c").empty());
    core.HandleMessage("site-a", Wrap(EvalReport{0, 2.0, 100, d0, {}, {d0, d0}}), now, &out);
    CHECK(Bodies<Error>(out, "site-a").size() == 1);
    REQUIRE(core.phase() == CoordinatorCore::Phase::kTraining);
    REQUIRE(core.history().size() == 1);
    CHECK(core.history()[0].digest_mismatches == 1);
    CHECK(core.history()[0].evaluated == 3);
  }
  SECTION("rank 0's entry differs though the report's digest is right") {
    out = CoreOutput{};
    core.HandleMessage("site-b", Wrap(EvalReport{0, 2.0, 100, d0, {}, {d0 + 1, d0, d0}}), now, &out);
    REQUIRE(Bodies<Error>(out, "site-b").size() == 1);
    CHECK(Bodies<Error>(out, "site-b")[0]->code == ErrorCode::kDigestMismatch);
    CHECK(Bodies<ModelSync>(out, "site-b").size() == 1);
  }
  SECTION("every rank agrees: accepted") {
    out = CoreOutput{};
    for (const auto& s : kSites) core.HandleMessage(s, Wrap(EvalReport{0, 2.0, 100, d0, {}, {d0, d0, d0, d0}}), now, &out);
    for (const auto& s : kSites) CHECK(Bodies<Error>(out, s).empty());
    CHECK(Bodies<ModelSync>(out, "site-a").empty());
    REQUIRE(core.phase() == CoordinatorCore::Phase::kTraining);
    CHECK(core.history()[0].digest_mismatches == 0);
  }
}

TEST_CASE("ranks: a hello claiming more ranks than the site has is refused", "[unit][coordinator]") {
  auto config = TinyCampaign(3, 2);
  SiteConfig a;
  a.name = "site-a";
  a.ranks = 2;
  SiteConfig b;
  b.name = "site-b";  // ranks 1
  config.sites = {a, b};
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(config, TinyParams(), now);
  auto hello = [](const std::string& site, uint32_t ranks) {
    Hello h = HelloFrom(site);
    h.ranks = ranks;
    return h;
  };
  auto refused = [&](const std::string& peer, const Hello& h) {
    CoreOutput out;
    core.HandleMessage(peer, Wrap(h, ""), now, &out);
    REQUIRE(Bodies<Error>(out, peer).size() == 1);
    CHECK(Bodies<Error>(out, peer)[0]->code == ErrorCode::kBadPayload);
    CHECK(Bodies<Error>(out, peer)[0]->message.find("ranks") != std::string::npos);
    CHECK(Bodies<Welcome>(out, peer).empty());
    CHECK(Bodies<ModelSync>(out, peer).empty());
    CHECK(core.workers().count(h.site) == 0);
    CHECK(core.SiteOfPeer(peer).empty());
  };
  refused("pa", hello("site-a", 3));
  refused("pb", hello("site-b", 2));
  refused("pz", hello("site-z", kMaxSiteRanks + 1));
  CHECK(core.rejected_by_reason().at("bad_payload") == 3);

  auto accepted = [&](const std::string& peer, const Hello& h) {
    CoreOutput out;
    core.HandleMessage(peer, Wrap(h, ""), now, &out);
    CHECK(Bodies<Error>(out, peer).empty());
    CHECK(Bodies<Welcome>(out, peer).size() == 1);
    REQUIRE(core.workers().count(h.site) == 1);
    CHECK(core.workers().at(h.site).hello.ranks == h.ranks);
  };
  accepted("pa", hello("site-a", 2));
  accepted("pb", hello("site-b", 1));
  accepted("pz", hello("site-z", kMaxSiteRanks));  // not listed: up to the most a site may have
  CHECK(core.phase() == CoordinatorCore::Phase::kEvaluating);

  SECTION("fewer ranks than listed is fine") {
    accepted("pa2", hello("site-a", 1));  // a rejoin with one rank
  }
  SECTION("a rejoin may not claim more either, and leaves the joined worker as it was") {
    refused("pa3", hello("site-y", kMaxSiteRanks + 7));
    CoreOutput out;
    core.HandleMessage("pa3", Wrap(hello("site-a", 4), ""), now, &out);
    REQUIRE(Bodies<Error>(out, "pa3").size() == 1);
    CHECK(Bodies<Error>(out, "pa3")[0]->code == ErrorCode::kBadPayload);
    CHECK(core.workers().at("site-a").peer == "pa");
    CHECK(core.workers().at("site-a").hello.ranks == 2);
    CHECK(core.workers().at("site-a").state == WorkerState::kJoined);
  }
}

TEST_CASE("ranks: an upload may claim each rank's tokens, no more", "[unit][coordinator]") {
  auto config = TinyCampaign(3, 2);
  config.quorum.min_workers = 3;
  SiteConfig a;
  a.name = "site-a";
  a.ranks = 2;
  SiteConfig c;
  c.name = "site-c";
  c.ranks = 2;  // listed with two, but its worker says one
  config.sites = {a, c};
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(config, TinyParams(), now);
  CoreOutput out;
  std::vector<Hello> hellos = ThreeHellos();
  hellos[0].ranks = 2;
  JoinAndStart(core, hellos, now, &out);
  const uint64_t d0 = core.digest();
  // inner_steps 2 x batch 16 x context 64 per rank.
  const uint64_t per_rank = static_cast<uint64_t>(config.training.inner_steps) * config.training.batch_size *
                            config.model.context;
  REQUIRE(per_rank == 2048);

  auto refused = [&](const std::string& site, uint64_t tokens) {
    CoreOutput o;
    core.HandleMessage(site, ZeroUpload(1, d0, tokens), now, &o);
    REQUIRE(Bodies<Error>(o, site).size() == 1);
    CHECK(Bodies<Error>(o, site)[0]->code == ErrorCode::kBadPayload);
    CHECK(Bodies<Error>(o, site)[0]->message.find("tokens") != std::string::npos);
  };
  auto accepted = [&](const std::string& site, uint64_t tokens) {
    CoreOutput o;
    core.HandleMessage(site, ZeroUpload(1, d0, tokens), now, &o);
    CHECK(Bodies<Error>(o, site).empty());
    return o;
  };
  refused("site-a", 2 * per_rank + 1);
  CHECK(core.uploads_received() == 0);
  accepted("site-a", 2 * per_rank);
  CHECK(core.uploads_received() == 1);
  refused("site-b", per_rank + 1);
  accepted("site-b", per_rank);
  refused("site-c", per_rank + 1);  // its hello said one rank
  CHECK(core.uploads_received() == 2);
  CoreOutput last = accepted("site-c", per_rank);
  REQUIRE(last.commits.size() == 1);
  CHECK(last.commits[0].record.contributors == 3);
  CHECK(last.commits[0].record.tokens == 4 * per_rank);
  CHECK(last.commits[0].record.sites.at("site-a").tokens == 2 * per_rank);
}

TEST_CASE("norm outliers: a zero median rejects nothing", "[unit][coordinator]") {
  // Two empty deltas and one that is not: the median norm is 0, which gives
  // no scale to judge the third by; before the fix it was rejected as
  // "infinitely" far above the median.
  auto config = TinyCampaign(3, 3);
  config.quorum.max_norm_ratio = 10;
  Cluster c(config, kSites);
  StartRounds(c);
  CoordinatorCore& core = c.coordinator();
  core.SetAsyncClose(false);  // driven directly below: the round commits inline
  const uint64_t digest0 = core.digest();
  CoreOutput out;
  core.HandleMessage("site-a", DenseUpload(1, digest0, std::vector<float>(TinyParams().values.size(), 0.0f)), c.now(),
                     &out);
  core.HandleMessage("site-b", DenseUpload(1, digest0, std::vector<float>(TinyParams().values.size(), 0.0f)), c.now(),
                     &out);
  core.HandleMessage("site-c", DenseUpload(1, digest0, std::vector<float>(TinyParams().values.size(), 0.01f)),
                     c.now(), &out);
  CHECK(Bodies<Error>(out, "site-c").empty());
  REQUIRE(out.commits.size() == 1);
  CHECK(out.commits[0].record.contributors == 3);
  CHECK_FALSE(core.rejected_by_reason().count("norm_outlier"));
}

TEST_CASE("re-syncs asked for by a site's errors are rate limited, then the site is evicted", "[unit][coordinator]") {
  auto config = TinyCampaign(3, 20);
  config.quorum.min_workers = 2;
  config.network.heartbeat_timeout_ms = 3600 * 1000;  // the test steps past round deadlines, nobody goes silent
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(config, TinyParams(), now);
  CoreOutput out;
  JoinAndStart(core, ThreeHellos(), now, &out);
  auto syncs_to = [](const CoreOutput& o, const std::string& peer) { return Bodies<ModelSync>(o, peer).size(); };
  auto bad = [](ErrorCode code) { return Wrap(Error{code, "replica is broken", 0}); };

  // One re-sync per committed round, however many errors the site sends.
  out = CoreOutput{};
  for (int i = 0; i < 50; ++i) core.HandleMessage("site-c", bad(ErrorCode::kDigestMismatch), now, &out);
  CHECK(syncs_to(out, "site-c") == 1);
  CHECK(core.rejected_by_reason().at("resync_limited") == 49);

  // An accepted upload confirms its replica: the count starts over.
  const uint64_t d0 = core.digest();
  out = CoreOutput{};
  core.HandleMessage("site-a", ZeroUpload(1, d0, 10), now, &out);
  core.HandleMessage("site-b", ZeroUpload(1, d0, 10), now, &out);
  core.HandleMessage("site-c", ZeroUpload(1, d0, 10), now, &out);
  REQUIRE(out.commits.size() == 1);
  CHECK(core.workers().at("site-c").unconfirmed_resyncs == 0);
  for (const auto& site : {"site-a", "site-b", "site-c"}) {
    core.HandleMessage(site, Wrap(EvalReport{1, 2.0, 100, core.digest(), {}, {}}), now, &out);
  }
  REQUIRE(core.phase() == CoordinatorCore::Phase::kTraining);

  // A site that never gets its replica right: a model a round for
  // kMaxUnconfirmedResyncs rounds, then it is evicted with the reason.
  int sent = 0;
  bool evicted = false;
  for (uint32_t r = 2; r <= 8 && !evicted; ++r) {
    out = CoreOutput{};
    for (int i = 0; i < 5; ++i) core.HandleMessage("site-c", bad(ErrorCode::kBadPayload), now, &out);
    sent += static_cast<int>(syncs_to(out, "site-c"));
    for (const CampaignEnd* end : Bodies<CampaignEnd>(out, "site-c")) {
      CHECK_THAT(end->reason, Catch::Matchers::Contains("re-syncs in a row"));
      evicted = true;
    }
    // The other two sites commit the round (site-c's upload never comes).
    const uint64_t d = core.digest();
    core.HandleMessage("site-a", ZeroUpload(r, d, 10), now, &out);
    core.HandleMessage("site-b", ZeroUpload(r, d, 10), now, &out);
    if (!evicted) {
      now += std::chrono::seconds(static_cast<int>(config.quorum.round_deadline_s) + 1);
      core.OnTick(now, &out);
    }
    for (const auto& site : {"site-a", "site-b"}) {
      core.HandleMessage(site, Wrap(EvalReport{r, 2.0, 100, core.digest(), {}, {}}), now, &out);
    }
    // site-c evaluates nothing either: the record waits for it until the deadline.
    now += std::chrono::seconds(static_cast<int>(config.quorum.round_deadline_s) + 1);
    core.OnTick(now, &out);
    INFO("round " << r);
    REQUIRE(core.committed_round() == r);
    REQUIRE(core.phase() == (evicted ? core.phase() : CoordinatorCore::Phase::kTraining));
  }
  CHECK(evicted);
  CHECK(sent == CoordinatorCore::kMaxUnconfirmedResyncs);
  CHECK(core.workers().at("site-c").state == WorkerState::kEvicted);
}

TEST_CASE("async close: the round's aggregation runs elsewhere, the core keeps answering and commits when it returns",
          "[unit][coordinator]") {
  auto config = TinyCampaign(3, 5);
  config.outer.kind = OuterOptimizerKind::kNesterov;  // momentum travels with the job
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore inline_core(config, TinyParams(), now);
  CoordinatorCore core(config, TinyParams(), now);
  core.SetAsyncClose(true);
  CoreOutput out, inline_out;
  JoinAndStart(core, ThreeHellos(), now, &out);
  JoinAndStart(inline_core, ThreeHellos(), now, &inline_out);
  const uint64_t d0 = core.digest();
  auto upload = [&](float scale) {
    std::vector<float> delta(TinyParams().values.size());
    for (size_t i = 0; i < delta.size(); ++i) delta[i] = scale * 0.001f * static_cast<float>(i % 7);
    return DenseUpload(1, d0, delta);
  };
  out = CoreOutput{};
  inline_out = CoreOutput{};
  const std::vector<std::pair<std::string, float>> ups = {{"site-a", 1.0f}, {"site-b", -0.5f}, {"site-c", 2.0f}};
  for (const auto& [site, scale] : ups) {
    core.HandleMessage(site, upload(scale), now, &out);
    inline_core.HandleMessage(site, upload(scale), now, &inline_out);
  }
  REQUIRE(inline_out.commits.size() == 1);
  REQUIRE(out.close_jobs.size() == 1);
  CHECK(out.commits.empty());
  CHECK(Bodies<Aggregate>(out, "site-a").empty());
  CHECK(core.closing());
  CHECK(core.committed_round() == 0);
  CloseJob job = std::move(out.close_jobs[0]);

  // Meanwhile: a second upload for the closed round is late, a re-sync waits
  // for the new parameters, status answers.
  out = CoreOutput{};
  core.HandleMessage("site-a", upload(1.0f), now, &out);
  REQUIRE(Bodies<Error>(out, "site-a").size() == 1);
  CHECK_THAT(Bodies<Error>(out, "site-a")[0]->message, Catch::Matchers::Contains("after the round closed"));
  core.HandleMessage("site-c", Wrap(Error{ErrorCode::kDigestMismatch, "replica is broken", 0}), now, &out);
  CHECK(Bodies<ModelSync>(out, "site-c").empty());
  CHECK(core.HandleControl({"status", {}}, now, &out).ok);
  CHECK(core.params().values.empty());  // with the job

  // The result commits the round exactly as inline, and the waiting re-sync goes out.
  out = CoreOutput{};
  core.HandleClosed(core.aggregation()->Close(std::move(job), nullptr), now, &out);
  CHECK_FALSE(core.closing());
  REQUIRE(out.commits.size() == 1);
  CHECK(core.committed_round() == 1);
  CHECK(core.digest() == inline_core.digest());
  CHECK(core.params().values == inline_core.params().values);
  CHECK(core.outer_momentum() == inline_core.outer_momentum());
  CHECK(out.commits[0].gradient.bulk == inline_out.commits[0].gradient.bulk);
  CHECK(out.commits[0].record.late_uploads == 1);
  CHECK(Bodies<Aggregate>(out, "site-a").size() == 1);
  CHECK(Bodies<ModelSync>(out, "site-c").size() == 1);
  CHECK(Bodies<ModelSync>(out, "site-c")[0]->round == 1);
  // The aggregate goes to every site as one shared buffer, not a copy each.
  const uint8_t* shared = nullptr;
  int aggregates = 0;
  for (const Outgoing& o : out.messages) {
    if (!std::holds_alternative<Aggregate>(o.msg.body)) continue;
    ++aggregates;
    if (!shared) shared = o.msg.bulk.data();
    CHECK(o.msg.bulk.data() == shared);
  }
  CHECK(aggregates == 2);
}

TEST_CASE("async close: an abort while the round is aggregated ends the campaign after it commits",
          "[unit][coordinator]") {
  auto config = TinyCampaign(3, 5);
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(config, TinyParams(), now);
  core.SetAsyncClose(true);
  CoreOutput out;
  JoinAndStart(core, ThreeHellos(), now, &out);
  const uint64_t d0 = core.digest();
  out = CoreOutput{};
  for (const char* site : {"site-a", "site-b", "site-c"}) core.HandleMessage(site, ZeroUpload(1, d0, 10), now, &out);
  REQUIRE(out.close_jobs.size() == 1);
  CloseJob job = std::move(out.close_jobs[0]);
  out = CoreOutput{};
  REQUIRE(core.HandleControl({"campaign", {"abort"}}, now, &out).ok);
  CHECK_FALSE(out.finished);  // the parameters are with the job
  core.HandleClosed(core.aggregation()->Close(std::move(job), nullptr), now, &out);
  CHECK(out.commits.size() == 1);
  CHECK(out.finished);
  CHECK(out.failed);
  CHECK(core.params().values.size() == TinyParams().values.size());
  CHECK(Bodies<CampaignEnd>(out, "site-a").size() == 1);
}

TEST_CASE("syncs of one round share one packed model, offered and pulled in chunks", "[unit][coordinator]") {
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(TinyCampaign(3, 2), TinyParams(), now);
  CoreOutput out;
  for (const Hello& h : ThreeHellos()) core.HandleMessage(h.site, Wrap(h), now, &out);
  std::vector<const Message*> syncs;
  for (const Outgoing& o : out.messages) {
    if (std::holds_alternative<ModelSync>(o.msg.body)) syncs.push_back(&o.msg);
  }
  REQUIRE(syncs.size() == 3);
  const size_t bytes = TinyParams().values.size() * sizeof(float);
  for (const Message* m : syncs) {
    CHECK(m->bulk.empty());  // offered without its bytes
    CHECK(std::get<ModelSync>(m->body).blob.byte_length == bytes);
  }
  CHECK(core.membership().snapshots() == 1);  // one packed model, not three
  const ModelSync offer = std::get<ModelSync>(syncs[0]->body);

  // site-a pulls it in two pieces; the bytes are the parameters' fp32 values.
  Bytes got;
  for (uint64_t offset = 0; offset < bytes;) {
    CoreOutput pulled;
    core.HandleMessage("site-a", Wrap(SyncPull{offer.round, offer.digest, offset, 7 * sizeof(float)}), now, &pulled);
    auto chunks = Bodies<SyncChunk>(pulled, "site-a");
    REQUIRE(chunks.size() == 1);
    CHECK(chunks[0]->offset == offset);
    const Frame& b = pulled.messages.back().msg.bulk;
    CHECK(chunks[0]->length == b.size());
    CHECK(chunks[0]->checksum == BulkChecksum(b.data(), b.size()));
    got.insert(got.end(), b.begin(), b.end());
    offset += b.size();
  }
  CHECK(got.size() == bytes);
  CHECK(BulkChecksum(got.data(), got.size()) == offer.blob.checksum);
  std::vector<float> values(got.size() / sizeof(float));
  std::memcpy(values.data(), got.data(), got.size());
  CHECK(values == TinyParams().values);

  // A pull past the end is refused; one of a snapshot not held gets the
  // committed parameters offered again.
  CoreOutput bad;
  core.HandleMessage("site-a", Wrap(SyncPull{offer.round, offer.digest, bytes, 16}), now, &bad);
  CHECK(Bodies<Error>(bad, "site-a").size() == 1);
  CoreOutput gone;
  core.HandleMessage("site-b", Wrap(SyncPull{offer.round, offer.digest ^ 1, 0, 16}), now, &gone);
  CHECK(Bodies<SyncChunk>(gone, "site-b").empty());
  REQUIRE(Bodies<ModelSync>(gone, "site-b").size() == 1);
  CHECK(Bodies<ModelSync>(gone, "site-b")[0]->digest == offer.digest);
}

TEST_CASE("a snapshot stays while it is pulled, across committed rounds, and goes once idle", "[unit][coordinator]") {
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(TinyCampaign(3, 2), TinyParams(), now);
  CoreOutput out;
  for (const Hello& h : ThreeHellos()) core.HandleMessage(h.site, Wrap(h), now, &out);
  const ModelSync offer = *Bodies<ModelSync>(out, "site-a")[0];
  const auto timeout = std::chrono::milliseconds(TinyCampaign(3, 2).network.heartbeat_timeout_ms);
  // Pulled a little more often than the timeout: it stays.
  for (int i = 0; i < 4; ++i) {
    now += timeout / 2;
    CoreOutput o;
    core.HandleMessage("site-a", Wrap(Heartbeat{}), now, &o);
    core.HandleMessage("site-b", Wrap(Heartbeat{}), now, &o);
    core.HandleMessage("site-c", Wrap(Heartbeat{}), now, &o);
    core.HandleMessage("site-a", Wrap(SyncPull{offer.round, offer.digest, 0, 8}), now, &o);
    core.OnTick(now, &o);
    CHECK(Bodies<SyncChunk>(o, "site-a").size() == 1);
    CHECK(core.membership().snapshots() == 1);
  }
  // Nobody pulls it for longer than the timeout: dropped.
  now += timeout + std::chrono::milliseconds(1);
  CoreOutput o;
  for (const char* s : {"site-a", "site-b", "site-c"}) core.HandleMessage(s, Wrap(Heartbeat{}), now, &o);
  core.OnTick(now, &o);
  CHECK(core.membership().snapshots() == 0);
}

TEST_CASE("the coordinator never answers an error with an error", "[unit][coordinator]") {
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(TinyCampaign(3, 2), TinyParams(), now);
  CoreOutput out;
  // From a worker of another campaign, and from a peer that never said hello.
  core.HandleMessage("p1", Wrap(Error{ErrorCode::kWrongCampaign, "not yours", 0}, ""), now, &out);
  core.HandleMessage("p2", Wrap(Error{ErrorCode::kInternal, "hm", 0}), now, &out);
  Message old_version = Wrap(Error{ErrorCode::kInternal, "old", 0});
  old_version.protocol_version = kProtocolVersion + 1;
  core.HandleMessage("p3", old_version, now, &out);
  CHECK(out.messages.empty());
  CHECK(core.rejected_messages() == 3);
  CHECK(core.rejected_by_reason().at("wrong_campaign") == 1);
  CHECK(core.rejected_by_reason().at("not_registered") == 1);
  // Anything else still gets its error.
  core.HandleMessage("p4", Wrap(Heartbeat{}, "other"), now, &out);
  CHECK(Bodies<Error>(out, "p4").size() == 1);
}

TEST_CASE("fpld: a site given more steps than training.inner_steps may claim their tokens", "[unit][coordinator]") {
  // Adaptive steps may give a fast site up to max_inner_steps; its logit
  // upload's tokens were capped at training.inner_steps (a delta upload's
  // at the maximum) and refused.
  auto config = TinyFpldCampaign(2, 2);
  config.training.adaptive.enabled = true;
  config.training.adaptive.max_inner_steps = 2 * config.training.inner_steps;
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(config, TinyParams(), now);
  core.SetFpld(std::vector<uint8_t>(2 * static_cast<size_t>(config.model.context), 'x'),
               [](uint32_t, const ParamSet& start, const std::vector<float>&, const std::vector<float>*) {
                 DistilOutcome o;
                 o.student = start.values;
                 return StatusOr<DistilOutcome>(o);
               });
  CoreOutput out;
  for (const char* s : {"site-a", "site-b"}) core.HandleMessage(s, Wrap(HelloFrom(s)), now, &out);
  for (const char* s : {"site-a", "site-b"}) {
    core.HandleMessage(s, Wrap(EvalReport{0, 5.0, 100, core.digest(), {}, {}}), now, &out);
  }
  REQUIRE(core.phase() == CoordinatorCore::Phase::kTraining);
  auto upload = [&](uint64_t tokens) { return FpldUpload(config, "site-a", 0.0f, tokens); };
  const uint64_t per_step = static_cast<uint64_t>(config.training.batch_size) * config.model.context;
  out = CoreOutput{};
  core.HandleMessage("site-a", upload((config.training.inner_steps + 1) * per_step), now, &out);
  CHECK(Bodies<Error>(out, "site-a").empty());
  CHECK(core.uploads_received() == 1);
  // Beyond the maximum it is still refused.
  core.HandleMessage("site-b", upload(2 * config.training.inner_steps * per_step + 1), now, &out);
  REQUIRE(Bodies<Error>(out, "site-b").size() == 1);
  CHECK(Bodies<Error>(out, "site-b")[0]->code == ErrorCode::kBadPayload);
}

}  // namespace
TEST_CASE("ranks: a multi-rank site must report one digest per rank", "[unit][coordinator]") {
  auto config = TinyCampaign(3, 2);
  auto now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(config, TinyParams(), now);  // sites not listed: up to kMaxSiteRanks
  CoreOutput out;
  for (const auto& s : kSites) {
    Hello h = HelloFrom(s);
    h.ranks = s == "site-a" ? 2 : 1;
    core.HandleMessage(s, Wrap(h), now, &out);
  }
  REQUIRE(core.phase() == CoordinatorCore::Phase::kEvaluating);
  const uint64_t d0 = core.digest();
  size_t syncs = 0;
  for (const std::vector<uint64_t>& digests : {std::vector<uint64_t>{}, std::vector<uint64_t>{d0},
                                               std::vector<uint64_t>{d0, d0, d0}}) {
    out = CoreOutput{};
    core.HandleMessage("site-a", Wrap(EvalReport{0, 2.0, 100, d0, {}, digests}), now, &out);
    REQUIRE(Bodies<Error>(out, "site-a").size() == 1);
    CHECK(Bodies<Error>(out, "site-a")[0]->code == ErrorCode::kDigestMismatch);
    syncs += Bodies<ModelSync>(out, "site-a").size();
  }
  CHECK(syncs == 1);  // one re-sync per committed round (CoordinatorCore::Resync)
  out = CoreOutput{};
  core.HandleMessage("site-a", Wrap(EvalReport{0, 2.0, 100, d0, {}, {d0, d0}}), now, &out);
  CHECK(Bodies<Error>(out, "site-a").empty());
}

}  // namespace lowband
