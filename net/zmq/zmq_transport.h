// ZeroMQ transports (cppzmq over libzmq 4.3).
//
//  * ZmqServerTransport: a ROUTER socket bound to an endpoint (coordinator,
//    control endpoint). Peers are the routing ids they connected with.
//  * ZmqClientTransport: a DEALER socket connected to one endpoint (worker,
//    CLI). Its single peer is the server; Send ignores `peer`, and received
//    messages carry the connected endpoint as `peer`.
//
// Threads and ownership: a transport and its socket belong to the thread that
// created it (the daemon's event loop thread); the zmq::context_t is owned by
// the caller and must outlive the transport. socket() is exposed only so that
// the same thread can poll it (EventLoop::AddSocket).
//
// Errors: no zmq::error_t escapes; every libzmq failure becomes a Status.
//  * Send never blocks (ZMQ_DONTWAIT). A full queue (high-water mark) or, on
//    the server, an unknown or disconnected peer (ZMQ_ROUTER_MANDATORY,
//    EHOSTUNREACH) gives Unavailable and the message is dropped.
//  * TryReceive takes one whole multipart message without blocking. A message
//    with no data frame, more than kMaxDataFrames data frames, or more than
//    max_message_bytes in total is drained and dropped (counted in
//    dropped_messages()); it never reaches the caller. libzmq itself drops the
//    connection of a peer that sends a single frame larger than
//    max_message_bytes (ZMQ_MAXMSGSIZE); a DEALER peer then reconnects.
//    Callers that accept bulk frames of up to N bytes should pass
//    N + WireLimits::max_header_bytes.
//  * Sockets linger at most kLingerMs on close, so shutdown never hangs.
//
// Memory: frames of kZeroCopyBytes or more go to libzmq without a copy (the
// Frame's shared buffer; a payload sent to many peers is one buffer), and
// are released when libzmq is done with them. The bytes libzmq holds for a
// transport's sends, each buffer counted once however many messages share
// it, stay under max_send_queue_bytes: a Send that would pass it gives
// Unavailable and drops the message, as a full queue does. Receiving, each
// peer pipe holds at most kHighWaterMark messages and kReceiveQueueBytes of
// messages at max_message_bytes (the pipe's message limit is lowered for
// large messages).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <zmq.hpp>

#include "base/status.h"
#include "net/transport.h"

namespace lowband {

class SendLedger;  // zmq_transport.cc: the bytes libzmq holds for one transport's sends

struct ZmqSocketOptions {
  static constexpr int kLingerMs = 200;
  static constexpr int kHighWaterMark = 64;  // messages per peer pipe, each way (at most)
  static constexpr int64_t kReceiveQueueBytes = int64_t{1} << 30;  // per pipe, at max_message_bytes each
  static constexpr int64_t kMaxSendQueueBytes = int64_t{4} << 30;  // default max_send_queue_bytes
  static constexpr size_t kZeroCopyBytes = 64 << 10;  // smaller frames are copied into libzmq
  static constexpr int kMaxDataFrames = 3;   // header, bulk, one spare
  static constexpr int kTcpKeepaliveIdleS = 30;
  static constexpr int kTcpKeepaliveIntervalS = 10;
  static constexpr int kTcpKeepaliveCount = 6;
  static constexpr int kReconnectIvlMs = 100;
  static constexpr int kReconnectIvlMaxMs = 5000;
};

// CurveZMQ on a server socket: its secret key and the ZAP domain whose
// allow-list admits clients (net/zmq/curve.h). Keys are Z85 text.
struct CurveServerOptions {
  std::string secret_key;
  std::string zap_domain;
};
// CurveZMQ on a client socket: the server's public key and our own pair.
struct CurveClientOptions {
  std::string server_public_key;
  std::string public_key;
  std::string secret_key;
};

class ZmqServerTransport : public Transport {
 public:
  // Creates a ROUTER socket in `ctx` and binds it to `endpoint` (e.g.
  // "tcp://127.0.0.1:5555", or "tcp://127.0.0.1:*" for an ephemeral port).
  // InvalidArgument if max_message_bytes <= 0; Unavailable with the endpoint
  // and strerror if the bind fails (address in use, bad interface, ...).
  // With `curve`, the socket is a CurveZMQ server: every message is
  // encrypted and only clients the ZAP handler admits connect; Inbound
  // carries their user id.
  static StatusOr<std::unique_ptr<ZmqServerTransport>> Bind(zmq::context_t& ctx, const std::string& endpoint,
                                                            int64_t max_message_bytes,
                                                            const CurveServerOptions* curve = nullptr);

