// Executor: carries out the worker core's jobs (configure, sync, train,
// apply, evaluate) with the Trainer and the update codec. Owns both. Lives
// on the worker's training thread; never touches sockets. Every failure is
// a JobFailed result, never an exception.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "codec/codec.h"
#include "config/config.h"
#include "data/corpus.h"
#include "fcrag/fcrag.h"
#include "worker/core.h"
#include "worker/stage_replica.h"
#include "worker/trainer.h"

namespace lowband {

class PeerChannel;
class SiteGroup;

class Executor {
 public:
  // Time the training thread sat idle waiting for a job (the network and
  // the round barrier); reported with the next upload, then reset.
  void AddIdle(double ms) { idle_ms_ += ms; }
  // The corpus must outlive the executor. `peers` (borrowed, may be null
  // for a data-parallel worker) carries a pipeline stage's activations to
  // and from its neighbour stages; a pipeline Welcome without it fails.
  Executor(SiteConfig site, const Corpus* corpus, PeerChannel* peers = nullptr);
  ~Executor();

  // A site of several ranks (docs/ranks.md), before the first job. Rank 0
  // posts every job it runs (but FC-RAG's) to the other ranks, which run it
  // through RunFollower; each job ends with a check that every rank got the
  // same outcome. A collective that fails (a rank gone) or a torch error
  // fails the job with kSiteDown, fatally: the site leaves until restarted.
  void SetGroup(SiteGroup* group);
  JobResult Run(Job job);
  // Ranks other than 0: runs rank 0's jobs until it posts the stop marker
  // (0), `stop` says so (0), or the site is down (kExitSiteDown).
  int RunFollower(const std::function<bool()>& stop);
  // Rank 0, at the end: the other ranks stop.
  void StopFollowers();

 private:
  JobResult RunJob(Job& job);
  JobResult Dispatch(Job& job);  // RunJob without the timing
  SiteGroup* group_ = nullptr;
  uint64_t job_seq_ = 0;
  bool leader() const;
  double idle_ms_ = 0;
  // When the last round's training ended (DeltaUpload.cycle_ms); unset
  // until the first round after a (re)configure.
  std::optional<std::chrono::steady_clock::time_point> last_trained_;
  JobResult Configure(const Welcome& w);
  JobResult Sync(const SyncJob& job);
  // An offered model (no bytes): evaluated at once if the replica holds
  // its digest on every rank, else SyncNeeded (the core pulls it).
  JobResult CheckOffer(const SyncJob& job);
  JobResult Train(const TrainJob& job);
  JobResult Apply(const ApplyJob& job);
  JobResult ProbeLogits(uint32_t round, bool own_model, TrainDone* done);
  JobResult Fcrag(const FcragJob& job);
  // FC-RAG: the site's document store and labelled queries, its retriever,
  // and what the last calibration left for the test that follows it.
  std::unique_ptr<FcragData> fcrag_;
  std::unique_ptr<Bm25Index> bm25_;
  double mass_scale_ = 1.0;  // TypicalMass of its own queries
  std::vector<double> mean_scores_;  // the hub's mean scores of this site's queries, row per query
  std::vector<size_t> test_;         // the last split's test queries
  // The round's validation loss (unless `loss` is false: training.eval_every)
  // and the replica's digest, as the coordinator's eval report wants them.
  JobResult EvaluateAt(uint32_t round, uint64_t announced_digest, bool loss = true);
  bool configured() const { return trainer_ || stage_; }
  const ParamLayout& layout() const { return stage_ ? stage_->layout() : trainer_->layout(); }
  const LayoutPlan& plan() const { return stage_ ? stage_->plan() : trainer_->plan(); }
  const ParamSet& global() const { return stage_ ? stage_->global() : trainer_->global(); }
  uint64_t GlobalDigest() { return stage_ ? stage_->GlobalDigest() : trainer_->GlobalDigest(); }

  SiteConfig site_;
  const Corpus* corpus_;
  std::unique_ptr<Welcome> welcome_;  // configuration the trainer was built for
  PeerChannel* peers_;
  std::unique_ptr<Trainer> trainer_;     // data-parallel campaign
  std::unique_ptr<StageReplica> stage_;  // pipeline campaign: this worker's stage
  // The last round trained. A restarted coordinator asks again for the
  // round in flight when it died (same round, same starting parameters);
  // training it again would advance the data position, error feedback and
  // AdamW state a second time, so the same upload is sent instead and the
  // campaign ends exactly as if the coordinator had never stopped.
  std::optional<TrainDone> last_train_;
};

}  // namespace lowband
