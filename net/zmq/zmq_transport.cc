#include "net/zmq/zmq_transport.h"

#include <cerrno>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#include "base/log.h"

namespace lowband {

namespace {

// Below this, copying a frame into a zmq message is cheaper than handing
// libzmq ownership of the vector through a free function.
constexpr size_t kZeroCopyThresholdBytes = 64 << 10;
// TryReceive gives the loop back after dropping this many bad messages in a
// row, so a flooding peer cannot starve timers and other sockets.
constexpr int kMaxDropsPerReceive = 64;

std::string ErrorText(const zmq::error_t& e) { return e.what(); }

// Routing ids may be binary; make them safe for a log line.
void ApplyCommonOptions(zmq::socket_t& socket, int64_t max_message_bytes) {
  socket.set(zmq::sockopt::linger, ZmqSocketOptions::kLingerMs);
  socket.set(zmq::sockopt::sndhwm, ZmqSocketOptions::kHighWaterMark);
  socket.set(zmq::sockopt::rcvhwm, ZmqSocketOptions::kHighWaterMark);
  // Per frame: a larger frame makes libzmq drop the connection before the
  // bytes are buffered, so a hostile peer cannot make us allocate them.
  socket.set(zmq::sockopt::maxmsgsize, max_message_bytes);
  socket.set(zmq::sockopt::tcp_keepalive, 1);
  socket.set(zmq::sockopt::tcp_keepalive_idle, ZmqSocketOptions::kTcpKeepaliveIdleS);
  socket.set(zmq::sockopt::tcp_keepalive_intvl, ZmqSocketOptions::kTcpKeepaliveIntervalS);
  socket.set(zmq::sockopt::tcp_keepalive_cnt, ZmqSocketOptions::kTcpKeepaliveCount);
}

zmq::message_t ToZmqMessage(Bytes&& frame) {
  if (frame.empty()) return zmq::message_t();
  if (frame.size() < kZeroCopyThresholdBytes) return zmq::message_t(frame.data(), frame.size());
  // Hand the vector itself to libzmq; its I/O thread frees it once sent.
  auto holder = std::make_unique<Bytes>(std::move(frame));
  zmq::message_t msg(
      holder->data(), holder->size(), [](void*, void* hint) { delete static_cast<Bytes*>(hint); },
      holder.get());
  holder.release();  // owned by msg now
  return msg;
}

// Sends [routing_id] + frames as one multipart message without blocking.
// Multipart delivery is atomic in libzmq: once the first part is accepted,
// the remaining parts are too, so only the first send can hit EAGAIN or
// EHOSTUNREACH.
Status SendMultipart(zmq::socket_t& socket, const std::string* routing_id, Frames frames,
                     const std::string& peer_for_errors) {
  if (frames.empty()) return InvalidArgument("cannot send a message with no frames");
  try {
    std::vector<zmq::message_t> parts;
    parts.reserve(frames.size() + 1);
    if (routing_id != nullptr) parts.emplace_back(routing_id->data(), routing_id->size());
    for (auto& f : frames) parts.push_back(ToZmqMessage(std::move(f)));
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
          frames.emplace_back(p, p + part.size());
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
    : socket_(std::move(socket)), endpoint_(std::move(endpoint)), max_message_bytes_(max_message_bytes), curve_(curve) {}

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
  return SendMultipart(socket_, &peer, std::move(frames), peer);
}

bool ZmqServerTransport::TryReceive(Inbound* out) {
  return ReceiveLoop(socket_, /*has_routing_id=*/true, max_message_bytes_, endpoint_, &dropped_, out, curve_);
}

// ------------------------------------------------------------------ client

ZmqClientTransport::ZmqClientTransport(zmq::socket_t socket, std::string endpoint, std::string routing_id,
                                       int64_t max_message_bytes)
    : socket_(std::move(socket)),
      endpoint_(std::move(endpoint)),
      routing_id_(std::move(routing_id)),
      max_message_bytes_(max_message_bytes) {}

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
  return SendMultipart(socket_, nullptr, std::move(frames), endpoint_);
}

bool ZmqClientTransport::TryReceive(Inbound* out) {
  return ReceiveLoop(socket_, /*has_routing_id=*/false, max_message_bytes_, endpoint_, &dropped_, out);
}

}  // namespace lowband
