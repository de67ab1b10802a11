// Trainer: local LibTorch training for one worker (CPU or CUDA).
//
// Holds the global parameters of the last committed round as a CPU fp32
// ParamSet (so applying an outer update is bit-identical to the
// coordinator's arithmetic) plus a copy on the device, the model on its
// device, the AdamW inner optimizer whose state persists across rounds, and
// the update encoder (error feedback, top-k, quantisation on the device:
// only the encoded bytes leave it). Torch-free header (pimpl).
// Lives on the worker's training thread; not thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "config/config.h"
#include "data/corpus.h"
#include "codec/params.h"

namespace lowband {

class SiteGroup;

struct TrainResult {
  Encoded upload;            // the encoded pseudo-gradient theta_global - theta_local (rank 0)
  double mean_loss = 0;      // mean training loss over the inner steps (and ranks)
  uint64_t tokens = 0;       // tokens processed (by every rank)
  double step_time_ms = 0;   // mean wall time per inner step
  int steps = 0;
};

struct EvalResult {
  double loss = 0;  // mean next-token cross-entropy (nats)
  uint64_t tokens = 0;
};

class Trainer {
 public:
  // device: "cpu", "cuda" or "cuda:N" (Unavailable if CUDA is absent).
  // threads: LibTorch intra-op threads. The corpus must outlive the trainer.
  static StatusOr<std::unique_ptr<Trainer>> Create(const ModelConfig& model, const TrainingConfig& training,
                                                   const std::string& device, int threads,
                                                   const Corpus* corpus, uint64_t data_seed,
                                                   const CodecConfig& codec = CodecConfig{});
  ~Trainer();

  const ParamLayout& layout() const;
  // training.precision as this device runs it (auto resolved), and whether
  // the inner optimizer runs the fused kernel.
  Precision precision() const;
  bool fused_optimizer() const;
  // Replaces the global parameters (join, re-sync). Layout must match.
  Status SetGlobal(ParamSet params);
  // A sync to parameters the replica already holds (digest checked): the
  // same as SetGlobal with them, without the copy.
  Status RestartFromGlobal();
  const ParamSet& global() const;
  // global().Digest(), computed once per change of the global parameters
  // (the executor checks it at every evaluation and every round start).
  uint64_t GlobalDigest();
  // H inner AdamW steps starting from the global parameters. block >= 0
  // (ParaBlock, after SetBlocks): only that block's tensors train; every
  // other parameter keeps its global value bit for bit (no gradient, no
  // AdamW step, no weight decay) and the upload covers the block's tensors
  // alone, encoded with that block's own error-feedback buffers.
  StatusOr<TrainResult> TrainRound(int inner_steps, int block = -1);
  // ParaBlock: the block of each layer (Welcome.layer_blocks). InvalidArgument
  // if they do not partition this model's layout (codec/blocks.h). From
  // then on every TrainRound names a block.
  Status SetBlocks(const std::vector<int>& layer_blocks);
  bool has_blocks() const;
  // The model's current (local) parameters on the CPU, layout order: after
  // TrainRound, the trained weights (tests, diagnostics).
  ParamSet LocalParams() const;
  // global <- global - update (fp32, on the CPU copy), then loads it.
  Status ApplyUpdate(const Update& update);
  Status ApplyUpdate(const std::vector<float>& dense_update);
  // The chunk plan of the layout at the codec's topk.
  const LayoutPlan& plan() const;
  // Overlapped rounds (training.overlap, docs/overlap.md). A round then
  // continues from the model as the previous one left it (not from the
  // global parameters) and uploads its own progress, start - end; the next
  // ApplyUpdate sets the model to the new global parameters plus the
  // progress of the round trained since the previous apply (the delayed
  // correction), and Evaluate measures the global parameters without
  // disturbing the model.
  void SetOverlap(bool overlap);
  // A site of several ranks (docs/ranks.md), before the first round: each
  // rank draws its own batches (rank 0 keeps the site's data seed), every
  // inner step all-reduces the gradients (mean over ranks) so the replicas
  // stay identical, TrainRound reports the loss and tokens of all ranks,
  // Evaluate splits the validation batches between the ranks, and only
  // rank 0 encodes an upload. Borrowed; null: one rank.
  void SetGroup(SiteGroup* group);
  // Emulated slower hardware (site.slowdown): after each inner step, idle
  // (factor - 1) times its duration; reported step times include the idling.
  void SetSlowdown(double factor);
  // Validation loss of the global parameters on the corpus validation split.
  StatusOr<EvalResult> Evaluate();
  // FPLD: logits of the model as it is now (after TrainRound: the trained
  // local weights) on `contexts` probe windows of model.context tokens
  // (row-major), at each window's last `positions` positions: a
  // [contexts * positions, vocab] row-major block.
  StatusOr<std::vector<float>> ProbeLogits(const std::vector<uint8_t>& tokens, int contexts, int positions);

 private:
  struct Impl;
  explicit Trainer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Wall time of a fixed reference workload (a 512x512 fp32 matmul chain) on
// the device, in ms: a comparable speed figure for Hello.
double MeasureReferenceStepMs(const std::string& device);
// Free memory on the device in bytes (MemAvailable for CPU), 0 if unknown.
uint64_t FreeMemoryBytes(const std::string& device);

}  // namespace lowband
