// CoordinatorService: the coordinator daemon's edge. One event loop thread
// owns the worker ROUTER socket, the control ROUTER socket, the signal fd,
// the CoordinatorCore, the bandwidth ledger and the metrics file. Decodes
// and verifies every inbound message (protocol/wire.h) before the core sees
// it; encodes and sends what the core returns, holding each message until
// the round it follows is durable (the disk thread, coordinator/persistence.h);
// runs the timers, startup and shutdown. Its other concerns live beside it:
// coordinator/startup.h (opening state.db, resuming), coordinator/reporting.h
// (progress lines, metrics records, summary), coordinator/prometheus.h and
// coordinator/http_api.h (the dashboard and /metrics). Construct and Run on
// the main thread, which becomes the loop.
#pragma once

#include <cstdio>
#include <memory>
#include <string>

#include "config/config.h"
#include "coordinator/ledger.h"
#include "codec/params.h"
#include "coordinator/core.h"

namespace lowband {

class SignalWatcher;

struct CoordinatorOptions {
  std::string metrics_out;  // JSONL round records ("" = none)
  std::string run_dir;      // final checkpoint goes here
  bool progress = false;    // human progress lines on stdout
  // FPLD campaigns: the public probe set and the student's distillation
  // (coordinator/distiller.h), handed to the core (CoordinatorCore::SetFpld).
  std::vector<uint8_t> fpld_probes;
  CoordinatorCore::DistilFn distil;
};

class CoordinatorService {
 public:
  CoordinatorService(CampaignConfig config, ParamSet initial, CoordinatorOptions options);
  ~CoordinatorService();
  // Runs until the campaign ends or SIGINT/SIGTERM. Returns the exit code:
  // 0 finished (or stopped by signal), 1 campaign failed, 69 cannot bind.
  int Run(SignalWatcher& signals);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowband
