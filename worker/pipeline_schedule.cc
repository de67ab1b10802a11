#include "worker/pipeline_schedule.h"

#include <algorithm>
#include <utility>

namespace lowband {

const char* ScheduleKindName(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kGPipe:
      return "gpipe";
    case ScheduleKind::k1F1B:
      return "1f1b";
  }
  return "unknown";
}

StatusOr<ScheduleKind> ParseScheduleKind(const std::string& name) {
  if (name == "gpipe") return ScheduleKind::kGPipe;
  if (name == "1f1b") return ScheduleKind::k1F1B;
  return InvalidArgument("unknown pipeline schedule '" + name + "' (allowed: gpipe, 1f1b)");
}

std::string PipeOpName(const PipeOp& op) {
  return (op.kind == PipeOp::kForward ? "F" : "B") + std::to_string(op.micro_batch);
}

Status CheckStageArgs(int stages, int stage, int micro_batches) {
  if (stages < 1 || stages > kMaxPipelineStages) {
    return InvalidArgument("pipeline stages must be in [1, " + std::to_string(kMaxPipelineStages) + "], got " +
                           std::to_string(stages));
  }
  if (stage < 0 || stage >= stages) {
    return InvalidArgument("pipeline stage must be in [0, " + std::to_string(stages - 1) + "], got " +
                           std::to_string(stage));
  }
  if (micro_batches < 1 || micro_batches > kMaxMicroBatches) {
    return InvalidArgument("micro_batches must be in [1, " + std::to_string(kMaxMicroBatches) + "], got " +
                           std::to_string(micro_batches));
  }
  return Status::Ok();
}

std::vector<PipeOp> StageOrder(ScheduleKind kind, int stages, int stage, int micro_batches) {
  std::vector<PipeOp> order;
  if (!CheckStageArgs(stages, stage, micro_batches).ok()) return order;
  const int m = micro_batches;
  order.reserve(2 * static_cast<size_t>(m));
  // GPipe is 1F1B with every forward as warmup.
  const int warmup = kind == ScheduleKind::kGPipe ? m : std::min(stages - 1 - stage, m);
  int f = 0;
  int b = 0;
  while (f < warmup) order.push_back({PipeOp::kForward, f++});
  while (f < m) {
    order.push_back({PipeOp::kForward, f++});
    order.push_back({PipeOp::kBackward, b++});
  }
  while (b < m) order.push_back({PipeOp::kBackward, b++});
  return order;
}

StatusOr<StageSchedule> StageSchedule::Create(ScheduleKind kind, int stages, int stage, int micro_batches) {
  LOWBAND_RETURN_IF_ERROR(CheckStageArgs(stages, stage, micro_batches));
  return StageSchedule(kind, stages, stage, micro_batches);
}

StageSchedule::StageSchedule(ScheduleKind kind, int stages, int stage, int micro_batches)
    : kind_(kind),
      stages_(stages),
      stage_(stage),
      micro_batches_(micro_batches),
      order_(StageOrder(kind, stages, stage, micro_batches)) {
  Reset();
}

void StageSchedule::Reset() {
  // Stage 0 reads its inputs from the local corpus and the last stage gets
  // its gradient from the loss, so for them those arrivals are implicit.
  have_input_.assign(micro_batches_, first());
  have_gradient_.assign(micro_batches_, last());
  next_ = 0;
  running_ = false;
  stashed_ = 0;
  peak_stashed_ = 0;
}

Status StageSchedule::CheckMicroBatch(const char* event, int mb) const {
  if (mb < 0 || mb >= micro_batches_) {
    return InvalidArgument(std::string(event) + " for micro-batch " + std::to_string(mb) + " at stage " +
                           std::to_string(stage_) + ": out of range [0, " + std::to_string(micro_batches_ - 1) +
                           "]");
  }
  return Status::Ok();
}

Status StageSchedule::OnInput(int mb) {
  LOWBAND_RETURN_IF_ERROR(CheckMicroBatch("input", mb));
  if (first()) {
    return InvalidArgument("input for micro-batch " + std::to_string(mb) +
                           " sent to stage 0, which reads its own inputs");
  }
  if (have_input_[mb]) {
    return InvalidArgument("duplicate input for micro-batch " + std::to_string(mb) + " at stage " +
                           std::to_string(stage_));
  }
  have_input_[mb] = true;
  return Status::Ok();
}

Status StageSchedule::OnGradient(int mb) {
  LOWBAND_RETURN_IF_ERROR(CheckMicroBatch("gradient", mb));
  if (last()) {
    return InvalidArgument("gradient for micro-batch " + std::to_string(mb) + " sent to the last stage " +
                           std::to_string(stage_) + ", which computes its own");
  }
  if (have_gradient_[mb]) {
    return InvalidArgument("duplicate gradient for micro-batch " + std::to_string(mb) + " at stage " +
                           std::to_string(stage_));
  }
  have_gradient_[mb] = true;
  return Status::Ok();
}

Status StageSchedule::OnDone(PipeOp op) {
  LOWBAND_RETURN_IF_ERROR(CheckMicroBatch("completion", op.micro_batch));
  if (!running_) {
    return InvalidArgument("completion of " + PipeOpName(op) + " (micro-batch " + std::to_string(op.micro_batch) +
                           ") at stage " + std::to_string(stage_) + ", but no op is running" +
                           (done() ? " (step done)" : ""));
  }
  const PipeOp expected = order_[next_];
  if (op != expected) {
    return InvalidArgument("completion of " + PipeOpName(op) + " (micro-batch " + std::to_string(op.micro_batch) +
                           ") at stage " + std::to_string(stage_) + " out of order: " + PipeOpName(expected) +
                           " is running");
  }
  running_ = false;
  ++next_;
  if (op.kind == PipeOp::kForward) {
    peak_stashed_ = std::max(peak_stashed_, ++stashed_);
  } else {
    --stashed_;
  }
  return Status::Ok();
}

std::optional<PipeOp> StageSchedule::Next() {
  if (running_ || done()) return std::nullopt;
  const PipeOp op = order_[next_];
  const bool ready = op.kind == PipeOp::kForward ? have_input_[op.micro_batch] : have_gradient_[op.micro_batch];
  if (!ready) return std::nullopt;
  running_ = true;
  return op;
}

std::optional<PipeOp> StageSchedule::running() const {
  if (!running_) return std::nullopt;
  return order_[next_];
}

}  // namespace lowband
