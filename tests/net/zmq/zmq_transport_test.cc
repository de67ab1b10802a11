// The transport suite (tests/net/transport_suite.h) over ZeroMQ on loopback
// TCP; plus the event loop pieces (Mailbox, EventLoop, SignalWatcher).
#include "net/zmq/zmq_transport.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "net/zmq/event_loop.h"
#include "tests/fakes/wait.h"
#include "tests/net/transport_suite.h"

namespace lowband {
namespace {

using namespace transport_suite;
using namespace std::chrono_literals;

class ZmqHarness : public Harness {
 public:
  ZmqHarness() {
    auto server = ZmqServerTransport::Bind(ctx_, "tcp://127.0.0.1:*", kMaxMessageBytes);
    INFO(server.status().ToString());
    REQUIRE(server.ok());
    server_ = std::move(server).value();
    REQUIRE(server_->endpoint().rfind("tcp://127.0.0.1:", 0) == 0);
    REQUIRE(server_->endpoint() != "tcp://127.0.0.1:*");
  }
  ~ZmqHarness() override { server_.reset(); }  // sockets before the context
  Transport& server() override { return *server_; }
  std::unique_ptr<Transport> NewClient(const std::string& id) override {
    auto client = ZmqClientTransport::Connect(ctx_, server_->endpoint(), id, kMaxMessageBytes);
    INFO(client.status().ToString());
    REQUIRE(client.ok());
    return std::move(client).value();
  }
  std::string server_peer() const override { return ""; }  // ignored by DEALER
  int64_t server_dropped() const override { return static_cast<int64_t>(server_->dropped_messages()); }
  void Wait(Transport& t) override {
    // Block on the socket itself (bounded), not a fixed sleep.
    zmq::socket_t* s = nullptr;
    if (auto* srv = dynamic_cast<ZmqServerTransport*>(&t)) s = &srv->socket();
    if (auto* cli = dynamic_cast<ZmqClientTransport*>(&t)) s = &cli->socket();
    if (s == nullptr) return;
    zmq_pollitem_t item{s->handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, 20ms);
  }

 private:
  zmq::context_t ctx_;  // declared first: destroyed last
  std::unique_ptr<ZmqServerTransport> server_;
};

// Polls `t` until a message arrives or the deadline passes.

TEST_CASE("transport suite: ZeroMQ over loopback TCP", "[zmq]") {
  RunTransportSuite([] { return std::make_unique<ZmqHarness>(); });
}

TEST_CASE("zmq: a payload sent to many peers is one buffer, and queued sends are bounded in bytes", "[zmq]") {
  zmq::context_t ctx;
  constexpr int64_t kMax = 128 << 20;
  auto server = ZmqServerTransport::Bind(ctx, "tcp://127.0.0.1:*", kMax);
  REQUIRE(server.ok());
  std::vector<std::unique_ptr<ZmqClientTransport>> clients;
  for (int i = 0; i < 3; ++i) {
    auto c = ZmqClientTransport::Connect(ctx, (*server)->endpoint(), "c" + std::to_string(i), kMax);
    REQUIRE(c.ok());
    REQUIRE((*c)->Send("", Frames{Bytes{1}}).ok());
    clients.push_back(std::move(c).value());
  }
  std::vector<std::string> peers;
  Inbound in;
  REQUIRE(testing::WaitUntil([&] {
    while ((*server)->TryReceive(&in)) peers.push_back(in.peer);
    return peers.size() == 3;
  }, 10s));
  // One 64 MiB payload to three peers that are not reading (far more than
  // loopback TCP buffers take): libzmq holds it, once.
  (*server)->set_max_send_queue_bytes(96 << 20);
  const Frame payload(Bytes(64 << 20, 0x5a));
  for (const std::string& p : peers) REQUIRE((*server)->Send(p, Frames{Bytes{1}, payload}).ok());
  CHECK((*server)->queued_send_bytes() == (64 << 20));
  // Another distinct 64 MiB buffer would pass the 96 MiB bound.
  const Frame other(Bytes(64 << 20, 0x33));
  Status st = (*server)->Send(peers[0], Frames{Bytes{1}, other});
  CHECK(st.code() == StatusCode::kUnavailable);
  CHECK(st.message().find("send queue holds") != std::string::npos);
  // Every client gets the payload intact; then nothing is held.
  for (auto& c : clients) {
    Inbound got;
    REQUIRE(testing::WaitUntil([&] { return c->TryReceive(&got); }, 10s));
    REQUIRE(got.frames.size() == 2);
    CHECK(got.frames[1] == payload);
  }
  CHECK(testing::WaitUntil([&] { return (*server)->queued_send_bytes() == 0; }, 10s));
}

TEST_CASE("zmq: bind failure names the endpoint and the reason", "[zmq]") {
  zmq::context_t ctx;
  auto first = ZmqServerTransport::Bind(ctx, "tcp://127.0.0.1:*", 1 << 20);
  REQUIRE(first.ok());
  auto second = ZmqServerTransport::Bind(ctx, (*first)->endpoint(), 1 << 20);
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().code() == StatusCode::kUnavailable);
  CHECK(second.status().message().find((*first)->endpoint()) != std::string::npos);
  CHECK(second.status().message().find("in use") != std::string::npos);

