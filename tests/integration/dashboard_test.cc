// The operator dashboard in a real browser (issue 9): Debian's headless
// chromium, driven over the DevTools protocol by tests/browser/
// dashboard_check.js, loads the live dashboard of a running loopback
// campaign, reads what its loss chart shows, types the operator token,
// clicks "pause" and waits for the page to show the campaign paused, then
// saves a screenshot. The chart's numbers are checked against the
// campaign's own metrics file, and the pause against `lowband status`.
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <sstream>
#include <string>

#include "base/process.h"
#include "tests/fakes/temp_dir.h"
#include "tests/integration/helpers.h"

namespace lowband {
namespace {

using namespace itest;  // NOLINT
using std::chrono::milliseconds;

TEST_CASE("dashboard: a headless browser sees the campaign's real numbers, pauses it and takes a screenshot",
          "[integration]") {
  INFO("needs chromium and nodejs (scripts/setup installs them)");
  REQUIRE(std::system("command -v chromium > /dev/null && command -v node > /dev/null") == 0);
  TempDir dir;
  const int port = FreePortBase();
  const int http_port = port + 2;
  const std::string run_dir = dir.Path("run");
  const std::string token = "browser-test-operator-token-42";
  std::ostringstream y;
  y << "campaign: {name: it-dashboard, seed: 9, rounds: 400}\n"
    << "model: {layers: 1, d_model: 32, heads: 2, context: 32, vocab: 256}\n"
    << "training:\n  inner_steps: 2\n  batch_size: 4\n  eval_batches: 1\n"
    << "codec: {name: sparseloco, topk: 64}\n"
    << "outer_optimizer: {name: sgd, lr: 1.0, momentum: 0.0}\n"
    << "quorum: {expected_workers: 3, min_workers: 3, round_deadline_s: 60, start_timeout_s: 60}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1
    << "\", heartbeat_interval_ms: 200, heartbeat_timeout_ms: 10000, metrics: \"127.0.0.1:" << http_port
    << "\", dashboard_token: \"" << dir.Write("token", token + "\n") << "\"}\n"
    << "output: {run_dir: \"" << run_dir << "\", metrics_file: \"" << run_dir << "/metrics.jsonl\"}\n"
    << ThreeSitesYaml();
  const std::string campaign = dir.Write("campaign.yaml", y.str());
  Subprocess run = Start({kBin + "/lowband", "run", campaign}, dir.Path("run.out"));
  std::string status = WaitStatus(dir, port, [](const std::string& s) { return CommittedRound(s) >= 3; }, run);
  INFO(ReadFile(dir.Path("run.out")));
  REQUIRE(CommittedRound(status) >= 3);

  const std::string shot = dir.Path("dashboard.png");
  Subprocess browser = Start({"/usr/bin/env", "node", std::string(LOWBAND_SOURCE_DIR) + "/tests/browser/dashboard_check.js",
                              "http://127.0.0.1:" + std::to_string(http_port) + "/", token, shot},
                             dir.Path("browser.out"));
  auto code = browser.WaitFor(milliseconds(100000));
  const std::string seen = ReadFile(dir.Path("browser.out"));
  INFO(seen);
  REQUIRE(code == std::optional<int>(0));
  CHECK(Field(seen, "paused") == "true");
  CHECK(seen.find("ok: paused") != std::string::npos);

  // The campaign really is paused, and what the chart showed is the
  // campaign's own record of that round.
  status = Ctl(dir, port, {"status", "--json"}, 1000).second;
  CHECK(Field(status, "paused") == "true");
  const auto records = Lines(ReadFile(run_dir + "/metrics.jsonl"));
  const size_t rounds = std::stoul(Field(seen, "rounds"));
  REQUIRE(rounds >= 3);
  REQUIRE(records.size() >= rounds);
  const std::string& shown = records[rounds - 1];
  INFO(shown);
  CHECK(std::stod(Field(seen, "last_val_loss")) == Approx(std::stod(Field(shown, "val_loss"))).epsilon(1e-9));
  CHECK(std::stoul(Field(seen, "loss_points")) == 2 * rounds - 1);  // validation every round, train from round 1

  const std::string png = ReadFile(shot);
  REQUIRE(png.size() > 10000);
  CHECK(png.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0);

  REQUIRE(Ctl(dir, port, {"campaign", "abort"}).first == 0);
  CHECK(run.WaitFor(milliseconds(60000)).has_value());
}

}  // namespace
}  // namespace lowband
