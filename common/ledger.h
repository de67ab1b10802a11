// Bandwidth ledger: every message that crosses a site boundary, counted by
// site, direction, round and message kind, header frames included.
// Owned by one event loop.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <tuple>

namespace lowband {

enum class Direction { kUp, kDown };  // up: worker -> coordinator

class BandwidthLedger {
 public:
  void Record(const std::string& site, Direction dir, uint32_t round, const std::string& kind, uint64_t bytes);

  uint64_t Total(Direction dir) const;
  uint64_t RoundTotal(uint32_t round, Direction dir) const;
  uint64_t SiteTotal(const std::string& site, Direction dir) const;
  uint64_t SiteRoundTotal(const std::string& site, uint32_t round, Direction dir) const;
  // (site, direction, round, kind) -> bytes
  const std::map<std::tuple<std::string, Direction, uint32_t, std::string>, uint64_t>& entries() const {
    return entries_;
  }

 private:
  std::map<std::tuple<std::string, Direction, uint32_t, std::string>, uint64_t> entries_;
};

}  // namespace lowband
