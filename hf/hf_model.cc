#include "hf/hf_model.h"

#include <filesystem>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/file.h"

namespace lowband {
namespace {

using Json = nlohmann::ordered_json;

constexpr uint64_t kMaxConfigBytes = 1 << 20;

struct HfName {
  std::string name;
  bool transpose = false;  // GPT-2's Conv1D layers keep [in, out]
};

// lowband's tensor name -> Hugging Face's; empty name: none (unknown).
HfName ToHf(const std::string& name, ModelArch arch) {
  const bool gpt2 = arch == ModelArch::kGpt2;
  if (name == "tok_emb.weight") return {gpt2 ? "transformer.wte.weight" : "model.embed_tokens.weight"};
  if (gpt2 && name == "pos_emb.weight") return {"transformer.wpe.weight"};
  if (gpt2 && name.rfind("ln_f.", 0) == 0) return {"transformer." + name};
  if (!gpt2 && name == "norm.weight") return {"model.norm.weight"};
  if (!gpt2 && name == "head.weight") return {"lm_head.weight"};
  const std::string prefix = "blocks.";
  if (name.rfind(prefix, 0) != 0) return {};
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos) return {};
  const std::string layer = name.substr(prefix.size(), dot - prefix.size());
  const std::string rest = name.substr(dot + 1);
  static const std::map<std::string, HfName> kGpt2 = {
      {"ln_1.weight", {"ln_1.weight"}},
      {"ln_1.bias", {"ln_1.bias"}},
      {"attn.qkv.weight", {"attn.c_attn.weight", true}},
      {"attn.qkv.bias", {"attn.c_attn.bias"}},
      {"attn.proj.weight", {"attn.c_proj.weight", true}},
      {"attn.proj.bias", {"attn.c_proj.bias"}},
      {"ln_2.weight", {"ln_2.weight"}},
      {"ln_2.bias", {"ln_2.bias"}},
      {"mlp_fc.weight", {"mlp.c_fc.weight", true}},
      {"mlp_fc.bias", {"mlp.c_fc.bias"}},
      {"mlp_proj.weight", {"mlp.c_proj.weight", true}},
      {"mlp_proj.bias", {"mlp.c_proj.bias"}},
  };
  static const std::map<std::string, HfName> kLlama = {
      {"attn_norm.weight", {"input_layernorm.weight"}},
      {"attn.q.weight", {"self_attn.q_proj.weight"}},
      {"attn.k.weight", {"self_attn.k_proj.weight"}},
      {"attn.v.weight", {"self_attn.v_proj.weight"}},
      {"attn.o.weight", {"self_attn.o_proj.weight"}},
      {"mlp_norm.weight", {"post_attention_layernorm.weight"}},
      {"mlp.gate.weight", {"mlp.gate_proj.weight"}},
      {"mlp.up.weight", {"mlp.up_proj.weight"}},
      {"mlp.down.weight", {"mlp.down_proj.weight"}},
  };
  const auto& table = gpt2 ? kGpt2 : kLlama;
  auto it = table.find(rest);
  if (it == table.end()) return {};
  return {(gpt2 ? "transformer.h." : "model.layers.") + layer + "." + it->second.name, it->second.transpose};
}

// [rows, cols] -> [cols, rows].
std::vector<float> Transposed(const float* v, int64_t rows, int64_t cols) {
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[static_cast<size_t>(c * rows + r)] = v[r * cols + c];
  }
  return out;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Status Refuse(const std::string& source, const std::string& key, const std::string& why) {
  return InvalidArgument(source + ": " + key + ": " + why);
}

}  // namespace

