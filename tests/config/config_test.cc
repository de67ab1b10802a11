#include "config/config.h"

#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "tests/fakes/temp_dir.h"
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace lowband {
namespace {

namespace fs = std::filesystem;

using testing::TempDir;

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream is(s);
  for (std::string line; std::getline(is, line);) out.push_back(line);
  return out;
}

// Parses a campaign expected to fail and returns the error message.
std::string CampaignError(const std::string& yaml) {
  auto r = ParseCampaignYaml(yaml, "c.yaml");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  return r.status().message();
}

using Catch::Matchers::Contains;

const char* const kSiteInline = R"(
sites:
  - site: {name: a}
    data: {dir: /data/a}
)";

}  // namespace

TEST_CASE("config: a minimal campaign gets every default", "[unit][config]") {
  auto r = ParseCampaignYaml("campaign: {name: tiny}\n", "c.yaml");
  REQUIRE(r.ok());
  const CampaignConfig& c = *r;
  CampaignConfig d;
  CHECK(c.name == "tiny");
  CHECK(c.source == "c.yaml");
  CHECK(c.model.layers == d.model.layers);
  CHECK(c.model.d_model == d.model.d_model);
  CHECK(c.training.rounds == d.training.rounds);
  CHECK(c.training.seed == d.training.seed);
  CHECK(c.training.inner.beta2 == d.training.inner.beta2);
  CHECK(c.outer.kind == OuterOptimizerKind::kNesterov);
  CHECK(c.codec.kind == CodecKind::kDenseFp32);
  CHECK(c.quorum.expected_workers == 1);
  CHECK(c.quorum.min_workers == 1);
  CHECK(c.network.bind == d.network.bind);
  CHECK(c.network.max_message_bytes == d.network.max_message_bytes);
  CHECK(c.output.run_dir == d.output.run_dir);
  CHECK(c.sites.empty());
  CHECK(ValidateCampaign(c).ok());
}

TEST_CASE("config: every value is read", "[unit][config]") {
  const std::string yaml = R"(
campaign: {name: full, seed: 18446744073709551615, rounds: 7}
model: {layers: 2, d_model: 96, heads: 3, context: 32, vocab: 256}
training:
  inner_steps: 5
  batch_size: 4
  eval_batches: 2
  inner_optimizer: {name: adamw, lr: 1.0e-4, betas: [0.8, 0.99], eps: 1.0e-6, weight_decay: 0, grad_clip: 0, warmup_steps: 3}
outer_optimizer: {name: sgd, lr: 1, momentum: 0}
codec: {name: dense_fp32}
quorum: {expected_workers: 4, min_workers: 2, round_deadline_s: 1.5, start_timeout_s: 2, aggregation: mean}
network: {bind: "ipc:///tmp/lb.sock", control: "tcp://localhost:7001", heartbeat_interval_ms: 10, heartbeat_timeout_ms: 11, security: none, max_message_bytes: 1024}
output: {run_dir: out, metrics_file: m.jsonl}
sites:
  - site: {name: s1, device: "cuda:1", threads: 3}
    data: {dir: /data/one, files: [x, y], validation_fraction: 0.25}
  - site: {name: s2, coordinator: "ipc:///tmp/lb.sock", device: cuda}
    data: {dir: rel/two}
)";
  auto r = ParseCampaignYaml(yaml, "dir/c.yaml");
  INFO((r.ok() ? "" : r.status().message()));
  REQUIRE(r.ok());
  const CampaignConfig& c = *r;
  CHECK(c.training.seed == 18446744073709551615ull);
  CHECK(c.training.rounds == 7);
  CHECK(c.model.d_model == 96);
  CHECK(c.model.heads == 3);
  CHECK(c.training.inner_steps == 5);
  CHECK(c.training.inner.lr == Approx(1e-4));
  CHECK(c.training.inner.beta1 == Approx(0.8));
  CHECK(c.training.inner.beta2 == Approx(0.99));
  CHECK(c.training.inner.warmup_steps == 3);
  CHECK(c.outer.kind == OuterOptimizerKind::kSgd);
  CHECK(c.outer.lr == 1.0);
  CHECK(c.outer.momentum == 0.0);
  CHECK(c.quorum.expected_workers == 4);
  CHECK(c.quorum.min_workers == 2);
  CHECK(c.quorum.round_deadline_s == 1.5);
  CHECK(c.network.bind == "ipc:///tmp/lb.sock");
  CHECK(c.network.max_message_bytes == 1024);
  CHECK(c.output.metrics_file == "m.jsonl");
  REQUIRE(c.sites.size() == 2);
  CHECK(c.sites[0].device == "cuda:1");
  CHECK(c.sites[0].threads == 3);
  CHECK(c.sites[0].data.files == std::vector<std::string>{"x", "y"});
  CHECK(c.sites[0].data.validation_fraction == 0.25);
  CHECK(c.sites[0].source == "dir/c.yaml#sites[0]");
  // Inline sites inherit network.bind; relative dirs follow the campaign file.
  CHECK(c.sites[0].coordinator == "ipc:///tmp/lb.sock");
  CHECK(c.sites[1].data.dir == "dir/rel/two");
  CHECK(std::string(OuterOptimizerName(c.outer.kind)) == "sgd");
}

TEST_CASE("config: enum names", "[unit][config]") {
  CHECK(std::string(OuterOptimizerName(OuterOptimizerKind::kNesterov)) == "nesterov");
  CHECK(std::string(OuterOptimizerName(OuterOptimizerKind::kFedAvg)) == "fedavg");
  CHECK(std::string(CodecName(CodecKind::kDenseFp32)) == "dense_fp32");
  CHECK(std::string(CodecName(CodecKind::kDenseBf16)) == "dense_bf16");
  CHECK(std::string(CodecName(CodecKind::kInt8)) == "int8");
  CHECK(std::string(CodecName(CodecKind::kSparseLoCo)) == "sparseloco");
  CHECK(std::string(CodecName(CodecKind::kSparseFp32)) == "sparse_fp32");
  CHECK(std::string(AggregationName(AggregationRule::kMeanAll)) == "mean");
  CHECK(std::string(AggregationName(AggregationRule::kMeanChoosers)) == "mean_of_choosers");
}

TEST_CASE("config: worker counts default from the sites", "[unit][config]") {
  auto r = ParseCampaignYaml(std::string("campaign: {name: x}\n") + kSiteInline +
                                 "  - site: {name: b}\n    data: {dir: /data/b}\n",
                             "c.yaml");
  REQUIRE(r.ok());
  CHECK(r->quorum.expected_workers == 2);
  CHECK(r->quorum.min_workers == 2);
  CHECK(r->sites[1].coordinator == "tcp://127.0.0.1:5555");

  auto only_expected = ParseCampaignYaml("campaign: {name: x}\nquorum: {expected_workers: 5}\n", "c.yaml");
  REQUIRE(only_expected.ok());
  CHECK(only_expected->quorum.min_workers == 5);
}

TEST_CASE("config: unknown keys are errors with file, line and the allowed keys", "[unit][config]") {
  std::string msg = CampaignError("campaign: {name: x}\nmodel:\n  layers: 4\n  layres: 5\n");
  CHECK_THAT(msg, Contains("c.yaml:4: model.layres: unknown key"));
  CHECK_THAT(msg, Contains("(allowed: layers, d_model, heads, context, vocab, arch, kv_heads, ffn_hidden, rope_theta, "
                           "norm_eps, init_from)"));

  msg = CampaignError("campaign: {name: x}\nmodels: {}\n");
  CHECK_THAT(msg, Contains("c.yaml:2: models: unknown key (allowed: campaign, model, training,"));

  msg = CampaignError("campaign: {name: x}\nmodel: {layers: 4, layers: 5}\n");
  CHECK_THAT(msg, Contains("model.layers: duplicate key"));
}

TEST_CASE("config: wrong types", "[unit][config]") {
  std::string msg = CampaignError(R"(campaign: {name: x}
model: {layers: four}
training:
  batch_size: 2.5
  inner_optimizer: {lr: fast, betas: 0.9}
network: {bind: [a, b]}
)");
  CHECK_THAT(msg, Contains("c.yaml:2: model.layers: expected an integer, got 'four'"));
  CHECK_THAT(msg, Contains("c.yaml:4: training.batch_size: expected an integer, got '2.5'"));
  CHECK_THAT(msg, Contains("c.yaml:5: training.inner_optimizer.lr: expected a finite number, got 'fast'"));
  CHECK_THAT(msg, Contains("training.inner_optimizer.betas: expected a list of two numbers"));
  CHECK_THAT(msg, Contains("c.yaml:6: network.bind: expected a string, got a list"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nmodel: 4\n"), Contains("c.yaml:2: model: expected a map"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nsites: {a: 1}\n"), Contains("sites: expected a list of sites"));
  CHECK_THAT(CampaignError("campaign: {name: x, seed: -1}\n"),
             Contains("campaign.seed: expected a non-negative integer, got '-1'"));
  CHECK_THAT(CampaignError("campaign: {name: x}\ntraining: {inner_optimizer: {lr: .nan}}\n"),
             Contains("expected a finite number"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nmodel: {layers: 99999999999}\n"), Contains("integer too large"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nmodel: {layers: }\n"),
             Contains("model.layers: expected an integer, got nothing"));
}

TEST_CASE("config: out-of-range numbers", "[unit][config]") {
  std::string msg = CampaignError(R"(campaign: {name: x, rounds: 0}
model: {layers: 0, vocab: 512}
training:
  inner_steps: 0
  inner_optimizer: {lr: -1, betas: [0.9, 1.0], eps: 0, warmup_steps: -2}
outer_optimizer: {lr: 0, momentum: 1.0}
quorum: {expected_workers: 2, min_workers: 3, round_deadline_s: 0}
network: {heartbeat_interval_ms: 500, heartbeat_timeout_ms: 500}
)" + std::string(kSiteInline) +
                                  "  - site: {name: b, threads: 0}\n"
                                  "    data: {dir: /d, validation_fraction: 1.5}\n");
  CHECK_THAT(msg, Contains("c.yaml:1: campaign.rounds: 0 is out of range (allowed: >= 1)"));
  CHECK_THAT(msg, Contains("c.yaml:2: model.layers: 0 is out of range (allowed: 1 to 256)"));
  CHECK_THAT(msg, Contains("c.yaml:2: model.vocab: 512 does not match the byte-level tokenizer (allowed: 256)"));
  CHECK_THAT(msg, Contains("c.yaml:4: training.inner_steps: 0 is out of range"));
  CHECK_THAT(msg, Contains("c.yaml:5: training.inner_optimizer.lr: -1 is out of range (allowed: > 0)"));
  CHECK_THAT(msg, Contains("c.yaml:5: training.inner_optimizer.betas[1]: 1 is out of range (allowed: [0, 1))"));
  CHECK_THAT(msg, Contains("training.inner_optimizer.eps: 0 is out of range (allowed: > 0)"));
  CHECK_THAT(msg, Contains("training.inner_optimizer.warmup_steps: -2 is out of range (allowed: >= 0)"));
  CHECK_THAT(msg, Contains("c.yaml:6: outer_optimizer.lr: 0 is out of range (allowed: > 0)"));
  CHECK_THAT(msg, Contains("c.yaml:6: outer_optimizer.momentum: 1 is out of range (allowed: [0, 1))"));
  CHECK_THAT(msg, Contains("c.yaml:7: quorum.min_workers: 3 is more than expected_workers 2"));
  CHECK_THAT(msg, Contains("quorum.round_deadline_s: 0 is out of range (allowed: > 0)"));
  CHECK_THAT(msg, Contains("c.yaml:8: network.heartbeat_timeout_ms: 500 is not more than heartbeat_interval_ms 500"));
  CHECK_THAT(msg, Contains("sites[1].site.threads: 0 is out of range (allowed: 1 to 1024)"));
  CHECK_THAT(msg, Contains("sites[1].data.validation_fraction: 1.5 is out of range (allowed: (0, 1))"));
}

