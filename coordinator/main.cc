// lowband-coordinator: loads a campaign file and runs the campaign.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "config/config.h"
#include "data/corpus.h"
#include "data/probe_set.h"
#include "net/zmq/event_loop.h"
#include "base/log.h"
#include "ml/model_init.h"
#include "coordinator/distiller.h"
#include "coordinator/service.h"
#include "hf/hf_model.h"

namespace {

// The campaign's starting parameters: the seed's, or a Hugging Face
// directory's (model.init_from) when its config.json describes the model.
lowband::StatusOr<lowband::ParamSet> InitialModel(const lowband::CampaignConfig& c) {
  if (c.pipeline.stages > 1) return lowband::InitialPipelineParameters(c.model, c.pipeline, c.training.seed);
  if (c.model.init_from.empty()) return lowband::InitialParameters(c.model, c.training.seed);
  LOWBAND_ASSIGN_OR_RETURN(lowband::ModelConfig file, lowband::ReadHfConfig(c.model.init_from));
  LOWBAND_RETURN_IF_ERROR(lowband::CheckHfModel(c.model, file, c.model.init_from + "/config.json"));
  LOWBAND_ASSIGN_OR_RETURN(lowband::ParamLayout layout, lowband::ModelLayout(c.model));
  LOWBAND_ASSIGN_OR_RETURN(lowband::ParamSet params, lowband::ReadHfParams(c.model.init_from, c.model, layout));
  LOG_INFO("initial parameters from a Hugging Face directory", {"dir", c.model.init_from},
           {"parameters", static_cast<uint64_t>(params.values.size())}, {"digest", lowband::DigestHex(params.Digest())});
  return params;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread exists (LibTorch, ZeroMQ), so every thread inherits
  // the blocked stop signals and only the loop's signalfd sees them.
  auto signals = lowband::SignalWatcher::Create();
  if (!signals.ok()) {
    std::fprintf(stderr, "lowband-coordinator: %s\n", signals.status().ToString().c_str());
    return 1;
  }
  CLI::App app{"lowband coordinator: runs a training campaign for the sites that join it"};
  std::string campaign, metrics_out, run_dir, log_level = "info";
  bool progress = false;
  app.add_option("--campaign,-c", campaign, "campaign YAML file")->required();
  app.add_option("--metrics-out", metrics_out, "write one JSON object per round to FILE");
  app.add_option("--run-dir", run_dir, "directory for the final checkpoint (default: output.run_dir)");
  app.add_flag("--progress", progress, "print a progress line per round on stdout");
  app.add_option("--log-level", log_level, "debug, info, warn or error")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 64;  // EX_USAGE
  }
  lowband::log::SetLevel(lowband::log::ParseLevel(log_level));

  auto config = lowband::LoadCampaignFile(campaign);
  if (!config.ok()) {
    std::fprintf(stderr, "lowband-coordinator: invalid campaign:\n%s\n", config.status().message().c_str());
    return lowband::kExitConfig;
  }
  lowband::log::SetRole("coordinator", config->name);
  auto initial = InitialModel(*config);
  if (!initial.ok()) {
    LOG_ERROR("cannot build the initial model", {"reason", initial.status().ToString()});
    if (!config->model.init_from.empty()) {
      std::fprintf(stderr, "lowband-coordinator: invalid campaign: model.init_from: %s\n",
                   initial.status().message().c_str());
      return lowband::kExitConfig;
    }
    return 1;
  }
  // Personalisation: one copy of the personalised tensors per cluster.
  initial = lowband::CoordinatorCore::ClusterLayout(*config, *initial);
  if (!initial.ok()) {
    std::fprintf(stderr, "lowband-coordinator: invalid campaign: %s\n", initial.status().message().c_str());
    LOG_ERROR("invalid personalization", {"reason", initial.status().ToString()});
    return lowband::kExitConfig;
  }
  lowband::CoordinatorOptions options;
  // FPLD: the public probe text, its probe set and the student's distiller
  // live as long as the service.
  std::unique_ptr<lowband::Corpus> probe_text;
  std::unique_ptr<lowband::Distiller> distiller;
  if (config->fpld.enabled) {
    auto text = lowband::Corpus::Load(config->fpld.probes);
    auto probes = text.ok() ? lowband::BuildProbeSet(*text, config->fpld.contexts, config->model.context,
                                                     config->training.seed)
                            : lowband::StatusOr<std::vector<uint8_t>>(text.status());
    if (!probes.ok()) {
      std::fprintf(stderr, "lowband-coordinator: invalid campaign: fpld.probes: %s\n",
                   probes.status().ToString().c_str());
      return lowband::kExitConfig;
    }
    probe_text = std::make_unique<lowband::Corpus>(std::move(text).value());
    auto d = lowband::Distiller::Create(*config, *probes, probe_text.get());
    if (!d.ok()) {
      LOG_ERROR("cannot build the FPLD student", {"reason", d.status().ToString()});
      return 1;
    }
    distiller = std::move(d).value();
    options.fpld_probes = std::move(probes).value();
    options.distil = [d = distiller.get()](uint32_t round, const lowband::ParamSet& start,
                                           const std::vector<float>& teacher, const std::vector<float>* exact) {
      return d->Distil(round, start, teacher, exact);
    };
    LOG_INFO("FPLD student ready", {"probe_contexts", config->fpld.contexts}, {"positions", config->fpld.positions},
             {"bits", config->fpld.bits}, {"public_train_tokens", static_cast<uint64_t>(probe_text->train_tokens())},
             {"public_val_tokens", static_cast<uint64_t>(probe_text->val_tokens())});
  }
  options.metrics_out = metrics_out.empty() ? config->output.metrics_file : metrics_out;
  options.run_dir = run_dir.empty() ? config->output.run_dir : run_dir;
  options.progress = progress;
  lowband::CoordinatorService service(std::move(config).value(), std::move(initial).value(), options);
  return service.Run(**signals);
}
