#include "net/zmq/curve.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "base/log.h"

namespace lowband {
namespace {

namespace fs = std::filesystem;

bool ValidZ85Key(const std::string& k) {
  if (k.size() != 40) return false;
  uint8_t raw[32];
  return zmq_z85_decode(raw, k.c_str()) != nullptr;
}

Status WriteFileMode(const std::string& path, const std::string& text, mode_t mode) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return Unavailable("cannot write " + tmp + ": " + std::strerror(errno));
  ::fchmod(fd, mode);  // whatever the umask says
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return Unavailable("cannot write " + path + ": " + std::strerror(errno));
  }
  return Status::Ok();
}

}  // namespace

StatusOr<CurveKey> GenerateCurveKey() {
  char pub[41], sec[41];
  if (zmq_curve_keypair(pub, sec) != 0) {
    return Unavailable(std::string("cannot generate a CurveZMQ key pair: ") + zmq_strerror(zmq_errno()));
  }
  return CurveKey{pub, sec};
}

Status WriteCurveKeyFiles(const std::string& dir, const std::string& name, const CurveKey& key) {
  if (name.empty() || name.find('/') != std::string::npos || name[0] == '.') {
    return InvalidArgument("key name '" + name + "' must be a plain file name");
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Unavailable("cannot create " + dir + ": " + ec.message());
  const std::string secret = dir + "/" + name + ".key", pub = dir + "/" + name + ".pub";
  for (const std::string& p : {secret, pub}) {
    if (fs::exists(p, ec)) return FailedPrecondition(p + " already exists; remove it first to replace the key");
  }
  const std::string header = "# lowband CurveZMQ key: " + name + "\n";
  LOWBAND_RETURN_IF_ERROR(
      WriteFileMode(secret, header + "public-key = \"" + key.public_key + "\"\nsecret-key = \"" + key.secret_key +
                                "\"\n", 0600));
  return WriteFileMode(pub, header + "public-key = \"" + key.public_key + "\"\n", 0644);
}

StatusOr<CurveKey> ReadCurveKeyFile(const std::string& path, bool secret_required) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return NotFound(path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + ": not a regular file");
  if (st.st_size > 4096) return InvalidArgument(path + ": too large for a key file");
  std::ifstream in(path);
  CurveKey key;
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.empty() || line[0] == '#') continue;
    const size_t eq = line.find('=');
    auto trim = [](std::string s) {
      const size_t a = s.find_first_not_of(" \t\""), b = s.find_last_not_of(" \t\"\r");
      return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
    };
    const std::string k = eq == std::string::npos ? "" : trim(line.substr(0, eq));
    const std::string v = eq == std::string::npos ? "" : trim(line.substr(eq + 1));
    const std::string where = path + ":" + std::to_string(line_no);
    if (k == "public-key" || k == "secret-key") {
      if (!ValidZ85Key(v)) return InvalidArgument(where + ": " + k + " is not a 40-character Z85 CurveZMQ key");
      (k == "public-key" ? key.public_key : key.secret_key) = v;
    } else {
      return InvalidArgument(where + ": expected `public-key = \"...\"` or `secret-key = \"...\"`");
    }
  }
  if (key.public_key.empty()) return InvalidArgument(path + ": no public-key line");
  if (secret_required) {
    if (key.secret_key.empty()) return InvalidArgument(path + ": no secret-key line (is this a .pub file?)");
    if (st.st_mode & 077) {
      char mode[8];
      std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 0777));
      return FailedPrecondition(path + ": secret key file is readable by group or others (mode " + mode +
                                "); chmod 600 it");
    }
    char derived[41];
    if (zmq_curve_public(derived, key.secret_key.c_str()) != 0 || key.public_key != derived) {
      return InvalidArgument(path + ": public-key does not belong to secret-key");
    }
  } else {
    key.secret_key.clear();
  }
  return key;
}

StatusOr<std::map<std::string, std::string>> ReadAllowList(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return InvalidArgument(dir + ": not a directory of NAME.pub key files");
  std::map<std::string, std::string> allow;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() != ".pub") continue;
    auto key = ReadCurveKeyFile(e.path().string(), false);
    if (!key.ok()) return key.status();
    const std::string name = e.path().stem().string();
    auto [it, fresh] = allow.emplace(key->public_key, name);
    if (!fresh) return InvalidArgument(e.path().string() + ": same key as " + it->second + ".pub");
  }
  if (ec) return Unavailable(dir + ": " + ec.message());
  if (allow.empty()) return InvalidArgument(dir + ": no NAME.pub key files (an empty allow-list admits nobody)");
  return allow;
}

StatusOr<std::unique_ptr<ZapHandler>> ZapHandler::Create(zmq::context_t& ctx, AllowLists allow) {
  try {
    zmq::socket_t s(ctx, zmq::socket_type::rep);
    s.set(zmq::sockopt::linger, 0);
    s.bind("inproc://zeromq.zap.01");
    return std::unique_ptr<ZapHandler>(new ZapHandler(std::move(s), std::move(allow)));
  } catch (const zmq::error_t& e) {
    return Unavailable(std::string("cannot start the ZAP handler: ") + e.what());
  }
}

void ZapHandler::OnReadable() {
  for (int i = 0; i < 64; ++i) {
    std::vector<zmq::message_t> req;
    try {
      zmq::message_t part;
      if (!socket_.recv(part, zmq::recv_flags::dontwait)) return;
      req.push_back(std::move(part));
      while (req.back().more() && req.size() < 16) {
        zmq::message_t next;
        (void)socket_.recv(next, zmq::recv_flags::none);
        req.push_back(std::move(next));
      }
    } catch (const zmq::error_t& e) {
      LOG_WARN("ZAP receive failed", {"reason", std::string(e.what())});
      return;
    }
    // version, request id, domain, address, identity, mechanism, credentials...
    std::string status = "400", text = "malformed ZAP request", user;
    std::string domain, address, mechanism, key_z85;
    if (req.size() >= 6) {
      domain = req[2].to_string();
      address = req[3].to_string();
      mechanism = req[5].to_string();
      if (req[0].to_string() != "1.0") {
        text = "unsupported ZAP version";
      } else if (mechanism != "CURVE" || req.size() < 7 || req[6].size() != 32) {
        text = "only CURVE clients are admitted";
      } else {
        char z85[41];
        zmq_z85_encode(z85, static_cast<const uint8_t*>(req[6].data()), 32);
        key_z85 = z85;
        auto list = allow_.find(domain);
        auto who = list == allow_.end() ? std::map<std::string, std::string>::const_iterator{}
                                        : list->second.find(key_z85);
        if (list != allow_.end() && who != list->second.end()) {
          status = "200";
          text = "OK";
          user = who->second;
        } else {
          text = "key not in the " + domain + " allow-list";
        }
      }
    }
    if (status == "200") {
      ++accepted_;
      LOG_DEBUG("peer authenticated", {"domain", domain}, {"address", address}, {"user", user});
    } else {
      ++refused_;
      LOG_WARN("peer refused", {"domain", domain}, {"address", address}, {"mechanism", mechanism},
               {"key", key_z85}, {"reason", text});
    }
    try {
      const std::string request_id = req.size() >= 2 ? req[1].to_string() : std::string();
      const std::vector<std::string> reply = {"1.0", request_id, status, text, user, ""};
      for (size_t k = 0; k < reply.size(); ++k) {
        socket_.send(zmq::buffer(reply[k]), k + 1 < reply.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
      }
    } catch (const zmq::error_t& e) {
      LOG_WARN("ZAP reply failed", {"reason", std::string(e.what())});
      return;
    }
  }
}

}  // namespace lowband
