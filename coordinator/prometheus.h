// The Prometheus text of the coordinator's state (GET /metrics): rounds,
// losses, round times, bytes per site and direction, compression ratios,
// membership, rejections, transport drops, CurveZMQ handshakes, restarts.
// A pure function of the config, the core, the ledger and the service's
// own counters (rendered with ops/PromText, hence outside the socket-free
// reporting library).
//
// Thread: the coordinator loop, at request time. No errors.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "config/config.h"
#include "coordinator/core.h"
#include "coordinator/ledger.h"

namespace lowband {

// What only the service knows.
struct ServiceCounters {
  uint64_t lost_events = 0;        // sites marked lost
  int restarts = 0;                // restarts this campaign resumed from
  uint64_t dropped_messages = 0;   // dropped by the worker transport
  bool curve = false;              // CurveZMQ on: the auth counters below are rendered
  uint64_t auth_refused = 0;
  uint64_t auth_accepted = 0;
};

std::string RenderPrometheus(const CampaignConfig& config, const CoordinatorCore& core, const BandwidthLedger& ledger,
                             const ServiceCounters& counters);

}  // namespace lowband
