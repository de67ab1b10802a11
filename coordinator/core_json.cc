#include "coordinator/core_json.h"

#include <cstdio>

#include "base/hash.h"
#include "base/json.h"

namespace lowband {

std::string StatusJson(const StatusSnapshot& s) {
  JsonObject o;
  o.Add("campaign", s.campaign)
      .Add("phase", s.phase)
      .Add("committed_round", s.committed_round)
      .Add("rounds", s.rounds)
      .Add("live_workers", s.live_workers)
      .Add("expected_workers", s.expected_workers)
      .Add("paused", s.paused)
      .Add("uploads", s.uploads)
      .Add("digest", DigestHex(s.digest))
      .Add("pipeline_stages", s.pipeline_stages)
      .Add("parameters", s.parameters)
      .Add("rejected_messages", s.rejected_messages);
  if (s.last) {
    const RoundRecord& r = *s.last;
    o.Add("last_round", r.round).Add("train_loss", r.train_loss).Add("val_loss", r.val_loss);
  }
  return o.str();
}

std::string WorkersJson(const std::vector<WorkerRow>& rows, TimePoint now) {
  std::string arr = "[";
  for (const WorkerRow& row : rows) {
    const WorkerInfo& w = *row.info;
    if (arr.size() > 1) arr += ',';
    JsonObject o;
    o.Add("site", w.site)
        .Add("state", WorkerStateName(w.state))
        .Add("stage", row.stage)
        .Add("inner_steps", row.inner_steps)
        .Add("device", w.hello.device)
        .Add("ranks", w.hello.ranks)
        .Add("synced_round", w.synced_round)
        .Add("last_seen_s", std::chrono::duration<double>(now - w.last_seen).count())
        .Add("step_time_ms", w.last_step_time_ms)
        .Add("val_loss", w.last_val_loss)
        .Add("uploaded", row.uploaded)
        .Add("rejected", w.rejected);
    arr += o.str();
  }
  return arr + "]";
}

std::string StatusLine(const StatusSnapshot& s, bool finished) {
  char line[256];
  std::snprintf(line, sizeof(line), "campaign %s: %s%s, round %u/%d, %d/%d workers live", s.campaign.c_str(), s.phase,
                s.paused && !finished ? " (paused)" : "", s.committed_round, s.rounds, s.live_workers,
                s.expected_workers);
  return line;
}

}  // namespace lowband
