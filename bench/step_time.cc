// Time of one worker's inner training step (AdamW on the campaign's model,
// or a model shape given on the command line) on a device, in each asked
// precision, with model FLOP utilisation.
//
//   build/bin/step_time --campaign configs/quickstart.yaml --device cuda --steps 30
//   build/bin/step_time --device cuda --no-cpu --precision fp32,tf32,bf16
//       --layers 12 --d-model 768 --heads 12 --context 256 --batch 16     (one line)
//
// The baseline measured in the same run is the CPU (fp32) unless --no-cpu;
// bench/torch_reference.py runs this with --no-cpu next to plain PyTorch
// loops of the same shape and prints the ratios. Each figure is also printed
// as one `RESULT key=value ...` line for scripts. Data: the first site of
// the campaign (its byte-level text).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <sstream>

#include "config/config.h"
#include "data/corpus.h"
#include "worker/trainer.h"

namespace {

struct Figure {
  double ms_per_step = 0;
  double tokens_per_s = 0;
  double loss = 0;
  std::string precision;
  bool fused = false;
};

// Model FLOPs per token of a training step (forward and backward): 6 per
// parameter (embeddings included: the output head is the tied embedding)
// plus the attention scores and their weighted sum, 12 x layers x d_model x
// context (PaLM, appendix B), counting the causal half as full, as is usual.
double FlopsPerToken(const lowband::ModelConfig& m, int64_t parameters) {
  return 6.0 * static_cast<double>(parameters) + 12.0 * m.layers * m.d_model * m.context;
}

lowband::StatusOr<Figure> Measure(const lowband::CampaignConfig& c, const lowband::Corpus& corpus,
                                  const std::string& device, lowband::Precision precision, int threads, int steps,
                                  int64_t* parameters) {
  lowband::TrainingConfig training = c.training;
  training.precision = precision;
  auto trainer = lowband::Trainer::Create(c.model, training, device, threads, &corpus, 7);
  if (!trainer.ok()) return trainer.status();
  *parameters = (*trainer)->layout().numel();
  // Warm-up round (allocator, kernels, autotuning) is not timed.
  auto warm = (*trainer)->TrainRound(3);
  if (!warm.ok()) return warm.status();
  auto r = (*trainer)->TrainRound(steps);
  if (!r.ok()) return r.status();
  Figure f;
  f.ms_per_step = r->step_time_ms;  // the inner steps alone, not the encoding after them
  f.tokens_per_s = static_cast<double>(r->tokens) / (r->step_time_ms * steps / 1000.0);
  f.loss = r->mean_loss;
  f.precision = lowband::PrecisionName((*trainer)->precision());
  f.fused = (*trainer)->fused_optimizer();
  return f;
}

bool ParsePrecision(const std::string& name, lowband::Precision* out) {
  for (auto p : {lowband::Precision::kAuto, lowband::Precision::kFp32, lowband::Precision::kTf32,
                 lowband::Precision::kBf16}) {
    if (name == lowband::PrecisionName(p)) {
      *out = p;
      return true;
    }
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"per-step training time and model FLOP utilisation on a device"};
  std::string campaign = "configs/quickstart.yaml", device = "cpu", precisions = "auto";
  int steps = 20, threads = 1;
  int layers = 0, d_model = 0, heads = 0, context = 0, batch = 0;
  double peak_tflops = 989.4;
  bool no_cpu = false;
  app.add_option("--campaign", campaign, "campaign file (model, batch, first site's data)");
  app.add_option("--device", device, "device to measure: cpu, cuda, cuda:N");
  app.add_option("--steps", steps, "timed inner steps")->check(CLI::Range(1, 100000));
  app.add_option("--threads", threads, "CPU intra-op threads")->check(CLI::Range(1, 1024));
  app.add_option("--precision", precisions, "comma-separated: auto, fp32, tf32, bf16");
  app.add_option("--layers", layers, "override model.layers")->check(CLI::Range(1, 1024));
  app.add_option("--d-model", d_model, "override model.d_model")->check(CLI::Range(1, 65536));
  app.add_option("--heads", heads, "override model.heads")->check(CLI::Range(1, 1024));
  app.add_option("--context", context, "override model.context")->check(CLI::Range(1, 1 << 20));
  app.add_option("--batch", batch, "override training.batch_size")->check(CLI::Range(1, 1 << 20));
  app.add_option("--peak-tflops", peak_tflops,
                 "the device's peak dense TFLOP/s that MFU is relative to (default: H100/H200 SXM bf16)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--no-cpu", no_cpu, "skip the CPU baseline (large models)");
  CLI11_PARSE(app, argc, argv);
  auto config = lowband::LoadCampaignFile(campaign);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().message().c_str());
    return lowband::kExitConfig;
  }
  if (config->sites.empty()) {
    std::fprintf(stderr, "%s lists no site to take data from\n", campaign.c_str());
    return lowband::kExitConfig;
  }
  lowband::ModelConfig& m = config->model;
  if (layers > 0) m.layers = layers;
  if (d_model > 0) m.d_model = d_model;
  if (heads > 0) m.heads = heads;
  if (context > 0) m.context = context;
  if (batch > 0) config->training.batch_size = batch;
  if (m.d_model % m.heads != 0) {
    std::fprintf(stderr, "--d-model %d is not a multiple of --heads %d\n", m.d_model, m.heads);
    return lowband::kExitConfig;
  }
  std::vector<lowband::Precision> asked;
  std::stringstream list(precisions);
  for (std::string name; std::getline(list, name, ',');) {
    lowband::Precision p;
    if (!ParsePrecision(name, &p)) {
      std::fprintf(stderr, "--precision: '%s' is not one of auto, fp32, tf32, bf16\n", name.c_str());
      return lowband::kExitConfig;
    }
    asked.push_back(p);
  }
  auto corpus = lowband::Corpus::Load(config->sites[0].data);
  if (!corpus.ok()) {
    std::fprintf(stderr, "%s\n", corpus.status().ToString().c_str());
    return 1;
  }
  std::printf("model: %d layers, d_model %d, heads %d, context %d, batch %d; %d timed steps\n", m.layers, m.d_model,
              m.heads, m.context, config->training.batch_size, steps);
  std::fflush(stdout);
  auto report = [&](const std::string& dev, const Figure& f, int64_t parameters, double baseline_ms) {
    const double tflops = FlopsPerToken(m, parameters) * f.tokens_per_s / 1e12;
    std::printf("%-8s %-5s %10.2f ms/step %12.0f tokens/s %8.1f TFLOP/s  MFU %5.1f%%  loss %.3f  fused_adamw %s",
                dev.c_str(), f.precision.c_str(), f.ms_per_step, f.tokens_per_s, tflops,
                100.0 * tflops / peak_tflops, f.loss, f.fused ? "yes" : "no");
    if (baseline_ms > 0) std::printf("  speed-up vs cpu %.1fx", baseline_ms / f.ms_per_step);
    std::printf("\nRESULT device=%s precision=%s parameters=%lld ms_per_step=%.4f tokens_per_s=%.1f tflops=%.2f "
                "mfu=%.4f\n",
                dev.c_str(), f.precision.c_str(), static_cast<long long>(parameters), f.ms_per_step, f.tokens_per_s,
                tflops, tflops / peak_tflops);
    std::fflush(stdout);
  };
  double cpu_ms = 0;
  int64_t parameters = 0;
  if (!no_cpu) {
    auto cpu = Measure(*config, *corpus, "cpu", lowband::Precision::kFp32, threads, steps, &parameters);
    if (!cpu.ok()) {
      std::fprintf(stderr, "cpu: %s\n", cpu.status().ToString().c_str());
      return 1;
    }
    report("cpu", *cpu, parameters, 0);
    cpu_ms = cpu->ms_per_step;
  }
  if (device != "cpu" || no_cpu) {
    for (lowband::Precision p : asked) {
      auto dev = Measure(*config, *corpus, device, p, threads, steps, &parameters);
      if (!dev.ok()) {
        std::fprintf(stderr, "%s: %s\n", device.c_str(), dev.status().ToString().c_str());
        return 1;
      }
      report(device, *dev, parameters, cpu_ms);
    }
  }
  return 0;
}
