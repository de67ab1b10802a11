// WorkerService: a site's daemon edge. The loop thread owns the DEALER
// socket to the coordinator, the signal fd, the WorkerCore and the result
// mailbox; a training thread owns the Executor (trainer, codec) and runs
// jobs from a bounded FIFO, posting results back through the mailbox.
// Construct and Run on the main thread.
#pragma once

#include <memory>
#include <string>

#include "common/config.h"
#include "common/corpus.h"

namespace lowband {

class SignalWatcher;

class WorkerService {
 public:
  // `campaign` may be empty: the worker learns it from the Welcome.
  WorkerService(SiteConfig site, std::string campaign, Corpus corpus);
  ~WorkerService();
  // Runs until the campaign ends (0), a fatal job failure (1) or
  // SIGINT/SIGTERM (0).
  int Run(SignalWatcher& signals);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowband
