// ThrottledTransport over the in-process transport with a fake clock: the
// rate and latency arithmetic, FIFO order, the queue limit and Pump's wait.
#include "net/throttle.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "net/inproc.h"

namespace lowband {
namespace {

using namespace std::chrono_literals;
using TimePoint = ThrottledTransport::TimePoint;

struct FakeClock {
  TimePoint now{};  // starts at the clock's epoch
  ThrottledTransport::Clock fn() {
    return [this] { return now; };
  }
};

// A message of `bytes` in total, split over two frames, whose first byte
// tags it so that order can be checked on arrival.
Frames Message(int64_t bytes, uint8_t tag) {
  Frames f;
  f.emplace_back(static_cast<size_t>(bytes / 2), tag);
  f.emplace_back(static_cast<size_t>(bytes - bytes / 2), tag);
  return f;
}

uint8_t TagOf(const Inbound& in) {
  for (const Bytes& f : in.frames) {
    if (!f.empty()) return f[0];
  }
  return 0xff;
}

// Two endpoints "a" -> "b" with a throttle on a's sends.
struct Link {
  InprocNetwork net;
  FakeClock clock;
  std::unique_ptr<ThrottledTransport> a;
  std::unique_ptr<Transport> b;

  Link(double bits_per_s, std::chrono::microseconds latency, int64_t max_queued_bytes = int64_t{1} << 30) {
    b = net.CreateEndpoint("b");
    auto t = ThrottledTransport::Create(net.CreateEndpoint("a"), bits_per_s, latency, clock.fn(), max_queued_bytes);
    REQUIRE(t.ok());
    a = std::move(t).value();
  }
  int Drain(Transport& t, std::vector<uint8_t>* tags = nullptr) {
    Inbound in;
    int n = 0;
    while (t.TryReceive(&in)) {
      ++n;
      if (tags) tags->push_back(TagOf(in));
    }
    return n;
  }
};

TEST_CASE("throttle: 10 x 10,000 bytes at 80 Mbit/s, the last released at exactly 10 ms", "[unit][throttle]") {
  Link l(80e6, 0us);
  for (int i = 0; i < 10; ++i) REQUIRE(l.a->Send("b", Message(10000, static_cast<uint8_t>(i))).ok());
  CHECK(l.a->queued_bytes() == 100000);
  CHECK(l.a->queued_messages() == 10);

  // Message i finishes at (i+1) ms: one ns before, it is still queued.
  for (int i = 0; i < 10; ++i) {
    const TimePoint due = TimePoint{} + std::chrono::milliseconds(i + 1);
    l.clock.now = due - 1ns;
    l.a->Pump();
    CHECK(l.a->messages_sent() == i);
    CHECK(l.net.Pending() == static_cast<size_t>(i));
    l.clock.now = due;
    auto wait = l.a->Pump();
    CHECK(l.a->messages_sent() == i + 1);
    if (i < 9) {
      REQUIRE(wait.has_value());
      CHECK(*wait == 1000us);
    } else {
      CHECK_FALSE(wait.has_value());
    }
  }
  std::vector<uint8_t> tags;
  CHECK(l.Drain(*l.b, &tags) == 10);
  CHECK(tags == std::vector<uint8_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  CHECK(l.a->bytes_sent() == 100000);
  CHECK(l.a->queued_bytes() == 0);
  // Message i waited i ms for the link: 0 + 1 + ... + 9 = 45 ms.
  CHECK(l.a->total_queueing_delay() == 45ms);
}

TEST_CASE("throttle: latency is added after transmission, and an idle link starts fresh", "[unit][throttle]") {
  Link l(8e6, 20ms);  // 1,000 bytes take 1 ms
  REQUIRE(l.a->Send("b", Message(1000, 1)).ok());
  auto wait = l.a->Pump();
  REQUIRE(wait.has_value());
  CHECK(*wait == 21ms);
  l.clock.now += 21ms - 1ns;
  l.a->Pump();
  CHECK(l.net.Pending() == 0);
  l.clock.now += 1ns;
  CHECK_FALSE(l.a->Pump().has_value());
  CHECK(l.net.Pending() == 1);

  // Long after the link went idle, a new message is not charged for the gap.
  l.clock.now += 1s;
  REQUIRE(l.a->Send("b", Message(1000, 2)).ok());
  wait = l.a->Pump();
  REQUIRE(wait.has_value());
  CHECK(*wait == 21ms);
  CHECK(l.a->total_queueing_delay() == 0ns);
}

TEST_CASE("throttle: one FIFO link across peers", "[unit][throttle]") {
  InprocNetwork net;
  FakeClock clock;
  auto b = net.CreateEndpoint("b");
  auto c = net.CreateEndpoint("c");
  auto t = ThrottledTransport::Create(net.CreateEndpoint("a"), 8e6, 5ms, clock.fn());
  REQUIRE(t.ok());
  ThrottledTransport& a = **t;
  // A big message to b holds up a small one to c sent after it.
  REQUIRE(a.Send("b", Message(10000, 1)).ok());  // 10 ms
  REQUIRE(a.Send("c", Message(10, 2)).ok());     // 10 us after that
  REQUIRE(a.Send("b", Message(10, 3)).ok());
  clock.now += 15ms;
  a.Pump();
  CHECK(a.messages_sent() == 1);
  Inbound in;
  CHECK_FALSE(c->TryReceive(&in));
  clock.now += 10us;
  a.Pump();
  REQUIRE(c->TryReceive(&in));
  CHECK(TagOf(in) == 2);
  CHECK(in.peer == "a");
  clock.now += 10us;
  CHECK_FALSE(a.Pump().has_value());
  REQUIRE(b->TryReceive(&in));
  CHECK(TagOf(in) == 1);
  REQUIRE(b->TryReceive(&in));
  CHECK(TagOf(in) == 3);
}

TEST_CASE("throttle: a full queue refuses and drops only the message that would overflow it", "[unit][throttle]") {
  Link l(8e6, 0us, 2500);
  REQUIRE(l.a->Send("b", Message(1000, 1)).ok());
  REQUIRE(l.a->Send("b", Message(1000, 2)).ok());
  Status full = l.a->Send("b", Message(1000, 3));
  CHECK(full.code() == StatusCode::kUnavailable);
  CHECK(full.message().find("queue full") != std::string::npos);
  CHECK(l.a->dropped_messages() == 1);
  CHECK(l.a->queued_bytes() == 2000);
  // A smaller one still fits, and the dropped one did not hold up the link.
  REQUIRE(l.a->Send("b", Message(500, 4)).ok());
  CHECK(l.a->Send("b", Message(1, 5)).code() == StatusCode::kUnavailable);
  // A message larger than the whole queue can never be sent.
  CHECK(l.a->Send("b", Message(2501, 6)).code() == StatusCode::kUnavailable);

  // Releasing frees space: after 1 ms the first message has left.
  l.clock.now += 1ms;
  REQUIRE(l.a->Send("b", Message(1000, 7)).ok());
  l.clock.now += 1h;
  CHECK_FALSE(l.a->Pump().has_value());
  std::vector<uint8_t> tags;
  l.Drain(*l.b, &tags);
  CHECK(tags == std::vector<uint8_t>{1, 2, 4, 7});
  CHECK(l.a->dropped_messages() == 3);
}

TEST_CASE("throttle: zero-byte messages take no link time but keep their place", "[unit][throttle]") {
  SECTION("idle link, no latency: released within Send") {
    Link l(1e3, 0us);
    REQUIRE(l.a->Send("b", Frames{}).ok());
    REQUIRE(l.a->Send("b", Frames{Bytes{}}).ok());
    CHECK(l.net.Pending() == 2);
    CHECK(l.a->messages_sent() == 2);
    CHECK(l.a->bytes_sent() == 0);
    CHECK_FALSE(l.a->Pump().has_value());
  }
  SECTION("behind a busy link: waits for it") {
    Link l(8e6, 0us);
    REQUIRE(l.a->Send("b", Message(1000, 1)).ok());
    REQUIRE(l.a->Send("b", Frames{Bytes{}}).ok());
    auto wait = l.a->Pump();
    REQUIRE(wait.has_value());
    CHECK(*wait == 1ms);
    l.clock.now += 1ms;
    CHECK_FALSE(l.a->Pump().has_value());
    CHECK(l.net.Pending() == 2);
  }
}

TEST_CASE("throttle: Pump's wait rounds up to whole microseconds", "[unit][throttle]") {
  Link l(3e6, 0us);  // 1 byte = 8/3 us
  REQUIRE(l.a->Send("b", Message(1, 1)).ok());
  auto wait = l.a->Pump();
  REQUIRE(wait.has_value());
  CHECK(*wait == 3us);  // 2.667 us, rounded up so the poll does not wake early
  l.clock.now += 2us;
  wait = l.a->Pump();
  REQUIRE(wait.has_value());
  CHECK(*wait == 1us);
  CHECK(l.net.Pending() == 0);
  l.clock.now += *wait;
  CHECK_FALSE(l.a->Pump().has_value());
  CHECK(l.net.Pending() == 1);
}

TEST_CASE("throttle: inner failures at release are counted and the queue moves on", "[unit][throttle]") {
  Link l(8e6, 0us);
  REQUIRE(l.a->Send("nobody", Message(1000, 1)).ok());  // queued: the failure comes at release
  REQUIRE(l.a->Send("b", Message(1000, 2)).ok());
  l.clock.now += 2ms;
  CHECK_FALSE(l.a->Pump().has_value());
  CHECK(l.a->failed_releases() == 1);
  CHECK(l.a->last_release_error().code() == StatusCode::kUnavailable);
  CHECK(l.a->messages_sent() == 1);
  CHECK(l.a->bytes_sent() == 1000);
  CHECK(l.net.Pending() == 1);
}

TEST_CASE("throttle: receiving passes through unthrottled", "[unit][throttle]") {
  Link l(1.0, 1h);
  REQUIRE(l.b->Send("a", Message(1000, 9)).ok());
  Inbound in;
  REQUIRE(l.a->TryReceive(&in));
  CHECK(in.peer == "b");
  CHECK(TagOf(in) == 9);
  CHECK_FALSE(l.a->TryReceive(&in));
}

TEST_CASE("throttle: ThrottleReceive holds inbound messages behind a link of the same rate", "[unit][throttle]") {
  Link l(8e6, 2ms);  // 1,000 bytes take 1 ms, then 2 ms of latency
  l.a->ThrottleReceive();
  for (uint8_t i = 0; i < 3; ++i) REQUIRE(l.b->Send("a", Message(1000, i)).ok());
  Inbound in;
  // All three reach inner at once; they arrive at 3, 4 and 5 ms.
  CHECK_FALSE(l.a->TryReceive(&in));
  CHECK(l.a->held_messages() == 3);
  auto wait = l.a->Pump();
  REQUIRE(wait.has_value());
  CHECK(*wait == 3000us);
  std::vector<uint8_t> tags;
  for (int ms : {3, 4, 5}) {
    l.clock.now = TimePoint{} + std::chrono::milliseconds(ms) - 1ns;
    CHECK_FALSE(l.a->TryReceive(&in));
    l.clock.now = TimePoint{} + std::chrono::milliseconds(ms);
    REQUIRE(l.a->TryReceive(&in));
    tags.push_back(TagOf(in));
    CHECK(in.peer == "b");
  }
  CHECK(tags == std::vector<uint8_t>{0, 1, 2});
  CHECK(l.a->bytes_received() == 3000);
  CHECK_FALSE(l.a->Pump().has_value());
  // Sends are throttled independently of the receiving direction.
  REQUIRE(l.a->Send("b", Message(1000, 7)).ok());
  CHECK(l.Drain(*l.b) == 0);
  l.clock.now += 3ms;
  l.a->Pump();
  CHECK(l.Drain(*l.b) == 1);
}

TEST_CASE("throttle: invalid Create arguments are rejected", "[unit][throttle]") {
  InprocNetwork net;
  auto bad = [&](double bps, std::chrono::microseconds lat, int64_t max_q, const std::string& what) {
    auto t = ThrottledTransport::Create(net.CreateEndpoint("x"), bps, lat, {}, max_q);
    REQUIRE_FALSE(t.ok());
    CHECK(t.status().code() == StatusCode::kInvalidArgument);
    CHECK(t.status().message().find(what) != std::string::npos);
  };
  bad(0, 0us, 1, "bits_per_s");
  bad(-1, 0us, 1, "bits_per_s");
  bad(std::numeric_limits<double>::infinity(), 0us, 1, "bits_per_s");
  bad(std::nan(""), 0us, 1, "bits_per_s");
  bad(1e6, -1us, 1, "latency");
  bad(1e6, 0us, 0, "max_queued_bytes");
  bad(1e6, 0us, -5, "max_queued_bytes");
  auto null_inner = ThrottledTransport::Create(nullptr, 1e6, 0us);
  CHECK(null_inner.status().code() == StatusCode::kInvalidArgument);
  // The defaults (real clock, 1 GiB queue) work.
  auto ok = ThrottledTransport::Create(net.CreateEndpoint("y"), 1e6, 0us);
  REQUIRE(ok.ok());
  auto z = net.CreateEndpoint("z");
  REQUIRE((*ok)->Send("z", Frames{}).ok());
  CHECK((*ok)->messages_sent() == 1);
}

}  // namespace
}  // namespace lowband
