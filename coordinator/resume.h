// Resuming a campaign after a coordinator restart: the checks a checkpoint
// must pass before the core adopts it, and the replay of one logged round
// (outer step on its aggregated gradient, then apply), the same arithmetic
// as the round's close so the digests come out bit-identical. The core
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
#include "coordinator/outer_optimizer.h"

namespace lowband {

// A checkpoint of round `round` (`params`, `momentum`; empty momentum is
// allowed at round 0 or for a stateless optimizer) fits a campaign whose
// parameters are `campaign` and whose optimizer is `outer`.
Status CheckRestore(const ParamSet& campaign, const OuterOptimizer& outer, uint32_t round, const ParamSet& params,
                    const std::vector<float>& momentum);

// Round `round`'s logged gradient (dense_fp32 or sparse_fp32 of the whole
// layout) through `outer` and applied to `params`. On a parse error nothing
// changed; on an apply error the optimizer has stepped.
Status ReplayGradient(uint32_t round, const Encoded& gradient, const LayoutPlan& plan, OuterOptimizer* outer,
                      ParamSet* params);

}  // namespace lowband
