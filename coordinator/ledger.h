// Bandwidth ledger: every message that crosses a site boundary, counted by
// site, direction, round and message kind, header frames included.
// kPeer: pipeline traffic a site sent to another site's stage (worker to
// worker; reported by the sender with its upload or evaluation, kind
// "stage<A>-><B>.<forward|backward|labels|eval>").
//
// Every query the coordinator makes per round and per metrics scrape is a
// lookup in a counter kept up to date by Record (O(log n)), not a scan: a
// campaign of S sites and R rounds costs the same per query at round R as at
// round 1. Per-round detail (the rows the round log persists) is kept only
// for recent rounds: ForgetBefore drops older rounds' rows and per-round
// counters once they are durable; the campaign totals stay.
// Owned by one event loop.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace lowband {

enum class Direction { kUp, kDown, kPeer };  // up: worker -> coordinator; peer: worker -> worker

struct LedgerEntry {
  uint64_t bytes = 0;
  uint64_t messages = 0;
  // What the same messages would take as dense fp32 of the parameters they
  // cover (compression ratios); not persisted, recomputed on restore.
  double dense_bytes = 0;
};

struct LedgerRow {
  std::string site;
  Direction dir = Direction::kUp;
  uint32_t round = 0;
  std::string kind;
  LedgerEntry entry;
};

class BandwidthLedger {
 public:
  // One message of `bytes` (and `dense_bytes` as dense fp32).
  void Record(const std::string& site, Direction dir, uint32_t round, const std::string& kind, uint64_t bytes,
              double dense_bytes = 0);
  // Adds counts restored from durable state (a restarted coordinator) or
  // reported in bulk (peer traffic).
  void Add(const std::string& site, Direction dir, uint32_t round, const std::string& kind, LedgerEntry e);

  uint64_t Total(Direction dir) const;
  uint64_t RoundTotal(uint32_t round, Direction dir) const;
  uint64_t SiteTotal(const std::string& site, Direction dir) const;
  uint64_t SiteRoundTotal(const std::string& site, uint32_t round, Direction dir) const;
  // Bytes, message count and dense equivalent of one kind; round < 0 =
  // every round; site "" = every site. A forgotten round reads as empty.
  LedgerEntry KindTotal(Direction dir, const std::string& kind, int64_t round = -1, const std::string& site = "") const;
  // Dense bytes over bytes of KindTotal (0 when nothing was sent).
  double Ratio(Direction dir, const std::string& kind, int64_t round = -1, const std::string& site = "") const;

  // The rows of rounds >= `round`, in (round, site, direction, kind) order.
  std::vector<LedgerRow> RowsSince(uint32_t round) const;
  // Drops the per-round detail of rounds < `round` (already durable).
  void ForgetBefore(uint32_t round);
  // Rounds with per-round detail held (for tests and the memory bound).
  size_t rounds_held() const;

 private:
  using Key = std::tuple<uint32_t, std::string, Direction, std::string>;  // round, site, dir, kind
  static void Accumulate(LedgerEntry& to, const LedgerEntry& e);
  std::map<Key, LedgerEntry> rows_;                                                 // recent rounds only
  std::map<std::tuple<uint32_t, Direction>, LedgerEntry> round_;                    // recent rounds only
  std::map<std::tuple<uint32_t, std::string, Direction>, LedgerEntry> site_round_;  // recent rounds only
  std::map<std::tuple<uint32_t, Direction, std::string>, LedgerEntry> kind_round_;  // recent rounds only
  std::map<Direction, LedgerEntry> total_;
  std::map<std::tuple<std::string, Direction>, LedgerEntry> site_;
  std::map<std::tuple<Direction, std::string>, LedgerEntry> kind_;
  std::map<std::tuple<Direction, std::string, std::string>, LedgerEntry> kind_site_;
};

}  // namespace lowband
