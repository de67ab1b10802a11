#include "coordinator/eval_records.h"

#include <algorithm>
#include <limits>

#include "base/log.h"

namespace lowband {

EvalRecord& EvalRecords::Open(RoundRecord record, TimePoint round_start, TimePoint now) {
  EvalRecord& e = pending_[record.round];
  e = EvalRecord{};
  e.record = std::move(record);
  e.round_start = round_start;
  e.eval_start = now;
  return e;
}

EvalRecord* EvalRecords::Find(uint32_t round) {
  auto it = pending_.find(round);
  return it == pending_.end() ? nullptr : &it->second;
}

const EvalRecord* EvalRecords::Find(uint32_t round) const {
  auto it = pending_.find(round);
  return it == pending_.end() ? nullptr : &it->second;
}

EvalRecord EvalRecords::PopOldest() {
  EvalRecord e = std::move(pending_.begin()->second);
  pending_.erase(pending_.begin());
  return e;
}

void EvalRecords::RestartClocks(TimePoint now) {
  for (auto& [round, e] : pending_) e.eval_start = now;
}

void EvalRecords::Forget(const std::string& site) {
  for (auto& [round, e] : pending_) e.expected.erase(site);
}

void EvalRecords::Expect(uint32_t round, const std::string& site) {
  if (EvalRecord* e = Find(round)) e->expected.insert(site);
}

bool EvalRecords::Complete(const EvalRecord& e, const std::function<bool(const std::string&)>& live,
                           const CampaignMode& mode, int min_workers, uint32_t committed_round,
                           Clock::duration deadline, TimePoint now) {
  const int have = static_cast<int>(e.evals.size());
  bool waiting = false;
  int live_expected = 0;
  for (const std::string& site : e.expected) {
    if (!live(site)) continue;
    ++live_expected;
    if (!e.evals.count(site)) waiting = true;
  }
  const int need = mode.EvalsNeeded(min_workers, live_expected);
  const bool enough = have >= need || e.record.round < committed_round;
  if (!waiting) return enough;
  return now - e.eval_start > deadline && enough;
}

RoundRecord EvalRecords::Write(EvalRecord e, const CampaignMode& mode,
                               const std::function<int(const std::string&)>& stage_of, TimePoint campaign_start,
                               TimePoint now) {
  RoundRecord& r = e.record;
  double loss_sum = 0;
  uint64_t tokens = 0;
  for (const auto& [site, ev] : e.evals) {
    // Pipeline: the loss is the last stage's; the others report digests
    // only, as every site does in rounds training.eval_every skips (0 tokens).
    if (!mode.CountsLoss(stage_of(site)) || ev.val_tokens == 0) continue;
    const double weight = static_cast<double>(ev.val_tokens);
    loss_sum += ev.val_loss * weight;
    tokens += ev.val_tokens;
    r.sites[site].val_loss = ev.val_loss;
  }
  mode.RecordEvals(e.evals, &r);
  r.val_loss = tokens > 0 ? loss_sum / static_cast<double>(tokens) : std::numeric_limits<double>::quiet_NaN();
  r.evaluated = static_cast<int>(e.evals.size());
  r.wall_s = std::chrono::duration<double>(now - e.round_start).count();
  r.elapsed_s = std::chrono::duration<double>(now - campaign_start).count();
  r.reevaluated = !history_.empty() && history_.back().round == r.round;
  if (!r.reevaluated) Append(r);
  return std::move(r);
}

void EvalRecords::Append(RoundRecord r) {
  if (totals_.records == 0) totals_.first_val_loss = r.val_loss;
  ++totals_.records;
  totals_.tokens += r.tokens;
  if (r.round > 0) totals_.wall_s += r.wall_s;
  totals_.late_uploads += r.late_uploads;
  totals_.digest_mismatches += r.digest_mismatches;
  for (const auto& [name, s] : r.sites) totals_.uploaded_rounds[name] += s.uploaded;
  history_.push_back(std::move(r));
  if (history_.size() > kHistoryKept) history_.pop_front();
}

void EvalRecords::set_history(std::vector<RoundRecord> history) {
  history_.clear();
  totals_ = Totals{};
  for (RoundRecord& r : history) Append(std::move(r));
}

uint64_t ReportedDigest(const EvalReport& m, uint32_t ranks, uint64_t expected, const std::string& site) {
  uint64_t reported = m.digest;
  if (ranks > 1 && m.rank_digests.size() != ranks) {
    LOG_ERROR("evaluation report without every rank's digest", {"site", site}, {"round", m.round}, {"ranks", ranks},
              {"digests", static_cast<uint64_t>(m.rank_digests.size())});
    reported = ~expected;
  }
  for (size_t r = 0; r < m.rank_digests.size() && reported == expected; ++r) {
    if (m.rank_digests[r] != expected) {
      reported = m.rank_digests[r];
      LOG_ERROR("a rank's replica differs", {"site", site}, {"rank", static_cast<uint64_t>(r)}, {"round", m.round});
    }
  }
  return reported;
}

}  // namespace lowband
