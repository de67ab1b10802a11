#include "common/failpoint.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

namespace lowband {
namespace {

// Parsed once; malformed entries are reported on stderr and ignored.
const std::vector<std::pair<std::string, uint32_t>>& Points() {
  static const auto points = [] {
    std::vector<std::pair<std::string, uint32_t>> out;
    const char* env = std::getenv("LOWBAND_FAILPOINT");
    if (!env) return out;
    std::string spec(env);
    size_t start = 0;
    while (start <= spec.size()) {
      const size_t end = std::min(spec.find(',', start), spec.size());
      const std::string item = spec.substr(start, end - start);
      const size_t at = item.find('@');
      char* rest = nullptr;
      const unsigned long round = at == std::string::npos ? 0 : std::strtoul(item.c_str() + at + 1, &rest, 10);
      if (at == std::string::npos || at == 0 || rest == nullptr || *rest != '\0' || at + 1 == item.size()) {
        if (!item.empty()) std::fprintf(stderr, "LOWBAND_FAILPOINT: ignoring '%s' (expected NAME@ROUND)\n", item.c_str());
      } else {
        out.emplace_back(item.substr(0, at), static_cast<uint32_t>(round));
      }
      start = end + 1;
    }
    return out;
  }();
  return points;
}

}  // namespace

void FailPoint(const char* name, uint32_t round) {
  for (const auto& [n, r] : Points()) {
    if (r == round && n == name) {
      std::fprintf(stderr, "LOWBAND_FAILPOINT: %s@%u reached, killing process %d\n", name, round,
                   static_cast<int>(getpid()));
      std::fflush(stderr);
      ::kill(getpid(), SIGKILL);
    }
  }
}

}  // namespace lowband
