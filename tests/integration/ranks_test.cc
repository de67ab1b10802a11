// Multi-rank sites on loopback (docs/ranks.md): a site whose worker runs two
// CPU ranks joined by c10d Gloo trains next to single-rank sites; a rank
// that dies takes its site out of the round at once, and the restarted
// site rejoins.
#include <signal.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <sstream>
#include <thread>

#include "tests/integration/helpers.h"

namespace lowband {
namespace {

using namespace itest;  // NOLINT
using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

// site-a runs `ranks_a` ranks; site-b (and site-c when `three`) one each.
// A long heartbeat timeout: a site that leaves sooner said so itself.
std::string RanksCampaign(int port, int rounds, int ranks_a, bool three, int min_workers, const std::string& run_dir) {
  std::ostringstream y;
  y << "campaign: {name: ranks-campaign, seed: 5, rounds: " << rounds << "}\n"
    << "model: {layers: 2, d_model: 64, heads: 4, context: 32, vocab: 256}\n"
    << "training:\n  inner_steps: 6\n  batch_size: 8\n  eval_batches: 3\n"
    << "  inner_optimizer: {name: adamw, lr: 3.0e-3, warmup_steps: 5}\n"
    << "outer_optimizer: {name: nesterov, lr: 0.7, momentum: 0.9}\n"
    << "codec: {name: sparseloco, topk: 64}\n"
    << "quorum: {expected_workers: " << (three ? 3 : 2) << ", min_workers: " << min_workers
    << ", round_deadline_s: 120, start_timeout_s: 60}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1
    << "\", heartbeat_interval_ms: 200, heartbeat_timeout_ms: 30000}\n"
    << "output: {run_dir: \"" << run_dir << "\", metrics_file: \"" << run_dir << "/metrics.jsonl\"}\n"
    << "sites:\n"
    << "  - site: {name: site-a, ranks: " << ranks_a << ", rank_timeout_s: 60}\n"
    << "    data: {dir: /usr/share/games/fortunes, files: [computers, science], validation_fraction: 0.1}\n"
    << "  - site: {name: site-b}\n"
    << "    data: {dir: /usr/share/games/fortunes, files: [literature, wisdom], validation_fraction: 0.1}\n";
  if (three) {
    y << "  - site: {name: site-c}\n"
      << "    data: {dir: /usr/share/games/fortunes, files: [humorists, food], validation_fraction: 0.1}\n";
  }
  return y.str();
}

// Tokens a site reported in one metrics record ("site-a":{... "tokens":N ...}).
uint64_t SiteTokens(const std::string& record, const std::string& site) {
  const auto at = record.find("\"" + site + "\":{");
  if (at == std::string::npos) return 0;
  const std::string v = Field(record.substr(at + site.size() + 3), "tokens");
  return v.empty() ? 0 : std::stoull(v);
}

}  // namespace

TEST_CASE("ranks: a site of two Gloo ranks and a single-rank site train one model", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string run_dir = dir.Path("run");
  const std::string yaml = dir.Write("c.yaml", RanksCampaign(port, 5, 2, /*three=*/false, 2, run_dir));
  Subprocess co = Coordinator(yaml, dir.Path("co.out"));
  Subprocess a = Worker(yaml, "site-a", dir.Path("a.out"));
  Subprocess b = Worker(yaml, "site-b", dir.Path("b.out"));
  Procs guard{{&co, &a, &b}};
  auto code = co.WaitFor(milliseconds(180000));
  INFO(ReadFile(dir.Path("co.out")) << ReadFile(dir.Path("a.out")));
  REQUIRE(code == std::optional<int>(0));
  CHECK(a.WaitFor(milliseconds(20000)) == std::optional<int>(0));
  CHECK(b.WaitFor(milliseconds(20000)) == std::optional<int>(0));
  // Rank 1 ran as its own process and stopped with its site.
  const std::string log_a = ReadFile(dir.Path("a.out"));
  CHECK(log_a.find("node=site-a/rank1 msg=\"site ranks joined\"") != std::string::npos);
  CHECK(log_a.find("node=site-a/rank1 msg=\"rank stopping\" rank=1 exit=0") != std::string::npos);
  CHECK(ProcessesMentioning(yaml + " --site site-a") == 0);

  const auto lines = Lines(ReadFile(run_dir + "/metrics.jsonl"));
  REQUIRE(lines.size() == 6);  // rounds 0..5
  for (const auto& line : lines) {
    INFO(line);
    // Every rank's replica matched the coordinator's digest (each reported).
    CHECK(Field(line, "digests_match") == "true");
  }
  for (size_t r = 1; r < lines.size(); ++r) {
    INFO(lines[r]);
    CHECK(Field(lines[r], "contributors") == "2");
    // site-a's two ranks train twice the tokens of site-b's one.
    CHECK(SiteTokens(lines[r], "site-b") == 6u * 8 * 32);
    CHECK(SiteTokens(lines[r], "site-a") == 2 * SiteTokens(lines[r], "site-b"));
  }
  const double first = std::stod(Field(lines.front(), "val_loss"));
  const double last = std::stod(Field(lines.back(), "val_loss"));
  CHECK(last < first - 0.3);
}

TEST_CASE("ranks: a rank that dies takes its site out at once and the restarted site rejoins", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string run_dir = dir.Path("run");
  const std::string yaml = dir.Write("c.yaml", RanksCampaign(port, 12, 2, /*three=*/true, 2, run_dir));
  // Each commit held 300 ms (a slow disk), so that rounds are left when the
  // test pauses the campaign.
  Subprocess co = Coordinator(yaml, dir.Path("co.out"), "committed@*:sleep=300");
  Subprocess a = Worker(yaml, "site-a", dir.Path("a1.out"));
  Subprocess b = Worker(yaml, "site-b", dir.Path("b.out"));
  Subprocess c = Worker(yaml, "site-c", dir.Path("c.out"));
  Procs guard{{&co, &a, &b, &c}};

  const std::string at2 = WaitStatus(dir, port, [](const std::string& s) { return CommittedRound(s) >= 2; }, co);
  REQUIRE(CommittedRound(at2) >= 2);
  // Held, so that rounds are surely left when the site comes back.
  Pause(dir, port);
  const std::string held1 =
      WaitStatus(dir, port, [](const std::string& s) { return Field(s, "phase") == "held"; }, co);
  REQUIRE(Field(held1, "phase") == "held");
  const auto rank1 = PidsMentioning(yaml + " --site site-a --log-level info --rank 1");
  REQUIRE(rank1.size() == 1);
  const auto killed_at = SteadyClock::now();
  ::kill(rank1[0], SIGKILL);

  // Rank 0 sees its rank go, tells the coordinator and exits for a restart.
  auto a_code = a.WaitFor(milliseconds(20000));
  INFO(ReadFile(dir.Path("a1.out")));
  REQUIRE(a_code == std::optional<int>(75));
  const std::string lost = WaitWorkers(dir, port, "\"site\":\"site-a\",\"state\":\"lost\"", co);
  const double lost_after_s = std::chrono::duration<double>(SteadyClock::now() - killed_at).count();
  REQUIRE(lost.find("\"site\":\"site-a\",\"state\":\"lost\"") != std::string::npos);
  CHECK(lost_after_s < 15);  // not the 30 s heartbeat timeout
  CHECK(ReadFile(dir.Path("co.out")).find("site down: rank 1") != std::string::npos);
  CHECK(ProcessesMentioning(yaml + " --site site-a") == 0);

  // The other sites go on without it (min_workers 2).
  REQUIRE(Ctl(dir, port, {"round", "resume"}).first == 0);
  const int before = CommittedRound(held1);
  const std::string moved =
      WaitStatus(dir, port, [&](const std::string& s) { return CommittedRound(s) > before + 1; }, co);
  REQUIRE(CommittedRound(moved) > before + 1);
  Pause(dir, port);
  const std::string held =
      WaitStatus(dir, port, [](const std::string& s) { return Field(s, "phase") == "held"; }, co);
  REQUIRE(Field(held, "phase") == "held");

  // Restarted (as systemd would), the site's two ranks form again and rejoin.
  Subprocess a2 = Worker(yaml, "site-a", dir.Path("a2.out"));
  Procs guard2{{&a2}};
  const std::string back = WaitWorkers(dir, port, "\"site\":\"site-a\",\"state\":\"joined\"", co);
  REQUIRE(back.find("\"site\":\"site-a\",\"state\":\"joined\"") != std::string::npos);
  REQUIRE(Ctl(dir, port, {"round", "resume"}).first == 0);

  auto code = co.WaitFor(milliseconds(180000));
  INFO(ReadFile(dir.Path("co.out")));
  REQUIRE(code == std::optional<int>(0));
  for (Subprocess* w : {&a2, &b, &c}) CHECK(w->WaitFor(milliseconds(20000)) == std::optional<int>(0));
  const auto lines = Lines(ReadFile(run_dir + "/metrics.jsonl"));
  REQUIRE(lines.size() == 13);  // rounds 0..12, none lost
  bool three_after = false;
  for (const auto& line : lines) {
    INFO(line);
    CHECK(Field(line, "digests_match") == "true");
    const int round = std::stoi(Field(line, "round"));
    // Without site-a: its two ranks were down.
    if (round > CommittedRound(held1) + 1 && round <= CommittedRound(held)) CHECK(Field(line, "contributors") == "2");
    if (round > CommittedRound(held)) three_after |= Field(line, "contributors") == "3";
  }
  CHECK(three_after);  // site-a contributed again
  CHECK(Field(lines.back(), "contributors") == "3");
}

}  // namespace lowband

