// Startup: opening RUN_DIR/state.db when the coordinator starts, and either
// recording a new campaign or rebuilding the core from what a previous run
// left (the newest usable checkpoint, then the logged rounds after it, the
// round history and the bandwidth ledger); and trimming the metrics file of
// records the state database never recorded (written just before a crash).
//
// Thread: the coordinator loop's thread, before the loop and the disk thread
// start (the store is handed to Persistence afterwards). It reads and
// removes files under RUN_DIR and prints to stderr (and, with progress, the
// resume line to stdout) as the daemon always has.
//
// Errors: OpenCampaignState returns an exit code to stop with (1: the state
// cannot be opened, read or rebuilt; kExitConfig: the state belongs to
// another campaign) after logging and printing why, or -1 to go on.
// TrimMetrics returns Internal when it cannot rewrite the file.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "config/config.h"
#include "coordinator/core.h"
#include "coordinator/ledger.h"
#include "coordinator/state_store.h"

namespace lowband {

// What opening the state leaves for the service.
struct OpenedState {
  std::unique_ptr<StateStore> store;  // open; for the disk thread
  bool resumed = false;               // the core was rebuilt from a previous run
  int restarts = 0;                   // restarts this campaign has resumed from (this one included)
  uint32_t last_recorded = 0;         // newest round whose record the state database holds
  uint32_t ledger_saved_from = 0;     // ledger rounds >= this may differ from the saved rows
  // Resumed: committed rounds older than the newest, never evaluated; to be
  // recorded as they are once the metrics file is open.
  std::vector<RoundRecord> unevaluated;
  // The stored campaign had ended: the exit code to stop with once the
  // workers that ask have been told (until linger_until).
  std::optional<int> ended_exit;
  TimePoint linger_until;
};

// Opens RUN_DIR/state.db (creating RUN_DIR/checkpoints) and either records
// a new campaign or rebuilds `core` and `ledger` from the newest checkpoint
// plus the logged rounds after it. Returns an exit code, or -1 to go on.
int OpenCampaignState(const CampaignConfig& config, const std::string& run_dir, bool progress, CoordinatorCore& core,
                      BandwidthLedger& ledger, OpenedState* opened);

// A restart keeps the metrics records (lines `{"round":N,...`) of rounds
// <= last_recorded and drops any other non-empty line, so that every round
// appears exactly once. A missing file is fine; the file is replaced
// atomically only when something was dropped.
Status TrimMetrics(const std::string& metrics_out, uint32_t last_recorded);

}  // namespace lowband
