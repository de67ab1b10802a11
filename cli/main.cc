// lowband: the operator CLI. `run` starts a whole campaign on this machine;
// the other subcommands talk to a running coordinator's control endpoint.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "base/json.h"
#include "base/process.h"
#include "coordinator/dashboard.h"

namespace {

// The commands that need the model (LibTorch), run by lowband-model beside
// this binary so that the control commands start in milliseconds.
const std::vector<std::pair<std::string, std::string>> kModelCommands = {
    {"check", "validate a campaign and its site files without starting anything, and print parameters, bytes per "
              "round and transfer times"},
    {"export", "write a campaign's model as a Hugging Face directory (model.safetensors + config.json)"},
    {"generate", "sample text from a model (run directory, checkpoint or Hugging Face directory)"},
    {"eval", "loss, perplexity, bits per byte and tokens/s of a model on text"},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) {
    for (const auto& [name, help] : kModelCommands) {
      if (name != argv[1]) continue;
      std::error_code ec;
      const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
      const std::string model = (ec ? std::filesystem::path(argv[0]) : self).parent_path() / "lowband-model";
      std::vector<char*> args(argv, argv + argc);
      args[0] = const_cast<char*>(model.c_str());
      args.push_back(nullptr);
      ::execv(model.c_str(), args.data());
      std::fprintf(stderr, "lowband %s: cannot run %s: %s\n", argv[1], model.c_str(), std::strerror(errno));
      return 69;  // EX_UNAVAILABLE
    }
  }
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
  run_cmd->add_option("--log-level", run.log_level, "daemon log level: debug, info (default), warn or error")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
  auto* resume_flag = run_cmd->add_flag(
      "--resume", run.resume, "continue the unfinished campaign whose state is in RUN_DIR (state.db, checkpoints)");
  run_cmd->add_flag("--fresh", run.fresh, "discard the campaign state in RUN_DIR and start over")
      ->excludes(resume_flag);

