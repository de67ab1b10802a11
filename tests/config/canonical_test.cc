// CanonicalSettings: every setting that shapes a campaign's result is in the
// text under its documented key, no operational one is, and the text of a
// fixed config does not drift.
#include "config/canonical.h"

#include <catch2/catch.hpp>

#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace lowband {
namespace {

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream is(s);
  for (std::string line; std::getline(is, line);) out.push_back(line);
  return out;
}

std::string KeyOf(const std::string& line) { return line.substr(0, line.find('=')); }

// A campaign with one local site and one personalisation cluster, so that
// their keys are in the text too. Settings need not be valid together:
// CanonicalSettings does not check them.
CampaignConfig Base() {
  CampaignConfig c;
  c.name = "base";
  SiteConfig site;
  site.name = "site-a";
  site.data.dir = "/data/a";
  site.data.files = {"a.txt"};
  c.sites.push_back(site);
  c.personalization.tensors = {"blocks.0."};
  c.personalization.clusters = {{"eu", {"site-a"}}};
  return c;
}

struct Mutation {
  std::string key;  // the one line the change must show up in
  std::function<void(CampaignConfig&)> change;
};

// One change for every field that is in (config/canonical.h), each to a
// value that differs from Base().
std::vector<Mutation> SemanticMutations() {
  return {
      {"campaign.name", [](CampaignConfig& c) { c.name = "other"; }},
      {"campaign.seed", [](CampaignConfig& c) { c.training.seed += 1; }},
      {"model.layers", [](CampaignConfig& c) { c.model.layers += 1; }},
      {"model.d_model", [](CampaignConfig& c) { c.model.d_model *= 2; }},
      {"model.heads", [](CampaignConfig& c) { c.model.heads += 1; }},
      {"model.context", [](CampaignConfig& c) { c.model.context += 1; }},
      {"model.vocab", [](CampaignConfig& c) { c.model.vocab += 1; }},
      {"training.inner_steps", [](CampaignConfig& c) { c.training.inner_steps += 1; }},
      {"training.batch_size", [](CampaignConfig& c) { c.training.batch_size += 1; }},
      {"training.eval_batches", [](CampaignConfig& c) { c.training.eval_batches += 1; }},
      {"training.overlap", [](CampaignConfig& c) { c.training.overlap = !c.training.overlap; }},
      {"training.precision", [](CampaignConfig& c) { c.training.precision = Precision::kBf16; }},
      {"training.eval_every", [](CampaignConfig& c) { c.training.eval_every = 5; }},
      {"training.inner_optimizer.lr", [](CampaignConfig& c) { c.training.inner.lr *= 2; }},
      {"training.inner_optimizer.betas", [](CampaignConfig& c) { c.training.inner.beta1 = 0.8; }},
      {"training.inner_optimizer.betas", [](CampaignConfig& c) { c.training.inner.beta2 = 0.99; }},
      {"training.inner_optimizer.eps", [](CampaignConfig& c) { c.training.inner.eps = 1e-6; }},
      {"training.inner_optimizer.weight_decay", [](CampaignConfig& c) { c.training.inner.weight_decay = 0; }},
      {"training.inner_optimizer.grad_clip", [](CampaignConfig& c) { c.training.inner.grad_clip = 0.5; }},
      {"training.inner_optimizer.warmup_steps", [](CampaignConfig& c) { c.training.inner.warmup_steps = 7; }},
      {"training.adaptive_steps.enabled", [](CampaignConfig& c) { c.training.adaptive.enabled = true; }},
      {"training.adaptive_steps.round_time_s", [](CampaignConfig& c) { c.training.adaptive.round_time_s = 12.5; }},
      {"training.adaptive_steps.min_inner_steps", [](CampaignConfig& c) { c.training.adaptive.min_inner_steps = 2; }},
      {"training.adaptive_steps.max_inner_steps", [](CampaignConfig& c) { c.training.adaptive.max_inner_steps = 20; }},
      {"outer_optimizer.name", [](CampaignConfig& c) { c.outer.kind = OuterOptimizerKind::kSgd; }},
      {"outer_optimizer.lr", [](CampaignConfig& c) { c.outer.lr = 0.5; }},
      {"outer_optimizer.momentum", [](CampaignConfig& c) { c.outer.momentum = 0.5; }},
      {"codec.name", [](CampaignConfig& c) { c.codec.kind = CodecKind::kSparseLoCo; }},
      {"codec.topk", [](CampaignConfig& c) { c.codec.topk = 32; }},
      {"codec.error_feedback", [](CampaignConfig& c) { c.codec.error_feedback = 0.9; }},
      {"codec.downlink", [](CampaignConfig& c) { c.codec.downlink = CodecKind::kSparseLoCo; }},
      {"codec.downlink", [](CampaignConfig& c) { c.codec.downlink = CodecKind::kSparse2Bit; }},
      {"codec.downlink_budget", [](CampaignConfig& c) { c.codec.downlink_budget = 2.0; }},
      {"quorum.aggregation", [](CampaignConfig& c) { c.quorum.aggregation = AggregationRule::kMeanChoosers; }},
      {"quorum.weighting", [](CampaignConfig& c) { c.quorum.weighting = AggregationWeighting::kUniform; }},
      {"quorum.max_norm_ratio", [](CampaignConfig& c) { c.quorum.max_norm_ratio = 0; }},
      {"pipeline.stages", [](CampaignConfig& c) { c.pipeline.stages = 2; }},
      {"pipeline.replicas", [](CampaignConfig& c) { c.pipeline.replicas = 2; }},
      {"pipeline.ratio", [](CampaignConfig& c) { c.pipeline.ratio = 64; }},
      {"pipeline.wire_dtype", [](CampaignConfig& c) { c.pipeline.wire_dtype = WireDtype::kFp16; }},
      {"pipeline.wire_dtype", [](CampaignConfig& c) { c.pipeline.wire_dtype = WireDtype::kFp32; }},
      {"pipeline.split",
       [](CampaignConfig& c) {
         c.pipeline.split = {3, 1};
       }},
      {"pipeline.micro_batches", [](CampaignConfig& c) { c.pipeline.micro_batches = 8; }},
      {"pipeline.schedule", [](CampaignConfig& c) { c.pipeline.schedule = "gpipe"; }},
      {"parablock.blocks", [](CampaignConfig& c) { c.parablock.blocks = 2; }},
      {"parablock.split",
       [](CampaignConfig& c) {
         c.parablock.split = {1, 3};
       }},
      {"parablock.schedule", [](CampaignConfig& c) { c.parablock.random = true; }},
      {"parablock.assignment", [](CampaignConfig& c) { c.parablock.per_worker = false; }},
      {"personalization.tensors", [](CampaignConfig& c) { c.personalization.tensors.push_back("head."); }},
      {"personalization.clusters[0].name", [](CampaignConfig& c) { c.personalization.clusters[0].first = "us"; }},
      {"personalization.clusters[0].sites",
       [](CampaignConfig& c) { c.personalization.clusters[0].second.push_back("site-b"); }},
      {"fpld.enabled", [](CampaignConfig& c) { c.fpld.enabled = true; }},
      {"fpld.probes.dir", [](CampaignConfig& c) { c.fpld.probes.dir = "/probes"; }},
      {"fpld.probes.files", [](CampaignConfig& c) { c.fpld.probes.files = {"p.txt"}; }},
      {"fpld.probes.validation_fraction", [](CampaignConfig& c) { c.fpld.probes.validation_fraction = 0.2; }},
      {"fpld.contexts", [](CampaignConfig& c) { c.fpld.contexts += 1; }},
      {"fpld.positions", [](CampaignConfig& c) { c.fpld.positions += 1; }},
      {"fpld.bits", [](CampaignConfig& c) { c.fpld.bits = 0; }},
      {"fpld.clip", [](CampaignConfig& c) { c.fpld.clip = 4; }},
      {"fpld.topk", [](CampaignConfig& c) { c.fpld.topk = 16; }},
      {"fpld.student_steps", [](CampaignConfig& c) { c.fpld.student_steps += 1; }},
      {"fpld.student_lr", [](CampaignConfig& c) { c.fpld.student_lr = 1e-3; }},
      {"fpld.student_batch", [](CampaignConfig& c) { c.fpld.student_batch += 1; }},
      {"fpld.student_eval_batches", [](CampaignConfig& c) { c.fpld.student_eval_batches += 1; }},
      {"fpld.exact_reference", [](CampaignConfig& c) { c.fpld.exact_reference = true; }},
      {"fcrag.enabled", [](CampaignConfig& c) { c.fcrag.enabled = true; }},
      {"fcrag.labels",
       [](CampaignConfig& c) {
         c.fcrag.labels = {"x", "y"};
       }},
      {"fcrag.retrieve_k", [](CampaignConfig& c) { c.fcrag.retrieve_k += 1; }},
      {"fcrag.smoothing", [](CampaignConfig& c) { c.fcrag.smoothing = 0.2; }},
      {"fcrag.score_bits", [](CampaignConfig& c) { c.fcrag.score_bits = 4; }},
      {"fcrag.score_max", [](CampaignConfig& c) { c.fcrag.score_max = 2; }},
      {"fcrag.summary_bits", [](CampaignConfig& c) { c.fcrag.summary_bits = 4; }},
      {"fcrag.alpha", [](CampaignConfig& c) { c.fcrag.alpha = 0.05; }},
      {"fcrag.calibration_fraction", [](CampaignConfig& c) { c.fcrag.calibration_fraction = 0.25; }},
      {"fcrag.trials", [](CampaignConfig& c) { c.fcrag.trials += 1; }},
      {"fcrag.min_chars", [](CampaignConfig& c) { c.fcrag.min_chars += 1; }},
      {"fcrag.max_chars", [](CampaignConfig& c) { c.fcrag.max_chars += 1; }},
      {"sites[0].site.name", [](CampaignConfig& c) { c.sites[0].name = "site-z"; }},
      {"sites[0].site.ranks", [](CampaignConfig& c) { c.sites[0].ranks = 2; }},
      {"sites[0].site.model.layers", [](CampaignConfig& c) { c.sites[0].model.layers = 2; }},
      {"sites[0].site.model.d_model", [](CampaignConfig& c) { c.sites[0].model.d_model = 64; }},
      {"sites[0].site.model.heads", [](CampaignConfig& c) { c.sites[0].model.heads = 2; }},
      {"sites[0].site.model.context", [](CampaignConfig& c) { c.sites[0].model.context = 32; }},
      {"sites[0].site.model.vocab", [](CampaignConfig& c) { c.sites[0].model.vocab = 256; }},
      {"sites[0].data.dir", [](CampaignConfig& c) { c.sites[0].data.dir = "/data/b"; }},
      {"sites[0].data.files", [](CampaignConfig& c) { c.sites[0].data.files = {"b.txt"}; }},
      {"sites[0].data.validation_fraction", [](CampaignConfig& c) { c.sites[0].data.validation_fraction = 0.3; }},
  };
}