TEST_CASE("config: bad enum values list the allowed values", "[unit][config]") {
  std::string msg = CampaignError(R"(campaign: {name: x}
outer_optimizer: {name: adam}
codec: {name: topk}
quorum: {aggregation: median}
training: {inner_optimizer: {name: sgd}}
)");
  CHECK_THAT(msg, Contains("c.yaml:2: outer_optimizer.name: unknown value 'adam' (allowed: nesterov, sgd, fedavg)"));
  CHECK_THAT(msg, Contains("c.yaml:3: codec.name: unknown value 'topk' (allowed: dense_fp32, dense_bf16, int8, sparseloco)"));
  CHECK_THAT(msg, Contains("c.yaml:4: quorum.aggregation: unknown value 'median' (allowed: mean, mean_of_choosers)"));
  CHECK_THAT(msg, Contains("c.yaml:5: training.inner_optimizer.name: unknown value 'sgd' (allowed: adamw)"));
}

TEST_CASE("config: devices and endpoints", "[unit][config]") {
  for (const char* dev : {"cpu", "cuda", "cuda:0", "cuda:12"}) {
    auto r = ParseSiteYaml(std::string("site: {name: s, device: \"") + dev + "\"}\ndata: {dir: /d}\n", "s.yaml");
    CHECK(r.ok());
  }
  for (const char* dev : {"gpu", "cuda:", "cuda:x", "CPU"}) {
    auto r = ParseSiteYaml(std::string("site: {name: s, device: \"") + dev + "\"}\ndata: {dir: /d}\n", "s.yaml");
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.status().message(), Contains("s.yaml:1: site.device: unknown device"));
    CHECK_THAT(r.status().message(), Contains("(allowed: cpu, cuda, cuda:N)"));
  }
  for (const char* ep : {"http://x:1", "tcp://127.0.0.1", "tcp://127.0.0.1:0", "tcp://127.0.0.1:70000", "ipc://",
                         "tcp://*:5555", "tcp://bad host:1"}) {
    auto r = ParseSiteYaml(std::string("site: {name: s, coordinator: \"") + ep + "\"}\ndata: {dir: /d}\n", "s.yaml");
    INFO(ep);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.status().message(), Contains("s.yaml:1: site.coordinator:"));
  }
  for (const char* ep : {"tcp://[::1]:5555", "ipc:///run/lb", "tcp://127.0.0.1:5555"}) {
    auto r = ParseSiteYaml(std::string("site: {name: s, coordinator: \"") + ep + "\"}\ndata: {dir: /d}\n", "s.yaml");
    INFO(ep);
    CHECK(r.ok());
  }
  // Off loopback a site needs CurveZMQ keys.
  for (const char* ep : {"tcp://10.0.0.7:5555", "tcp://coord.example.org:5555"}) {
    INFO(ep);
    auto plain = ParseSiteYaml(std::string("site: {name: s, coordinator: \"") + ep + "\"}\ndata: {dir: /d}\n", "s.yaml");
    REQUIRE_FALSE(plain.ok());
    CHECK_THAT(plain.status().message(), Contains("s.yaml:1: site.coordinator: plain TCP to a non-loopback"));
    auto curve = ParseSiteYaml(std::string("site: {name: s, coordinator: \"") + ep +
                                   "\", key: k/s.key, server_key: k/coordinator.pub}\ndata: {dir: /d}\n",
                               "s.yaml");
    CHECK(curve.ok());
    auto half = ParseSiteYaml(std::string("site: {name: s, coordinator: \"") + ep + "\", key: k/s.key}\ndata: {dir: /d}\n",
                              "s.yaml");
    REQUIRE_FALSE(half.ok());
    CHECK_THAT(half.status().message(), Contains("site.server_key: missing: key and server_key go together"));
  }
}

TEST_CASE("config: several errors are reported at once, one per line", "[unit][config]") {
  std::string msg = CampaignError(R"(campaign: {name: "bad name!"}
model: {layers: -1, color: blue}
outer_optimizer: {name: nope}
network: {security: tls}
)");
  auto lines = Lines(msg);
  CHECK(lines.size() == 5);
  for (const auto& line : lines) CHECK_THAT(line, Catch::Matchers::StartsWith("c.yaml:"));
  CHECK_THAT(msg, Contains("c.yaml:1: campaign.name: invalid name 'bad name!' (allowed: [A-Za-z0-9_.-]+)"));
  CHECK_THAT(msg, Contains("c.yaml:2: model.layers"));
  CHECK_THAT(msg, Contains("c.yaml:2: model.color: unknown key"));
  CHECK_THAT(msg, Contains("c.yaml:3: outer_optimizer.name"));
  CHECK_THAT(msg, Contains("c.yaml:4: network.security: unsupported value 'tls' (allowed: none"));
  // Sorted by line, so the report reads like the file.
  CHECK_THAT(lines.front(), Catch::Matchers::StartsWith("c.yaml:1:"));
  CHECK_THAT(lines.back(), Catch::Matchers::StartsWith("c.yaml:4:"));
}

TEST_CASE("config: d_model must be divisible by heads", "[unit][config]") {
  std::string msg = CampaignError("campaign: {name: x}\nmodel:\n  d_model: 130\n  heads: 4\n");
  CHECK_THAT(msg, Contains("c.yaml:3: model.d_model: d_model 130 is not divisible by heads 4"));

  CampaignConfig built;
  built.model.d_model = 100;
  built.model.heads = 3;
  Status st = ValidateCampaign(built);
  REQUIRE_FALSE(st.ok());
  CHECK_THAT(st.message(), Contains("model.d_model: d_model 100 is not divisible by heads 3"));
}

TEST_CASE("config: model.arch llama and its keys", "[unit][config]") {
  auto r = ParseCampaignYaml(
      "campaign: {name: x}\n"
      "model: {arch: llama, layers: 2, d_model: 64, heads: 8, kv_heads: 2, ffn_hidden: 160, rope_theta: 500000,"
      " norm_eps: 1.0e-6}\n",
      "c.yaml");
  REQUIRE(r.ok());
  CHECK(r->model.arch == ModelArch::kLlama);
  CHECK(KvHeads(r->model) == 2);
  CHECK(FfnHidden(r->model) == 160);
  CHECK(r->model.rope_theta == 500000.0);
  CHECK(r->model.norm_eps == 1e-6);
  auto plain = ParseCampaignYaml("campaign: {name: x}\nmodel: {arch: llama}\n", "c.yaml");
  REQUIRE(plain.ok());
  CHECK(KvHeads(plain->model) == plain->model.heads);
  CHECK(FfnHidden(plain->model) == 384);  // 8/3 * 128 = 341.3, up to a multiple of 64

  std::string msg = CampaignError("campaign: {name: x}\nmodel:\n  arch: llama\n  heads: 4\n  kv_heads: 3\n");
  CHECK_THAT(msg, Contains("c.yaml:5: model.kv_heads: 3 does not divide heads 4"));
  msg = CampaignError("campaign: {name: x}\nmodel:\n  arch: mamba\n");
  CHECK_THAT(msg, Contains("c.yaml:3: model.arch: unknown value 'mamba' (allowed: gpt2, llama)"));
  msg = CampaignError("campaign: {name: x}\nmodel:\n  kv_heads: 2\n");
  CHECK_THAT(msg, Contains("c.yaml:3: model.kv_heads: set for arch gpt2 (allowed: only with model.arch: llama)"));
  msg = CampaignError("campaign: {name: x}\nmodel:\n  arch: llama\n  d_model: 36\n  heads: 4\n");
  CHECK_THAT(msg, Contains("model.d_model: head size 9 is odd"));
  msg = CampaignError("campaign: {name: x}\nmodel: {arch: llama, layers: 4}\npipeline: {stages: 2}\n");
  CHECK_THAT(msg, Contains("model.arch: llama in pipeline stages (not supported yet)"));
  msg = CampaignError("campaign: {name: x}\nmodel: {layers: 4, init_from: /m}\npipeline: {stages: 2}\n");
  CHECK_THAT(msg, Contains("model.init_from: a pipeline or FPLD campaign (not supported yet)"));
}

TEST_CASE("config: campaign.name is required", "[unit][config]") {
  CHECK_THAT(CampaignError("model: {layers: 2}\n"), Contains("c.yaml:1: campaign.name: missing required key"));
  CHECK_THAT(CampaignError("campaign:\n  seed: 3\n"), Contains("c.yaml:1: campaign.name: missing required key"));
  CHECK_THAT(CampaignError(""), Contains("campaign.name: missing required key"));
  CHECK_THAT(CampaignError("- a\n- b\n"), Contains("c.yaml:1: expected a map"));
}

