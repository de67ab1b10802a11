// Multi-process test of a pipeline campaign (ResBM, issue 6): the real
// lowband, lowband-coordinator and lowband-worker binaries on loopback, two
// stage workers exchanging activations directly over ZeroMQ.
#include <catch2/catch.hpp>
#include <chrono>
#include <sstream>
#include <string>

#include "common/process.h"
#include "tests/fakes/temp_dir.h"
#include "tests/integration/helpers.h"

namespace lowband {
namespace {

using namespace itest;  // NOLINT
using std::chrono::milliseconds;

// Two stages x one replica of a tiny model; coordinator at port, port+1;
// stage links at port+2, port+3, throttled to 4 Mbit/s (ThrottledTransport).
std::string TinyPipelineCampaign(int port, int rounds) {
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
    << "\", heartbeat_interval_ms: 200, heartbeat_timeout_ms: 5000}\n"
    << "sites:\n";
  const char* files[2] = {"[computers, science]", "[literature, wisdom]"};
  for (int i = 0; i < 2; ++i) {
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
    if (r > 0) {
      CHECK(Field(records[r], "contributors") == "2");
      CHECK(std::stoull(Field(records[r], "bytes_up")) > 0);
    }
  }
  const double first = std::stod(Field(records.front(), "val_loss"));
  const double last = std::stod(Field(records.back(), "val_loss"));
  INFO("val_loss " << first << " -> " << last);
  CHECK(last < 0.9 * first);
  CHECK(ProcessesMentioning(campaign) == 0);
}

}  // namespace
}  // namespace lowband