// One change for every field that is deliberately out.
std::vector<std::function<void(CampaignConfig&)>> OperationalChanges() {
  return {
      [](CampaignConfig& c) { c.training.rounds += 10; },
      [](CampaignConfig& c) { c.quorum.expected_workers = 5; },
      [](CampaignConfig& c) { c.quorum.min_workers = 3; },
      [](CampaignConfig& c) { c.quorum.round_deadline_s = 60; },
      [](CampaignConfig& c) { c.quorum.start_timeout_s = 30; },
      [](CampaignConfig& c) { c.pipeline.link_mbit = 100; },
      [](CampaignConfig& c) { c.pipeline.peer_timeout_ms = 5000; },
      [](CampaignConfig& c) { c.fcrag.serve = true; },
      [](CampaignConfig& c) { c.network.bind = "tcp://127.0.0.1:6000"; },
      [](CampaignConfig& c) { c.network.control = "tcp://127.0.0.1:6001"; },
      [](CampaignConfig& c) { c.network.heartbeat_interval_ms = 250; },
      [](CampaignConfig& c) { c.network.heartbeat_timeout_ms = 2000; },
      [](CampaignConfig& c) { c.network.security = "curve"; },
      [](CampaignConfig& c) { c.network.server_key = "/keys/server.key"; },
      [](CampaignConfig& c) { c.network.site_keys = "/keys/sites"; },
      [](CampaignConfig& c) { c.network.operator_keys = "/keys/operators"; },
      [](CampaignConfig& c) { c.network.max_message_bytes = 1 << 20; },
      [](CampaignConfig& c) { c.network.metrics = "127.0.0.1:9100"; },
      [](CampaignConfig& c) { c.network.dashboard_token = "/keys/token"; },
      [](CampaignConfig& c) { c.output.run_dir = "runs/elsewhere"; },
      [](CampaignConfig& c) { c.output.metrics_file = "m.jsonl"; },
      [](CampaignConfig& c) { c.checkpoint.every = 5; },
      [](CampaignConfig& c) { c.checkpoint.keep = 9; },
      [](CampaignConfig& c) { c.source = "/elsewhere/campaign.yaml"; },
      [](CampaignConfig& c) { c.sites[0].coordinator = "tcp://127.0.0.1:7000"; },
      [](CampaignConfig& c) { c.sites[0].device = "cuda"; },
      [](CampaignConfig& c) { c.sites[0].threads = 8; },
      [](CampaignConfig& c) { c.sites[0].metrics = "127.0.0.1:9200"; },
      [](CampaignConfig& c) { c.sites[0].key = "/keys/a.key"; },
      [](CampaignConfig& c) { c.sites[0].server_key = "/keys/server.pub"; },
      [](CampaignConfig& c) { c.sites[0].peer = "tcp://127.0.0.1:5601"; },
      [](CampaignConfig& c) { c.sites[0].slowdown = 2; },
      [](CampaignConfig& c) { c.sites[0].link_mbit = 10; },
      [](CampaignConfig& c) { c.sites[0].rendezvous = "10.0.0.1:29500"; },
      [](CampaignConfig& c) { c.sites[0].local_ranks = {0}; },
      [](CampaignConfig& c) { c.sites[0].rank_timeout_s = 60; },
      [](CampaignConfig& c) { c.sites[0].source = "/elsewhere/site.yaml"; },
  };
}

