// StateStore against a real SQLite file in a scratch directory.
#include "coordinator/state_store.h"

#include <catch2/catch.hpp>
#include <cmath>

#include "base/hash.h"
#include "config/canonical.h"
#include "tests/fakes/temp_dir.h"

namespace lowband {
namespace {

using testing::TempDir;

RoundCommit Commit(uint32_t round, uint64_t digest, uint8_t fill) {
  RoundCommit c;
  c.record.round = round;
  c.record.digest = digest;
  c.record.train_loss = 2.5 + round;
  c.record.tokens = 1000 * round;
  c.record.contributors = 3;
  c.record.down_codec = CodecKind::kSparseFp32;
  c.record.aggregate_nnz = 77;
  c.record.sites["site-a"].train_loss = 2.0;
  c.record.sites["site-a"].tokens = 500;
  c.record.sites["site-a"].uploaded = true;
  c.record.sites["site-b"].uploaded = false;
  c.gradient.header.codec = CodecKind::kSparseFp32;
  c.gradient.header.checksum = 0x1234 + round;
  c.gradient.bulk.assign(100 + round, fill);
  return c;
}

TEST_CASE("state store: a campaign, its rounds, gradients, ledger and checkpoints survive reopening",
          "[unit][coordinator]") {
  TempDir dir;
  const std::string path = dir.Path("state.db");
  {
    auto store = StateStore::Open(path);
    REQUIRE(store.ok());
    auto none = (*store)->Campaign();
    REQUIRE(none.ok());
    CHECK_FALSE(none->has_value());
    CampaignRow row;
    row.name = "c1";
    row.fingerprint = 0xfeedfacecafebeefull;  // above INT64_MAX: stored as its bit pattern
    row.initial_digest = 42;
    REQUIRE((*store)->CreateCampaign(row).ok());
    CHECK_FALSE((*store)->CreateCampaign(row).ok());  // one campaign per database

    RoundRecord zero;
    zero.round = 0;
    zero.val_loss = 5.5;
    zero.evaluated = 3;
    zero.sites["site-a"].val_loss = 5.4;
    REQUIRE((*store)->RecordRound(zero, {{"site-a", Direction::kDown, 0, "model_sync", {4000, 1}}}).ok());
    for (uint32_t r = 1; r <= 3; ++r) REQUIRE((*store)->CommitRound(Commit(r, 100 + r, static_cast<uint8_t>(r))).ok());
    CHECK_FALSE((*store)->CommitRound(Commit(2, 9, 9)).ok());  // a round commits once
    RoundRecord one = Commit(1, 101, 1).record;
    one.val_loss = 4.0;
    one.evaluated = 3;
    one.wall_s = 0.5;
    REQUIRE((*store)->RecordRound(one, {{"site-a", Direction::kUp, 1, "delta_upload", {300, 1}}}).ok());
    REQUIRE((*store)->RecordCheckpoint({2, dir.Path("ck2"), 102}).ok());
    REQUIRE((*store)->RecordMember("site-a", "joined", "cpu", 0, "joined").ok());
    REQUIRE((*store)->RecordMember("site-a", "lost", "cpu", 2, "lost").ok());
  }
  auto store = StateStore::Open(path);
  REQUIRE(store.ok());
  auto row = (*store)->Campaign();
  REQUIRE(row.ok());
  REQUIRE(row->has_value());
  CHECK((*row)->name == "c1");
  CHECK((*row)->fingerprint == 0xfeedfacecafebeefull);
  CHECK((*row)->initial_digest == 42);
  CHECK((*row)->committed_round == 3);
  CHECK((*row)->status == "running");

  auto rounds = (*store)->Rounds(true, 1);
  REQUIRE(rounds.ok());
  REQUIRE(rounds->size() == 4);
  CHECK((*rounds)[0].recorded);
  CHECK((*rounds)[0].record.val_loss == 5.5);
  CHECK((*rounds)[0].record.sites.at("site-a").val_loss == Approx(5.4));
  CHECK((*rounds)[1].recorded);
  CHECK_FALSE((*rounds)[1].gradient.has_value());  // round 1 is not after `after`
  CHECK((*rounds)[1].record.val_loss == 4.0);
  CHECK((*rounds)[1].record.sites.at("site-a").uploaded);
  CHECK_FALSE((*rounds)[1].record.sites.at("site-b").uploaded);
  CHECK(std::isnan((*rounds)[1].record.sites.at("site-b").train_loss));  // NaN round-trips as NULL
  CHECK_FALSE((*rounds)[3].recorded);
  CHECK(std::isnan((*rounds)[3].record.val_loss));
  REQUIRE((*rounds)[3].gradient.has_value());
  CHECK((*rounds)[3].gradient->bulk == Bytes(103, 3));
  CHECK((*rounds)[3].gradient->header.checksum == 0x1234 + 3);
  CHECK((*rounds)[3].gradient->header.codec == CodecKind::kSparseFp32);
  CHECK((*rounds)[3].record.digest == 103);
  CHECK((*rounds)[3].record.aggregate_nnz == 77);

  auto ledger = (*store)->Ledger();
  REQUIRE(ledger.ok());
  REQUIRE(ledger->size() == 2);

  // Pruning at the checkpoint of round 2 drops the gradients it makes redundant.
  REQUIRE((*store)->RecordCheckpoint({3, dir.Path("ck3"), 103}).ok());
  REQUIRE((*store)->Prune(3).ok());
  auto ck = (*store)->Checkpoints();
  REQUIRE(ck.ok());
  REQUIRE(ck->size() == 1);
  CHECK((*ck)[0].round == 3);
  auto after = (*store)->Rounds(true, 0);
  REQUIRE(after.ok());
  for (const auto& r : *after) CHECK_FALSE(r.gradient.has_value());

  REQUIRE((*store)->NoteRestart().ok());
  REQUIRE((*store)->FinishCampaign(false, "completed 3 rounds").ok());
  row = (*store)->Campaign();
  REQUIRE(row.ok());
  CHECK((*row)->status == "completed");
  CHECK((*row)->restarts == 1);
}

TEST_CASE("state store: a file that is not a database is refused with its path", "[unit][coordinator]") {
  TempDir dir;
  const std::string path = dir.Write("state.db", std::string(4096, 'x'));
  auto store = StateStore::Open(path);
  REQUIRE_FALSE(store.ok());
  CHECK_THAT(store.status().message(), Catch::Matchers::Contains(path));
}

TEST_CASE("state store: the fingerprint follows the settings that shape the parameters", "[unit][coordinator]") {
  CampaignConfig a;
  CampaignConfig b = a;
  b.training.rounds += 10;  // more rounds: the same campaign, extended
  b.quorum.min_workers = 1;
  b.network.heartbeat_timeout_ms = 1;
  CHECK(CampaignFingerprint(a) == CampaignFingerprint(b));
  for (auto change : std::vector<std::function<void(CampaignConfig&)>>{
           [](CampaignConfig& c) { c.training.seed += 1; }, [](CampaignConfig& c) { c.codec.topk = 32; },
           [](CampaignConfig& c) { c.outer.lr = 0.5; }, [](CampaignConfig& c) { c.model.layers = 3; },
           [](CampaignConfig& c) { c.training.inner.lr = 1e-4; }, [](CampaignConfig& c) { c.name = "x"; }}) {
    CampaignConfig c = a;
    change(c);
    CHECK(CampaignFingerprint(c) != CampaignFingerprint(a));
  }
}

TEST_CASE("state store: the fingerprint is FNV-1a 64 of the canonical settings", "[unit][coordinator]") {
  CampaignConfig c;
  c.name = "fp";
  const std::string text = CanonicalSettings(c);
  CHECK(CampaignFingerprint(c) == Fnv1a64(text.data(), text.size()));
  CHECK(CampaignFingerprint(c) == CampaignFingerprint(c));
}

// A campaign where every section is in use, so that no change is to a
// setting its feature ignores.
CampaignConfig FingerprintBase() {
  CampaignConfig c;
  c.name = "fp";
  c.fpld.enabled = true;
  c.fpld.probes.dir = "/probes";
  c.fcrag.enabled = true;
  c.fcrag.labels = {"a", "b"};
  c.personalization.tensors = {"head."};
  c.personalization.clusters = {{"eu", {"site-a"}}};
  SiteConfig site;
  site.name = "site-a";
  site.data.dir = "/data/a";
  c.sites.push_back(site);
  return c;
}

TEST_CASE("state store: a change in any section that shapes the result changes the fingerprint",
          "[unit][coordinator]") {
  using Change = std::function<void(CampaignConfig&)>;
  // Section -> changes in it; pipeline.wire_dtype and every fpld field are
  // there because the old hand-kept fingerprint left them out.
  const std::vector<std::pair<std::string, std::vector<Change>>> sections = {
      {"campaign", {[](CampaignConfig& c) { c.name = "other"; }, [](CampaignConfig& c) { c.training.seed = 7; }}},
      {"model", {[](CampaignConfig& c) { c.model.context = 32; }, [](CampaignConfig& c) { c.model.heads = 8; }}},
      {"training",
       {[](CampaignConfig& c) { c.training.inner_steps = 20; }, [](CampaignConfig& c) { c.training.batch_size = 8; },
        [](CampaignConfig& c) { c.training.overlap = true; }}},
      {"training.inner_optimizer",
       {[](CampaignConfig& c) { c.training.inner.beta2 = 0.99; },
        [](CampaignConfig& c) { c.training.inner.warmup_steps = 10; }}},
      {"training.adaptive_steps",
       {[](CampaignConfig& c) { c.training.adaptive.enabled = true; },
        [](CampaignConfig& c) { c.training.adaptive.max_inner_steps = 5; }}},
      {"outer_optimizer",
       {[](CampaignConfig& c) { c.outer.kind = OuterOptimizerKind::kFedAvg; },
        [](CampaignConfig& c) { c.outer.momentum = 0.5; }}},
      {"codec",
       {[](CampaignConfig& c) { c.codec.kind = CodecKind::kInt8; },
        [](CampaignConfig& c) { c.codec.error_feedback = 0; }}},
      {"quorum",
       {[](CampaignConfig& c) { c.quorum.aggregation = AggregationRule::kMeanChoosers; },
        [](CampaignConfig& c) { c.quorum.weighting = AggregationWeighting::kUniform; },
        [](CampaignConfig& c) { c.quorum.max_norm_ratio = 3; }}},
      {"pipeline",
       {[](CampaignConfig& c) { c.pipeline.wire_dtype = WireDtype::kFp32; },
        [](CampaignConfig& c) { c.pipeline.wire_dtype = WireDtype::kFp16; },
        [](CampaignConfig& c) { c.pipeline.stages = 2; }, [](CampaignConfig& c) { c.pipeline.ratio = 32; },
        [](CampaignConfig& c) { c.pipeline.micro_batches = 2; }}},
      {"parablock",
       {[](CampaignConfig& c) { c.parablock.blocks = 2; }, [](CampaignConfig& c) { c.parablock.random = true; }}},
      {"personalization",
       {[](CampaignConfig& c) { c.personalization.tensors = {"embed."}; },
        [](CampaignConfig& c) { c.personalization.clusters[0].second = {"site-b"}; }}},
      {"fpld",
       {[](CampaignConfig& c) { c.fpld.enabled = false; }, [](CampaignConfig& c) { c.fpld.probes.dir = "/other"; },
        [](CampaignConfig& c) { c.fpld.probes.files = {"p.txt"}; },
        [](CampaignConfig& c) { c.fpld.probes.validation_fraction = 0.5; },
        [](CampaignConfig& c) { c.fpld.contexts = 32; }, [](CampaignConfig& c) { c.fpld.positions = 4; },
        [](CampaignConfig& c) { c.fpld.bits = 8; }, [](CampaignConfig& c) { c.fpld.clip = 2; },
        [](CampaignConfig& c) { c.fpld.topk = 8; }, [](CampaignConfig& c) { c.fpld.student_steps = 3; },
        [](CampaignConfig& c) { c.fpld.student_lr = 1e-2; }, [](CampaignConfig& c) { c.fpld.student_batch = 4; },
        [](CampaignConfig& c) { c.fpld.student_eval_batches = 2; },
        [](CampaignConfig& c) { c.fpld.exact_reference = true; }}},
      {"fcrag",
       {[](CampaignConfig& c) { c.fcrag.labels = {"a", "c"}; }, [](CampaignConfig& c) { c.fcrag.alpha = 0.2; },
        [](CampaignConfig& c) { c.fcrag.score_bits = 0; }}},
      {"sites",
       {[](CampaignConfig& c) { c.sites[0].name = "site-b"; }, [](CampaignConfig& c) { c.sites[0].ranks = 2; },
        [](CampaignConfig& c) { c.sites[0].data.files = {"x.txt"}; },
        [](CampaignConfig& c) { c.sites[0].data.validation_fraction = 0.25; },
        [](CampaignConfig& c) { c.sites.push_back(c.sites[0]); }}},
  };
  const CampaignConfig base = FingerprintBase();
  const uint64_t before = CampaignFingerprint(base);
  for (const auto& [section, changes] : sections) {
    for (size_t i = 0; i < changes.size(); ++i) {
      CAPTURE(section, i);
      CampaignConfig c = base;
      changes[i](c);
      CHECK(CampaignFingerprint(c) != before);
    }
  }
}

TEST_CASE("state store: operational settings leave the fingerprint alone", "[unit][coordinator]") {
  const CampaignConfig base = FingerprintBase();
  const uint64_t before = CampaignFingerprint(base);
  for (auto change : std::vector<std::function<void(CampaignConfig&)>>{
           [](CampaignConfig& c) { c.network.heartbeat_interval_ms = 100; },
           [](CampaignConfig& c) { c.network.heartbeat_timeout_ms = 1000; },
           [](CampaignConfig& c) { c.network.metrics = "127.0.0.1:9100"; },
           [](CampaignConfig& c) { c.network.bind = "tcp://127.0.0.1:7000"; },
           [](CampaignConfig& c) { c.network.dashboard_token = "/etc/lowband/token"; },
           [](CampaignConfig& c) { c.output.run_dir = "runs/other"; },
           [](CampaignConfig& c) { c.output.metrics_file = "metrics.jsonl"; },
           [](CampaignConfig& c) { c.checkpoint.every = 10; }, [](CampaignConfig& c) { c.checkpoint.keep = 1; },
           [](CampaignConfig& c) { c.quorum.round_deadline_s = 30; },
           [](CampaignConfig& c) { c.pipeline.peer_timeout_ms = 1000; },
           [](CampaignConfig& c) { c.fcrag.serve = true; },
           [](CampaignConfig& c) { c.sites[0].device = "cuda"; },
           [](CampaignConfig& c) { c.sites[0].threads = 4; },
           [](CampaignConfig& c) { c.source = "/somewhere/else.yaml"; }}) {
    CampaignConfig c = base;
    change(c);
    CHECK(CampaignFingerprint(c) == before);
  }
}

}  // namespace
}  // namespace lowband
