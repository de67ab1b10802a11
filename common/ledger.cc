#include "common/ledger.h"

namespace lowband {

void BandwidthLedger::Record(const std::string& site, Direction dir, uint32_t round, const std::string& kind,
                             uint64_t bytes) {
  LedgerEntry& e = entries_[{site, dir, round, kind}];
  e.bytes += bytes;
  e.messages += 1;
}

void BandwidthLedger::Add(const std::string& site, Direction dir, uint32_t round, const std::string& kind,
                          LedgerEntry add) {
  LedgerEntry& e = entries_[{site, dir, round, kind}];
  e.bytes += add.bytes;
  e.messages += add.messages;
}

uint64_t BandwidthLedger::Total(Direction dir) const {
  uint64_t n = 0;
  for (const auto& [k, v] : entries_) {
    if (std::get<1>(k) == dir) n += v.bytes;
  }
  return n;
}

uint64_t BandwidthLedger::RoundTotal(uint32_t round, Direction dir) const {
  uint64_t n = 0;
  for (const auto& [k, v] : entries_) {
    if (std::get<1>(k) == dir && std::get<2>(k) == round) n += v.bytes;
  }
  return n;
}

uint64_t BandwidthLedger::SiteTotal(const std::string& site, Direction dir) const {
  uint64_t n = 0;
  for (const auto& [k, v] : entries_) {
    if (std::get<0>(k) == site && std::get<1>(k) == dir) n += v.bytes;
  }
  return n;
}

uint64_t BandwidthLedger::SiteRoundTotal(const std::string& site, uint32_t round, Direction dir) const {
  uint64_t n = 0;
  for (const auto& [k, v] : entries_) {
    if (std::get<0>(k) == site && std::get<1>(k) == dir && std::get<2>(k) == round) n += v.bytes;
  }
  return n;
}

LedgerEntry BandwidthLedger::KindTotal(Direction dir, const std::string& kind, int64_t round,
                                       const std::string& site) const {
  LedgerEntry total;
  for (const auto& [k, v] : entries_) {
    if (std::get<1>(k) != dir || std::get<3>(k) != kind) continue;
    if (round >= 0 && std::get<2>(k) != static_cast<uint32_t>(round)) continue;
    if (!site.empty() && std::get<0>(k) != site) continue;
    total.bytes += v.bytes;
    total.messages += v.messages;
  }
  return total;
}

}  // namespace lowband
