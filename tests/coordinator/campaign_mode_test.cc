// CampaignMode: what each kind of campaign changes in the core, per worker.
#include "coordinator/campaign_mode.h"

#include <catch2/catch.hpp>

#include "coordinator/welcome.h"
#include "tests/fakes/fake_cluster.h"

namespace lowband {
namespace {

using testing::TinyCampaign;
using testing::TinyParams;

WorkerInfo Worker(const std::string& site, int stage = 0) {
  WorkerInfo w;
  w.site = site;
  w.stage = stage;
  return w;
}

struct Built {
  CampaignConfig config;
  ParamSet params;
  std::unique_ptr<CampaignMode> mode;
  std::shared_ptr<const Aggregation> agg;
};

Built Build(CampaignConfig config, ParamSet params) {
  Built b{std::move(config), std::move(params), nullptr, nullptr};
  const LayoutPlan plan = PlanLayout(b.params.layout, b.config.codec.topk);
  b.mode = CampaignMode::Make(b.config, b.params, plan);
  Aggregation::Setup setup;
  b.mode->Describe(&setup);
  b.agg = std::make_shared<const Aggregation>(std::move(setup));
  b.mode->ComputeDigests(*b.agg, b.params);
  return b;
}

TEST_CASE("campaign mode: a plain campaign gives every site the whole model", "[unit][coordinator]") {
  Built b = Build(TinyCampaign(), TinyParams());
  const WorkerInfo w = Worker("site-a");
  CHECK(b.mode->kind() == Aggregation::Kind::kMean);
  CHECK(b.mode->DigestFor(w, 42) == 42);
  auto sync = b.mode->SyncPayload(w, b.params, *b.agg);
  REQUIRE(sync.ok());
  CHECK(sync->header.num_elements == 24);
  CHECK(b.mode->ParamsOf(&w) == 24);
  CHECK(b.mode->ParamsOf(nullptr) == 24);
  CHECK(b.mode->StageOf(w) == -1);
  CHECK(b.mode->BlockFor("site-a", 1, 0) == -1);
  CampaignMode::Slice slice;
  CHECK(b.mode->UploadSlice(w, 1, -1, &slice) == "");
  CHECK(slice.part == 0);
  CHECK(*slice.layout == b.params.layout);
  CHECK(b.mode->UploadSlice(w, 1, 0, &slice) == "upload covers block 0; this campaign trains whole models");
  CHECK(b.mode->TakesDeltas());
  CHECK_FALSE(b.mode->TakesLogits());
  CHECK(b.mode->Adopts(w));
  CHECK(b.mode->ChecksNorms());
  CHECK(b.mode->EvalsNeeded(2, 0) == 2);
}

TEST_CASE("campaign mode: a pipeline stage holds, syncs, uploads and counts only its slice", "[unit][coordinator]") {
  CampaignConfig c = TinyCampaign(2);
  c.pipeline.stages = 2;
  ParamSet p;
  p.layout.tensors = {{"stage0.emb", {4, 2}}, {"stage0.b", {3}}, {"stage1.head", {2, 5}}};
  p.values.resize(21);
  for (size_t i = 0; i < p.values.size(); ++i) p.values[i] = 0.1f * static_cast<float>(i);
  Built b = Build(c, p);
  CHECK(b.mode->kind() == Aggregation::Kind::kStages);
  const WorkerInfo first = Worker("site-a", 0), last = Worker("site-b", 1);
  CHECK(b.mode->ParamsOf(&first) == 11);
  CHECK(b.mode->ParamsOf(&last) == 10);
  CHECK(b.mode->ParamsOf(nullptr) == 21);
  CHECK(b.mode->StageOf(last) == 1);
  CHECK(b.mode->DigestFor(first, 42) != 42);
  CHECK(b.mode->DigestFor(first, 42) != b.mode->DigestFor(last, 42));
  auto sync = b.mode->SyncPayload(last, b.params, *b.agg);
  REQUIRE(sync.ok());
  CHECK(sync->header.num_elements == 10);
  CampaignMode::Slice slice;
  CHECK(b.mode->UploadSlice(last, 1, -1, &slice) == "");
  CHECK(slice.part == 1);
  CHECK(slice.layout->tensors.at(0).name == "head");
  CHECK_FALSE(b.mode->CountsLoss(0));
  CHECK(b.mode->CountsLoss(1));
  CloseResult r;
  r.stage_down.resize(2);
  r.stage_down[1].bulk = {1, 2, 3};
  CHECK(&b.mode->DownFor(last, r) == &r.stage_down[1]);
}

TEST_CASE("campaign mode: personalised sites hold their cluster's view", "[unit][coordinator]") {
  CampaignConfig c = TinyCampaign(3);
  c.personalization.tensors = {"b"};
  c.personalization.clusters = {{"north", {"site-b"}}, {"south", {"site-c"}}};
  auto extended = CampaignMode::ClusterLayout(c, TinyParams());
  REQUIRE(extended.ok());
  CHECK(extended->layout.tensors.size() == 4);
  CHECK(extended->layout.tensors[2].name == "cluster/north/b");
  Built b = Build(c, *extended);
  CHECK(b.mode->kind() == Aggregation::Kind::kClusters);
  const WorkerInfo none = Worker("site-a"), north = Worker("site-b"), south = Worker("site-c");
  CHECK(b.mode->ClusterIndex("site-a") == 0);
  CHECK(b.mode->ClusterIndex("site-c") == 2);
  CHECK(b.mode->ClusterName("site-b") == "north");
  CHECK(b.mode->ClusterName("site-a") == "");
  CHECK(b.mode->ParamsOf(&north) == 24);
  // Equal values in every copy: the same view digest; different after a change.
  CHECK(b.mode->DigestFor(none, 0) == b.mode->DigestFor(north, 0));
  b.params.values[24] += 1;  // cluster/north/b[0]
  b.mode->ComputeDigests(*b.agg, b.params);
  CHECK(b.mode->DigestFor(none, 0) != b.mode->DigestFor(north, 0));
  CHECK(b.mode->DigestFor(none, 0) == b.mode->DigestFor(south, 0));
  auto sync = b.mode->SyncPayload(north, b.params, *b.agg);
  REQUIRE(sync.ok());
  CHECK(sync->header.num_elements == 24);
  CampaignMode::Slice slice;
  CHECK(b.mode->UploadSlice(south, 1, -1, &slice) == "");
  CHECK(slice.part == 2);
  CHECK(slice.layout->numel() == 24);
  std::map<std::string, EvalReport> evals;
  evals["site-a"].val_loss = 1;
  evals["site-b"].val_loss = 3;
  RoundRecord r;
  b.mode->RecordEvals(evals, &r);
  CHECK(r.cluster_val_loss.at("(none)") == 1);
  CHECK(r.cluster_val_loss.at("north") == 3);
  CHECK_FALSE(r.cluster_val_loss.count("south"));
}

TEST_CASE("campaign mode: ParaBlock assigns a block per round and site and takes only that block",
          "[unit][coordinator]") {
  CampaignConfig c = TinyCampaign(2);
  c.model.layers = 2;
  c.parablock.blocks = 2;
  ParamSet p;
  p.layout.tensors = {{"tok_emb", {4, 2}}, {"blocks.0.w", {2, 2}}, {"blocks.1.w", {2, 2}}, {"ln_f", {2}}};
  p.values.assign(18, 0.5f);
  Built b = Build(c, p);
  CHECK(b.mode->kind() == Aggregation::Kind::kBlocks);
  CHECK(b.mode->block_rounds());
  CHECK(b.mode->layer_blocks() == std::vector<int>{0, 1});
  const WorkerInfo w = Worker("site-a");
  CampaignMode::Slice slice;
  CHECK(b.mode->UploadSlice(w, 1, 0, &slice) == "upload covers block 0, round 1 asked for none");
  const int block = b.mode->BlockFor("site-a", 1, 0);
  REQUIRE(block >= 0);
  CHECK(b.mode->BlockFor("site-a", 1, 5) == block);  // assigned once per round
  CHECK(b.mode->UploadSlice(w, 1, 1 - block, &slice) ==
        "upload covers block " + std::to_string(1 - block) + ", round 1 asked for block " + std::to_string(block));
  CHECK(b.mode->UploadSlice(w, 1, block, &slice) == "");
  CHECK(slice.part == block);
  CHECK(b.mode->BlockNumel(0) + b.mode->BlockNumel(1) == 18);
  CHECK(b.mode->RecordedBlock(1) == 1);
  Welcome wel;
  b.mode->FillWelcome(&wel);
  CHECK(wel.layer_blocks == std::vector<int>{0, 1});
  b.mode->ForgetBlocksBefore(2);
  CHECK(b.mode->UploadSlice(w, 1, block, &slice) == "upload covers block " + std::to_string(block) +
                                                         ", round 1 asked for none");
}

TEST_CASE("campaign mode: FPLD takes logits, and own-model sites adopt no parameters", "[unit][coordinator]") {
  CampaignConfig c = TinyCampaign(3);
  c.fpld.enabled = true;
  c.model.layers = 2;
  c.model.d_model = 8;
  c.model.heads = 2;
  Built b = Build(c, TinyParams());
  CHECK(b.mode->kind() == Aggregation::Kind::kDistil);
  CHECK_FALSE(b.mode->TakesDeltas());
  CHECK(b.mode->TakesLogits());
  CHECK_FALSE(b.mode->ChecksNorms());
  WorkerInfo same = Worker("site-a"), own = Worker("site-b");
  CHECK(b.mode->Adopts(same));
  own.hello.own_model.layers = 4;
  CHECK_FALSE(b.mode->Adopts(own));
  own.hello.own_model = ToSpec(c.model);
  CHECK(b.mode->Adopts(own));
  CHECK(b.mode->EvalsNeeded(3, 1) == 1);
  CHECK(b.mode->EvalsNeeded(0, 2) == 1);
  b.mode->SetProbes({7, 8});
  Welcome wel;
  wel.codec.kind = CodecKind::kSparseLoCo;
  b.mode->FillWelcome(&wel);
  CHECK(wel.fpld.enabled);
  CHECK(wel.fpld.probe_tokens == std::vector<uint8_t>{7, 8});
  CHECK(wel.codec.kind == CodecSpec{}.kind);
}

}  // namespace
}  // namespace lowband
