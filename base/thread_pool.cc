#include "base/thread_pool.h"

#include <algorithm>
#include <exception>

namespace lowband {

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { WorkerLoop(static_cast<size_t>(i)); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

std::string ThreadPool::RunRange(const std::function<void(int64_t, int64_t)>& fn, int64_t b, int64_t e) {
  try {
    fn(b, e);
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "unknown exception";
  }
  return "";
}

void ThreadPool::WorkerLoop(size_t index) {
  uint64_t seen = 0;
  for (;;) {
    std::unique_lock<std::mutex> lock(mu_);
    work_cv_.wait(lock, [&] { return stopping_ || generation_ != seen; });
    if (stopping_) return;
    seen = generation_;
    if (index >= ranges_.size()) continue;  // this loop has fewer ranges than workers
    const auto [b, e] = ranges_[index];
    const auto* fn = fn_;
    lock.unlock();
    std::string error = RunRange(*fn, b, e);
    lock.lock();
    if (!error.empty() && error_.empty()) error_ = std::move(error);
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

Status ThreadPool::ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return Status::Ok();
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(size(), n / std::max<int64_t>(grain, 1)));
  if (parts <= 1) {
    std::string error = RunRange(fn, 0, n);
    return error.empty() ? Status::Ok() : Internal("parallel loop failed: " + error);
  }
  std::lock_guard<std::mutex> call(call_mu_);
  const int64_t step = (n + parts - 1) / parts;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ranges_.clear();
    for (int64_t b = 0; b < n; b += step) ranges_.emplace_back(b, std::min(n, b + step));
    fn_ = &fn;
    error_.clear();
    pending_ = ranges_.size() - 1;  // the workers' share; [0] is ours
    ++generation_;
  }
  work_cv_.notify_all();
  std::string mine = RunRange(fn, ranges_[0].first, ranges_[0].second);
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return pending_ == 0; });
  fn_ = nullptr;
  if (mine.empty()) mine = error_;
  return mine.empty() ? Status::Ok() : Internal("parallel loop failed: " + mine);
}

}  // namespace lowband
