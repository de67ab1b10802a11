// ComputeThread: the coordinator's compute thread. Runs the CloseJobs the
// core emits (Aggregation::Close: the aggregate, the outer step, the
// encodings, the digests, FPLD's distillation) so that the event loop keeps
// answering heartbeats, control and the dashboard while a large model's
// round is aggregated. One job at a time, in order; each result is posted
// back to the loop (Drain, woken through fd()). The core emits at most one
// job at a time (the next round cannot close before this one commits), and
// the queue holds at most `max_jobs`: Submit refuses (Unavailable) beyond it
// rather than block the loop.
//
// Threads: Start, Submit, Drain, fd and the destructor on the loop thread;
// the jobs on the compute thread. A job's buffers are moved in and moved
// back out; the Aggregation is immutable and shared. The destructor lets a
// running job finish, drops queued ones, and joins.
#pragma once

#include <memory>
#include <vector>

#include "base/status.h"
#include "coordinator/aggregation.h"

namespace lowband {

class ComputeThread {
 public:
  static StatusOr<std::unique_ptr<ComputeThread>> Start(std::shared_ptr<const Aggregation> aggregation,
                                                        size_t max_jobs = 2);
  ~ComputeThread();
  ComputeThread(const ComputeThread&) = delete;
  ComputeThread& operator=(const ComputeThread&) = delete;

  // Loop thread. Unavailable (and `job` dropped) when max_jobs wait already.
  Status Submit(CloseJob job);
  int fd() const;
  std::vector<CloseResult> Drain();

 private:
  struct Impl;
  explicit ComputeThread(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowband
