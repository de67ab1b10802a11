// Resuming a campaign after a coordinator restart: the checks a checkpoint
// must pass before the core adopts it, and the replay of one logged round
// (outer step on its aggregated gradient, the downlink encoding, then
// apply), the same arithmetic as the round's close so the digests come out
// bit-identical. The core
// (CoordinatorCore::Restore / Replay) owns the state they change. Pure
// functions; no I/O. Thread: the coordinator loop, before any message.
// Errors: InvalidArgument for a checkpoint that does not fit the campaign,
// Corruption for a logged gradient that cannot be replayed.
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"
#include "codec/codec.h"
#include "codec/params.h"
#include "coordinator/downlink.h"
#include "coordinator/outer_optimizer.h"

namespace lowband {

// A checkpoint of round `round` (`params`, `momentum`, `downlink_error`;
// empty momentum is allowed at round 0 or for a stateless optimizer, an
// empty downlink error at round 0 or for an uncompressed downlink) fits a
// campaign whose parameters are `campaign`, whose optimizer is `outer` and
// whose downlink is `downlink`.
Status CheckRestore(const ParamSet& campaign, const OuterOptimizer& outer, const DownlinkEncoder& downlink,
                    uint32_t round, const ParamSet& params, const std::vector<float>& momentum,
                    const std::vector<float>& downlink_error);

// Round `round`'s logged gradient (dense_fp32 or sparse_fp32 of the whole
// layout) through `outer` and `downlink` (whose error feedback steps as it
// did when the round closed) and applied to `params`. On a parse error
// nothing changed; on a later error the optimizer (and the downlink) may
// have stepped.
Status ReplayGradient(uint32_t round, const Encoded& gradient, const LayoutPlan& plan, OuterOptimizer* outer,
                      DownlinkEncoder* downlink, ParamSet* params);

}  // namespace lowband
