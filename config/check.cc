// The check pass: range and cross-field rules on the filled config structs
// (see config/check.h).
//
// A Checker reports a rule against a canonical key path and asks the
// ParseState where that key was written; a key whose value the parse pass
// could not read is skipped, as its error is already in the report.
#include "config/check.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <utility>
#include <vector>

namespace lowband {
namespace config_internal {
namespace {

// Sanity bounds: they keep products such as layers * d_model^2 far from
// overflow and catch typos (an extra zero) before a worker allocates.
constexpr int kMaxLayers = 256;
constexpr int kMaxDModel = 16384;
constexpr int kMaxContext = 1 << 20;
constexpr int kByteVocab = 256;
constexpr int kMaxThreads = 1024;

const char* const kNameChars = "[A-Za-z0-9_.-]+";
constexpr int kMaxRankTimeoutS = 86400;

class Checker {
 public:
  Checker(std::string fallback_file, const ParseState* state, Diagnostics* diag)
      : fallback_file_(std::move(fallback_file)), state_(state), diag_(diag) {}

  bool Bad(const std::string& canonical) const {
    return state_ != nullptr && state_->bad.count(canonical) > 0;
  }

  // Where to report a canonical key: where it was written, else where its
  // nearest written parent is (a missing key is reported at its section).
  Where Locate(const std::string& canonical) const {
    if (state_ != nullptr) {
      std::string prefix = canonical;
      while (true) {
        auto it = state_->lines.find(prefix);
        if (it != state_->lines.end()) {
          Where w = it->second;
          std::string rest = canonical.substr(prefix.size());
          if (w.key.empty() && !rest.empty() && rest[0] == '.') rest = rest.substr(1);
          w.key += rest;
          return w;
        }
        if (prefix.empty()) break;
        size_t cut = prefix.find_last_of(".[");
        prefix = cut == std::string::npos ? "" : prefix.substr(0, cut);
      }
    }
    return Where{fallback_file_, 0, canonical};
  }

  void Error(const std::string& canonical, const std::string& problem, const std::string& allowed = "") {
    if (Bad(canonical)) return;
    diag_->Add(Locate(canonical), problem, allowed);
  }

  void Required(const std::string& canonical, const std::string& value) {
    if (value.empty() && !Bad(canonical)) Error(canonical, "missing required key");
  }

  void IntRange(const std::string& canonical, int64_t v, int64_t lo, int64_t hi) {
    if (v >= lo && v <= hi) return;
    std::string allowed = hi >= std::numeric_limits<int>::max()
                              ? ">= " + std::to_string(lo)
                              : std::to_string(lo) + " to " + std::to_string(hi);
    Error(canonical, std::to_string(v) + " is out of range", allowed);
  }

  // lo/hi with inclusive flags; prints the interval in the usual notation.
  void DoubleRange(const std::string& canonical, double v, double lo, bool lo_in, double hi, bool hi_in) {
    bool ok = std::isfinite(v) && (lo_in ? v >= lo : v > lo) && (hi_in ? v <= hi : v < hi);
    if (ok) return;
    std::string allowed;
    if (std::isinf(hi)) {
      allowed = (lo_in ? ">= " : "> ") + FormatDouble(lo);
    } else {
      allowed = std::string(lo_in ? "[" : "(") + FormatDouble(lo) + ", " + FormatDouble(hi) + (hi_in ? "]" : ")");
    }
    Error(canonical, FormatDouble(v) + " is out of range", allowed);
  }

  // Returns the parsed endpoint through *ep when valid.
  bool CheckEndpoint(const std::string& canonical, const std::string& value, bool allow_wildcard, Endpoint* ep) {
    if (Bad(canonical)) return false;
    if (!ParseEndpoint(value, ep)) {
      Error(canonical, "invalid endpoint '" + value + "'", kEndpointForms);
      return false;
    }
    if (!allow_wildcard && ep->scheme == "tcp" && ep->host == "*") {
      Error(canonical, "cannot connect to wildcard host in '" + value + "'",
            "tcp://HOST:PORT with a concrete host, ipc://PATH");
      return false;
    }
    return true;
  }

