// A small single-threaded event loop shared by both daemons, plus the two
// pieces that feed it from outside the loop thread:
//
//  * EventLoop polls registered ZeroMQ sockets and raw file descriptors
//    (zmq_poll, level-triggered: the socket items themselves are polled, not
//    ZMQ_FD, so there is no edge-triggering to drain around) and runs the
//    handler of each readable one. Timers are the caller's business: compute
//    the time to the next deadline and pass it as RunOnce's max_wait.
//  * Mailbox<T>: a bounded thread-safe queue with an eventfd, so worker
//    threads (training, compression, checkpoint writes) can post results that
//    wake the loop.
//  * SignalWatcher: turns SIGINT/SIGTERM into a readable signalfd.
//
// Threads: an EventLoop, everything registered with it and every handler live
// on one thread (the loop thread). Mailbox::Post is the only call here meant
// for other threads. SignalWatcher must be created in main before any other
// thread starts (ZeroMQ's I/O threads included: create it before the first
// socket), so that every thread inherits the blocked signal mask.
#pragma once

#include <chrono>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "base/status.h"

namespace lowband {

class EventLoop {
 public:
  using Handler = std::function<void()>;

  EventLoop() = default;
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Registers a handler run when `socket` has a message to read. The loop
  // keeps a reference: the socket must outlive the registration. A handler
  // should drain what it can without blocking (the poll is level-triggered,
  // so anything left over simply wakes the next RunOnce).
  void AddSocket(zmq::socket_t& socket, Handler on_readable);
  // Same for a raw file descriptor (eventfd, signalfd, pipe...). The loop
  // does not own or close `fd`.
  void AddFd(int fd, Handler on_readable);
  // Unregisters. Safe from inside a handler: a removed handler is not run
  // again, even later in the same RunOnce.
  void RemoveSocket(zmq::socket_t& socket);
  void RemoveFd(int fd);
  size_t size() const;

  // Waits up to `max_wait` (negative counts as zero) until a registered
  // source is readable, then runs the handler of each readable source once.
  // Returns OK after a timeout or an interrupted wait as well. Errors:
  // Unavailable if the ZeroMQ context was terminated, Internal if zmq_poll
  // fails otherwise or a handler throws (handlers must not; the exception is
  // caught here so it never unwinds through the loop, and the remaining
  // handlers of this round are skipped).
  Status RunOnce(std::chrono::milliseconds max_wait);

 private:
  struct Entry {
    void* socket = nullptr;  // zmq socket handle, or null for an fd entry
    int fd = -1;
    Handler handler;
    bool removed = false;
  };
  void Compact();

  // unique_ptr keeps entries in place while handlers add new ones.
  std::vector<std::unique_ptr<Entry>> entries_;
  std::vector<zmq_pollitem_t> items_;  // scratch, rebuilt each RunOnce
  bool dispatching_ = false;
};

// Bounded multi-producer queue drained by the loop thread. Post() may be
// called from any thread; Drain() and fd() belong to the loop thread.
// Register it with `loop.AddFd(mailbox.fd(), [&] { for (auto& r : mailbox.Drain()) ...; })`.
// Items cross threads by move, never shared.
template <typename T>
class Mailbox {
 public:
  // Unavailable if the eventfd cannot be created (e.g. out of descriptors);
  // InvalidArgument if capacity is zero. With `bytes_of`, the items waiting
  // are also bounded in bytes: at most `max_bytes` (one item alone may be
  // larger, so a large item is never refused forever).
  using BytesOf = size_t (*)(const T&);
  static StatusOr<std::unique_ptr<Mailbox<T>>> Create(size_t capacity, size_t max_bytes = 0,
                                                      BytesOf bytes_of = nullptr);

  ~Mailbox();  // closes the eventfd
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;

  // Any thread. Queues `item` and wakes the loop. Returns false, leaving
  // `item` untouched, when `capacity` items (or, with a byte bound, more
  // than max_bytes with it) are already waiting.
  bool Post(T&& item);
  bool Post(const T& item) {
    T copy(item);
    return Post(std::move(copy));
  }