  ~ZmqServerTransport() override;
  ZmqServerTransport(const ZmqServerTransport&) = delete;
  ZmqServerTransport& operator=(const ZmqServerTransport&) = delete;

  // Sends `frames` to the peer with routing id `peer`. Unavailable if the
  // peer is unknown/disconnected or its queue is full (message dropped);
  // InvalidArgument if frames is empty or peer is empty.
  Status Send(const std::string& peer, Frames frames) override;
  bool TryReceive(Inbound* out) override;

  zmq::socket_t& socket() { return socket_; }
  // The bound endpoint as resolved by libzmq (ZMQ_LAST_ENDPOINT), e.g.
  // "tcp://127.0.0.1:39211" after binding "tcp://127.0.0.1:*".
  const std::string& endpoint() const { return endpoint_; }
  // Inbound messages dropped for breaking the frame-count or size bounds.
  uint64_t dropped_messages() const { return dropped_; }
  // Bytes libzmq still holds for this transport's sends (distinct buffers).
  int64_t queued_send_bytes() const;
  void set_max_send_queue_bytes(int64_t bytes);

 private:
  ZmqServerTransport(zmq::socket_t socket, std::string endpoint, int64_t max_message_bytes, bool curve);

  std::shared_ptr<SendLedger> ledger_;
  zmq::socket_t socket_;
  std::string endpoint_;
  int64_t max_message_bytes_;
  bool curve_;
  uint64_t dropped_ = 0;
};

class ZmqClientTransport : public Transport {
 public:
  // Creates a DEALER socket in `ctx` with routing id `routing_id` (empty: one
  // chosen by the server; otherwise 1..255 bytes, not starting with a zero
  // byte) and connects it to `endpoint`. Connecting succeeds before the
  // server is up; messages queue until it is. InvalidArgument for a bad
  // routing id, max_message_bytes <= 0 or a malformed endpoint (with the
  // endpoint and strerror); Unavailable if the socket cannot be created.
  static StatusOr<std::unique_ptr<ZmqClientTransport>> Connect(zmq::context_t& ctx, const std::string& endpoint,
                                                               const std::string& routing_id,
                                                               int64_t max_message_bytes,
                                                               const CurveClientOptions* curve = nullptr);

  ~ZmqClientTransport() override;
  ZmqClientTransport(const ZmqClientTransport&) = delete;
  ZmqClientTransport& operator=(const ZmqClientTransport&) = delete;

  // `peer` is ignored: the single peer is the connected server. Unavailable
  // if the outgoing queue is full (message dropped).
  Status Send(const std::string& peer, Frames frames) override;
  bool TryReceive(Inbound* out) override;

  zmq::socket_t& socket() { return socket_; }
  const std::string& endpoint() const { return endpoint_; }
  const std::string& routing_id() const { return routing_id_; }
  uint64_t dropped_messages() const { return dropped_; }
  int64_t queued_send_bytes() const;
  void set_max_send_queue_bytes(int64_t bytes);

 private:
  ZmqClientTransport(zmq::socket_t socket, std::string endpoint, std::string routing_id,
                     int64_t max_message_bytes);

  std::shared_ptr<SendLedger> ledger_;
  zmq::socket_t socket_;
  std::string endpoint_;
  std::string routing_id_;
  int64_t max_message_bytes_;
  uint64_t dropped_ = 0;
};

}  // namespace lowband
