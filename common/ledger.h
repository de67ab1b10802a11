// Bandwidth ledger: every message that crosses a site boundary, counted by
// site, direction, round and message kind, header frames included.
// kPeer: pipeline traffic a site sent to another site's stage (worker to
// worker; reported by the sender with its upload or evaluation, kind
// "stage<A>-><B>.<forward|backward|labels|eval>").
// Owned by one event loop.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <tuple>

namespace lowband {

enum class Direction { kUp, kDown, kPeer };  // up: worker -> coordinator; peer: worker -> worker

struct LedgerEntry {
  uint64_t bytes = 0;
  uint64_t messages = 0;
};

class BandwidthLedger {
 public:
  void Record(const std::string& site, Direction dir, uint32_t round, const std::string& kind, uint64_t bytes);
  // Adds counts restored from durable state (a restarted coordinator).
  void Add(const std::string& site, Direction dir, uint32_t round, const std::string& kind, LedgerEntry e);

  uint64_t Total(Direction dir) const;
  uint64_t RoundTotal(uint32_t round, Direction dir) const;
  uint64_t SiteTotal(const std::string& site, Direction dir) const;
  uint64_t SiteRoundTotal(const std::string& site, uint32_t round, Direction dir) const;
  // Bytes and message count of one kind; round < 0 = every round; site "" = every site.
  LedgerEntry KindTotal(Direction dir, const std::string& kind, int64_t round = -1,
                        const std::string& site = "") const;
  // (site, direction, round, kind) -> bytes and messages
  const std::map<std::tuple<std::string, Direction, uint32_t, std::string>, LedgerEntry>& entries() const {
    return entries_;
  }

 private:
  std::map<std::tuple<std::string, Direction, uint32_t, std::string>, LedgerEntry> entries_;
};

}  // namespace lowband
