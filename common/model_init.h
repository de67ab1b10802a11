// Torch-free entry points into the model library (implemented in model.cc).
#pragma once

#include "common/config.h"
#include "common/params.h"

namespace lowband {

// The initial global parameters of a campaign: the GPT for `config` built
// with `seed`, exported as a flat CPU ParamSet. Internal on a LibTorch error.
StatusOr<ParamSet> InitialParameters(const ModelConfig& config, uint64_t seed);

// Parameter count and layout without materialising values.
StatusOr<ParamLayout> ModelLayout(const ModelConfig& config);

}  // namespace lowband
