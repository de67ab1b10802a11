// lowband: the operator CLI. `run` starts a whole campaign on this machine;
// the other subcommands talk to a running coordinator's control endpoint.
#include <CLI/CLI.hpp>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"lowband: train language models across sites joined by thin links"};
  app.require_subcommand(1);

  lowband::cli::RunOptions run;
  auto* run_cmd = app.add_subcommand("run", "run a whole campaign (coordinator + local sites) on this machine");
  run_cmd->add_option("campaign", run.campaign_file, "campaign YAML file")->required();
  run_cmd
      ->add_option("--set", run.sets,
                   "override one campaign key, KEY=VALUE, repeatable (later wins). KEY is a dotted path "
                   "(codec.name, training.inner_steps, sites[0].site.threads); VALUE is YAML "
                   "('codec={name: sparseloco, topk: 32}'). The merged campaign is written to "
                   "RUN_DIR/campaign.yaml and every process of the run reads that file")
      ->allow_extra_args(false);
  run_cmd->add_option("--metrics-out", run.metrics_out, "JSONL file of round records (default RUN_DIR/metrics.jsonl)");
  run_cmd->add_option("--run-dir", run.run_dir, "directory for logs, metrics and checkpoints");
  run_cmd->add_flag("--verbose,-v", run.verbose, "show daemon logs on the terminal");

  lowband::cli::ControlOptions ctl;
  std::vector<std::pair<std::string, CLI::App*>> control_cmds;
  for (const auto& [name, help] : std::vector<std::pair<std::string, std::string>>{
           {"status", "show a running campaign's state"}, {"workers", "list the workers of a running campaign"}}) {
    auto* cmd = app.add_subcommand(name, help);
    cmd->add_option("--endpoint,-e", ctl.endpoint, "coordinator control endpoint, e.g. tcp://127.0.0.1:5556");
    cmd->add_option("--campaign,-c", ctl.campaign_file, "campaign file (its network.control endpoint is used)");
    cmd->add_flag("--json", ctl.json, "print the machine-readable answer");
    cmd->add_option("--timeout-ms", ctl.timeout_ms, "how long to wait for an answer")->check(CLI::Range(1, 600000));
    control_cmds.emplace_back(name, cmd);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 64;
  }
  if (run_cmd->parsed()) return lowband::cli::Run(run);
  for (const auto& [name, cmd] : control_cmds) {
    if (cmd->parsed()) return lowband::cli::Control(ctl, name, {});
  }
  return 64;
}
