// `lowband export`: a campaign's parameters as a Hugging Face model directory.
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "cli/model_source.h"
#include "hf/hf_model.h"

namespace lowband::cli {

int Export(const ExportOptions& o) {
  auto source = LoadModelSource(o.source, o.campaign_file);
  if (!source.ok()) {
    std::fprintf(stderr, "lowband export: %s\n", source.status().ToString().c_str());
    return source.status().code() == StatusCode::kNotFound ? 66 : 65;
  }
  const StDtype dtype = o.dtype == "bf16" ? StDtype::kBf16 : StDtype::kF32;
  Status st = ExportHf(source->model, source->params, o.out_dir, dtype);
  if (!st.ok()) {
    std::fprintf(stderr, "lowband export: %s\n", st.ToString().c_str());
    return 73;  // EX_CANTCREAT
  }
  std::printf("lowband export: %s (%s, %zu parameters) -> %s/model.safetensors (%s) and config.json\n",
              source->what.c_str(), ModelArchName(source->model.arch), source->params.values.size(),
              o.out_dir.c_str(), StDtypeName(dtype));
  return 0;
}

}  // namespace lowband::cli
