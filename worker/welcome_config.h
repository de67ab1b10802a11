// The Welcome's campaign settings (the protocol's own structs,
// protocol/messages.h) as the config structs the trainers, stages and
// codecs take: the worker's one place that turns wire values into config/
// ones (the coordinator's reverse is coordinator/welcome.h). Settings the
// wire does not carry keep their config defaults. Pure functions, any thread.
#pragma once

#include "config/config.h"
#include "protocol/messages.h"

namespace lowband {

ModelConfig ToConfig(const ModelSpec& model);
InnerOptimizerConfig ToConfig(const InnerOptimizerSpec& inner);
TrainingConfig ToConfig(const TrainingSpec& training);
CodecConfig ToConfig(const CodecSpec& codec);
PipelineConfig ToConfig(const PipelineSpec& pipeline);

// Hello.own_model: the site's own model (FPLD; layers 0: the campaign's).
ModelSpec OwnModelSpec(const SiteConfig& site);

}  // namespace lowband
