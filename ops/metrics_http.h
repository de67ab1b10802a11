// Prometheus metrics over HTTP for the daemons.
//
//  * PromText builds the text exposition format (version 0.0.4): families
//    with # HELP / # TYPE once each, labelled samples, escaped label values.
//  * MetricsHttpServer serves GET /metrics (and GET / with a pointer to it)
//    on a TCP address, inside the daemon's own EventLoop: the listening
//    socket and every connection are non-blocking file descriptors; requests
//    are parsed and responses serialized with Boost.Beast. The text is
//    rendered by a callback on the loop thread at request time, so it always
//    shows the state the loop holds. Bounded: 16 connections, 8 KiB of
//    request, 5 s per connection; anything else gets 404/405/400 or is
//    dropped. Loop thread only.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"

namespace lowband {

class EventLoop;

class PromText {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;
  // `type` is "counter" or "gauge". NaN is written as NaN, as Prometheus reads it.
  void Add(const std::string& name, const std::string& type, const std::string& help, double value,
           const Labels& labels = {});
  const std::string& str() const { return text_; }

 private:
  std::set<std::string> families_;
  std::string text_;
};

// A request as the handler sees it: method, path and query (split at '?'),
// the Authorization header. Bodies are not read (requests carrying one are
// refused): parameters travel in the query string.
struct HttpRequest {
  std::string method;  // "GET", "HEAD", "POST"
  std::string path;
  std::string query;   // after '?', undecoded
  std::string authorization;
};
struct HttpResponse {
  unsigned status = 200;
  std::string content_type = "text/plain";
  std::string body;
};
// The value of `key` in an application/x-www-form-urlencoded query
// (percent-decoded, '+' as space); "" when absent or malformed.
std::string QueryParam(const std::string& query, const std::string& key);

class MetricsHttpServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;
  // `address` is HOST:PORT (HOST a dotted IPv4 address, `localhost` or `*`
  // / 0.0.0.0 for every interface; PORT 0 picks a free one, see port()).
  // Serves GET /metrics from `render`.
  static StatusOr<std::unique_ptr<MetricsHttpServer>> Listen(const std::string& address,
                                                             std::function<std::string()> render);
  // Every request goes to `handler` (the coordinator's dashboard and API).
  static StatusOr<std::unique_ptr<MetricsHttpServer>> Listen(const std::string& address, Handler handler);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  void AddTo(EventLoop& loop);
  void RemoveFrom(EventLoop& loop);
  // Closes connections idle past their deadline and flushes pending writes;
  // call from the loop's tick.
  void OnTick();
  int port() const { return port_; }
  uint64_t requests() const { return requests_; }

 private:
  struct Conn;
  MetricsHttpServer(int fd, int port, Handler handler);
  void OnAccept();
  void OnReadable(int fd);
  void Respond(Conn& c, unsigned status, const std::string& content_type, std::string body);
  void Flush(Conn& c);
  void Close(int fd);

  int listen_fd_;
  int port_;
  Handler handler_;
  EventLoop* loop_ = nullptr;
  std::map<int, std::unique_ptr<Conn>> conns_;
  uint64_t requests_ = 0;
};

}  // namespace lowband
