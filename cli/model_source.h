// The model `lowband export`, `generate` and `eval` read: a Hugging Face
// directory (config.json + model.safetensors), a run directory (its
// campaign.yaml and checkpoint-final.lbck, else its newest round
// checkpoint) or a .lbck checkpoint (with the campaign.yaml of its run
// directory, or `campaign_file`).
#pragma once

#include <string>

#include "base/status.h"
#include "codec/params.h"
#include "config/config.h"

namespace lowband::cli {

struct ModelSource {
  ModelConfig model;
  ParamSet params;       // the layout of ModelLayout(model)
  std::string what;      // "round 36 of campaign quickstart", "Hugging Face directory DIR"
  std::string checkpoint;  // the .lbck read, if any
};

// NotFound when `path` is none of the three; InvalidArgument when what it
// holds does not fit together (a checkpoint of another model, ...).
StatusOr<ModelSource> LoadModelSource(const std::string& path, const std::string& campaign_file = "");

}  // namespace lowband::cli