  auto bad = ZmqServerTransport::Bind(ctx, "nonsense://x", 1 << 20);
  CHECK_FALSE(bad.ok());
  auto bad_id = ZmqClientTransport::Connect(ctx, (*first)->endpoint(), std::string("\0x", 2), 1 << 20);
  CHECK(bad_id.status().code() == StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- event loop

TEST_CASE("mailbox: a post from another thread wakes the loop", "[unit]") {
  auto mailbox = Mailbox<std::unique_ptr<int>>::Create(8);
  REQUIRE(mailbox.ok());
  auto& mb = **mailbox;
  EventLoop loop;
  std::vector<int> got;
  loop.AddFd(mb.fd(), [&] {
    for (auto& p : mb.Drain()) got.push_back(*p);
  });

  constexpr int kItems = 200;  // more than the capacity: the producer retries
  std::atomic<bool> refused_post_kept_item{true};  // Catch2 assertions are main-thread only
  std::thread producer([&] {
    for (int i = 0; i < kItems; ++i) {
      auto item = std::make_unique<int>(i);
      while (!mb.Post(std::move(item))) {
        if (item == nullptr) refused_post_kept_item = false;  // a refused post must not take it
        std::this_thread::yield();
      }
    }
  });
  const auto deadline = Clock::now() + kDeadline;
  while (got.size() < kItems && Clock::now() < deadline) {
    REQUIRE(loop.RunOnce(100ms).ok());
  }
  producer.join();
  CHECK(refused_post_kept_item);
  REQUIRE(got.size() == kItems);
  for (int i = 0; i < kItems; ++i) CHECK(got[i] == i);
  // Nothing left: the loop times out quietly.
  REQUIRE(loop.RunOnce(0ms).ok());
  CHECK(got.size() == kItems);
}

TEST_CASE("mailbox: bounded", "[unit]") {
  auto mailbox = Mailbox<std::string>::Create(2);
  REQUIRE(mailbox.ok());
  auto& mb = **mailbox;
  CHECK(mb.Post(std::string("a")));
  CHECK(mb.Post(std::string("b")));
  std::string c = "c";
  CHECK_FALSE(mb.Post(std::move(c)));
  CHECK(c == "c");
  CHECK(mb.Drain() == std::vector<std::string>{"a", "b"});
  CHECK(mb.Drain().empty());
  CHECK(mb.Post(std::move(c)));
  CHECK_FALSE(Mailbox<int>::Create(0).ok());
}

TEST_CASE("mailbox: bounded in bytes, one large item alone always fits", "[unit]") {
  auto mailbox = Mailbox<std::string>::Create(100, 10, [](const std::string& s) { return s.size(); });
  REQUIRE(mailbox.ok());
  auto& mb = **mailbox;
  CHECK(mb.Post(std::string(6, 'a')));
  CHECK_FALSE(mb.Post(std::string(5, 'b')));  // 11 bytes would wait
  CHECK(mb.Post(std::string(4, 'c')));        // 10 is the bound
  CHECK(mb.Drain().size() == 2);
  CHECK(mb.Post(std::string(50, 'd')));  // larger than the bound, but alone
  CHECK_FALSE(mb.Post(std::string(1, 'e')));
  CHECK(mb.Drain().size() == 1);
  CHECK_FALSE((Mailbox<std::string>::Create(4, 0, [](const std::string& s) { return s.size(); }).ok()));
}

TEST_CASE("event loop: sockets, removal and handler errors", "[zmq]") {
  zmq::context_t ctx;
  auto server = ZmqServerTransport::Bind(ctx, "tcp://127.0.0.1:*", 1 << 20);
  REQUIRE(server.ok());
  auto client = ZmqClientTransport::Connect(ctx, (*server)->endpoint(), "w1", 1 << 20);
  REQUIRE(client.ok());

  EventLoop loop;
  std::vector<std::string> received;
  loop.AddSocket((*server)->socket(), [&] {
    Inbound in;
    while ((*server)->TryReceive(&in)) received.push_back(in.peer);
  });
  CHECK(loop.size() == 1);
  REQUIRE((*client)->Send("", HeartbeatFrames("x")).ok());
  const auto deadline = Clock::now() + kDeadline;
  while (received.empty() && Clock::now() < deadline) REQUIRE(loop.RunOnce(100ms).ok());
  CHECK(received == std::vector<std::string>{"w1"});

  // A handler that throws: the loop reports Internal instead of unwinding.
  loop.RemoveSocket((*server)->socket());
  CHECK(loop.size() == 0);
  loop.AddSocket((*server)->socket(), [] { throw std::runtime_error("boom"); });
  REQUIRE((*client)->Send("", HeartbeatFrames("y")).ok());
  Status s;
  const auto deadline2 = Clock::now() + kDeadline;
  while (s.ok() && Clock::now() < deadline2) s = loop.RunOnce(100ms);
  CHECK(s.code() == StatusCode::kInternal);
  CHECK(s.message().find("boom") != std::string::npos);
}

TEST_CASE("signal watcher: SIGTERM becomes a stop request", "[unit]") {
  sigset_t before;
  pthread_sigmask(SIG_SETMASK, nullptr, &before);
  {
    auto watcher = SignalWatcher::Create();
    REQUIRE(watcher.ok());
    EventLoop loop;
    (*watcher)->AddTo(loop);
    CHECK_FALSE((*watcher)->stop_requested());
    // Thread-directed, and blocked in this thread: it waits in the signalfd.
    REQUIRE(pthread_kill(pthread_self(), SIGTERM) == 0);
    const auto deadline = Clock::now() + kDeadline;
    while (!(*watcher)->stop_requested() && Clock::now() < deadline) REQUIRE(loop.RunOnce(100ms).ok());
    CHECK((*watcher)->stop_requested());
    CHECK((*watcher)->last_signal() == SIGTERM);
  }
  pthread_sigmask(SIG_SETMASK, &before, nullptr);  // the signal was consumed
}

}  // namespace
}  // namespace lowband
