#include "net/zmq/event_loop.h"

#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>

namespace lowband {

// ------------------------------------------------------------------ EventLoop

void EventLoop::AddSocket(zmq::socket_t& socket, Handler on_readable) {
  auto e = std::make_unique<Entry>();
  e->socket = socket.handle();
  e->handler = std::move(on_readable);
  entries_.push_back(std::move(e));
}

void EventLoop::AddFd(int fd, Handler on_readable) {
  auto e = std::make_unique<Entry>();
  e->fd = fd;
  e->handler = std::move(on_readable);
  entries_.push_back(std::move(e));
}

void EventLoop::RemoveSocket(zmq::socket_t& socket) {
  void* handle = socket.handle();
  for (auto& e : entries_) {
    if (e->socket != nullptr && e->socket == handle) e->removed = true;
  }
  if (!dispatching_) Compact();
}

void EventLoop::RemoveFd(int fd) {
  for (auto& e : entries_) {
    if (e->socket == nullptr && e->fd == fd) e->removed = true;
  }
  if (!dispatching_) Compact();
}

size_t EventLoop::size() const {
  return static_cast<size_t>(
      std::count_if(entries_.begin(), entries_.end(), [](const auto& e) { return !e->removed; }));
}

void EventLoop::Compact() {
  entries_.erase(std::remove_if(entries_.begin(), entries_.end(), [](const auto& e) { return e->removed; }),
                 entries_.end());
}

Status EventLoop::RunOnce(std::chrono::milliseconds max_wait) {
  if (dispatching_) return Internal("EventLoop::RunOnce called from inside a handler");
  Compact();
  if (max_wait.count() < 0) max_wait = std::chrono::milliseconds(0);

  items_.clear();
  items_.reserve(entries_.size());
  for (const auto& e : entries_) {
    zmq_pollitem_t item{};
    item.socket = e->socket;
    item.fd = e->socket != nullptr ? 0 : e->fd;
    item.events = ZMQ_POLLIN;
    items_.push_back(item);
  }

  int ready = 0;
  try {
    ready = zmq::poll(items_, max_wait);
  } catch (const zmq::error_t& e) {
    if (e.num() == EINTR) return Status::Ok();
    if (e.num() == ETERM) return Unavailable("event loop: ZeroMQ context terminated");
    return Internal(std::string("event loop: zmq_poll failed: ") + e.what());
  }
  if (ready <= 0) return Status::Ok();

  // Only the entries that existed when polling; handlers may add more.
  const size_t n = items_.size();
  std::vector<Entry*> snapshot;
  snapshot.reserve(n);
  for (size_t i = 0; i < n; ++i) snapshot.push_back(entries_[i].get());

  dispatching_ = true;
  Status status;
  for (size_t i = 0; i < n; ++i) {
    if ((items_[i].revents & (ZMQ_POLLIN | ZMQ_POLLERR)) == 0) continue;
    Entry* e = snapshot[i];
    if (e->removed || !e->handler) continue;
    try {
      e->handler();
    } catch (const std::exception& ex) {
      status = Internal(std::string("event loop handler threw: ") + ex.what());
      break;
    } catch (...) {
      status = Internal("event loop handler threw a non-standard exception");
      break;
    }
  }
  dispatching_ = false;
  return status;
}

// ------------------------------------------------------------------ eventfd

namespace internal {

int CreateEventFd(std::string* error) {
  const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) *error = std::strerror(errno);
  return fd;
}

void SignalEventFd(int fd) {
  const uint64_t one = 1;
  // EAGAIN only when the counter would overflow, i.e. the loop is already
  // woken; EINTR cannot happen on a non-blocking eventfd write.
  ssize_t rc;
  do {
    rc = ::write(fd, &one, sizeof(one));
  } while (rc < 0 && errno == EINTR);
}

void ResetEventFd(int fd) {
  uint64_t value = 0;
  ssize_t rc;
  do {
    rc = ::read(fd, &value, sizeof(value));  // EAGAIN when already zero
  } while (rc < 0 && errno == EINTR);
}

void CloseFd(int fd) {
  if (fd >= 0) ::close(fd);
}

}  // namespace internal

// ------------------------------------------------------------------ SignalWatcher

StatusOr<std::unique_ptr<SignalWatcher>> SignalWatcher::Create() {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  const int rc = pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  if (rc != 0) return Internal(std::string("pthread_sigmask: ") + std::strerror(rc));
  const int fd = ::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (fd < 0) return Internal(std::string("signalfd: ") + std::strerror(errno));
  return std::unique_ptr<SignalWatcher>(new SignalWatcher(fd));
}

SignalWatcher::~SignalWatcher() { internal::CloseFd(fd_); }

void SignalWatcher::AddTo(EventLoop& loop) {
  loop.AddFd(fd_, [this] { OnReadable(); });
}

void SignalWatcher::OnReadable() {
  signalfd_siginfo info;
  while (true) {
    const ssize_t rc = ::read(fd_, &info, sizeof(info));
    if (rc < 0 && errno == EINTR) continue;
    if (rc != static_cast<ssize_t>(sizeof(info))) break;  // EAGAIN: nothing more pending
    last_signal_ = static_cast<int>(info.ssi_signo);
    stop_requested_ = true;
  }
}

}  // namespace lowband
