// `lowband` subcommands. Each returns the process exit code.
#pragma once

#include <string>
#include <vector>

namespace lowband::cli {

struct RunOptions {
  std::string campaign_file;
  std::string metrics_out;  // JSONL of round records; default RUN_DIR/metrics.jsonl
  std::string run_dir;      // default: the campaign's output.run_dir
  bool verbose = false;     // daemon logs to the terminal instead of files
};
// Starts the coordinator and every local site of the campaign on this
// machine, shows progress, and returns the coordinator's exit code.
int Run(const RunOptions& options);

struct ControlOptions {
  std::string endpoint;       // control endpoint; or taken from campaign_file
  std::string campaign_file;
  bool json = false;
  int timeout_ms = 3000;
};
// Sends one control request and prints the answer.
int Control(const ControlOptions& options, const std::string& command, const std::vector<std::string>& args);

}  // namespace lowband::cli
