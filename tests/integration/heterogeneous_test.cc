// Multi-process tests of heterogeneous sites (issue 7): the real binaries on
// loopback, one site slowed down with site.slowdown.
#include <catch2/catch.hpp>
#include <chrono>
#include <sstream>
#include <string>

#include "base/process.h"
#include "tests/fakes/temp_dir.h"
#include "tests/integration/helpers.h"

namespace lowband {
namespace {

using namespace itest;  // NOLINT
using std::chrono::milliseconds;

// The per-site object of a metrics record ("sites":{"site-a":{...},...}).
std::string SiteRecord(const std::string& record, const std::string& site) {
  const auto at = record.find("\"" + site + "\":{");
  if (at == std::string::npos) return "";
  const auto end = record.find('}', at);
  return record.substr(at, end - at + 1);
}

// A 3-site campaign of the tiny model on loopback at `port`, port+1: the
// training map's lines (indented), extra top-level lines, and the sites.
std::string Campaign(const std::string& name, int port, int rounds, const std::string& training,
                     const std::string& extra, const std::string& sites) {
  std::ostringstream y;
  y << "campaign: {name: " << name << ", seed: 7, rounds: " << rounds << "}\n"
    << "model: {layers: 2, d_model: 64, heads: 4, context: 32, vocab: 256}\n"
    << "training:\n  batch_size: 8\n" << training
    << "  inner_optimizer: {name: adamw, lr: 3.0e-3, warmup_steps: 5}\n"
    << "outer_optimizer: {name: sgd, lr: 1.0, momentum: 0.0}\n"
    << "codec: {name: sparseloco, topk: 64, error_feedback: 0.95}\n"
    << "quorum: {expected_workers: 3, min_workers: 3, round_deadline_s: 120, start_timeout_s: 60, "
       "aggregation: mean_of_choosers}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1
    << "\", heartbeat_interval_ms: 200, heartbeat_timeout_ms: 5000}\n"
    << extra << sites;
  return y.str();
}

// Runs `lowband run` on the campaign text in `dir`; the metrics records.
std::vector<std::string> RunCampaign(TempDir& dir, const std::string& text, std::string* campaign_path) {
  const std::string campaign = dir.Path("campaign.yaml");
  *campaign_path = campaign;
  WriteFile(campaign, text);
  const std::string metrics = dir.Path("metrics.jsonl");
  Subprocess run = Start({kBin + "/lowband", "run", campaign, "--run-dir", dir.path().string(), "--metrics-out",
                          metrics},
                         dir.Path("run.out"));
  auto code = run.WaitFor(milliseconds(300000));
  INFO(ReadFile(dir.Path("run.out")));
  REQUIRE(code.has_value());
  REQUIRE(*code == 0);
  return Lines(ReadFile(metrics));
}

// The three test sites, site-c emulating hardware 6x slower per step.
std::string SlowSiteC() {
  std::string y = ThreeSitesYaml();
  const std::string from = "{name: site-c}";
  y.replace(y.find(from), from.size(), "{name: site-c, slowdown: 6}");
  return y;
}

TEST_CASE("adaptive steps: a slowed site gets a smaller H and rounds do not wait for it", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const int rounds = 4, inner_steps = 16;
  std::string campaign;
  auto records = RunCampaign(
      dir,
      Campaign("it-hetero", port, rounds,
               "  inner_steps: " + std::to_string(inner_steps) +
                   "\n  eval_batches: 4\n  adaptive_steps: {enabled: true}\n",
               "", SlowSiteC()),
      &campaign);
  REQUIRE(records.size() == static_cast<size_t>(rounds + 1));
  for (size_t r = 1; r < records.size(); ++r) {
    INFO(records[r]);
    const std::string a = SiteRecord(records[r], "site-a"), c = SiteRecord(records[r], "site-c");
    REQUIRE_FALSE(a.empty());
    REQUIRE_FALSE(c.empty());
    // Every site finishes and counts, weighted by the tokens it trained on.
    CHECK(Field(records[r], "contributors") == "3");
    CHECK(Field(records[r], "stragglers") == "0");
    CHECK(Field(records[r], "digests_match") == "true");
    const int h_a = std::stoi(Field(a, "inner_steps")), h_c = std::stoi(Field(c, "inner_steps"));
    const double step_a = std::stod(Field(a, "step_time_ms")), step_c = std::stod(Field(c, "step_time_ms"));
    CHECK(std::stoull(Field(c, "tokens")) == static_cast<uint64_t>(h_c) * 8 * 32);
    if (r < 2) continue;  // from round 2 on, every site's own step time is known
    // The slowed site (6x per step) is given fewer steps...
    CHECK(step_c > 3 * step_a);
    CHECK(h_c < h_a);
    CHECK(h_c <= inner_steps / 3);
    // ...so the training phase lasts well under what the straggler would
    // need for the full H: the round does not follow it.
    const double train_s = std::stod(Field(records[r], "train_s"));
    CHECK(train_s < 0.6 * inner_steps * step_c / 1000.0);
  }
  CHECK(std::stod(Field(records.back(), "val_loss")) < std::stod(Field(records.front(), "val_loss")));
  CHECK(ProcessesMentioning(campaign) == 0);
}

}  // namespace
}  // namespace lowband

