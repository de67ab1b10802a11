// Helpers shared by the multi-process tests: ports, files, JSON fields of
// metrics lines, child processes and `lowband` control commands.
#pragma once

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <ctime>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "base/process.h"
#include "tests/fakes/temp_dir.h"
#include "tests/fakes/wait.h"

namespace lowband::itest {

using std::chrono::milliseconds;
using testing::TempDir;

inline const std::string kBin = LOWBAND_BIN_DIR;

// Two consecutive ports (worker and control endpoints), with room for a
// second pair at +2. Below Linux's ephemeral range (32768+), where an
// outgoing connection could already hold the port; successive calls in one
// process never repeat.
inline int FreePortBase() {
  static std::mt19937 rng(static_cast<unsigned>(getpid()) ^ static_cast<unsigned>(time(nullptr)));
  static int calls = 0;
  const int slot = static_cast<int>((rng() % 2000 + static_cast<unsigned>(calls++) * 7) % 3000);
  return 20000 + slot * 4;
}

// The `sites:` list of the three local test sites (different fortune
// categories each).
inline std::string ThreeSitesYaml() {
  std::string y = "sites:\n";
  const char* files[3] = {"[computers, science]", "[literature, wisdom]", "[humorists, food]"};
  for (int i = 0; i < 3; ++i) {
    y += std::string("  - site: {name: site-") + static_cast<char>('a' + i) + "}\n" +
         "    data: {dir: /usr/share/games/fortunes, files: " + files[i] + ", validation_fraction: 0.1}\n";
  }
  return y;
}

inline void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

inline std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

// Value of a top-level numeric or string field in one JSON line.
inline std::string Field(const std::string& json, const std::string& key) {
  const std::string k = "\"" + key + "\":";
  const auto at = json.find(k);
  if (at == std::string::npos) return "";
  auto start = at + k.size();
  auto end = start;
  if (json[start] == '"') {
    end = json.find('"', start + 1);
    return json.substr(start + 1, end - start - 1);
  }
  while (end < json.size() && json[end] != ',' && json[end] != '}') ++end;
  return json.substr(start, end - start);
}

// Processes whose command line mentions `needle` (arguments joined by spaces).
inline std::vector<pid_t> PidsMentioning(const std::string& needle) {
  std::vector<pid_t> pids;
  DIR* d = opendir("/proc");
  if (!d) return pids;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::string cmd = ReadFile(std::string("/proc/") + e->d_name + "/cmdline");
    for (auto& c : cmd) {
      if (c == '\0') c = ' ';
    }
    if (cmd.find(needle) != std::string::npos && std::to_string(getpid()) != e->d_name) {
      pids.push_back(static_cast<pid_t>(std::stol(e->d_name)));
    }
  }
  closedir(d);
  return pids;
}
inline int ProcessesMentioning(const std::string& needle) { return static_cast<int>(PidsMentioning(needle).size()); }

inline Subprocess Start(const std::vector<std::string>& argv, const std::string& out_path) {
  SpawnOptions o;
  o.argv = argv;
  o.stdout_path = out_path;
  o.stderr_path = "stdout";
  auto p = Subprocess::Spawn(o);
  REQUIRE(p.ok());
  return std::move(p).value();
}

// One `lowband` control command against the coordinator on `port`; its exit
// code and output.
inline std::pair<int, std::string> Ctl(const TempDir& dir, int port, std::vector<std::string> words, int timeout_ms = 2000) {
  std::vector<std::string> argv = {kBin + "/lowband"};
  argv.insert(argv.end(), words.begin(), words.end());
  argv.insert(argv.end(), {"--endpoint", "tcp://127.0.0.1:" + std::to_string(port + 1), "--timeout-ms", std::to_string(timeout_ms)});
  Subprocess p = Start(argv, dir.Path("ctl.out"));
  auto code = p.WaitFor(milliseconds(10000));
  REQUIRE(code.has_value());
  return {*code, ReadFile(dir.Path("ctl.out"))};
}

// Polls `lowband status --json` until `done(status)`, the process
// (`lowband run` or the coordinator) ends, or the deadline; the last status.
inline std::string WaitStatus(const TempDir& dir, int port, const std::function<bool(const std::string&)>& done,
                              Subprocess& process, std::chrono::seconds limit = std::chrono::seconds(60)) {
  std::string status;
  testing::WaitUntil([&] {
    if (!process.running()) return true;
    status = Ctl(dir, port, {"status", "--json"}, 1000).second;
    if (done(status)) return true;
    process.Poll();
    return false;
  }, limit, milliseconds(0));
  return status;
}

// committed_round of a status answer, -1 if it has none.
inline int CommittedRound(const std::string& status) {
  const std::string v = Field(status, "committed_round");
  return v.empty() ? -1 : std::stoi(v);
}

// Every child still running at scope exit is killed, so a failed REQUIRE
// leaves no daemons behind.
struct Procs {
  std::vector<Subprocess*> all;
  ~Procs() {
    for (Subprocess* p : all) {
      if (p->running()) {
        p->Signal(SIGKILL);
        p->WaitFor(milliseconds(5000));
      }
    }
  }
};

inline Subprocess Spawn(const std::vector<std::string>& argv, const std::string& out, const std::string& failpoint = "") {
  SpawnOptions o;
  o.argv = argv;
  o.stdout_path = out;
  o.stderr_path = "stdout";
  o.extra_env = {"OPENBLAS_NUM_THREADS=1", "OMP_NUM_THREADS=1"};
  if (!failpoint.empty()) o.extra_env.push_back("LOWBAND_FAILPOINT=" + failpoint);
  auto p = Subprocess::Spawn(o);
  REQUIRE(p.ok());
  return std::move(p).value();
}

inline Subprocess Coordinator(const std::string& campaign, const std::string& out, const std::string& failpoint = "") {
  return Spawn({kBin + "/lowband-coordinator", "--campaign", campaign, "--progress"}, out, failpoint);
}
inline Subprocess Worker(const std::string& campaign, const std::string& site, const std::string& out,
                  const std::string& failpoint = "") {
  return Spawn({kBin + "/lowband-worker", "--campaign", campaign, "--site", site}, out, failpoint);
}

inline std::string WaitWorkers(const TempDir& dir, int port, const std::string& needle, Subprocess& coordinator) {
  std::string workers;
  testing::WaitUntil([&] {
    if (!coordinator.running()) return true;
    workers = Ctl(dir, port, {"workers", "--json"}, 1000).second;
    if (workers.find(needle) != std::string::npos) return true;
    coordinator.Poll();
    return false;
  }, milliseconds(60000), milliseconds(0));
  return workers;
}

// Pauses rounds; a retry after a lost answer hears "already paused".
inline void Pause(const TempDir& dir, int port) {
  std::pair<int, std::string> r;
  for (int i = 0; i < 20; ++i) {
    r = Ctl(dir, port, {"round", "pause"}, 1000);
    if (r.first == 0 || r.second.find("already paused") != std::string::npos) return;
  }
  FAIL("round pause was never accepted; the last answer (" << r.first << "): " << r.second);
}

}  // namespace lowband::itest
