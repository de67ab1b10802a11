// The transport suite: one set of cases every Transport implementation
// must pass (ordering, peers, bulk frames, bounds, unknown peers), run by
// tests/net/transport_test.cc over the in-process transport and by
// tests/net/zmq/zmq_transport_test.cc over ZeroMQ. A Harness supplies the
// transport under test.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "codec/params.h"
#include "net/transport.h"
#include "protocol/wire.h"

namespace lowband {
namespace transport_suite {


using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kDeadline = 10s;
// Small bounds so the oversize cases stay cheap.
constexpr size_t kMaxHeaderBytes = 4096;
constexpr size_t kMaxBulkBytes = 256 << 10;
constexpr int64_t kMaxMessageBytes = kMaxBulkBytes + kMaxHeaderBytes;

inline WireLimits TestLimits() {
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

inline bool ReceiveWithin(Harness& h, Transport& t, Inbound* out, std::chrono::milliseconds timeout = kDeadline) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (t.TryReceive(out)) return true;
    h.Wait(t);
  }
  return t.TryReceive(out);
}

inline Message DeltaWithBulk(size_t bytes, uint32_t round) {
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

inline Message AggregateWithBulk(const Bytes& bulk, uint32_t round) {
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

inline Frames HeartbeatFrames(const std::string& state, uint32_t round = 0) {
  Message m;
  m.body = Heartbeat{round, state};
  return EncodeMessage(m);
}

// ---------------------------------------------------------------- the suite

inline void RunTransportSuite(const std::function<std::unique_ptr<Harness>()>& make_harness) {
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


}  // namespace transport_suite
}  // namespace lowband
