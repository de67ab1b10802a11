#include "base/failpoint.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace lowband {
namespace {

struct Point {
  std::string name;
  bool any_round = false;
  uint32_t round = 0;
  long sleep_ms = -1;  // -1: kill
};

// "NAME@ROUND" or "NAME@*", optionally ":sleep=MS".
bool ParsePoint(const std::string& item, Point* p) {
  const size_t at = item.find('@');
  if (at == std::string::npos || at == 0 || at + 1 == item.size()) return false;
  p->name = item.substr(0, at);
  std::string round = item.substr(at + 1);
  const size_t colon = round.find(':');
  if (colon != std::string::npos) {
    const std::string action = round.substr(colon + 1);
    round = round.substr(0, colon);
    if (action.rfind("sleep=", 0) != 0 || action.size() == 6) return false;
    char* rest = nullptr;
    p->sleep_ms = std::strtol(action.c_str() + 6, &rest, 10);
    if (rest == nullptr || *rest != '\0' || p->sleep_ms < 0) return false;
  }
  if (round == "*") {
    p->any_round = true;
    return true;
  }
  char* rest = nullptr;
  const unsigned long r = std::strtoul(round.c_str(), &rest, 10);
  if (round.empty() || rest == nullptr || *rest != '\0') return false;
  p->round = static_cast<uint32_t>(r);
  return true;
}

// Parsed once; malformed entries are reported on stderr and ignored.
const std::vector<Point>& Points() {
  static const auto points = [] {
    std::vector<Point> out;
    const char* env = std::getenv("LOWBAND_FAILPOINT");
    if (!env) return out;
    std::string spec(env);
    size_t start = 0;
    while (start <= spec.size()) {
      const size_t end = std::min(spec.find(',', start), spec.size());
      const std::string item = spec.substr(start, end - start);
      Point p;
      if (ParsePoint(item, &p)) {
        out.push_back(p);
      } else if (!item.empty()) {
        std::fprintf(stderr, "LOWBAND_FAILPOINT: ignoring '%s' (expected NAME@ROUND or NAME@*, optionally :sleep=MS)\n",
                     item.c_str());
      }
      start = end + 1;
    }
    return out;
  }();
  return points;
}

}  // namespace

void FailPoint(const char* name, uint32_t round) {
  for (const Point& p : Points()) {
    if ((!p.any_round && p.round != round) || p.name != name) continue;
    if (p.sleep_ms >= 0) {
      std::fprintf(stderr, "LOWBAND_FAILPOINT: %s@%u reached, sleeping %ld ms\n", name, round, p.sleep_ms);
      std::fflush(stderr);
      std::this_thread::sleep_for(std::chrono::milliseconds(p.sleep_ms));
      continue;
    }
    std::fprintf(stderr, "LOWBAND_FAILPOINT: %s@%u reached, killing process %d\n", name, round,
                 static_cast<int>(getpid()));
    std::fflush(stderr);
    ::kill(getpid(), SIGKILL);
  }
}

}  // namespace lowband
