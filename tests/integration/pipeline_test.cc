// Multi-process test of a pipeline campaign (ResBM, issue 6): the real
// lowband, lowband-coordinator and lowband-worker binaries on loopback, two
// stage workers exchanging activations directly over ZeroMQ.
#include <catch2/catch.hpp>
#include <csignal>
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

// Two stages x one replica of a tiny model; coordinator at port, port+1;
// stage links at port+2, port+3, throttled to 4 Mbit/s (ThrottledTransport).
std::string TinyPipelineCampaign(int port, int rounds, int heartbeat_timeout_ms = 5000, int spare_sites = 0) {
  std::ostringstream y;
  y << "campaign: {name: it-pipeline, seed: 7, rounds: " << rounds << "}\n"
    << "model: {layers: 2, d_model: 64, heads: 4, context: 32, vocab: 256}\n"
    << "training:\n  inner_steps: 10\n  batch_size: 8\n  eval_batches: 4\n"
    << "  inner_optimizer: {name: adamw, lr: 3.0e-3, warmup_steps: 5}\n"
    << "outer_optimizer: {name: nesterov, lr: 0.7, momentum: 0.9}\n"
    << "codec: {name: sparseloco, topk: 512, error_feedback: 0.95}\n"
    << "pipeline: {stages: 2, replicas: 1, ratio: 16, wire_dtype: bf16, micro_batches: 4, schedule: 1f1b, "
       "peer_timeout_ms: 20000, link_mbit: 4}\n"
    << "quorum: {expected_workers: 2, min_workers: 2, round_deadline_s: 120, start_timeout_s: 60}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1
    << "\", heartbeat_interval_ms: 200, heartbeat_timeout_ms: " << heartbeat_timeout_ms << "}\n"
    << "sites:\n";
  const char* files[3] = {"[computers, science]", "[literature, wisdom]", "[people, work]"};
  for (int i = 0; i < 2 + spare_sites; ++i) {
    y << "  - site: {name: stage-" << static_cast<char>('a' + i) << ", peer: \"tcp://127.0.0.1:" << port + 2 + i
      << "\"}\n"
      << "    data: {dir: /usr/share/games/fortunes, files: " << files[i] << ", validation_fraction: 0.1}\n";
  }
  return y.str();
}

TEST_CASE("lowband run: a two-stage pipeline campaign on loopback learns", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string campaign = dir.Path("campaign.yaml");
  const int rounds = 4;
  WriteFile(campaign, TinyPipelineCampaign(port, rounds));
  const std::string metrics = dir.Path("metrics.jsonl");
  Subprocess run = Start({kBin + "/lowband", "run", campaign, "--run-dir", dir.path().string(), "--metrics-out", metrics},
                         dir.Path("run.out"));
  auto code = run.WaitFor(milliseconds(300000));
  INFO(ReadFile(dir.Path("run.out")));
  REQUIRE(code.has_value());
  REQUIRE(*code == 0);

  auto records = Lines(ReadFile(metrics));
  REQUIRE(records.size() == static_cast<size_t>(rounds + 1));  // round 0 (initial evaluation) + every round
  for (size_t r = 0; r < records.size(); ++r) {
    INFO(records[r]);
    CHECK(Field(records[r], "round") == std::to_string(r));
    CHECK(Field(records[r], "digests_match") == "true");
    // The coordinator's ledger per boundary, from the stages' reports.
    const auto at = records[r].find("\"boundaries\":");
    REQUIRE(at != std::string::npos);
    const std::string boundary = records[r].substr(at);
    CHECK(Field(boundary, "boundary") == "0");
    CHECK(std::stoull(Field(boundary, "eval_bytes")) > 0);  // the evaluation of round r's parameters
    if (r > 0) {
      CHECK(Field(records[r], "contributors") == "2");
      CHECK(std::stoull(Field(records[r], "bytes_up")) > 0);
      // 10 inner steps x 4 micro-batches each way; labels once per step.
      CHECK(Field(boundary, "forward_messages") == "40");
      CHECK(Field(boundary, "backward_messages") == "40");
      CHECK(std::stoull(Field(boundary, "labels_bytes")) > 0);
      // Ratio 16 in bf16 is 32x fewer tensor bytes than d_model in fp32;
      // a micro-batch is 64 tokens, so the header frames weigh in.
      const double ratio = std::stod(Field(boundary, "compression_ratio"));
      CHECK(ratio > 16.0);
      CHECK(ratio < 32.0);
    }
  }
  const double first = std::stod(Field(records.front(), "val_loss"));
  const double last = std::stod(Field(records.back(), "val_loss"));
  INFO("val_loss " << first << " -> " << last);
  CHECK(last < 0.9 * first);
  CHECK(ProcessesMentioning(campaign) == 0);
}

