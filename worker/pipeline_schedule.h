// Pipeline schedule of one stage for one training step (ResBM pipeline
// stages across sites). Transport-free and torch-free: the worker's event
// loop feeds it arrivals (activations from stage s-1, gradients from stage
// s+1) and the trainer's completions, and asks it which op to run next.
//
// Orders for stage s of S stages with M micro-batches (StageOrder):
//  * GPipe: F0 .. F(M-1), then B0 .. B(M-1). Every stage stashes all M
//    micro-batches' activations.
//  * 1F1B (PipeDream-flush): min(S-1-s, M) warmup forwards, then one forward
//    and one backward alternately, then the remaining backwards. The last
//    stage runs F0 B0 F1 B1 ...; stage s stashes at most min(S-s, M).
// Both orders run every micro-batch's forward before its backward, and each
// backward needs the gradient of the same micro-batch from stage s+1, so a
// pipeline of stages following either order never deadlocks.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "base/status.h"

namespace lowband {

enum class ScheduleKind { kGPipe, k1F1B };

// "gpipe" or "1f1b".
const char* ScheduleKindName(ScheduleKind kind);
// Accepts exactly "gpipe" and "1f1b"; InvalidArgument naming the bad value
// and the allowed ones otherwise.
StatusOr<ScheduleKind> ParseScheduleKind(const std::string& name);

struct PipeOp {
  enum Kind { kForward, kBackward };
  Kind kind;
  int micro_batch;

  bool operator==(const PipeOp& o) const { return kind == o.kind && micro_batch == o.micro_batch; }
  bool operator!=(const PipeOp& o) const { return !(*this == o); }
};

// "F3" / "B3".
std::string PipeOpName(const PipeOp& op);

// Upper bounds that keep a bad config from allocating without limit.
constexpr int kMaxPipelineStages = 1024;
constexpr int kMaxMicroBatches = 1 << 16;

// InvalidArgument naming the bad value unless 1 <= stages <=
// kMaxPipelineStages, 0 <= stage < stages and 1 <= micro_batches <=
// kMaxMicroBatches.
Status CheckStageArgs(int stages, int stage, int micro_batches);

// The 2*M ops of stage `stage` in execution order; empty if CheckStageArgs
// fails. Pure; any thread.
std::vector<PipeOp> StageOrder(ScheduleKind kind, int stages, int stage, int micro_batches);

// The schedule of one stage through one step. Lives on the worker's event
// loop thread; a plain value type, no locks.
//
// Next() hands out one op at a time, in StageOrder, once its input is there:
// a forward needs OnInput(mb) (stage 0 has every input from the start), a
// backward needs OnGradient(mb) (the last stage needs none). Arrivals may
// come early, in any order, and are remembered. The handed-out op must be
// reported with OnDone before Next() hands out another.
//
// Errors: every event is checked before it changes anything. A bad event
// (micro-batch out of range, a duplicate arrival, an input to stage 0, a
// gradient to the last stage, a completion of an op that is not the one
// running) gives InvalidArgument naming the stage and micro-batch and leaves
// the state unchanged; nothing aborts on peer input.
class StageSchedule {
 public:
  // InvalidArgument as CheckStageArgs.
  static StatusOr<StageSchedule> Create(ScheduleKind kind, int stages, int stage, int micro_batches);

  // The forward input (activation from stage-1) of micro-batch mb arrived.
  Status OnInput(int mb);
  // The gradient for mb's backward (from stage+1) arrived.
  Status OnGradient(int mb);
  // The trainer finished `op`, which must be the op Next() last handed out.
  Status OnDone(PipeOp op);

  // The next op, now marked running, if the previous one is done and its
  // input has arrived; nullopt otherwise (waiting, running, or done()).
  std::optional<PipeOp> Next();

  // Every op of the step has completed.
  bool done() const { return next_ == order_.size(); }
  // The op handed out by Next() and not yet done.
  std::optional<PipeOp> running() const;
  // Micro-batches whose forward is done and backward is not: activations
  // the trainer must keep.
  int stashed() const { return stashed_; }
  int peak_stashed() const { return peak_stashed_; }

  // Starts a new step: forgets arrivals, progress and the stash peak.
  void Reset();

  ScheduleKind kind() const { return kind_; }
  int stages() const { return stages_; }
  int stage() const { return stage_; }
  int micro_batches() const { return micro_batches_; }
  const std::vector<PipeOp>& order() const { return order_; }

 private:
  StageSchedule(ScheduleKind kind, int stages, int stage, int micro_batches);
  bool first() const { return stage_ == 0; }
  bool last() const { return stage_ == stages_ - 1; }
  Status CheckMicroBatch(const char* event, int mb) const;

  ScheduleKind kind_;
  int stages_;
  int stage_;
  int micro_batches_;
  std::vector<PipeOp> order_;
  std::vector<bool> have_input_;
  std::vector<bool> have_gradient_;
  size_t next_ = 0;      // index into order_ of the next op to finish
  bool running_ = false;  // order_[next_] has been handed out
  int stashed_ = 0;
  int peak_stashed_ = 0;
};

}  // namespace lowband
