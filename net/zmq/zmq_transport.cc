#include "net/zmq/zmq_transport.h"

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <unordered_map>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#include "base/log.h"

namespace lowband {

// The buffers libzmq holds for one transport's zero-copy sends: each buffer
// counted once (a payload shared by many messages is one buffer), released
// from libzmq's I/O thread when it is done with the last message using it.
class SendLedger {
 public:
  explicit SendLedger(int64_t max_bytes) : max_bytes_(max_bytes) {}
  // Loop thread: takes a hold on each buffer of one message, or none when
  // the distinct bytes not yet held would pass the bound.
  bool Admit(const std::vector<const Bytes*>& buffers, std::string* why) {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t added = 0;
    for (const Bytes* b : buffers) {
      if (!held_.count(b)) added += static_cast<int64_t>(b->size());
    }
    if (added > 0 && bytes_ + added > max_bytes_) {
      *why = "send queue holds " + std::to_string(bytes_) + " bytes; " + std::to_string(added) +
             " more would pass the limit of " + std::to_string(max_bytes_);
      return false;
    }
    for (const Bytes* b : buffers) {
      auto& [count, size] = held_[b];
      if (count++ == 0) {
        size = b->size();
        bytes_ += static_cast<int64_t>(size);
      }
    }
    return true;
  }
  // Any thread (libzmq's I/O thread): one message is done with `b`.
  void Release(const Bytes* b) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = held_.find(b);
    if (it == held_.end()) return;
    if (--it->second.first == 0) {
      bytes_ -= static_cast<int64_t>(it->second.second);
      held_.erase(it);
    }
  }
  int64_t bytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return bytes_;
  }
  void set_max_bytes(int64_t max_bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    max_bytes_ = max_bytes;
  }

 private:
  mutable std::mutex mu_;
  std::unordered_map<const Bytes*, std::pair<int, size_t>> held_;  // buffer -> (messages, bytes)
  int64_t bytes_ = 0;
  int64_t max_bytes_;
};