std::string HfConfigJson(const ModelConfig& m) {
  Json j;
  if (m.arch == ModelArch::kLlama) {
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
    j["vocab_size"] = m.vocab;
    j["hidden_size"] = m.d_model;
    j["intermediate_size"] = FfnHidden(m);
    j["num_hidden_layers"] = m.layers;
    j["num_attention_heads"] = m.heads;
    j["num_key_value_heads"] = KvHeads(m);
    j["head_dim"] = m.d_model / m.heads;
    j["max_position_embeddings"] = m.context;
    j["rms_norm_eps"] = m.norm_eps;
    j["rope_theta"] = m.rope_theta;
    j["hidden_act"] = "silu";
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
    j["tie_word_embeddings"] = false;
  } else {
    j["architectures"] = {"GPT2LMHeadModel"};
    j["model_type"] = "gpt2";
    j["vocab_size"] = m.vocab;
    j["n_positions"] = m.context;
    j["n_embd"] = m.d_model;
    j["n_layer"] = m.layers;
    j["n_head"] = m.heads;
    j["n_inner"] = nullptr;  // 4 * n_embd
    j["activation_function"] = "gelu";  // exact (erf) GELU, as lowband's
    j["layer_norm_epsilon"] = 1e-5;
    j["resid_pdrop"] = 0.0;
    j["embd_pdrop"] = 0.0;
    j["attn_pdrop"] = 0.0;
    j["tie_word_embeddings"] = true;
  }
  j["torch_dtype"] = "float32";
  j["lowband"] = {{"arch", ModelArchName(m.arch)}};
  return j.dump(2) + "\n";
}

StatusOr<ModelConfig> ParseHfConfig(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument(source + ": not JSON: " + e.what());
  }
  if (!j.is_object()) return InvalidArgument(source + ": not a JSON object");
  auto str = [&](const char* key, std::string def) -> StatusOr<std::string> {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return def;
    if (!it->is_string()) return Refuse(source, key, "not a string");
    return it->get<std::string>();
  };
  auto integer = [&](const char* key, int def, bool required) -> StatusOr<int> {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
      if (required) return Refuse(source, key, "missing");
      return def;
    }
    if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > (1 << 30)) {
      return Refuse(source, key, "not an integer from 1 to 2^30");
    }
    return static_cast<int>(it->get<int64_t>());
  };
  auto number = [&](const char* key, double def) -> StatusOr<double> {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return def;
    if (!it->is_number()) return Refuse(source, key, "not a number");
    return it->get<double>();
  };
  auto flag = [&](const char* key, bool def) -> StatusOr<bool> {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return def;
    if (!it->is_boolean()) return Refuse(source, key, "not true or false");
    return it->get<bool>();
  };
  LOWBAND_ASSIGN_OR_RETURN(std::string type, str("model_type", ""));
  ModelConfig m;
  if (type == "gpt2") {
    m.arch = ModelArch::kGpt2;
    LOWBAND_ASSIGN_OR_RETURN(m.vocab, integer("vocab_size", 0, true));
    LOWBAND_ASSIGN_OR_RETURN(m.context, integer("n_positions", 0, true));
    LOWBAND_ASSIGN_OR_RETURN(m.d_model, integer("n_embd", 0, true));
    LOWBAND_ASSIGN_OR_RETURN(m.layers, integer("n_layer", 0, true));
    LOWBAND_ASSIGN_OR_RETURN(m.heads, integer("n_head", 0, true));
    LOWBAND_ASSIGN_OR_RETURN(int inner, integer("n_inner", 4 * m.d_model, false));
    if (inner != 4 * m.d_model) return Refuse(source, "n_inner", std::to_string(inner) + " (lowband's GPT-2 MLP is 4 x n_embd)");
    LOWBAND_ASSIGN_OR_RETURN(std::string act, str("activation_function", "gelu_new"));
    if (act != "gelu") {
      return Refuse(source, "activation_function", "'" + act + "' (lowband's GPT-2 uses exact GELU: \"gelu\")");
    }
    LOWBAND_ASSIGN_OR_RETURN(double eps, number("layer_norm_epsilon", 1e-5));
    if (eps != 1e-5) return Refuse(source, "layer_norm_epsilon", "lowband's LayerNorm uses 1e-5");
    LOWBAND_ASSIGN_OR_RETURN(bool tied, flag("tie_word_embeddings", true));
    if (!tied) return Refuse(source, "tie_word_embeddings", "false (lowband's GPT-2 ties the head)");
  } else if (type == "llama") {
    m.arch = ModelArch::kLlama;
    LOWBAND_ASSIGN_OR_RETURN(m.vocab, integer("vocab_size", 0, true));
    LOWBAND_ASSIGN_OR_RETURN(m.d_model, integer("hidden_size", 0, true));
    LOWBAND_ASSIGN_OR_RETURN(m.ffn_hidden, integer("intermediate_size", 0, true));
    LOWBAND_ASSIGN_OR_RETURN(m.layers, integer("num_hidden_layers", 0, true));
    LOWBAND_ASSIGN_OR_RETURN(m.heads, integer("num_attention_heads", 0, true));
    LOWBAND_ASSIGN_OR_RETURN(m.kv_heads, integer("num_key_value_heads", m.heads, false));
    LOWBAND_ASSIGN_OR_RETURN(m.context, integer("max_position_embeddings", 0, true));
    LOWBAND_ASSIGN_OR_RETURN(m.norm_eps, number("rms_norm_eps", 1e-6));
    LOWBAND_ASSIGN_OR_RETURN(m.rope_theta, number("rope_theta", 10000.0));
    if (m.heads > 0 && m.d_model % m.heads == 0) {
      LOWBAND_ASSIGN_OR_RETURN(int head_dim, integer("head_dim", m.d_model / m.heads, false));
      if (head_dim != m.d_model / m.heads) return Refuse(source, "head_dim", "must be hidden_size / num_attention_heads");
    }
    LOWBAND_ASSIGN_OR_RETURN(std::string act, str("hidden_act", "silu"));
    if (act != "silu") return Refuse(source, "hidden_act", "'" + act + "' (lowband's Llama uses SwiGLU: \"silu\")");
    LOWBAND_ASSIGN_OR_RETURN(bool attention_bias, flag("attention_bias", false));
    LOWBAND_ASSIGN_OR_RETURN(bool mlp_bias, flag("mlp_bias", false));
    if (attention_bias || mlp_bias) return Refuse(source, attention_bias ? "attention_bias" : "mlp_bias", "true (lowband's Llama has no biases)");
    LOWBAND_ASSIGN_OR_RETURN(bool tied, flag("tie_word_embeddings", false));
    if (tied) return Refuse(source, "tie_word_embeddings", "true (lowband's Llama has an untied head)");
    auto scaling = j.find("rope_scaling");
    if (scaling != j.end() && !scaling->is_null()) return Refuse(source, "rope_scaling", "set (not supported)");
  } else {
    return Refuse(source, "model_type", "'" + type + "' (lowband reads gpt2 and llama)");
  }
  return m;
}

