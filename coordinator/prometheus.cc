#include "coordinator/prometheus.h"

#include <limits>
#include <map>

#include "coordinator/reporting.h"
#include "ops/metrics_http.h"

namespace lowband {

std::string RenderPrometheus(const CampaignConfig& config, const CoordinatorCore& core, const BandwidthLedger& ledger,
                             const ServiceCounters& counters) {
  PromText t;
  const auto& h = core.history();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const char* upload_kind = UploadKind(config);
  t.Add("lowband_rounds_committed_total", "counter", "Rounds committed (round 0, the initial evaluation, excluded).",
        core.committed_round());
  t.Add("lowband_rounds_planned", "gauge", "Rounds the campaign runs.", config.training.rounds);
  t.Add("lowband_train_loss", "gauge", "Token-weighted training loss of the last recorded round.",
        h.empty() ? nan : h.back().train_loss);
  t.Add("lowband_val_loss", "gauge", "Token-weighted validation loss of the last recorded round.",
        h.empty() ? nan : h.back().val_loss);
  const double wall = core.history_totals().wall_s;
  const int late = core.history_totals().late_uploads, mismatches = core.history_totals().digest_mismatches;
  t.Add("lowband_round_duration_seconds_total", "counter", "Wall time of the recorded rounds, summed.", wall);
  t.Add("lowband_last_round_duration_seconds", "gauge", "Wall time of the last recorded round.",
        h.empty() ? nan : h.back().wall_s);
  if (!h.empty()) {
    // The last round's sites: inner-step time over the training thread's
    // cycle (NaN until a site's second round).
    for (const auto& [site, stats] : h.back().sites) {
      t.Add("lowband_site_compute_utilisation", "gauge",
            "Inner-step time / wall time of the site's round cycle, last recorded round.", stats.utilisation,
            {{"site", site}});
    }
  }
  std::map<std::string, int> states;
  for (const auto& [site, w] : core.workers()) {
    ++states[WorkerStateName(w.state)];
    for (Direction d : {Direction::kUp, Direction::kDown}) {
      t.Add("lowband_bytes_total", "counter", "Bytes of every message to or from a site, headers included.",
            static_cast<double>(ledger.SiteTotal(site, d)), {{"site", site}, {"direction", d == Direction::kUp ? "up" : "down"}});
    }
  }
  for (const auto& [site, w] : core.workers()) {
    t.Add("lowband_upload_bytes_total", "counter", "Bytes of a site's delta uploads.",
          static_cast<double>(ledger.KindTotal(Direction::kUp, upload_kind, -1, site).bytes), {{"site", site}});
  }
  for (const auto& [site, w] : core.workers()) {
    t.Add("lowband_aggregate_bytes_total", "counter", "Bytes of the aggregates sent to a site.",
          static_cast<double>(ledger.KindTotal(Direction::kDown, "aggregate", -1, site).bytes), {{"site", site}});
  }
  for (const auto& [site, w] : core.workers()) {
    t.Add("lowband_site_rejected_messages_total", "counter", "Messages from a site rejected with an error reply.",
          static_cast<double>(w.rejected), {{"site", site}});
  }
  const uint32_t last = h.empty() ? 0 : h.back().round;
  t.Add("lowband_compression_ratio", "gauge",
        "Dense fp32 bytes over bytes sent, for the last recorded round's uploads (up) and aggregates (down).",
        ledger.Ratio(Direction::kUp, upload_kind, last), {{"direction", "up"}});
  t.Add("lowband_compression_ratio", "gauge", "", ledger.Ratio(Direction::kDown, "aggregate", last),
        {{"direction", "down"}});
  for (const char* state : {"joined", "lost", "evicted"}) {
    t.Add("lowband_workers", "gauge", "Registered sites by state.", states[state], {{"state", state}});
  }
  t.Add("lowband_expected_workers", "gauge", "Sites the campaign waits for.", config.quorum.expected_workers);
  t.Add("lowband_workers_lost_total", "counter", "Times a site was marked lost (silent past the heartbeat timeout).",
        static_cast<double>(counters.lost_events));
  t.Add("lowband_late_uploads_total", "counter", "Uploads that arrived after their round had closed (stragglers).",
        late);
  t.Add("lowband_digest_mismatches_total", "counter", "Replica digests that differed from the coordinator's.",
        mismatches);
  t.Add("lowband_rejected_messages_total", "counter", "Inbound messages rejected, by reason.",
        static_cast<double>(core.rejected_messages()), {{"reason", "all"}});
  for (const auto& [reason, n] : core.rejected_by_reason()) {
    t.Add("lowband_rejected_messages_total", "counter", "", static_cast<double>(n), {{"reason", reason}});
  }
  t.Add("lowband_dropped_messages_total", "counter",
        "Inbound messages dropped by the transport (too many frames, or larger than max_message_bytes).",
        static_cast<double>(counters.dropped_messages));
  if (counters.curve) {
    t.Add("lowband_auth_refused_total", "counter", "CurveZMQ handshakes refused by the ZAP handler (unknown keys).",
          static_cast<double>(counters.auth_refused));
    t.Add("lowband_auth_accepted_total", "counter", "CurveZMQ handshakes accepted.",
          static_cast<double>(counters.auth_accepted));
  }
  t.Add("lowband_coordinator_restarts_total", "counter", "Restarts this campaign has resumed from.", counters.restarts);
  t.Add("lowband_campaign_finished", "gauge", "1 once the campaign has ended.",
        core.phase() == CoordinatorCore::Phase::kFinished ? 1 : 0);
  return t.str();
}

}  // namespace lowband
