// The campaign settings a Welcome carries, end to end: the coordinator
// converts its config into the protocol's structs (coordinator/welcome.h),
// the wire carries them, and the worker converts them back
// (worker/welcome_config.h) to the values the campaign file gave.
#include "worker/welcome_config.h"

#include <tuple>

#include <catch2/catch.hpp>

#include "coordinator/core.h"
#include "protocol/wire.h"
#include "tests/fakes/fake_cluster.h"

namespace lowband {
namespace {

using testing::HelloFrom;
using testing::TinyCampaign;
using testing::Wrap;

// What a decoded message carries: the body as the other end reads it.
template <typename T>
T OverTheWire(const Message& m) {
  auto d = DecodeMessage(EncodeMessage(m), WireLimits{});
  INFO(d.status().ToString());
  REQUIRE(d.ok());
  REQUIRE(std::holds_alternative<T>(d->body));
  return std::get<T>(d->body);
}

auto Tie(const ModelConfig& m) { return std::tie(m.layers, m.d_model, m.heads, m.context, m.vocab); }

// A campaign whose every setting that travels differs from its default.
CampaignConfig PipelineCampaign() {
  CampaignConfig c = TinyCampaign(2, 5);
  c.model = ModelShape(4, 64, 8, 32, 200);
  c.training.inner_steps = 7;
  c.training.batch_size = 24;
  c.training.eval_batches = 3;
  c.training.seed = 0xfeed'beefull;
  c.training.inner = InnerOptimizerConfig{2e-3, 0.8, 0.99, 1e-7, 0.02, 0.5, 11};
  c.training.overlap = true;
  c.training.precision = Precision::kTf32;
  c.training.eval_every = 4;
  c.codec = CodecConfig{CodecKind::kSparseLoCo, 32, 0.8};
  c.pipeline.stages = 2;
  c.pipeline.ratio = 16;
  c.pipeline.wire_dtype = WireDtype::kFp16;
  c.pipeline.split = {1, 3};
  c.pipeline.micro_batches = 6;
  c.pipeline.schedule = "gpipe";
  c.pipeline.link_mbit = 40;
  c.pipeline.peer_timeout_ms = 1234;
  return c;
}

// Global parameters of a 2-stage campaign: a tensor per stage prefix.
ParamSet TwoStageParams() {
  ParamSet p;
  p.layout.tensors = {{"stage0.emb", {4, 2}}, {"stage1.head", {2, 5}}};
  p.values.assign(18, 0.5f);
  return p;
}

TEST_CASE("welcome config: a campaign's settings reach the worker's trainers unchanged", "[unit][worker]") {
  const CampaignConfig cfg = PipelineCampaign();
  const TimePoint t0 = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(cfg, TwoStageParams(), t0);
  CoreOutput out;
  for (const auto& [site, endpoint] :
       {std::pair{"site-a", "tcp://127.0.0.1:5601"}, std::pair{"site-b", "tcp://127.0.0.1:5602"}}) {
    Hello h = HelloFrom(site);
    h.peer_endpoint = endpoint;
    core.HandleMessage(site, Wrap(h, ""), t0, &out);
  }
  const Message* welcome = nullptr;
  for (const auto& o : out.messages) {
    if (o.peer == "site-b" && std::holds_alternative<Welcome>(o.msg.body)) welcome = &o.msg;
  }
  REQUIRE(welcome != nullptr);
  const Welcome w = OverTheWire<Welcome>(*welcome);
  CHECK(w.stage == 1);

  CHECK(Tie(ToConfig(w.model)) == Tie(cfg.model));

  const TrainingConfig t = ToConfig(w.training);
  CHECK(std::tie(t.rounds, t.inner_steps, t.batch_size, t.eval_batches, t.eval_every, t.seed, t.overlap,
                 t.precision) == std::tie(cfg.training.rounds, cfg.training.inner_steps, cfg.training.batch_size,
                                          cfg.training.eval_batches, cfg.training.eval_every, cfg.training.seed,
                                          cfg.training.overlap, cfg.training.precision));
  const InnerOptimizerConfig& i = t.inner;
  const InnerOptimizerConfig& ci = cfg.training.inner;
  CHECK(std::tie(i.lr, i.beta1, i.beta2, i.eps, i.weight_decay, i.grad_clip, i.warmup_steps) ==
        std::tie(ci.lr, ci.beta1, ci.beta2, ci.eps, ci.weight_decay, ci.grad_clip, ci.warmup_steps));

  const CodecConfig c = ToConfig(w.codec);
  CHECK(std::tie(c.kind, c.topk, c.error_feedback) ==
        std::tie(cfg.codec.kind, cfg.codec.topk, cfg.codec.error_feedback));

  const PipelineConfig p = ToConfig(w.pipeline);
  const PipelineConfig& cp = cfg.pipeline;
  CHECK(std::tie(p.stages, p.replicas, p.ratio, p.wire_dtype, p.split, p.micro_batches, p.schedule, p.link_mbit,
                 p.peer_timeout_ms) == std::tie(cp.stages, cp.replicas, cp.ratio, cp.wire_dtype, cp.split,
                                                cp.micro_batches, cp.schedule, cp.link_mbit, cp.peer_timeout_ms));
  CHECK(StageBlocks(ToConfig(w.model).layers, p) == std::vector<int>{1, 3});
}

TEST_CASE("welcome config: a data-parallel welcome has no pipeline", "[unit][worker]") {
  const CampaignConfig cfg = TinyCampaign(1);
  const TimePoint t0 = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(cfg, testing::TinyParams(), t0);
  CoreOutput out;
  core.HandleMessage("site-a", Wrap(HelloFrom("site-a"), ""), t0, &out);
  REQUIRE_FALSE(out.messages.empty());
  REQUIRE(std::holds_alternative<Welcome>(out.messages[0].msg.body));
  const Welcome w = OverTheWire<Welcome>(out.messages[0].msg);
  CHECK(ToConfig(w.pipeline).stages == 1);
  CHECK(Tie(ToConfig(w.model)) == Tie(cfg.model));
}

TEST_CASE("welcome config: a site's own model travels in its hello", "[unit][worker]") {
  SiteConfig site;
  site.name = "site-c";
  CHECK(OwnModelSpec(site).layers == 0);  // the campaign's model
  site.model = ModelShape(2, 96, 4, 0, 0);
  Hello h = HelloFrom(site.name);
  h.own_model = OwnModelSpec(site);
  const Hello got = OverTheWire<Hello>(Wrap(h, ""));
  CHECK(Tie(ToConfig(got.own_model)) == Tie(site.model));
}

}  // namespace
}  // namespace lowband
