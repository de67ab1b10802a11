#include "common/ledger.h"

namespace lowband {

void BandwidthLedger::Record(const std::string& site, Direction dir, uint32_t round, const std::string& kind,
                             uint64_t bytes) {
  entries_[{site, dir, round, kind}] += bytes;
}

uint64_t BandwidthLedger::Total(Direction dir) const {
  uint64_t n = 0;
  for (const auto& [k, v] : entries_) {
    if (std::get<1>(k) == dir) n += v;
  }
  return n;
}

uint64_t BandwidthLedger::RoundTotal(uint32_t round, Direction dir) const {
  uint64_t n = 0;
  for (const auto& [k, v] : entries_) {
    if (std::get<1>(k) == dir && std::get<2>(k) == round) n += v;
  }
  return n;
}

uint64_t BandwidthLedger::SiteTotal(const std::string& site, Direction dir) const {
  uint64_t n = 0;
  for (const auto& [k, v] : entries_) {
    if (std::get<0>(k) == site && std::get<1>(k) == dir) n += v;
  }
  return n;
}

uint64_t BandwidthLedger::SiteRoundTotal(const std::string& site, uint32_t round, Direction dir) const {
  uint64_t n = 0;
  for (const auto& [k, v] : entries_) {
    if (std::get<0>(k) == site && std::get<1>(k) == dir && std::get<2>(k) == round) n += v;
  }
  return n;
}

}  // namespace lowband
