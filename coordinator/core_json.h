// The operator's view of the coordinator core as JSON (the `status` and
// `workers` control answers, /api/state): rendering only, from plain
// snapshots the core fills in, so the format can be tested on a known state
// without a campaign. No state, no I/O; the caller passes the time.
// Thread: whichever calls it (the coordinator loop in the daemon).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "coordinator/core_types.h"

namespace lowband {

// What `status` reports. `last` is the newest written record (null: none yet).
struct StatusSnapshot {
  std::string campaign;
  const char* phase = "";
  uint32_t committed_round = 0;
  int rounds = 0;
  int live_workers = 0;
  int expected_workers = 0;
  bool paused = false;
  int uploads = 0;  // accepted for the open round
  uint64_t digest = 0;
  int pipeline_stages = 1;
  uint64_t parameters = 0;
  uint64_t rejected_messages = 0;
  const RoundRecord* last = nullptr;
};

// One line of `workers`: the core's WorkerInfo and what the round says of it.
struct WorkerRow {
  const WorkerInfo* info = nullptr;
  int stage = -1;        // pipeline: its stage, else -1
  int inner_steps = 0;   // H_i of the open round (0: none assigned)
  bool uploaded = false; // its upload for the open round is in
};

// {"campaign":...,"phase":...,...} (key order fixed: tools parse it).
std::string StatusJson(const StatusSnapshot& s);
// [{"site":...,"state":...,...},...], last_seen_s relative to `now`.
std::string WorkersJson(const std::vector<WorkerRow>& rows, TimePoint now);
// The `status` answer's one-line message.
std::string StatusLine(const StatusSnapshot& s, bool finished);

}  // namespace lowband
