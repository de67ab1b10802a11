// Transport: moves multipart messages (frames) between named peers.
//
// A server transport (coordinator side, ZeroMQ ROUTER) addresses peers by the
// id they arrived with; a client transport (worker side, ZeroMQ DEALER) has a
// single peer and ignores the `peer` argument of Send. Implementations:
// ZeroMQ (common/transport_zmq.h) and in-process (below) for tests.
// A transport belongs to one thread.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <string>

#include "common/wire.h"

namespace lowband {

struct Inbound {
  std::string peer;  // routing id of the sender (server side)
  Frames frames;
  std::string user_id;  // CurveZMQ: who the ZAP handler authenticated (key name); "" otherwise
};

class Transport {
 public:
  virtual ~Transport() = default;
  // Queues frames for `peer`. Unavailable if the peer is unknown or the
  // queue is full (the message is dropped, never blocks the loop).
  virtual Status Send(const std::string& peer, Frames frames) = 0;
  // Non-blocking: true and fills `out` if a message was waiting.
  virtual bool TryReceive(Inbound* out) = 0;
};

// In-process network for tests: endpoints registered by name, messages
// delivered in order into per-endpoint queues. Single-threaded.
class InprocNetwork {
 public:
  // Creates the endpoint `name`. Sends from it carry `name` as peer id.
  std::unique_ptr<Transport> CreateEndpoint(const std::string& name);
  // Optional fault injection: drop everything sent to `name` while true.
  void SetPartitioned(const std::string& name, bool partitioned);
  // Total messages currently queued anywhere.
  size_t Pending() const;

 private:
  friend class InprocTransport;
  std::map<std::string, std::deque<Inbound>> queues_;
  std::map<std::string, bool> partitioned_;
};

}  // namespace lowband
