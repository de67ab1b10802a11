#include "data/probe_set.h"

#include <random>


namespace lowband {

StatusOr<std::vector<uint8_t>> BuildProbeSet(const Corpus& corpus, int contexts, int context, uint64_t seed) {
  if (contexts < 1 || context < 1) return InvalidArgument("BuildProbeSet: contexts and context must be >= 1");
  if (corpus.train_tokens() <= static_cast<size_t>(context)) {
    return FailedPrecondition("the probe text has " + std::to_string(corpus.train_tokens()) +
                              " tokens, fewer than one context of " + std::to_string(context) + " + 1");
  }
  std::mt19937_64 rng(seed ^ 0x5f9b1e0d3c2a4b67ull);
  TokenBatch b = corpus.SampleTrain(contexts, context, &rng);
  std::vector<uint8_t> out;
  out.reserve(b.inputs.size());
  for (int64_t t : b.inputs) out.push_back(static_cast<uint8_t>(t));
  return out;
}

}  // namespace lowband
