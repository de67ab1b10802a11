// StageTrainer: one pipeline stage's training (ResBM, docs/design.md 3.3). Owns
// the stage's module (a GptStage) on its device and the stage's AdamW inner
// optimizer, and runs the micro-batch operations a pipeline schedule asks
// for: Forward(m), Backward(m), then Step() once every micro-batch of the
// step went both ways. The schedule (which op when, and the messages to the
// neighbours) lives elsewhere; this class only does the arithmetic and keeps
// the per-micro-batch stashes between an op pair.
//
// Micro-batches and scaling: a step has M micro-batches (fixed at Create),
// all of the same shape [mb, T] (fixed by the step's first Forward). The last
// stage back-propagates loss_m / M, so the gradients accumulated over the M
// micro-batches, on every stage, equal those of the mean loss over the whole
// batch of M * mb sequences.
//
// Last stage: Forward(m, input, targets) computes logits and the micro-batch
// loss and returns the (unscaled) loss; it keeps the graph. Backward(m, {})
// is still called, with an UNDEFINED grad_output: it back-propagates
// loss_m / M and returns the gradient for the previous stage. So every stage
// sees the same op sequence (Forward m ... Backward m), and the schedule
// decides when the last stage's backward work happens.
//
// Tensors across this API: what goes to a neighbour (Forward's boundary
// output, Backward's input gradient) is ToWire'd: wire dtype, contiguous, on
// the CPU, detached. What comes from a neighbour may be in fp32, bf16 or fp16
// (FromWire'd or not) and on any device; it is converted to fp32 on the
// stage's device. The caller's tensors are never modified; a boundary input
// is copied into the stash, token ids and targets may be referenced by the
// stashed graph until Backward. Returned tensors share no storage with the
// stage's state.
//
// Errors: InvalidArgument for a bad micro-batch index or an input of the
// wrong shape/dtype/range (the message names the op, the micro-batch and
// expected vs got); FailedPrecondition for an op out of sequence (a second
// Forward or Backward of a micro-batch, Backward before Forward, Step with
// micro-batches missing); Internal for a LibTorch failure (caught here, no
// exception leaves this class). A LibTorch failure inside Backward leaves
// gradients partly accumulated: Step then fails until Abort().
//
// Thread: lives on the worker's training thread; not thread-safe. The
// tensors it returns may be moved to other threads (e.g. the sender),
// except parameters(), which aliases the live module.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "ml/model.h"
#include "codec/params.h"
#include "base/status.h"

namespace lowband {

class StageTrainer {
 public:
  // Builds stage `spec.stage` with MakeGptStage(model, spec, seed) (so every
  // replica of a stage starts from the same parameters), moves it to
  // `device`, and sets up AdamW with `optimizer`'s conventions (as Trainer:
  // decoupled weight decay on matrices only, linear warm-up over the first
  // warmup_steps steps, clipping at grad_clip, 0 = off). micro_batches >= 1.
  // InvalidArgument lists every bad argument at once.
  static StatusOr<std::unique_ptr<StageTrainer>> Create(const ModelConfig& model, const StageSpec& spec,
                                                        const InnerOptimizerConfig& optimizer, WireDtype wire,
                                                        int micro_batches, torch::Device device, uint64_t seed);
  ~StageTrainer();
  StageTrainer(const StageTrainer&) = delete;
  StageTrainer& operator=(const StageTrainer&) = delete;

  // Forward of micro-batch `micro_batch` in [0, M).
  // input: stage 0: token ids [mb, T] int64 in [0, vocab), T <= context;
  //   later stages: the boundary tensor from the previous stage [mb, T, b]
  //   (b = boundary_width()), fp32/bf16/fp16; it becomes a leaf requiring
  //   grad so Backward can return its gradient.
  // targets: last stage only, int64 [mb, T] in [0, vocab); ignored (may be
  //   undefined) elsewhere.
  // Returns, on a non-last stage, the boundary tensor for the next stage
  // [mb, T, b] (wire dtype, CPU, contiguous); on the last stage the
  // micro-batch's mean cross-entropy (scalar fp32 on the CPU, not divided by
  // M). Stashes what Backward needs.
  StatusOr<torch::Tensor> Forward(int micro_batch, const torch::Tensor& input, const torch::Tensor& targets = {});

