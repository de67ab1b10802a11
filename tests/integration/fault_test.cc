// Fault injection with real processes: the coordinator SIGKILLed at several
// points of a round and restarted, a worker killed as it uploads, a worker
// frozen for several rounds. Kills at exact points come from the daemons'
// failpoints (LOWBAND_FAILPOINT, base/failpoint.h); a failpoint kills its
// process with SIGKILL, so the exit status 137 proves it was reached.
#include <signal.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

#include "base/process.h"
#include "coordinator/state_store.h"
#include "tests/integration/helpers.h"

namespace lowband {
namespace {

using namespace itest;  // NOLINT
using std::chrono::milliseconds;
using std::chrono::seconds;
using SteadyClock = std::chrono::steady_clock;

constexpr int kKilled = 128 + SIGKILL;

// Three sites on loopback. Nesterov keeps outer momentum, so a resume that
// lost the optimizer state would change the digest; SparseLoCo makes the
// logged gradients sparse.
std::string DurableCampaign(int port, int rounds, int min_workers, const std::string& run_dir, int inner_steps = 6,
                            bool overlap = false) {
  std::ostringstream y;
  y << "campaign: {name: fault-campaign, seed: 11, rounds: " << rounds << "}\n"
    << "model: {layers: 2, d_model: 64, heads: 4, context: 32, vocab: 256}\n"
    << "training:\n  inner_steps: " << inner_steps << "\n  batch_size: 8\n  eval_batches: 2\n"
    << (overlap ? "  overlap: true\n" : "")
    << "  inner_optimizer: {name: adamw, lr: 3.0e-3, warmup_steps: 5}\n"
    << "outer_optimizer: {name: nesterov, lr: 0.7, momentum: 0.9}\n"
    << "codec: {name: sparseloco, topk: 64}\n"
    << "checkpoint: {every: 2, keep: 2}\n"
    << "quorum: {expected_workers: 3, min_workers: " << min_workers
    << ", round_deadline_s: 120, start_timeout_s: 60}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1
    << "\", heartbeat_interval_ms: 200, heartbeat_timeout_ms: 1500}\n"
    << "output: {run_dir: \"" << run_dir << "\", metrics_file: \"" << run_dir << "/metrics.jsonl\"}\n"
    << ThreeSitesYaml();
  return y.str();
}

std::string SummaryValue(const std::string& run_dir, const std::string& key) {
  std::istringstream in(ReadFile(run_dir + "/summary.txt"));
  for (std::string k, v; in >> k >> v;) {
    if (k == key) return v;
  }
  return "";
}

// round -> digest of each metrics record; fails on a round recorded twice.
std::map<int, std::string> RoundDigests(const std::string& metrics) {
  std::map<int, std::string> out;
  for (const std::string& line : Lines(ReadFile(metrics))) {
    const int round = std::stoi(Field(line, "round"));
    INFO(line);
    CHECK(out.count(round) == 0);
    CHECK(Field(line, "digests_match") == "true");
    out[round] = Field(line, "digest");
  }
  return out;
}


// Starts the coordinator once per failpoint (co-I.out), each run killed
// there (SIGKILL, so exit 137 proves the point was reached); every run after
// the first resumes the campaign the previous one left.
void KillAtEach(const TempDir& dir, const std::string& yaml, const std::vector<std::string>& kills) {
  for (size_t i = 0; i < kills.size(); ++i) {
    const std::string out = dir.Path("co-" + std::to_string(i) + ".out");
    Subprocess co = Coordinator(yaml, out, kills[i]);
    Procs one{{&co}};
    auto code = co.WaitFor(milliseconds(120000));
    INFO(kills[i] << "\n" << ReadFile(out));
    REQUIRE(code == std::optional<int>(kKilled));
    if (i > 0) CHECK(ReadFile(out).find("resuming campaign fault-campaign") != std::string::npos);
  }
}

std::vector<LedgerRow> StoredLedger(const std::string& run_dir) {
  auto store = StateStore::Open(run_dir + "/state.db");
  REQUIRE(store.ok());
  auto rows = (*store)->Ledger();
  REQUIRE(rows.ok());
  return *rows;
}

LedgerEntry SiteKindTotal(const std::vector<LedgerRow>& rows, const std::string& site, const std::string& kind) {
  LedgerEntry total;
  for (const LedgerRow& r : rows) {
    if (r.site == site && r.kind == kind && r.dir == Direction::kDown) {
      total.bytes += r.entry.bytes;
      total.messages += r.entry.messages;
    }
  }
  return total;
}

TEST_CASE("resume: a coordinator SIGKILLed at six points of a round ends with the uninterrupted run's digest",
          "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const int rounds = 7;

  // The uninterrupted run.
  const std::string base_dir = dir.Path("base");
  const std::string base_yaml = dir.Write("base.yaml", DurableCampaign(port, rounds, 3, base_dir));
  {
    Subprocess co = Coordinator(base_yaml, dir.Path("base-co.out"));
    Subprocess a = Worker(base_yaml, "site-a", dir.Path("base-a.out"));
    Subprocess b = Worker(base_yaml, "site-b", dir.Path("base-b.out"));
    Subprocess c = Worker(base_yaml, "site-c", dir.Path("base-c.out"));
    Procs guard{{&co, &a, &b, &c}};
    auto code = co.WaitFor(milliseconds(180000));
    INFO(ReadFile(dir.Path("base-co.out")));
    REQUIRE(code == std::optional<int>(0));
    for (Subprocess* w : {&a, &b, &c}) CHECK(w->WaitFor(milliseconds(20000)) == std::optional<int>(0));
  }
  const std::string base_digest = SummaryValue(base_dir, "final_digest");
  REQUIRE(base_digest.size() == 16);

  // The same campaign, its coordinator killed before the uploads of round 2
  // (right after RoundStart), during those of round 3 (one received), after
  // those of round 4 (committed to the state database, before the
  // checkpoint and the aggregate), after round 5's aggregate went out, and
  // in the middle of round 6's checkpoint write (temporary file complete,
  // not yet renamed), and between round 7's metrics line and its record in
  // the state database; restarted each time with the same config.
  const std::string run_dir = dir.Path("faulty");
  const std::string yaml = dir.Write("faulty.yaml", DurableCampaign(port + 2, rounds, 3, run_dir));
  const std::vector<std::string> kills = {"round_started@2", "upload@3",     "committed@4",
                                          "aggregate_sent@5", "checkpoint@6", "metrics_written@7"};
  Subprocess a = Worker(yaml, "site-a", dir.Path("a.out"));
  Subprocess b = Worker(yaml, "site-b", dir.Path("b.out"));
  Subprocess c = Worker(yaml, "site-c", dir.Path("c.out"));
  Procs guard{{&a, &b, &c}};
  KillAtEach(dir, yaml, kills);
  Subprocess last = Coordinator(yaml, dir.Path("co-last.out"));
  Procs one{{&last}};
  auto code = last.WaitFor(milliseconds(120000));
  INFO(ReadFile(dir.Path("co-last.out")));
  REQUIRE(code == std::optional<int>(0));
  for (Subprocess* w : {&a, &b, &c}) CHECK(w->WaitFor(milliseconds(20000)) == std::optional<int>(0));

  CHECK(SummaryValue(run_dir, "final_digest") == base_digest);
  // Every round recorded exactly once, each with the uninterrupted run's
  // parameters: nothing lost, nothing applied twice.
  const auto base_rounds = RoundDigests(base_dir + "/metrics.jsonl");
  const auto faulty_rounds = RoundDigests(run_dir + "/metrics.jsonl");
  REQUIRE(base_rounds.size() == static_cast<size_t>(rounds + 1));
  CHECK(faulty_rounds == base_rounds);
  // Workers that had trained the round in flight sent the same upload again.
  const std::string logs = ReadFile(dir.Path("a.out")) + ReadFile(dir.Path("b.out")) + ReadFile(dir.Path("c.out"));
  CHECK(logs.find("sending the same upload again") != std::string::npos);

  auto store = StateStore::Open(run_dir + "/state.db");
  REQUIRE(store.ok());
  auto row = (*store)->Campaign();
  REQUIRE(row.ok());
  REQUIRE(row->has_value());
  CHECK((*row)->status == "completed");
  CHECK((*row)->committed_round == static_cast<uint32_t>(rounds));
  CHECK((*row)->restarts == static_cast<int>(kills.size()));
  auto stored = (*store)->Rounds(false);
  REQUIRE(stored.ok());
  REQUIRE(stored->size() == static_cast<size_t>(rounds + 1));
  for (const StoredRound& s : *stored) {
    CHECK(s.recorded);
    CHECK(DigestHex(s.record.digest) == base_rounds.at(static_cast<int>(s.record.round)));
  }
  // Retention: at most `keep` checkpoint files, no temporary file left.
  auto ckpts = (*store)->Checkpoints();
  REQUIRE(ckpts.ok());
  CHECK(ckpts->size() <= 2);
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(run_dir + "/checkpoints")) {
    INFO(e.path().string());
    CHECK(e.path().extension() == ".lbck");
    ++files;
  }
  CHECK(files == static_cast<int>(ckpts->size()));