Status CheckHfModel(const ModelConfig& m, const ModelConfig& f, const std::string& source) {
  std::string diffs;
  auto differ = [&](const char* key, const std::string& campaign, const std::string& file) {
    if (campaign != file) diffs += std::string("\n  model.") + key + ": campaign " + campaign + ", file " + file;
  };
  auto num = [](double v) {
    std::string s = std::to_string(v);
    return s;
  };
  differ("arch", ModelArchName(m.arch), ModelArchName(f.arch));
  differ("layers", std::to_string(m.layers), std::to_string(f.layers));
  differ("d_model", std::to_string(m.d_model), std::to_string(f.d_model));
  differ("heads", std::to_string(m.heads), std::to_string(f.heads));
  differ("vocab", std::to_string(m.vocab), std::to_string(f.vocab));
  if (m.arch == ModelArch::kLlama && f.arch == ModelArch::kLlama) {
    differ("kv_heads", std::to_string(KvHeads(m)), std::to_string(KvHeads(f)));
    differ("ffn_hidden", std::to_string(FfnHidden(m)), std::to_string(FfnHidden(f)));
    differ("rope_theta", num(m.rope_theta), num(f.rope_theta));
    differ("norm_eps", num(m.norm_eps), num(f.norm_eps));
    if (m.context > f.context) {
      diffs += "\n  model.context: campaign " + std::to_string(m.context) + ", more than the file's " +
               std::to_string(f.context) + " max_position_embeddings";
    }
  } else {
    differ("context", std::to_string(m.context), std::to_string(f.context));
  }
  if (diffs.empty()) return Status::Ok();
  return InvalidArgument(source + " describes another model than the campaign's:" + diffs);
}

