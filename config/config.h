// Campaign and site configuration: plain structs plus YAML loaders.
//
// Two kinds of file, because a site's data never leaves it:
//  * a campaign file (coordinator): model, training, outer optimizer, codec,
//    quorum, network, output, and optionally `sites:` to start locally;
//  * a site file (one per worker): site name, coordinator endpoint, device,
//    local text directory and validation split.
// The file formats are documented in docs/configuration.md.
//
// Loading reports every problem at once: each as "FILE:LINE: KEY: problem
// (allowed: ...)" on its own line of the returned Status message (code
// InvalidArgument). Unknown keys are errors. Mains exit 78 (EX_CONFIG) on a
// config error. Pure functions, any thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "protocol/kinds.h"

namespace lowband {

constexpr int kExitConfig = 78;  // EX_CONFIG
constexpr int kMaxSiteRanks = 64;  // site.ranks

struct ModelConfig {
  int layers = 4;
  int d_model = 128;
  int heads = 4;
  int context = 64;
  int vocab = 256;  // byte-level tokenizer
  ModelArch arch = ModelArch::kGpt2;
  // Llama only (0: derived; KvHeads and FfnHidden below).
  int kv_heads = 0;    // grouped-query attention: key/value heads, a divisor of heads
  int ffn_hidden = 0;  // SwiGLU hidden width
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;  // RMSNorm's epsilon
  // A Hugging Face model directory (config.json + model.safetensors) the
  // campaign starts from instead of the seed's parameters; its config must
  // describe this model (hf/hf_model.h). Empty: start from the seed.
  std::string init_from;
};

// A model of this shape, every other field at its default.
inline ModelConfig ModelShape(int layers, int d_model, int heads, int context, int vocab) {
  ModelConfig m;
  m.layers = layers;
  m.d_model = d_model;
  m.heads = heads;
  m.context = context;
  m.vocab = vocab;
  return m;
}

// Key/value heads (heads unless grouped) and the MLP's hidden width (GPT-2:
// 4 d_model; Llama: 8/3 d_model rounded up to a multiple of 64 unless set).
int KvHeads(const ModelConfig& m);
int FfnHidden(const ModelConfig& m);


struct InnerOptimizerConfig {  // AdamW, the only inner optimizer for now
  double lr = 3e-3;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // 0 disables clipping
  int warmup_steps = 0;    // linear warm-up over the first inner steps of the campaign
};

// Photon-style adaptive local steps (docs/configuration.md,
// `training.adaptive_steps`): the coordinator gives each worker its own H_i
// from its measured step time so that every site finishes a round's
// training in about the same wall time.
struct AdaptiveStepsConfig {
  bool enabled = false;
  // Training time per round to aim at; 0 = the fastest site's time for
  // training.inner_steps steps (so it runs H, slower sites fewer).
  double round_time_s = 0;
  int min_inner_steps = 1;
  int max_inner_steps = 0;  // 0 = training.inner_steps
};

struct TrainingConfig {
  int rounds = 10;
  int inner_steps = 10;  // H
  int batch_size = 16;
  int eval_batches = 8;  // validation batches per evaluation
  // The validation loss of every eval_every-th round (and of the last):
  // each evaluation costs every site eval_batches forward passes. The
  // replica digests are checked every round either way.
  int eval_every = 1;
  uint64_t seed = 1234;
  InnerOptimizerConfig inner;
  AdaptiveStepsConfig adaptive;
  // Rounds overlap communication with compute (docs/overlap.md): each
  // worker trains round t+1 while round t's upload and aggregate travel,
  // and applies the aggregate one round late with a correction.
  bool overlap = false;
  Precision precision = Precision::kAuto;
};

enum class OuterOptimizerKind { kNesterov, kSgd, kFedAvg };
struct OuterOptimizerConfig {
  OuterOptimizerKind kind = OuterOptimizerKind::kNesterov;
  double lr = 0.7;        // server learning rate for fedavg
  double momentum = 0.9;  // nesterov; sgd allows momentum too (0 = plain)
};
const char* OuterOptimizerName(OuterOptimizerKind kind);

// Update codecs: CodecKind and CodecName are wire vocabulary (protocol/kinds.h).
struct CodecConfig {
  CodecKind kind = CodecKind::kDenseFp32;
  int topk = 64;                 // sparseloco: values kept per full 4096-element chunk (density topk/4096)
  double error_feedback = 0.95;  // beta in e <- beta*e + delta; 0 turns error feedback off
  // How the outer update goes down: kSparseFp32 (sparse_fp32 when smaller
  // than dense, else dense_fp32), kDenseFp32 (always dense), or compressed
  // with error feedback on the coordinator (whole-model mean campaigns
  // only): kSparse2Bit (the union of the uploaded indices, 2 bits, within
  // `downlink_budget`) or kSparseLoCo (top-k + 2 bits at `topk`). The
  // parser defaults it to kSparse2Bit for codec sparseloco in such
  // campaigns, else kSparseFp32.
  CodecKind downlink = CodecKind::kSparseFp32;
  // sparse_2bit: its payload's bytes at most per byte of a sparseloco upload
  // at `topk` (> 0).
  double downlink_budget = 1.5;
};

// How the coordinator averages R uploads: kMeanAll divides every coordinate's
// sum by R; kMeanChoosers divides by the number of workers that sent that
// coordinate (dense uploads choose every coordinate).
enum class AggregationRule { kMeanAll, kMeanChoosers };
const char* AggregationName(AggregationRule rule);
// How much each upload counts in the mean: equally, or by the tokens its
// site trained on this round (sites with different H_i).
enum class AggregationWeighting { kTokens, kUniform };
const char* WeightingName(AggregationWeighting w);

struct QuorumConfig {
  int expected_workers = 1;     // rounds start once this many have joined
  int min_workers = 1;          // a round may close with this many uploads
  double round_deadline_s = 300;  // after this, close with >= min_workers uploads
  double start_timeout_s = 120;   // give up if expected workers never join
  AggregationRule aggregation = AggregationRule::kMeanAll;
  AggregationWeighting weighting = AggregationWeighting::kTokens;
  // With 3 or more uploads, one whose L2 norm exceeds this many times the
  // median of the round's norms is rejected as an outlier (0 = no check).
  double max_norm_ratio = 10;
};

// Pipeline stages across sites with ResBM bottlenecks (docs/configuration.md
// `pipeline:`). stages = 1: no pipeline, every worker holds the whole model.
// WireDtype is wire vocabulary (protocol/kinds.h).
struct PipelineConfig {
  int stages = 1;
  int replicas = 1;        // workers per stage, kept in sync through the update codec
  int ratio = 128;         // ResBM: b = d_model / ratio numbers per token cross a boundary; 1 = no bottleneck
  WireDtype wire_dtype = WireDtype::kBf16;
  std::vector<int> split;  // transformer blocks per stage; empty = as even as possible
  int micro_batches = 4;   // per step; training.batch_size must divide evenly
  std::string schedule = "1f1b";  // "gpipe" or "1f1b" (worker/pipeline_schedule.h)
  // Emulated link between stages for benchmarks: each worker throttles what
  // it sends to its neighbours to this rate (0 = as fast as the network).
  double link_mbit = 0;
  int peer_timeout_ms = 30000;  // a step fails when a neighbour is silent this long
};

// Transformer blocks per stage: pipeline.split, or as even as possible with
// the earlier stages taking one extra block each.
std::vector<int> StageBlocks(int layers, const PipelineConfig& pipeline);

// ParaBlock block-coordinate rounds (docs/design.md 3.4, docs/configuration.md
// `parablock:`): the transformer layers grouped into `blocks` contiguous
// blocks (the embeddings go with the first, the final LayerNorm with the
// last); each round a worker trains one block and uploads only its delta.
// blocks = 1: off, every worker trains the whole model.
// Partial personalisation (WorldLM-style, docs/design.md 3.5;
// docs/configuration.md `personalization:`): tensors whose names start with
// one of `tensors` are aggregated only among the sites of one cluster; the
// rest globally. Sites in no cluster share one more copy.
struct PersonalizationConfig {
  std::vector<std::string> tensors;                          // name prefixes; empty = off
  std::vector<std::pair<std::string, std::vector<std::string>>> clusters;  // name -> sites, in file order
};

struct ParaBlockConfig {
  int blocks = 1;
  std::vector<int> split;   // layers per block; empty = as even as possible
  bool random = false;      // schedule: false = cyclic, true = random (seeded by campaign.seed)
  bool per_worker = true;   // assignment: each worker its own block, or all the same block
};
// The block of each transformer layer (size model.layers), or empty when
// block rounds are off.
std::vector<int> LayerBlocks(int layers, const ParaBlockConfig& parablock);
// The block a worker trains in `round` (>= 1): cyclic shared (r-1) mod B,
// cyclic per worker (r-1+i) mod B with i the worker's position among the
// round's workers, random: a hash of (seed, round) or (seed, round, site).
int BlockForRound(const ParaBlockConfig& parablock, uint64_t seed, uint32_t round, int worker_position,
                  const std::string& site);
// "stage<S>.": the prefix of stage S's tensors in a pipeline campaign's
// global parameter layout (ml/model_init.h).
std::string StagePrefix(int stage);

struct NetworkConfig {
  std::string bind = "tcp://127.0.0.1:5555";     // worker ROUTER endpoint
  std::string control = "tcp://127.0.0.1:5556";  // CLI endpoint
  int heartbeat_interval_ms = 500;
  int heartbeat_timeout_ms = 10000;
  // "none" (plain TCP, loopback endpoints only) or "curve" (CurveZMQ on both
  // endpoints, with the three key settings below).
  std::string security = "none";
  std::string server_key;     // curve: the coordinator's secret key file (NAME.key)
  std::string site_keys;      // curve: directory of SITE.pub files, the workers' allow-list
  std::string operator_keys;  // curve: directory of NAME.pub files allowed on the control endpoint
  int64_t max_message_bytes = 256ll << 20;  // bound on any inbound bulk frame
  std::string metrics;  // HOST:PORT of the Prometheus endpoint and the dashboard ("" = none)
  // The operator credential of the dashboard's round controls: a file whose
  // first line is the token (Authorization: Bearer TOKEN). "" = read-only.
  std::string dashboard_token;
};

struct DataConfig {
  std::string dir;                 // directory of UTF-8 text files
  std::vector<std::string> files;  // names inside dir; empty = every text file
  double validation_fraction = 0.1;
};

// FPLD campaigns (docs/fpld.md): sites train their own models and send only
// quantized logits on a public probe set; the coordinator distils a student.
struct FpldConfig {
  bool enabled = false;  // set by the presence of `fpld:`
  // Public text shared with every site: probe contexts come from its
  // training split, the student's public validation from its validation split.
  DataConfig probes;
  int contexts = 64;      // m probe contexts of model.context tokens
  int positions = 8;      // logits of each context's last `positions` positions
  int bits = 4;           // per logit coordinate, 1..16 with subtractive dither; 0 = unquantized fp32
  double clip = 8;        // L: centred logits clipped to [-L, L]
  int topk = 0;           // 0: every vocabulary entry; k: the k largest of each row
  int student_steps = 30;     // distillation steps per round on the coordinator
  double student_lr = 3e-3;   // its AdamW learning rate
  int student_batch = 16;     // probe contexts per distillation step
  int student_eval_batches = 4;  // public validation batches for the student's loss
  // Benchmarks: sites also send their unquantized logits (not used for the
  // teacher) so the coordinator can report KL to the unquantized teacher.
  bool exact_reference = false;
};

// FC-RAG campaigns (docs/fcrag.md): federated conformal prediction sets
// over sites' private document stores. After the training rounds (there
// may be none) the coordinator gathers the sites' queries, has every site
// score them, averages, and calibrates from B_cal-bit summaries.
struct FcragConfig {
  bool enabled = false;             // set by the presence of `fcrag:`
  std::vector<std::string> labels;  // the candidate labels: collection (file) names
  int retrieve_k = 10;              // documents retrieved per query (BM25)
  double smoothing = 0.1;           // P(y | X, Z) smoothing mass per label (evidence scaled by the site's typical query)
  int score_bits = 8;               // B_i: bits per score a site sends (0 = fp32)
  double score_max = 4;             // scores clipped to [0, score_max] for the wire
  int summary_bits = 6;             // B_cal: bits per quantized calibration order statistic
  double alpha = 0.1;               // miscoverage of the campaign's own calibration
  double calibration_fraction = 0.5;  // of each site's queries, per random split
  int trials = 20;                  // random calibration/test splits measured
  int min_chars = 20;               // records shorter than this are dropped
  int max_chars = 2000;             // and longer ones cut
  bool serve = false;               // stay up for `lowband calibrate` / `predict` after the campaign's own
};

struct SiteConfig {
  std::string name;
  // FPLD: this site's own model (another architecture than the campaign's
  // student; same context and vocab). layers 0 = the campaign's model.
  ModelConfig model = ModelShape(0, 0, 0, 0, 0);
  std::string coordinator = "tcp://127.0.0.1:5555";
  std::string device = "cpu";  // "cpu", "cuda", "cuda:N"
  int threads = 1;             // intra-op threads for LibTorch
  std::string metrics;         // HOST:PORT of the worker's Prometheus endpoint ("" = none)
  std::string key;             // CurveZMQ: this site's secret key file ("" = plain TCP)
  std::string server_key;      // CurveZMQ: the coordinator's public key file (NAME.pub)
  // Pipeline campaigns: where this worker binds for its neighbour stages
  // (e.g. tcp://127.0.0.1:5601); its neighbours connect there.
  std::string peer;
  // Emulated slower hardware (tests, benchmarks): after each inner step the
  // worker idles (slowdown - 1) times the step's duration. 1 = full speed.
  double slowdown = 1.0;
  // Emulated thin link to the coordinator (tests, benchmarks): the worker
  // holds what it sends and what it receives behind a serial link of this
  // many Mbit/s each way. 0 = as fast as the network.
  double link_mbit = 0;
  // Several local ranks joined by LibTorch c10d (Gloo on CPU, NCCL on CUDA):
  // data-parallel inner steps with gradient all-reduce inside the site; only
  // rank 0 talks to the coordinator.
  int ranks = 1;                 // 1..64
  // HOST:PORT of rank 0's c10d TCPStore. "" = every rank on this host, a
  // loopback store on a free port.
  std::string rendezvous;
  std::vector<int> local_ranks;  // ranks this host's worker runs (empty = all)
  int rank_timeout_s = 300;      // a collective inside the site fails after this long
  DataConfig data;
  std::string source;          // where it was read from (file or file#sites[i])
};

// Durable coordinator state (docs/configuration.md, `checkpoint:`). Every
// committed round is durable in RUN_DIR/state.db (SQLite, WAL) the moment it
// commits, with its aggregated pseudo-gradient; every `every` rounds the
// global parameters and outer-optimizer state also go to a checkpoint file,
// the newest `keep` of which are kept. A restart loads the newest checkpoint
// and replays the logged rounds after it.
struct CheckpointConfig {
  int every = 1;  // write a checkpoint file every N committed rounds
  int keep = 3;   // checkpoint files kept (older ones, and their log, pruned)
};

struct OutputConfig {
  std::string run_dir = "runs/campaign";  // relative to the working directory
  std::string metrics_file;               // optional JSONL of round records
};

struct CampaignConfig {
  std::string name = "campaign";
  ModelConfig model;
  TrainingConfig training;
  OuterOptimizerConfig outer;
  CodecConfig codec;
  PipelineConfig pipeline;
  ParaBlockConfig parablock;
  PersonalizationConfig personalization;
  FpldConfig fpld;
  FcragConfig fcrag;
  QuorumConfig quorum;
  NetworkConfig network;
  OutputConfig output;
  CheckpointConfig checkpoint;
  std::vector<SiteConfig> sites;  // local sites `lowband run` starts
  std::string source;             // path of the campaign file
};

// Whether every site holds the whole model and the coordinator takes one
// mean of the uploads: no pipeline stages, ParaBlock blocks, personalised
// tensors or FPLD (the coordinator's Aggregation::Kind::kMean).
bool WholeModelMean(const CampaignConfig& config);

StatusOr<CampaignConfig> LoadCampaignFile(const std::string& path);
StatusOr<CampaignConfig> ParseCampaignYaml(const std::string& yaml_text, const std::string& source_name);
StatusOr<SiteConfig> LoadSiteFile(const std::string& path);
StatusOr<SiteConfig> ParseSiteYaml(const std::string& yaml_text, const std::string& source_name);

// site.rendezvous's form: HOST:PORT with an IPv4 address, localhost or a
// DNS name, and a port of 1 to 65535.
bool ValidRendezvousAddress(const std::string& host_port);

// Command-line overrides of a campaign document (`lowband run --set
// KEY=VALUE`). KEY is a dotted path of map keys (`codec.name`,
// `training.inner_steps`); a segment may index an existing list item
// (`sites[0].site.threads`). Maps missing on the way (or null) are created.
// VALUE is parsed as YAML: a scalar or a flow node (`codec={name: int8}`); an
// empty VALUE is null, as `key:` with nothing after it is in a file. Sets are
// applied in order, so a later one wins.
//
// ApplyOverrides returns the merged document as YAML text (comments are not
// kept); it does not validate it (ParseCampaignYaml does). InvalidArgument
// lists every bad set at once, each as "--set KEY: problem": no '=', an empty
// KEY or key segment, a path through a scalar or a list, a list index that
// does not exist, a VALUE that is not YAML, or a document that is not a map.
StatusOr<std::string> ApplyOverrides(const std::string& yaml_text, const std::vector<std::string>& sets);

struct MergedCampaign {
  CampaignConfig config;  // the merged campaign; config.source is the original file
  std::string yaml;       // the merged document, to be saved elsewhere
};
// Reads the campaign file `path`, applies `sets` as ApplyOverrides does and
// loads the result as LoadCampaignFile would, reporting every problem at
// once. An error at or under a key that a set wrote reads
// "--set KEY: problem" (or "--set KEY: KEY.PATH: problem" below it) instead
// of naming a line; every other error keeps its line in `path`. In `yaml`,
// relative `sites[i].file` and inline `sites[i].data.dir` paths are made
// absolute, so the text means the same saved in any directory (`lowband run`
// writes it to RUN_DIR/campaign.yaml and starts its processes on that).
StatusOr<MergedCampaign> LoadCampaignWithOverrides(const std::string& path, const std::vector<std::string>& sets);

// Checks that need the whole campaign (e.g. d_model % heads == 0). Called by
// the loaders; exposed for configs built in code (tests).
Status ValidateCampaign(const CampaignConfig& config);

}  // namespace lowband
