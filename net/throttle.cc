#include "net/throttle.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace lowband {

namespace {

// Transmission time of `bytes` at `bits_per_s`, to the nearest nanosecond:
// exact for the round numbers benchmarks use (10,000 B at 80 Mbit/s is
// 1,000,000 ns) instead of drifting by one ns per message as ceil would.
// Capped at ~30 years so a pathological rate cannot overflow the clock.
std::chrono::nanoseconds TransmitTime(int64_t bytes, double bits_per_s) {
  const double ns = static_cast<double>(bytes) * 8.0 * 1e9 / bits_per_s;
  constexpr double kMaxNs = 1e18;
  return std::chrono::nanoseconds(static_cast<int64_t>(std::llround(std::min(ns, kMaxNs))));
}

}  // namespace

StatusOr<std::unique_ptr<ThrottledTransport>> ThrottledTransport::Create(std::unique_ptr<Transport> inner,
                                                                         double bits_per_s,
                                                                         std::chrono::microseconds latency,
                                                                         Clock clock, int64_t max_queued_bytes) {
  if (inner == nullptr) return InvalidArgument("throttle: inner transport is null");
  if (!std::isfinite(bits_per_s) || bits_per_s <= 0) {
    return InvalidArgument("throttle: bits_per_s must be finite and > 0, got " + std::to_string(bits_per_s));
  }
  if (latency.count() < 0) {
    return InvalidArgument("throttle: latency must be >= 0, got " + std::to_string(latency.count()) + " us");
  }
  if (max_queued_bytes <= 0) {
    return InvalidArgument("throttle: max_queued_bytes must be > 0, got " + std::to_string(max_queued_bytes));
  }
  if (!clock) clock = [] { return std::chrono::steady_clock::now(); };
  return std::unique_ptr<ThrottledTransport>(
      new ThrottledTransport(std::move(inner), bits_per_s, latency, std::move(clock), max_queued_bytes));
}

ThrottledTransport::ThrottledTransport(std::unique_ptr<Transport> inner, double bits_per_s,
                                       std::chrono::microseconds latency, Clock clock, int64_t max_queued_bytes)
    : inner_(std::move(inner)),
      bits_per_s_(bits_per_s),
      latency_(latency),
      clock_(std::move(clock)),
      max_queued_bytes_(max_queued_bytes) {}

Status ThrottledTransport::Send(const std::string& peer, Frames frames) {
  // Release what is due first, so the queue limit sees the space it frees.
  Pump();
  int64_t bytes = 0;
  for (const Bytes& f : frames) bytes += static_cast<int64_t>(f.size());
  if (bytes > max_queued_bytes_ - queued_bytes_) {
    ++dropped_messages_;
    return Unavailable("throttle: send queue full, dropped " + std::to_string(bytes) + "-byte message to '" + peer +
                       "' (" + std::to_string(queued_bytes_) + " of " + std::to_string(max_queued_bytes_) +
                       " bytes queued)");
  }
  const TimePoint now = clock_();
  const TimePoint start = std::max(now, link_free_);
  total_queueing_delay_ += start - now;
  link_free_ = start + TransmitTime(bytes, bits_per_s_);
  queue_.push_back(Pending{peer, std::move(frames), bytes, link_free_ + latency_});
  queued_bytes_ += bytes;
  // A message due right away (empty, or zero latency on a fast link) leaves now.
  Pump();
  return Status::Ok();
}

bool ThrottledTransport::TryReceive(Inbound* out) {
  if (!throttle_receive_) return inner_->TryReceive(out);
  const TimePoint now = clock_();
  Inbound in;
  while (inner_->TryReceive(&in)) {
    int64_t bytes = 0;
    for (const Bytes& f : in.frames) bytes += static_cast<int64_t>(f.size());
    const TimePoint start = std::max(now, in_link_free_);
    in_link_free_ = start + TransmitTime(bytes, bits_per_s_);
    in_queue_.push_back(Arriving{std::move(in), in_link_free_ + latency_});
    in = Inbound{};
  }
  if (in_queue_.empty() || in_queue_.front().arrive_at > now) return false;
  *out = std::move(in_queue_.front().message);
  for (const Bytes& f : out->frames) bytes_received_ += static_cast<int64_t>(f.size());
  in_queue_.pop_front();
  return true;
}

std::optional<std::chrono::microseconds> ThrottledTransport::Pump() {
  const TimePoint now = clock_();
  while (!queue_.empty() && queue_.front().release_at <= now) {
    Pending p = std::move(queue_.front());
    queue_.pop_front();
    queued_bytes_ -= p.bytes;
    Status st = inner_->Send(p.peer, std::move(p.frames));
    if (st.ok()) {
      bytes_sent_ += p.bytes;
      ++messages_sent_;
    } else {
      ++failed_releases_;
      last_release_error_ = std::move(st);
    }
  }
  std::optional<TimePoint> next;
  if (!queue_.empty()) next = queue_.front().release_at;
  if (!in_queue_.empty() && (!next || in_queue_.front().arrive_at < *next)) next = in_queue_.front().arrive_at;
  if (!next) return std::nullopt;
  return std::chrono::ceil<std::chrono::microseconds>(std::max(*next - now, TimePoint::duration::zero()));
}

}  // namespace lowband
