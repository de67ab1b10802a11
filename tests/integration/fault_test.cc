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

// The size of the model a worker pulled ("pulling the model" in its log),
// 0 if it pulled none; fails if it pulled more than one.
uint64_t PulledModelBytes(const std::string& worker_log) {
  uint64_t bytes = 0;
  int pulls = 0;
  for (const std::string& line : Lines(worker_log)) {
    if (line.find("pulling the model") == std::string::npos) continue;
    ++pulls;
    const auto at = line.find(" bytes=");  // a logfmt line
    REQUIRE(at != std::string::npos);
    bytes = std::stoull(line.substr(at + 7));
  }
  CHECK(pulls <= 1);
  return bytes;
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

TEST_CASE("fault: a worker away for several rounds catches up from the logged aggregates, no model sent", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string run_dir = dir.Path("run");
  const int rounds = 60;
  const std::string yaml = dir.Write("c.yaml", DurableCampaign(port, rounds, 2, run_dir, 2));
  // Rounds of this model take ~50 ms: each commit is held 150 ms (a slow
  // disk), so that the campaign is still running when the test pauses it.
  Subprocess co = Coordinator(yaml, dir.Path("co.out"), "committed@*:sleep=150");
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
  // One model offer at the start (no site pulls a byte: each built round 0
  // from the seed, the digest proves it), then site-c, which kept its
  // replica, gets an offer of the round it holds (checked, not sent) and
  // the aggregates it missed from the coordinator's log, together far
  // smaller than the model.
  const auto ledger = StoredLedger(run_dir);
  CHECK(SiteKindTotal(ledger, "site-a", "model_sync").messages == 1);
  CHECK(SiteKindTotal(ledger, "site-c", "model_sync").messages == 2);
  CHECK(SiteKindTotal(ledger, "site-a", "sync_chunk").bytes == 0);
  CHECK(SiteKindTotal(ledger, "site-c", "sync_chunk").bytes == 0);
  CHECK(PulledModelBytes(ReadFile(dir.Path("c.out"))) == 0);
  const std::string co_log = ReadFile(dir.Path("co.out"));
  const auto caught = co_log.find("site catches up with the logged updates");
  REQUIRE(caught != std::string::npos);
  const std::string line = co_log.substr(caught, co_log.find('\n', caught) - caught);
  INFO(line);
  const auto number = [&](const std::string& key) {
    const auto at = line.find(" " + key + "=");
    REQUIRE(at != std::string::npos);
    return std::stoull(line.substr(at + key.size() + 2));
  };
  CHECK(number("to_round") == static_cast<uint64_t>(back_at));
  CHECK(number("from_round") < static_cast<uint64_t>(back_at));
  CHECK(number("bytes") * 4 < number("model_bytes"));
  // It received every aggregate site-a did, the missed ones from the log.
  const LedgerEntry aggregates = SiteKindTotal(ledger, "site-c", "aggregate");
  const LedgerEntry all_aggregates = SiteKindTotal(ledger, "site-a", "aggregate");
  CHECK(aggregates.messages + 2 >= all_aggregates.messages);
}

TEST_CASE("transfer: three sites join an 11M-parameter campaign behind 20 Mbit/s links, one transfer each, none silent",
          "[integration]") {
  // 43 MB of parameters take about 17 s on a 20 Mbit/s link, longer than
  // the default 10 s heartbeat timeout: pulled in chunks, the heartbeats
  // go between them. site-a starts the campaign; b and c join at round 1,
  // when the model is no longer the one they can build from the seed, and
  // rounds go on (closed at the deadline) while they pull.
  TempDir dir;
  const int port = FreePortBase();
  const std::string run_dir = dir.Path("run");
  const int rounds = 14;
  std::ostringstream y;
  y << "campaign: {name: thin-link, seed: 5, rounds: " << rounds << "}\n"
    << "model: {layers: 6, d_model: 384, heads: 6, context: 32, vocab: 256}\n"
    << "training:\n  inner_steps: 2\n  batch_size: 4\n  eval_batches: 1\n"
    << "  inner_optimizer: {name: adamw, lr: 1.0e-3, warmup_steps: 2}\n"
    << "outer_optimizer: {name: nesterov, lr: 0.7, momentum: 0.9}\n"
    << "codec: {name: sparseloco, topk: 32}\n"
    << "quorum: {expected_workers: 1, min_workers: 1, round_deadline_s: 4, start_timeout_s: 60}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1 << "\"}\n"
    << "output: {run_dir: \"" << run_dir << "\", metrics_file: \"" << run_dir << "/metrics.jsonl\"}\n"
    << "sites:\n";
  const char* files[3] = {"[computers, science]", "[literature, wisdom]", "[humorists, food]"};
  for (int i = 0; i < 3; ++i) {
    y << "  - site: {name: site-" << static_cast<char>('a' + i) << ", link_mbit: 20}\n"
      << "    data: {dir: /usr/share/games/fortunes, files: " << files[i] << ", validation_fraction: 0.1}\n";
  }
  const std::string yaml = dir.Write("c.yaml", y.str());
  Subprocess co = Coordinator(yaml, dir.Path("co.out"));
  Subprocess a = Worker(yaml, "site-a", dir.Path("a.out"));
  Procs guard{{&co, &a}};
  std::string status = WaitStatus(dir, port, [](const std::string& s) { return CommittedRound(s) >= 1; }, co,
                                  std::chrono::seconds(120));
  REQUIRE(CommittedRound(status) >= 1);
  Subprocess b = Worker(yaml, "site-b", dir.Path("b.out"));
  Subprocess c = Worker(yaml, "site-c", dir.Path("c.out"));
  Procs late{{&b, &c}};

  auto code = co.WaitFor(milliseconds(300000));
  INFO(ReadFile(dir.Path("co.out")));
  REQUIRE(code == std::optional<int>(0));
  for (Subprocess* w : {&a, &b, &c}) CHECK(w->WaitFor(milliseconds(30000)) == std::optional<int>(0));

  const std::string co_log = ReadFile(dir.Path("co.out"));
  CHECK(co_log.find("worker lost") == std::string::npos);
  CHECK(co_log.find("worker rejoined") == std::string::npos);
  const auto ledger = StoredLedger(run_dir);
  for (const char* site : {"site-a", "site-b", "site-c"}) {
    INFO(site);
    const std::string log = ReadFile(dir.Path(std::string(site).substr(5) + ".out"));
    CHECK(log.find("coordinator silent") == std::string::npos);
    CHECK(log.find("before welcome") == std::string::npos);
    const uint64_t model = PulledModelBytes(log);
    const LedgerEntry pulled = SiteKindTotal(ledger, site, "sync_chunk");
    if (std::string(site) == "site-a") {
      CHECK(model == 0);  // round 0 is built from the seed
      CHECK(pulled.bytes == 0);
    } else {
      CHECK(model > 40'000'000);  // the whole 10.7M-parameter model, once
      CHECK(pulled.bytes >= model);
      CHECK(pulled.bytes <= model + model / 20);
    }
    CHECK(SiteKindTotal(ledger, site, "model_sync").messages == 1);
  }
  const auto lines = Lines(ReadFile(run_dir + "/metrics.jsonl"));
  REQUIRE(lines.size() == static_cast<size_t>(rounds + 1));
  for (const auto& line : lines) CHECK(Field(line, "digests_match") == "true");
  CHECK(Field(lines.back(), "contributors") == "3");  // b and c caught up and trained
}

}  // namespace
}  // namespace lowband
