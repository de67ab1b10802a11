// StageSchedule and StageOrder: the exact orders, a whole simulated pipeline
// under random delivery, and bad events.
#include "worker/pipeline_schedule.h"

#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <catch2/catch.hpp>

namespace lowband {
namespace {

std::string Names(const std::vector<PipeOp>& ops) {
  std::string s;
  for (const PipeOp& op : ops) s += (s.empty() ? "" : " ") + PipeOpName(op);
  return s;
}

std::string Order(ScheduleKind kind, int stages, int stage, int m) {
  return Names(StageOrder(kind, stages, stage, m));
}

StageSchedule Make(ScheduleKind kind, int stages, int stage, int m) {
  auto s = StageSchedule::Create(kind, stages, stage, m);
  REQUIRE(s.ok());
  return std::move(s).value();
}

bool Contains(const Status& st, const std::string& text) { return st.message().find(text) != std::string::npos; }

PipeOp F(int mb) { return {PipeOp::kForward, mb}; }
PipeOp B(int mb) { return {PipeOp::kBackward, mb}; }

TEST_CASE("schedule kind names round-trip, and unknown names are refused", "[unit][schedule]") {
  for (ScheduleKind k : {ScheduleKind::kGPipe, ScheduleKind::k1F1B}) {
    auto parsed = ParseScheduleKind(ScheduleKindName(k));
    REQUIRE(parsed.ok());
    CHECK(*parsed == k);
  }
  auto bad = ParseScheduleKind("1F1B ");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
  CHECK(Contains(bad.status(), "'1F1B '"));
  CHECK(Contains(bad.status(), "gpipe, 1f1b"));
}

TEST_CASE("stage orders, written out", "[unit][schedule]") {
  const auto g = ScheduleKind::kGPipe;
  const auto o = ScheduleKind::k1F1B;
  // S=2, M=4
  CHECK(Order(g, 2, 0, 4) == "F0 F1 F2 F3 B0 B1 B2 B3");
  CHECK(Order(g, 2, 1, 4) == "F0 F1 F2 F3 B0 B1 B2 B3");
  CHECK(Order(o, 2, 0, 4) == "F0 F1 B0 F2 B1 F3 B2 B3");
  CHECK(Order(o, 2, 1, 4) == "F0 B0 F1 B1 F2 B2 F3 B3");
  // S=4, M=8
  for (int s = 0; s < 4; ++s) CHECK(Order(g, 4, s, 8) == "F0 F1 F2 F3 F4 F5 F6 F7 B0 B1 B2 B3 B4 B5 B6 B7");
  CHECK(Order(o, 4, 0, 8) == "F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7");
  CHECK(Order(o, 4, 1, 8) == "F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 F6 B4 F7 B5 B6 B7");
  CHECK(Order(o, 4, 2, 8) == "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 F6 B5 F7 B6 B7");
  CHECK(Order(o, 4, 3, 8) == "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7");
  // Fewer micro-batches than warmup slots: all forwards, then all backwards.
  CHECK(Order(o, 5, 0, 2) == "F0 F1 B0 B1");
  CHECK(Order(o, 1, 0, 3) == "F0 B0 F1 B1 F2 B2");
  // Bad arguments give no ops.
  CHECK(StageOrder(o, 2, 2, 4).empty());
  CHECK(StageOrder(o, 0, 0, 4).empty());
  CHECK(StageOrder(o, 2, 0, 0).empty());
}

TEST_CASE("bad stage arguments are refused, naming the value", "[unit][schedule]") {
  auto check = [](int stages, int stage, int m, const std::string& what) {
    auto s = StageSchedule::Create(ScheduleKind::k1F1B, stages, stage, m);
    REQUIRE_FALSE(s.ok());
    CHECK(s.status().code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s.status(), what));
  };
  check(0, 0, 4, "stages must be in [1, 1024], got 0");
  check(kMaxPipelineStages + 1, 0, 4, "got 1025");
  check(3, 3, 4, "stage must be in [0, 2], got 3");
  check(3, -1, 4, "got -1");
  check(3, 0, 0, "micro_batches must be in [1, 65536], got 0");
  check(3, 0, kMaxMicroBatches + 1, "got 65537");
}

TEST_CASE("a middle stage runs only what has arrived, remembering early arrivals", "[unit][schedule]") {
  StageSchedule s = Make(ScheduleKind::k1F1B, 3, 1, 3);  // F0 F1 B0 F2 B1 B2
  CHECK_FALSE(s.Next().has_value());  // no input yet
  REQUIRE(s.OnInput(2).ok());         // early
  CHECK_FALSE(s.Next().has_value());
  REQUIRE(s.OnInput(0).ok());
  auto op = s.Next();
  REQUIRE(op.has_value());
  CHECK(*op == F(0));
  CHECK(s.running() == F(0));
  REQUIRE(s.OnInput(1).ok());
  CHECK_FALSE(s.Next().has_value());  // one op at a time
  REQUIRE(s.OnDone(F(0)).ok());
  CHECK(s.Next() == F(1));
  REQUIRE(s.OnGradient(0).ok());
  REQUIRE(s.OnGradient(2).ok());  // early, and out of order
  REQUIRE(s.OnDone(F(1)).ok());
  CHECK(s.stashed() == 2);
  CHECK(s.Next() == B(0));
  REQUIRE(s.OnDone(B(0)).ok());
  CHECK(s.Next() == F(2));
  REQUIRE(s.OnDone(F(2)).ok());
  CHECK_FALSE(s.Next().has_value());  // B1 waits for its gradient
  REQUIRE(s.OnGradient(1).ok());
  CHECK(s.Next() == B(1));
  REQUIRE(s.OnDone(B(1)).ok());
  CHECK(s.Next() == B(2));
  REQUIRE(s.OnDone(B(2)).ok());
  CHECK(s.done());
  CHECK(s.stashed() == 0);
  CHECK(s.peak_stashed() == 2);
  CHECK_FALSE(s.Next().has_value());

  // A new step starts from nothing.
  s.Reset();
  CHECK_FALSE(s.done());
  CHECK(s.peak_stashed() == 0);
  CHECK_FALSE(s.Next().has_value());
  REQUIRE(s.OnInput(0).ok());  // not a duplicate of the last step's
  CHECK(s.Next() == F(0));
}

// Everything observable about a schedule, to show a refused event changed
// nothing.
auto Snapshot(const StageSchedule& s) {
  return std::make_tuple(s.done(), s.running().has_value(), s.running().value_or(F(-1)).kind,
                         s.running().value_or(F(-1)).micro_batch, s.stashed(), s.peak_stashed());
}

TEST_CASE("bad events are refused with the micro-batch named and the state unchanged", "[unit][schedule]") {
  StageSchedule first = Make(ScheduleKind::k1F1B, 3, 0, 2);  // F0 F1 B0 B1
  StageSchedule mid = Make(ScheduleKind::k1F1B, 3, 1, 2);    // F0 F1 B0 B1
  StageSchedule last = Make(ScheduleKind::k1F1B, 3, 2, 2);   // F0 B0 F1 B1

  auto refused = [](const Status& st, const std::string& text) {
    INFO(st.ToString());
    CHECK(st.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(st, text));
  };

  auto before = Snapshot(first);
  refused(first.OnInput(0), "input for micro-batch 0 sent to stage 0");
  refused(last.OnGradient(1), "gradient for micro-batch 1 sent to the last stage");
  refused(mid.OnInput(2), "micro-batch 2 at stage 1: out of range [0, 1]");
  refused(mid.OnGradient(-1), "micro-batch -1");
  refused(first.OnDone(F(0)), "completion of F0 (micro-batch 0) at stage 0, but no op is running");
  refused(first.OnDone(F(7)), "micro-batch 7");
  CHECK(Snapshot(first) == before);

  REQUIRE(mid.OnInput(1).ok());
  refused(mid.OnInput(1), "duplicate input for micro-batch 1");
  REQUIRE(mid.OnGradient(0).ok());
  refused(mid.OnGradient(0), "duplicate gradient for micro-batch 0");

  REQUIRE(first.Next() == F(0));
  before = Snapshot(first);
  refused(first.OnDone(F(1)), "completion of F1 (micro-batch 1) at stage 0 out of order: F0 is running");
  refused(first.OnDone(B(0)), "B0 (micro-batch 0)");
  CHECK(Snapshot(first) == before);
  REQUIRE(first.OnDone(F(0)).ok());
  before = Snapshot(first);
  refused(first.OnDone(F(0)), "completion of F0 (micro-batch 0) at stage 0, but no op is running");
  CHECK(Snapshot(first) == before);

  // The refusals left the schedules usable: run `last` to the end.
  for (int mb = 0; mb < 2; ++mb) REQUIRE(last.OnInput(mb).ok());
  while (auto op = last.Next()) REQUIRE(last.OnDone(*op).ok());
  CHECK(last.done());
  refused(last.OnDone(B(1)), "(step done)");
}

// A whole pipeline in one process: S schedules, with activations, gradients
// and trainer completions delivered in a seeded random order.
void SimulatePipeline(ScheduleKind kind, int stages, int m, uint32_t seed) {
  INFO("kind=" << ScheduleKindName(kind) << " S=" << stages << " M=" << m << " seed=" << seed);
  std::vector<StageSchedule> sched;
  for (int s = 0; s < stages; ++s) sched.push_back(Make(kind, stages, s, m));

  struct Event {
    enum Type { kInput, kGradient, kDone } type;
    int stage;
    PipeOp op;  // micro-batch for arrivals, the finished op for kDone
  };
  std::vector<Event> pending;
  std::map<std::tuple<int, int, int>, int> runs;  // (stage, kind, mb) -> times run
  std::mt19937 rng(seed);

  // Starting an op puts its completion in flight like any other event.
  auto start_ready = [&] {
    for (int s = 0; s < stages; ++s) {
      if (auto op = sched[s].Next()) {
        ++runs[{s, op->kind, op->micro_batch}];
        pending.push_back({Event::kDone, s, *op});
      }
    }
  };

  start_ready();
  while (!pending.empty()) {
    const size_t i = std::uniform_int_distribution<size_t>(0, pending.size() - 1)(rng);
    const Event e = pending[i];
    pending.erase(pending.begin() + static_cast<long>(i));
    StageSchedule& s = sched[e.stage];
    switch (e.type) {
      case Event::kInput:
        REQUIRE(s.OnInput(e.op.micro_batch).ok());
        break;
      case Event::kGradient:
        REQUIRE(s.OnGradient(e.op.micro_batch).ok());
        break;
      case Event::kDone:
        REQUIRE(s.OnDone(e.op).ok());
        if (e.op.kind == PipeOp::kForward && e.stage + 1 < stages) {
          pending.push_back({Event::kInput, e.stage + 1, e.op});
        } else if (e.op.kind == PipeOp::kBackward && e.stage > 0) {
          pending.push_back({Event::kGradient, e.stage - 1, e.op});
        }
        break;
    }
    start_ready();
  }

  // Nothing left in flight: every stage must have finished (no deadlock),
  // running each op exactly once.
  for (int s = 0; s < stages; ++s) {
    INFO("stage " << s);
    CHECK(sched[s].done());
    CHECK(sched[s].stashed() == 0);
    if (kind == ScheduleKind::kGPipe) {
      CHECK(sched[s].peak_stashed() == m);
    } else {
      CHECK(sched[s].peak_stashed() == std::min(stages - s, m));  // the 1F1B bound, met exactly
    }
    for (int mb = 0; mb < m; ++mb) {
      CHECK(runs[{s, PipeOp::kForward, mb}] == 1);
      CHECK(runs[{s, PipeOp::kBackward, mb}] == 1);
    }
  }
  CHECK(runs.size() == static_cast<size_t>(2 * stages * m));
}

TEST_CASE("a simulated pipeline completes under random delivery order", "[unit][schedule]") {
  uint32_t seed = 1;
  for (ScheduleKind kind : {ScheduleKind::kGPipe, ScheduleKind::k1F1B}) {
    for (int stages = 1; stages <= 5; ++stages) {
      for (int m = 1; m <= 9; ++m) {
        for (int trial = 0; trial < 4; ++trial) SimulatePipeline(kind, stages, m, seed++);
      }
    }
  }
}

}  // namespace
}  // namespace lowband
