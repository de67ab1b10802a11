// One transport suite, run over the in-process transport and over ZeroMQ on
// loopback TCP; plus the event loop pieces (Mailbox, EventLoop, SignalWatcher).
#include "common/transport.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "common/event_loop.h"
#include "common/params.h"
#include "common/transport_zmq.h"
#include "common/wire.h"

namespace lowband {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kDeadline = 10s;
// Small bounds so the oversize cases stay cheap.
constexpr size_t kMaxHeaderBytes = 4096;
constexpr size_t kMaxBulkBytes = 256 << 10;
constexpr int64_t kMaxMessageBytes = kMaxBulkBytes + kMaxHeaderBytes;

WireLimits TestLimits() {
  WireLimits l;
  l.max_header_bytes = kMaxHeaderBytes;
  l.max_bulk_bytes = kMaxBulkBytes;
  return l;
}

// ---------------------------------------------------------------- harnesses

// A server transport plus a way to make clients connected to it.
class Harness {
 public:
  virtual ~Harness() = default;
  virtual Transport& server() = 0;
  virtual std::unique_ptr<Transport> NewClient(const std::string& id) = 0;
  // What a client passes as `peer` to reach the server.
  virtual std::string server_peer() const = 0;
  // Messages the server transport itself dropped (bounds enforced below the
  // wire layer); -1 where the transport has no such bounds.
  virtual int64_t server_dropped() const = 0;
  // Lets pending network work happen before the next TryReceive.
  virtual void Wait(Transport& t) = 0;
};

class InprocHarness : public Harness {
 public:
  InprocHarness() : server_(net_.CreateEndpoint("coordinator")) {}
  Transport& server() override { return *server_; }
  std::unique_ptr<Transport> NewClient(const std::string& id) override { return net_.CreateEndpoint(id); }
  std::string server_peer() const override { return "coordinator"; }
  int64_t server_dropped() const override { return -1; }
  void Wait(Transport&) override {}  // delivery is synchronous

 private:
  InprocNetwork net_;
  std::unique_ptr<Transport> server_;
};

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
bool ReceiveWithin(Harness& h, Transport& t, Inbound* out, std::chrono::milliseconds timeout = kDeadline) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (t.TryReceive(out)) return true;
    h.Wait(t);
  }
  return t.TryReceive(out);
}

Message DeltaWithBulk(size_t bytes, uint32_t round) {
  Bytes bulk(bytes);
  for (size_t i = 0; i < bytes; ++i) bulk[i] = static_cast<uint8_t>(i * 7 + round);
  DeltaUpload d;
  d.round = round;
  d.train_loss = 3.5;
  d.blob.num_elements = bytes / 4;
  d.blob.byte_length = bytes;
  d.blob.checksum = BulkChecksum(bulk.data(), bulk.size());
  Message m;
  m.sender_id = "client";
  m.body = d;
  m.bulk = std::move(bulk);
  return m;
}

Message AggregateWithBulk(const Bytes& bulk, uint32_t round) {
  Aggregate a;
  a.round = round;
  a.contributors = 1;
  a.blob.byte_length = bulk.size();
  a.blob.checksum = BulkChecksum(bulk.data(), bulk.size());
  Message m;
  m.sender_id = "server";
  m.body = a;
  m.bulk = bulk;
  return m;
}

Frames HeartbeatFrames(const std::string& state, uint32_t round = 0) {
  Message m;
  m.body = Heartbeat{round, state};
  return EncodeMessage(m);
}

// ---------------------------------------------------------------- the suite