 private:
  std::string fallback_file_;
  const ParseState* state_;
  Diagnostics* diag_;
};

// "" (off) or HOST:PORT with an IPv4 HOST, localhost or * and a PORT of 0..65535.
void CheckMetricsAddress(const std::string& key, const std::string& v, Checker* c) {
  if (v.empty()) return;
  const size_t colon = v.rfind(':');
  bool ok = colon != std::string::npos && colon > 0 && colon + 1 < v.size() && colon + 6 >= v.size();
  if (ok) {
    for (size_t i = colon + 1; i < v.size(); ++i) ok = ok && v[i] >= '0' && v[i] <= '9';
    ok = ok && std::stol(v.substr(colon + 1)) <= 65535;
    const std::string host = v.substr(0, colon);
    in_addr addr{};
    ok = ok && (host == "*" || host == "localhost" || ::inet_pton(AF_INET, host.c_str(), &addr) == 1);
  }
  if (!ok) c->Error(key, "'" + v + "' is not HOST:PORT", "IPV4:PORT, localhost:PORT or *:PORT (0 to 65535), or empty");
}

// Multi-rank sites: ranks, rendezvous, local_ranks, rank_timeout_s, and
// what ranks >= 2 rules out (cuda:N, a pipeline peer).
void CheckSiteRanks(const SiteConfig& site, const std::string& prefix, Checker* c) {
  const std::string ranks_key = prefix + "site.ranks";
  const std::string rdv_key = prefix + "site.rendezvous";
  const std::string local_key = prefix + "site.local_ranks";
  c->IntRange(ranks_key, site.ranks, 1, kMaxSiteRanks);
  c->IntRange(prefix + "site.rank_timeout_s", site.rank_timeout_s, 1, kMaxRankTimeoutS);
  if (!site.rendezvous.empty() && !ValidRendezvous(site.rendezvous)) {
    c->Error(rdv_key, "'" + site.rendezvous + "' is not HOST:PORT",
             "IPV4:PORT, localhost:PORT or HOSTNAME:PORT with PORT 1 to 65535, or empty");
  }
  // The rules below compare with ranks; an unreadable or out-of-range value
  // has been reported already.
  if (c->Bad(ranks_key) || site.ranks < 1 || site.ranks > kMaxSiteRanks) return;
  const std::string ranks_text = std::to_string(site.ranks);
  if (site.ranks == 1) {
    if (!site.rendezvous.empty()) {
      c->Error(rdv_key, "a rendezvous needs ranks >= 2", "empty with site.ranks 1");
    }
    if (!site.local_ranks.empty()) {
      c->Error(local_key, "local_ranks needs ranks >= 2", "empty with site.ranks 1");
    }
    return;
  }
  if (ValidDevice(site.device) && site.device.rfind("cuda:", 0) == 0) {
    c->Error(prefix + "site.device", "'" + site.device + "' with ranks " + ranks_text + ": local rank i takes cuda:i",
             "cpu or cuda when site.ranks >= 2");
  }
  if (!site.peer.empty()) {
    c->Error(ranks_key, ranks_text + " ranks with site.peer: a pipeline stage runs on one rank",
             "1 when site.peer is set");
  }
  if (site.local_ranks.empty() || c->Bad(local_key)) return;
  std::vector<int> first_at(static_cast<size_t>(site.ranks), -1);  // rank -> index in local_ranks
  int covered = 0;
  for (size_t i = 0; i < site.local_ranks.size(); ++i) {
    const int r = site.local_ranks[i];
    const std::string item_key = local_key + "[" + std::to_string(i) + "]";
    if (r < 0 || r >= site.ranks) {
      c->Error(item_key, "rank " + std::to_string(r) + " is out of range for ranks " + ranks_text,
               "0 to " + std::to_string(site.ranks - 1));
      continue;
    }
    int& first = first_at[static_cast<size_t>(r)];
    if (first >= 0) {
      c->Error(item_key, "rank " + std::to_string(r) + " repeats (first at local_ranks[" + std::to_string(first) + "])",
               "each rank at most once");
      continue;
    }
    first = static_cast<int>(i);
    ++covered;
  }
  if (covered < site.ranks && site.rendezvous.empty()) {
    c->Error(rdv_key,
             "ranks on other hosts need a rendezvous address (local_ranks lists " + std::to_string(covered) + " of " +
                 ranks_text + " ranks)",
             "HOST:PORT of rank 0's store, reachable from every host of the site");
  }
}

void CheckSite(const SiteConfig& site, const std::string& prefix, Checker* c) {
  const std::string name_key = prefix + "site.name";
  if (site.name.empty()) {
    c->Required(name_key, site.name);
  } else if (!ValidName(site.name)) {
    c->Error(name_key, "invalid name '" + site.name + "'", kNameChars);
  }
  Endpoint ep;
  const bool ep_ok = c->CheckEndpoint(prefix + "site.coordinator", site.coordinator, /*allow_wildcard=*/false, &ep);
  // A standalone site file (the campaign checks its inline sites itself):
  // without a key it would speak plain TCP, acceptable on loopback only.
  if (prefix.empty() && ep_ok && site.key.empty() && site.server_key.empty() && !IsLoopback(ep)) {
    c->Error("site.coordinator", "plain TCP to a non-loopback coordinator '" + site.coordinator + "'",
             "a loopback endpoint, or CurveZMQ: site.key and site.server_key");
  }
  if (!ValidDevice(site.device)) {
    c->Error(prefix + "site.device", "unknown device '" + site.device + "'", "cpu, cuda, cuda:N");
  }
  c->IntRange(prefix + "site.threads", site.threads, 1, kMaxThreads);
  c->DoubleRange(prefix + "site.slowdown", site.slowdown, 1, true, 1000, true);
  c->DoubleRange(prefix + "site.link_mbit", site.link_mbit, 0, true, 1e6, true);
  CheckMetricsAddress(prefix + "site.metrics", site.metrics, c);
  CheckSiteRanks(site, prefix, c);
  if (!site.peer.empty()) {
    Endpoint peer_ep;
    if (c->CheckEndpoint(prefix + "site.peer", site.peer, /*allow_wildcard=*/false, &peer_ep) && site.key.empty() &&
        !IsLoopback(peer_ep)) {
      c->Error(prefix + "site.peer", "plain TCP between stages on a non-loopback endpoint '" + site.peer + "'",
               "a loopback endpoint (stage links are not encrypted yet)");
    }
  }
  // CurveZMQ needs both our secret key and the coordinator's public key.
  if (site.key.empty() != site.server_key.empty()) {
    c->Error(prefix + (site.key.empty() ? "site.key" : "site.server_key"), "missing: key and server_key go together",
             "both (CurveZMQ) or neither (plain TCP on loopback)");
  }
  c->Required(prefix + "data.dir", site.data.dir);
  for (size_t i = 0; i < site.data.files.size(); ++i) {
    const std::string& f = site.data.files[i];
    const std::string key = prefix + "data.files[" + std::to_string(i) + "]";
    if (f.empty()) {
      c->Error(key, "empty file name");
    } else if (f[0] == '/' || f == ".." || f.rfind("../", 0) == 0 || f.find("/../") != std::string::npos) {
      c->Error(key, "'" + f + "' leaves data.dir", "names relative to data.dir");
    }
  }
  c->DoubleRange(prefix + "data.validation_fraction", site.data.validation_fraction, 0, false, 1, false);
  if (site.model.layers != 0 || site.model.d_model != 0) {
    const ModelConfig& m = site.model;
    c->IntRange(prefix + "site.model.layers", m.layers, 1, kMaxLayers);
    c->IntRange(prefix + "site.model.d_model", m.d_model, 1, kMaxDModel);
    c->IntRange(prefix + "site.model.heads", m.heads, 1, kMaxDModel);
    if (m.d_model >= 1 && m.heads >= 1 && m.d_model % m.heads != 0) {
      c->Error(prefix + "site.model.d_model",
               "d_model " + std::to_string(m.d_model) + " is not divisible by heads " + std::to_string(m.heads),
               "a multiple of site.model.heads");
    }
  }
}

void CheckCampaign(const CampaignConfig& cfg, Checker* c) {
  if (cfg.name.empty()) {
    c->Required("campaign.name", cfg.name);
  } else if (!ValidName(cfg.name)) {
    c->Error("campaign.name", "invalid name '" + cfg.name + "'", kNameChars);
  }
  const int kIntMax = std::numeric_limits<int>::max();
  // An FC-RAG campaign may calibrate without training first.
  c->IntRange("campaign.rounds", cfg.training.rounds, cfg.fcrag.enabled ? 0 : 1, kIntMax);

  const ModelConfig& m = cfg.model;
  c->IntRange("model.layers", m.layers, 1, kMaxLayers);
  c->IntRange("model.d_model", m.d_model, 1, kMaxDModel);
  c->IntRange("model.heads", m.heads, 1, kMaxDModel);
  c->IntRange("model.context", m.context, 1, kMaxContext);
  if (m.vocab != kByteVocab) {
    c->Error("model.vocab", std::to_string(m.vocab) + " does not match the byte-level tokenizer", "256");
  }
  if (m.d_model >= 1 && m.heads >= 1 && m.d_model % m.heads != 0 && !c->Bad("model.heads")) {
    c->Error("model.d_model",
             "d_model " + std::to_string(m.d_model) + " is not divisible by heads " + std::to_string(m.heads),
             "a multiple of model.heads");
  }
  if (m.arch == ModelArch::kLlama) {
    c->IntRange("model.kv_heads", m.kv_heads, 0, kMaxDModel);
    c->IntRange("model.ffn_hidden", m.ffn_hidden, 0, 4 * kMaxDModel);
    c->DoubleRange("model.rope_theta", m.rope_theta, 1, true, 1e9, true);
    c->DoubleRange("model.norm_eps", m.norm_eps, 0, false, 0.1, true);
    if (m.kv_heads > 0 && m.heads >= 1 && m.heads % m.kv_heads != 0) {
      c->Error("model.kv_heads", std::to_string(m.kv_heads) + " does not divide heads " + std::to_string(m.heads),
               "a divisor of model.heads (0: heads)");
    }
    if (m.d_model >= 1 && m.heads >= 1 && m.d_model % m.heads == 0 && (m.d_model / m.heads) % 2 != 0) {
      c->Error("model.d_model",
               "head size " + std::to_string(m.d_model / m.heads) + " is odd; rotary positions rotate pairs",
               "d_model / heads even");
    }
    if (cfg.pipeline.stages > 1) {
      c->Error("model.arch", "llama in pipeline stages (not supported yet)", "gpt2 with pipeline.stages > 1");
    }
    if (cfg.fpld.enabled) c->Error("model.arch", "llama in an FPLD campaign (not supported yet)", "gpt2 with fpld");
  } else {
    const ModelConfig defaults;
    for (const auto& [key, set] : {std::pair<const char*, bool>{"kv_heads", m.kv_heads != 0},
                                   {"ffn_hidden", m.ffn_hidden != 0},
                                   {"rope_theta", m.rope_theta != defaults.rope_theta},
                                   {"norm_eps", m.norm_eps != defaults.norm_eps}}) {
      if (set) c->Error(std::string("model.") + key, "set for arch gpt2", "only with model.arch: llama");
    }
  }
  if (!m.init_from.empty() && (cfg.pipeline.stages > 1 || cfg.fpld.enabled)) {
    c->Error("model.init_from", "a pipeline or FPLD campaign (not supported yet)", "plain, ParaBlock or personalised");
  }

  const TrainingConfig& t = cfg.training;
  c->IntRange("training.inner_steps", t.inner_steps, 1, kIntMax);
  c->IntRange("training.batch_size", t.batch_size, 1, kIntMax);
  c->IntRange("training.eval_batches", t.eval_batches, 1, kIntMax);
  c->IntRange("training.eval_every", t.eval_every, 1, kIntMax);
  const InnerOptimizerConfig& in = t.inner;
  const std::string io = "training.inner_optimizer.";
  c->DoubleRange(io + "lr", in.lr, 0, false, INFINITY, false);
  c->DoubleRange(io + "betas[0]", in.beta1, 0, true, 1, false);
  c->DoubleRange(io + "betas[1]", in.beta2, 0, true, 1, false);
  c->DoubleRange(io + "eps", in.eps, 0, false, INFINITY, false);
  c->DoubleRange(io + "weight_decay", in.weight_decay, 0, true, INFINITY, false);
  c->DoubleRange(io + "grad_clip", in.grad_clip, 0, true, INFINITY, false);
  c->IntRange(io + "warmup_steps", in.warmup_steps, 0, kIntMax);
  const AdaptiveStepsConfig& ad = t.adaptive;
  const std::string as = "training.adaptive_steps.";
  c->DoubleRange(as + "round_time_s", ad.round_time_s, 0, true, INFINITY, false);
  c->IntRange(as + "min_inner_steps", ad.min_inner_steps, 1, kIntMax);
  c->IntRange(as + "max_inner_steps", ad.max_inner_steps, 0, kIntMax);
  if (ad.enabled) {
    const int max_h = ad.max_inner_steps > 0 ? ad.max_inner_steps : t.inner_steps;
    if (ad.min_inner_steps > max_h && !c->Bad(as + "min_inner_steps")) {
      c->Error(as + "min_inner_steps",
               std::to_string(ad.min_inner_steps) + " exceeds the most steps a site may run (" +
                   std::to_string(max_h) + ")",
               "at most max_inner_steps (or training.inner_steps when that is 0)");
    }
    if (ad.round_time_s >= cfg.quorum.round_deadline_s && !c->Bad(as + "round_time_s")) {
      c->Error(as + "round_time_s",
               "round time " + std::to_string(ad.round_time_s) + " s leaves no margin before quorum.round_deadline_s",
               "below quorum.round_deadline_s");
    }
    if (cfg.pipeline.stages > 1) {
      c->Error(as + "enabled", "adaptive steps with a pipeline (the stages of a replica step together)",
               "false when pipeline.stages > 1");
    }
  }

  c->DoubleRange("outer_optimizer.lr", cfg.outer.lr, 0, false, INFINITY, false);
  c->DoubleRange("outer_optimizer.momentum", cfg.outer.momentum, 0, true, 1, false);

  const CodecConfig& codec = cfg.codec;
  if (codec.kind == CodecKind::kSparseFp32 || codec.kind == CodecKind::kSparse2Bit) {
    c->Error("codec.name",
             std::string("'") + CodecName(codec.kind) +
                 "' is the coordinator's downlink format and cannot be chosen for uploads",
             "dense_fp32, dense_bf16, int8, sparseloco");
  }
  if (codec.kind == CodecKind::kSparseLoCo) c->IntRange("codec.topk", codec.topk, 1, kSparseLoCoChunk);
  // Checked for every codec so a typo is caught before it matters; dense_fp32
  // is lossless and ignores it.
  c->DoubleRange("codec.error_feedback", codec.error_feedback, 0, true, 1, false);
  c->DoubleRange("codec.downlink_budget", codec.downlink_budget, 0, false, INFINITY, false);
  if ((codec.downlink == CodecKind::kSparseLoCo || codec.downlink == CodecKind::kSparse2Bit) && !WholeModelMean(cfg)) {
    // The coordinator's downlink error feedback is one buffer over the whole
    // model, sent whole to every site.
    const char* why = cfg.fpld.enabled           ? "an FPLD campaign"
                      : cfg.pipeline.stages > 1  ? "pipeline stages (pipeline.stages > 1)"
                      : cfg.parablock.blocks > 1 ? "ParaBlock blocks (parablock.blocks > 1)"
                                                 : "personalised tensors (personalization.tensors)";
    c->Error("codec.downlink", std::string(CodecName(codec.downlink)) + " downlink with " + why,
             "sparse_fp32 or dense_fp32 unless every site holds the whole model and the coordinator takes one mean");
  }

  const QuorumConfig& q = cfg.quorum;
  c->IntRange("quorum.expected_workers", q.expected_workers, 1, kIntMax);
  c->IntRange("quorum.min_workers", q.min_workers, 1, kIntMax);
  if (q.min_workers > q.expected_workers && !c->Bad("quorum.expected_workers")) {
    c->Error("quorum.min_workers",
             std::to_string(q.min_workers) + " is more than expected_workers " +
                 std::to_string(q.expected_workers),
             "1 to quorum.expected_workers");
  }
  c->DoubleRange("quorum.round_deadline_s", q.round_deadline_s, 0, false, INFINITY, false);
  if (q.max_norm_ratio != 0) c->DoubleRange("quorum.max_norm_ratio", q.max_norm_ratio, 1, false, INFINITY, false);
  c->DoubleRange("quorum.start_timeout_s", q.start_timeout_s, 0, false, INFINITY, false);

  const NetworkConfig& n = cfg.network;
  Endpoint bind, control;
  bool bind_ok = c->CheckEndpoint("network.bind", n.bind, /*allow_wildcard=*/true, &bind);
  bool control_ok = c->CheckEndpoint("network.control", n.control, /*allow_wildcard=*/true, &control);
  if (bind_ok && control_ok && n.bind == n.control) {
    c->Error("network.control", "same endpoint as network.bind", "an endpoint other than network.bind");
  }
  c->IntRange("network.heartbeat_interval_ms", n.heartbeat_interval_ms, 1, kIntMax);
  if (n.heartbeat_interval_ms >= 1 && n.heartbeat_timeout_ms <= n.heartbeat_interval_ms &&
      !c->Bad("network.heartbeat_interval_ms")) {
    c->Error("network.heartbeat_timeout_ms",
             std::to_string(n.heartbeat_timeout_ms) + " is not more than heartbeat_interval_ms " +
                 std::to_string(n.heartbeat_interval_ms),
             "> network.heartbeat_interval_ms");
  }
  c->IntRange("network.max_message_bytes", n.max_message_bytes, 1, std::numeric_limits<int64_t>::max());
  CheckMetricsAddress("network.metrics", n.metrics, c);
  const bool plain = n.security == "none";
  const bool curve = n.security == "curve";
  if (!plain && !curve && !c->Bad("network.security")) {
    c->Error("network.security", "unsupported value '" + n.security + "'",
             "none (loopback endpoints only) or curve");
  }
  if (curve) {
    c->Required("network.server_key", n.server_key);
    c->Required("network.site_keys", n.site_keys);
    c->Required("network.operator_keys", n.operator_keys);
  }
  // Plain TCP carries model updates in the clear and lets anyone join, so it
  // is only acceptable where nothing outside this host can reach it.
  const char* const kLoopbackForms = "tcp://127.x.x.x:PORT, tcp://localhost:PORT, tcp://[::1]:PORT, ipc://PATH";
  if (plain && bind_ok && !IsLoopback(bind)) {
    c->Error("network.bind", "security 'none' requires a loopback endpoint, got '" + n.bind + "'",
             kLoopbackForms);
  }
  if (plain && control_ok && !IsLoopback(control)) {
    c->Error("network.control", "security 'none' requires a loopback endpoint, got '" + n.control + "'",
             kLoopbackForms);
  }

  c->Required("output.run_dir", cfg.output.run_dir);
  c->IntRange("checkpoint.every", cfg.checkpoint.every, 1, kIntMax);
  const PipelineConfig& pc = cfg.pipeline;
  c->IntRange("pipeline.stages", pc.stages, 1, 64);
  c->IntRange("pipeline.replicas", pc.replicas, 1, 64);
  c->IntRange("pipeline.ratio", pc.ratio, 1, 65536);
  c->IntRange("pipeline.micro_batches", pc.micro_batches, 1, 4096);
  c->IntRange("pipeline.peer_timeout_ms", pc.peer_timeout_ms, 100, 3600000);
  if (!(pc.link_mbit >= 0 && pc.link_mbit <= 1e6) && !c->Bad("pipeline.link_mbit")) {
    c->Error("pipeline.link_mbit", "is " + std::to_string(pc.link_mbit), "0 (no limit) to 1000000");
  }
  if (pc.stages > 1 && cfg.model.layers >= 1 && pc.stages > cfg.model.layers && !c->Bad("pipeline.stages")) {
    c->Error("pipeline.stages", std::to_string(pc.stages) + " stages for " + std::to_string(cfg.model.layers) +
                                    " transformer blocks", "at most model.layers");
  }
  // ratio and micro_batches only matter with stage boundaries.
  const bool piped = pc.stages > 1;
  if (piped && pc.ratio >= 1 && cfg.model.d_model >= 1 && cfg.model.d_model % pc.ratio != 0 &&
      !c->Bad("pipeline.ratio")) {
    c->Error("pipeline.ratio", std::to_string(pc.ratio) + " does not divide d_model " +
                                   std::to_string(cfg.model.d_model),
             "a divisor of model.d_model (b = d_model / ratio numbers per token cross a boundary)");
  }
  if (piped && pc.micro_batches >= 1 && cfg.training.batch_size % pc.micro_batches != 0 &&
      !c->Bad("pipeline.micro_batches")) {
    c->Error("pipeline.micro_batches", std::to_string(pc.micro_batches) + " does not divide training.batch_size " +
                                           std::to_string(cfg.training.batch_size),
             "a divisor of training.batch_size");
  }
  if (!pc.split.empty() && !c->Bad("pipeline.split")) {
    long total = 0;
    for (int v : pc.split) total += v;
    if (static_cast<int>(pc.split.size()) != pc.stages || total != cfg.model.layers) {
      c->Error("pipeline.split", std::to_string(pc.split.size()) + " entries summing to " + std::to_string(total),
               std::to_string(pc.stages) + " entries (one per stage) summing to model.layers = " +
                   std::to_string(cfg.model.layers));
    }
  }
  const ParaBlockConfig& pb = cfg.parablock;
  c->IntRange("parablock.blocks", pb.blocks, 1, 64);
  if (pb.blocks > 1 && cfg.model.layers >= 1 && pb.blocks > cfg.model.layers && !c->Bad("parablock.blocks")) {
    c->Error("parablock.blocks", std::to_string(pb.blocks) + " blocks of " + std::to_string(cfg.model.layers) + " layers",
             "at most model.layers");
  }
  if (!pb.split.empty() && !c->Bad("parablock.split")) {
    long total = 0;
    bool empty_block = false;
    for (int v : pb.split) {
      total += v;
      empty_block = empty_block || v == 0;
    }
    if (static_cast<int>(pb.split.size()) != pb.blocks || total != cfg.model.layers || empty_block) {
      c->Error("parablock.split", std::to_string(pb.split.size()) + " entries summing to " + std::to_string(total),
               std::to_string(pb.blocks) + " entries (one per block, each >= 1) summing to model.layers = " +
                   std::to_string(cfg.model.layers));
    }
  }
  const PersonalizationConfig& per = cfg.personalization;
  if (!per.tensors.empty() || !per.clusters.empty()) {
    if (per.tensors.empty()) {
      c->Error("personalization.tensors", "clusters without personalised tensors", "a list of tensor name prefixes");
    }
    std::set<std::string> seen;
    for (const auto& [name, sites] : per.clusters) {
      if (!ValidName(name)) c->Error("personalization.clusters." + name, "invalid cluster name", "[A-Za-z0-9_.-]+");
      for (const std::string& site : sites) {
        if (!seen.insert(site).second) {
          c->Error("personalization.clusters." + name, "site '" + site + "' is in two clusters", "each site in one cluster");
        }
      }
    }
    if (pc.stages > 1 || pb.blocks > 1 || cfg.training.overlap) {
      c->Error("personalization.tensors", "personalisation with pipeline stages, parablock or overlap (not supported yet)",
               "no personalization there");
    }
  }
  if (cfg.training.overlap && pc.stages > 1) {
    c->Error("training.overlap", "overlapped rounds with a pipeline", "false when pipeline.stages > 1");
  }
  const FpldConfig& fp = cfg.fpld;
  if (fp.enabled) {
    c->Required("fpld.probes.dir", fp.probes.dir);
    c->DoubleRange("fpld.probes.validation_fraction", fp.probes.validation_fraction, 0, false, 1, false);
    c->IntRange("fpld.contexts", fp.contexts, 1, 1 << 16);
    c->IntRange("fpld.positions", fp.positions, 1, std::max(cfg.model.context, 1));
    c->IntRange("fpld.bits", fp.bits, 0, 16);
    c->DoubleRange("fpld.clip", fp.clip, 0, false, 1e4, true);
    c->IntRange("fpld.topk", fp.topk, 0, kByteVocab);
    c->IntRange("fpld.student_steps", fp.student_steps, 0, 1 << 20);
    c->DoubleRange("fpld.student_lr", fp.student_lr, 0, false, 10, true);
    c->IntRange("fpld.student_batch", fp.student_batch, 1, 1 << 16);
    c->IntRange("fpld.student_eval_batches", fp.student_eval_batches, 1, 1 << 16);
    if (pc.stages > 1 || pb.blocks > 1 || cfg.training.overlap || !per.tensors.empty()) {
      c->Error("fpld", "FPLD with pipeline stages, parablock, overlap or personalization",
               "none of those in an FPLD campaign");
    }
    // The student is the global model: each round's "aggregate" is exactly
    // theta - student, applied as it is.
    const OuterOptimizerConfig& o = cfg.outer;
    if (o.kind != OuterOptimizerKind::kSgd || o.lr != 1.0 || o.momentum != 0.0) {
      c->Error("outer_optimizer", "an outer optimizer other than plain SGD with lr 1 in an FPLD campaign",
               "{name: sgd, lr: 1.0, momentum: 0} (the coordinator's student is the global model)");
    }
  }
  const FcragConfig& fr = cfg.fcrag;
  if (fr.enabled) {
    if (fr.labels.size() < 2) {
      c->Error("fcrag.labels", std::to_string(fr.labels.size()) + " labels", "a list of at least 2 collection (file) names");
    }
    std::set<std::string> seen;
    for (const std::string& l : fr.labels) {
      if (l.empty() || !seen.insert(l).second) c->Error("fcrag.labels", "empty or repeated label '" + l + "'", "distinct file names");
    }
    c->IntRange("fcrag.retrieve_k", fr.retrieve_k, 1, 10000);
    c->DoubleRange("fcrag.smoothing", fr.smoothing, 0, false, 1e6, true);
    c->IntRange("fcrag.score_bits", fr.score_bits, 0, 16);
    c->DoubleRange("fcrag.score_max", fr.score_max, 0, false, 1e6, true);
    c->IntRange("fcrag.summary_bits", fr.summary_bits, 1, 15);
    c->DoubleRange("fcrag.alpha", fr.alpha, 0, false, 1, false);
    c->DoubleRange("fcrag.calibration_fraction", fr.calibration_fraction, 0, false, 1, false);
    c->IntRange("fcrag.trials", fr.trials, 1, 100000);
    c->IntRange("fcrag.min_chars", fr.min_chars, 1, 1 << 20);
    c->IntRange("fcrag.max_chars", fr.max_chars, std::max(fr.min_chars, 1), 1 << 20);
    if (pc.stages > 1 || fp.enabled) {
      c->Error("fcrag", "FC-RAG with pipeline stages or FPLD", "neither in an FC-RAG campaign");
    }
  }
  for (size_t i = 0; i < cfg.sites.size(); ++i) {
    if (cfg.sites[i].model.layers != 0 && !fp.enabled) {
      c->Error("sites[" + std::to_string(i) + "].site.model", "a site model of its own outside an FPLD campaign",
               "no site.model (only FPLD campaigns mix architectures)");
    }
  }
  if (cfg.training.overlap && cfg.training.adaptive.enabled) {
    c->Error("training.overlap", "overlapped rounds with adaptive steps (not supported yet)",
             "false when training.adaptive_steps.enabled");
  }
  if (pb.blocks > 1 && pc.stages > 1) {
    c->Error("parablock.blocks", "block rounds with a pipeline (each stage already trains its own layers)",
             "1 when pipeline.stages > 1");
  }
  if (pc.stages > 1 && cfg.quorum.expected_workers != pc.stages * pc.replicas && !c->Bad("quorum.expected_workers")) {
    c->Error("quorum.expected_workers",
             std::to_string(cfg.quorum.expected_workers) + ", but the pipeline has " + std::to_string(pc.stages) +
                 " stages x " + std::to_string(pc.replicas) + " replicas",
             std::to_string(pc.stages * pc.replicas) + " (pipeline.stages x pipeline.replicas)");
  }
  c->IntRange("checkpoint.keep", cfg.checkpoint.keep, 1, 1000);

  std::map<std::string, size_t> first_by_name;
  for (size_t i = 0; i < cfg.sites.size(); ++i) {
    const SiteConfig& site = cfg.sites[i];
    const std::string prefix = "sites[" + std::to_string(i) + "].";
    if (pc.stages > 1 && site.peer.empty()) {
      c->Error(prefix + "site.peer", "missing: a pipeline campaign's workers talk to their neighbour stages",
               "an endpoint this site binds for its neighbours, e.g. tcp://127.0.0.1:5601");
    }
    CheckSite(site, prefix, c);
    if (!site.name.empty()) {
      auto [it, inserted] = first_by_name.emplace(site.name, i);
      if (!inserted) {
        Where first = c->Locate("sites[" + std::to_string(it->second) + "].site.name");
        std::string at = first.file + (first.line > 0 ? ":" + std::to_string(first.line) : "");
        c->Error(prefix + "site.name", "duplicate site name '" + site.name + "' (first defined at " + at + ")",
                 "unique site names");
      }
    }
    if (curve) {
      c->Required(prefix + "site.key", site.key);
      c->Required(prefix + "site.server_key", site.server_key);
    } else if (plain && !site.key.empty()) {
      c->Error(prefix + "site.key", "a site key needs network.security: curve", "no key with security none");
    }
    Endpoint ep;
    const std::string coord_key = prefix + "site.coordinator";
    if (c->Bad(coord_key) || !ParseEndpoint(site.coordinator, &ep)) continue;
    if (plain && !IsLoopback(ep)) {
      c->Error(coord_key, "security 'none' requires a loopback endpoint, got '" + site.coordinator + "'",
               kLoopbackForms);
    }
    // Local sites are started by `lowband run` against this campaign's own
    // coordinator; a different port or socket would leave them waiting forever.
    if (bind_ok && (ep.scheme != bind.scheme || ep.port != bind.port || ep.path != bind.path)) {
      c->Error(coord_key, "'" + site.coordinator + "' does not reach network.bind '" + n.bind + "'",
               "the network.bind endpoint (same port or ipc path)");
    }
  }
}

}  // namespace

void RunCampaignChecks(const CampaignConfig& config, const std::string& fallback_file, const ParseState* state,
                       Diagnostics* diag) {
  Checker checker(fallback_file, state, diag);
  CheckCampaign(config, &checker);
}

void RunSiteChecks(const SiteConfig& site, const std::string& fallback_file, const ParseState* state,
                   Diagnostics* diag) {
  Checker checker(fallback_file, state, diag);
  CheckSite(site, "", &checker);
}

}  // namespace config_internal
}  // namespace lowband