// A stage worker SIGKILLed mid-campaign: its neighbour's step fails (the
// re-welcome cancels its wait), the coordinator frees the slot when the
// worker goes silent, a replacement site takes it, the replica is welcomed
// again with the new endpoint, and the campaign finishes every round.
TEST_CASE("pipeline: a lost stage worker is replaced and the campaign goes on", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string campaign = dir.Path("campaign.yaml");
  const int rounds = 6;
  std::string yaml = TinyPipelineCampaign(port, rounds, /*heartbeat_timeout_ms=*/1500, /*spare_sites=*/1);
  yaml += "output: {run_dir: \"" + dir.path().string() + "\", metrics_file: \"" + dir.Path("metrics.jsonl") + "\"}\n";
  WriteFile(campaign, yaml);
  Subprocess co = Start({kBin + "/lowband-coordinator", "--campaign", campaign, "--progress"}, dir.Path("co.out"));
  Subprocess a = Start({kBin + "/lowband-worker", "--campaign", campaign, "--site", "stage-a"}, dir.Path("a.out"));
  Subprocess b = Start({kBin + "/lowband-worker", "--campaign", campaign, "--site", "stage-b"}, dir.Path("b.out"));
  // Wait until round 2 is recorded, then kill stage-b's worker.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (Lines(ReadFile(dir.Path("metrics.jsonl"))).size() < 3 && std::chrono::steady_clock::now() < deadline) {
    REQUIRE(!co.WaitFor(milliseconds(50)).has_value());
  }
  REQUIRE(Lines(ReadFile(dir.Path("metrics.jsonl"))).size() >= 3);
  b.Signal(SIGKILL);
  REQUIRE(b.WaitFor(milliseconds(10000)).has_value());
  Subprocess c = Start({kBin + "/lowband-worker", "--campaign", campaign, "--site", "stage-c"}, dir.Path("c.out"));
  auto code = co.WaitFor(milliseconds(240000));
  const std::string co_log = ReadFile(dir.Path("co.out"));
  INFO(co_log);
  INFO(ReadFile(dir.Path("a.out")));
  INFO(ReadFile(dir.Path("c.out")));
  REQUIRE(code == std::optional<int>(0));
  CHECK(a.WaitFor(milliseconds(20000)) == std::optional<int>(0));
  CHECK(c.WaitFor(milliseconds(20000)) == std::optional<int>(0));
  CHECK(co_log.find("worker lost") != std::string::npos);
  CHECK(co_log.find("site=stage-c") != std::string::npos);
  auto records = Lines(ReadFile(dir.Path("metrics.jsonl")));
  REQUIRE(records.size() == static_cast<size_t>(rounds + 1));
  for (size_t r = 0; r < records.size(); ++r) {
    INFO(records[r]);
    CHECK(Field(records[r], "round") == std::to_string(r));
  }
  // The replacement trained: the last round has both stages' uploads, and
  // every replica's digest matched the coordinator's.
  CHECK(Field(records.back(), "contributors") == "2");
  CHECK(Field(records.back(), "digests_match") == "true");
  CHECK(std::stod(Field(records.back(), "val_loss")) < std::stod(Field(records.front(), "val_loss")));
}

}  // namespace
}  // namespace lowband