namespace {

// What libzmq's free function gets: the buffer and the ledger it is held in.
struct ZeroCopyHold {
  std::shared_ptr<const Bytes> buffer;
  std::shared_ptr<SendLedger> ledger;
};
// TryReceive gives the loop back after dropping this many bad messages in a
// row, so a flooding peer cannot starve timers and other sockets.
constexpr int kMaxDropsPerReceive = 64;

std::string ErrorText(const zmq::error_t& e) { return e.what(); }

// Routing ids may be binary; make them safe for a log line.
void ApplyCommonOptions(zmq::socket_t& socket, int64_t max_message_bytes) {
  socket.set(zmq::sockopt::linger, ZmqSocketOptions::kLingerMs);
  socket.set(zmq::sockopt::sndhwm, ZmqSocketOptions::kHighWaterMark);
  // Each pipe's received messages at most kReceiveQueueBytes at the size limit.
  socket.set(zmq::sockopt::rcvhwm,
             static_cast<int>(std::clamp<int64_t>(ZmqSocketOptions::kReceiveQueueBytes / std::max<int64_t>(max_message_bytes, 1),
                                                  4, ZmqSocketOptions::kHighWaterMark)));
  // Per frame: a larger frame makes libzmq drop the connection before the
  // bytes are buffered, so a hostile peer cannot make us allocate them.
  socket.set(zmq::sockopt::maxmsgsize, max_message_bytes);
  socket.set(zmq::sockopt::tcp_keepalive, 1);
  socket.set(zmq::sockopt::tcp_keepalive_idle, ZmqSocketOptions::kTcpKeepaliveIdleS);
  socket.set(zmq::sockopt::tcp_keepalive_intvl, ZmqSocketOptions::kTcpKeepaliveIntervalS);
  socket.set(zmq::sockopt::tcp_keepalive_cnt, ZmqSocketOptions::kTcpKeepaliveCount);
}

bool ZeroCopy(const Frame& frame) { return frame.size() >= ZmqSocketOptions::kZeroCopyBytes; }

// Small frames are copied; large ones hand libzmq the Frame's shared buffer
// (no copy), held in `ledger` until libzmq's I/O thread releases it.
zmq::message_t ToZmqMessage(const Frame& frame, const std::shared_ptr<SendLedger>& ledger) {
  if (frame.empty()) return zmq::message_t();
  if (!ZeroCopy(frame)) return zmq::message_t(frame.data(), frame.size());
  auto hold = std::make_unique<ZeroCopyHold>(ZeroCopyHold{frame.Share(), ledger});
  const Bytes& buffer = *hold->buffer;
  zmq::message_t msg(
      const_cast<uint8_t*>(buffer.data()), buffer.size(),
      [](void*, void* hint) {
        auto* h = static_cast<ZeroCopyHold*>(hint);
        h->ledger->Release(h->buffer.get());
        delete h;
      },
      hold.get());
  hold.release();  // owned by msg now
  return msg;
}

// Sends [routing_id] + frames as one multipart message without blocking.
// Multipart delivery is atomic in libzmq: once the first part is accepted,
// the remaining parts are too, so only the first send can hit EAGAIN or
// EHOSTUNREACH.
Status SendMultipart(zmq::socket_t& socket, const std::string* routing_id, Frames frames,
                     const std::string& peer_for_errors, const std::shared_ptr<SendLedger>& ledger) {
  if (frames.empty()) return InvalidArgument("cannot send a message with no frames");
  std::vector<const Bytes*> held;
  for (const Frame& f : frames) {
    if (ZeroCopy(f)) held.push_back(&f.bytes());
  }
  std::string why;
  if (!held.empty() && !ledger->Admit(held, &why)) {
    return Unavailable(why + "; message to '" + log::Printable(peer_for_errors) + "' dropped");
  }
  try {
    std::vector<zmq::message_t> parts;
    parts.reserve(frames.size() + 1);
    if (routing_id != nullptr) parts.emplace_back(routing_id->data(), routing_id->size());
    // From here each zero-copy part releases its hold when destroyed (sent,
    // or dropped with `parts` on an error below).
    for (const Frame& f : frames) parts.push_back(ToZmqMessage(f, ledger));
    for (size_t i = 0; i < parts.size(); ++i) {
      const bool last = i + 1 == parts.size();
      const auto flags = last ? zmq::send_flags::dontwait : (zmq::send_flags::dontwait | zmq::send_flags::sndmore);
      const zmq::send_result_t sent = socket.send(parts[i], flags);
      if (!sent) {
        if (i == 0) return Unavailable("send queue to '" + log::Printable(peer_for_errors) + "' is full; message dropped");
        return Internal("send to '" + log::Printable(peer_for_errors) + "' stalled inside a multipart message");
      }
    }
  } catch (const zmq::error_t& e) {
    if (e.num() == EHOSTUNREACH) {
      return Unavailable("peer '" + log::Printable(peer_for_errors) + "' is unknown or disconnected; message dropped");
    }
    if (e.num() == EAGAIN) return Unavailable("send queue to '" + log::Printable(peer_for_errors) + "' is full");
    return Unavailable("send to '" + log::Printable(peer_for_errors) + "' failed: " + ErrorText(e));
  } catch (const std::bad_alloc&) {
    return Internal("out of memory while sending to '" + log::Printable(peer_for_errors) + "'");
  }
  return Status::Ok();
}

enum class RecvResult { kNone, kMessage, kDropped, kError };

// Receives one whole multipart message. With `has_routing_id` (ROUTER), the
// first part is the sender's routing id. Oversized or over-long messages are
// drained part by part and discarded; their bytes are never copied.
RecvResult RecvMultipart(zmq::socket_t& socket, bool has_routing_id, int64_t max_message_bytes, Inbound* out,
                         std::string* why_dropped, bool curve) {
  try {
    zmq::message_t part;
    if (!socket.recv(part, zmq::recv_flags::dontwait)) return RecvResult::kNone;
    std::string peer;
    Frames frames;
    bool drop = false;
    int data_frames = 0;
    uint64_t total_bytes = 0;
    bool first = true;
    while (true) {
      if (first && has_routing_id) {
        peer.assign(static_cast<const char*>(part.data()), part.size());
      } else {
        if (curve && data_frames == 0) {
          // Set by the ZAP handler for the connection this came over.
          const char* user = zmq_msg_gets(part.handle(), "User-Id");
          out->user_id = user ? user : "";
        }
        ++data_frames;
        total_bytes += part.size();
        if (data_frames > ZmqSocketOptions::kMaxDataFrames) {
          if (!drop) *why_dropped = "more than " + std::to_string(ZmqSocketOptions::kMaxDataFrames) + " frames";
          drop = true;
        } else if (total_bytes > static_cast<uint64_t>(max_message_bytes)) {
          if (!drop) *why_dropped = "larger than " + std::to_string(max_message_bytes) + " bytes";
          drop = true;
        }
        if (!drop) {
          const auto* p = static_cast<const uint8_t*>(part.data());
          frames.emplace_back(Bytes(p, p + part.size()));
        } else {
          frames.clear();
        }
      }
      first = false;
      if (!part.more()) break;
      // The rest of a multipart message is already queued; dontwait only
      // guards against a libzmq bug leaving us blocked in the loop.
      if (!socket.recv(part, zmq::recv_flags::dontwait)) {
        *why_dropped = "truncated multipart message";
        out->peer = std::move(peer);
        return RecvResult::kDropped;
      }
    }
    out->peer = std::move(peer);
    if (!drop && data_frames == 0) {
      *why_dropped = "no data frames";
      drop = true;
    }
    if (drop) return RecvResult::kDropped;
    out->frames = std::move(frames);
    return RecvResult::kMessage;
  } catch (const zmq::error_t& e) {
    *why_dropped = ErrorText(e);
    return RecvResult::kError;
  } catch (const std::bad_alloc&) {
    *why_dropped = "out of memory";
    return RecvResult::kDropped;
  }
}

// Shared TryReceive body for both transports.
bool ReceiveLoop(zmq::socket_t& socket, bool has_routing_id, int64_t max_message_bytes,
                 const std::string& fixed_peer, uint64_t* dropped, Inbound* out, bool curve = false) {
  for (int attempt = 0; attempt < kMaxDropsPerReceive; ++attempt) {
    Inbound in;
    std::string why;
    switch (RecvMultipart(socket, has_routing_id, max_message_bytes, &in, &why, curve)) {
      case RecvResult::kNone: return false;
      case RecvResult::kMessage:
        if (!has_routing_id) in.peer = fixed_peer;
        *out = std::move(in);
        return true;
      case RecvResult::kDropped:
        ++*dropped;
        LOG_WARN("dropped inbound message",
                 {"peer", log::Printable(has_routing_id ? in.peer : fixed_peer)}, {"reason", why});
        continue;
      case RecvResult::kError:
        LOG_WARN("receive failed", {"peer", log::Printable(fixed_peer)}, {"error", why});
        return false;
    }
  }
  return false;
}

}  // namespace

