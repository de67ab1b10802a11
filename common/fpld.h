// FPLD (docs/fpld.md): what both ends of a probe-logit upload derive the
// same way: the public probe set and the dither seed of a site's round.
// Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/corpus.h"

namespace lowband {

// `contexts` windows of `context` byte tokens drawn from the public corpus's
// training split with a generator seeded by `seed` (row-major).
// FailedPrecondition if the corpus is shorter than one window.
StatusOr<std::vector<uint8_t>> BuildProbeSet(const Corpus& corpus, int contexts, int context, uint64_t seed);

// The subtractive dither of site `site`'s logits in round `round`: both the
// site and the coordinator derive it, so it never travels.
uint64_t FpldDitherSeed(uint64_t campaign_seed, uint32_t round, const std::string& site);

}  // namespace lowband