  // Backward of a forwarded micro-batch, accumulating into the parameters'
  // gradients, then frees its stash.
  // grad_output: non-last stages: the gradient w.r.t. this stage's Forward
  //   output, as received from the next stage ([mb, T, b], fp32/bf16/fp16);
  //   last stage: must be undefined (its gradient source is loss_m / M).
  // Returns the gradient w.r.t. this stage's input for the previous stage
  // ([mb, T, b_in], wire dtype, CPU, contiguous), or an undefined tensor on
  // stage 0.
  StatusOr<torch::Tensor> Backward(int micro_batch, const torch::Tensor& grad_output = {});

  // Whether every micro-batch of the current step went forward and backward.
  bool StepComplete() const;
  // Sum of squared gradients of this stage's parameters (for a clip by the
  // norm over all stages: sqrt of the sum over stages, given to Step).
  // FailedPrecondition unless StepComplete().
  StatusOr<double> GradSquaredNorm() const;
  // Clips (by `global_grad_norm` when given, else by this stage's own
  // gradient norm), applies one AdamW step, zeroes the gradients and clears
  // the step's state; step_count() + 1. FailedPrecondition naming the
  // micro-batches without forward / backward if the step is incomplete (the
  // state is kept: finish the step or Abort). Internal on a non-finite
  // gradient norm: the step is dropped as by Abort(), parameters unchanged.
  Status Step(std::optional<double> global_grad_norm = std::nullopt);
  // Drops stashes and accumulated gradients (a neighbour was lost mid-step);
  // the next Forward starts a fresh step. Parameters, optimizer state and
  // step_count() are kept.
  void Abort();

  // No-grad forward for validation, outside the step's bookkeeping (any
  // batch size, may run in the middle of a step). Same input/targets rules
  // as Forward. Returns the boundary tensor (wire dtype, CPU) or, on the
  // last stage, the mean cross-entropy over all of input's tokens (scalar
  // fp32, CPU).
  StatusOr<torch::Tensor> Evaluate(const torch::Tensor& input, const torch::Tensor& targets = {});

  // This stage's parameters in a fixed order (the module's
  // named_parameters() order, which layout() describes with the module's
  // local names, e.g. "blocks.0.ln_1.weight" for the stage's first block).
  // The tensors alias the live parameters on the device: in-place writes
  // under torch::NoGradGuard change the model (e.g. an outer update).
  std::vector<torch::Tensor> parameters() const;
  const ParamLayout& layout() const { return layout_; }
  // Optimizer steps taken (drives the warm-up).
  int64_t step_count() const { return step_count_; }
  const StageSpec& spec() const { return spec_; }
  const ModelConfig& model_config() const { return model_config_; }
  int micro_batches() const { return static_cast<int>(slots_.size()); }
  // Width of this stage's boundary tensors (d_model / ratio).
  int64_t boundary_width() const;
  bool first() const { return spec_.stage == 0; }
  bool last() const { return spec_.stage == spec_.stages - 1; }

 private:
  enum class SlotState { kIdle, kForwarded, kDone };
  struct Slot {
    SlotState state = SlotState::kIdle;
    torch::Tensor input;   // leaf requiring grad (stages > 0)
    torch::Tensor output;  // boundary output in the graph (non-last) or loss_m / M (last)
  };

  StageTrainer(const ModelConfig& model, const StageSpec& spec, const InnerOptimizerConfig& optimizer,
               WireDtype wire, int micro_batches, torch::Device device);
  Status CheckIndex(const char* op, int micro_batch) const;
  // Validates `input` (and on the last stage `targets`) and returns them on
  // the device, the input as the module takes it. rows/tokens < 0: any.
  StatusOr<std::pair<torch::Tensor, torch::Tensor>> PrepareInputs(const std::string& what,
                                                                  const torch::Tensor& input,
                                                                  const torch::Tensor& targets, int64_t rows,
                                                                  int64_t tokens) const;
  torch::Tensor CrossEntropy(const torch::Tensor& logits, const torch::Tensor& targets) const;
  double LearningRate() const;
  void ClearStep();

  ModelConfig model_config_;
  StageSpec spec_;
  InnerOptimizerConfig optimizer_config_;
  WireDtype wire_;
  torch::Dtype wire_scalar_ = torch::kFloat32;  // wire_ as a tensor dtype
  torch::Device device_;
  GptStage module_{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer_;  // null when the stage has no parameters
  ParamLayout layout_;
  std::vector<Slot> slots_;
  int64_t step_rows_ = -1;    // [mb, T] of the current step, fixed by its first Forward
  int64_t step_tokens_ = -1;
  bool broken_ = false;       // a Backward failed half-way: gradients unknown until Abort
  int64_t step_count_ = 0;
};

}  // namespace lowband
