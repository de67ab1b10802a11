// Transport: moves multipart messages (frames) between named peers.
//
// A server transport (coordinator side, ZeroMQ ROUTER) addresses peers by the
// id they arrived with; a client transport (worker side, ZeroMQ DEALER) has a
// single peer and ignores the `peer` argument of Send. Implementations:
// ZeroMQ (net/zmq/zmq_transport.h), in-process for tests (net/inproc.h),
// and a bandwidth-throttling wrapper (net/throttle.h).
// A transport belongs to one thread.
#pragma once

#include <string>

#include "base/frames.h"
#include "base/status.h"

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

}  // namespace lowband
