// `lowband` subcommands. Each returns the process exit code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lowband::cli {

struct RunOptions {
  std::string campaign_file;
  std::vector<std::string> sets;  // "KEY=VALUE" overrides of the campaign file, in order
  std::string metrics_out;  // JSONL of round records; default RUN_DIR/metrics.jsonl
  std::string run_dir;      // default: the campaign's output.run_dir
  bool verbose = false;     // daemon logs to the terminal instead of files
  std::string log_level;    // passed to every daemon (--log-level) when set
  bool resume = false;      // continue the unfinished campaign in RUN_DIR
  bool fresh = false;       // discard RUN_DIR's campaign state and start over
};
// Applies `sets` to the campaign file (config/config.h ApplyOverrides rules),
// validates the result, writes it to RUN_DIR/campaign.yaml, then starts the
// coordinator and every local site of the campaign on this machine, all
// reading that file; shows progress and returns the coordinator's exit code.
// An invalid campaign or --set returns 78 (EX_CONFIG) before anything starts.
// A campaign file that already is RUN_DIR/campaign.yaml is used as it is;
// with sets that would overwrite it, Run returns 64 (EX_USAGE).
int Run(const RunOptions& options);

struct ControlOptions {
  std::string endpoint;       // control endpoint; or taken from campaign_file
  std::string campaign_file;
  bool json = false;
  int timeout_ms = 3000;
  std::string key;         // CurveZMQ: the operator's secret key file
  std::string server_key;  // CurveZMQ: the coordinator's public key file
};
// Sends one control request (command, args) and prints the answer: its
// message (or its JSON with --json). Returns 0 when the coordinator accepted
// it, 1 when it refused it (ok=false; the message also goes to stderr), 64 on
// usage errors, 78 on a bad campaign file, 69 when no answer came.
int Control(const ControlOptions& options, const std::string& command, const std::vector<std::string>& args);

// `lowband keys generate NAME --dir DIR`: writes DIR/NAME.key (0600) and
// DIR/NAME.pub (0644). Returns 0, or 1 with the reason on stderr.
int KeysGenerate(const std::string& name, const std::string& dir);

struct ExportOptions {
  std::string source;         // a run directory or a .lbck checkpoint
  std::string campaign_file;  // the campaign (its model section); default: the run directory's campaign.yaml
  std::string out_dir;
  std::string dtype = "f32";  // f32 or bf16
};
// `lowband export RUN_DIR|CHECKPOINT --out DIR`: DIR/model.safetensors and
// DIR/config.json in Hugging Face's layout (hf/hf_model.h), the model read
// as cli/model_source.h says. Returns 0; 66 when the source is missing, 65
// when it cannot be read as a model (bad campaign file, a checkpoint of
// another model), 73 when the files cannot be written.
int Export(const ExportOptions& options);

struct CheckOptions {
  std::string campaign_file;
  std::vector<std::string> sets;  // "KEY=VALUE" overrides, as for run
  double link_mbit = 100;         // the link the transfer times are computed for
};
// `lowband check CAMPAIGN.yaml`: loads and validates the campaign and its
// site files without starting anything; prints the parameters, the bytes per
// upload and per downlink at the chosen codecs, per round per site and over
// the campaign, and the time the transfers take at --link-mbit (and each
// site's site.link_mbit). Returns 0, or 78 with every error.
int Check(const CheckOptions& options);

struct GenerateOptions {
  std::string model;  // cli/model_source.h
  std::string prompt;
  int max_tokens = 200;
  double temperature = 0.8;  // 0: the most likely token every time
  int top_k = 40;            // 0: the whole vocabulary
  uint64_t seed = 1;
  std::string device = "cpu";
};
// `lowband generate MODEL --prompt TEXT`: samples a continuation with the
// key/value cache and prints prompt and continuation (byte tokens), then
// tokens/s on stderr. Stops at the model's context. 0, 66 no model, 65 a
// model it cannot use (vocabulary other than bytes), 69 no such device.
int Generate(const GenerateOptions& options);

struct EvalOptions {
  std::string model;
  std::string data_dir;
  std::vector<std::string> files;  // default: every text file in data_dir
  double validation_fraction = 0.1;  // the split campaigns evaluate on
  bool all = false;                  // evaluate every record instead
  int batch = 16;
  std::string device = "cpu";
};
// `lowband eval MODEL --data DIR`: loss (nats per token), perplexity, bits
// per byte and tokens/s over the data's validation split (as a campaign's
// site measures it) or all of it. 0, 66 no model or data, 65 unusable.
int Eval(const EvalOptions& options);

}  // namespace lowband::cli
