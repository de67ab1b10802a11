// Hugging Face model directories (hf/hf_model.h): config.json both ways,
// tensor names and orientation in model.safetensors, a round trip of the
// parameters, and directories that do not describe a lowband model refused.
#include "hf/hf_model.h"

#include <filesystem>
#include <cmath>
#include <numeric>
#include <tuple>

#include <catch2/catch.hpp>

#include "base/file.h"
#include "tests/fakes/temp_dir.h"

namespace lowband {
namespace {

using Catch::Matchers::Contains;

// One-layer layouts in lowband's order (ml/model.cc's ModelLayout is the
// reference; the torch tests check that one against the built modules).
ParamLayout Gpt2Layout(int64_t v, int64_t t, int64_t d) {
  ParamLayout l;
  for (auto [name, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
           {"tok_emb.weight", {v, d}},          {"pos_emb.weight", {t, d}},
           {"blocks.0.ln_1.weight", {d}},       {"blocks.0.ln_1.bias", {d}},
           {"blocks.0.attn.qkv.weight", {3 * d, d}}, {"blocks.0.attn.qkv.bias", {3 * d}},
           {"blocks.0.attn.proj.weight", {d, d}}, {"blocks.0.attn.proj.bias", {d}},
           {"blocks.0.ln_2.weight", {d}},       {"blocks.0.ln_2.bias", {d}},
           {"blocks.0.mlp_fc.weight", {4 * d, d}}, {"blocks.0.mlp_fc.bias", {4 * d}},
           {"blocks.0.mlp_proj.weight", {d, 4 * d}}, {"blocks.0.mlp_proj.bias", {d}},
           {"ln_f.weight", {d}},                {"ln_f.bias", {d}}}) {
    l.tensors.push_back({name, shape});
  }
  return l;
}

ParamSet Counting(ParamLayout layout) {
  ParamSet p;
  p.values.resize(static_cast<size_t>(layout.numel()));
  std::iota(p.values.begin(), p.values.end(), 0.0f);
  p.layout = std::move(layout);
  return p;
}

ModelConfig Gpt2(int64_t v, int64_t t, int64_t d) {
  ModelConfig m;
  m.layers = 1;
  m.vocab = static_cast<int>(v);
  m.context = static_cast<int>(t);
  m.d_model = static_cast<int>(d);
  m.heads = 2;
  return m;
}

}  // namespace

TEST_CASE("hf: config.json round-trips for gpt2 and llama", "[unit]") {
  ModelConfig g = Gpt2(256, 64, 32);
  auto back = ParseHfConfig(HfConfigJson(g), "config.json");
  REQUIRE(back.ok());
  CHECK(back->arch == ModelArch::kGpt2);
  CHECK(std::tie(back->layers, back->d_model, back->heads, back->context, back->vocab) ==
        std::tie(g.layers, g.d_model, g.heads, g.context, g.vocab));
  CHECK_THAT(HfConfigJson(g), Contains("\"GPT2LMHeadModel\""));

  ModelConfig l = g;
  l.arch = ModelArch::kLlama;
  l.heads = 4;
  l.kv_heads = 2;
  l.ffn_hidden = 96;
  l.rope_theta = 500000;
  l.norm_eps = 1e-6;
  back = ParseHfConfig(HfConfigJson(l), "config.json");
  REQUIRE(back.ok());
  CHECK(back->arch == ModelArch::kLlama);
  CHECK(std::tie(back->layers, back->d_model, back->heads, back->kv_heads, back->ffn_hidden, back->context,
                 back->vocab, back->rope_theta, back->norm_eps) ==
        std::tie(l.layers, l.d_model, l.heads, l.kv_heads, l.ffn_hidden, l.context, l.vocab, l.rope_theta,
                 l.norm_eps));
  CHECK_THAT(HfConfigJson(l), Contains("\"LlamaForCausalLM\""));
}

TEST_CASE("hf: config.json that lowband cannot model is refused by key", "[unit]") {
  auto refused = [](const std::string& json) {
    auto r = ParseHfConfig(json, "c.json");
    REQUIRE_FALSE(r.ok());
    return r.status().message();
  };
  const std::string gpt2 = R"("model_type":"gpt2","vocab_size":256,"n_positions":64,"n_embd":32,"n_layer":1,"n_head":2)";
  CHECK(ParseHfConfig("{" + gpt2 + R"(,"activation_function":"gelu"})", "c.json").ok());
  CHECK_THAT(refused("{" + gpt2 + "}"), Contains("c.json: activation_function: 'gelu_new'"));
  CHECK_THAT(refused("{" + gpt2 + R"(,"activation_function":"gelu","n_inner":100})"), Contains("n_inner: 100"));
  CHECK_THAT(refused(R"({"model_type":"bert"})"), Contains("model_type: 'bert' (lowband reads gpt2 and llama)"));
  CHECK_THAT(refused(R"({"model_type":"gpt2","vocab_size":256})"), Contains("n_positions: missing"));
  CHECK_THAT(refused(R"({"model_type":"gpt2","vocab_size":-3})"), Contains("vocab_size: not an integer"));
  const std::string llama =
      R"("model_type":"llama","vocab_size":256,"hidden_size":32,"intermediate_size":64,"num_hidden_layers":1,)"
      R"("num_attention_heads":4,"max_position_embeddings":64)";
  CHECK(ParseHfConfig("{" + llama + "}", "c.json").ok());
  CHECK_THAT(refused("{" + llama + R"(,"attention_bias":true})"), Contains("attention_bias: true"));
  CHECK_THAT(refused("{" + llama + R"(,"rope_scaling":{"type":"linear","factor":2}})"), Contains("rope_scaling"));
  CHECK_THAT(refused("{" + llama + R"(,"tie_word_embeddings":true})"), Contains("tie_word_embeddings"));
  CHECK_THAT(refused("{" + llama + R"(,"hidden_act":"gelu"})"), Contains("hidden_act: 'gelu'"));
  CHECK_THAT(refused("[1]"), Contains("not a JSON object"));
  CHECK_THAT(refused("{"), Contains("not JSON"));
}

TEST_CASE("hf: a GPT-2 export uses transformers' names and Conv1D orientation, and reads back", "[unit]") {
  testing::TempDir dir;
  const ModelConfig m = Gpt2(8, 4, 4);
  const ParamSet p = Counting(Gpt2Layout(8, 4, 4));
  REQUIRE(ExportHf(m, p, dir.Path("out"), StDtype::kF32).ok());
  auto file = Safetensors::Read(dir.Path("out/model.safetensors"));
  REQUIRE(file.ok());
  CHECK(file->Find("lm_head.weight") == nullptr);  // tied
  const StTensor* c_attn = file->Find("transformer.h.0.attn.c_attn.weight");
  REQUIRE(c_attn);
  CHECK(c_attn->shape == std::vector<int64_t>{4, 12});  // [in, out]
  // lowband's qkv [12, 4] row r, column c = element (c, r) of c_attn.
  const std::vector<float> hf = file->Values(*c_attn);
  size_t qkv_at = 0;
  for (const auto& t : p.layout.tensors) {
    if (t.name == "blocks.0.attn.qkv.weight") break;
    qkv_at += static_cast<size_t>(t.numel());
  }
  CHECK(hf[static_cast<size_t>(1 * 12 + 5)] == p.values[qkv_at + 5 * 4 + 1]);
  CHECK(file->Find("transformer.wpe.weight") != nullptr);
  CHECK(file->Find("transformer.ln_f.bias") != nullptr);

  auto cfg = ReadHfConfig(dir.Path("out"));
  REQUIRE(cfg.ok());
  auto back = ReadHfParams(dir.Path("out"), *cfg, p.layout);
  REQUIRE(back.ok());
  CHECK(back->values == p.values);
  CHECK(back->layout == p.layout);

  // BF16 files read back within bf16's precision.
  REQUIRE(ExportHf(m, p, dir.Path("bf16"), StDtype::kBf16).ok());
  auto half = ReadHfParams(dir.Path("bf16"), m, p.layout);
  REQUIRE(half.ok());
  for (size_t i = 0; i < p.values.size(); ++i) CHECK(std::abs(half->values[i] - p.values[i]) <= p.values[i] / 128);
}

TEST_CASE("hf: directories that do not hold the model are refused by file and tensor", "[unit]") {
  testing::TempDir dir;
  const ModelConfig m = Gpt2(8, 4, 4);
  const ParamSet p = Counting(Gpt2Layout(8, 4, 4));
  REQUIRE(ExportHf(m, p, dir.Path("out"), StDtype::kF32).ok());
  // A model of another width.
  auto wrong = ReadHfParams(dir.Path("out"), m, Gpt2Layout(8, 4, 8));
  REQUIRE_FALSE(wrong.ok());
  CHECK_THAT(wrong.status().message(), Contains("model.safetensors: tensor 'transformer.wte.weight' has shape [8, 4], "
                                                "the model needs [8, 8]"));
  // A tensor too many, one missing.
  ParamLayout fewer = p.layout;
  fewer.tensors.pop_back();
  auto extra = ReadHfParams(dir.Path("out"), m, fewer);
  REQUIRE_FALSE(extra.ok());
  CHECK_THAT(extra.status().message(), Contains("tensor 'transformer.ln_f.bias' is not part of the model"));
  ParamLayout more = p.layout;
  more.tensors.push_back({"blocks.1.ln_1.weight", {4}});
  auto missing = ReadHfParams(dir.Path("out"), m, more);
  REQUIRE_FALSE(missing.ok());
  CHECK_THAT(missing.status().message(), Contains("tensor 'transformer.h.1.ln_1.weight' is missing"));
  // A tensor lowband has no name for.
  ParamSet odd = p;
  odd.layout.tensors.back().name = "mystery.weight";
  CHECK_THAT(ExportHf(m, odd, dir.Path("odd"), StDtype::kF32).message(), Contains("'mystery.weight' has no Hugging Face name"));
  // No directory at all.
  CHECK(ReadHfConfig(dir.Path("none")).status().code() == StatusCode::kNotFound);
}

}  // namespace lowband
