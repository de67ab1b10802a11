// PipelineRunner: one stage's part of one pipeline-parallel training step
// (ResBM, docs/design.md 3.3), or of one validation batch, run on the worker's
// training thread. It drives a StageTrainer through a StageSchedule and
// exchanges the step's Activation messages with the neighbour stages of the
// same replica through a PeerChannel (the worker service's event loop in
// production, an in-process fake in tests).
//
// A training step of stage s of S, with M = trainer->micro_batches() and
// the whole batch [B, T] split into M micro-batches of mb = B / M rows:
//  * stage 0 gets the batch from its caller: inputs and targets, both int64
//    [B, T]. It sends the targets of every micro-batch straight to stage
//    S-1 (labels Activations: int32 ids, width 1) before any compute, then
//    runs the schedule: each forward's boundary output goes to stage 1,
//    each backward takes the gradient that stage 1 sent back.
//  * a middle stage forwards what stage s-1 sent and sends the result to
//    s+1; it back-propagates what s+1 sent and sends the input gradient to
//    s-1.
//  * stage S-1 needs both a micro-batch's boundary input (from S-2) and its
//    labels (from stage 0) before its forward; it computes the loss and
//    sends the input gradient to S-2.
//  * then every stage calls trainer->Step() on its own: gradients are
//    clipped by THIS stage's gradient norm (not the norm over all stages,
//    which would need one more exchange per step; the stages' AdamW steps
//    are independent otherwise).
// With S = 1 the runner trains the whole model locally and sends nothing.
//
// A validation batch is forward only and not micro-batched: the whole [B, T]
// batch crosses each boundary as one eval Activation (micro_batch 0, step =
// the batch index), stage 0 sends the labels the same way, and the last
// stage returns the mean loss over the batch (trainer->Evaluate).
//
// Inbound messages. Every Activation is classified by (eval, round, step):
//  * the current call's: checked with CheckActivation against the exact
//    expectation (sender stage, direction, labels/eval kind, [mb, T, b]
//    with b = trainer->boundary_width(), wire dtype, finite values), then
//    the header's byte_length and checksum against the bulk. A failure
//    fails the call: InvalidArgument naming the problem (Corruption for a
//    checksum mismatch). A second message for the same (kind, micro-batch)
//    is InvalidArgument too. Messages may arrive early and in any order:
//    they are buffered per (kind, micro-batch) and fed to the schedule.
//  * stale: of a kind's (round, step) at or before the last call of that
//    kind (training steps and eval batches are ordered separately, keys
//    compared as (round, step) pairs): logged and dropped, counted in
//    PipelineStepResult::stale_dropped. An aborted step's leftovers end
//    here, so after a failure the caller must move to a new (round, step)
//    rather than retry the same one.
//  * later: kept (at most kMaxHeldMessages, the oldest dropped beyond that)
//    and replayed when the caller gets to that step or batch; a stage ahead
//    of this one (stage 0 starting the next eval batch or training step
//    while this one still works on the last) is normal.
// Hence the callers' keys must increase per kind: (round, step) for
// TrainStep, (round, batch_index) for EvalBatch; a call whose key is not
// after the last one of its kind is FailedPrecondition (nothing is run, the
// trainer untouched).
//
// Timeouts: each wait for the next usable message is bounded by
// peer_timeout (stale and held messages do not extend it); compute time
// does not count. Running out is DeadlineExceeded naming what is missing.
//
// Failure of a call (timeout, a channel error such as Unavailable for a
// lost neighbour, a bad message, a trainer error) returns the error with
// the stage, round and step in its message; a failed TrainStep first calls
// trainer->Abort(), so the trainer is ready for a fresh step with its
// parameters and optimizer state untouched (a failed EvalBatch leaves the
// trainer as it was). Nothing throws.
//
// Byte counts are bulk (tensor) bytes only; headers are not counted.
// Bulk bytes are little-endian; the code assumes a little-endian host.
//
// Thread: the worker's training thread; not thread-safe. trainer and
// channel are borrowed and must outlive the runner; no other code may use
// the trainer while a call runs.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"
#include "protocol/messages.h"
#include "protocol/pipeline_wire.h"
#include "base/status.h"
#include "worker/peer_channel.h"
#include "worker/pipeline_schedule.h"
#include "worker/stage_trainer.h"

namespace lowband {

struct PipelineRunnerOptions {
  ScheduleKind schedule = ScheduleKind::k1F1B;
  // The boundary dtype every stage sends (PipelineConfig::wire_dtype); must
  // be the trainer's.
  WireDtype wire = WireDtype::kBf16;
  // B and T of every training step and validation batch, on every stage
  // (stages other than 0 never see the batch, yet check its shape). B must
  // be a multiple of the trainer's micro-batch count.
  int64_t batch_size = 0;
  int64_t tokens = 0;
  // Longest wait for the next usable message from a neighbour.
  std::chrono::milliseconds peer_timeout{30000};
};

struct PipelineStepResult {
  // Last stage: mean of the micro-batch losses (= the batch's mean loss);
  // NaN on the other stages.
  double loss = std::numeric_limits<double>::quiet_NaN();
  int64_t tokens = 0;            // B * T, on every stage
  int peak_stashed = 0;          // most micro-batches stashed at once
  uint64_t bytes_sent = 0;       // bulk bytes, headers excluded
  uint64_t bytes_received = 0;   // bulk bytes of the step's accepted messages
  int stale_dropped = 0;         // stale messages dropped during the step
};

class PipelineRunner {
 public:
  // Messages kept for a later step or batch, at most.
  static constexpr size_t kMaxHeldMessages = 1024;

