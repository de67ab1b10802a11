// StateStore against a real SQLite file in a scratch directory.
#include "coordinator/state_store.h"

#include <catch2/catch.hpp>
#include <cmath>

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

}  // namespace
}  // namespace lowband
