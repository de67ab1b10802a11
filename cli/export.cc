// `lowband export`: a campaign's parameters as a Hugging Face model directory.
#include <cstdio>
#include <filesystem>
#include <string>

#include "cli/commands.h"
#include "config/config.h"
#include "coordinator/checkpoint.h"
#include "hf/hf_model.h"
#include "ml/model_init.h"

namespace lowband::cli {
namespace {

namespace fs = std::filesystem;

int Fail(int code, const std::string& what) {
  std::fprintf(stderr, "lowband export: %s\n", what.c_str());
  return code;
}

// The checkpoint a run directory's model is in: the final one, else the
// newest round checkpoint.
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

int Export(const ExportOptions& o) {
  const fs::path source(o.source);
  std::string checkpoint, campaign = o.campaign_file;
  if (fs::is_directory(source)) {
    checkpoint = NewestCheckpoint(source);
    if (checkpoint.empty()) return Fail(66, o.source + ": no checkpoint-final.lbck and no checkpoints/round-*.lbck");
    if (campaign.empty()) campaign = (source / "campaign.yaml").string();
  } else if (fs::is_regular_file(source)) {
    checkpoint = o.source;
    if (campaign.empty()) {
      // RUN_DIR/checkpoint-final.lbck or RUN_DIR/checkpoints/round-N.lbck.
      fs::path dir = source.parent_path();
      if (dir.filename() == "checkpoints") dir = dir.parent_path();
      campaign = (dir / "campaign.yaml").string();
    }
  } else {
    return Fail(66, o.source + ": no such run directory or checkpoint file");
  }
  auto config = LoadCampaignFile(campaign);
  if (!config.ok()) return Fail(78, "the campaign's model: " + config.status().ToString() + " (--campaign FILE names it)");
  auto ckpt = ReadCheckpoint(checkpoint);
  if (!ckpt.ok()) return Fail(66, ckpt.status().ToString());
  auto layout = ModelLayout(config->model);
  if (!layout.ok()) return Fail(78, layout.status().ToString());
  if (!(ckpt->params.layout == *layout)) {
    return Fail(65, checkpoint + " does not hold the parameters of " + campaign +
                        "'s model (pipeline and personalised campaigns cannot be exported yet)");
  }
  const StDtype dtype = o.dtype == "bf16" ? StDtype::kBf16 : StDtype::kF32;
  Status st = ExportHf(config->model, ckpt->params, o.out_dir, dtype);
  if (!st.ok()) return Fail(73, st.ToString());
  std::printf("lowband export: round %u of campaign %s (%s, %lld parameters) -> %s/model.safetensors (%s) and "
              "config.json\n",
              ckpt->round, ckpt->campaign.c_str(), ModelArchName(config->model.arch),
              static_cast<long long>(layout->numel()), o.out_dir.c_str(), StDtypeName(dtype));
  return 0;
}

}  // namespace lowband::cli