  // InvalidArgument (listing every problem) unless trainer and channel are
  // set, B >= 1 is a multiple of trainer->micro_batches(), T >= 1, the
  // timeout is positive and the stage count fits a pipeline.
  static StatusOr<std::unique_ptr<PipelineRunner>> Create(StageTrainer* trainer, PeerChannel* channel,
                                                          const PipelineRunnerOptions& options);
  PipelineRunner(const PipelineRunner&) = delete;
  PipelineRunner& operator=(const PipelineRunner&) = delete;

  // One inner step: training step `step` of round `round`. Stage 0 passes
  // the batch, inputs and targets both int64 [B, T] (InvalidArgument if
  // not, before anything is sent); other stages pass nothing (ignored).
  // Ends with trainer->Step(). Errors as in the file comment.
  StatusOr<PipelineStepResult> TrainStep(uint32_t round, uint32_t step, const torch::Tensor& inputs = {},
                                         const torch::Tensor& targets = {});

  // A forward-only validation pass over one batch (eval messages whose
  // step is batch_index); inputs and targets as TrainStep's. Returns the
  // mean loss over the batch on the last stage, NaN elsewhere. Does not
  // touch a training step's state.
  StatusOr<double> EvalBatch(uint32_t round, uint32_t batch_index, const torch::Tensor& inputs = {},
                             const torch::Tensor& targets = {});

  // Messages kept for a later step or batch.
  size_t held() const { return held_.size(); }
  int stage() const { return stage_; }
  int stages() const { return stages_; }

 private:
  enum class Kind { kInput, kLabels, kGradient };
  using Key = std::pair<uint32_t, uint32_t>;  // (round, step or batch index)
  struct Inbound {
    Activation header;
    Bytes bulk;
  };

  PipelineRunner(StageTrainer* trainer, PeerChannel* channel, const PipelineRunnerOptions& options,
                 StageSchedule schedule);
  bool first() const { return stage_ == 0; }
  bool last() const { return stage_ == stages_ - 1; }
  // "stage 1 round 3 step 7" / "stage 1 round 3 eval batch 2".
  std::string Where() const;

  // FailedPrecondition unless (round, step) is after the last call's of
  // that kind.
  Status CheckKey(bool eval, uint32_t round, uint32_t step) const;
  // Sets up the call's state (eval or training, key, buffers).
  void Begin(bool eval, uint32_t round, uint32_t step);
  // Drops the call's buffers; on failure also aborts the trainer.
  void End(bool failed);
  // Stage 0's batch: int64 [B, T] inputs and targets.
  Status CheckBatch(const torch::Tensor& inputs, const torch::Tensor& targets) const;
  // Stage 0: sends micro-batch-sized slices of the targets to the last stage.
  Status SendLabels(const torch::Tensor& targets);
  torch::Dtype LabelScalar() const;
  Status SendTensor(int to_stage, Kind kind, int micro_batch, const torch::Tensor& t);
  // Feeds the held messages that belong to the current call.
  Status ReplayHeld();
  // Waits (up to peer_timeout) until one message of the current call was
  // accepted; stale ones are dropped and later ones held on the way.
  Status ReceiveOne();
  // Classifies and, if it is the current call's, checks and buffers `msg`.
  // Sets *accepted when it was the current call's.
  Status Handle(Inbound msg, bool* accepted);
  Status Accept(const Activation& a, const Bytes& bulk);
  ActivationExpect Expect(Kind kind) const;
  Status RunOp(const PipeOp& op);
  std::string Missing() const;

  StatusOr<PipelineStepResult> RunTrainStep(const torch::Tensor& inputs, const torch::Tensor& targets);
  StatusOr<double> RunEvalBatch(const torch::Tensor& inputs, const torch::Tensor& targets);

  StageTrainer* trainer_;
  PeerChannel* channel_;
  PipelineRunnerOptions options_;
  StageSchedule schedule_;
  int stages_;
  int stage_;
  int micro_batches_;  // M of a training step
  int64_t width_;      // boundary width b

  std::optional<Key> last_train_;  // key of the latest TrainStep begun
  std::optional<Key> last_eval_;   // key of the latest EvalBatch begun
  std::deque<Inbound> held_;

  // The running call.
  bool eval_ = false;
  Key key_{0, 0};
  int slots_ = 0;       // micro-batches of the call: M, or 1 for an eval batch
  int64_t rows_ = 0;    // rows per slot: mb, or B for an eval batch
  std::vector<torch::Tensor> inputs_, labels_, grads_;
  std::vector<bool> got_input_, got_labels_, got_grad_;
  int inputs_got_ = 0, labels_got_ = 0, grads_got_ = 0;
  double loss_sum_ = 0;
  PipelineStepResult result_;
};

}  // namespace lowband