  // Started again on the ended campaign: nothing is redone; a worker that
  // asks (one that missed the end) is told, and the coordinator exits 0.
  const std::string before = ReadFile(run_dir + "/metrics.jsonl");
  Subprocess again = Coordinator(yaml, dir.Path("co-again.out"));
  Subprocess late = Worker(yaml, "site-a", dir.Path("late.out"));
  Procs more{{&again, &late}};
  CHECK(late.WaitFor(milliseconds(30000)) == std::optional<int>(0));
  CHECK(again.WaitFor(milliseconds(30000)) == std::optional<int>(0));
  CHECK(ReadFile(dir.Path("co-again.out")).find("already ended at round 7") != std::string::npos);
  CHECK(ReadFile(dir.Path("late.out")).find("campaign already finished") != std::string::npos);
  CHECK(ReadFile(run_dir + "/metrics.jsonl") == before);
}

// Overlap: when round r commits, round r-1's record still waits for its
// evaluations (each site evaluates r-1 after training r). A coordinator
// killed right then leaves round r-1 committed but never evaluated: the
// restarted one records it without a validation loss, re-evaluates round r
// and finishes; every round is recorded once and the replicas agree.
TEST_CASE("resume: an overlapped campaign whose coordinator is SIGKILLed with a record pending finishes",
          "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const int rounds = 6;
  const std::string run_dir = dir.Path("run");
  const std::string yaml =
      dir.Write("overlap.yaml", DurableCampaign(port, rounds, 3, run_dir, /*inner_steps=*/4, /*overlap=*/true));
  const std::vector<std::string> kills = {"committed@3", "aggregate_sent@5"};
  // The sites evaluate rounds 2 and 4 slowly, so that the kills at round 3's
  // commit and round 5's aggregate surely come before those evaluations (the
  // coordinator commits on its compute and disk threads; without the delay
  // the last site's evaluation can win the race).
  const std::string slow_evals = "worker_eval@2:sleep=2000,worker_eval@4:sleep=2000";
  Subprocess a = Worker(yaml, "site-a", dir.Path("a.out"), slow_evals);
  Subprocess b = Worker(yaml, "site-b", dir.Path("b.out"), slow_evals);
  Subprocess c = Worker(yaml, "site-c", dir.Path("c.out"), slow_evals);
  Procs guard{{&a, &b, &c}};
  KillAtEach(dir, yaml, kills);
  Subprocess last = Coordinator(yaml, dir.Path("co-last.out"));
  Procs one{{&last}};
  auto code = last.WaitFor(milliseconds(120000));
  INFO(ReadFile(dir.Path("co-last.out")));
  REQUIRE(code == std::optional<int>(0));
  for (Subprocess* w : {&a, &b, &c}) CHECK(w->WaitFor(milliseconds(20000)) == std::optional<int>(0));

  // Rounds 2 and 4 were pending at the kills (committed, not evaluated).
  const auto digests = RoundDigests(run_dir + "/metrics.jsonl");
  REQUIRE(digests.size() == static_cast<size_t>(rounds + 1));
  for (const std::string& line : Lines(ReadFile(run_dir + "/metrics.jsonl"))) {
    const int round = std::stoi(Field(line, "round"));
    INFO(line);
    if (round == 2 || round == 4) {
      CHECK(Field(line, "val_loss") == "null");
      CHECK(Field(line, "evaluated") == "0");
      CHECK(Field(line, "contributors") == "3");
    } else {
      CHECK(Field(line, "val_loss") != "null");
      CHECK(Field(line, "evaluated") == "3");
    }
  }
  CHECK(ReadFile(dir.Path("co-0.out")).find("without evaluations") == std::string::npos);
  CHECK(ReadFile(dir.Path("co-1.out")).find("round recorded without evaluations") != std::string::npos);
  CHECK(ReadFile(dir.Path("co-last.out")).find("round recorded without evaluations") != std::string::npos);
  const std::string final_digest = SummaryValue(run_dir, "final_digest");
  CHECK(final_digest == digests.at(rounds));
  auto store = StateStore::Open(run_dir + "/state.db");
  REQUIRE(store.ok());
  auto stored = (*store)->Rounds(false);
  REQUIRE(stored.ok());
  REQUIRE(stored->size() == static_cast<size_t>(rounds + 1));
  for (const StoredRound& s : *stored) CHECK(s.recorded);
}

TEST_CASE("fault: a worker killed as it uploads does not stall the round, then rejoins and contributes",
          "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string run_dir = dir.Path("run");
  const std::string yaml = dir.Write("c.yaml", DurableCampaign(port, 6, 2, run_dir));
  Subprocess co = Coordinator(yaml, dir.Path("co.out"));
  Subprocess a = Worker(yaml, "site-a", dir.Path("a.out"));
  Subprocess b = Worker(yaml, "site-b", dir.Path("b.out"));
  Subprocess c = Worker(yaml, "site-c", dir.Path("c1.out"), "worker_upload@2");
  Procs guard{{&co, &a, &b, &c}};

  // site-c trains round 2 and dies just before its upload leaves.
  auto died = c.WaitFor(milliseconds(60000));
  INFO(ReadFile(dir.Path("co.out")));
  REQUIRE(died == std::optional<int>(kKilled));
  // Hold the campaign after the round in flight so that the restarted
  // worker surely finds rounds left to join.
  Pause(dir, port);
  const std::string held =
      WaitStatus(dir, port, [](const std::string& s) { return Field(s, "phase") == "held"; }, co);
  REQUIRE(Field(held, "phase") == "held");

  // Round 2 closed with the two uploads it had (min_workers 2) once site-c
  // went silent.
  std::map<int, std::string> records;
  for (const std::string& line : Lines(ReadFile(run_dir + "/metrics.jsonl"))) {
    records[std::stoi(Field(line, "round"))] = line;
  }
  REQUIRE(records.count(2));
  CHECK(Field(records[2], "contributors") == "2");

  Subprocess c2 = Worker(yaml, "site-c", dir.Path("c2.out"));
  Procs guard2{{&c2}};
  const std::string workers = WaitWorkers(dir, port, "\"site\":\"site-c\",\"state\":\"joined\"", co);
  REQUIRE(workers.find("\"site\":\"site-c\",\"state\":\"joined\"") != std::string::npos);
  REQUIRE(Ctl(dir, port, {"round", "resume"}).first == 0);

  auto code = co.WaitFor(milliseconds(120000));
  REQUIRE(code == std::optional<int>(0));
  for (Subprocess* w : {&a, &b, &c2}) CHECK(w->WaitFor(milliseconds(20000)) == std::optional<int>(0));
  const auto lines = Lines(ReadFile(run_dir + "/metrics.jsonl"));
  REQUIRE(lines.size() == 7);  // rounds 0..6, none lost
  for (const auto& line : lines) CHECK(Field(line, "digests_match") == "true");
  CHECK(Field(lines.back(), "contributors") == "3");  // site-c is back
}

TEST_CASE("fault: a worker away for several rounds catches up in one transfer", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string run_dir = dir.Path("run");
  const int rounds = 60;
  const std::string yaml = dir.Write("c.yaml", DurableCampaign(port, rounds, 2, run_dir, 2));
  Subprocess co = Coordinator(yaml, dir.Path("co.out"));
  Subprocess a = Worker(yaml, "site-a", dir.Path("a.out"));
  Subprocess b = Worker(yaml, "site-b", dir.Path("b.out"));
  Subprocess c = Worker(yaml, "site-c", dir.Path("c.out"));
  Procs guard{{&co, &a, &b, &c}};

  std::string status = WaitStatus(dir, port, [](const std::string& s) { return CommittedRound(s) >= 1; }, co);
  REQUIRE(CommittedRound(status) >= 1);
  // Freeze site-c (a laptop closed, a partition): it neither sends nor
  // hears anything until SIGCONT.
  c.Signal(SIGSTOP);
  const std::string lost = WaitWorkers(dir, port, "\"site\":\"site-c\",\"state\":\"lost\"", co);
  REQUIRE(lost.find("\"site\":\"site-c\",\"state\":\"lost\"") != std::string::npos);
  const int left_at = CommittedRound(Ctl(dir, port, {"status", "--json"}).second);
  status = WaitStatus(dir, port, [&](const std::string& s) { return CommittedRound(s) >= left_at + 4; }, co);
  Pause(dir, port);
  status = WaitStatus(dir, port, [](const std::string& s) { return Field(s, "phase") == "held"; }, co);
  REQUIRE(Field(status, "phase") == "held");
  const int back_at = CommittedRound(status);
  INFO("site-c away from round " << left_at << " to " << back_at);
  REQUIRE(back_at >= left_at + 3);
  REQUIRE(back_at < rounds);

  c.Signal(SIGCONT);
  const std::string workers = WaitWorkers(dir, port, "\"site\":\"site-c\",\"state\":\"joined\"", co);
  REQUIRE(workers.find("\"site\":\"site-c\",\"state\":\"joined\"") != std::string::npos);
  REQUIRE(Ctl(dir, port, {"round", "resume"}).first == 0);
  auto code = co.WaitFor(milliseconds(180000));
  REQUIRE(code == std::optional<int>(0));
  for (Subprocess* w : {&a, &b, &c}) CHECK(w->WaitFor(milliseconds(20000)) == std::optional<int>(0));

  const auto lines = Lines(ReadFile(run_dir + "/metrics.jsonl"));
  REQUIRE(lines.size() == static_cast<size_t>(rounds + 1));
  for (const auto& line : lines) CHECK(Field(line, "digests_match") == "true");
  CHECK(Field(lines.back(), "contributors") == "3");
  // One model sync at the start and one to catch up, whatever the number of
  // rounds missed: no replay of the aggregates it missed.
  const auto ledger = StoredLedger(run_dir);
  const LedgerEntry syncs = SiteKindTotal(ledger, "site-c", "model_sync");
  const LedgerEntry first = SiteKindTotal(ledger, "site-a", "model_sync");
  CHECK(first.messages == 1);
  CHECK(syncs.messages == 2);
  CHECK(syncs.bytes == 2 * first.bytes);
  const LedgerEntry aggregates = SiteKindTotal(ledger, "site-c", "aggregate");
  const LedgerEntry all_aggregates = SiteKindTotal(ledger, "site-a", "aggregate");
  CHECK(aggregates.messages + static_cast<uint64_t>(back_at - left_at) <= all_aggregates.messages);
}

}  // namespace
}  // namespace lowband
