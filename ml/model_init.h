// Torch-free entry points into the model library (implemented in model.cc).
#pragma once

#include "config/config.h"
#include "codec/params.h"

namespace lowband {

// The initial global parameters of a campaign: the GPT for `config` built
// with `seed`, exported as a flat CPU ParamSet. Internal on a LibTorch error.
StatusOr<ParamSet> InitialParameters(const ModelConfig& config, uint64_t seed);

// A pipeline campaign's global parameters: every stage's module (model.h,
// GptStage, blocks split by StageBlocks) in stage order, each tensor named
// "stage<S>.<its name in the stage module>". The coordinator holds these;
// the worker of stage S holds the "stage<S>." slice under the local names.
StatusOr<ParamSet> InitialPipelineParameters(const ModelConfig& config, const PipelineConfig& pipeline, uint64_t seed);

// Parameter count and layout without materialising values.
StatusOr<ParamLayout> ModelLayout(const ModelConfig& config);

}  // namespace lowband
