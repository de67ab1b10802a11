#include "coordinator/compute.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>

#include "base/log.h"
#include "net/zmq/event_loop.h"

namespace lowband {

struct ComputeThread::Impl {
  std::shared_ptr<const Aggregation> aggregation;
  std::unique_ptr<ThreadPool> pool;  // the aggregate's chunks, the downlink encoder's selection
  size_t max_jobs = 2;
  std::unique_ptr<Mailbox<CloseResult>> done;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<CloseJob> queue;  // guarded by mu
  size_t in_flight = 0;        // guarded by mu: queued or running, not yet drained
  bool stopping = false;       // guarded by mu
  std::thread thread;

  void Loop() {
    for (;;) {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return stopping || !queue.empty(); });
      if (stopping) return;
      CloseJob job = std::move(queue.front());
      queue.pop_front();
      lock.unlock();
      const auto start = std::chrono::steady_clock::now();
      const uint32_t round = job.round;
      CloseResult r = aggregation->Close(std::move(job), pool.get());
      LOG_DEBUG("round aggregated", {"round", round},
                {"ms", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count()});
      // The mailbox holds max_jobs + 1 and at most max_jobs are in flight.
      if (!done->Post(std::move(r))) LOG_ERROR("aggregation result dropped: mailbox full", {"round", round});
    }
  }
};

StatusOr<std::unique_ptr<ComputeThread>> ComputeThread::Start(std::shared_ptr<const Aggregation> aggregation,
                                                              size_t max_jobs) {
  auto impl = std::make_unique<Impl>();
  impl->aggregation = std::move(aggregation);
  impl->max_jobs = max_jobs;
  auto mailbox = Mailbox<CloseResult>::Create(max_jobs + 1);
  if (!mailbox.ok()) return mailbox.status();
  impl->done = std::move(mailbox).value();
  Impl* raw = impl.get();
  try {
    // A compressed downlink selects top-k over the whole model every round
    // (about a second for 85M parameters on one core, bench/downlink_speed);
    // the loop and the disk thread need little CPU meanwhile. Capped: beyond
    // 8 threads memory bandwidth, not arithmetic, bounds it.
    impl->pool =
        std::make_unique<ThreadPool>(static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u)));
    impl->thread = std::thread([raw] { raw->Loop(); });
  } catch (const std::system_error& e) {
    return Unavailable(std::string("cannot start the compute thread: ") + e.what());
  }
  return std::unique_ptr<ComputeThread>(new ComputeThread(std::move(impl)));
}

ComputeThread::ComputeThread(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ComputeThread::~ComputeThread() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  impl_->thread.join();
}

Status ComputeThread::Submit(CloseJob job) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->in_flight >= impl_->max_jobs) {
      return Unavailable("the compute thread already has " + std::to_string(impl_->in_flight) + " jobs");
    }
    ++impl_->in_flight;
    impl_->queue.push_back(std::move(job));
  }
  impl_->cv.notify_one();
  return Status::Ok();
}

int ComputeThread::fd() const { return impl_->done->fd(); }

std::vector<CloseResult> ComputeThread::Drain() {
  std::vector<CloseResult> out = impl_->done->Drain();
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->in_flight -= out.size();
  return out;
}

}  // namespace lowband