namespace lowband {
namespace {

using namespace itest;  // NOLINT

TEST_CASE("parablock: each site trains and uploads one block a round, cyclic per worker", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const int rounds = 4;
  std::string campaign;
  auto records = RunCampaign(dir,
                             Campaign("it-parablock", port, rounds, "  inner_steps: 12\n  eval_batches: 4\n",
                                      "parablock: {blocks: 2, schedule: cyclic, assignment: per_worker}\n",
                                      ThreeSitesYaml()),
                             &campaign);
  REQUIRE(records.size() == static_cast<size_t>(rounds + 1));
  const char* sites[3] = {"site-a", "site-b", "site-c"};
  for (size_t r = 1; r < records.size(); ++r) {
    INFO(records[r]);
    CHECK(Field(records[r], "contributors") == "3");
    CHECK(Field(records[r], "digests_match") == "true");
    for (int i = 0; i < 3; ++i) {
      const std::string s = SiteRecord(records[r], sites[i]);
      REQUIRE_FALSE(s.empty());
      // Site i (by name) trains block (r - 1 + i) mod 2.
      CHECK(Field(s, "block") == std::to_string((r - 1 + static_cast<size_t>(i)) % 2));
      CHECK(std::stoull(Field(s, "upload_bytes")) > 0);
    }
    // Compression is against the block the upload covers: still > 100x.
    CHECK(std::stod(Field(records[r], "compression_ratio")) > 100);
  }
  CHECK(std::stod(Field(records.back(), "val_loss")) < 0.9 * std::stod(Field(records.front(), "val_loss")));
  CHECK(ProcessesMentioning(campaign) == 0);
}

}  // namespace
}  // namespace lowband

namespace lowband {
namespace {

using namespace itest;  // NOLINT

TEST_CASE("overlap: overlapped block rounds on loopback learn and keep replicas identical", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const int rounds = 5;
  std::string campaign;
  auto records = RunCampaign(
      dir,
      Campaign("it-overlap", port, rounds, "  inner_steps: 8\n  eval_batches: 2\n  overlap: true\n",
               "parablock: {blocks: 2}\n", ThreeSitesYaml()),
      &campaign);
  REQUIRE(records.size() == static_cast<size_t>(rounds + 1));
  for (size_t r = 1; r < records.size(); ++r) {
    INFO(records[r]);
    // Every site's upload counts in every round (none refused as stale),
    // and every replica holds the coordinator's parameters after each.
    CHECK(Field(records[r], "contributors") == "3");
    CHECK(Field(records[r], "digests_match") == "true");
    CHECK(Field(records[r], "stragglers") == "0");
  }
  CHECK(std::stod(Field(records.back(), "val_loss")) < 0.9 * std::stod(Field(records.front(), "val_loss")));
  CHECK(ReadFile(dir.Path("coordinator.log")).find("level=ERROR") == std::string::npos);
  CHECK(ProcessesMentioning(campaign) == 0);
}

}  // namespace
}  // namespace lowband

namespace lowband {
namespace {

using namespace itest;  // NOLINT

TEST_CASE("personalization: per-cluster layers on loopback, validation loss per cluster", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const int rounds = 3;
  std::string campaign;
  auto records = RunCampaign(
      dir,
      Campaign("it-personal", port, rounds, "  inner_steps: 8\n  eval_batches: 2\n",
               "personalization: {tensors: [blocks.1., ln_f.], clusters: {x: [site-a], y: [site-b, site-c]}}\n",
               ThreeSitesYaml()),
      &campaign);
  REQUIRE(records.size() == static_cast<size_t>(rounds + 1));
  for (size_t r = 0; r < records.size(); ++r) {
    INFO(records[r]);
    // Each site's replica matches its cluster's view on the coordinator.
    CHECK(Field(records[r], "digests_match") == "true");
    const auto at = records[r].find("\"cluster_val_loss\":");
    REQUIRE(at != std::string::npos);
    CHECK(std::stod(Field(records[r].substr(at), "x")) > 0);
    CHECK(std::stod(Field(records[r].substr(at), "y")) > 0);
  }
  CHECK(std::stod(Field(records.back(), "val_loss")) < std::stod(Field(records.front(), "val_loss")));
  CHECK(ProcessesMentioning(campaign) == 0);
}

TEST_CASE("personalization: a prefix that names no tensor stops the coordinator with exit 78", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  WriteFile(dir.Path("campaign.yaml"),
            Campaign("it-personal-bad", port, 1, "  inner_steps: 2\n", "personalization: {tensors: [head.]}\n", ""));
  Subprocess coord = Start({kBin + "/lowband-coordinator", "--campaign", dir.Path("campaign.yaml"), "--run-dir",
                            dir.path().string()},
                           dir.Path("coordinator.out"));
  auto code = coord.WaitFor(milliseconds(60000));
  REQUIRE(code.has_value());
  CHECK(*code == 78);
  CHECK(ReadFile(dir.Path("coordinator.out")).find("no tensor of the model starts with 'head.'") != std::string::npos);
}

}  // namespace
}  // namespace lowband
