// EvalRecords: round records waiting for their evaluations (the committed
// round's and, with overlap, earlier ones), the rule for when one is
// complete, how a finished one is summed up, and the history of the records
// written. Holds no worker state: liveness and the campaign mode are asked
// for. No I/O, no clock reads (time is passed in). Thread: the coordinator
// loop. Errors: none; an evaluation that does not match is the caller's to
// answer (ReportedDigest says what the site holds).
#pragma once

#include <cstdint>
#include <functional>
#include <deque>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "coordinator/campaign_mode.h"
#include "coordinator/core_types.h"

namespace lowband {

// A round's record waiting for evaluations. `expected`: the sites sent the
// round's parameters (aggregate or sync) that have not moved past them since
// (a later sync, loss, eviction, a new hello).
struct EvalRecord {
  RoundRecord record;
  std::map<std::string, EvalReport> evals;  // by site
  std::set<std::string> expected;
  TimePoint round_start;
  TimePoint eval_start;
};

class EvalRecords {
 public:
  // Starts waiting for `record.round`'s evaluations (replacing a record of
  // the same round).
  EvalRecord& Open(RoundRecord record, TimePoint round_start, TimePoint now);
  EvalRecord* Find(uint32_t round);
  const EvalRecord* Find(uint32_t round) const;
  void Clear() { pending_.clear(); }
  bool empty() const { return pending_.empty(); }
  // The oldest pending record (not empty()).
  EvalRecord& Oldest() { return pending_.begin()->second; }
  EvalRecord PopOldest();
  // Every pending record's evaluation clock starts now (the expected
  // workers have joined).
  void RestartClocks(TimePoint now);
  // The site will not evaluate any pending round (lost, evicted, re-synced).
  void Forget(const std::string& site);
  // `site` was sent `round`'s parameters (no-op if nothing waits for it).
  void Expect(uint32_t round, const std::string& site);

  // Complete when every expected site that is `live` has reported, with at
  // least mode.EvalsNeeded reports for the committed round (an earlier
  // overlapped round needs no more than its sites can still send), or at
  // the deadline with that many.
  static bool Complete(const EvalRecord& e, const std::function<bool(const std::string&)>& live,
                       const CampaignMode& mode, int min_workers, uint32_t committed_round,
                       Clock::duration deadline, TimePoint now);

  // Sums up a complete record (token-weighted validation loss over the
  // sites whose stage reports losses, the mode's extras, times) and writes
  // it to the history unless it re-evaluates the newest written round
  // (then `reevaluated`). Returns the record to publish.
  RoundRecord Write(EvalRecord e, const CampaignMode& mode, const std::function<int(const std::string&)>& stage_of,
                    TimePoint campaign_start, TimePoint now);

  // The newest kHistoryKept records written (a long campaign's memory stays
  // bounded; every record is in the metrics file and state.db), and totals
  // over all of them.
  static constexpr size_t kHistoryKept = 1000;
  struct Totals {
    size_t records = 0;
    uint64_t tokens = 0;
    double wall_s = 0;  // rounds > 0
    int late_uploads = 0;
    int digest_mismatches = 0;
    std::map<std::string, int> uploaded_rounds;  // by site
    double first_val_loss = std::numeric_limits<double>::quiet_NaN();
  };
  const std::deque<RoundRecord>& history() const { return history_; }
  const Totals& totals() const { return totals_; }
  void set_history(std::vector<RoundRecord> history);

 private:
  void Append(RoundRecord r);
  std::map<uint32_t, EvalRecord> pending_;  // by round
  std::deque<RoundRecord> history_;
  Totals totals_;
};

// The digest a site's report says it holds, given the `expected` one: a
// site of several ranks must report one digest per rank and each must
// match; a report without every rank's counts as ~expected (logged).
uint64_t ReportedDigest(const EvalReport& m, uint32_t ranks, uint64_t expected, const std::string& site);

}  // namespace lowband
