// Multi-process tests: the real lowband, lowband-coordinator and
// lowband-worker binaries on loopback with real config files and real text.
#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "coordinator/checkpoint.h"
#include "base/process.h"
#include "net/zmq/zmq_transport.h"
#include "tests/fakes/temp_dir.h"
#include "tests/integration/helpers.h"
#include "tests/fakes/wait.h"

namespace lowband {
namespace {

namespace fs = std::filesystem;
using namespace itest;  // NOLINT
using std::chrono::milliseconds;

// `update` replaces the outer optimizer / codec lines (dense DiLoCo by default).
std::string TinyCampaign(int port, int rounds,
                         const std::string& update = "outer_optimizer: {name: nesterov, lr: 0.7, momentum: 0.9}\n") {
  std::ostringstream y;
  y << "campaign: {name: it-campaign, seed: 7, rounds: " << rounds << "}\n"
    << "model: {layers: 2, d_model: 64, heads: 4, context: 32, vocab: 256}\n"
    << "training:\n  inner_steps: 12\n  batch_size: 8\n  eval_batches: 4\n"
    << "  inner_optimizer: {name: adamw, lr: 3.0e-3, warmup_steps: 5}\n"
    << update
    << "quorum: {expected_workers: 3, min_workers: 3, round_deadline_s: 120, start_timeout_s: 60}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1
    << "\", heartbeat_interval_ms: 200, heartbeat_timeout_ms: 5000}\n"
    << ThreeSitesYaml();
  return y.str();
}

TEST_CASE("lowband run: a whole campaign on loopback learns and keeps replicas identical",
          "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string campaign = dir.Path("campaign.yaml");
  WriteFile(campaign, TinyCampaign(port, 4));
  const std::string metrics = dir.Path("metrics.jsonl");
  // The validation loss of rounds 0, 3 and 4 (the last) only.
  Subprocess run = Start({kBin + "/lowband", "run", campaign, "--run-dir", dir.Path("run"), "--metrics-out", metrics,
                          "--set", "training.eval_every=3"},
                         dir.Path("run.out"));

  // While it runs: the control endpoint answers, and junk sent to the worker
  // endpoint is refused without disturbing the campaign.
  bool status_seen = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!status_seen && run.running() && std::chrono::steady_clock::now() < deadline) {
    Subprocess st = Start({kBin + "/lowband", "status", "--endpoint", "tcp://127.0.0.1:" + std::to_string(port + 1),
                           "--json", "--timeout-ms", "1000"},
                          dir.Path("status.out"));
    auto code = st.WaitFor(milliseconds(10000));
    status_seen = code && *code == 0 && ReadFile(dir.Path("status.out")).find("\"campaign\":\"it-campaign\"") !=
                                            std::string::npos;
    run.Poll();
  }
  CHECK(status_seen);
  {
    zmq::context_t ctx;
    auto junk = ZmqClientTransport::Connect(ctx, "tcp://127.0.0.1:" + std::to_string(port), "", 1 << 20);
    REQUIRE(junk.ok());
    std::mt19937 rng(3);
    for (int i = 0; i < 50; ++i) {
      Bytes b(1 + rng() % 200);
      for (auto& x : b) x = static_cast<uint8_t>(rng());
      (void)(*junk)->Send("", Frames{b});
    }
    Inbound in;
    int replies = 0;
    testing::WaitUntil([&] {
      while ((*junk)->TryReceive(&in)) ++replies;
      return replies >= 50;
    }, milliseconds(10000), milliseconds(5));
    CHECK(replies == 50);  // every junk message got an error reply
  }

  auto code = run.WaitFor(milliseconds(400000));
  REQUIRE(code.has_value());
  INFO(ReadFile(dir.Path("run.out")));
  REQUIRE(*code == 0);

  auto records = Lines(ReadFile(metrics));
  REQUIRE(records.size() == 5);  // round 0 (initial evaluation) + 4 rounds
  for (size_t r = 0; r < records.size(); ++r) {
    INFO(records[r]);
    CHECK(Field(records[r], "round") == std::to_string(r));
    CHECK(Field(records[r], "digests_match") == "true");
    CHECK(std::stoull(Field(records[r], "bytes_down")) > 0);
    CHECK((Field(records[r], "val_loss") == "null") == (r == 1 || r == 2));  // training.eval_every
    CHECK(Field(records[r], "evaluated") == "3");  // every site's digest, whether or not its loss
    if (r > 0) {
      CHECK(std::stoull(Field(records[r], "bytes_up")) > 3 * 4 * 100000ull);  // three dense fp32 deltas
      CHECK(Field(records[r], "contributors") == "3");
    }
  }
  const double first = std::stod(Field(records.front(), "val_loss"));
  const double last = std::stod(Field(records.back(), "val_loss"));
  CHECK(last < 0.8 * first);

