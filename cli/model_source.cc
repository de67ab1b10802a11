#include "cli/model_source.h"

#include <filesystem>

#include "coordinator/checkpoint.h"
#include "hf/hf_model.h"
#include "ml/model_init.h"

namespace lowband::cli {
namespace {

namespace fs = std::filesystem;

// A run directory's model: the final checkpoint, else the newest round one.
std::string NewestCheckpoint(const fs::path& run_dir) {
  if (fs::exists(run_dir / "checkpoint-final.lbck")) return (run_dir / "checkpoint-final.lbck").string();
  std::string newest;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(run_dir / "checkpoints", ec)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() == ".lbck" && name.rfind("round-", 0) == 0 && e.path().string() > newest) {
      newest = e.path().string();
    }
  }
  return newest;
}

}  // namespace

StatusOr<ModelSource> LoadModelSource(const std::string& path, const std::string& campaign_file) {
  const fs::path source(path);
  ModelSource out;
  if (fs::is_directory(source) && fs::exists(source / "config.json") && fs::exists(source / "model.safetensors")) {
    LOWBAND_ASSIGN_OR_RETURN(out.model, ReadHfConfig(path));
    LOWBAND_ASSIGN_OR_RETURN(ParamLayout layout, ModelLayout(out.model));
    LOWBAND_ASSIGN_OR_RETURN(out.params, ReadHfParams(path, out.model, layout));
    out.what = "Hugging Face directory " + path;
    return out;
  }
  std::string campaign = campaign_file;
  if (fs::is_directory(source)) {
    out.checkpoint = NewestCheckpoint(source);
    if (out.checkpoint.empty()) {
      return NotFound(path + ": no config.json + model.safetensors, no checkpoint-final.lbck, no checkpoints/round-*.lbck");
    }
    if (campaign.empty()) campaign = (source / "campaign.yaml").string();
  } else if (fs::is_regular_file(source)) {
    out.checkpoint = path;
    if (campaign.empty()) {
      // RUN_DIR/checkpoint-final.lbck or RUN_DIR/checkpoints/round-N.lbck.
      fs::path dir = source.parent_path();
      if (dir.filename() == "checkpoints") dir = dir.parent_path();
      campaign = (dir / "campaign.yaml").string();
    }
  } else {
    return NotFound(path + ": no such run directory, checkpoint or Hugging Face directory");
  }
  auto config = LoadCampaignFile(campaign);
  if (!config.ok()) {
    return InvalidArgument("the campaign's model: " + config.status().message() + " (--campaign FILE names it)");
  }
  out.model = config->model;
  LOWBAND_ASSIGN_OR_RETURN(Checkpoint ckpt, ReadCheckpoint(out.checkpoint));
  LOWBAND_ASSIGN_OR_RETURN(ParamLayout layout, ModelLayout(out.model));
  if (!(ckpt.params.layout == layout)) {
    return InvalidArgument(out.checkpoint + " does not hold the parameters of " + campaign +
                           "'s model (pipeline and personalised campaigns are not read yet)");
  }
  out.params = std::move(ckpt.params);
  out.what = "round " + std::to_string(ckpt.round) + " of campaign " + ckpt.campaign;
  return out;
}

}  // namespace lowband::cli