TEST_CASE("canonical settings: every semantic field changes exactly its own line", "[unit][config]") {
  const CampaignConfig base = Base();
  const std::vector<std::string> before = Lines(CanonicalSettings(base));
  for (const Mutation& m : SemanticMutations()) {
    CAPTURE(m.key);
    CampaignConfig c = base;
    m.change(c);
    const std::vector<std::string> after = Lines(CanonicalSettings(c));
    // The set of keys is fixed for a fixed number of sites and clusters, so
    // the texts line up and exactly one line, the mutated field's, differs.
    REQUIRE(after.size() == before.size());
    std::vector<std::string> changed;
    for (size_t i = 0; i < before.size(); ++i) {
      CHECK(KeyOf(after[i]) == KeyOf(before[i]));
      if (after[i] != before[i]) changed.push_back(KeyOf(after[i]));
    }
    CHECK(changed == std::vector<std::string>{m.key});
  }
}

TEST_CASE("canonical settings: every key of the text has a mutation in the test above", "[unit][config]") {
  // The other direction: a field added to the text must get a mutation (and
  // so a documented key) too. The counts and the version are structural.
  std::set<std::string> mutated;
  for (const Mutation& m : SemanticMutations()) mutated.insert(m.key);
  std::set<std::string> written;
  for (const std::string& line : Lines(CanonicalSettings(Base()))) {
    const std::string key = KeyOf(line);
    if (key != "lowband.settings" && key != "sites.count" && key != "personalization.clusters.count") {
      CHECK(written.insert(key).second);  // no key twice
    }
  }
  CHECK(written == mutated);
}

