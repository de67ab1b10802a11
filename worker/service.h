// WorkerService: a site's daemon edge. The loop thread owns the DEALER
// socket to the coordinator, the signal fd, the WorkerCore and the result
// mailbox; a training thread owns the Executor (trainer, codec) and runs
// jobs from a bounded FIFO, posting results back through the mailbox.
// Construct and Run on the main thread.
#pragma once

#include <memory>
#include <string>

#include "config/config.h"
#include "data/corpus.h"
#include "worker/ranks.h"

namespace lowband {

class SignalWatcher;

// A multi-rank site (docs/ranks.md): the ranks this worker runs and the
// command line its child ranks repeat (plus --rank and --rendezvous).
struct WorkerRanks {
  RankPlan plan;
  std::vector<std::string> worker_argv;
  // A rank started by its systemd unit (not by another rank) tells systemd
  // it is ready and alive.
  bool notify_systemd = true;
};

class WorkerService {
 public:
  // `campaign` may be empty: the worker learns it from the Welcome. With
  // ranks.plan.ranks > 1 this is rank 0: it starts its local ranks, waits
  // for every rank to join, and posts them its jobs.
  WorkerService(SiteConfig site, std::string campaign, Corpus corpus, WorkerRanks ranks = {});
  ~WorkerService();
  // Runs until the campaign ends (0), a fatal job failure (1) or
  // SIGINT/SIGTERM (0).
  int Run(SignalWatcher& signals);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A rank other than 0: joins the site's ranks (starting its own local ones
// when it is the first on its host) and runs rank 0's jobs until rank 0
// stops it (0), or the site is down (kExitSiteDown). SIGTERM ends it.
int RunFollowerRank(SiteConfig site, Corpus corpus, const WorkerRanks& ranks, SignalWatcher& signals);

}  // namespace lowband
