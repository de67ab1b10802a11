// CurveZMQ keys and the ZAP handler that enforces allow-lists.
//
// Key files (written by `lowband keys generate NAME`):
//   NAME.key  mode 0600   # lowband CurveZMQ secret key: NAME
//                         public-key = "<40 Z85 characters>"
//                         secret-key = "<40 Z85 characters>"
//   NAME.pub  mode 0644   the same without the secret-key line
// A secret key file readable by group or others is refused. An allow-list is
// a directory of NAME.pub files: NAME is who the key belongs to (a site
// name, an operator).
//
// ZapHandler answers libzmq's ZAP requests (RFC 27) on
// inproc://zeromq.zap.01 of one context, on the owner's event loop: a CURVE
// client whose key is in the allow-list of the socket's ZAP domain is
// accepted with User-Id = NAME (readable on every message it sends, see
// Inbound::user_id); any other is refused and logged. Loop thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <zmq.hpp>

#include "base/status.h"

namespace lowband {

struct CurveKey {
  std::string public_key;  // Z85, 40 characters
  std::string secret_key;  // Z85, 40 characters; empty for a public key file
};

StatusOr<CurveKey> GenerateCurveKey();
// Writes DIR/NAME.key (0600) and DIR/NAME.pub (0644) atomically; refuses to
// overwrite an existing key.
Status WriteCurveKeyFiles(const std::string& dir, const std::string& name, const CurveKey& key);
// Reads a .key (secret_required: the secret must be there and the file must
// not be group/other readable) or a .pub file.
StatusOr<CurveKey> ReadCurveKeyFile(const std::string& path, bool secret_required);
// NAME.pub files of `dir`: Z85 public key -> NAME. InvalidArgument naming
// the file for a bad one; an empty directory is an error too.
StatusOr<std::map<std::string, std::string>> ReadAllowList(const std::string& dir);

class ZapHandler {
 public:
  // domain -> (public key Z85 -> name)
  using AllowLists = std::map<std::string, std::map<std::string, std::string>>;
  static StatusOr<std::unique_ptr<ZapHandler>> Create(zmq::context_t& ctx, AllowLists allow);
  zmq::socket_t& socket() { return socket_; }
  // Answers every pending request; call when socket() is readable.
  void OnReadable();
  uint64_t accepted() const { return accepted_; }
  uint64_t refused() const { return refused_; }

 private:
  ZapHandler(zmq::socket_t socket, AllowLists allow) : socket_(std::move(socket)), allow_(std::move(allow)) {}
  zmq::socket_t socket_;
  AllowLists allow_;
  uint64_t accepted_ = 0;
  uint64_t refused_ = 0;
};

}  // namespace lowband
