// ResBM quality and boundary bytes, in one process: the quickstart-sized
// model split into pipeline stages, trained with AdamW on the same batches
// for each bottleneck ratio (1 = uncompressed baseline), then evaluated on the
// same validation windows. Prints, per ratio: the boundary width b, the bytes
// one micro-batch's boundary tensor takes on the wire each way (a real
// Activation message: header frame + bulk, at the chosen wire dtype), the
// ratio of those bytes to ratio 1's, and the validation loss against ratio
// 1's. Boundaries are exchanged as they would cross a link (detached,
// converted to the wire dtype and back), GPipe fill-drain over micro-batches,
// each stage a StageTrainer (worker/stage_trainer.h) as on a real site.
//
//   build/bin/resbm_quality [--steps 300] [--ratios 1,16,128] [--stages 2] [--wire bf16] [--d-model 128]
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>

#include "data/corpus.h"
#include "ml/model.h"
#include "protocol/wire.h"
#include "worker/stage_trainer.h"

namespace {

using lowband::WireDtype;

struct Result {
  int ratio = 1;
  int64_t width = 0;
  uint64_t bytes = 0;  // one micro-batch boundary message, one direction (header + bulk)
  uint64_t bulk = 0;   // its tensor bytes alone
  double val_loss = 0;
  double seconds = 0;
};

uint64_t MessageBytes(int batch, int tokens, int64_t width, WireDtype dtype) {
  lowband::Activation a;
  a.batch = static_cast<uint32_t>(batch);
  a.tokens = static_cast<uint32_t>(tokens);
  a.width = static_cast<uint32_t>(width);
  a.dtype = dtype;
  lowband::Message m;
  m.campaign_id = "bench";
  m.sender_id = "site-a";
  m.bulk.assign(static_cast<size_t>(batch) * tokens * width * (dtype == WireDtype::kFp32 ? 4 : 2), 0);
  a.blob.num_elements = static_cast<uint64_t>(batch) * tokens * width;
  a.blob.byte_length = m.bulk.size();
  a.blob.checksum = lowband::Fnv1a64(m.bulk.data(), m.bulk.size());
  m.body = a;
  uint64_t bytes = 0;
  for (const auto& f : lowband::EncodeMessage(m)) bytes += f.size();
  return bytes;
}

// Fails with a message on stderr and exit 1: a bench has no one to return to.
template <typename T>
T OrDie(lowband::StatusOr<T> v) {
  if (!v.ok()) {
    std::fprintf(stderr, "resbm_quality: %s\n", v.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(v).value();
}
void OrDie(const lowband::Status& st) {
  if (!st.ok()) {
    std::fprintf(stderr, "resbm_quality: %s\n", st.ToString().c_str());
    std::exit(1);
  }
}

Result Train(const lowband::ModelConfig& model, int stages_n, int ratio, int steps, int batch, int micro,
             WireDtype wire, const lowband::Corpus& corpus, int eval_batches) {
  // The quickstart's inner optimizer: AdamW 3e-3, betas (0.9, 0.95), weight
  // decay 0.1, 20 warm-up steps, clipped at 1.0 by the norm over all stages.
  lowband::InnerOptimizerConfig opt;
  opt.lr = 3e-3;
  opt.beta1 = 0.9;
  opt.beta2 = 0.95;
  opt.weight_decay = 0.1;
  opt.grad_clip = 1.0;
  opt.warmup_steps = 20;
  std::vector<std::unique_ptr<lowband::StageTrainer>> stages;
  int first = 0;
  for (int s = 0; s < stages_n; ++s) {
    const int blocks = model.layers / stages_n + (s < model.layers % stages_n ? 1 : 0);
    stages.push_back(OrDie(lowband::StageTrainer::Create(model, {s, stages_n, first, blocks, ratio}, opt, wire, micro,
                                                         torch::Device(torch::kCPU), 1234)));
    first += blocks;
  }
  std::mt19937_64 rng(42);  // the same batches for every ratio
  const int mb = batch / micro;
  auto to_tensor = [](const std::vector<int64_t>& v, int rows, int cols) {
    return torch::from_blob(const_cast<int64_t*>(v.data()), {rows, cols}, torch::kInt64).clone();
  };
  const auto start = std::chrono::steady_clock::now();
  for (int step = 0; step < steps; ++step) {
    lowband::TokenBatch b = corpus.SampleTrain(batch, model.context, &rng);
    auto x = to_tensor(b.inputs, b.batch, b.length), y = to_tensor(b.targets, b.batch, b.length);
    // GPipe fill-drain; each boundary crosses as the wire carries it (the
    // stage trainers hand out and take wire-dtype tensors).
    for (int m = 0; m < micro; ++m) {
      torch::Tensor h = x.narrow(0, m * mb, mb);
      const torch::Tensor t = y.narrow(0, m * mb, mb);
      for (auto& s : stages) h = OrDie(s->Forward(m, h, t));
    }
    for (int m = micro - 1; m >= 0; --m) {
      torch::Tensor g;  // the last stage's gradient source is its own loss
      for (size_t s = stages.size(); s-- > 0;) g = OrDie(stages[s]->Backward(m, g));
    }
    double squared = 0;
    for (auto& s : stages) squared += OrDie(s->GradSquaredNorm());
    for (auto& s : stages) OrDie(s->Step(std::sqrt(squared)));
  }
  Result r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double sum = 0;
  uint64_t tokens = 0;
  for (int i = 0; i < eval_batches; ++i) {
    lowband::TokenBatch b = corpus.ValidationBatch(i, batch, model.context);
    if (b.batch == 0) break;
    torch::Tensor h = to_tensor(b.inputs, b.batch, b.length);
    const torch::Tensor y = to_tensor(b.targets, b.batch, b.length);
    for (auto& s : stages) h = OrDie(s->Evaluate(h, y));
    const uint64_t n = static_cast<uint64_t>(b.batch) * b.length;
    sum += h.item<double>() * n;
    tokens += n;
  }
  r.ratio = ratio;
  r.width = model.d_model / ratio;
  r.val_loss = sum / static_cast<double>(tokens);
  r.bytes = MessageBytes(mb, model.context, r.width, wire);
  r.bulk = static_cast<uint64_t>(mb) * model.context * r.width * (wire == WireDtype::kFp32 ? 4 : 2);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ResBM boundary bytes and validation loss per bottleneck ratio (one process)"};
  int steps = 300, stages = 2, batch = 16, micro = 4, eval_batches = 16;
  std::string ratios_text = "1,16,128", wire_name = "bf16", data_dir = "/usr/share/games/fortunes";
  app.add_option("--steps", steps, "optimizer steps per ratio")->check(CLI::Range(1, 1000000));
  app.add_option("--ratios", ratios_text, "comma-separated ratios; the first is the baseline");
  app.add_option("--stages", stages, "pipeline stages")->check(CLI::Range(2, 4));
  app.add_option("--batch", batch, "sequences per step")->check(CLI::Range(1, 4096));
  app.add_option("--micro-batches", micro, "micro-batches per step (must divide --batch)")->check(CLI::Range(1, 4096));
  app.add_option("--wire", wire_name, "boundary dtype: fp32, bf16, fp16")->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  app.add_option("--data", data_dir, "directory of text files");
  int d_model = 128, layers = 4;
  app.add_option("--d-model", d_model, "model width (the quickstart's 128 by default)")->check(CLI::Range(8, 4096));
  app.add_option("--layers", layers, "transformer blocks")->check(CLI::Range(2, 64));
  CLI11_PARSE(app, argc, argv);
  if (batch % micro != 0) {
    std::fprintf(stderr, "resbm_quality: --micro-batches %d does not divide --batch %d\n", micro, batch);
    return 64;
  }
  const WireDtype wire = wire_name == "fp32" ? WireDtype::kFp32 : wire_name == "fp16" ? WireDtype::kFp16 : WireDtype::kBf16;
  torch::set_num_threads(1);
  lowband::ModelConfig model;  // the quickstart model: 4 layers, d_model 128, context 64, bytes
  model.d_model = d_model;
  model.layers = layers;
  if (d_model % model.heads != 0 || layers < stages) {
    std::fprintf(stderr, "resbm_quality: --d-model must be a multiple of %d heads and --layers >= --stages\n",
                 model.heads);
    return 64;
  }
  lowband::DataConfig data;
  data.dir = data_dir;
  auto corpus = lowband::Corpus::Load(data);
  if (!corpus.ok()) {
    std::fprintf(stderr, "resbm_quality: %s\n", corpus.status().ToString().c_str());
    return 1;
  }
  std::vector<int> ratios;
  std::stringstream ss(ratios_text);
  for (std::string item; std::getline(ss, item, ',');) {
    const int r = std::atoi(item.c_str());
    if (r < 1 || model.d_model % r != 0) {
      std::fprintf(stderr, "resbm_quality: ratio '%s' must be a divisor of d_model %d\n", item.c_str(), model.d_model);
      return 64;
    }
    ratios.push_back(r);
  }
  std::printf("ResBM, %d stages, d_model %d, %d steps x %d sequences x %d tokens (%d micro-batches), wire %s\n",
              stages, model.d_model, steps, batch, model.context, micro, wire_name.c_str());
  std::printf("%6s %6s %12s %9s %14s %9s %9s %9s %8s\n", "ratio", "b", "tensor B", "vs base", "message B",
              "vs base", "val loss", "vs base", "train s");
  std::vector<Result> results;
  for (int r : ratios) {
    results.push_back(Train(model, stages, r, steps, batch, micro, wire, *corpus, eval_batches));
    const Result& x = results.back();
    const Result& base = results.front();
    std::printf("%6d %6lld %12llu %8.1fx %14llu %8.1fx %9.4f %+8.2f%% %8.1f\n", x.ratio,
                static_cast<long long>(x.width), static_cast<unsigned long long>(x.bulk),
                static_cast<double>(base.bulk) / x.bulk, static_cast<unsigned long long>(x.bytes),
                static_cast<double>(base.bytes) / x.bytes, x.val_loss,
                100.0 * (x.val_loss - base.val_loss) / base.val_loss, x.seconds);
    std::fflush(stdout);
  }
  return 0;
}