TEST_CASE("canonical settings: operational settings leave the text unchanged", "[unit][config]") {
  const CampaignConfig base = Base();
  const std::string before = CanonicalSettings(base);
  const auto changes = OperationalChanges();
  for (size_t i = 0; i < changes.size(); ++i) {
    CAPTURE(i);
    CampaignConfig c = base;
    changes[i](c);
    CHECK(CanonicalSettings(c) == before);
  }
}

TEST_CASE("canonical settings: more or other sites and clusters change the text", "[unit][config]") {
  const CampaignConfig base = Base();
  const std::string before = CanonicalSettings(base);
  CampaignConfig more_sites = base;
  more_sites.sites.push_back(base.sites[0]);
  more_sites.sites[1].name = "site-b";
  CHECK(CanonicalSettings(more_sites) != before);
  CHECK_THAT(CanonicalSettings(more_sites), Catch::Matchers::Contains("\nsites.count=2\n") &&
                                                Catch::Matchers::Contains("\nsites[1].site.name=\"site-b\"\n"));
  CampaignConfig no_sites = base;
  no_sites.sites.clear();
  CHECK(CanonicalSettings(no_sites) != before);
  CampaignConfig more_clusters = base;
  more_clusters.personalization.clusters.push_back({"us", {"site-b"}});
  CHECK_THAT(CanonicalSettings(more_clusters), Catch::Matchers::Contains("\npersonalization.clusters.count=2\n"));
  // The order of sites and of clusters is part of the campaign.
  CampaignConfig swapped = more_sites;
  std::swap(swapped.sites[0], swapped.sites[1]);
  CHECK(CanonicalSettings(swapped) != CanonicalSettings(more_sites));
}