// ------------------------------------------------------------------ server

ZmqServerTransport::ZmqServerTransport(zmq::socket_t socket, std::string endpoint, int64_t max_message_bytes,
                                       bool curve)
    : ledger_(std::make_shared<SendLedger>(ZmqSocketOptions::kMaxSendQueueBytes)),
      socket_(std::move(socket)),
      endpoint_(std::move(endpoint)),
      max_message_bytes_(max_message_bytes),
      curve_(curve) {}

int64_t ZmqServerTransport::queued_send_bytes() const { return ledger_->bytes(); }
void ZmqServerTransport::set_max_send_queue_bytes(int64_t bytes) { ledger_->set_max_bytes(bytes); }

ZmqServerTransport::~ZmqServerTransport() {
  try {
    socket_.close();
  } catch (...) {
    // close() only throws on a broken handle; nothing useful to do in a destructor.
  }
}

StatusOr<std::unique_ptr<ZmqServerTransport>> ZmqServerTransport::Bind(zmq::context_t& ctx,
                                                                      const std::string& endpoint,
                                                                      int64_t max_message_bytes,
                                                                      const CurveServerOptions* curve) {
  if (max_message_bytes <= 0) {
    return InvalidArgument("max_message_bytes must be positive, got " + std::to_string(max_message_bytes));
  }
  try {
    zmq::socket_t socket(ctx, zmq::socket_type::router);
    ApplyCommonOptions(socket, max_message_bytes);
    // Unknown peers give EHOSTUNREACH instead of a silent drop, and a full
    // peer queue gives EAGAIN.
    socket.set(zmq::sockopt::router_mandatory, true);
    // A worker that restarts with the same routing id takes over its old
    // identity instead of being refused while the old connection times out.
    socket.set(zmq::sockopt::router_handover, true);
    if (curve) {
      socket.set(zmq::sockopt::zap_domain, curve->zap_domain);
      socket.set(zmq::sockopt::curve_server, true);
      socket.set(zmq::sockopt::curve_secretkey, curve->secret_key);
    }
    try {
      socket.bind(endpoint);
    } catch (const zmq::error_t& e) {
      const bool env = e.num() == EADDRINUSE || e.num() == EADDRNOTAVAIL || e.num() == ENODEV ||
                       e.num() == EACCES;
      std::string msg = "cannot bind " + endpoint + ": " + ErrorText(e);
      return env ? Unavailable(std::move(msg)) : InvalidArgument(std::move(msg));
    }
    std::string resolved = socket.get(zmq::sockopt::last_endpoint);
    return std::unique_ptr<ZmqServerTransport>(
        new ZmqServerTransport(std::move(socket), std::move(resolved), max_message_bytes, curve != nullptr));
  } catch (const zmq::error_t& e) {
    return Unavailable("cannot create ROUTER socket for " + endpoint + ": " + ErrorText(e));
  }
}

