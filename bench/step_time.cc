// Step time of one worker's inner training step (AdamW on the campaign's
// model) on a device, with a CPU baseline measured in the same run.
//
//   build/bin/step_time --campaign configs/quickstart.yaml --device cuda --steps 30
//
// Prints ms/step and tokens/s for the CPU and, if asked, the other device,
// plus their ratio. Data: the first site of the campaign.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>

#include "config/config.h"
#include "data/corpus.h"
#include "worker/trainer.h"

namespace {

struct Figure {
  double ms_per_step = 0;
  double tokens_per_s = 0;
  double loss = 0;
};

lowband::StatusOr<Figure> Measure(const lowband::CampaignConfig& c, const lowband::Corpus& corpus,
                                  const std::string& device, int threads, int steps) {
  auto trainer = lowband::Trainer::Create(c.model, c.training, device, threads, &corpus, 7);
  if (!trainer.ok()) return trainer.status();
  // Warm-up round (allocator, kernels, autotuning) is not timed.
  auto warm = (*trainer)->TrainRound(3);
  if (!warm.ok()) return warm.status();
  const auto t0 = std::chrono::steady_clock::now();
  auto r = (*trainer)->TrainRound(steps);  // ends with a device->host copy of the delta
  if (!r.ok()) return r.status();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Figure f;
  f.ms_per_step = 1000.0 * s / steps;
  f.tokens_per_s = static_cast<double>(r->tokens) / s;
  f.loss = r->mean_loss;
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"per-step training time, CPU baseline vs a device"};
  std::string campaign = "configs/quickstart.yaml", device = "cpu";
  int steps = 20, threads = 1;
  app.add_option("--campaign", campaign, "campaign file (model, batch, first site's data)");
  app.add_option("--device", device, "device to compare with the CPU: cpu, cuda, cuda:N");
  app.add_option("--steps", steps, "timed inner steps")->check(CLI::Range(1, 100000));
  app.add_option("--threads", threads, "CPU intra-op threads")->check(CLI::Range(1, 1024));
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
  auto corpus = lowband::Corpus::Load(config->sites[0].data);
  if (!corpus.ok()) {
    std::fprintf(stderr, "%s\n", corpus.status().ToString().c_str());
    return 1;
  }
  std::printf("model: %d layers, d_model %d, context %d, batch %d; %d timed steps\n", config->model.layers,
              config->model.d_model, config->model.context, config->training.batch_size, steps);
  auto cpu = Measure(*config, *corpus, "cpu", threads, steps);
  if (!cpu.ok()) {
    std::fprintf(stderr, "cpu: %s\n", cpu.status().ToString().c_str());
    return 1;
  }
  std::printf("%-8s %10.2f ms/step %12.0f tokens/s  (threads %d)\n", "cpu", cpu->ms_per_step, cpu->tokens_per_s,
              threads);
  if (device != "cpu") {
    auto dev = Measure(*config, *corpus, device, threads, steps);
    if (!dev.ok()) {
      std::fprintf(stderr, "%s: %s\n", device.c_str(), dev.status().ToString().c_str());
      return 1;
    }
    std::printf("%-8s %10.2f ms/step %12.0f tokens/s  speed-up vs cpu %.1fx\n", device.c_str(), dev->ms_per_step,
                dev->tokens_per_s, cpu->ms_per_step / dev->ms_per_step);
  }
  return 0;
}