TEST_CASE("canonical settings: a llama model writes its architecture's keys, each on its own line", "[unit][config]") {
  CampaignConfig base = Base();
  const std::string gpt2 = CanonicalSettings(base);
  CHECK(gpt2.find("model.arch") == std::string::npos);  // GPT-2 campaigns keep their old fingerprint
  base.model.arch = ModelArch::kLlama;
  const std::vector<std::string> before = Lines(CanonicalSettings(base));
  const std::set<std::string> keys = [&] {
    std::set<std::string> k;
    for (const auto& line : before) k.insert(KeyOf(line));
    return k;
  }();
  for (const char* key : {"model.arch", "model.kv_heads", "model.ffn_hidden", "model.rope_theta", "model.norm_eps"}) {
    CHECK(keys.count(key) == 1);
  }
  const std::vector<Mutation> mutations = {
      {"model.kv_heads", [](CampaignConfig& c) { c.model.kv_heads = 2; }},
      {"model.ffn_hidden", [](CampaignConfig& c) { c.model.ffn_hidden = 64; }},
      {"model.rope_theta", [](CampaignConfig& c) { c.model.rope_theta = 5e5; }},
      {"model.norm_eps", [](CampaignConfig& c) { c.model.norm_eps = 1e-6; }},
  };
  for (const Mutation& m : mutations) {
    CAPTURE(m.key);
    CampaignConfig c = base;
    m.change(c);
    const std::vector<std::string> after = Lines(CanonicalSettings(c));
    REQUIRE(after.size() == before.size());
    std::vector<std::string> changed;
    for (size_t i = 0; i < before.size(); ++i) {
      if (after[i] != before[i]) changed.push_back(KeyOf(after[i]));
    }
    CHECK(changed == std::vector<std::string>{m.key});
  }
}

TEST_CASE("canonical settings: the text of a fixed config is stable", "[unit][config]") {
  CampaignConfig c;  // the defaults of config/config.h
  const std::string text = CanonicalSettings(c);
  CHECK(text == CanonicalSettings(c));
  const std::vector<std::string> lines = Lines(text);
  REQUIRE(lines.size() > 10);
  CHECK(lines[0] == "lowband.settings=1");
  CHECK(lines[1] == "campaign.name=\"campaign\"");
  CHECK(lines[2] == "campaign.seed=1234");
  CHECK(lines[3] == "model.layers=4");
  CHECK(lines.back() == "sites.count=0");
  CHECK(text.back() == '\n');
  const std::set<std::string> all(lines.begin(), lines.end());
  for (const char* expected : {
           "training.inner_optimizer.lr=0.0030000000000000001",
           "training.inner_optimizer.betas=[0.90000000000000002,0.94999999999999996]",
           "training.inner_optimizer.eps=1e-08",
           "training.adaptive_steps.enabled=false",
           "outer_optimizer.name=nesterov",
           "outer_optimizer.lr=0.69999999999999996",
           "codec.name=dense_fp32",
           "codec.topk=64",
           "codec.downlink=sparse_fp32",
           "codec.downlink_budget=1.5",
           "quorum.aggregation=mean",
           "quorum.weighting=tokens",
           "quorum.max_norm_ratio=10",
           "pipeline.wire_dtype=bf16",
           "pipeline.split=[]",
           "pipeline.schedule=\"1f1b\"",
           "parablock.schedule=cyclic",
           "parablock.assignment=per_worker",
           "personalization.tensors=[]",
           "personalization.clusters.count=0",
           "fpld.enabled=false",
           "fpld.probes.dir=\"\"",
           "fpld.probes.validation_fraction=0.10000000000000001",
           "fcrag.labels=[]",
           "fcrag.alpha=0.10000000000000001",
       }) {
    CAPTURE(expected);
    CHECK(all.count(expected) == 1);
  }
}

TEST_CASE("canonical settings: strings are quoted and escaped, numbers exact", "[unit][config]") {
  CampaignConfig c;
  c.name = "a\"b\\c\nd=e";
  c.fcrag.labels = {"x,y", "z]"};
  c.pipeline.split = {3, 1};
  c.training.seed = 18446744073709551615ull;
  c.training.inner.lr = 0.1 + 0.2;  // 0.30000000000000004, not 0.3
  const std::set<std::string> all = [&] {
    const std::vector<std::string> lines = Lines(CanonicalSettings(c));
    return std::set<std::string>(lines.begin(), lines.end());
  }();
  CHECK(all.count("campaign.name=\"a\\\"b\\\\c\\x0ad=e\"") == 1);
  CHECK(all.count("fcrag.labels=[\"x,y\",\"z]\"]") == 1);
  CHECK(all.count("pipeline.split=[3,1]") == 1);
  CHECK(all.count("campaign.seed=18446744073709551615") == 1);
  CHECK(all.count("training.inner_optimizer.lr=0.30000000000000004") == 1);
  CampaignConfig d = c;
  d.training.inner.lr = 0.3;
  CHECK(CanonicalSettings(d) != CanonicalSettings(c));
}

}  // namespace
}  // namespace lowband
