// The campaign's settings as a Welcome carries them: the coordinator's one
// place that turns config/ structs into the protocol's own
// (protocol/messages.h). The worker turns them back (worker/welcome_config.h).
// Pure functions, any thread.
#pragma once

#include "config/config.h"
#include "protocol/messages.h"

namespace lowband {

ModelSpec ToSpec(const ModelConfig& model);
InnerOptimizerSpec ToSpec(const InnerOptimizerConfig& inner);
// What a site trains with; adaptive steps stay with the coordinator (each
// RoundStart names the site's steps).
TrainingSpec ToSpec(const TrainingConfig& training);
CodecSpec ToSpec(const CodecConfig& codec);
PipelineSpec ToSpec(const PipelineConfig& pipeline);
// FPLD's logit settings; the probe set is the campaign mode's to add.
FpldWelcome ToSpec(const FpldConfig& fpld);
FcragWelcome ToSpec(const FcragConfig& fcrag);

}  // namespace lowband
