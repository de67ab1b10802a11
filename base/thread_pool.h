// ThreadPool: a fixed set of worker threads, started once, for data-parallel
// loops over large buffers (the CPU codecs' error feedback, selection and
// quantisation). ParallelFor splits [0, n) into contiguous ranges, runs them
// on the workers and the calling thread, and waits for all of them.
//
// Errors: an exception thrown by `fn` never escapes a worker (which would
// terminate the process): it is caught, the other ranges still run to their
// end, and ParallelFor returns Internal naming it.
//
// Threads: construct and destroy on one thread; ParallelFor may be called
// from any thread, one call at a time (concurrent callers take turns).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/status.h"

namespace lowband {

class ThreadPool {
 public:
  // `threads` threads in all, the caller of ParallelFor counted: threads - 1
  // workers (none for threads <= 1: every loop runs on the caller).
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // fn(begin, end) over ranges covering [0, n) once, at most size() of
  // them and none shorter than `grain` (but the last).
  Status ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop(size_t index);
  // Runs fn on [b, e), turning an exception into an error message.
  static std::string RunRange(const std::function<void(int64_t, int64_t)>& fn, int64_t b, int64_t e);

  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // one ParallelFor at a time
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  // The current loop, guarded by mu_.
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  std::vector<std::pair<int64_t, int64_t>> ranges_;  // [0] is the caller's
  uint64_t generation_ = 0;
  size_t pending_ = 0;
  std::string error_;
  bool stopping_ = false;
};

}  // namespace lowband
