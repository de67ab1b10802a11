// PeerChannel: the messaging seam between a PipelineRunner
// (worker/pipeline_runner.h) and its neighbour stages. Torch-free, so the
// worker service can implement it (worker/peer_links.h) without LibTorch.
#pragma once

#include <chrono>
#include <utility>

#include "protocol/messages.h"
#include "base/status.h"

namespace lowband {

// The messaging seam between a PipelineRunner and its neighbour stages.
// Implemented by the worker service (posting to / receiving from its event
// loop); a fake in tests. Called from the training thread only.
class PeerChannel {
 public:
  virtual ~PeerChannel() = default;
  // Queues a message for stage `to_stage` of this worker's replica; the
  // header's stage is the sender's. Unavailable if that peer is gone.
  virtual Status Send(int to_stage, Activation header, Bytes bulk) = 0;
  // The next inbound Activation for this stage (from any sender), waiting
  // at most `timeout`. DeadlineExceeded when nothing came in time;
  // Unavailable if the step must be abandoned (e.g. a neighbour was lost).
  virtual StatusOr<std::pair<Activation, Bytes>> Receive(std::chrono::milliseconds timeout) = 0;
};

}  // namespace lowband