TEST_CASE("config: outer optimizer variants", "[unit][config]") {
  auto r = ParseCampaignYaml("campaign: {name: x}\nouter_optimizer: {name: fedavg, server_lr: 0.5}\n", "c.yaml");
  REQUIRE(r.ok());
  CHECK(r->outer.kind == OuterOptimizerKind::kFedAvg);
  CHECK(r->outer.lr == 0.5);
  CHECK(r->outer.momentum == 0.0);

  std::string msg = CampaignError("campaign: {name: x}\nouter_optimizer: {name: fedavg, server_lr: 1, momentum: 0.9}\n");
  CHECK_THAT(msg, Contains("c.yaml:2: outer_optimizer.momentum: unknown key for outer_optimizer fedavg"));
  CHECK_THAT(msg, Contains("(allowed: name, server_lr, lr)"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nouter_optimizer: {name: fedavg, server_lr: -1}\n"),
             Contains("c.yaml:2: outer_optimizer.server_lr: -1 is out of range (allowed: > 0)"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nouter_optimizer: {name: nesterov, server_lr: 1}\n"),
             Contains("outer_optimizer.server_lr: unknown key for outer_optimizer nesterov"));
}

TEST_CASE("config: missing file is NotFound", "[unit][config]") {
  auto r = LoadCampaignFile("/nonexistent/lowband/campaign.yaml");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kNotFound);
  CHECK_THAT(r.status().message(), Contains("/nonexistent/lowband/campaign.yaml"));
  auto s = LoadSiteFile("/nonexistent/lowband/site.yaml");
  REQUIRE_FALSE(s.ok());
  CHECK(s.status().code() == StatusCode::kNotFound);
}

TEST_CASE("config: YAML syntax errors give file and line", "[unit][config]") {
  TempDir dir;
  std::string path = dir.Write("broken.yaml", "campaign:\n  name: x\nmodel: {layers: 4\ntraining: {}\n");
  auto r = LoadCampaignFile(path);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(r.status().message(), Contains(path + ":"));
  CHECK_THAT(r.status().message(), Contains("YAML syntax error"));

  std::string msg = CampaignError("campaign:\n  name: x\n\tmodel: 1\n");
  CHECK_THAT(msg, Contains("c.yaml:3: YAML syntax error"));
}

TEST_CASE("config: site files referenced from a campaign", "[unit][config]") {
  TempDir dir;
  dir.Write("sites/a.yaml", "site: {name: a}\ndata: {dir: corpus}\n");
  std::string campaign = dir.Write("camp/c.yaml",
                                   "campaign: {name: x}\n"
                                   "sites:\n"
                                   "  - file: ../sites/a.yaml\n");
  auto r = LoadCampaignFile(campaign);
  INFO((r.ok() ? "" : r.status().message()));
  REQUIRE(r.ok());
  REQUIRE(r->sites.size() == 1);
  const std::string site_path = (fs::path(dir.path()) / "sites/a.yaml").string();
  CHECK(r->sites[0].source == site_path);
  // Relative data.dir follows the site file, not the campaign file.
  CHECK(r->sites[0].data.dir == (fs::path(dir.path()) / "sites/corpus").string());
  CHECK(r->quorum.expected_workers == 1);

  SECTION("a missing site file is reported at the reference") {
    std::string bad = dir.Write("camp/bad.yaml",
                                "campaign: {name: x}\n"
                                "sites:\n"
                                "  - site: {name: b}\n"
                                "    data: {dir: /d}\n"
                                "  - file: ../sites/missing.yaml\n");
    auto rb = LoadCampaignFile(bad);
    REQUIRE_FALSE(rb.ok());
    CHECK(rb.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(rb.status().message(), Contains(bad + ":5: sites[1].file: cannot load site file"));
    CHECK_THAT(rb.status().message(), Contains("missing.yaml"));
    CHECK(Lines(rb.status().message()).size() == 1);
  }

  SECTION("errors inside a site file name that file and line, together with the campaign's") {
    dir.Write("sites/broken.yaml", "site:\n  name: c\n  device: tpu\ndata: {dir: /d, shuffle: yes}\n");
    dir.Write("sites/syntax.yaml", "site: {name: d\n");
    std::string bad = dir.Write("camp/bad2.yaml",
                                "campaign: {name: x}\n"
                                "model: {layers: 0}\n"
                                "sites:\n"
                                "  - file: ../sites/broken.yaml\n"
                                "  - file: ../sites/syntax.yaml\n"
                                "  - {file: ../sites/a.yaml, site: {name: z}}\n");
    auto rb = LoadCampaignFile(bad);
    REQUIRE_FALSE(rb.ok());
    const std::string& msg = rb.status().message();
    const std::string broken = (fs::path(dir.path()) / "sites/broken.yaml").string();
    const std::string syntax = (fs::path(dir.path()) / "sites/syntax.yaml").string();
    CHECK_THAT(msg, Contains(bad + ":2: model.layers: 0 is out of range"));
    CHECK_THAT(msg, Contains(broken + ":3: site.device: unknown device 'tpu'"));
    CHECK_THAT(msg, Contains(broken + ":4: data.shuffle: unknown key (allowed: dir, files, validation_fraction)"));
    CHECK_THAT(msg, Contains(syntax + ":"));
    CHECK_THAT(msg, Contains("YAML syntax error"));
    CHECK_THAT(msg, Contains(bad + ":6: sites[2].site: unknown key next to file"));
  }
}

TEST_CASE("config: duplicate site names", "[unit][config]") {
  TempDir dir;
  dir.Write("sites/a.yaml", "site: {name: a}\ndata: {dir: /d}\n");
  std::string campaign = dir.Write("c.yaml",
                                   "campaign: {name: x}\n"
                                   "sites:\n"
                                   "  - file: sites/a.yaml\n"
                                   "  - site: {name: a}\n"
                                   "    data: {dir: /d}\n");
  auto r = LoadCampaignFile(campaign);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.status().message(), Contains(campaign + ":4: sites[1].site.name: duplicate site name 'a'"));
  CHECK_THAT(r.status().message(), Contains("first defined at " + (fs::path(dir.path()) / "sites/a.yaml").string() + ":1"));
}

TEST_CASE("config: security none is only allowed on loopback", "[unit][config]") {
  std::string msg = CampaignError("campaign: {name: x}\nnetwork:\n  bind: \"tcp://0.0.0.0:5555\"\n  control: \"tcp://192.168.1.4:5556\"\n");
  CHECK_THAT(msg, Contains("c.yaml:3: network.bind: security 'none' requires a loopback endpoint"));
  CHECK_THAT(msg, Contains("c.yaml:4: network.control: security 'none' requires a loopback endpoint"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nnetwork: {bind: \"tcp://*:5555\"}\n"),
             Contains("network.bind: security 'none' requires a loopback endpoint"));

  msg = CampaignError(
      "campaign: {name: x}\nsites:\n  - site: {name: a, coordinator: \"tcp://10.0.0.2:5555\"}\n    data: {dir: /d}\n");
  CHECK_THAT(msg, Contains("c.yaml:3: sites[0].site.coordinator: security 'none' requires a loopback endpoint"));

  for (const char* ok : {"tcp://127.0.0.1:5555", "tcp://127.1.2.3:5555", "tcp://localhost:5555", "tcp://[::1]:5555",
                         "ipc:///tmp/lowband.sock"}) {
    auto r = ParseCampaignYaml(std::string("campaign: {name: x}\nnetwork: {bind: \"") + ok + "\"}\n", "c.yaml");
    INFO(ok);
    CHECK(r.ok());
  }
  CHECK_THAT(CampaignError("campaign: {name: x}\nnetwork: {bind: \"tcp://127.0.0.1:9\", control: \"tcp://127.0.0.1:9\"}\n"),
             Contains("network.control: same endpoint as network.bind"));
}

TEST_CASE("config: local sites must reach network.bind", "[unit][config]") {
  std::string msg = CampaignError(
      "campaign: {name: x}\nnetwork: {bind: \"tcp://127.0.0.1:6000\"}\n"
      "sites:\n  - site: {name: a, coordinator: \"tcp://127.0.0.1:5555\"}\n    data: {dir: /d}\n");
  CHECK_THAT(msg, Contains("c.yaml:4: sites[0].site.coordinator: 'tcp://127.0.0.1:5555' does not reach network.bind"));
}

TEST_CASE("config: site files", "[unit][config]") {
  TempDir dir;
  std::string path = dir.Write("s/site.yaml",
                               "site:\n  name: east\n  coordinator: \"tcp://10.1.1.1:5555\"\n  device: cuda:0\n"
                               "  key: keys/east.key\n  server_key: /etc/lowband/coordinator.pub\n"
                               "data:\n  dir: text\n  files: [a.txt]\n");
  auto r = LoadSiteFile(path);
  INFO((r.ok() ? "" : r.status().message()));
  REQUIRE(r.ok());
  CHECK(r->name == "east");
  CHECK(r->coordinator == "tcp://10.1.1.1:5555");
  CHECK(r->device == "cuda:0");
  CHECK(r->data.dir == (fs::path(dir.path()) / "s/text").string());
  CHECK(r->key == (fs::path(dir.path()) / "s/keys/east.key").string());  // relative to the file
  CHECK(r->server_key == "/etc/lowband/coordinator.pub");
  CHECK(r->data.validation_fraction == 0.1);
  CHECK(r->source == path);

  auto missing = ParseSiteYaml("site: {device: cpu}\n", "s.yaml");
  REQUIRE_FALSE(missing.ok());
  CHECK_THAT(missing.status().message(), Contains("s.yaml:1: site.name: missing required key"));
  CHECK_THAT(missing.status().message(), Contains("s.yaml:1: data.dir: missing required key"));

  auto escape = ParseSiteYaml("site: {name: s}\ndata: {dir: /d, files: [../etc/passwd]}\n", "s.yaml");
  REQUIRE_FALSE(escape.ok());
  CHECK_THAT(escape.status().message(), Contains("s.yaml:2: data.files[0]: '../etc/passwd' leaves data.dir"));

  auto unknown = ParseSiteYaml("site: {name: s}\ndata: {dir: /d}\nsecurity: none\n", "s.yaml");
  REQUIRE_FALSE(unknown.ok());
  CHECK_THAT(unknown.status().message(), Contains("s.yaml:3: security: unknown key (allowed: site, data)"));
}

TEST_CASE("config: every file in configs/ loads cleanly", "[unit][config]") {
  const fs::path root = fs::path(LOWBAND_SOURCE_DIR) / "configs";
  REQUIRE(fs::is_directory(root));
  int campaigns = 0;
  int sites = 0;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".yaml") continue;
    const std::string path = entry.path().string();
    INFO(path);
    if (entry.path().parent_path().filename() == "sites") {
      auto r = LoadSiteFile(path);
      INFO((r.ok() ? "" : r.status().message()));
      CHECK(r.ok());
      ++sites;
    } else {
      auto r = LoadCampaignFile(path);
      INFO((r.ok() ? "" : r.status().message()));
      CHECK(r.ok());
      if (r.ok()) CHECK(ValidateCampaign(*r).ok());
      ++campaigns;
    }
  }
  CHECK(campaigns >= 2);
  CHECK(sites >= 1);
}

TEST_CASE("config: quickstart is the documented non-IID setup", "[unit][config]") {
  auto r = LoadCampaignFile(std::string(LOWBAND_SOURCE_DIR) + "/configs/quickstart.yaml");
  REQUIRE(r.ok());
  const CampaignConfig& c = *r;
  CHECK(c.name == "quickstart");
  CHECK(c.model.layers == 4);
  CHECK(c.model.d_model == 128);
  CHECK(c.training.rounds == 36);
  CHECK(c.training.inner_steps == 5);
  CHECK(c.codec.kind == CodecKind::kSparseLoCo);
  CHECK(c.codec.topk == 64);
  CHECK(c.outer.kind == OuterOptimizerKind::kSgd);
  CHECK(c.outer.lr == 1.0);
  CHECK(c.outer.momentum == 0.0);
  CHECK(c.quorum.aggregation == AggregationRule::kMeanChoosers);
  CHECK(c.quorum.expected_workers == 3);
  CHECK(c.output.run_dir == "runs/quickstart");
  REQUIRE(c.sites.size() == 3);
  // No category is shared between sites.
  for (size_t i = 0; i < c.sites.size(); ++i) {
    for (size_t j = i + 1; j < c.sites.size(); ++j) {
      for (const auto& f : c.sites[i].data.files) {
        CHECK(std::find(c.sites[j].data.files.begin(), c.sites[j].data.files.end(), f) ==
              c.sites[j].data.files.end());
      }
    }
  }
}

}  // namespace lowband

