#include "ops/metrics_http.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <cctype>
#include <cmath>
#include <cstring>
#include <sstream>

#include "net/zmq/event_loop.h"
#include "base/log.h"

namespace lowband {
namespace http = boost::beast::http;

namespace {

constexpr size_t kMaxConnections = 16;
constexpr size_t kMaxRequestBytes = 8192;
constexpr auto kConnectionTimeout = std::chrono::seconds(5);

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.0f", v);
    return buf;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

std::string EscapeLabel(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

bool SetNonBlocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  return flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

}  // namespace

void PromText::Add(const std::string& name, const std::string& type, const std::string& help, double value,
                   const Labels& labels) {
  if (families_.insert(name).second) {
    text_ += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  }
  text_ += name;
  if (!labels.empty()) {
    text_ += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
      if (i) text_ += ',';
      text_ += labels[i].first + "=\"" + EscapeLabel(labels[i].second) + "\"";
    }
    text_ += '}';
  }
  text_ += ' ' + FormatValue(value) + '\n';
}

struct MetricsHttpServer::Conn {
  int fd = -1;
  std::chrono::steady_clock::time_point deadline;
  http::request_parser<http::empty_body> parser;
  std::string out;     // serialized response still to write
  bool responded = false;
  Conn() { parser.header_limit(kMaxRequestBytes); }
};

std::string QueryParam(const std::string& query, const std::string& key) {
  size_t start = 0;
  while (start <= query.size()) {
    size_t end = query.find('&', start);
    if (end == std::string::npos) end = query.size();
    const std::string pair = query.substr(start, end - start);
    const size_t eq = pair.find('=');
    if (pair.substr(0, eq) == key) {
      const std::string raw = eq == std::string::npos ? "" : pair.substr(eq + 1);
      std::string out;
      for (size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] == '+') {
          out += ' ';
        } else if (raw[i] == '%') {
          if (i + 2 >= raw.size() || !std::isxdigit(static_cast<unsigned char>(raw[i + 1])) ||
              !std::isxdigit(static_cast<unsigned char>(raw[i + 2]))) {
            return "";
          }
          out += static_cast<char>(std::stoi(raw.substr(i + 1, 2), nullptr, 16));
          i += 2;
        } else {
          out += raw[i];
        }
      }
      return out;
    }
    start = end + 1;
  }
  return "";
}

StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Listen(const std::string& address,
                                                                       std::function<std::string()> render) {
  return Listen(address, [render = std::move(render)](const HttpRequest& req) {
    if (req.method != "GET" && req.method != "HEAD") return HttpResponse{405, "text/plain", "only GET\n"};
    if (req.path == "/metrics") return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", render()};
    if (req.path == "/") return HttpResponse{200, "text/plain", "lowband metrics: GET /metrics\n"};
    return HttpResponse{404, "text/plain", "not found; metrics are at /metrics\n"};
  });
}

StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Listen(const std::string& address, Handler handler) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 >= address.size()) {
    return InvalidArgument("metrics address '" + address + "' is not HOST:PORT");
  }
  std::string host = address.substr(0, colon);
  const std::string port_text = address.substr(colon + 1);
  char* end = nullptr;
  const long port = std::strtol(port_text.c_str(), &end, 10);
  if (*end != '\0' || port < 0 || port > 65535) {
    return InvalidArgument("metrics address '" + address + "': port must be 0 to 65535");
  }
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  if (host == "*" || host == "0.0.0.0") {
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
  } else {
    if (host == "localhost") host = "127.0.0.1";
    if (::inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1) {
      return InvalidArgument("metrics address '" + address + "': host must be an IPv4 address, localhost or *");
    }
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Unavailable(std::string("metrics socket: ") + std::strerror(errno));
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || ::listen(fd, 16) != 0) {
    const int err = errno;
    ::close(fd);
    return Unavailable("cannot listen for metrics on " + address + ": " + std::strerror(err));
  }
  socklen_t len = sizeof(sa);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  return std::unique_ptr<MetricsHttpServer>(new MetricsHttpServer(fd, ntohs(sa.sin_port), std::move(handler)));
}

MetricsHttpServer::MetricsHttpServer(int fd, int port, Handler handler)
    : listen_fd_(fd), port_(port), handler_(std::move(handler)) {}