namespace lowband {

TEST_CASE("ranks: a site spread over two hosts meets at its rendezvous address", "[integration]") {
  // Two "hosts" on loopback: one worker runs rank 0 (local_ranks: [0]) and
  // hosts the TCPStore; the other is started with --rank 1, as on a second
  // machine with the same site file.
  TempDir dir;
  const int port = FreePortBase();
  const std::string run_dir = dir.Path("run");
  std::string yaml_text = RanksCampaign(port, 3, 2, /*three=*/false, 2, run_dir);
  const std::string from = "ranks: 2, rank_timeout_s: 60}";
  REQUIRE(yaml_text.find(from) != std::string::npos);
  yaml_text.replace(yaml_text.find(from), from.size(),
                    "ranks: 2, rank_timeout_s: 60, rendezvous: \"127.0.0.1:" + std::to_string(port + 2) +
                        "\", local_ranks: [0]}");
  const std::string yaml = dir.Write("c.yaml", yaml_text);
  Subprocess co = Coordinator(yaml, dir.Path("co.out"));
  Subprocess a0 = Worker(yaml, "site-a", dir.Path("a0.out"));
  Subprocess a1 = Spawn({kBin + "/lowband-worker", "--campaign", yaml, "--site", "site-a", "--rank", "1"},
                        dir.Path("a1.out"));
  Subprocess b = Worker(yaml, "site-b", dir.Path("b.out"));
  Procs guard{{&co, &a0, &a1, &b}};
  auto code = co.WaitFor(milliseconds(120000));
  INFO(ReadFile(dir.Path("co.out")) << ReadFile(dir.Path("a0.out")) << ReadFile(dir.Path("a1.out")));
  REQUIRE(code == std::optional<int>(0));
  for (Subprocess* w : {&a0, &a1, &b}) CHECK(w->WaitFor(milliseconds(20000)) == std::optional<int>(0));
  CHECK(ReadFile(dir.Path("a0.out")).find("rendezvous=127.0.0.1:" + std::to_string(port + 2)) != std::string::npos);
  CHECK(ReadFile(dir.Path("a1.out")).find("msg=\"rank 0 stopped the site\"") != std::string::npos);
  const auto lines = Lines(ReadFile(run_dir + "/metrics.jsonl"));
  REQUIRE(lines.size() == 4);
  for (size_t r = 1; r < lines.size(); ++r) {
    INFO(lines[r]);
    CHECK(Field(lines[r], "digests_match") == "true");
    CHECK(SiteTokens(lines[r], "site-a") == 2 * SiteTokens(lines[r], "site-b"));
  }
}

}  // namespace lowband

namespace lowband {

TEST_CASE("ranks: a site whose ranks cannot have their devices stops with a config error", "[integration]") {
  // On this CPU build there is no NCCL (and no GPU): a cuda site of two
  // ranks cannot form. Exit 78, which systemd does not restart, naming why.
  TempDir dir;
  const int port = FreePortBase();
  std::string yaml_text = RanksCampaign(port, 2, 2, /*three=*/false, 2, dir.Path("run"));
  const std::string from = "{name: site-a, ranks: 2";
  REQUIRE(yaml_text.find(from) != std::string::npos);
  yaml_text.replace(yaml_text.find(from), from.size(), "{name: site-a, device: cuda, ranks: 2");
  const std::string yaml = dir.Write("c.yaml", yaml_text);
  Subprocess a = Worker(yaml, "site-a", dir.Path("a.out"));
  Procs guard{{&a}};
  const auto code = a.WaitFor(milliseconds(30000));
  const std::string out = ReadFile(dir.Path("a.out"));
  INFO(out);
  CHECK(code == std::optional<int>(78));
  CHECK(out.find("lowband-worker: site.ranks 2 on cuda:0:") != std::string::npos);
  CHECK(ProcessesMentioning(yaml + " --site site-a") == 0);
}

}  // namespace lowband
