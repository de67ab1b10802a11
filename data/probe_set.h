// FPLD (docs/fpld.md): the public probe set both ends of a probe-logit
// upload use (the dither seed is codec/dither.h DitherSeedFor).
// Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/corpus.h"

namespace lowband {

// `contexts` windows of `context` byte tokens drawn from the public corpus's
// training split with a generator seeded by `seed` (row-major).
// FailedPrecondition if the corpus is shorter than one window.
StatusOr<std::vector<uint8_t>> BuildProbeSet(const Corpus& corpus, int contexts, int context, uint64_t seed);

}  // namespace lowband