  // Commands for a running coordinator: the words sent as the control
  // request (command, args...) and the subcommand that parses them.
  lowband::cli::ControlOptions ctl;
  std::string evict_site;
  struct ControlCmd {
    std::vector<std::string> words;
    CLI::App* app;
  };
  std::vector<ControlCmd> control_cmds;
  auto add_control = [&](CLI::App* parent, const std::string& name, const std::string& help,
                         std::vector<std::string> words) {
    auto* cmd = parent->add_subcommand(name, help);
    cmd->add_option("--endpoint,-e", ctl.endpoint, "coordinator control endpoint, e.g. tcp://127.0.0.1:5556");
    cmd->add_option("--campaign,-c", ctl.campaign_file, "campaign file (its network.control endpoint is used)");
    cmd->add_flag("--json", ctl.json, "print the machine-readable answer");
    cmd->add_option("--timeout-ms", ctl.timeout_ms, "how long to wait for an answer")->check(CLI::Range(1, 600000));
    cmd->add_option("--key", ctl.key, "CurveZMQ: your operator secret key file (NAME.key)")
        ->envname("LOWBAND_KEY");
    cmd->add_option("--server-key", ctl.server_key, "CurveZMQ: the coordinator's public key file (NAME.pub)")
        ->envname("LOWBAND_SERVER_KEY");
    control_cmds.push_back({std::move(words), cmd});
    return cmd;
  };
  add_control(&app, "status", "show a running campaign's state", {"status"});
  add_control(&app, "workers", "list the workers of a running campaign", {"workers"});
  auto* round_cmd = app.add_subcommand("round", "control the rounds of a running campaign");
  round_cmd->require_subcommand(1);
  add_control(round_cmd, "pause", "start no new round after the current one is committed", {"round", "pause"});
  add_control(round_cmd, "resume", "start the round held by a pause", {"round", "resume"});
  add_control(round_cmd, "close", "close the open round now with the uploads received (at least one)",
              {"round", "close"});
  auto* campaign_cmd = app.add_subcommand("campaign", "control a running campaign");
  campaign_cmd->require_subcommand(1);
  add_control(campaign_cmd, "abort", "end the campaign now; the coordinator exits non-zero", {"campaign", "abort"});
  auto* worker_cmd = app.add_subcommand("worker", "control one site of a running campaign");
  worker_cmd->require_subcommand(1);
  add_control(worker_cmd, "evict",
              "drop SITE from the campaign (its uploads no longer count; it is told to stop; it may rejoin by "
              "saying hello again)",
              {"worker", "evict"})
      ->add_option("site", evict_site, "site name")
      ->required();
  std::string key_name, key_dir = ".";
  auto* keys_cmd = app.add_subcommand("keys", "CurveZMQ key pairs");
  keys_cmd->require_subcommand(1);
  auto* keys_gen = keys_cmd->add_subcommand("generate", "write NAME.key (secret, 0600) and NAME.pub into --dir");
  keys_gen->add_option("name", key_name, "key name: a site name, `coordinator`, or an operator")->required();
  keys_gen->add_option("--dir,-d", key_dir, "directory for the two files (default: .)");
  add_control(&app, "checkpoint", "write RUN_DIR/checkpoint-round-N.lbck of the last committed round now",
              {"checkpoint"});
  // FC-RAG (docs/fcrag.md): answered once the sites have.
  double cal_alpha = 0;
  int cal_score_bits = -1, cal_summary_bits = -1, cal_trials = 0;
  std::vector<std::string> predict_text;
  auto* calibrate_cmd = add_control(&app, "calibrate",
                                    "FC-RAG: the split-conformal threshold at --alpha from the sites' pooled "
                                    "calibration summaries, its coverage bound, and (with --trials) the coverage "
                                    "and set size measured on the sites' test queries",
                                    {"calibrate"});
  calibrate_cmd->add_option("--alpha", cal_alpha, "miscoverage in (0, 1) (default: fcrag.alpha)")
      ->check(CLI::Range(1e-9, 1 - 1e-9));
  calibrate_cmd->add_option("--score-bits", cal_score_bits, "B_i: bits per site score, 0 = fp32 (default: fcrag.score_bits)")
      ->check(CLI::Range(0, 16));
  calibrate_cmd->add_option("--summary-bits", cal_summary_bits, "B_cal: bits per calibration order statistic (default: fcrag.summary_bits)")
      ->check(CLI::Range(1, 15));
  calibrate_cmd->add_option("--trials", cal_trials, "random calibration/test splits to measure (default 1)")
      ->check(CLI::Range(1, 10000));
  auto* predict_cmd = add_control(&app, "predict", "FC-RAG: the prediction set of TEXT under the newest threshold",
                                  {"predict"});
  predict_cmd->add_option("text", predict_text, "the query text")->required();
  std::string report_dir, report_out;
  auto* report_cmd = app.add_subcommand("report", "write a static HTML report of a campaign from its RUN_DIR "
                                                  "(metrics.jsonl, summary.txt, fcrag.json): the dashboard's charts, "
                                                  "no server needed");
  report_cmd->add_option("run_dir", report_dir, "the campaign's run directory")->required();
  report_cmd->add_option("--out,-o", report_out, "output file (default RUN_DIR/report.html)");
  std::string report_png;
  report_cmd->add_option("--png", report_png, "also render the report to this PNG file (needs Debian's chromium)");
  // check, export, generate and eval run in lowband-model (they load
  // LibTorch; main() hands them over before parsing): listed here for --help.
  for (const auto& [name, help] : kModelCommands) app.add_subcommand(name, help)->allow_extras();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 64;
  }
  if (run_cmd->parsed()) return lowband::cli::Run(run);
  if (keys_gen->parsed()) return lowband::cli::KeysGenerate(key_name, key_dir);
  if (report_cmd->parsed()) {
    auto page = lowband::ReportPage(report_dir);
    if (!page.ok()) {
      std::fprintf(stderr, "lowband report: %s\n", page.status().ToString().c_str());
      return 66;  // EX_NOINPUT
    }
    const std::string out = report_out.empty() ? report_dir + "/report.html" : report_out;
    std::FILE* f = std::fopen(out.c_str(), "w");
    if (!f || std::fwrite(page->data(), 1, page->size(), f) != page->size() || std::fclose(f) != 0) {
      std::fprintf(stderr, "lowband report: cannot write %s\n", out.c_str());
      return 73;  // EX_CANTCREAT
    }
    std::printf("lowband report: wrote %s\n", out.c_str());
    if (!report_png.empty()) {
      // Headless chromium draws the page's canvases and takes the picture.
      lowband::SpawnOptions so;
      so.argv = {"/usr/bin/env", "chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--window-size=1400,1500", "--screenshot=" + std::filesystem::absolute(report_png).string(),
                 "file://" + std::filesystem::absolute(out).string()};
      so.stdout_path = "/dev/null";
      so.stderr_path = "stdout";
      auto p = lowband::Subprocess::Spawn(so);
      const auto code = p.ok() ? p->WaitFor(std::chrono::milliseconds(60000)) : std::nullopt;
      if (!code || *code != 0 || !std::filesystem::exists(report_png)) {
        std::fprintf(stderr, "lowband report: chromium could not render %s (is the chromium package installed?)\n",
                     report_png.c_str());
        return 69;  // EX_UNAVAILABLE
      }
      std::printf("lowband report: wrote %s\n", report_png.c_str());
    }
    return 0;
  }
  for (auto& [words, cmd] : control_cmds) {
    if (!cmd->parsed()) continue;
    std::vector<std::string> args(words.begin() + 1, words.end());
    if (words == std::vector<std::string>{"worker", "evict"}) args.push_back(evict_site);
    if (cmd == calibrate_cmd) {
      auto opt = [&](const char* name, const std::string& v) { args.insert(args.end(), {name, v}); };
      if (cal_alpha > 0) opt("--alpha", lowband::JsonNumber(cal_alpha));
      if (cal_score_bits >= 0) opt("--score-bits", std::to_string(cal_score_bits));
      if (cal_summary_bits >= 0) opt("--summary-bits", std::to_string(cal_summary_bits));
      if (cal_trials > 0) opt("--trials", std::to_string(cal_trials));
    }
    if (cmd == predict_cmd) args = predict_text;
    // The sites answer these: allow them time unless told otherwise.
    if ((cmd == calibrate_cmd || cmd == predict_cmd) && cmd->count("--timeout-ms") == 0) ctl.timeout_ms = 300000;
    return lowband::cli::Control(ctl, words[0], args);
  }
  return 64;
}
