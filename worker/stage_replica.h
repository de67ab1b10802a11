// StageReplica: one pipeline stage of one replica in a pipeline campaign
// (ResBM, docs/design.md 3.3), as the worker's executor drives it. Owns the
// StageTrainer (the stage module and its AdamW state, persistent across
// rounds), the PipelineRunner that exchanges activations with the other
// stages through a borrowed PeerChannel, the update encoder (error feedback
// over the stage layout) and the stage's committed global parameters as a
// CPU fp32 ParamSet (so an outer update is bit-identical to the
// coordinator's arithmetic; its Digest() is the stage digest).
//
// Data: only stage 0 reads the corpus: training batches sampled with
// data_seed (as Trainer does), validation batches in order. Stage 0 sends
// the targets to the last stage; the other stages never see tokens.
//
// Keys: the runner needs increasing (round, step) keys per kind, identical
// on every stage. With E = the Welcome's pipeline epoch (bumped by the
// coordinator whenever it welcomes the replica again, e.g. after a stage was
// replaced), a round's training attempt a (0 the first time this round is
// asked for in this epoch) uses steps E*2^20 + a*H .. + H-1; the e-th
// evaluation of round r's parameters uses batch keys E*2^20 + e*B ...
// Every stage of a replica receives the same jobs within an epoch, so the
// keys agree, and messages of an earlier epoch are stale.
//
// Errors: Status, nothing throws. A failed TrainRound leaves the global
// parameters and the optimizer state as they were; the next round starts
// from the global parameters again.
//
// Thread: the worker's training thread; not thread-safe. Torch-free header.
#pragma once

#include <cstdint>
#include <map>
#include <memory>

#include "codec/codec.h"
#include "data/corpus.h"
#include "protocol/messages.h"
#include "codec/params.h"
#include "worker/trainer.h"

namespace lowband {

class PeerChannel;

class StageReplica {
 public:
  // Builds the stage of `w` (w.pipeline.stages > 1, w.stage in range).
  // corpus and channel are borrowed and must outlive the replica.
  static StatusOr<std::unique_ptr<StageReplica>> Create(const Welcome& w, const std::string& device, int threads,
                                                        const Corpus* corpus, PeerChannel* channel);
  ~StageReplica();

  // The stage's layout under local names (StageTrainer::layout()).
  const ParamLayout& layout() const;
  const LayoutPlan& plan() const;
  const ParamSet& global() const;
  // global().Digest(), computed once per change of the global parameters.
  uint64_t GlobalDigest();
  int stage() const;
  bool last() const;

  // Replaces the global parameters (join, re-sync); layout must match.
  Status SetGlobal(ParamSet params);
  // A sync to parameters the replica already holds (digest checked).
  Status RestartFromGlobal();
  // H pipeline steps of round `round` from the global parameters, then the
  // encoded delta global - local. mean_loss: the last stage's mean loss, 0
  // on the other stages; tokens: B*T*H on every stage.
  StatusOr<TrainResult> TrainRound(uint32_t round, int inner_steps);
  // global <- global - update (fp32), then loads it into the stage.
  Status ApplyUpdate(const Update& update);
  // A new pipeline epoch (the replica was welcomed again): step and batch
  // keys restart from epoch * 2^20 on every stage alike.
  void SetEpoch(uint32_t epoch);
  // Forward-only validation of the global parameters over eval_batches
  // batches. Last stage: mean loss and tokens; others: 0 and 0.
  StatusOr<EvalResult> Evaluate(uint32_t round);

 private:
  struct Impl;
  explicit StageReplica(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowband
