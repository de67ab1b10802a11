// The coordinator's event loop never waits on its disk: with round 2's
// commit taking 5 s (a failpoint that sleeps on the disk thread), the
// control endpoint still answers status requests within 200 ms, heartbeats
// keep every worker alive (none is marked lost, with a 1.5 s heartbeat
// timeout), and round 2's aggregate reaches nobody before the round is
// durable; the campaign then finishes normally. And the rounds never wait
// on a checkpoint file: with round 2's checkpoint taking 5 s (on the
// checkpoint thread), rounds 3 and 4 commit meanwhile.
#include <chrono>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

#include "net/zmq/zmq_transport.h"
#include "protocol/wire.h"
#include "tests/fakes/wait.h"
#include "tests/integration/helpers.h"

namespace lowband {
namespace {

using namespace itest;  // NOLINT
using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

std::string SlowDiskCampaign(int port, const std::string& run_dir) {
  std::ostringstream y;
  y << "campaign: {name: slow-disk, seed: 5, rounds: 4}\n"
    << "model: {layers: 1, d_model: 32, heads: 2, context: 16, vocab: 256}\n"
    << "training:\n  inner_steps: 3\n  batch_size: 4\n  eval_batches: 1\n"
    << "  inner_optimizer: {name: adamw, lr: 3.0e-3, warmup_steps: 2}\n"
    << "outer_optimizer: {name: nesterov, lr: 0.7, momentum: 0.9}\n"
    << "codec: {name: sparseloco, topk: 64}\n"
    << "checkpoint: {every: 1, keep: 2}\n"
    << "quorum: {expected_workers: 3, min_workers: 3, round_deadline_s: 120, start_timeout_s: 60}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1
    << "\", heartbeat_interval_ms: 200, heartbeat_timeout_ms: 1500}\n"
    << "output: {run_dir: \"" << run_dir << "\", metrics_file: \"" << run_dir << "/metrics.jsonl\"}\n"
    << ThreeSitesYaml();
  return y.str();
}

// One `status` request over the control socket; the reply's text, "" if
// none came within `timeout`.
std::string Status(ZmqClientTransport& control, milliseconds timeout) {
  Message m;
  m.campaign_id = "slow-disk";
  m.body = ControlRequest{"status", {}};
  if (!control.Send("", EncodeMessage(m)).ok()) return "";
  Inbound in;
  std::string text;
  testing::WaitUntil(
      [&] {
        if (!control.TryReceive(&in)) return false;
        auto reply = DecodeMessage(in.frames, WireLimits{});
        const auto* resp = reply.ok() ? std::get_if<ControlResponse>(&reply->body) : nullptr;
        text = resp ? resp->json : "malformed";
        return true;
      },
      timeout, milliseconds(1));
  return text;
}

TEST_CASE("slow disk: status answers and heartbeats flow while a round's commit takes 5 s", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string run_dir = dir.Path("run");
  const std::string campaign = dir.Path("campaign.yaml");
  WriteFile(campaign, SlowDiskCampaign(port, run_dir));
  Procs procs;
  Subprocess co = Coordinator(campaign, dir.Path("co.out"), "commit@2:sleep=5000");
  procs.all.push_back(&co);
  std::vector<Subprocess> workers;
  workers.reserve(3);
  for (const char* site : {"site-a", "site-b", "site-c"}) {
    workers.push_back(Worker(campaign, site, dir.Path(std::string(site) + ".out")));
  }
  for (Subprocess& w : workers) procs.all.push_back(&w);

  // Round 2 is closed and its commit has begun (the failpoint sleeps before
  // the store's transaction).
  REQUIRE(testing::WaitUntil(
      [&] {
        co.Poll();
        return !co.running() ||
               ReadFile(dir.Path("co.out")).find("commit@2 reached, sleeping") != std::string::npos;
      },
      milliseconds(120000)));
  REQUIRE(co.running());
  const auto sleep_began = SteadyClock::now();

  zmq::context_t ctx;
  auto control = ZmqClientTransport::Connect(ctx, "tcp://127.0.0.1:" + std::to_string(port + 1), "", 1 << 20);
  REQUIRE(control.ok());
  double worst_ms = 0;
  int answers = 0;
  // Ask every 100 ms for the next 3.5 s, well inside the 5 s sleep.
  while (SteadyClock::now() - sleep_began < milliseconds(3500)) {
    const auto asked = SteadyClock::now();
    const std::string status = Status(**control, milliseconds(2000));
    const double ms = std::chrono::duration<double, std::milli>(SteadyClock::now() - asked).count();
    INFO(status);
    REQUIRE_FALSE(status.empty());
    // Round 2 is closed but not durable: nothing of it is recorded yet.
    CHECK(CommittedRound(status) >= 1);
    CHECK(CommittedRound(status) <= 2);
    worst_ms = std::max(worst_ms, ms);
    ++answers;
    std::this_thread::sleep_for(milliseconds(100));  // pacing the requests, not waiting for anything
  }
  control->reset();
  INFO("worst status answer " << worst_ms << " ms over " << answers << " requests");
  CHECK(answers >= 10);
  CHECK(worst_ms < 200);

  auto code = co.WaitFor(milliseconds(120000));
  REQUIRE(code.has_value());
  const std::string log = ReadFile(dir.Path("co.out"));
  INFO(log);
  CHECK(*code == 0);
  CHECK(log.find("worker lost") == std::string::npos);
  CHECK(log.find("rejoined") == std::string::npos);
  // Every round recorded once, replicas identical.
  const auto lines = Lines(ReadFile(run_dir + "/metrics.jsonl"));
  CHECK(lines.size() == 5);
  for (const std::string& line : lines) CHECK(Field(line, "digests_match") == "true");
  for (Subprocess& w : workers) {
    auto wc = w.WaitFor(milliseconds(30000));
    REQUIRE(wc.has_value());
    CHECK(*wc == 0);
  }
}

TEST_CASE("slow disk: the rounds go on while a checkpoint file takes 5 s", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string run_dir = dir.Path("run");
  const std::string campaign = dir.Path("campaign.yaml");
  WriteFile(campaign, SlowDiskCampaign(port, run_dir));
  Procs procs;
  Subprocess co = Coordinator(campaign, dir.Path("co.out"), "checkpoint@2:sleep=5000");
  procs.all.push_back(&co);
  std::vector<Subprocess> workers;
  workers.reserve(3);
  for (const char* site : {"site-a", "site-b", "site-c"}) {
    workers.push_back(Worker(campaign, site, dir.Path(std::string(site) + ".out")));
  }
  for (Subprocess& w : workers) procs.all.push_back(&w);

  // Round 2's checkpoint file is complete and the failpoint sleeps before
  // its rename, on the checkpoint thread.
  REQUIRE(testing::WaitUntil(
      [&] {
        co.Poll();
        return !co.running() ||
               ReadFile(dir.Path("co.out")).find("checkpoint@2 reached, sleeping") != std::string::npos;
      },
      milliseconds(120000)));
  REQUIRE(co.running());
  const auto sleep_began = SteadyClock::now();
  // Rounds 3 and 4 (the last) commit well inside the 5 s.
  zmq::context_t ctx;
  auto control = ZmqClientTransport::Connect(ctx, "tcp://127.0.0.1:" + std::to_string(port + 1), "", 1 << 20);
  REQUIRE(control.ok());
  int committed = 0;
  while (SteadyClock::now() - sleep_began < milliseconds(4000) && committed < 4) {
    const std::string status = Status(**control, milliseconds(2000));
    if (status.empty()) break;  // the campaign ended and the coordinator is leaving
    committed = std::max(committed, CommittedRound(status));
    std::this_thread::sleep_for(milliseconds(50));  // pacing the requests, not waiting for anything
  }
  control->reset();
  const std::string early = ReadFile(dir.Path("co.out"));
  INFO(early);
  CHECK((committed >= 4 || early.find("campaign finished") != std::string::npos));
  CHECK(SteadyClock::now() - sleep_began < milliseconds(4500));

  auto code = co.WaitFor(milliseconds(120000));
  REQUIRE(code.has_value());
  const std::string log = ReadFile(dir.Path("co.out"));
  INFO(log);
  CHECK(*code == 0);
  // Every round recorded once, replicas identical, the final checkpoint
  // and round 2's (written once its sleep ended) on disk.
  const auto lines = Lines(ReadFile(run_dir + "/metrics.jsonl"));
  CHECK(lines.size() == 5);
  for (const std::string& line : lines) CHECK(Field(line, "digests_match") == "true");
  CHECK(std::filesystem::exists(run_dir + "/checkpoints/round-000002.lbck"));
  for (Subprocess& w : workers) {
    auto wc = w.WaitFor(milliseconds(30000));
    REQUIRE(wc.has_value());
    CHECK(*wc == 0);
  }
}

}  // namespace
}  // namespace lowband