void RunTransportSuite(const std::function<std::unique_ptr<Harness>()>& make_harness) {
  std::unique_ptr<Harness> h = make_harness();
  Transport& server = h->server();

  SECTION("client -> server -> client echo with a bulk frame") {
    auto client = h->NewClient("worker-a");
    // 100 KiB: above the ZeroMQ zero-copy threshold.
    const Message sent = DeltaWithBulk(100 << 10, 4);
    REQUIRE(client->Send(h->server_peer(), EncodeMessage(sent)).ok());

    Inbound in;
    REQUIRE(ReceiveWithin(*h, server, &in));
    CHECK(in.peer == "worker-a");
    REQUIRE(in.frames.size() == 2);
    auto request = DecodeMessage(std::move(in.frames), TestLimits());
    REQUIRE(request.ok());
    REQUIRE(std::holds_alternative<DeltaUpload>(request->body));
    CHECK(std::get<DeltaUpload>(request->body).round == 4);
    CHECK(request->bulk == sent.bulk);

    REQUIRE(server.Send(in.peer, EncodeMessage(AggregateWithBulk(request->bulk, 5))).ok());
    Inbound back;
    REQUIRE(ReceiveWithin(*h, *client, &back));
    auto reply = DecodeMessage(std::move(back.frames), TestLimits());
    REQUIRE(reply.ok());
    REQUIRE(std::holds_alternative<Aggregate>(reply->body));
    CHECK(std::get<Aggregate>(reply->body).round == 5);
    CHECK(reply->bulk == sent.bulk);
    CHECK_FALSE(client->TryReceive(&back));
  }

  SECTION("several clients are told apart by peer id") {
    const std::vector<std::string> ids = {"worker-a", "worker-b", "worker-c"};
    std::vector<std::unique_ptr<Transport>> clients;
    for (const auto& id : ids) clients.push_back(h->NewClient(id));
    for (size_t i = 0; i < ids.size(); ++i) {
      REQUIRE(clients[i]->Send(h->server_peer(), HeartbeatFrames(ids[i])).ok());
    }
    std::vector<std::string> seen;
    for (size_t n = 0; n < ids.size(); ++n) {
      Inbound in;
      REQUIRE(ReceiveWithin(*h, server, &in));
      auto msg = DecodeMessage(in.frames, TestLimits());
      REQUIRE(msg.ok());
      CHECK(std::get<Heartbeat>(msg->body).state == in.peer);  // the sender's own id
      seen.push_back(in.peer);
      // Reply with the peer id, round = its index, to that peer only.
      REQUIRE(server.Send(in.peer, HeartbeatFrames("to:" + in.peer, static_cast<uint32_t>(n))).ok());
    }
    std::sort(seen.begin(), seen.end());
    CHECK(seen == ids);
    for (size_t i = 0; i < ids.size(); ++i) {
      Inbound back;
      REQUIRE(ReceiveWithin(*h, *clients[i], &back));
      auto msg = DecodeMessage(back.frames, TestLimits());
      REQUIRE(msg.ok());
      CHECK(std::get<Heartbeat>(msg->body).state == "to:" + ids[i]);
      CHECK_FALSE(clients[i]->TryReceive(&back));
    }
  }

  SECTION("send to an unknown peer is Unavailable") {
    Status s = server.Send("nobody", HeartbeatFrames("lost"));
    CHECK(s.code() == StatusCode::kUnavailable);
    CHECK_FALSE(s.message().empty());
    // And the server still works afterwards.
    auto client = h->NewClient("worker-a");
    REQUIRE(client->Send(h->server_peer(), HeartbeatFrames("hi")).ok());
    Inbound in;
    REQUIRE(ReceiveWithin(*h, server, &in));
    CHECK(in.peer == "worker-a");
  }

  SECTION("oversized and over-long messages are dropped, the server keeps serving") {
    auto client = h->NewClient("worker-big");
    // Four data frames.
    REQUIRE(client->Send(h->server_peer(), Frames{Bytes{1}, Bytes{2}, Bytes{3}, Bytes{4}}).ok());
    // Every frame within bounds, the whole message not.
    const Frames too_big_total = {HeartbeatFrames("x")[0], Bytes(200 << 10, 0xaa), Bytes(200 << 10, 0xbb)};
    REQUIRE(client->Send(h->server_peer(), too_big_total).ok());
    // One frame over the bound: ZeroMQ drops the connection, the client
    // reconnects on its own.
    (void)client->Send(h->server_peer(), Frames{Bytes(kMaxMessageBytes + 1, 0xcc)});

    // Keep pinging until the server sees a valid message again.
    int rejected_by_wire = 0;
    bool got_ping = false;
    const auto deadline = Clock::now() + kDeadline;
    while (!got_ping && Clock::now() < deadline) {
      (void)client->Send(h->server_peer(), HeartbeatFrames("ping"));
      Inbound in;
      while (!got_ping && ReceiveWithin(*h, server, &in, 100ms)) {
        uint64_t total = 0;
        for (const auto& f : in.frames) total += f.size();
        if (h->server_dropped() >= 0) {
          // The ZeroMQ transport enforces its bounds itself.
          CHECK(in.frames.size() <= 3);
          CHECK(total <= static_cast<uint64_t>(kMaxMessageBytes));
        }
        auto msg = DecodeMessage(in.frames, TestLimits());
        if (!msg.ok()) {
          ++rejected_by_wire;
          continue;
        }
        got_ping = std::get<Heartbeat>(msg->body).state == "ping";
        if (got_ping) {
          REQUIRE(server.Send(in.peer, HeartbeatFrames("pong")).ok());
        }
      }
    }
    REQUIRE(got_ping);
    if (h->server_dropped() >= 0) {
      CHECK(h->server_dropped() >= 2);  // four frames; too large in total
      CHECK(rejected_by_wire == 0);
    } else {
      CHECK(rejected_by_wire == 3);  // in-process: the wire layer rejects all three
    }
    Inbound back;
    bool got_pong = false;
    while (!got_pong && ReceiveWithin(*h, *client, &back)) {
      auto msg = DecodeMessage(back.frames, TestLimits());
      REQUIRE(msg.ok());
      got_pong = std::get<Heartbeat>(msg->body).state == "pong";
    }
    CHECK(got_pong);
  }
}

TEST_CASE("transport suite: in-process", "[inproc]") {
  RunTransportSuite([] { return std::make_unique<InprocHarness>(); });
}

TEST_CASE("transport suite: ZeroMQ over loopback TCP", "[zmq]") {
  RunTransportSuite([] { return std::make_unique<ZmqHarness>(); });
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