Status ZmqServerTransport::Send(const std::string& peer, Frames frames) {
  if (peer.empty()) return InvalidArgument("server send needs a peer routing id");
  return SendMultipart(socket_, &peer, std::move(frames), peer, ledger_);
}

bool ZmqServerTransport::TryReceive(Inbound* out) {
  return ReceiveLoop(socket_, /*has_routing_id=*/true, max_message_bytes_, endpoint_, &dropped_, out, curve_);
}

// ------------------------------------------------------------------ client

ZmqClientTransport::ZmqClientTransport(zmq::socket_t socket, std::string endpoint, std::string routing_id,
                                       int64_t max_message_bytes)
    : ledger_(std::make_shared<SendLedger>(ZmqSocketOptions::kMaxSendQueueBytes)),
      socket_(std::move(socket)),
      endpoint_(std::move(endpoint)),
      routing_id_(std::move(routing_id)),
      max_message_bytes_(max_message_bytes) {}

int64_t ZmqClientTransport::queued_send_bytes() const { return ledger_->bytes(); }
void ZmqClientTransport::set_max_send_queue_bytes(int64_t bytes) { ledger_->set_max_bytes(bytes); }

ZmqClientTransport::~ZmqClientTransport() {
  try {
    socket_.close();
  } catch (...) {
  }
}

StatusOr<std::unique_ptr<ZmqClientTransport>> ZmqClientTransport::Connect(zmq::context_t& ctx,
                                                                        const std::string& endpoint,
                                                                        const std::string& routing_id,
                                                                        int64_t max_message_bytes,
                                                                        const CurveClientOptions* curve) {
  if (max_message_bytes <= 0) {
    return InvalidArgument("max_message_bytes must be positive, got " + std::to_string(max_message_bytes));
  }
  if (routing_id.size() > 255) {
    return InvalidArgument("routing id is " + std::to_string(routing_id.size()) + " bytes, limit is 255");
  }
  if (!routing_id.empty() && routing_id[0] == '\0') {
    return InvalidArgument("routing id must not start with a zero byte (reserved by ZeroMQ)");
  }
  try {
    zmq::socket_t socket(ctx, zmq::socket_type::dealer);
    ApplyCommonOptions(socket, max_message_bytes);
    socket.set(zmq::sockopt::reconnect_ivl, ZmqSocketOptions::kReconnectIvlMs);
    socket.set(zmq::sockopt::reconnect_ivl_max, ZmqSocketOptions::kReconnectIvlMaxMs);
    if (!routing_id.empty()) socket.set(zmq::sockopt::routing_id, routing_id);
    if (curve) {
      socket.set(zmq::sockopt::curve_serverkey, curve->server_public_key);
      socket.set(zmq::sockopt::curve_publickey, curve->public_key);
      socket.set(zmq::sockopt::curve_secretkey, curve->secret_key);
    }
    try {
      socket.connect(endpoint);
    } catch (const zmq::error_t& e) {
      return InvalidArgument("cannot connect to " + endpoint + ": " + ErrorText(e));
    }
    return std::unique_ptr<ZmqClientTransport>(
        new ZmqClientTransport(std::move(socket), endpoint, routing_id, max_message_bytes));
  } catch (const zmq::error_t& e) {
    return Unavailable("cannot create DEALER socket for " + endpoint + ": " + ErrorText(e));
  }
}

Status ZmqClientTransport::Send(const std::string& /*peer*/, Frames frames) {
  return SendMultipart(socket_, nullptr, std::move(frames), endpoint_, ledger_);
}

bool ZmqClientTransport::TryReceive(Inbound* out) {
  return ReceiveLoop(socket_, /*has_routing_id=*/false, max_message_bytes_, endpoint_, &dropped_, out);
}

}  // namespace lowband
