// Protocol messages as plain C++ values. protocol/wire.h converts them to and
// from FlatBuffers frames; nothing else sees generated code. Cores consume
// and produce these. The campaign settings a Welcome carries are the
// protocol's own structs (exactly what the wire holds), not config/'s: the
// coordinator converts its config into them and the worker back
// (coordinator/welcome.h, worker/welcome_config.h). Value types, any thread.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "base/frames.h"
#include "base/status.h"
#include "protocol/kinds.h"

namespace lowband {

constexpr uint16_t kProtocolVersion = 2;  // 2: model transfer pulled in chunks

// A transformer's shape (schemas/campaign.fbs ModelSpec). Like every
// settings struct here, its defaults are a campaign file's (config/config.h).
struct ModelSpec {
  int layers = 4;
  int d_model = 128;
  int heads = 4;
  int context = 64;
  int vocab = 256;
  ModelArch arch = ModelArch::kGpt2;
  int kv_heads = 0;  // llama: resolved (a divisor of heads); gpt2: 0
  int ffn_hidden = 0;  // llama: resolved; gpt2: 0
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
};
// A ModelSpec of this shape, every other field at its default.
inline ModelSpec ModelSpecShape(int layers, int d_model, int heads, int context, int vocab) {
  ModelSpec m;
  m.layers = layers;
  m.d_model = d_model;
  m.heads = heads;
  m.context = context;
  m.vocab = vocab;
  return m;
}

// The inner AdamW optimizer a site trains with.
struct InnerOptimizerSpec {
  double lr = 3e-3;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // 0 disables clipping
  int warmup_steps = 0;
};

// The training settings a site needs (the coordinator's own, such as
// adaptive steps, stay home: a site is told its steps each round).
struct TrainingSpec {
  int rounds = 10;
  int inner_steps = 10;  // H
  int batch_size = 16;
  int eval_batches = 8;
  uint64_t seed = 1234;
  InnerOptimizerSpec inner;
  bool overlap = false;  // rounds overlap communication (docs/overlap.md)
  Precision precision = Precision::kAuto;
  int eval_every = 1;  // the validation loss of rounds that are multiples of it, and of the last
};

// The update codec sites encode with (on the wire: TrainingSpec's codec fields).
struct CodecSpec {
  CodecKind kind = CodecKind::kDenseFp32;
  int topk = 64;                 // sparseloco: values kept per full 4096-element chunk
  double error_feedback = 0.95;  // beta of the site's error feedback
};

// Pipeline stages with ResBM bottlenecks; stages 1: data-parallel campaign.
struct PipelineSpec {
  int stages = 1;
  int replicas = 1;
  int ratio = 128;  // b = d_model / ratio numbers per token cross a boundary
  WireDtype wire_dtype = WireDtype::kBf16;
  std::vector<int> split;  // transformer blocks per stage; empty = as even as possible
  int micro_batches = 4;
  std::string schedule = "1f1b";  // "gpipe" or "1f1b"
  double link_mbit = 0;           // emulated stage link rate, 0 = none
  int peer_timeout_ms = 30000;
};

// Describes the bulk frame that follows a header frame.
struct BlobHeader {
  CodecKind codec = CodecKind::kDenseFp32;
  uint64_t num_elements = 0;
  uint64_t layout_digest = 0;
  uint64_t byte_length = 0;
  uint64_t checksum = 0;  // BulkChecksum (XXH64) of the bulk bytes
  uint32_t topk = 0;      // sparseloco: kept values per full chunk; 0 for other codecs
};

struct Hello {
  std::string site;
  std::string device;
  uint64_t free_memory_bytes = 0;
  double step_time_ms = 0;
  uint64_t train_tokens = 0;
  uint64_t val_tokens = 0;
  std::string peer_endpoint;  // pipeline campaigns: where its neighbour stages connect
  // FPLD: the site trains a model of its own (layers, d_model, heads; the
  // campaign's context and vocab); layers 0 = the campaign's model.
  ModelSpec own_model = ModelSpecShape(0, 0, 0, 0, 0);
  // Local ranks (processes, c10d) that train as this site's one replica.
  uint32_t ranks = 1;
  // A worker saying hello again with its replica intact (a dropped
  // connection, a silent coordinator): the round and digest it holds, so
  // the coordinator may send the updates it missed rather than the model.
  // held_digest 0: nothing held (a fresh worker).
  uint32_t held_round = 0;
  uint64_t held_digest = 0;
};

// FPLD settings and the public probe set, sent with Welcome.
struct FpldWelcome {
  bool enabled = false;
  int bits = 4;  // 0 = fp32
  float clip = 8;
  int topk = 0;
  int positions = 8;
  int contexts = 0;
  bool exact_reference = false;
  std::vector<uint8_t> probe_tokens;  // contexts x model.context byte tokens
};

// FC-RAG settings a site needs for its store and scores, sent with Welcome.
struct FcragWelcome {
  bool enabled = false;
  std::vector<std::string> labels;
  int retrieve_k = 10;
  double smoothing = 1.0;
  int min_chars = 20;
  int max_chars = 2000;
};

struct Welcome {
  std::string worker_id;
  ModelSpec model;
  TrainingSpec training;
  CodecSpec codec;
  uint64_t data_seed = 0;
  int worker_index = 0;
  uint32_t heartbeat_interval_ms = 0;
  uint32_t heartbeat_timeout_ms = 0;
  PipelineSpec pipeline;    // stages 1: data-parallel campaign
  int stage = 0;            // this worker's slot
  int replica = 0;
  std::vector<std::string> stage_endpoints;  // peer endpoint of each stage of its replica
  // Pipeline: bumped each time the coordinator (re)welcomes the replica
  // (a stage replaced). Stages number their steps from it, so survivors and
  // a newcomer agree and older activations are recognisably stale.
  uint32_t pipeline_epoch = 0;
  // ParaBlock: the block of each transformer layer (empty: whole-model
  // rounds). Block b's tensors: its layers, plus the embeddings for the
  // first block and the final LayerNorm for the last (codec/blocks.h).
  std::vector<int> layer_blocks;
  FpldWelcome fpld;
  FcragWelcome fcrag;
};

// The committed parameters a site should hold, offered (no bulk frame):
// `blob` describes the whole payload (dense fp32; byte_length, and the
// XXH64 checksum of all of it). A site that already holds `digest` (it
// built the same initial parameters from the seed, or it never lost them)
// takes nothing; otherwise it pulls the payload in chunks (SyncPull ->
// SyncChunk), a few at a time, so heartbeats and control interleave with
// the transfer on a thin link and a reconnecting site resumes where its
// last verified chunk ended (docs/protocol.md "Model transfer").
struct ModelSync {
  uint32_t round = 0;
  uint64_t digest = 0;
  BlobHeader blob;
};

// Worker -> coordinator: bytes [offset, offset + length) of the payload of
// the ModelSync (round, digest).
struct SyncPull {
  uint32_t round = 0;
  uint64_t digest = 0;
  uint64_t offset = 0;
  uint32_t length = 0;  // 1..kMaxSyncChunkBytes
};

// Coordinator -> worker, bulk: those bytes (the bulk frame is `length`
// bytes long and hashes to `checksum`, XXH64, checked on decoding).
struct SyncChunk {
  uint32_t round = 0;
  uint64_t digest = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint64_t checksum = 0;
};
constexpr uint32_t kMaxSyncChunkBytes = 16u << 20;

struct Heartbeat {
  uint32_t round = 0;
  std::string state;
};

struct CampaignEnd {
  std::string reason;
  uint32_t final_round = 0;
};

struct RoundStart {
  uint32_t round = 0;
  uint64_t model_version = 0;  // digest of the parameters to start from
  int inner_steps = 0;
  uint32_t deadline_ms = 0;
  int block = -1;  // ParaBlock: the block to train (-1: the whole model)
};

// Pipeline: bytes a stage worker sent on one of its stage links since its
// previous report, by kind (schemas/round.fbs).
struct PeerTraffic {
  enum Kind : uint8_t { kForward = 0, kBackward = 1, kLabels = 2, kEval = 3, kKinds = 4 };
  uint32_t from_stage = 0;
  uint32_t to_stage = 0;
  uint8_t kind = kForward;
  uint64_t messages = 0;
  uint64_t bytes = 0;         // header and bulk frames
  uint64_t tensor_bytes = 0;  // bulk frames alone
};
const char* PeerTrafficKindName(uint8_t kind);

struct DeltaUpload {  // bulk: theta_global - theta_local
  uint32_t round = 0;
  uint64_t base_digest = 0;
  double train_loss = 0;
  uint64_t tokens = 0;
  double step_time_ms = 0;
  BlobHeader blob;
  std::vector<PeerTraffic> peer_traffic;
  int block = -1;  // ParaBlock: the block the delta covers (-1: the whole model)
  // Exposed communication: how long the site's training thread sat idle,
  // waiting for its next job from the network, since its previous upload.
  double wait_ms = 0;
  // The training thread's cycle: wall time from the end of its previous
  // round's training to the end of this one's (0: the first round since it
  // was configured). Inner-step time / cycle = compute utilisation.
  double cycle_ms = 0;
};

// FPLD: a site's probe logits after its round of local training (bulk:
// codec/logit_codec.h payload of rows x vocab, then, with exact_bytes > 0,
// the same logits as fp32 for the benchmarks' reference).
struct LogitUpload {
  uint32_t round = 0;
  double train_loss = 0;
  uint64_t tokens = 0;
  double step_time_ms = 0;
  uint32_t rows = 0;   // contexts x positions
  uint32_t vocab = 0;
  int bits = 0;
  float clip = 0;
  int topk = 0;
  uint64_t exact_bytes = 0;
  BlobHeader blob;     // codec unused; byte_length and checksum of the bulk
  double wait_ms = 0;
  double cycle_ms = 0;  // as DeltaUpload.cycle_ms
};

// FC-RAG exchanges (docs/fcrag.md), hub to site and back, matched by id.
enum class FcragKind : uint8_t {
  kQueries = 0,    // site -> hub: its query texts (bulk: TextList), labels stay at the site
  kScore = 1,      // hub -> site: texts (TextList); site -> hub: count x labels scores at `bits`, dithered
  kCalibrate = 2,  // hub -> site: mean scores of its queries (fp32, count x labels) and a split seed;
                   // site -> hub: its calibration scores as a B_cal-bit summary, and its local QQ statistic
  kTest = 3,       // hub -> site: thresholds; site -> hub: coverage and set sizes on its test queries
};
const char* FcragKindName(FcragKind kind);

struct FcragRequest {
  uint64_t id = 0;
  FcragKind kind = FcragKind::kQueries;
  int bits = 0;               // score: B_i (0 fp32); calibrate: B_cal
  uint64_t seed = 0;          // score: dither seed; calibrate: split seed (the test reuses the split)
  double score_max = 10;      // the score range [0, score_max]
  uint32_t count = 0;         // texts (score) or score rows (calibrate)
  double calibration_fraction = 0.5;
  uint32_t qq_k = 0;          // calibrate: the local order statistic FedCP-QQ asks for (0: none)
  double threshold = 0;       // test: the pooled split-conformal threshold
  double threshold_qq = 0;    // test: the FedCP-QQ threshold
  BlobHeader blob;            // bulk, when the kind carries one
};

struct FcragReply {
  uint64_t id = 0;
  FcragKind kind = FcragKind::kQueries;
  uint32_t count = 0;         // queries, score rows or calibration scores
  uint32_t covered = 0;       // test: test queries whose set holds the true label (pooled threshold)
  uint64_t set_size = 0;      // test: total labels in their sets
  uint32_t covered_qq = 0;    // the same with the FedCP-QQ threshold
  uint64_t set_size_qq = 0;
  double local_qq = 0;        // calibrate: the site's qq_k-th smallest calibration score
  BlobHeader blob;
};

struct Aggregate {  // bulk: outer update u, applied as theta <- theta - u
  uint32_t round = 0;
  uint64_t digest = 0;  // digest after applying
  uint32_t contributors = 0;
  BlobHeader blob;
};

struct EvalReport {
  uint32_t round = 0;
  double val_loss = 0;
  uint64_t val_tokens = 0;
  uint64_t digest = 0;
  std::vector<PeerTraffic> peer_traffic;
  // A site of several ranks: each rank's digest (rank 0 first); every one
  // must equal the round's.
  std::vector<uint64_t> rank_digests;
};

enum class ErrorCode : int {
  kMalformed = 1,       // failed size bound, verifier or decoding
  kWrongVersion = 2,
  kWrongCampaign = 3,
  kNotRegistered = 4,
  kWrongRound = 5,      // unknown, stale or future round
  kDuplicate = 6,
  kBadPayload = 7,      // layout, length, checksum or non-finite values
  kDigestMismatch = 8,
  kUnexpected = 9,      // message not valid in the receiver's state
  kInternal = 10,
  kSiteDown = 11,       // a rank of a multi-rank site is gone: the site leaves until restarted
};

// Short snake_case name of an error code ("malformed", "wrong_round", ...),
// used in logs and as the `reason` label of rejection metrics.
const char* ErrorCodeName(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
  uint32_t round = 0;
};

// A pipeline boundary tensor (forward z or backward dL/dz) between stages;
// bulk: batch * tokens * width values of `dtype`, little-endian. Checked
// against what the receiver expects with CheckActivation (protocol/pipeline_wire.h).
struct Activation {
  uint32_t round = 0;
  uint32_t step = 0;
  uint32_t micro_batch = 0;
  uint32_t stage = 0;  // sender's stage
  bool backward = false;
  uint32_t batch = 0;
  uint32_t tokens = 0;
  uint32_t width = 0;
  WireDtype dtype = WireDtype::kBf16;
  BlobHeader blob;
  bool labels = false;  // stage 0 -> last stage: target ids [batch, tokens], width 1, dtype unused (LabelBytes)
  bool eval = false;    // a validation pass (forward only); step is the eval batch index
};

struct ControlRequest {
  std::string command;
  std::vector<std::string> args;
};

struct ControlResponse {
  bool ok = false;
  std::string message;
  std::string json;
};

using Body = std::variant<Hello, Welcome, ModelSync, Heartbeat, CampaignEnd, RoundStart, DeltaUpload,
                          Aggregate, EvalReport, Error, ControlRequest, ControlResponse, Activation, LogitUpload,
                          FcragRequest, FcragReply, SyncPull, SyncChunk>;

// FC-RAG texts in a bulk frame: for each, its byte length (uint32 LE) then
// its bytes. Decoding refuses a count or lengths that do not fit exactly.
Bytes PackTextList(const std::vector<std::string>& texts);
StatusOr<std::vector<std::string>> UnpackTextList(const Bytes& bulk, uint32_t count);

// Short lower-case name of the body kind ("hello", "delta_upload", ...),
// used in logs and in the bandwidth ledger.
const char* BodyName(const Body& body);

struct Message {
  uint16_t protocol_version = kProtocolVersion;
  std::string campaign_id;
  std::string sender_id;
  uint64_t seq = 0;
  Body body;
  Frame bulk;  // empty unless the body carries a BlobHeader; shared, not copied, between messages and frames
};

}  // namespace lowband
