#include "coordinator/ledger.h"

#include <iterator>

namespace lowband {

namespace {
template <typename Map, typename K>
LedgerEntry Get(const Map& m, const K& key) {
  auto it = m.find(key);
  return it == m.end() ? LedgerEntry{} : it->second;
}
}  // namespace

void BandwidthLedger::Accumulate(LedgerEntry& to, const LedgerEntry& e) {
  to.bytes += e.bytes;
  to.messages += e.messages;
  to.dense_bytes += e.dense_bytes;
}

void BandwidthLedger::Record(const std::string& site, Direction dir, uint32_t round, const std::string& kind,
                             uint64_t bytes, double dense_bytes) {
  Add(site, dir, round, kind, LedgerEntry{bytes, 1, dense_bytes});
}

void BandwidthLedger::Add(const std::string& site, Direction dir, uint32_t round, const std::string& kind,
                          LedgerEntry e) {
  Accumulate(rows_[{round, site, dir, kind}], e);
  Accumulate(round_[{round, dir}], e);
  Accumulate(site_round_[{round, site, dir}], e);
  Accumulate(kind_round_[{round, dir, kind}], e);
  Accumulate(total_[dir], e);
  Accumulate(site_[{site, dir}], e);
  Accumulate(kind_[{dir, kind}], e);
  Accumulate(kind_site_[{dir, kind, site}], e);
}

uint64_t BandwidthLedger::Total(Direction dir) const { return Get(total_, dir).bytes; }

uint64_t BandwidthLedger::RoundTotal(uint32_t round, Direction dir) const {
  return Get(round_, std::make_tuple(round, dir)).bytes;
}

uint64_t BandwidthLedger::SiteTotal(const std::string& site, Direction dir) const {
  return Get(site_, std::make_tuple(site, dir)).bytes;
}

uint64_t BandwidthLedger::SiteRoundTotal(const std::string& site, uint32_t round, Direction dir) const {
  return Get(site_round_, std::make_tuple(round, site, dir)).bytes;
}

LedgerEntry BandwidthLedger::KindTotal(Direction dir, const std::string& kind, int64_t round,
                                       const std::string& site) const {
  if (round < 0)
    return site.empty() ? Get(kind_, std::make_tuple(dir, kind)) : Get(kind_site_, std::make_tuple(dir, kind, site));
  const auto r = static_cast<uint32_t>(round);
  return site.empty() ? Get(kind_round_, std::make_tuple(r, dir, kind)) : Get(rows_, Key{r, site, dir, kind});
}

double BandwidthLedger::Ratio(Direction dir, const std::string& kind, int64_t round, const std::string& site) const {
  const LedgerEntry e = KindTotal(dir, kind, round, site);
  return e.bytes > 0 ? e.dense_bytes / static_cast<double>(e.bytes) : 0.0;
}

std::vector<LedgerRow> BandwidthLedger::RowsSince(uint32_t round) const {
  std::vector<LedgerRow> rows;
  for (auto it = rows_.lower_bound(Key{round, "", Direction::kUp, ""}); it != rows_.end(); ++it) {
    const auto& [r, site, dir, kind] = it->first;
    rows.push_back({site, dir, r, kind, it->second});
  }
  return rows;
}

void BandwidthLedger::ForgetBefore(uint32_t round) {
  rows_.erase(rows_.begin(), rows_.lower_bound(Key{round, "", Direction::kUp, ""}));
  round_.erase(round_.begin(), round_.lower_bound(std::make_tuple(round, Direction::kUp)));
  site_round_.erase(site_round_.begin(),
                    site_round_.lower_bound(std::make_tuple(round, std::string(), Direction::kUp)));
  kind_round_.erase(kind_round_.begin(),
                    kind_round_.lower_bound(std::make_tuple(round, Direction::kUp, std::string())));
}

size_t BandwidthLedger::rounds_held() const {
  size_t n = 0;
  for (auto it = round_.begin(); it != round_.end();
       it = round_.upper_bound(std::make_tuple(std::get<0>(it->first), Direction::kPeer)))
    ++n;
  return n;
}

}  // namespace lowband
