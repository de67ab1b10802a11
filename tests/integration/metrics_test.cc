// The Prometheus endpoints of a running campaign, scraped over HTTP and
// checked against the campaign's own metrics file.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <map>
#include <sstream>

#include "base/process.h"
#include "tests/integration/helpers.h"

namespace lowband {
namespace {

using namespace itest;  // NOLINT
using std::chrono::milliseconds;

// One HTTP/1.1 request to 127.0.0.1:port; the whole response (status line,
// headers, body), or "" if nothing answered.
std::string HttpRequest(int port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0 &&
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
    char buf[4096];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) response.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return response;
}

std::string Get(int port, const std::string& path) {
  return HttpRequest(port, "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
}

// "name{labels}" (or "name") -> value, from a text exposition body.
std::map<std::string, double> Samples(const std::string& response) {
  std::map<std::string, double> out;
  const size_t body = response.find("\r\n\r\n");
  std::istringstream in(body == std::string::npos ? "" : response.substr(body + 4));
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

std::string Campaign(int port, int metrics_port, const std::string& run_dir, const std::string& token_file) {
  std::ostringstream y;
  y << "campaign: {name: metrics-campaign, seed: 5, rounds: 40}\n"
    << "model: {layers: 2, d_model: 64, heads: 4, context: 32, vocab: 256}\n"
    << "training:\n  inner_steps: 3\n  batch_size: 8\n  eval_batches: 2\n"
    << "outer_optimizer: {name: sgd, lr: 1.0, momentum: 0.0}\n"
    << "codec: {name: sparseloco, topk: 64}\n"
    << "quorum: {expected_workers: 3, min_workers: 3, round_deadline_s: 120, start_timeout_s: 60, aggregation: "
       "mean_of_choosers}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1
    << "\", heartbeat_interval_ms: 200, heartbeat_timeout_ms: 5000, metrics: \"127.0.0.1:" << metrics_port
    << "\", dashboard_token: \"" << token_file << "\"}\n"
    << "output: {run_dir: \"" << run_dir << "\", metrics_file: \"" << run_dir << "/metrics.jsonl\"}\n"
    << ThreeSitesYaml();
  std::string text = y.str();
  // site-a serves its own metrics too.
  const std::string site_a = "  - site: {name: site-a}";
  text.replace(text.find(site_a), site_a.size(),
               "  - site: {name: site-a, metrics: \"127.0.0.1:" + std::to_string(metrics_port + 1) + "\"}");
  return text;
}

TEST_CASE("metrics: the Prometheus endpoints of a running campaign agree with its metrics file", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const int metrics_port = port + 2;
  const std::string run_dir = dir.Path("run");
  const std::string token = "s3cret-operator-token-0123456789";
  const std::string yaml =
      dir.Write("c.yaml", Campaign(port, metrics_port, run_dir, dir.Write("dashboard.token", token + "\n")));
  Subprocess run = Start({kBin + "/lowband", "run", yaml}, dir.Path("run.out"));

  // Hold the campaign after a few rounds so that nothing moves while we look.
  std::string status = WaitStatus(dir, port, [](const std::string& s) { return CommittedRound(s) >= 3; }, run);
  INFO(ReadFile(dir.Path("run.out")));
  for (int i = 0; i < 20; ++i) {
    auto r = Ctl(dir, port, {"round", "pause"}, 1000);
    if (r.first == 0 || r.second.find("already paused") != std::string::npos) break;
  }
  status = WaitStatus(dir, port, [](const std::string& s) { return Field(s, "phase") == "held"; }, run);
  REQUIRE(Field(status, "phase") == "held");
  const int held = std::stoi(Field(status, "committed_round"));

  const std::string response = Get(metrics_port, "/metrics");
  INFO(response);
  REQUIRE(response.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(response.find("Content-Type: text/plain; version=0.0.4") != std::string::npos);
  const auto m = Samples(response);
  const auto records = Lines(ReadFile(run_dir + "/metrics.jsonl"));
  REQUIRE(records.size() == static_cast<size_t>(held + 1));
  const std::string& last = records.back();

  CHECK(m.at("lowband_rounds_committed_total") == held);
  CHECK(m.at("lowband_val_loss") == Approx(std::stod(Field(last, "val_loss"))).epsilon(1e-9));
  CHECK(m.at("lowband_train_loss") == Approx(std::stod(Field(last, "train_loss"))).epsilon(1e-9));
  CHECK(m.at("lowband_compression_ratio{direction=\"up\"}") ==
        Approx(std::stod(Field(last, "compression_ratio"))).epsilon(1e-6));
  double uploads_file = 0, wall_file = 0;
  for (const auto& r : records) {
    uploads_file += std::stod(Field(r, "upload_bytes"));
    if (Field(r, "round") != "0") wall_file += std::stod(Field(r, "wall_s"));
  }
  double uploads_scraped = 0;
  for (const char* site : {"site-a", "site-b", "site-c"}) {
    uploads_scraped += m.at(std::string("lowband_upload_bytes_total{site=\"") + site + "\"}");
    CHECK(m.at(std::string("lowband_bytes_total{site=\"") + site + "\",direction=\"up\"}") > 0);
  }
  CHECK(uploads_scraped == uploads_file);
  CHECK(m.at("lowband_round_duration_seconds_total") == Approx(wall_file).epsilon(1e-6));
  CHECK(m.at("lowband_workers{state=\"joined\"}") == 3);
  CHECK(m.at("lowband_rejected_messages_total{reason=\"all\"}") == 0);
  CHECK(m.at("lowband_campaign_finished") == 0);

  // The worker's own view of what it sent matches the coordinator's ledger.
  const auto w = Samples(Get(metrics_port + 1, "/metrics"));
  CHECK(w.at("lowband_worker_uploads_total") == held);
  CHECK(w.at("lowband_worker_upload_bytes_total") == m.at("lowband_upload_bytes_total{site=\"site-a\"}"));
  CHECK(w.at("lowband_worker_round") == held);
  CHECK(w.at("lowband_worker_registered") == 1);

  // Anything but GET /metrics is refused, and the endpoint keeps working.
  CHECK(Get(metrics_port, "/nope").rfind("HTTP/1.1 404", 0) == 0);
  CHECK(HttpRequest(metrics_port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").rfind(
            "HTTP/1.1 405", 0) == 0);
  CHECK(HttpRequest(metrics_port, "\x01\x02 garbage\r\n\r\n").rfind("HTTP/1.1 400", 0) == 0);
  CHECK(Get(metrics_port, "/metrics").rfind("HTTP/1.1 200", 0) == 0);

  // The dashboard: its page (self-contained), its state, its controls.
  const std::string page = Get(metrics_port, "/");
  CHECK(page.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(page.find("text/html") != std::string::npos);
  CHECK(page.find("<canvas id=\"c_loss\"") != std::string::npos);
  CHECK(page.find("http://") == std::string::npos);  // nothing fetched from elsewhere
  CHECK(page.find("https://") == std::string::npos);
  const std::string state = Get(metrics_port, "/api/state");
  INFO(state);
  REQUIRE(state.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(Field(state, "phase") == "held");
  CHECK(Field(state, "control") == "true");
  // Every round record, as in the metrics file.
  size_t in_state = 0;
  for (size_t at = state.find("\"round\":"); at != std::string::npos; at = state.find("\"round\":", at + 1)) ++in_state;
  CHECK(in_state == records.size());
  CHECK(state.find(last) != std::string::npos);
  auto post = [&](const std::string& query, const std::string& auth) {
    return HttpRequest(metrics_port, "POST /api/control?" + query + " HTTP/1.1\r\nHost: x\r\n" +
                                         (auth.empty() ? "" : "Authorization: Bearer " + auth + "\r\n") +
                                         "Content-Length: 0\r\n\r\n");
  };
  CHECK(post("command=resume", "").rfind("HTTP/1.1 401", 0) == 0);
  CHECK(post("command=resume", "wrong-token-wrong-token-wrong-tok").rfind("HTTP/1.1 401", 0) == 0);
  CHECK(post("command=explode", token).rfind("HTTP/1.1 400", 0) == 0);
  CHECK(post("command=evict&site=nobody", token).rfind("HTTP/1.1 409", 0) == 0);
  CHECK(HttpRequest(metrics_port, "GET /api/control?command=resume HTTP/1.1\r\nHost: x\r\n\r\n").rfind("HTTP/1.1 405", 0) == 0);
  CHECK(Field(Get(metrics_port, "/api/state"), "phase") == "held");  // nothing refused changed anything
  const std::string resumed = post("command=resume", token);
  INFO(resumed);
  CHECK(resumed.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(resumed.find("\"ok\":true") != std::string::npos);
  CHECK(Field(Get(metrics_port, "/api/state"), "paused") == "false");

  REQUIRE(Ctl(dir, port, {"campaign", "abort"}).first == 0);
  CHECK(run.WaitFor(milliseconds(60000)).has_value());
}

}  // namespace
}  // namespace lowband