Status ExportHf(const ModelConfig& model, const ParamSet& params, const std::string& dir, StDtype dtype) {
  if (static_cast<int64_t>(params.values.size()) != params.layout.numel()) {
    return InvalidArgument("export: " + std::to_string(params.values.size()) + " values for a layout of " +
                           std::to_string(params.layout.numel()));
  }
  std::vector<std::vector<float>> transposed;  // kept alive until encoded
  transposed.reserve(params.layout.tensors.size());
  std::vector<StWrite> writes;
  size_t offset = 0;
  for (const TensorSpec& t : params.layout.tensors) {
    const float* v = params.values.data() + offset;
    offset += static_cast<size_t>(t.numel());
    const HfName hf = ToHf(t.name, model.arch);
    if (hf.name.empty()) {
      return InvalidArgument("export: tensor '" + t.name + "' has no Hugging Face name for arch " +
                             ModelArchName(model.arch));
    }
    if (hf.transpose) {
      if (t.shape.size() != 2) return InvalidArgument("export: tensor '" + t.name + "' is not a matrix");
      transposed.push_back(Transposed(v, t.shape[0], t.shape[1]));
      writes.push_back({hf.name, {t.shape[1], t.shape[0]}, transposed.back().data()});
    } else {
      writes.push_back({hf.name, t.shape, v});
    }
  }
  LOWBAND_ASSIGN_OR_RETURN(std::string bytes, EncodeSafetensors(writes, {{"format", "pt"}}, dtype));
  LOWBAND_RETURN_IF_ERROR(WriteFileAtomically((std::filesystem::path(dir) / "model.safetensors").string(), bytes));
  return WriteFileAtomically((std::filesystem::path(dir) / "config.json").string(), HfConfigJson(model));
}

StatusOr<ModelConfig> ReadHfConfig(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "config.json").string();
  LOWBAND_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, kMaxConfigBytes));
  return ParseHfConfig(text, path);
}

StatusOr<ParamSet> ReadHfParams(const std::string& dir, const ModelConfig& model, const ParamLayout& layout) {
  const std::string path = (std::filesystem::path(dir) / "model.safetensors").string();
  LOWBAND_ASSIGN_OR_RETURN(Safetensors file, Safetensors::Read(path));
  ParamSet out;
  out.layout = layout;
  out.values.reserve(static_cast<size_t>(layout.numel()));
  std::set<std::string> used;
  for (const TensorSpec& t : layout.tensors) {
    const HfName hf = ToHf(t.name, model.arch);
    if (hf.name.empty()) return InvalidArgument(path + ": lowband tensor '" + t.name + "' has no Hugging Face name");
    const StTensor* st = file.Find(hf.name);
    if (!st) return InvalidArgument(path + ": tensor '" + hf.name + "' is missing");
    if (!IsFloat(st->dtype)) {
      return InvalidArgument(path + ": tensor '" + hf.name + "' is " + StDtypeName(st->dtype) + ", not a float type");
    }
    std::vector<int64_t> want = t.shape;
    if (hf.transpose) std::swap(want[0], want[1]);
    if (st->shape != want) {
      return InvalidArgument(path + ": tensor '" + hf.name + "' has shape " + ShapeText(st->shape) + ", the model needs " +
                             ShapeText(want));
    }
    std::vector<float> v = file.Values(*st);
    if (hf.transpose) v = Transposed(v.data(), want[0], want[1]);
    out.values.insert(out.values.end(), v.begin(), v.end());
    used.insert(hf.name);
  }
  for (const StTensor& st : file.tensors()) {
    if (used.count(st.name)) continue;
    // GPT-2 checkpoints may carry the tied head and attention-mask buffers.
    if (model.arch == ModelArch::kGpt2 && st.name == "lm_head.weight") {
      const StTensor* wte = file.Find("transformer.wte.weight");
      if (wte && wte->shape == st.shape && file.Values(*wte) == file.Values(st)) continue;
      return InvalidArgument(path + ": lm_head.weight differs from transformer.wte.weight (lowband's GPT-2 ties them)");
    }
    auto ends_with = [&](const std::string& suffix) {
      return st.name.size() > suffix.size() && st.name.compare(st.name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (model.arch == ModelArch::kGpt2 && (ends_with(".attn.bias") || ends_with(".attn.masked_bias"))) {
      continue;  // the causal-mask buffers older transformers versions saved
    }
    return InvalidArgument(path + ": tensor '" + st.name + "' is not part of the model");
  }
  return out;
}

}  // namespace lowband
