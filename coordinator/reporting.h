// Reporting: what the coordinator tells people and scripts about its rounds,
// rendered from a round record, the bandwidth ledger, the campaign config
// and the core (read only):
//  * the human progress lines on stdout (`--progress`), one block per round;
//  * the metrics JSONL line of a round (RecordLine; field order is the file
//    format: scripts and the dashboard read it) and the systemd status line;
//  * RUN_DIR/summary.txt (Summary) and the final per-site table (FinalTable);
//  * the dense fp32 equivalents the ledger's compression ratios divide by
//    (DenseBytes) and the pipeline boundary figures.
// Everything here is a pure function of its inputs: it returns text and
// never writes stdout, files or the disk thread (the service does, in
// order). Prometheus text is coordinator/prometheus.h (it needs ops/).
//
// Thread: the coordinator loop (the core and the ledger are the loop's);
// a RoundReporter holds references and must not outlive them. No errors:
// missing figures read as 0 or NaN.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>

#include "config/config.h"
#include "coordinator/core.h"
#include "coordinator/ledger.h"

namespace lowband {

// 1234567 -> "1.23 MB" (decimal units; bytes without decimals).
std::string HumanBytes(double b);

// What a site's round upload is: its pseudo-gradient, or FPLD probe logits.
const char* UploadKind(const CampaignConfig& config);

// Dense fp32 bytes `messages` messages of `kind` to or from `site` in
// `round` would take: 4 bytes per parameter they cover (a pipeline stage's
// slice, a ParaBlock block, or the whole model; FPLD: the probe logits).
// The ledger's compression ratios divide this by the bytes sent.
double DenseBytes(const CampaignConfig& config, const CoordinatorCore& core, const std::string& site, uint32_t round,
                  const std::string& kind, uint64_t messages);

// The round records behind the dashboard's charts: the newest kRounds
// metrics lines as written (older ones stay in the file and state.db).
class RecordLines {
 public:
  static constexpr size_t kRounds = 10000;
  void Keep(std::string line);
  // The lines as a JSON array (each line is a JSON object).
  std::string JsonArray() const;
  size_t size() const { return lines_.size(); }

 private:
  std::deque<std::string> lines_;
};

class RoundReporter {
 public:
  RoundReporter(const CampaignConfig& config, const CoordinatorCore& core, const BandwidthLedger& ledger)
      : config_(config), core_(core), ledger_(ledger) {}

  // A round's traffic as the ledger holds it.
  struct Figures {
    uint64_t up = 0, down = 0;  // every message, headers included
    LedgerEntry uploads, aggregates;
    double ratio_up = 0, ratio_down = 0;
  };
  Figures RoundFigures(uint32_t round) const;

  // Pipeline: the ledger's traffic across boundary b (stages b and b+1),
  // of one round (or every round: -1).
  struct BoundaryFigures {
    LedgerEntry forward, backward, labels, eval;
    double ratio = 0;  // fp32 full-width activations / bytes, forward and backward
  };
  BoundaryFigures Boundary(int b, int64_t round) const;
  std::string BoundariesJson(int64_t round) const;

  // The progress lines of a committed round (newline-terminated).
  std::string ProgressLines(const RoundRecord& r) const;
  // The progress line of a round recorded before a restart and re-evaluated.
  std::string ResumedLine(const RoundRecord& r) const;
  // A site caught up after round 0 with one ModelSync of `bytes`.
  std::string ResyncLine(const std::string& site, uint32_t round, uint64_t bytes) const;
  // The round's metrics JSONL record (no newline).
  std::string RecordLine(const RoundRecord& r) const;
  // systemd's STATUS= after a round.
  std::string StatusLine(const RoundRecord& r) const;
  // The per-site table, boundary lines and loss/digest line printed at the end.
  std::string FinalTable() const;
  // RUN_DIR/summary.txt: one "key value" per line, for scripts (bench/).
  // `fcrag_result`: the campaign's calibration JSON ("" = none).
  std::string Summary(bool failed, const std::string& fcrag_result, double wall_s) const;

 private:
  const CampaignConfig& config_;
  const CoordinatorCore& core_;
  const BandwidthLedger& ledger_;
};

}  // namespace lowband