namespace lowband {
namespace {

TEST_CASE("config: each outer optimizer has its method's defaults", "[unit][config]") {
  auto sgd = ParseCampaignYaml("campaign: {name: x}\nouter_optimizer: {name: sgd}\n", "c.yaml");
  REQUIRE(sgd.ok());
  CHECK(sgd->outer.lr == 1.0);
  CHECK(sgd->outer.momentum == 0.0);
  auto nesterov = ParseCampaignYaml("campaign: {name: x}\nouter_optimizer: {name: nesterov}\n", "c.yaml");
  REQUIRE(nesterov.ok());
  CHECK(nesterov->outer.lr == 0.7);
  CHECK(nesterov->outer.momentum == 0.9);
  auto fedavg = ParseCampaignYaml("campaign: {name: x}\nouter_optimizer: {name: fedavg, server_lr: 0.5}\n", "c.yaml");
  REQUIRE(fedavg.ok());
  CHECK(fedavg->outer.lr == 0.5);
  CHECK(fedavg->outer.momentum == 0.0);
}

}  // namespace
}  // namespace lowband

namespace lowband {
namespace {

using Catch::Matchers::Contains;

CampaignConfig Campaign(const std::string& yaml) {
  auto r = ParseCampaignYaml(yaml, "c.yaml");
  INFO((r.ok() ? "" : r.status().message()));
  REQUIRE(r.ok());
  return *r;
}

std::string Error(const std::string& yaml) {
  auto r = ParseCampaignYaml(yaml, "c.yaml");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  return r.status().message();
}

size_t LineCount(const std::string& s) { return static_cast<size_t>(std::count(s.begin(), s.end(), '\n')) + 1; }

TEST_CASE("config: codec names and settings", "[unit][config]") {
  const std::string head = "campaign: {name: x}\n";
  CampaignConfig d = Campaign(head);
  CHECK(d.codec.kind == CodecKind::kDenseFp32);
  CHECK(d.codec.topk == 64);
  CHECK(d.codec.error_feedback == 0.95);

  CHECK(Campaign(head + "codec: {name: dense_bf16}\n").codec.kind == CodecKind::kDenseBf16);
  CHECK(Campaign(head + "codec: {name: int8}\n").codec.kind == CodecKind::kInt8);

  CampaignConfig s = Campaign(head + "codec: {name: sparseloco, topk: 32, error_feedback: 0.9}\n");
  CHECK(s.codec.kind == CodecKind::kSparseLoCo);
  CHECK(s.codec.topk == 32);
  CHECK(s.codec.error_feedback == 0.9);
  CHECK(Campaign(head + "codec: {name: sparseloco}\n").codec.topk == 64);
  CHECK(Campaign(head + "codec: {name: sparseloco, topk: 1}\n").codec.topk == 1);
  CHECK(Campaign(head + "codec: {name: sparseloco, topk: 4096}\n").codec.topk == 4096);

  // Lossy codecs take error feedback; 0 switches it off. dense_fp32 accepts
  // and ignores it.
  CHECK(Campaign(head + "codec: {name: int8, error_feedback: 0}\n").codec.error_feedback == 0.0);
  CHECK(Campaign(head + "codec: {name: dense_bf16, error_feedback: 0.5}\n").codec.error_feedback == 0.5);
  CHECK(Campaign(head + "codec: {name: dense_fp32, error_feedback: 0.5}\n").codec.kind == CodecKind::kDenseFp32);
}

TEST_CASE("config: codec.downlink defaults to sparse_2bit where the codec and the campaign allow it",
          "[unit][config]") {
  const std::string head = "campaign: {name: x}\nmodel: {layers: 4}\n";
  CHECK(Campaign(head).codec.downlink == CodecKind::kSparseFp32);
  CHECK(Campaign(head + "codec: {name: int8}\n").codec.downlink == CodecKind::kSparseFp32);
  CHECK(Campaign(head + "codec: {name: sparseloco}\n").codec.downlink == CodecKind::kSparse2Bit);
  CHECK(Campaign(head + "codec: {name: sparseloco}\n").codec.downlink_budget == 1.5);
  CHECK(Campaign(head + "codec: {name: sparseloco, downlink_budget: 2}\n").codec.downlink_budget == 2.0);
  CHECK(Campaign(head + "codec: {name: sparseloco, downlink: sparseloco}\n").codec.downlink == CodecKind::kSparseLoCo);
  CHECK(Campaign(head + "codec: {name: sparseloco, downlink: sparse_fp32}\n").codec.downlink == CodecKind::kSparseFp32);
  CHECK(Campaign(head + "codec: {name: sparseloco, downlink: dense_fp32}\n").codec.downlink == CodecKind::kDenseFp32);
  // Any uplink codec may take a compressed downlink.
  CHECK(Campaign(head + "codec: {name: dense_fp32, downlink: sparseloco}\n").codec.downlink == CodecKind::kSparseLoCo);
  // Campaigns whose sites hold slices or views keep the fp32 downlink.
  CHECK(Campaign(head + "codec: {name: sparseloco}\nparablock: {blocks: 2}\n").codec.downlink ==
        CodecKind::kSparseFp32);
  CHECK(Campaign(head + "codec: {name: sparseloco}\npipeline: {stages: 2}\nquorum: {expected_workers: 2}\n")
            .codec.downlink == CodecKind::kSparseFp32);

  CHECK_THAT(Error(head + "codec: {name: sparseloco, downlink: top64}\n"),
             Contains("c.yaml:3: codec.downlink: unknown value 'top64' (allowed: sparse_2bit, sparseloco, sparse_fp32, "
                      "dense_fp32)"));
  for (const char* bad : {"0", "-1", ".inf"}) {
    INFO(bad);
    CHECK_THAT(Error(head + "codec: {name: sparseloco, downlink_budget: " + bad + "}\n"),
               Contains("c.yaml:3: codec.downlink_budget: "));
  }
  CHECK_THAT(Error(head + "codec: {name: sparseloco, downlink: sparse_2bit}\nparablock: {blocks: 2}\n"),
             Contains("codec.downlink: sparse_2bit downlink with ParaBlock blocks (parablock.blocks > 1)"));
  CHECK_THAT(Error(head + "codec: {name: sparseloco, downlink: sparseloco}\nparablock: {blocks: 2}\n"),
             Contains("codec.downlink: sparseloco downlink with ParaBlock blocks (parablock.blocks > 1)"));
  CHECK_THAT(Error(head + "codec: {name: sparseloco, downlink: sparseloco}\npipeline: {stages: 2}\n"),
             Contains("codec.downlink: sparseloco downlink with pipeline stages (pipeline.stages > 1)"));
  CampaignConfig built;  // configs built in code go through the same check
  built.codec.downlink = CodecKind::kSparseLoCo;
  built.fpld.enabled = true;
  CHECK_THAT(ValidateCampaign(built).message(), Contains("codec.downlink: sparseloco downlink with an FPLD campaign"));
  built.fpld.enabled = false;
  built.personalization.tensors = {"head."};
  CHECK_THAT(ValidateCampaign(built).message(),
             Contains("codec.downlink: sparseloco downlink with personalised tensors (personalization.tensors)"));
}

TEST_CASE("config: codec density is topk / 4096", "[unit][config]") {
  const std::string head = "campaign: {name: x}\ncodec: {name: sparseloco, density: ";
  CHECK(Campaign(head + "0.015625}\n").codec.topk == 64);
  CHECK(Campaign(head + "1}\n").codec.topk == 4096);
  CHECK(Campaign(head + "0.01}\n").codec.topk == 41);      // 40.96 rounds to 41
  CHECK(Campaign(head + "1.0e-6}\n").codec.topk == 1);     // never below one value per chunk
  CHECK(Campaign(head + "0.0001220703125}\n").codec.topk == 1);
}

TEST_CASE("config: invalid codec settings", "[unit][config]") {
  const std::string head = "campaign: {name: x}\n";
  CHECK_THAT(Error(head + "codec: {name: sparse_fp32}\n"),
             Contains("c.yaml:2: codec.name: 'sparse_fp32' is the coordinator's downlink format and cannot be "
                      "chosen for uploads (allowed: dense_fp32, dense_bf16, int8, sparseloco)"));
  CHECK_THAT(Error(head + "codec: {name: sparse_2bit}\n"),
             Contains("c.yaml:2: codec.name: 'sparse_2bit' is the coordinator's downlink format and cannot be "
                      "chosen for uploads"));
  CHECK_THAT(Error(head + "codec: {name: sparse}\n"),
             Contains("c.yaml:2: codec.name: unknown value 'sparse' (allowed: dense_fp32, dense_bf16, int8, sparseloco)"));
  CHECK_THAT(Error(head + "codec: {name: sparseloco, topk: 0}\n"),
             Contains("c.yaml:2: codec.topk: 0 is out of range (allowed: 1 to 4096)"));
  CHECK_THAT(Error(head + "codec: {name: sparseloco, topk: 4097}\n"),
             Contains("c.yaml:2: codec.topk: 4097 is out of range (allowed: 1 to 4096)"));
  CHECK_THAT(Error(head + "codec: {name: sparseloco, topk: 2.5}\n"),
             Contains("c.yaml:2: codec.topk: expected an integer, got '2.5'"));
  CHECK_THAT(Error(head + "codec: {name: int8, topk: 64}\n"),
             Contains("c.yaml:2: codec.topk: only for codec sparseloco, not int8 (allowed: name, error_feedback for codec int8)"));
  CHECK_THAT(Error(head + "codec: {density: 0.5}\n"),
             Contains("c.yaml:2: codec.density: only for codec sparseloco, not dense_fp32"));
  CHECK_THAT(Error(head + "codec:\n  name: sparseloco\n  topk: 64\n  density: 0.015625\n"),
             Contains("c.yaml:5: codec.density: both topk and density given; density is topk/4096 (allowed: one of topk, density)"));
  for (const char* bad : {"0", "-0.5", "1.5"}) {
    INFO(bad);
    CHECK_THAT(Error(head + "codec: {name: sparseloco, density: " + bad + "}\n"),
               Contains("c.yaml:2: codec.density: " + std::string(bad) + " is out of range (allowed: (0, 1]"));
  }
  CHECK_THAT(Error(head + "codec: {name: sparseloco, density: half}\n"),
             Contains("c.yaml:2: codec.density: expected a finite number, got 'half'"));
  CHECK_THAT(Error(head + "codec: {name: sparseloco, error_feedback: 1}\n"),
             Contains("c.yaml:2: codec.error_feedback: 1 is out of range (allowed: [0, 1))"));
  CHECK_THAT(Error(head + "codec: {name: int8, error_feedback: -0.1}\n"),
             Contains("c.yaml:2: codec.error_feedback: -0.1 is out of range (allowed: [0, 1))"));
  CHECK_THAT(Error(head + "codec: {name: sparseloco, k: 3}\n"),
             Contains("c.yaml:2: codec.k: unknown key (allowed: name, topk, density, error_feedback, downlink, "
                      "downlink_budget)"));
  // Every problem at once, and no follow-on complaint about topk.
  std::string msg = Error(head + "codec:\n  name: sparseloco\n  density: 2\n  error_feedback: 1.5\n");
  CHECK(LineCount(msg) == 2);

  CampaignConfig built;
  built.codec.kind = CodecKind::kSparseFp32;
  CHECK_THAT(ValidateCampaign(built).message(), Contains("codec.name: 'sparse_fp32' is the coordinator's downlink format"));
  built.codec.kind = CodecKind::kSparseLoCo;
  built.codec.topk = 0;
  CHECK_THAT(ValidateCampaign(built).message(), Contains("codec.topk: 0 is out of range (allowed: 1 to 4096)"));
}

TEST_CASE("config: quorum aggregation", "[unit][config]") {
  CHECK(Campaign("campaign: {name: x}\n").quorum.aggregation == AggregationRule::kMeanAll);
  CHECK(Campaign("campaign: {name: x}\nquorum: {aggregation: mean}\n").quorum.aggregation == AggregationRule::kMeanAll);
  CHECK(Campaign("campaign: {name: x}\nquorum: {aggregation: mean_of_choosers}\n").quorum.aggregation ==
        AggregationRule::kMeanChoosers);
}

TEST_CASE("config: adaptive steps, weighting and site slowdown", "[unit][config]") {
  const CampaignConfig d = Campaign("campaign: {name: x}\n");
  CHECK_FALSE(d.training.adaptive.enabled);
  CHECK(d.quorum.weighting == AggregationWeighting::kTokens);
  const CampaignConfig c = Campaign(
      "campaign: {name: x}\n"
      "training:\n  inner_steps: 12\n"
      "  adaptive_steps: {enabled: true, round_time_s: 2.5, min_inner_steps: 2, max_inner_steps: 40}\n"
      "quorum: {weighting: uniform, round_deadline_s: 60}\n"
      "sites:\n  - site: {name: slow, slowdown: 3.5, link_mbit: 12.5}\n    data: {dir: /d}\n");
  CHECK(c.training.adaptive.enabled);
  CHECK(c.training.adaptive.round_time_s == 2.5);
  CHECK(c.training.adaptive.min_inner_steps == 2);
  CHECK(c.training.adaptive.max_inner_steps == 40);
  CHECK(c.quorum.weighting == AggregationWeighting::kUniform);
  REQUIRE(c.sites.size() == 1);
  CHECK(c.sites[0].slowdown == 3.5);
  CHECK(c.sites[0].link_mbit == 12.5);
  CHECK_THAT(CampaignError("campaign: {name: x}\nsites:\n  - site: {name: s, link_mbit: -2}\n    data: {dir: /d}\n"),
             Catch::Contains("site.link_mbit"));

  CHECK_THAT(CampaignError("campaign: {name: x}\ntraining: {adaptive_steps: {enabled: maybe}}\n"),
             Catch::Contains("training.adaptive_steps.enabled") && Catch::Contains("false, true"));
  CHECK_THAT(CampaignError("campaign: {name: x}\ntraining: {adaptive_steps: {enabled: true, often: 1}}\n"),
             Catch::Contains("often"));
  CHECK_THAT(CampaignError("campaign: {name: x}\ntraining: {inner_steps: 4, adaptive_steps: {enabled: true, "
                           "min_inner_steps: 5}}\n"),
             Catch::Contains("training.adaptive_steps.min_inner_steps") && Catch::Contains("exceeds"));
  CHECK_THAT(CampaignError("campaign: {name: x}\ntraining: {adaptive_steps: {enabled: true, round_time_s: 90}}\n"
                           "quorum: {round_deadline_s: 60}\n"),
             Catch::Contains("round_time_s") && Catch::Contains("round_deadline_s"));
  CHECK_THAT(CampaignError("campaign: {name: x}\ntraining: {adaptive_steps: {round_time_s: -1}}\n"),
             Catch::Contains("training.adaptive_steps.round_time_s"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nquorum: {weighting: loudest}\n"),
             Catch::Contains("quorum.weighting") && Catch::Contains("tokens, uniform"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nsites:\n  - site: {name: s, slowdown: 0.5}\n    data: {dir: /d}\n"),
             Catch::Contains("site.slowdown"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nmodel: {layers: 4}\ntraining: {adaptive_steps: {enabled: true}}\n"
                           "pipeline: {stages: 2}\n"),
             Catch::Contains("training.adaptive_steps.enabled") && Catch::Contains("pipeline"));
}

TEST_CASE("config: parablock settings are read and checked against the model", "[unit][config]") {
  const CampaignConfig off = Campaign("campaign: {name: x}\n");
  CHECK(off.parablock.blocks == 1);
  CHECK(LayerBlocks(off.model.layers, off.parablock).empty());
  const CampaignConfig c = Campaign(
      "campaign: {name: x}\nmodel: {layers: 5}\n"
      "parablock: {blocks: 3, split: [1, 2, 2], schedule: random, assignment: shared}\n");
  CHECK(c.parablock.blocks == 3);
  CHECK(c.parablock.split == std::vector<int>{1, 2, 2});
  CHECK(c.parablock.random);
  CHECK_FALSE(c.parablock.per_worker);
  CHECK(LayerBlocks(5, c.parablock) == std::vector<int>{0, 1, 1, 2, 2});

  CHECK_THAT(CampaignError("campaign: {name: x}\nmodel: {layers: 2}\nparablock: {blocks: 3}\n"),
             Catch::Contains("parablock.blocks") && Catch::Contains("at most model.layers"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nmodel: {layers: 4}\nparablock: {blocks: 2, split: [4, 0]}\n"),
             Catch::Contains("parablock.split") && Catch::Contains("each >= 1"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nmodel: {layers: 4}\nparablock: {blocks: 2, split: [1, 2]}\n"),
             Catch::Contains("summing to model.layers = 4"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nparablock: {blocks: 2, schedule: zigzag}\n"),
             Catch::Contains("parablock.schedule") && Catch::Contains("cyclic, random"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nparablock: {blocks: 2, assignment: everyone}\n"),
             Catch::Contains("parablock.assignment") && Catch::Contains("per_worker, shared"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nparablock: {blocks: 0}\n"), Catch::Contains("parablock.blocks"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nmodel: {layers: 4}\nparablock: {blocks: 2}\n"
                           "pipeline: {stages: 2}\nquorum: {expected_workers: 2}\n"),
             Catch::Contains("parablock.blocks") && Catch::Contains("pipeline"));
}

TEST_CASE("config: personalization clusters are read and checked", "[unit][config]") {
  const CampaignConfig c = Campaign(
      "campaign: {name: x}\n"
      "personalization: {tensors: [blocks.3., ln_f.], clusters: {tech: [site-a], arts: [site-b, site-c]}}\n");
  CHECK(c.personalization.tensors == std::vector<std::string>{"blocks.3.", "ln_f."});
  REQUIRE(c.personalization.clusters.size() == 2);
  CHECK(c.personalization.clusters[0].first == "tech");
  CHECK(c.personalization.clusters[1].second == std::vector<std::string>{"site-b", "site-c"});
  CHECK_THAT(CampaignError("campaign: {name: x}\npersonalization: {clusters: {a: [s1]}}\n"),
             Catch::Contains("personalization.tensors"));
  CHECK_THAT(CampaignError("campaign: {name: x}\npersonalization: {tensors: [ln_f.], clusters: {a: [s1], b: [s1]}}\n"),
             Catch::Contains("site 's1' is in two clusters"));
  CHECK_THAT(CampaignError("campaign: {name: x}\npersonalization: {tensors: [ln_f.], clusters: [a, b]}\n"),
             Catch::Contains("personalization.clusters"));
  CHECK_THAT(CampaignError("campaign: {name: x}\npersonalization: {tensors: [ln_f.], color: red}\n"),
             Catch::Contains("color"));
  CHECK_THAT(CampaignError("campaign: {name: x}\nmodel: {layers: 4}\ntraining: {overlap: true}\n"
                           "personalization: {tensors: [ln_f.]}\n"),
             Catch::Contains("personalization") && Catch::Contains("not supported yet"));
}

TEST_CASE("config: fpld is read and checked - site models only in FPLD campaigns", "[unit][config]") {
  const std::string base =
      "campaign: {name: x}\n"
      "outer_optimizer: {name: sgd, lr: 1.0, momentum: 0}\n";
  const CampaignConfig c = Campaign(base +
                                    "fpld: {probes: {dir: /tmp, files: [a]}, contexts: 32, positions: 4, bits: 2, "
                                    "clip: 6, topk: 16, student_steps: 5, exact_reference: true}\n");
  CHECK(c.fpld.enabled);
  CHECK(c.fpld.probes.dir == "/tmp");
  CHECK(c.fpld.contexts == 32);
  CHECK(c.fpld.positions == 4);
  CHECK(c.fpld.bits == 2);
  CHECK(c.fpld.clip == 6);
  CHECK(c.fpld.topk == 16);
  CHECK(c.fpld.student_steps == 5);
  CHECK(c.fpld.exact_reference);
  CHECK_FALSE(Campaign("campaign: {name: x}\n").fpld.enabled);
  const std::string probes = "fpld: {probes: {dir: /tmp}";
  CHECK_THAT(CampaignError(base + probes + ", bits: 17}\n"), Catch::Contains("fpld.bits"));
  CHECK_THAT(CampaignError(base + probes + ", positions: 65}\n"), Catch::Contains("fpld.positions"));
  CHECK_THAT(CampaignError(base + probes + ", clip: 0}\n"), Catch::Contains("fpld.clip"));
  CHECK_THAT(CampaignError(base + "fpld: {contexts: 8}\n"), Catch::Contains("fpld.probes.dir"));
  CHECK_THAT(CampaignError(base + probes + ", colour: red}\n"), Catch::Contains("colour"));
  CHECK_THAT(CampaignError("campaign: {name: x}\n" + probes + "}\n"),
             Catch::Contains("outer_optimizer") && Catch::Contains("plain SGD with lr 1"));
  CHECK_THAT(CampaignError(base + "training: {overlap: true}\n" + probes + "}\n"), Catch::Contains("FPLD with"));
  const std::string site_model =
      "sites:\n  - site: {name: s1, model: {layers: 2, d_model: 96, heads: 4}}\n    data: {dir: /tmp}\n";
  const CampaignConfig mixed = Campaign(base + probes + "}\n" + site_model);
  REQUIRE(mixed.sites.size() == 1);
  CHECK(mixed.sites[0].model.layers == 2);
  CHECK(mixed.sites[0].model.d_model == 96);
  CHECK_THAT(CampaignError("campaign: {name: x}\n" + site_model),
             Catch::Contains("sites[0].site.model") && Catch::Contains("outside an FPLD campaign"));
  CHECK_THAT(CampaignError(base + probes + "}\nsites:\n  - site: {name: s1, model: {layers: 2, d_model: 90, heads: 4}}\n"
                                           "    data: {dir: /tmp}\n"),
             Catch::Contains("site.model.d_model"));
}

// ---------------------------------------------------------------------------
// --set overrides

std::string Merge(const std::string& yaml, const std::vector<std::string>& sets) {
  auto r = ApplyOverrides(yaml, sets);
  INFO((r.ok() ? "" : r.status().message()));
  REQUIRE(r.ok());
  return *r;
}

std::string MergeError(const std::string& yaml, const std::vector<std::string>& sets) {
  auto r = ApplyOverrides(yaml, sets);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  return r.status().message();
}

const char* const kBase = R"(campaign: {name: base, rounds: 12}
training:
  inner_steps: 15
  inner_optimizer: {lr: 3.0e-3, betas: [0.9, 0.95]}
outer_optimizer: {name: nesterov, lr: 0.7, momentum: 0.9}
codec: {name: dense_fp32}
output:
sites:
  - site: {name: a, threads: 1}
    data: {dir: /d/a}
  - site: {name: b}
    data: {dir: /d/b}
)";

TEST_CASE("overrides: keys, created maps, flow values, list items", "[unit][config]") {
  const std::string merged = Merge(kBase, {
                                              "codec.name=sparseloco",
                                              "codec.topk=32",
                                              "training.inner_steps=1",
                                              "outer_optimizer={name: sgd}",
                                              "output.run_dir=/tmp/x",        // under a null section
                                              "network.bind=tcp://127.0.0.1:6555",  // a missing section
                                              "network.control=tcp://127.0.0.1:6556",
                                              "sites[1].site.threads=2",
                                              "training.inner_optimizer.betas=[0.8, 0.9]",
                                              "campaign.rounds=3",
                                              "campaign.rounds=4",  // the later one wins
                                          });
  CampaignConfig c = Campaign(merged);
  CHECK(c.name == "base");
  CHECK(c.training.rounds == 4);
  CHECK(c.codec.kind == CodecKind::kSparseLoCo);
  CHECK(c.codec.topk == 32);
  CHECK(c.training.inner_steps == 1);
  CHECK(c.training.inner.lr == Approx(3e-3));
  CHECK(c.training.inner.beta1 == Approx(0.8));
  // The whole map was replaced, so sgd's own defaults apply.
  CHECK(c.outer.kind == OuterOptimizerKind::kSgd);
  CHECK(c.outer.lr == 1.0);
  CHECK(c.outer.momentum == 0.0);
  CHECK(c.output.run_dir == "/tmp/x");
  CHECK(c.network.bind == "tcp://127.0.0.1:6555");
  REQUIRE(c.sites.size() == 2);
  CHECK(c.sites[1].threads == 2);
  CHECK(c.sites[1].coordinator == "tcp://127.0.0.1:6555");  // inline sites follow network.bind
  CHECK(c.sites[0].data.dir == "/d/a");

  // Setting one key keeps its siblings, here the file's lr and momentum.
  CampaignConfig k = Campaign(Merge(kBase, {"outer_optimizer.name=sgd"}));
  CHECK(k.outer.kind == OuterOptimizerKind::kSgd);
  CHECK(k.outer.lr == 0.7);
  CHECK(k.outer.momentum == 0.9);

  // No sets: the same document, minus comments.
  CampaignConfig same = Campaign(Merge(std::string("# comment\n") + kBase, {}));
  CHECK(same.training.rounds == 12);
  CHECK(same.sites.size() == 2);

  // VALUE is YAML: quoted strings stay strings, an empty VALUE is null.
  CHECK(Campaign(Merge(kBase, {"campaign.name=\"007\""})).name == "007");
  CHECK_THAT(Error(Merge(kBase, {"output.metrics_file="})),
             Contains("output.metrics_file: expected a string, got nothing"));
  CHECK(Campaign(Merge(kBase, {"output.metrics_file=\"\""})).output.metrics_file.empty());
  // A value may contain '='.
  CHECK(Campaign(Merge(kBase, {"output.run_dir=a=b"})).output.run_dir == "a=b");
  // An empty document becomes a map.
  CHECK(Campaign(Merge("", {"campaign.name=fresh"})).name == "fresh");
}

TEST_CASE("overrides: every bad --set is reported at once", "[unit][config]") {
  const std::string msg = MergeError(kBase, {
                                                "codec.name",         // no '='
                                                "=sparseloco",        // empty key
                                                "codec..name=x",      // empty segment
                                                "codec.name.=x",      // trailing dot
                                                "codec name=x",       // not a key character
                                                "sites[x].site=1",    // bad index
                                                "codec={name: int8",  // VALUE is not YAML
                                            });
  CHECK_THAT(msg, Contains("--set codec.name: expected KEY=VALUE, e.g. codec.name=sparseloco"));
  CHECK_THAT(msg, Contains("--set =sparseloco: empty KEY in KEY=VALUE"));
  CHECK_THAT(msg, Contains("--set codec..name: empty key segment in 'codec..name'"));
  CHECK_THAT(msg, Contains("--set codec.name.: empty key segment in 'codec.name.'"));
  CHECK_THAT(msg, Contains("--set codec name: unexpected ' ' in 'codec name'"));
  CHECK_THAT(msg, Contains("--set sites[x].site: bad list index in 'sites[x].site'"));
  CHECK_THAT(msg, Contains("--set codec: VALUE is not valid YAML"));
  CHECK(LineCount(msg) == 7);

  const std::string paths = MergeError(kBase, {
                                                  "codec.name.kind=x",        // through a scalar
                                                  "sites.site.name=x",        // through a list
                                                  "codec[0]=x",               // a map is not a list
                                                  "sites[2].site.name=c",     // no such item
                                                  "training.inner_steps[0]=1",
                                              });
  CHECK_THAT(paths, Contains("--set codec.name.kind: codec.name is 'dense_fp32', not a map"));
  CHECK_THAT(paths, Contains("--set sites.site.name: sites is a list of 2 items, not a map"));
  CHECK_THAT(paths, Contains("--set codec[0]: codec is a map, not a list"));
  CHECK_THAT(paths, Contains("--set sites[2].site.name: sites[2]: no such item (sites has 2)"));
  CHECK_THAT(paths, Contains("--set training.inner_steps[0]: training.inner_steps is '15', not a list"));
  CHECK(LineCount(paths) == 5);

  CHECK_THAT(MergeError("- a\n- b\n", {"codec.name=int8"}),
             Contains("--set codec.name: the campaign document is a list of 2 items, not a map"));
  CHECK_THAT(MergeError("campaign: {name: x\n", {"codec.name=int8"}), Contains("<campaign>:"));
}

TEST_CASE("overrides: a loaded campaign reports errors at the --set that caused them", "[unit][config]") {
  TempDir dir;
  const std::string path = dir.Write("c.yaml", kBase);
  auto error = [&](const std::vector<std::string>& sets) {
    auto r = LoadCampaignWithOverrides(path, sets);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    return r.status().message();
  };
  CHECK(error({"codec.name=bogus"}) ==
        "--set codec.name: unknown value 'bogus' (allowed: dense_fp32, dense_bf16, int8, sparseloco)");
  CHECK(error({"codec={name: int8, topk: 3}"}) ==
        "--set codec: codec.topk: only for codec sparseloco, not int8 (allowed: name, error_feedback for codec int8)");
  CHECK_THAT(error({"foo.bar=1"}), Contains("--set foo.bar: foo: unknown key (allowed: campaign, model,"));
  CHECK(error({"training.inner_steps=0"}) == "--set training.inner_steps: 0 is out of range (allowed: >= 1)");
  CHECK(error({"quorum.min_workers=3"}) == "--set quorum.min_workers: 3 is more than expected_workers 2 (allowed: 1 to quorum.expected_workers)");
  CHECK(error({"campaign={rounds: 3}"}) == "--set campaign: campaign.name: missing required key");
  CHECK(error({"sites[0].site.device=tpu"}) ==
        "--set sites[0].site.device: unknown device 'tpu' (allowed: cpu, cuda, cuda:N)");
  // A later set replacing an earlier one owns the error.
  CHECK(error({"codec.name=sparseloco", "codec.topk=0"}) == "--set codec.topk: 0 is out of range (allowed: 1 to 4096)");

  // Errors the sets did not cause keep their file and line; all come at once.
  const std::string bad = dir.Write("bad.yaml", std::string(kBase) + "model: {layers: 0}\n");
  auto r = LoadCampaignWithOverrides(bad, {"codec.name=bogus", "codec.name.x=1", "nonsense"});
  REQUIRE_FALSE(r.ok());
  // Set syntax and path errors are reported together, before the file is checked.
  CHECK(r.status().message() ==
        "--set codec.name.x: codec.name is 'bogus', not a map\n--set nonsense: expected KEY=VALUE, e.g. codec.name=sparseloco");
  r = LoadCampaignWithOverrides(bad, {"codec.name=bogus"});
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.status().message(), Contains(bad + ":13: model.layers: 0 is out of range"));
  CHECK_THAT(r.status().message(), Contains("--set codec.name: unknown value 'bogus'"));
  CHECK(LineCount(r.status().message()) == 2);

  auto missing = LoadCampaignWithOverrides(dir.Path("none.yaml"), {"codec.name=int8"});
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
}

TEST_CASE("overrides: the merged campaign loads the same from another directory", "[unit][config]") {
  TempDir dir;
  dir.Write("sites/a.yaml", "site: {name: a}\ndata: {dir: corpus}\n");
  const std::string path = dir.Write("camp/c.yaml",
                                     "# A campaign with relative paths.\n"
                                     "campaign: {name: rel}\n"
                                     "codec: {name: dense_fp32}\n"
                                     "sites:\n"
                                     "  - file: ../sites/a.yaml\n"
                                     "  - site: {name: b}\n"
                                     "    data: {dir: text/b, files: [x]}\n"
                                     "  - site: {name: c}\n"
                                     "    data: {dir: /abs/c}\n");
  auto r = LoadCampaignWithOverrides(path, {"codec.name=sparseloco", "codec.density=0.015625", "codec.error_feedback=0.9",
                                            "quorum.aggregation=mean_of_choosers"});
  INFO((r.ok() ? "" : r.status().message()));
  REQUIRE(r.ok());
  CHECK(r->config.source == path);
  CHECK(r->config.codec.kind == CodecKind::kSparseLoCo);
  CHECK(r->config.codec.topk == 64);
  CHECK(r->config.quorum.aggregation == AggregationRule::kMeanChoosers);

  const std::string saved = dir.Write("run/deep/campaign.yaml", r->yaml);
  auto again = LoadCampaignFile(saved);
  INFO((again.ok() ? "" : again.status().message()));
  REQUIRE(again.ok());
  CHECK(again->codec.kind == CodecKind::kSparseLoCo);
  CHECK(again->codec.topk == 64);
  CHECK(again->codec.error_feedback == 0.9);
  CHECK(again->quorum.aggregation == AggregationRule::kMeanChoosers);
  REQUIRE(again->sites.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CHECK(again->sites[i].name == r->config.sites[i].name);
    CHECK(fs::path(again->sites[i].data.dir).is_absolute());
    CHECK(fs::weakly_canonical(again->sites[i].data.dir) == fs::weakly_canonical(r->config.sites[i].data.dir));
    CHECK(again->sites[i].data.files == r->config.sites[i].data.files);
  }
  CHECK(again->sites[0].data.dir == (fs::path(dir.path()) / "sites/corpus").string());
  CHECK(again->sites[2].data.dir == "/abs/c");
}

TEST_CASE("overrides: a relative FPLD probe directory stays where the campaign file meant", "[unit][config]") {
  // lowband run saves the merged campaign under RUN_DIR; a relative
  // fpld.probes.dir must not then resolve against RUN_DIR.
  TempDir dir;
  std::ifstream in(std::string(LOWBAND_SOURCE_DIR) + "/configs/fpld.yaml");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string absolute = "dir: /usr/share/games/fortunes, files: [fortunes,";
  REQUIRE(text.find(absolute) != std::string::npos);
  text.replace(text.find(absolute), std::string("dir: /usr/share/games/fortunes").size(), "dir: public/text");
  const std::string path = dir.Write("campaigns/fpld.yaml", text);
  auto r = LoadCampaignWithOverrides(path, {});
  INFO((r.ok() ? "" : r.status().message()));
  REQUIRE(r.ok());
  const std::string expected = (fs::path(dir.path()) / "campaigns/public/text").string();
  CHECK(r->config.fpld.probes.dir == expected);
  const std::string saved = dir.Write("run/deep/campaign.yaml", r->yaml);
  auto again = LoadCampaignFile(saved);
  REQUIRE(again.ok());
  CHECK(again->fpld.probes.dir == expected);
}

TEST_CASE("overrides: the quickstart as the SparseLoCo benchmark runs it", "[unit][config]") {
  const std::string quickstart = std::string(LOWBAND_SOURCE_DIR) + "/configs/quickstart.yaml";
  auto r = LoadCampaignWithOverrides(quickstart, {"codec={name: sparseloco, topk: 64, error_feedback: 0.95}",
                                                  "outer_optimizer={name: sgd, lr: 1, momentum: 0}",
                                                  "quorum.aggregation=mean", "output.run_dir=/tmp/x"});
  INFO((r.ok() ? "" : r.status().message()));
  REQUIRE(r.ok());
  auto c = ParseCampaignYaml(r->yaml, "merged.yaml");
  REQUIRE(c.ok());
  CHECK(c->name == "quickstart");
  CHECK(c->codec.kind == CodecKind::kSparseLoCo);
  CHECK(c->codec.topk == 64);
  CHECK(c->outer.kind == OuterOptimizerKind::kSgd);
  CHECK(c->outer.lr == 1.0);
  CHECK(c->outer.momentum == 0.0);
  CHECK(c->quorum.aggregation == AggregationRule::kMeanAll);
  CHECK(c->training.rounds == 36);
  CHECK(c->training.inner_steps == 5);
  CHECK(c->training.inner.warmup_steps == 20);
  CHECK(c->output.run_dir == "/tmp/x");
  CHECK(c->sites.size() == 3);
  CHECK(c->quorum.expected_workers == 3);
}

}  // namespace
}  // namespace lowband

namespace lowband {
namespace {

TEST_CASE("config: checkpoint and metrics settings are read and checked", "[unit][config]") {
  auto ok = ParseCampaignYaml(
      "campaign: {name: c}\ncheckpoint: {every: 5, keep: 2}\nnetwork: {metrics: \"127.0.0.1:9464\"}\n", "c.yaml");
  REQUIRE(ok.ok());
  CHECK(ok->checkpoint.every == 5);
  CHECK(ok->checkpoint.keep == 2);
  CHECK(ok->network.metrics == "127.0.0.1:9464");
  const std::string err = CampaignError(
      "campaign: {name: c}\ncheckpoint: {every: 0, keep: 5000}\nnetwork: {metrics: \"host-without-port\"}\n"
      "sites:\n  - site: {name: a, metrics: \"*:70000\"}\n    data: {dir: /data/a}\n");
  CHECK_THAT(err, Contains("c.yaml:2: checkpoint.every: 0 is out of range"));
  CHECK_THAT(err, Contains("checkpoint.keep: 5000 is out of range"));
  CHECK_THAT(err, Contains("c.yaml:3: network.metrics: 'host-without-port' is not HOST:PORT"));
  CHECK_THAT(err, Contains("sites[0].site.metrics: '*:70000' is not HOST:PORT"));
}

}  // namespace
}  // namespace lowband

namespace lowband {
namespace {

TEST_CASE("config: pipeline settings are read and checked against the model", "[unit][config]") {
  auto ok = ParseCampaignYaml(
      "campaign: {name: c}\nmodel: {layers: 4, d_model: 128}\ntraining: {batch_size: 16}\n"
      "pipeline: {stages: 2, replicas: 2, ratio: 128, wire_dtype: fp16, split: [1, 3], micro_batches: 4}\n"
      "quorum: {expected_workers: 4}\n",
      "c.yaml");
  INFO((ok.ok() ? "" : ok.status().message()));
  REQUIRE(ok.ok());
  CHECK(ok->pipeline.stages == 2);
  CHECK(ok->pipeline.replicas == 2);
  CHECK(ok->pipeline.ratio == 128);
  CHECK(ok->pipeline.wire_dtype == WireDtype::kFp16);
  CHECK(ok->pipeline.split == std::vector<int>{1, 3});
  CHECK(ok->pipeline.micro_batches == 4);
  const std::string err = CampaignError(
      "campaign: {name: c}\nmodel: {layers: 4, d_model: 128}\ntraining: {batch_size: 16}\n"
      "pipeline: {stages: 2, ratio: 3, wire_dtype: int4, split: [1, 1], micro_batches: 5}\n"
      "quorum: {expected_workers: 3}\n");
  CHECK_THAT(err, Contains("pipeline.ratio: 3 does not divide d_model 128"));
  CHECK_THAT(err, Contains("pipeline.wire_dtype: unknown value 'int4' (allowed: fp32, bf16, fp16)"));
  CHECK_THAT(err, Contains("pipeline.split: 2 entries summing to 2"));
  CHECK_THAT(err, Contains("pipeline.micro_batches: 5 does not divide training.batch_size 16"));
  CHECK_THAT(err, Contains("quorum.expected_workers: 3, but the pipeline has 2 stages x 1 replicas"));
  CHECK_THAT(CampaignError("campaign: {name: c}\nmodel: {layers: 2}\npipeline: {stages: 3}\nquorum: {expected_workers: 3}\n"),
             Contains("pipeline.stages: 3 stages for 2 transformer blocks"));
  CHECK(ok->pipeline.schedule == "1f1b");
  CHECK(ok->pipeline.link_mbit == 0);
  const std::string more = CampaignError(
      "campaign: {name: c}\nmodel: {layers: 4, d_model: 128}\ntraining: {batch_size: 16}\n"
      "pipeline: {stages: 2, schedule: zigzag, link_mbit: -1, peer_timeout_ms: 5}\n"
      "quorum: {expected_workers: 2}\n"
      "sites:\n  - site: {name: a}\n    data: {dir: /tmp}\n"
      "  - site: {name: b, peer: 'tcp://10.0.0.1:5601'}\n    data: {dir: /tmp}\n");
  CHECK_THAT(more, Contains("pipeline.schedule: unknown value 'zigzag' (allowed: gpipe, 1f1b)"));
  CHECK_THAT(more, Contains("pipeline.link_mbit: is -1"));
  CHECK_THAT(more, Contains("pipeline.peer_timeout_ms"));
  CHECK_THAT(more, Contains("sites[0].site.peer: missing"));
  CHECK_THAT(more, Contains("sites[1].site.peer: plain TCP between stages on a non-loopback endpoint"));
}


// ---------------------------------------------------------------------------
// Multi-rank sites

// Parses a site file expected to fail and returns the error message.
std::string SiteError(const std::string& yaml) {
  auto r = ParseSiteYaml(yaml, "s.yaml");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  return r.status().message();
}

SiteConfig Site(const std::string& yaml) {
  auto r = ParseSiteYaml(yaml, "s.yaml");
  INFO((r.ok() ? "" : r.status().message()));
  REQUIRE(r.ok());
  return *r;
}

TEST_CASE("config: multi-rank site settings are read with their defaults", "[unit][config]") {
  const SiteConfig one = Site("site: {name: s}\ndata: {dir: /d}\n");
  CHECK(one.ranks == 1);
  CHECK(one.rendezvous.empty());
  CHECK(one.local_ranks.empty());
  CHECK(one.rank_timeout_s == 300);

  const SiteConfig two = Site("site:\n  name: s\n  ranks: 2\ndata: {dir: /d}\n");
  CHECK(two.ranks == 2);
  CHECK(two.rendezvous.empty());
  CHECK(two.local_ranks.empty());
  CHECK(two.rank_timeout_s == 300);

  // One host of a site spread over two: the same file on each, local_ranks differs.
  const SiteConfig multi = Site(
      "site:\n  name: s\n  device: cuda\n  ranks: 4\n  rendezvous: 10.0.0.5:29500\n  local_ranks: [0, 1]\n"
      "  rank_timeout_s: 60\ndata: {dir: /d}\n");
  CHECK(multi.ranks == 4);
  CHECK(multi.device == "cuda");
  CHECK(multi.rendezvous == "10.0.0.5:29500");
  CHECK(multi.local_ranks == std::vector<int>{0, 1});
  CHECK(multi.rank_timeout_s == 60);

  for (const char* rdv : {"localhost:29500", "node-1.cluster.example:29500", "gpu7:1", "192.168.1.20:65535"}) {
    INFO(rdv);
    CHECK(Site(std::string("site: {name: s, ranks: 2, rendezvous: \"") + rdv + "\"}\ndata: {dir: /d}\n").rendezvous ==
          rdv);
  }
  // Every rank on this host: no rendezvous needed.
  CHECK(Site("site: {name: s, ranks: 2, local_ranks: [1, 0]}\ndata: {dir: /d}\n").local_ranks ==
        std::vector<int>{1, 0});
  CHECK(Site("site: {name: s, ranks: 2, local_ranks: }\ndata: {dir: /d}\n").local_ranks.empty());
  // cuda:N stays fine for one rank.
  CHECK(Site("site: {name: s, device: \"cuda:1\"}\ndata: {dir: /d}\n").device == "cuda:1");

  // Inline campaign sites share the same body.
  const CampaignConfig c = Campaign(
      "campaign: {name: x}\nsites:\n  - site: {name: a, ranks: 2, rank_timeout_s: 30}\n    data: {dir: /d}\n"
      "  - site: {name: b}\n    data: {dir: /d}\n");
  REQUIRE(c.sites.size() == 2);
  CHECK(c.sites[0].ranks == 2);
  CHECK(c.sites[0].rank_timeout_s == 30);
  CHECK(c.sites[1].ranks == 1);
}

TEST_CASE("config: multi-rank site errors name the key and its line", "[unit][config]") {
  // ranks and rank_timeout_s ranges.
  std::string msg = SiteError("site:\n  name: s\n  ranks: 0\n  rank_timeout_s: 0\ndata: {dir: /d}\n");
  CHECK_THAT(msg, Contains("s.yaml:3: site.ranks: 0 is out of range (allowed: 1 to 64)"));
  CHECK_THAT(msg, Contains("s.yaml:4: site.rank_timeout_s: 0 is out of range (allowed: 1 to 86400)"));
  CHECK(LineCount(msg) == 2);
  msg = SiteError("site:\n  name: s\n  ranks: 65\n  rank_timeout_s: 86401\ndata: {dir: /d}\n");
  CHECK_THAT(msg, Contains("s.yaml:3: site.ranks: 65 is out of range (allowed: 1 to 64)"));
  CHECK_THAT(msg, Contains("s.yaml:4: site.rank_timeout_s: 86401 is out of range (allowed: 1 to 86400)"));

  // rendezvous forms.
  for (const char* rdv : {"10.0.0.5", "10.0.0.5:0", "10.0.0.5:70000", ":29500", "bad host:1", "999.1.1.1:29500",
                          "10.0.0:29500", "[::1]:29500", "tcp://10.0.0.5:29500", "host_name:1", "-x:1", "a..b:1",
                          "*:29500", "10.0.0.5:29x"}) {
    INFO(rdv);
    msg = SiteError(std::string("site:\n  name: s\n  ranks: 2\n  rendezvous: \"") + rdv + "\"\ndata: {dir: /d}\n");
    CHECK_THAT(msg, Contains(std::string("s.yaml:4: site.rendezvous: '") + rdv + "' is not HOST:PORT (allowed: "
                                                                                  "IPV4:PORT, localhost:PORT or "
                                                                                  "HOSTNAME:PORT with PORT 1 to 65535, "
                                                                                  "or empty)"));
    CHECK(LineCount(msg) == 1);
  }

  // A rendezvous or local_ranks with one rank.
  CHECK(SiteError("site:\n  name: s\n  rendezvous: 10.0.0.5:29500\ndata: {dir: /d}\n") ==
        "s.yaml:3: site.rendezvous: a rendezvous needs ranks >= 2 (allowed: empty with site.ranks 1)");
  CHECK(SiteError("site:\n  name: s\n  ranks: 1\n  local_ranks: [0]\ndata: {dir: /d}\n") ==
        "s.yaml:4: site.local_ranks: local_ranks needs ranks >= 2 (allowed: empty with site.ranks 1)");

  // local_ranks entries: in [0, ranks), each once; the line is the entry's.
  msg = SiteError(
      "site:\n  name: s\n  ranks: 2\n  rendezvous: 10.0.0.5:29500\n  local_ranks:\n    - 0\n    - 2\n    - -1\n"
      "data: {dir: /d}\n");
  CHECK_THAT(msg, Contains("s.yaml:7: site.local_ranks[1]: rank 2 is out of range for ranks 2 (allowed: 0 to 1)"));
  CHECK_THAT(msg, Contains("s.yaml:8: site.local_ranks[2]: rank -1 is out of range for ranks 2 (allowed: 0 to 1)"));
  CHECK(LineCount(msg) == 2);
  msg = SiteError("site:\n  name: s\n  ranks: 3\n  local_ranks:\n    - 0\n    - 1\n    - 1\n    - 2\ndata: {dir: /d}\n");
  CHECK(msg == "s.yaml:7: site.local_ranks[2]: rank 1 repeats (first at local_ranks[1]) (allowed: each rank at most "
               "once)");

  // Ranks on another host need the rendezvous; reported at the site section
  // when the key is absent.
  msg = SiteError("site:\n  name: s\n  ranks: 4\n  local_ranks: [0, 1]\ndata: {dir: /d}\n");
  CHECK(msg == "s.yaml:1: site.rendezvous: ranks on other hosts need a rendezvous address (local_ranks lists 2 of 4 "
               "ranks) (allowed: HOST:PORT of rank 0's store, reachable from every host of the site)");
  // A repeat does not cover a missing rank.
  CHECK_THAT(SiteError("site: {name: s, ranks: 2, local_ranks: [0, 0]}\ndata: {dir: /d}\n"),
             Contains("s.yaml:1: site.rendezvous: ranks on other hosts need a rendezvous address (local_ranks lists "
                      "1 of 2 ranks)"));

  // cuda:N with several ranks: local rank i takes cuda:i.
  CHECK(SiteError("site:\n  name: s\n  ranks: 2\n  device: \"cuda:1\"\ndata: {dir: /d}\n") ==
        "s.yaml:4: site.device: 'cuda:1' with ranks 2: local rank i takes cuda:i (allowed: cpu or cuda when "
        "site.ranks >= 2)");
  // A pipeline stage runs on one rank.
  CHECK(SiteError("site:\n  name: s\n  ranks: 2\n  peer: \"tcp://127.0.0.1:5601\"\ndata: {dir: /d}\n") ==
        "s.yaml:3: site.ranks: 2 ranks with site.peer: a pipeline stage runs on one rank (allowed: 1 when site.peer "
        "is set)");

  // Wrong types are reported once, without follow-on errors.
  CHECK(SiteError("site:\n  name: s\n  ranks: two\n  rendezvous: 10.0.0.5:29500\ndata: {dir: /d}\n") ==
        "s.yaml:3: site.ranks: expected an integer, got 'two'");
  CHECK(SiteError("site:\n  name: s\n  ranks: 4\n  local_ranks: [0, x]\ndata: {dir: /d}\n") ==
        "s.yaml:4: site.local_ranks[1]: expected an integer rank, got 'x'");
  CHECK(SiteError("site:\n  name: s\n  ranks: 4\n  local_ranks: 3\ndata: {dir: /d}\n") ==
        "s.yaml:4: site.local_ranks: expected a list of rank numbers, got '3'");
  CHECK(SiteError("site:\n  name: s\n  ranks: 2\n  rendezvous: [a]\ndata: {dir: /d}\n") ==
        "s.yaml:4: site.rendezvous: expected a string, got a list of 1 item");
  CHECK(SiteError("site: {name: s, rank_timeout_s: 1.5}\ndata: {dir: /d}\n") ==
        "s.yaml:1: site.rank_timeout_s: expected an integer, got '1.5'");

  // Inline campaign sites: the same checks, under sites[i].
  msg = CampaignError(
      "campaign: {name: x}\nsites:\n  - site:\n      name: a\n      ranks: 2\n      device: \"cuda:0\"\n"
      "      local_ranks: [1]\n    data: {dir: /d}\n");
  CHECK_THAT(msg, Contains("c.yaml:6: sites[0].site.device: 'cuda:0' with ranks 2: local rank i takes cuda:i"));
  CHECK_THAT(msg, Contains("c.yaml:3: sites[0].site.rendezvous: ranks on other hosts need a rendezvous address"));
  CHECK(LineCount(msg) == 2);
}

TEST_CASE("config: multi-rank settings in a site file referenced from a campaign", "[unit][config]") {
  TempDir dir;
  dir.Write("sites/a.yaml", "site:\n  name: a\n  ranks: 2\n  rendezvous: \"10.0.0.5\"\ndata: {dir: corpus}\n");
  const std::string path = dir.Write("c.yaml", "campaign: {name: x}\nsites:\n  - file: sites/a.yaml\n");
  auto r = LoadCampaignFile(path);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message() == dir.Path("sites/a.yaml") +
                                    ":4: site.rendezvous: '10.0.0.5' is not HOST:PORT (allowed: IPV4:PORT, "
                                    "localhost:PORT or HOSTNAME:PORT with PORT 1 to 65535, or empty)");
}

TEST_CASE("overrides: multi-rank site keys can be set on the command line", "[unit][config]") {
  const CampaignConfig c = Campaign(Merge(kBase, {"sites[0].site.ranks=2", "sites[0].site.rank_timeout_s=30",
                                                  "sites[1].site.ranks=4", "sites[1].site.rendezvous=10.0.0.5:29500",
                                                  "sites[1].site.local_ranks=[2, 3]"}));
  REQUIRE(c.sites.size() == 2);
  CHECK(c.sites[0].ranks == 2);
  CHECK(c.sites[0].rank_timeout_s == 30);
  CHECK(c.sites[0].local_ranks.empty());
  CHECK(c.sites[1].ranks == 4);
  CHECK(c.sites[1].rendezvous == "10.0.0.5:29500");
  CHECK(c.sites[1].local_ranks == std::vector<int>{2, 3});

  TempDir dir;
  const std::string path = dir.Write("c.yaml", kBase);
  auto error = [&](const std::vector<std::string>& sets) {
    auto r = LoadCampaignWithOverrides(path, sets);
    REQUIRE_FALSE(r.ok());
    return r.status().message();
  };
  CHECK(error({"sites[0].site.ranks=65"}) == "--set sites[0].site.ranks: 65 is out of range (allowed: 1 to 64)");
  CHECK(error({"sites[0].site.rendezvous=10.0.0.5:29500"}) ==
        "--set sites[0].site.rendezvous: a rendezvous needs ranks >= 2 (allowed: empty with site.ranks 1)");
  CHECK(error({"sites[0].site.ranks=2", "sites[0].site.rendezvous=10.0.0.5:29500",
               "sites[0].site.local_ranks=[0, 2]"}) ==
        "--set sites[0].site.local_ranks: sites[0].site.local_ranks[1]: rank 2 is out of range for ranks 2 "
        "(allowed: 0 to 1)");
}

}  // namespace
}  // namespace lowband
