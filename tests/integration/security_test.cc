// CurveZMQ end to end: keys from `lowband keys generate`, a campaign whose
// worker and control endpoints admit only allow-listed keys, a stranger and
// an impostor refused and logged, operators with and without a key.
#include <signal.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <sstream>

#include "base/process.h"
#include "tests/fakes/wait.h"
#include "tests/integration/helpers.h"

namespace lowband {
namespace {

using namespace itest;  // NOLINT
using std::chrono::milliseconds;

void GenerateKey(const TempDir& dir, const std::string& name, const std::string& sub) {
  Subprocess p = Start({kBin + "/lowband", "keys", "generate", name, "--dir", dir.Path(sub)}, dir.Path("keys.out"));
  REQUIRE(p.WaitFor(milliseconds(10000)) == std::optional<int>(0));
}

std::string SiteFile(int port, const std::string& name, const std::string& key, const std::string& server_key) {
  std::ostringstream y;
  y << "site: {name: " << name << ", coordinator: \"tcp://127.0.0.1:" << port << "\", key: \"" << key
    << "\", server_key: \"" << server_key << "\"}\n"
    << "data: {dir: /usr/share/games/fortunes, files: [computers], validation_fraction: 0.1}\n";
  return y.str();
}

TEST_CASE("security: a CurveZMQ campaign admits only allow-listed sites and operators", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  for (const char* site : {"site-a", "site-b", "stranger"}) GenerateKey(dir, site, "keys/sites-secret");
  GenerateKey(dir, "coordinator", "keys");
  GenerateKey(dir, "alice", "keys/ops-secret");
  struct stat st;
  REQUIRE(::stat(dir.Path("keys/coordinator.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  // Allow-lists: the two sites and one operator; the stranger's key is in none.
  std::filesystem::create_directories(dir.Path("keys/sites"));
  std::filesystem::create_directories(dir.Path("keys/operators"));
  for (const char* site : {"site-a", "site-b"}) {
    std::filesystem::copy_file(dir.Path(std::string("keys/sites-secret/") + site + ".pub"),
                               dir.Path(std::string("keys/sites/") + site + ".pub"));
  }
  std::filesystem::copy_file(dir.Path("keys/ops-secret/alice.pub"), dir.Path("keys/operators/alice.pub"));

  std::ostringstream y;
  y << "campaign: {name: secure, seed: 3, rounds: 30}\n"
    << "model: {layers: 1, d_model: 32, heads: 2, context: 16}\n"
    << "training: {inner_steps: 2, batch_size: 4, eval_batches: 1}\n"
    << "quorum: {expected_workers: 2, min_workers: 2, start_timeout_s: 60}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1
    << "\", heartbeat_interval_ms: 200, heartbeat_timeout_ms: 5000, security: curve, server_key: keys/coordinator.key, "
       "site_keys: keys/sites, operator_keys: keys/operators}\n"
    << "output: {run_dir: \"" << dir.Path("run") << "\", metrics_file: \"" << dir.Path("run/metrics.jsonl") << "\"}\n";
  const std::string campaign = dir.Write("campaign.yaml", y.str());
  const std::string server_pub = dir.Path("keys/coordinator.pub");
  auto site_key = [&](const std::string& s) { return dir.Path("keys/sites-secret/" + s + ".key"); };

  // A secret key that others can read stops the coordinator with exit 78.
  {
    const std::string loose = dir.Path("keys/loose.key");
    std::filesystem::copy_file(dir.Path("keys/coordinator.key"), loose);
    ::chmod(loose.c_str(), 0644);
    std::string text = ReadFile(campaign);
    text.replace(text.find("keys/coordinator.key"), 20, "keys/loose.key");
    const std::string bad = dir.Write("loose.yaml", text);
    Subprocess co = Start({kBin + "/lowband-coordinator", "--campaign", bad}, dir.Path("loose.out"));
    CHECK(co.WaitFor(milliseconds(20000)) == std::optional<int>(78));
    CHECK(ReadFile(dir.Path("loose.out")).find("chmod 600") != std::string::npos);
  }

  Subprocess co = Start({kBin + "/lowband-coordinator", "--campaign", campaign, "--progress"}, dir.Path("co.out"));
  // The stranger (unknown key) and an impostor (site-a's key, calling itself site-b) start first.
  Subprocess stranger = Start({kBin + "/lowband-worker", "--config",
                               dir.Write("stranger.yaml", SiteFile(port, "stranger", site_key("stranger"), server_pub))},
                              dir.Path("stranger.out"));
  Subprocess impostor = Start({kBin + "/lowband-worker", "--config",
                               dir.Write("impostor.yaml", SiteFile(port, "site-b", site_key("site-a"), server_pub))},
                              dir.Path("impostor.out"));
  // No unauthenticated operator gets an answer; a site's key is not an operator's.
  // Asked once the control socket is up, so that the refusal is the ZAP
  // handler's (logged) and not a timeout of a coordinator still starting.
  REQUIRE(testing::WaitUntil(
      [&] { return ReadFile(dir.Path("co.out")).find("coordinator listening") != std::string::npos; },
      std::chrono::seconds(60)));
  auto anonymous = Ctl(dir, port, {"status"}, 1500);
  CHECK(anonymous.first == 69);
  CHECK(anonymous.second.find("--key") != std::string::npos);
  CHECK(Ctl(dir, port, {"status", "--key", site_key("site-a"), "--server-key", server_pub}, 1500).first == 69);
  auto alice = [&](std::vector<std::string> words) {
    words.insert(words.end(), {"--key", dir.Path("keys/ops-secret/alice.key"), "--server-key", server_pub});
    return Ctl(dir, port, words, 3000);
  };
  // Hold the campaign at its first round so that the checks below see it running.
  auto paused = alice({"round", "pause"});
  INFO(paused.second << "\n" << ReadFile(dir.Path("co.out")));
  REQUIRE(paused.first == 0);

  Subprocess a = Start({kBin + "/lowband-worker", "--config",
                        dir.Write("a.yaml", SiteFile(port, "site-a", site_key("site-a"), server_pub))},
                       dir.Path("a.out"));
  Subprocess b = Start({kBin + "/lowband-worker", "--config",
                        dir.Write("b.yaml", SiteFile(port, "site-b", site_key("site-b"), server_pub))},
                       dir.Path("b.out"));
  std::string workers;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    auto st = alice({"status", "--json"});
    if (Field(st.second, "phase") == "held") break;
    co.Poll();
    if (!co.running()) break;
  }
  workers = alice({"workers", "--json"}).second;
  INFO(workers);
  CHECK(workers.find("\"site\":\"site-a\",\"state\":\"joined\"") != std::string::npos);
  CHECK(workers.find("\"site\":\"site-b\",\"state\":\"joined\"") != std::string::npos);
  CHECK(workers.find("stranger") == std::string::npos);
  REQUIRE(alice({"round", "resume"}).first == 0);

  auto code = co.WaitFor(milliseconds(120000));
  REQUIRE(code == std::optional<int>(0));
  for (Subprocess* w : {&a, &b}) CHECK(w->WaitFor(milliseconds(20000)) == std::optional<int>(0));
  const std::string log = ReadFile(dir.Path("co.out"));
  CHECK(log.find("msg=\"peer refused\" domain=workers") != std::string::npos);       // the stranger
  CHECK(log.find("msg=\"peer refused\" domain=control") != std::string::npos);       // site-a's key on control
  CHECK(log.find("key belongs to another site") != std::string::npos);               // the impostor
  for (const auto& line : Lines(ReadFile(dir.Path("run/metrics.jsonl")))) CHECK(Field(line, "digests_match") == "true");
  // Neither intruder ever heard from the campaign.
  CHECK(ReadFile(dir.Path("stranger.out")).find("welcomed") == std::string::npos);
  CHECK(ReadFile(dir.Path("impostor.out")).find("welcomed") == std::string::npos);
  for (Subprocess* p : {&stranger, &impostor}) {
    p->Signal(SIGTERM);
    CHECK(p->WaitFor(milliseconds(10000)).has_value());
  }
}

}  // namespace
}  // namespace lowband
