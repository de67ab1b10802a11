// `lowband generate` and `lowband eval`: use a trained model.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/model_source.h"
#include "data/corpus.h"
#include "ml/model.h"

namespace lowband::cli {
namespace {

constexpr int kByteVocab = 256;

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The model on `device`, in eval mode; codes as the commands return them.
struct Ready {
  int code = 0;
  ModelSource source;
  Lm model{nullptr};
  torch::Device device{torch::kCPU};
};

Ready Prepare(const std::string& path, const std::string& device, const char* command) {
  Ready r;
  auto source = LoadModelSource(path);
  if (!source.ok()) {
    std::fprintf(stderr, "lowband %s: %s\n", command, source.status().ToString().c_str());
    r.code = source.status().code() == StatusCode::kNotFound ? 66 : 65;
    return r;
  }
  if (source->model.vocab != kByteVocab) {
    std::fprintf(stderr, "lowband %s: the model's vocabulary has %d tokens; lowband reads bytes (256) for now\n",
                 command, source->model.vocab);
    r.code = 65;
    return r;
  }
  try {
    r.device = torch::Device(device);
    if (r.device.is_cuda() && !torch::cuda::is_available()) throw std::runtime_error("CUDA is not available here");
    r.model = MakeLm(source->model, 0);
    Status st = ImportParams(r.model, source->params);
    if (!st.ok()) throw std::runtime_error(st.ToString());
    r.model->to(r.device);
    r.model->eval();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lowband %s: %s\n", command, e.what());
    r.code = 69;  // EX_UNAVAILABLE
    return r;
  }
  r.source = std::move(source).value();
  return r;
}

}  // namespace

int Generate(const GenerateOptions& o) {
  Ready r = Prepare(o.model, o.device, "generate");
  if (r.code != 0) return r.code;
  const int context = r.source.model.context;
  std::string prompt = o.prompt.empty() ? std::string("\n") : o.prompt;
  // Room for at least one new token.
  if (static_cast<int>(prompt.size()) >= context) prompt = prompt.substr(prompt.size() - (context - 1));
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  for (auto& id : ids) id = static_cast<unsigned char>(static_cast<char>(id));
  torch::NoGradGuard no_grad;
  std::mt19937_64 rng(o.seed);
  KvCache cache;
  const auto start = std::chrono::steady_clock::now();
  auto input = torch::tensor(ids, torch::kInt64).view({1, -1}).to(r.device);
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  int produced = 0;
  for (; produced < o.max_tokens && cache.length + input.size(1) <= context; ++produced) {
    auto logits = r.model->Forward(input, &cache).index({0, -1}).to(torch::kCPU, torch::kFloat64);
    std::vector<double> l(logits.data_ptr<double>(), logits.data_ptr<double>() + logits.numel());
    int next = 0;
    if (o.temperature <= 0) {
      next = static_cast<int>(std::max_element(l.begin(), l.end()) - l.begin());
    } else {
      // Top-k of logits / temperature, sampled.
      std::vector<int> order(l.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
      const size_t k = o.top_k > 0 ? std::min<size_t>(o.top_k, l.size()) : l.size();
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) { return l[a] > l[b]; });
      std::vector<double> w(k);
      for (size_t i = 0; i < k; ++i) w[i] = std::exp((l[order[i]] - l[order[0]]) / o.temperature);
      std::discrete_distribution<size_t> pick(w.begin(), w.end());
      next = order[pick(rng)];
    }
    const char c = static_cast<char>(next);
    std::fwrite(&c, 1, 1, stdout);
    std::fflush(stdout);
    input = torch::full({1, 1}, next, torch::TensorOptions().dtype(torch::kInt64).device(r.device));
  }
  const double s = SecondsSince(start);
  std::printf("\n");
  std::fprintf(stderr, "lowband generate: %d tokens in %.2f s (%.1f tokens/s) on %s from %s%s\n", produced, s,
               produced / std::max(s, 1e-9), o.device.c_str(), r.source.what.c_str(),
               produced < o.max_tokens ? " (stopped at the model's context)" : "");
  return 0;
}

int Eval(const EvalOptions& o) {
  Ready r = Prepare(o.model, o.device, "eval");
  if (r.code != 0) return r.code;
  DataConfig data;
  data.dir = o.data_dir;
  data.files = o.files;
  data.validation_fraction = o.validation_fraction;
  auto corpus = Corpus::Load(data);
  if (!corpus.ok()) {
    std::fprintf(stderr, "lowband eval: %s\n", corpus.status().ToString().c_str());
    return 66;
  }
  Corpus text = std::move(corpus).value();
  if (o.all) {
    // Every record: the training split's text followed by the validation split's.
    std::string all;
    for (const std::string& f : text.files()) {
      std::string t;
      if (ReadTextFile(f, &t).ok()) {
        for (const std::string& rec : TextRecords(t)) all += rec;
      }
    }
    text = Corpus::FromText("", all);
  }
  const int context = r.source.model.context;
  torch::NoGradGuard no_grad;
  double loss_sum = 0;
  uint64_t tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0;; ++i) {
    TokenBatch b = text.ValidationBatch(i, o.batch, context);
    if (b.batch == 0) break;
    auto x = torch::tensor(b.inputs, torch::kInt64).view({b.batch, context}).to(r.device);
    auto y = torch::tensor(b.targets, torch::kInt64).view({b.batch, context}).to(r.device);
    auto logits = r.model->forward(x);
    auto loss = torch::nn::functional::cross_entropy(
        logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), y.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    loss_sum += loss.item<double>();
    tokens += static_cast<uint64_t>(b.batch) * context;
  }
  const double s = SecondsSince(start);
  if (tokens == 0) {
    std::fprintf(stderr, "lowband eval: %s holds less than one window of %d tokens to evaluate\n", o.data_dir.c_str(),
                 context + 1);
    return 66;
  }
  const double loss = loss_sum / static_cast<double>(tokens);
  // Byte tokens: bits per byte = bits per token.
  std::printf("lowband eval: %s on %llu tokens of %s (%s): loss %.4f nats/token, perplexity %.3f, %.4f bits per "
              "byte, %.0f tokens/s on %s\n",
              r.source.what.c_str(), static_cast<unsigned long long>(tokens), o.data_dir.c_str(),
              o.all ? "all records" : "validation split", loss, std::exp(loss), loss / std::log(2.0),
              static_cast<double>(tokens) / std::max(s, 1e-9), o.device.c_str());
  return 0;
}

}  // namespace lowband::cli