MetricsHttpServer::~MetricsHttpServer() {
  if (loop_) RemoveFrom(*loop_);
  for (auto& [fd, c] : conns_) ::close(fd);
  ::close(listen_fd_);
}

void MetricsHttpServer::AddTo(EventLoop& loop) {
  loop_ = &loop;
  loop.AddFd(listen_fd_, [this] { OnAccept(); });
}

void MetricsHttpServer::RemoveFrom(EventLoop& loop) {
  loop.RemoveFd(listen_fd_);
  for (auto& [fd, c] : conns_) loop.RemoveFd(fd);
  loop_ = nullptr;
}

void MetricsHttpServer::OnAccept() {
  for (int i = 0; i < 16; ++i) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;  // EAGAIN: nothing more; other errors: try on the next wake-up
    if (conns_.size() >= kMaxConnections || !SetNonBlocking(fd)) {
      ::close(fd);
      continue;
    }
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    c->deadline = std::chrono::steady_clock::now() + kConnectionTimeout;
    conns_[fd] = std::move(c);
    if (loop_) loop_->AddFd(fd, [this, fd] { OnReadable(fd); });
  }
}

void MetricsHttpServer::OnReadable(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  char buf[4096];
  const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
    Close(fd);
    return;
  }
  if (n < 0 || c.responded) return;
  boost::beast::error_code ec;
  size_t offset = 0;
  while (offset < static_cast<size_t>(n) && !c.parser.is_header_done()) {
    const size_t used = c.parser.put(boost::asio::buffer(buf + offset, static_cast<size_t>(n) - offset), ec);
    offset += used;
    if (ec == http::error::need_more) {
      ec = {};
      break;
    }
    if (ec) break;
  }
  if (ec) {
    Respond(c, 400, "text/plain", "bad request: " + ec.message() + "\n");
    return;
  }
  if (!c.parser.is_header_done()) return;  // wait for the rest of the header
  const auto& req = c.parser.get();
  ++requests_;
  if (req.has_content_length() && req[http::field::content_length] != "0") {
    Respond(c, 413, "text/plain", "request bodies are not accepted; parameters go in the query string\n");
    return;
  }
  if (req.method() != http::verb::get && req.method() != http::verb::head && req.method() != http::verb::post) {
    Respond(c, 405, "text/plain", "only GET, HEAD and POST\n");
    return;
  }
  HttpRequest r;
  r.method = std::string(req.method_string());
  const std::string target(req.target());
  const size_t q = target.find('?');
  r.path = target.substr(0, q);
  r.query = q == std::string::npos ? "" : target.substr(q + 1);
  r.authorization = std::string(req[http::field::authorization]);
  HttpResponse res = handler_(r);
  Respond(c, res.status, res.content_type, std::move(res.body));
}

void MetricsHttpServer::Respond(Conn& c, unsigned status, const std::string& content_type, std::string body) {
  http::response<http::string_body> res{static_cast<http::status>(status), 11};
  res.set(http::field::server, "lowband");
  res.set(http::field::content_type, content_type);
  res.set(http::field::connection, "close");
  const bool head = c.parser.is_header_done() && c.parser.get().method() == http::verb::head;
  res.body() = std::move(body);
  res.prepare_payload();
  if (head) res.body().clear();
  std::ostringstream os;
  os << res;
  c.out = os.str();
  c.responded = true;
  Flush(c);
}

void MetricsHttpServer::Flush(Conn& c) {
  while (!c.out.empty()) {
    const ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;  // OnTick retries
      Close(c.fd);
      return;
    }
    c.out.erase(0, static_cast<size_t>(n));
  }
  ::shutdown(c.fd, SHUT_WR);
  Close(c.fd);
}

void MetricsHttpServer::OnTick() {
  const auto now = std::chrono::steady_clock::now();
  std::vector<int> expired, pending;
  for (auto& [fd, c] : conns_) {
    if (now > c->deadline) {
      expired.push_back(fd);
    } else if (!c->out.empty()) {
      pending.push_back(fd);
    }
  }
  for (int fd : expired) Close(fd);
  for (int fd : pending) {
    if (auto it = conns_.find(fd); it != conns_.end()) Flush(*it->second);
  }
}

void MetricsHttpServer::Close(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  if (loop_) loop_->RemoveFd(fd);
  ::close(fd);
  conns_.erase(it);
}

}  // namespace lowband
