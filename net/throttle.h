// ThrottledTransport: a Transport wrapper that emulates a slow link (say 80
// Mbit/s with 20 ms one-way latency) in front of any other transport, for
// benchmarks and tests of pipeline stages across sites.
//
// Model: one serial link per wrapper, shared by all peers. Messages leave in
// FIFO order; a message of B bytes (the sum of its frames' sizes) sent at
// `now` finishes transmission at
//     link_free = max(now, link_free) + B * 8 / bits_per_s
// and is handed to the inner transport at link_free + latency. By default
// only sends are throttled and TryReceive passes straight through (each side
// throttles its own sends, so a pair of wrappers models a full-duplex link).
// With ThrottleReceive() the wrapper also models the other direction on its
// own (a site's downlink when the far end is not throttled): what inner
// delivers is held behind a second serial link of the same rate and handed
// out by TryReceive once it has "arrived"; Pump() then also reports the time
// until the next arrival, and the owner calls TryReceive after each pump.
//
// Thread: lives on one thread (the daemon's event loop), like every
// Transport; no locks. Nothing happens in the background: due messages are
// released only by Pump() (and by Send, which pumps). The loop calls Pump()
// every iteration and uses its result as the poll timeout.
//
// Ownership: owns `inner`. Messages still queued when the wrapper is
// destroyed are discarded, as a socket closed with no linger would.
//
// Errors: Send never blocks. If accepting a message would put more than
// max_queued_bytes in the queue, Send returns Unavailable and drops that
// message only (like a full ZeroMQ queue). Failures of inner->Send happen at
// release time, after Send has returned: they are counted in
// failed_releases() (the last one kept in last_release_error()) and the
// queue moves on.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "base/status.h"
#include "net/transport.h"

namespace lowband {

class ThrottledTransport : public Transport {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Clock = std::function<TimePoint()>;

  // InvalidArgument (naming the value) unless inner is non-null, bits_per_s
  // is finite and > 0, latency >= 0 and max_queued_bytes > 0. An empty
  // `clock` means steady_clock::now.
  static StatusOr<std::unique_ptr<ThrottledTransport>> Create(std::unique_ptr<Transport> inner, double bits_per_s,
                                                              std::chrono::microseconds latency, Clock clock = {},
                                                              int64_t max_queued_bytes = int64_t{1} << 30);

  ThrottledTransport(const ThrottledTransport&) = delete;
  ThrottledTransport& operator=(const ThrottledTransport&) = delete;

  // Queues `frames` for `peer` behind earlier messages, then pumps. OK once
  // queued (inner failures surface later, see above); Unavailable if the
  // queue limit would be exceeded.
  Status Send(const std::string& peer, Frames frames) override;
  // Pass-through to inner, or (ThrottleReceive) the next message whose
  // arrival time has come.
  bool TryReceive(Inbound* out) override;
  // Throttle the receiving direction too, at the same rate and latency.
  void ThrottleReceive() { throttle_receive_ = true; }

  // Hands every message whose release time has come to inner, in order.
  // Returns how long until the next release (rounded up to whole
  // microseconds, so a poll with it never wakes early), or nullopt when the
  // queue is empty.
  std::optional<std::chrono::microseconds> Pump();

  Transport* inner() { return inner_.get(); }

  // Released to inner and accepted by it.
  int64_t bytes_sent() const { return bytes_sent_; }
  int64_t messages_sent() const { return messages_sent_; }
  // Accepted by Send but not yet released (transmitting or in flight).
  int64_t queued_bytes() const { return queued_bytes_; }
  size_t queued_messages() const { return queue_.size(); }
  // Refused by Send because the queue was full.
  int64_t dropped_messages() const { return dropped_messages_; }
  // Released but refused by inner->Send.
  int64_t failed_releases() const { return failed_releases_; }
  // ThrottleReceive: bytes handed out by TryReceive, and still held.
  int64_t bytes_received() const { return bytes_received_; }
  size_t held_messages() const { return in_queue_.size(); }
  const Status& last_release_error() const { return last_release_error_; }
  // Sum over accepted messages of the time each waited for the link to
  // finish earlier messages before its own transmission began (zero on an
  // idle link; excludes its own transmission time and the latency).
  std::chrono::nanoseconds total_queueing_delay() const { return total_queueing_delay_; }

 private:
  struct Pending {
    std::string peer;
    Frames frames;
    int64_t bytes;
    TimePoint release_at;
  };

  ThrottledTransport(std::unique_ptr<Transport> inner, double bits_per_s, std::chrono::microseconds latency,
                     Clock clock, int64_t max_queued_bytes);

  std::unique_ptr<Transport> inner_;
  double bits_per_s_;
  std::chrono::microseconds latency_;
  Clock clock_;
  int64_t max_queued_bytes_;

  // Release times are non-decreasing (FIFO link, constant latency), so the
  // front is always the next one due.
  std::deque<Pending> queue_;
  TimePoint link_free_{};
  bool throttle_receive_ = false;
  struct Arriving {
    Inbound message;
    TimePoint arrive_at;
  };
  std::deque<Arriving> in_queue_;  // non-decreasing arrival times
  TimePoint in_link_free_{};
  int64_t bytes_received_ = 0;
  int64_t bytes_sent_ = 0;
  int64_t messages_sent_ = 0;
  int64_t queued_bytes_ = 0;
  int64_t dropped_messages_ = 0;
  int64_t failed_releases_ = 0;
  Status last_release_error_;
  std::chrono::nanoseconds total_queueing_delay_{0};
};

}  // namespace lowband
