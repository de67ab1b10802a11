// Interoperability with Hugging Face transformers, both ways, on files that
// tests/hf/transformers_check.py writes and reads (it runs where Python has
// transformers: the GPU machine; `LOWBAND_HF_CHECK_DIR=DIR` points here):
//   DIR/<arch>/hf/        a model transformers built and saved, and
//   DIR/<arch>/ref.safetensors  its tokens ("tokens", as floats) and logits;
// lowband imports the model, checks its logits against transformers', then
// exports it to DIR/<arch>/lowband/ with its own logits in
// DIR/<arch>/lowband_logits.safetensors for the script to check in
// transformers. Skipped without the variable.
#include <cstdlib>
#include <filesystem>
#include <string>

#include <catch2/catch.hpp>

#include "base/file.h"
#include "hf/hf_model.h"
#include "ml/model.h"
#include "ml/model_init.h"
#include "tests/fakes/skip.h"

namespace lowband {
namespace {

void CheckArch(const std::string& dir) {
  INFO(dir);
  auto config = ReadHfConfig(dir + "/hf");
  REQUIRE(config.ok());
  auto layout = ModelLayout(*config);
  REQUIRE(layout.ok());
  auto params = ReadHfParams(dir + "/hf", *config, *layout);
  REQUIRE(params.ok());
  Lm model = MakeLm(*config, 1);
  REQUIRE(ImportParams(model, *params).ok());

  auto ref = Safetensors::Read(dir + "/ref.safetensors");
  REQUIRE(ref.ok());
  const StTensor* tokens_t = ref->Find("tokens");
  const StTensor* logits_t = ref->Find("logits");
  REQUIRE(tokens_t);
  REQUIRE(logits_t);
  const std::vector<float> tok = ref->Values(*tokens_t);
  std::vector<int64_t> ids(tok.begin(), tok.end());
  auto tokens = torch::tensor(ids, torch::kInt64).view({tokens_t->shape[0], tokens_t->shape[1]});
  torch::NoGradGuard no_grad;
  model->eval();
  auto logits = model->forward(tokens).contiguous();
  std::vector<float> want = ref->Values(*logits_t);
  auto expected = torch::from_blob(want.data(), logits.sizes(), torch::kFloat32);
  const double diff = (logits - expected).abs().max().item<double>();
  const double scale = expected.abs().max().item<double>();
  INFO("max |lowband - transformers| = " << diff << " (logits up to " << scale << ")");
  CHECK(diff < 1e-4 * std::max(1.0, scale));

  // And back: lowband's export, with lowband's logits for the script.
  REQUIRE(ExportHf(*config, ExportParams(model), dir + "/lowband", StDtype::kF32).ok());
  const std::vector<float> out(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
  auto bytes = EncodeSafetensors({{"logits", logits.sizes().vec(), out.data()}}, {}, StDtype::kF32);
  REQUIRE(bytes.ok());
  REQUIRE(WriteFileAtomically(dir + "/lowband_logits.safetensors", *bytes).ok());
}

}  // namespace

TEST_CASE("hf interop: transformers' GPT-2 and Llama give lowband's logits, both ways", "[unit][hf_interop]") {
  const char* dir = std::getenv("LOWBAND_HF_CHECK_DIR");
  if (!dir) LOWBAND_SKIP("LOWBAND_HF_CHECK_DIR unset (tests/hf/transformers_check.py sets it)");
  for (const char* arch : {"gpt2", "llama"}) CheckArch(std::string(dir) + "/" + arch);
}

}  // namespace lowband
