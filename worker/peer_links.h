// Peer links of a pipeline stage worker: the ZeroMQ side of the
// PeerChannel (worker/pipeline_runner.h) between the training thread and
// the worker's event loop.
//
//  * PeerInbox: thread-safe bounded FIFO of inbound Activations. The loop
//    pushes what arrives on the ROUTER; the training thread waits on it
//    (condition variable with a timeout) in PeerChannel::Receive.
//  * ZmqPeerChannel: the PeerChannel (worker/peer_channel.h) the pipeline runner uses
//    (training thread). Send posts to a Mailbox the loop drains; Receive
//    pops the inbox.
//  * PeerLinks: the loop's sockets. A ROUTER bound at site.peer where the
//    other stages of the replica connect, and one DEALER per stage this
//    worker sends to (previous, next, and stage 0 -> last for the labels),
//    each wrapped in a ThrottledTransport when pipeline.link_mbit > 0.
//    Counts bytes per boundary (bulk + header frames, each direction).
//
// Errors: received buffers are untrusted: size bound, DecodeMessage
// (FlatBuffers Verifier), then "is an Activation from a stage in range";
// rejections are counted and logged, never fatal. A failed send is logged
// (the runner's peer timeout turns it into a failed step).
//
// Threads: PeerInbox any thread (documented per method); ZmqPeerChannel
// the training thread; PeerLinks the event loop thread only.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <zmq.hpp>

#include "net/zmq/event_loop.h"
#include "protocol/messages.h"
#include "net/transport.h"
#include "net/throttle.h"
#include "net/zmq/zmq_transport.h"
#include "protocol/wire.h"
#include "worker/peer_channel.h"

namespace lowband {

class PeerInbox {
 public:
  // At most `capacity` messages and `max_bytes` of bulk (one message alone
  // may be larger).
  PeerInbox(size_t capacity, size_t max_bytes) : capacity_(capacity), max_bytes_(max_bytes) {}
  // Loop thread. Queues a message; when full (count or bytes), drops the
  // oldest ones (returns false).
  bool Push(Activation header, Bytes bulk);
  // Training thread. The next message, waiting at most `timeout`:
  // DeadlineExceeded when none came, Unavailable when Cancel() ran during
  // the wait or Close() ran at any time.
  StatusOr<std::pair<Activation, Bytes>> Pop(std::chrono::milliseconds timeout);
  // Any thread. Waits in progress return Unavailable (a new Welcome: the
  // step they belong to is abandoned). Later waits are unaffected.
  void Cancel();
  // Any thread. Every wait, now and later, returns Unavailable (shutdown).
  void Close();
  uint64_t dropped() const;

 private:
  const size_t capacity_;
  const size_t max_bytes_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<Activation, Bytes>> queue_;  // guarded by mu_
  size_t bytes_ = 0;                                 // guarded by mu_: bulk bytes queued
  uint64_t generation_ = 0;                          // guarded by mu_
  bool closed_ = false;                              // guarded by mu_
  uint64_t dropped_ = 0;                             // guarded by mu_
};

// An outbound activation on its way from the training thread to the loop.
struct PeerSend {
  int to_stage = 0;
  Activation header;
  Bytes bulk;
};

class ZmqPeerChannel : public PeerChannel {
 public:
  // Both borrowed; they outlive the channel.
  ZmqPeerChannel(PeerInbox* inbox, Mailbox<PeerSend>* outbox) : inbox_(inbox), outbox_(outbox) {}
  Status Send(int to_stage, Activation header, Bytes bulk) override;
  StatusOr<std::pair<Activation, Bytes>> Receive(std::chrono::milliseconds timeout) override;

 private:
  PeerInbox* inbox_;
  Mailbox<PeerSend>* outbox_;
};

class PeerLinks {
 public:
  // What an Activation carries: training values forward, gradients back,
  // labels (stage 0 -> last), or a validation pass.
  enum Kind { kForward, kBackward, kLabels, kEval, kKinds };
  static const char* KindName(int kind);
  struct Boundary {  // traffic with one other stage (header and bulk frames)
    uint64_t bytes_sent = 0, bytes_received = 0;
    uint64_t messages_sent = 0, messages_received = 0;
    uint64_t kind_bytes_sent[kKinds] = {}, kind_messages_sent[kKinds] = {};
    uint64_t kind_bulk_bytes_sent[kKinds] = {};  // the tensor frames alone
  };

  // Binds the ROUTER at `endpoint`. Unavailable if the bind fails. `ctx`
  // and `inbox` are borrowed and outlive the links.
  static StatusOr<std::unique_ptr<PeerLinks>> Bind(zmq::context_t& ctx, const std::string& endpoint,
                                                   PeerInbox* inbox, const WireLimits& limits);
  // (Re)connects the DEALERs this stage sends to, from the Welcome's stage
  // endpoints; links whose endpoint did not change are kept.
  // InvalidArgument for a missing endpoint or a bad link rate.
  Status Configure(const Welcome& w, const std::string& campaign);
  // Drains the ROUTER into the inbox.
  void OnReadable();
  // Encodes and sends one activation on the link to its stage.
  void Send(PeerSend s);
  // Releases throttled messages that are due; the time until the next one.
  std::optional<std::chrono::microseconds> Pump();
  // One log line per neighbour with the totals by kind (at shutdown; the
  // bench reads bytes per micro-batch per boundary from these).
  void LogTotals() const;

  // This worker's traffic since the previous call, one entry per (stage,
  // kind) with anything sent (for DeltaUpload/EvalReport.peer_traffic).
  std::vector<PeerTraffic> TakeTraffic();

  zmq::socket_t& socket() { return server_->socket(); }
  const std::map<int, Boundary>& boundaries() const { return boundaries_; }
  uint64_t rejected() const { return rejected_; }

 private:
  struct Link {
    std::string endpoint;
    std::unique_ptr<Transport> transport;  // a ZmqClientTransport, maybe throttled
    ThrottledTransport* throttled = nullptr;
  };
  PeerLinks(zmq::context_t& ctx, std::unique_ptr<ZmqServerTransport> server, PeerInbox* inbox,
            const WireLimits& limits)
      : ctx_(ctx), server_(std::move(server)), inbox_(inbox), limits_(limits) {}

  zmq::context_t& ctx_;
  std::unique_ptr<ZmqServerTransport> server_;
  PeerInbox* inbox_;
  WireLimits limits_;
  std::map<int, Link> links_;  // by destination stage
  std::map<int, Boundary> boundaries_;
  std::map<int, Boundary> reported_;  // boundaries_ at the last TakeTraffic
  int stage_ = 0;
  int stages_ = 1;
  double link_mbit_ = 0;
  std::string campaign_, sender_;
  uint64_t seq_ = 0;
  uint64_t rejected_ = 0;
};

}  // namespace lowband
