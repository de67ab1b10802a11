// FC-RAG on real processes (issue 8): three sites with private BM25 stores;
// the campaign's own calibration, then `lowband calibrate` and
// `lowband predict` against the running coordinator.
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>

#include "base/process.h"
#include "tests/fakes/temp_dir.h"
#include "tests/integration/helpers.h"
#include "tests/fakes/wait.h"

namespace lowband {
namespace {

using namespace itest;  // NOLINT
using std::chrono::milliseconds;

std::string FcragCampaign(int port, const std::string& run_dir) {
  std::ostringstream y;
  y << "campaign: {name: it-fcrag, seed: 3, rounds: 0}\n"
    << "model: {layers: 1, d_model: 32, heads: 2, context: 32, vocab: 256}\n"
    << "training: {inner_steps: 1, batch_size: 4, eval_batches: 1}\n"
    << "fcrag: {labels: [computers, science, literature, wisdom, humorists, food], score_bits: 8, summary_bits: 8, "
       "score_max: 4, smoothing: 0.1, alpha: 0.1, trials: 5, serve: true}\n"
    << "quorum: {expected_workers: 3, min_workers: 3, round_deadline_s: 60, start_timeout_s: 60}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1
    << "\", heartbeat_interval_ms: 200, heartbeat_timeout_ms: 10000}\n"
    << "output: {run_dir: \"" << run_dir << "\"}\n"
    << "sites:\n";
  const char* files[3] = {"[computers, science]", "[literature, wisdom]", "[humorists, food]"};
  for (int i = 0; i < 3; ++i) {
    y << "  - site: {name: site-" << static_cast<char>('a' + i) << "}\n"
      << "    data: {dir: /usr/share/games/fortunes, files: " << files[i] << ", validation_fraction: 0.2}\n";
  }
  return y.str();
}

double Number(const std::string& json, const std::string& key) { return std::stod(Field(json, key)); }

// The bound holds for the expected coverage; a mean over a few splits may
// fall short of it by sampling error: allow three standard errors.
bool CoversBound(const std::string& json) {
  const double se = Number(json, "coverage_sd") / std::sqrt(Number(json, "trials"));
  return Number(json, "coverage_mean") >= Number(json, "lower") - 3 * se - 1e-9;
}

TEST_CASE("lowband run: an FC-RAG campaign calibrates, covers, and answers calibrate and predict", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string run_dir = dir.Path("run");
  const std::string campaign = dir.Path("campaign.yaml");
  WriteFile(campaign, FcragCampaign(port, run_dir));
  Subprocess run = Start({kBin + "/lowband", "run", campaign}, dir.Path("run.out"));
  testing::WaitUntil([&] { return std::filesystem::exists(run_dir + "/fcrag.json") || run.Poll(); },
                     milliseconds(60000), milliseconds(100));
  INFO(ReadFile(dir.Path("run.out")));
  REQUIRE(std::filesystem::exists(run_dir + "/fcrag.json"));

  // The campaign's own calibration: 5 splits at alpha 0.1.
  const std::string own = ReadFile(run_dir + "/fcrag.json");
  INFO(own);
  CHECK(Field(own, "trials") == "5");
  CHECK(Field(own, "sites") == "3");
  CHECK(Number(own, "queries") > 300);
  CHECK(CoversBound(own));
  CHECK(Number(own, "coverage_mean") >= 0.85);
  CHECK(Number(own, "set_size_mean") < 6.0);  // the sets carry information

  // A looser alpha gives smaller sets on the same splits.
  auto [code, out] = Ctl(dir, port, {"calibrate", "--json", "--alpha", "0.3", "--trials", "5"}, 20000);
  INFO(out);
  REQUIRE(code == 0);
  CHECK(Number(out, "alpha") == 0.3);
  CHECK(CoversBound(out));
  CHECK(Number(out, "set_size_mean") < Number(own, "set_size_mean"));

  auto [pcode, pout] = Ctl(dir, port, {"predict", "--json", "Real programmers write in assembly and debug with a soldering iron"}, 20000);
  INFO(pout);
  REQUIRE(pcode == 0);
  CHECK(pout.find("\"set\":[") != std::string::npos);
  CHECK(Number(pout, "alpha") == 0.3);

  // Bad requests get a clear refusal and change nothing.
  auto [bcode, bout] = Ctl(dir, port, {"calibrate", "--alpha", "1.5"});
  CHECK(bcode != 0);
  CHECK(bout.find("alpha") != std::string::npos);

  auto [acode, aout] = Ctl(dir, port, {"campaign", "abort"});
  CHECK(acode == 0);
  auto code_run = run.WaitFor(milliseconds(30000));
  REQUIRE(code_run.has_value());
  CHECK(ProcessesMentioning(campaign) == 0);
}

}  // namespace
}  // namespace lowband