  // Loop thread. Returns every queued item in posting order (possibly none:
  // a wake-up can race with an earlier Drain).
  std::vector<T> Drain();

  int fd() const { return fd_; }
  size_t capacity() const { return capacity_; }

 private:
  Mailbox(int fd, size_t capacity, size_t max_bytes, BytesOf bytes_of)
      : fd_(fd), capacity_(capacity), max_bytes_(max_bytes), bytes_of_(bytes_of) {}

  const int fd_;
  const size_t capacity_;
  const size_t max_bytes_;
  const BytesOf bytes_of_;
  std::mutex mu_;
  std::deque<T> queue_;  // guarded by mu_
  size_t bytes_ = 0;     // guarded by mu_: bytes_of_ of the items queued
};

// Blocks SIGINT and SIGTERM and exposes them as a readable signalfd. Create
// it in main before any thread starts; threads inherit the mask. The mask is
// left blocked on destruction, so a late signal cannot kill a process that
// is already shutting down. Lives on the loop thread.
class SignalWatcher {
 public:
  // Internal if the mask cannot be set or the signalfd cannot be created.
  static StatusOr<std::unique_ptr<SignalWatcher>> Create();

  ~SignalWatcher();  // closes the signalfd
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

  int fd() const { return fd_; }
  // Registers fd() with `loop`, calling OnReadable.
  void AddTo(EventLoop& loop);
  // Reads every pending signal; sets stop_requested(). Never blocks.
  void OnReadable();
  // A programmatic stop (e.g. a control command), same effect as SIGTERM.
  void RequestStop() { stop_requested_ = true; }

  bool stop_requested() const { return stop_requested_; }
  int last_signal() const { return last_signal_; }  // 0 if none yet

 private:
  explicit SignalWatcher(int fd) : fd_(fd) {}

  const int fd_;
  bool stop_requested_ = false;
  int last_signal_ = 0;
};

// ---------------------------------------------------------------- details

namespace internal {
// eventfd helpers, defined in event_loop.cc (keeps <sys/eventfd.h> out of
// this header).
int CreateEventFd(std::string* error);  // -1 and sets *error on failure
void SignalEventFd(int fd);
void ResetEventFd(int fd);
void CloseFd(int fd);
}  // namespace internal

template <typename T>
StatusOr<std::unique_ptr<Mailbox<T>>> Mailbox<T>::Create(size_t capacity, size_t max_bytes, BytesOf bytes_of) {
  if (capacity == 0) return InvalidArgument("mailbox capacity must be positive");
  if (bytes_of != nullptr && max_bytes == 0) return InvalidArgument("mailbox byte bound must be positive");
  std::string error;
  const int fd = internal::CreateEventFd(&error);
  if (fd < 0) return Unavailable("cannot create mailbox eventfd: " + error);
  return std::unique_ptr<Mailbox<T>>(new Mailbox<T>(fd, capacity, max_bytes, bytes_of));
}

template <typename T>
Mailbox<T>::~Mailbox() {
  internal::CloseFd(fd_);
}

template <typename T>
bool Mailbox<T>::Post(T&& item) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.size() >= capacity_) return false;
    const size_t bytes = bytes_of_ ? bytes_of_(item) : 0;
    if (bytes_of_ && !queue_.empty() && bytes_ + bytes > max_bytes_) return false;
    bytes_ += bytes;
    queue_.push_back(std::move(item));
  }
  // Signalled after the push: a Drain that consumes this wake-up is
  // guaranteed to see the item.
  internal::SignalEventFd(fd_);
  return true;
}

template <typename T>
std::vector<T> Mailbox<T>::Drain() {
  // Reset before taking the queue: an item posted after the reset either
  // lands in this batch or re-arms the eventfd for the next RunOnce.
  internal::ResetEventFd(fd_);
  std::deque<T> taken;
  {
    std::lock_guard<std::mutex> lock(mu_);
    taken.swap(queue_);
    bytes_ = 0;
  }
  std::vector<T> out;
  out.reserve(taken.size());
  for (auto& item : taken) out.push_back(std::move(item));
  return out;
}

}  // namespace lowband