  auto ckpt = ReadCheckpoint(dir.Path("run/checkpoint-final.lbck"));
  REQUIRE(ckpt.ok());
  CHECK(ckpt->round == 4);
  CHECK(DigestHex(ckpt->params.Digest()) == Field(records.back(), "digest"));
  CHECK(ProcessesMentioning(campaign) == 0);
}

TEST_CASE("lowband round pause/resume and checkpoint steer a running campaign", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string campaign = dir.Path("campaign.yaml");
  WriteFile(campaign, TinyCampaign(port, 3));
  const std::string metrics = dir.Path("metrics.jsonl");
  // Each commit held 400 ms (a slow disk): the three rounds of this model
  // would otherwise be over before the operator's requests are answered.
  Subprocess run = Spawn({kBin + "/lowband", "run", campaign, "--run-dir", dir.path().string(), "--metrics-out", metrics},
                         dir.Path("run.out"), "committed@*:sleep=400");

  // Pause as soon as the coordinator answers. A request whose answer timed
  // out may still have been carried out: then the retry hears "already paused".
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::pair<int, std::string> paused{-1, ""};
  while (paused.first != 0 && paused.second.find("already paused") == std::string::npos && run.running() &&
         std::chrono::steady_clock::now() < deadline) {
    paused = Ctl(dir, port, {"round", "pause"}, 500);
    run.Poll();
  }
  INFO(paused.second);
  INFO(ReadFile(dir.Path("run.out")));
  REQUIRE((paused.first == 0 || paused.second.find("already paused") != std::string::npos));
  CHECK(Ctl(dir, port, {"round", "pause"}).first == 1);  // already paused

  // The round in flight (or round 0's evaluation) finishes, then nothing starts.
  std::string status;
  while (status.find("\"phase\":\"held\"") == std::string::npos && run.running() &&
         std::chrono::steady_clock::now() < deadline) {
    status = Ctl(dir, port, {"status", "--json"}).second;
    run.Poll();
  }
  INFO(status);
  REQUIRE(status.find("\"phase\":\"held\"") != std::string::npos);
  CHECK(Field(status, "paused") == "true");
  const std::string held_round = Field(status, "committed_round");
  auto human = Ctl(dir, port, {"status"});
  CHECK(human.first == 0);
  CHECK(human.second.find("held (paused)") != std::string::npos);
  for (int i = 0; i < 3; ++i) {
    const std::string again = Ctl(dir, port, {"status", "--json"}).second;
    CHECK(Field(again, "committed_round") == held_round);
    CHECK(Field(again, "phase") == "held");
  }
  CHECK(Ctl(dir, port, {"round", "close"}).first == 1);  // no round is collecting uploads

  auto ck = Ctl(dir, port, {"checkpoint"});
  REQUIRE(ck.first == 0);
  const std::string path = dir.Path("checkpoint-round-" + held_round + ".lbck");
  CHECK(ck.second.find(path) != std::string::npos);
  auto ckpt = ReadCheckpoint(path);
  REQUIRE(ckpt.ok());
  CHECK(std::to_string(ckpt->round) == held_round);
  CHECK(DigestHex(ckpt->params.Digest()) == Field(status, "digest"));

  CHECK(Ctl(dir, port, {"worker", "evict", "site-z"}).first == 1);  // unknown site
  REQUIRE(Ctl(dir, port, {"round", "resume"}).first == 0);
  // Not paused any more: refused, unless the last two rounds ended the
  // campaign before the request was answered (69; the end is checked below).
  const int again = Ctl(dir, port, {"round", "resume"}).first;
  CHECK((again == 1 || again == 69));

  auto code = run.WaitFor(milliseconds(120000));
  REQUIRE(code.has_value());
  REQUIRE(*code == 0);
  auto records = Lines(ReadFile(metrics));
  REQUIRE(records.size() == 4);  // round 0 + 3 rounds
  for (const auto& r : records) CHECK(Field(r, "digests_match") == "true");
}

TEST_CASE("lowband campaign abort ends the campaign and the coordinator exits non-zero", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string campaign = dir.Path("campaign.yaml");
  WriteFile(campaign, TinyCampaign(port, 50));
  Subprocess run = Start({kBin + "/lowband", "run", campaign, "--run-dir", dir.path().string()}, dir.Path("run.out"));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  // Status first (safe to repeat when an answer times out), until every
  // worker has joined and so hears the end.
  std::string status;
  while (Field(status, "live_workers") != "3" && run.running() && std::chrono::steady_clock::now() < deadline) {
    status = Ctl(dir, port, {"status", "--json"}, 500).second;
    run.Poll();
  }
  REQUIRE(Field(status, "live_workers") == "3");
  auto abort = Ctl(dir, port, {"campaign", "abort"});
  INFO(abort.second);
  REQUIRE(abort.first == 0);
  CHECK(abort.second.find("aborted") != std::string::npos);
  auto code = run.WaitFor(milliseconds(60000));
  REQUIRE(code.has_value());
  INFO(ReadFile(dir.Path("run.out")));
  CHECK(*code != 0);
  CHECK(ReadFile(dir.Path("run.out")).find("aborted by operator") != std::string::npos);
  CHECK(ReadFile(dir.Path("summary.txt")).find("status failed") != std::string::npos);
  CHECK(ProcessesMentioning(campaign) == 0);
}

TEST_CASE("lowband run: a SparseLoCo campaign sends >100x less up and >60x less down, stays identical",
          "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string campaign = dir.Path("campaign.yaml");
  WriteFile(campaign, TinyCampaign(port, 4,
                                   "outer_optimizer: {name: sgd, lr: 1.0, momentum: 0.0}\n"
                                   "codec: {name: sparseloco, topk: 64, error_feedback: 0.95}\n"));
  const std::string metrics = dir.Path("metrics.jsonl");
  Subprocess run = Start({kBin + "/lowband", "run", campaign, "--run-dir", dir.path().string(), "--metrics-out", metrics},
                         dir.Path("run.out"));
  auto code = run.WaitFor(milliseconds(400000));
  REQUIRE(code.has_value());
  INFO(ReadFile(dir.Path("run.out")));
  REQUIRE(*code == 0);

  auto records = Lines(ReadFile(metrics));
  REQUIRE(records.size() == 5);
  for (size_t r = 1; r < records.size(); ++r) {
    INFO(records[r]);
    CHECK(Field(records[r], "digests_match") == "true");
    CHECK(Field(records[r], "contributors") == "3");
    CHECK(Field(records[r], "codec") == "sparseloco");
    // The default downlink of a SparseLoCo campaign: the union of the
    // uploads' indices in 2 bits, within 1.5 times what a site sends.
    CHECK(Field(records[r], "down_codec") == "sparse_2bit");
    // Three uploads of a ~120k-parameter model: dense would be ~1.4 MB. The
    // downlink spends up to 1.5 times an upload's bytes (codec.downlink_budget).
    CHECK(std::stod(Field(records[r], "compression_ratio")) > 100.0);
    CHECK(std::stod(Field(records[r], "compression_ratio_down")) > 60.0);
    CHECK(std::stoull(Field(records[r], "upload_bytes")) < 3 * 4 * 120000ull / 100);
    CHECK(std::stoull(Field(records[r], "aggregate_bytes")) < std::stoull(Field(records[r], "upload_bytes")) * 3 / 2);
  }
  const double first = std::stod(Field(records.front(), "val_loss"));
  const double last = std::stod(Field(records.back(), "val_loss"));
  CHECK(last < 0.85 * first);

  // summary.txt for scripts agrees with the metrics.
  const std::string summary = ReadFile(dir.Path("summary.txt"));
  CHECK(summary.find("codec sparseloco\n") != std::string::npos);
  CHECK(summary.find("final_digest " + Field(records.back(), "digest")) != std::string::npos);
  auto ckpt = ReadCheckpoint(dir.Path("checkpoint-final.lbck"));
  REQUIRE(ckpt.ok());
  CHECK(DigestHex(ckpt->params.Digest()) == Field(records.back(), "digest"));
}

TEST_CASE("lowband run: SIGTERM stops every process, leaving no orphans", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string campaign = dir.Path("campaign.yaml");
  WriteFile(campaign, TinyCampaign(port, 50));
  Subprocess run = Start({kBin + "/lowband", "run", campaign, "--run-dir", dir.path().string()}, dir.Path("run.out"));
  // Wait until the campaign is training (a progress line for round 1).
  testing::WaitUntil([&] { return ReadFile(dir.Path("run.out")).find("round   1/") != std::string::npos || run.Poll(); },
                     milliseconds(120000), milliseconds(50));
  REQUIRE(run.running());
  CHECK(ProcessesMentioning(campaign) == 5);  // lowband run, coordinator, 3 workers
  run.Signal(SIGTERM);
  auto code = run.WaitFor(milliseconds(30000));
  REQUIRE(code.has_value());
  CHECK(*code == 130);
  CHECK(ProcessesMentioning(campaign) == 0);
}

TEST_CASE("bad campaign files exit 78 naming file, line and key", "[integration]") {
  TempDir dir;
  const std::string campaign = dir.Path("bad.yaml");
  WriteFile(campaign, "campaign: {name: x}\nmodel: {layers: 0, heads: 3}\ntraining: {inner_stepz: 3}\n");
  Subprocess run = Start({kBin + "/lowband", "run", campaign}, dir.Path("out"));
  auto code = run.WaitFor(milliseconds(20000));
  REQUIRE(code.has_value());
  CHECK(*code == 78);
  const std::string out = ReadFile(dir.Path("out"));
  CHECK(out.find("bad.yaml:2: model.layers") != std::string::npos);
  CHECK(out.find("bad.yaml:3: training.inner_stepz: unknown key") != std::string::npos);
  Subprocess coord = Start({kBin + "/lowband-coordinator", "--campaign", campaign}, dir.Path("out2"));
  code = coord.WaitFor(milliseconds(20000));
  REQUIRE(code.has_value());
  CHECK(*code == 78);
}

TEST_CASE("lowband check validates without starting anything and prints the planning figures", "[integration]") {
  TempDir dir;
  Subprocess ok = Start({kBin + "/lowband", "check", std::string(LOWBAND_SOURCE_DIR) + "/configs/gpt2-small.yaml",
                         "--link-mbit", "20"},
                        dir.Path("ok.out"));
  auto code = ok.WaitFor(milliseconds(60000));
  const std::string out = ReadFile(dir.Path("ok.out"));
  INFO(out);
  REQUIRE(code.has_value());
  CHECK(*code == 0);
  CHECK(out.find("85449216 parameters") != std::string::npos);
  CHECK(out.find("upload      sparseloco: 2.34 MB per site per round (146.1x smaller than fp32)") != std::string::npos);
  CHECK(out.find("downlink    sparse_2bit: 3.51 MB per site per round at most (codec.downlink_budget 1.5 x an "
                 "upload)") != std::string::npos);
  CHECK(out.find("at 20 Mbit/s each way: upload 0.94 s") != std::string::npos);
  CHECK(ProcessesMentioning("gpt2-small.yaml") == 0);

  const std::string bad = dir.Path("bad.yaml");
  WriteFile(bad, "campaign: {name: x}\nmodel: {arch: llama, heads: 4, kv_heads: 3}\ntraining: {inner_stepz: 3}\n");
  Subprocess no = Start({kBin + "/lowband", "check", bad}, dir.Path("bad.out"));
  code = no.WaitFor(milliseconds(60000));
  const std::string err = ReadFile(dir.Path("bad.out"));
  INFO(err);
  REQUIRE(code.has_value());
  CHECK(*code == 78);
  CHECK(err.find("bad.yaml:2: model.kv_heads: 3 does not divide heads 4") != std::string::npos);
  CHECK(err.find("bad.yaml:3: training.inner_stepz: unknown key") != std::string::npos);
}

TEST_CASE("lowband status without a coordinator fails clearly", "[integration]") {
  TempDir dir;
  Subprocess st = Start({kBin + "/lowband", "status", "--endpoint", "tcp://127.0.0.1:1", "--timeout-ms", "300"},
                        dir.Path("out"));
  auto code = st.WaitFor(milliseconds(10000));
  REQUIRE(code.has_value());
  CHECK(*code != 0);
  CHECK(ReadFile(dir.Path("out")).find("no answer") != std::string::npos);
}

}  // namespace
}  // namespace lowband
