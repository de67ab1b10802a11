// systemd integration: the units pass `systemd-analyze verify`, and the
// daemons speak sd_notify (READY, STATUS, WATCHDOG fed only while the event
// loop turns, STOPPING) to a NOTIFY_SOCKET the test reads.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <thread>

#include "base/process.h"
#include "tests/integration/helpers.h"
#include "tests/fakes/skip.h"

namespace lowband {
namespace {

using namespace itest;  // NOLINT
using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

// A Unix datagram socket standing in for systemd's notification socket.
class NotifySocket {
 public:
  explicit NotifySocket(const std::string& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    REQUIRE(path.size() < sizeof(sa.sun_path));
    std::snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path.c_str());
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0);
    timeval tv{0, 50 * 1000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~NotifySocket() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  // Every datagram received within `span`, in order.
  std::vector<std::string> Collect(milliseconds span) {
    std::vector<std::string> out;
    const auto end = SteadyClock::now() + span;
    char buf[4096];
    while (SteadyClock::now() < end) {
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n > 0) out.emplace_back(buf, static_cast<size_t>(n));
    }
    return out;
  }
  // Datagrams until one contains `needle` or `limit` passes.
  std::vector<std::string> Until(const std::string& needle, milliseconds limit) {
    std::vector<std::string> out;
    const auto end = SteadyClock::now() + limit;
    char buf[4096];
    while (SteadyClock::now() < end) {
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) continue;
      out.emplace_back(buf, static_cast<size_t>(n));
      if (out.back().find(needle) != std::string::npos) break;
    }
    return out;
  }

 private:
  std::string path_;
  int fd_ = -1;
};

int CountWith(const std::vector<std::string>& msgs, const std::string& needle) {
  int n = 0;
  for (const auto& m : msgs) n += m.find(needle) != std::string::npos;
  return n;
}

std::string Joined(const std::vector<std::string>& msgs) {
  std::string s;
  for (const auto& m : msgs) s += "[" + m + "] ";
  return s;
}

Subprocess StartNotified(const std::vector<std::string>& argv, const std::string& out, const std::string& socket) {
  SpawnOptions o;
  o.argv = argv;
  o.stdout_path = out;
  o.stderr_path = "stdout";
  o.extra_env = {"NOTIFY_SOCKET=" + socket, "WATCHDOG_USEC=200000", "OPENBLAS_NUM_THREADS=1"};
  auto p = Subprocess::Spawn(o);
  REQUIRE(p.ok());
  return std::move(p).value();
}

// The daemon's notifications from start to SIGTERM, with a SIGSTOP in the
// middle: the watchdog must go quiet while the loop is frozen.
void CheckNotifyLifecycle(Subprocess& p, NotifySocket& sock, const std::string& out) {
  auto start = sock.Until("READY=1", milliseconds(20000));
  INFO(Joined(start) << "\n" << ReadFile(out));
  REQUIRE(CountWith(start, "READY=1") == 1);
  CHECK(CountWith(start, "STATUS=") >= 1);
  // WATCHDOG_USEC 200 ms: a ping at least every 100 ms while the loop runs.
  auto running = sock.Collect(milliseconds(1000));
  CHECK(CountWith(running, "WATCHDOG=1") >= 5);
  p.Signal(SIGSTOP);
  sock.Collect(milliseconds(100));  // what was already on its way
  auto frozen = sock.Collect(milliseconds(600));
  CHECK(CountWith(frozen, "WATCHDOG=1") == 0);
  p.Signal(SIGCONT);
  auto thawed = sock.Collect(milliseconds(600));
  CHECK(CountWith(thawed, "WATCHDOG=1") >= 2);
  p.Signal(SIGTERM);
  auto stopping = sock.Until("STOPPING=1", milliseconds(10000));
  INFO(Joined(stopping));
  CHECK(CountWith(stopping, "STOPPING=1") == 1);
  CHECK(p.WaitFor(milliseconds(20000)) == std::optional<int>(0));
}

TEST_CASE("systemd: the coordinator reports ready, feeds the watchdog only while its loop runs, reports stopping",
          "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  std::ostringstream y;
  y << "campaign: {name: notify, rounds: 2}\nmodel: {layers: 1, d_model: 32, heads: 2, context: 16}\n"
    << "quorum: {expected_workers: 1, start_timeout_s: 60}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1 << "\"}\n"
    << "output: {run_dir: \"" << dir.Path("run") << "\"}\n";
  const std::string yaml = dir.Write("c.yaml", y.str());
  NotifySocket sock(dir.Path("notify.sock"));
  Subprocess co = StartNotified({kBin + "/lowband-coordinator", "--campaign", yaml}, dir.Path("co.out"),
                                dir.Path("notify.sock"));
  CheckNotifyLifecycle(co, sock, dir.Path("co.out"));
}

TEST_CASE("systemd: a worker reports ready, feeds the watchdog only while its loop runs, reports stopping",
          "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  // No coordinator: the worker keeps saying hello, and its loop keeps turning.
  std::ostringstream y;
  y << "site: {name: site-a, coordinator: \"tcp://127.0.0.1:" << port << "\"}\n"
    << "data: {dir: /usr/share/games/fortunes, files: [computers], validation_fraction: 0.1}\n";
  const std::string yaml = dir.Write("site.yaml", y.str());
  NotifySocket sock(dir.Path("notify.sock"));
  Subprocess w = StartNotified({kBin + "/lowband-worker", "--config", yaml}, dir.Path("w.out"), dir.Path("notify.sock"));
  CheckNotifyLifecycle(w, sock, dir.Path("w.out"));
}

TEST_CASE("systemd: the units in deploy/ pass systemd-analyze verify", "[integration]") {
  if (std::system("command -v systemd-analyze >/dev/null 2>&1") != 0) LOWBAND_SKIP("systemd-analyze not installed");
  TempDir dir;
  const std::string src = LOWBAND_SOURCE_DIR;
  // The units name /usr/local/bin; point them at this build so that
  // verify's check that the executables exist means something.
  for (const std::string unit : {"lowband-coordinator.service", "lowband-worker@.service"}) {
    std::string text = ReadFile(src + "/deploy/" + unit);
    REQUIRE(!text.empty());
    for (size_t at; (at = text.find("/usr/local/bin/")) != std::string::npos;) text.replace(at, 15, kBin + "/");
    WriteFile(dir.Path(unit == "lowband-worker@.service" ? "lowband-worker@site-a.service" : unit), text);
    CHECK(text.find("Type=notify") != std::string::npos);
    CHECK(text.find("WatchdogSec=") != std::string::npos);
    CHECK(text.find("RestartPreventExitStatus=78") != std::string::npos);
  }
  const std::string out = dir.Path("verify.out");
  const std::string cmd = "cd " + dir.path().string() +
                          " && systemd-analyze verify ./lowband-coordinator.service ./lowband-worker@site-a.service > " +
                          out + " 2>&1";
  const int rc = std::system(cmd.c_str());
  INFO(ReadFile(out));
  CHECK(rc == 0);
  CHECK(ReadFile(out).empty());  // verify exits 0 on parse warnings; any line is a problem
}

}  // namespace
}  // namespace lowband
