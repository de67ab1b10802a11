// The parse pass: YAML trees to the config structs (see config/parse.h).
//
// Every key seen is recorded in ParseState under its canonical path, so that
// the check pass can report a rule at the line the user wrote. A site file
// referenced from a campaign is parsed with a Parser of its own: its keys
// get canonical paths under "sites[i]." but are shown as in the site file.
// yaml-cpp throws; every call into it is made from here (and from
// config/overrides.cc), under the callers' catch.
#include "config/parse.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <locale>
#include <sstream>
#include <utility>
#include <vector>

namespace lowband {
namespace config_internal {
namespace {

// ---------------------------------------------------------------------------
// Scalars

bool ParseInt64(const std::string& s, int64_t* out) {
  if (s.empty()) return false;
  size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (i == s.size()) return false;
  for (size_t j = i; j < s.size(); ++j) {
    if (s[j] < '0' || s[j] > '9') return false;
  }
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno == ERANGE || end != s.c_str() + s.size()) return false;
  *out = v;
  return true;
}

bool ParseUint64(const std::string& s, uint64_t* out) {
  size_t i = (!s.empty() && s[0] == '+') ? 1 : 0;
  if (i == s.size()) return false;
  for (size_t j = i; j < s.size(); ++j) {
    if (s[j] < '0' || s[j] > '9') return false;
  }
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno == ERANGE || end != s.c_str() + s.size()) return false;
  *out = v;
  return true;
}

// Decimal floating point only: strtod would also take "nan", "inf" and hex
// floats, none of which belong in a config; the digit check keeps them out.
bool ParseDouble(const std::string& s, double* out) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')) {
      return false;
    }
  }
  std::istringstream is(s);
  is.imbue(std::locale::classic());  // strtod would follow LC_NUMERIC
  double v = 0;
  is >> v;
  if (is.fail() || !is.eof() || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

int LineOf(const YAML::Node& node) {
  try {
    YAML::Mark m = node.Mark();
    return m.is_null() ? 0 : m.line + 1;
  } catch (const std::exception&) {
    return 0;
  }
}

// ---------------------------------------------------------------------------
// Maps and typed readers

// The keys of one YAML map, after unknown and duplicate keys were reported.
struct MapFields {
  struct Field {
    std::string key;
    YAML::Node key_node;
    YAML::Node value;
  };
  std::string path;  // relative key path of the map itself
  std::vector<Field> fields;

  const Field* Find(const std::string& key) const {
    for (const auto& f : fields) {
      if (f.key == key) return &f;
    }
    return nullptr;
  }
};

// Reads the YAML tree of one file (or one inline part of it). Key paths are
// relative to the part; `canon_prefix` turns them into canonical paths for
// ParseState and `display_prefix` into the path shown in messages (they
// differ for a site file referenced from a campaign: canonical
// "sites[0].site.name", shown as "site.name" in the site file).
class Parser {
 public:
  Parser(std::string file, std::string canon_prefix, std::string display_prefix, Diagnostics* diag,
         ParseState* state)
      : file_(std::move(file)),
        canon_prefix_(std::move(canon_prefix)),
        display_prefix_(std::move(display_prefix)),
        diag_(diag),
        state_(state) {}

  const std::string& file() const { return file_; }

  std::string Canonical(const std::string& path) const { return canon_prefix_ + path; }

  void Record(const std::string& path, const YAML::Node& node, const std::string& canonical = "") {
    state_->lines[canonical.empty() ? Canonical(path) : canonical] =
        Where{file_, LineOf(node), display_prefix_ + path};
  }

  void Error(const std::string& path, const YAML::Node& node, const std::string& problem,
             const std::string& allowed = "") {
    diag_->Add(Where{file_, LineOf(node), display_prefix_ + path}, problem, allowed);
  }

  void MarkBad(const std::string& path) { state_->bad.insert(Canonical(path)); }

  // Reads `node` as a map whose keys must be in `allowed`. A null node (a
  // section written with no body) is an empty map. Returns false if it is
  // not a map; the error has been reported.
  bool Map(const YAML::Node& node, const std::string& path, const std::vector<std::string>& allowed,
           MapFields* out, const std::string& context = "") {
    out->path = path;
    out->fields.clear();
    if (node.IsNull()) return true;
    if (!node.IsMap()) {
      Error(path, node, "expected a map, got " + Describe(node));
      MarkBad(path);
      return false;
    }
    for (auto it = node.begin(); it != node.end(); ++it) {
      // By value: it-> returns a temporary proxy, a reference would dangle.
      const YAML::Node key_node = it->first;
      const YAML::Node value = it->second;
      if (!key_node.IsScalar()) {
        Error(path, key_node, "keys must be plain strings, got " + Describe(key_node),
              JoinList(allowed));
        continue;
      }
      const std::string key = key_node.Scalar();
      const std::string key_path = Join(path, key);
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        Error(key_path, key_node, "unknown key" + context, JoinList(allowed));
        continue;
      }
      if (out->Find(key) != nullptr) {
        Error(key_path, key_node,
              "duplicate key (first at line " + std::to_string(LineOf(out->Find(key)->key_node)) + ")");
        continue;
      }
      out->fields.push_back({key, key_node, value});
      Record(key_path, key_node);
    }
    return true;
  }

  // Typed readers: absent key -> false, *out untouched. Wrong type -> error
  // reported, path marked bad, false. Range checks come later (Checker).
  bool Int(const MapFields& m, const std::string& key, int* out) {
    int64_t v = 0;
    if (!Int64(m, key, &v)) return false;
    if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) {
      const auto* f = m.Find(key);
      Error(Join(m.path, key), f->value, "integer too large: " + f->value.Scalar());
      MarkBad(Join(m.path, key));
      return false;
    }
    *out = static_cast<int>(v);
    return true;
  }

  bool Int64(const MapFields& m, const std::string& key, int64_t* out) {
    const auto* f = m.Find(key);
    if (f == nullptr) return false;
    if (!f->value.IsScalar() || !ParseInt64(f->value.Scalar(), out)) {
      TypeError(Join(m.path, key), f->value, "an integer");
      return false;
    }
    return true;
  }

  bool Uint64(const MapFields& m, const std::string& key, uint64_t* out) {
    const auto* f = m.Find(key);
    if (f == nullptr) return false;
    if (!f->value.IsScalar() || !ParseUint64(f->value.Scalar(), out)) {
      TypeError(Join(m.path, key), f->value, "a non-negative integer");
      return false;
    }
    return true;
  }

  bool Double(const MapFields& m, const std::string& key, double* out,
              const std::string& canonical = "") {
    const auto* f = m.Find(key);
    if (f == nullptr) return false;
    if (canonical.size()) Record(Join(m.path, key), f->key_node, canonical);
    if (!f->value.IsScalar() || !ParseDouble(f->value.Scalar(), out)) {
      TypeError(Join(m.path, key), f->value, "a finite number");
      if (canonical.size()) state_->bad.insert(canonical);
      return false;
    }
    return true;
  }

  bool String(const MapFields& m, const std::string& key, std::string* out) {
    const auto* f = m.Find(key);
    if (f == nullptr) return false;
    if (!f->value.IsScalar()) {
      TypeError(Join(m.path, key), f->value, "a string");
      return false;
    }
    *out = f->value.Scalar();
    return true;
  }

  bool StringList(const MapFields& m, const std::string& key, std::vector<std::string>* out) {
    const auto* f = m.Find(key);
    if (f == nullptr) return false;
    const std::string path = Join(m.path, key);
    if (f->value.IsNull()) {
      out->clear();
      return true;
    }
    if (!f->value.IsSequence()) {
      TypeError(path, f->value, "a list of strings");
      return false;
    }
    std::vector<std::string> items;
    bool ok = true;
    for (size_t i = 0; i < f->value.size(); ++i) {
      const YAML::Node item = f->value[i];
      const std::string item_path = path + "[" + std::to_string(i) + "]";
      Record(item_path, item);
      if (!item.IsScalar()) {
        TypeError(item_path, item, "a string");
        ok = false;
        continue;
      }
      items.push_back(item.Scalar());
    }
    if (ok) *out = std::move(items);
    return ok;
  }

  // A string that must be one of `names`; returns its index via *index.
  bool Enum(const MapFields& m, const std::string& key, const std::vector<std::string>& names,
            int* index) {
    std::string value;
    if (!String(m, key, &value)) return false;
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i] == value) {
        *index = static_cast<int>(i);
        return true;
      }
    }
    const auto* f = m.Find(key);
    Error(Join(m.path, key), f->value, "unknown value '" + value + "'", JoinList(names));
    MarkBad(Join(m.path, key));
    return false;
  }

  void TypeError(const std::string& path, const YAML::Node& node, const std::string& expected) {
    Error(path, node, "expected " + expected + ", got " + Describe(node));
    MarkBad(path);
  }

 private:
  std::string file_;
  std::string canon_prefix_;
  std::string display_prefix_;
  Diagnostics* diag_;
  ParseState* state_;
};

// ---------------------------------------------------------------------------
// Sites

const std::vector<std::string> kSiteFileKeys = {"site", "data"};
const std::vector<std::string> kSiteKeys = {"name", "coordinator", "device", "threads", "metrics", "key",
                                            "server_key", "peer", "slowdown", "link_mbit", "ranks",
                                            "rendezvous", "local_ranks", "rank_timeout_s", "model"};
const std::vector<std::string> kSiteModelKeys = {"layers", "d_model", "heads"};
const std::vector<std::string> kDataKeys = {"dir", "files", "validation_fraction"};

// A list of counts (pipeline.split: blocks per stage; parablock.split:
// layers per block), each an integer in [0, 100000].
void ParseCountList(Parser* p, const YAML::Node& node, const std::string& path, const std::string& what,
                    std::vector<int>* out) {
  if (!node.IsSequence()) {
    p->TypeError(path, node, "a list of " + what + " counts");
    p->MarkBad(path);
    return;
  }
  for (size_t i = 0; i < node.size(); ++i) {
    const YAML::Node item = node[i];
    const std::string item_path = path + "[" + std::to_string(i) + "]";
    p->Record(item_path, item);
    int64_t v = 0;
    if (!item.IsScalar() || !ParseInt64(item.Scalar(), &v) || v < 0 || v > 100000) {
      p->TypeError(item_path, item, "a " + what + " count >= 0");
      p->MarkBad(path);
    } else {
      out->push_back(static_cast<int>(v));
    }
  }
}

// site.local_ranks: a list of rank numbers (null = empty). Each item's line
// is recorded; the range [0, ranks) and repeats are checked by CheckSite. On
// a bad item the list stays empty and is marked bad.
void ParseRankList(Parser* p, const YAML::Node& node, const std::string& path, std::vector<int>* out) {
  if (node.IsNull()) {
    out->clear();
    return;
  }
  if (!node.IsSequence()) {
    p->TypeError(path, node, "a list of rank numbers");
    return;
  }
  std::vector<int> ranks;
  bool ok = true;
  for (size_t i = 0; i < node.size(); ++i) {
    const YAML::Node item = node[i];
    const std::string item_path = path + "[" + std::to_string(i) + "]";
    p->Record(item_path, item);
    int64_t v = 0;
    if (!item.IsScalar() || !ParseInt64(item.Scalar(), &v) || v < std::numeric_limits<int>::min() ||
        v > std::numeric_limits<int>::max()) {
      p->TypeError(item_path, item, "an integer rank");
      ok = false;
    } else {
      ranks.push_back(static_cast<int>(v));
    }
  }
  if (ok) {
    *out = std::move(ranks);
  } else {
    p->MarkBad(path);
  }
}

// Parses the {site:, data:} body shared by site files and inline sites.
// `base_file` anchors a relative data.dir. Sets *coordinator_set when the
// site names its coordinator (inline sites otherwise inherit network.bind).
bool ParseSiteBody(Parser* p, const YAML::Node& root, const std::string& path,
                   const std::vector<std::string>& allowed, const std::string& base_file,
                   SiteConfig* site, bool* coordinator_set) {
  MapFields top;
  if (!p->Map(root, path, allowed, &top)) return false;
  *coordinator_set = false;
  if (const auto* f = top.Find("site")) {
    MapFields s;
    if (p->Map(f->value, Join(path, "site"), kSiteKeys, &s)) {
      p->String(s, "name", &site->name);
      *coordinator_set = p->String(s, "coordinator", &site->coordinator);
      if (!*coordinator_set && s.Find("coordinator") != nullptr) *coordinator_set = true;
      p->String(s, "device", &site->device);
      p->Int(s, "threads", &site->threads);
      p->String(s, "metrics", &site->metrics);
      if (p->String(s, "key", &site->key)) site->key = ResolveRelative(base_file, site->key);
      if (p->String(s, "server_key", &site->server_key)) site->server_key = ResolveRelative(base_file, site->server_key);
      p->String(s, "peer", &site->peer);
      p->Double(s, "slowdown", &site->slowdown);
      p->Double(s, "link_mbit", &site->link_mbit);
      p->Int(s, "ranks", &site->ranks);
      p->String(s, "rendezvous", &site->rendezvous);
      if (const auto* lr = s.Find("local_ranks")) {
        ParseRankList(p, lr->value, Join(path, "site.local_ranks"), &site->local_ranks);
      }
      p->Int(s, "rank_timeout_s", &site->rank_timeout_s);
      if (const auto* mf = s.Find("model")) {
        MapFields mm;
        if (p->Map(mf->value, Join(path, "site.model"), kSiteModelKeys, &mm)) {
          site->model = ModelShape(4, 128, 4, 0, 0);  // context and vocab: the campaign's
          p->Int(mm, "layers", &site->model.layers);
          p->Int(mm, "d_model", &site->model.d_model);
          p->Int(mm, "heads", &site->model.heads);
        }
      }
    }
  }
  if (const auto* f = top.Find("data")) {
    MapFields d;
    if (p->Map(f->value, Join(path, "data"), kDataKeys, &d)) {
      if (p->String(d, "dir", &site->data.dir)) {
        site->data.dir = ResolveRelative(base_file, site->data.dir);
      }
      p->StringList(d, "files", &site->data.files);
      p->Double(d, "validation_fraction", &site->data.validation_fraction);
    }
  }
  return true;
}

// ---------------------------------------------------------------------------
// Campaign sections

const std::vector<std::string> kRootKeys = {"campaign", "model",  "training", "outer_optimizer", "codec",
                                            "quorum",   "network", "output",  "checkpoint", "pipeline", "sites",
                                            "parablock", "personalization", "fpld", "fcrag"};
const std::vector<std::string> kFcragKeys = {"labels",     "retrieve_k", "smoothing", "score_bits",
                                             "score_max",  "summary_bits", "alpha",   "calibration_fraction",
                                             "trials",     "min_chars",  "max_chars", "serve"};
const std::vector<std::string> kFpldKeys = {"probes",        "contexts",      "positions",      "bits",
                                            "clip",          "topk",          "student_steps",  "student_lr",
                                            "student_batch", "student_eval_batches", "exact_reference"};
const std::vector<std::string> kPipelineKeys = {"stages",        "replicas", "ratio",     "wire_dtype",     "split",
                                                "micro_batches", "schedule", "link_mbit", "peer_timeout_ms"};
const std::vector<std::string> kScheduleNames = {"gpipe", "1f1b"};
const std::vector<std::string> kParaBlockKeys = {"blocks", "split", "schedule", "assignment"};
const std::vector<std::string> kPersonalizationKeys = {"tensors", "clusters"};
const std::vector<std::string> kWireDtypeNames = {"fp32", "bf16", "fp16"};
const std::vector<std::string> kCheckpointKeys = {"every", "keep"};
const std::vector<std::string> kCampaignKeys = {"name", "seed", "rounds"};
const std::vector<std::string> kModelKeys = {"layers",   "d_model",    "heads",      "context",
                                             "vocab",    "arch",       "kv_heads",   "ffn_hidden",
                                             "rope_theta", "norm_eps",   "init_from"};
const std::vector<std::string> kArchNames = {"gpt2", "llama"};
const std::vector<std::string> kTrainingKeys = {"inner_steps", "batch_size", "eval_batches", "inner_optimizer",
                                                "adaptive_steps", "overlap", "precision", "eval_every"};
const std::vector<std::string> kAdaptiveKeys = {"enabled", "round_time_s", "min_inner_steps", "max_inner_steps"};
const std::vector<std::string> kWeightingNames = {"tokens", "uniform"};
const std::vector<std::string> kInnerKeys = {"name",         "lr",        "betas",       "eps",
                                             "weight_decay", "grad_clip", "warmup_steps"};
const std::vector<std::string> kOuterNames = {"nesterov", "sgd", "fedavg"};
// Index i is CodecKind(i); sparse_fp32 and sparse_2bit (the coordinator's
// downlink formats) come last in the enum and are deliberately left out.
const std::vector<std::string> kCodecNames = {"dense_fp32", "dense_bf16", "int8", "sparseloco"};
const std::vector<std::string> kCodecKeys = {"name",           "topk",     "density",
                                             "error_feedback", "downlink", "downlink_budget"};
// codec.downlink values, in the order of kDownlinkKinds.
const std::vector<std::string> kDownlinkNames = {"sparse_2bit", "sparseloco", "sparse_fp32", "dense_fp32"};
const CodecKind kDownlinkKinds[] = {CodecKind::kSparse2Bit, CodecKind::kSparseLoCo, CodecKind::kSparseFp32,
                                    CodecKind::kDenseFp32};
const std::vector<std::string> kAggregationNames = {"mean", "mean_of_choosers"};
const std::vector<std::string> kQuorumKeys = {"expected_workers", "min_workers", "round_deadline_s",
                                              "start_timeout_s", "aggregation", "max_norm_ratio", "weighting"};
const std::vector<std::string> kNetworkKeys = {"bind",     "control",          "heartbeat_interval_ms",
                                               "heartbeat_timeout_ms", "security", "max_message_bytes", "metrics",
                                               "server_key", "site_keys", "operator_keys", "dashboard_token"};
const std::vector<std::string> kOutputKeys = {"run_dir", "metrics_file"};
const std::vector<std::string> kSiteItemKeys = {"file", "site", "data"};

void ParseOuterOptimizer(Parser* p, const YAML::Node& node, OuterOptimizerConfig* outer) {
  // The allowed keys depend on the name, so read the name first.
  std::string name = "nesterov";
  if (node.IsMap() && node["name"].IsDefined() && node["name"].IsScalar()) name = node["name"].Scalar();
  std::vector<std::string> keys;
  std::string context;
  if (name == "fedavg") {
    keys = {"name", "server_lr", "lr"};
    context = " for outer_optimizer fedavg";
  } else if (name == "nesterov" || name == "sgd") {
    keys = {"name", "lr", "momentum"};
    context = " for outer_optimizer " + name;
  } else {
    keys = {"name", "lr", "server_lr", "momentum"};
  }
  MapFields m;
  if (!p->Map(node, "outer_optimizer", keys, &m, context)) return;
  int kind = 0;
  if (p->Enum(m, "name", kOuterNames, &kind)) {
    outer->kind = static_cast<OuterOptimizerKind>(kind);
    // Each optimizer's defaults are those of the method it stands for:
    // DiLoCo (Nesterov 0.7/0.9), SparseLoCo (plain SGD, lr 1), FedAvg (lr 1).
    if (outer->kind == OuterOptimizerKind::kNesterov) {
      outer->lr = 0.7;
      outer->momentum = 0.9;
    } else {
      outer->lr = 1.0;
      outer->momentum = 0.0;
    }
  }
  if (m.Find("lr") != nullptr && m.Find("server_lr") != nullptr) {
    p->Error("outer_optimizer.server_lr", m.Find("server_lr")->key_node,
             "both lr and server_lr given; server_lr is an alias of lr", "one of lr, server_lr");
  }
  // server_lr is checked as outer_optimizer.lr but reported under its own name.
  p->Double(m, "lr", &outer->lr, p->Canonical("outer_optimizer.lr"));
  if (m.Find("lr") == nullptr) p->Double(m, "server_lr", &outer->lr, p->Canonical("outer_optimizer.lr"));
  p->Double(m, "momentum", &outer->momentum);
  // FedAvg has no server momentum; zero keeps the struct honest.
  if (outer->kind == OuterOptimizerKind::kFedAvg) outer->momentum = 0;
}

// Sets *downlink_set when codec.downlink is given (the default depends on
// sections parsed later).
void ParseCodec(Parser* p, const YAML::Node& node, CodecConfig* codec, bool* downlink_set) {
  MapFields m;
  if (!p->Map(node, "codec", kCodecKeys, &m)) return;
  *downlink_set = m.Find("downlink") != nullptr;
  int downlink = 0;
  if (p->Enum(m, "downlink", kDownlinkNames, &downlink)) codec->downlink = kDownlinkKinds[downlink];
  p->Double(m, "downlink_budget", &codec->downlink_budget);
  bool name_ok = true;
  if (const auto* f = m.Find("name"); f != nullptr && f->value.IsScalar() &&
                                      (f->value.Scalar() == CodecName(CodecKind::kSparseFp32) ||
                                       f->value.Scalar() == CodecName(CodecKind::kSparse2Bit))) {
    // A real codec name, but only the coordinator produces it.
    p->Error("codec.name", f->value,
             "'" + f->value.Scalar() + "' is the coordinator's downlink format and cannot be chosen for uploads",
             JoinList(kCodecNames));
    p->MarkBad("codec.name");
    name_ok = false;
  } else if (f != nullptr) {
    int kind = 0;
    name_ok = p->Enum(m, "name", kCodecNames, &kind);
    if (name_ok) codec->kind = static_cast<CodecKind>(kind);
  }

  const auto* topk = m.Find("topk");
  const auto* density = m.Find("density");
  if (codec->kind != CodecKind::kSparseLoCo) {
    // With an unreadable name we cannot tell whether topk belongs; the name
    // error is the one to fix.
    if (name_ok) {
      for (const auto* g : {topk, density}) {
        if (g == nullptr) continue;
        p->Error("codec." + g->key, g->key_node,
                 std::string("only for codec sparseloco, not ") + CodecName(codec->kind),
                 "name, error_feedback for codec " + std::string(CodecName(codec->kind)));
      }
    }
    p->MarkBad("codec.topk");
  } else if (topk != nullptr && density != nullptr) {
    p->Error("codec.density", density->key_node, "both topk and density given; density is topk/4096",
             "one of topk, density");
    p->MarkBad("codec.topk");
  } else if (topk != nullptr) {
    p->Int(m, "topk", &codec->topk);
  } else if (density != nullptr) {
    // Turned into topk here, so its range is checked here, not by Checker.
    double d = 0;
    if (p->Double(m, "density", &d)) {
      if (d > 0 && d <= 1) {
        const long k = std::lround(d * static_cast<double>(kSparseLoCoChunk));
        codec->topk = static_cast<int>(std::max(1L, k));
      } else {
        p->Error("codec.density", density->value, FormatDouble(d) + " is out of range",
                 "(0, 1]: the fraction of each 4096-value chunk kept");
      }
    }
  }
  p->Double(m, "error_feedback", &codec->error_feedback);
}

// Keys of a site that checks must skip when the site could not be read:
// their values are defaults, and the real error was reported already.
void MarkSiteBad(const std::string& item_path, ParseState* state) {
  for (const char* k : {".site.name", ".site.coordinator", ".site.device", ".site.threads", ".site.ranks",
                        ".site.rendezvous", ".site.local_ranks", ".site.rank_timeout_s", ".data.dir", ".data.files",
                        ".data.validation_fraction"}) {
    state->bad.insert(item_path + k);
  }
}

// One entry of `sites:`: either {file: PATH} (a site file relative to the
// campaign file) or an inline {site:, data:} body.
SiteConfig ParseSiteItem(Parser* p, const YAML::Node& item, size_t index, const std::string& source,
                         const std::string& bind, Diagnostics* diag, ParseState* state) {
  const std::string item_path = "sites[" + std::to_string(index) + "]";
  p->Record(item_path, item);
  SiteConfig site;
  site.source = source + "#" + item_path;
  bool coordinator_set = false;
  if (!item.IsMap() || !item["file"].IsDefined()) {
    if (!ParseSiteBody(p, item, item_path, kSiteItemKeys, source, &site, &coordinator_set)) {
      MarkSiteBad(item_path, state);
      return site;
    }
    if (!coordinator_set) {
      site.coordinator = BindToConnect(bind);
      // Derived from network.bind, whose own errors are reported there.
      state->bad.insert(item_path + ".site.coordinator");
    }
    return site;
  }

  MapFields m;
  p->Map(item, item_path, {"file"}, &m, " next to file (a site is either {file: PATH} or inline)");
  const YAML::Node file_node = item["file"];
  std::string rel;
  if (!p->String(m, "file", &rel)) {
    MarkSiteBad(item_path, state);
    return site;
  }
  if (rel.empty()) {
    p->Error(item_path + ".file", file_node, "empty path", "a site file path");
    MarkSiteBad(item_path, state);
    return site;
  }
  const std::string path = ResolveRelative(source, rel);
  StatusOr<std::string> text = ReadConfigFile(path);
  if (!text.ok()) {
    p->Error(item_path + ".file", file_node, "cannot load site file: " + text.status().message(),
             "a readable site file, relative to this campaign file");
    MarkSiteBad(item_path, state);
    return site;
  }
  site.source = path;
  diag->RegisterFile(path);
  // Checks on this site report into the site file, not the campaign file.
  state->lines[item_path] = Where{path, 1, ""};
  YAML::Node site_root;
  if (!LoadYaml(*text, path, diag, &site_root)) {
    MarkSiteBad(item_path, state);
    return site;
  }
  Parser sp(path, item_path + ".", "", diag, state);
  if (!ParseSiteBody(&sp, site_root, "", kSiteFileKeys, path, &site, &coordinator_set)) {
    MarkSiteBad(item_path, state);
  }
  return site;
}

}  // namespace

std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "nothing";
    case YAML::NodeType::Sequence:
      return node.size() == 1 ? "a list of 1 item" : "a list of " + std::to_string(node.size()) + " items";
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Scalar: return "'" + node.Scalar() + "'";
    case YAML::NodeType::Undefined: break;
  }
  return "nothing";
}

// Parses a YAML text; a syntax error is reported with the file and line.
bool LoadYaml(const std::string& text, const std::string& file, Diagnostics* diag, YAML::Node* out) {
  try {
    *out = YAML::Load(text);
    return true;
  } catch (const YAML::Exception& e) {
    Where w{file, e.mark.is_null() ? 0 : e.mark.line + 1, ""};
    std::string problem = "YAML syntax error: " + e.msg;
    if (!e.mark.is_null()) problem += " (column " + std::to_string(e.mark.column + 1) + ")";
    diag->Add(w, problem);
  } catch (const std::exception& e) {
    diag->Add(Where{file, 0, ""}, std::string("YAML error: ") + e.what());
  }
  return false;
}

// The whole campaign parse; errors go to `diag`, positions to `state`.
void ParseCampaignTree(const YAML::Node& root, const std::string& source, Diagnostics* diag, ParseState* state,
                       CampaignConfig* cfg) {
  Parser p(source, "", "", diag, state);
  state->lines[""] = Where{source, 1, ""};
  MapFields top;
  if (!p.Map(root, "", kRootKeys, &top)) return;

  // campaign.name is the one required key; its struct default only serves
  // configs built in code.
  bool name_set = false;
  if (const auto* f = top.Find("campaign")) {
    MapFields m;
    if (p.Map(f->value, "campaign", kCampaignKeys, &m)) {
      name_set = m.Find("name") != nullptr;
      p.String(m, "name", &cfg->name);
      p.Uint64(m, "seed", &cfg->training.seed);
      p.Int(m, "rounds", &cfg->training.rounds);
      if (!name_set) p.Error("campaign.name", f->key_node, "missing required key");
    }
  } else {
    diag->Add(Where{source, LineOf(root) > 0 ? LineOf(root) : 1, "campaign.name"}, "missing required key");
  }
  if (!name_set) state->bad.insert("campaign.name");

  if (const auto* f = top.Find("model")) {
    MapFields m;
    if (p.Map(f->value, "model", kModelKeys, &m)) {
      p.Int(m, "layers", &cfg->model.layers);
      p.Int(m, "d_model", &cfg->model.d_model);
      p.Int(m, "heads", &cfg->model.heads);
      p.Int(m, "context", &cfg->model.context);
      p.Int(m, "vocab", &cfg->model.vocab);
      int arch = 0;
      if (p.Enum(m, "arch", kArchNames, &arch)) cfg->model.arch = static_cast<ModelArch>(arch);
      p.Int(m, "kv_heads", &cfg->model.kv_heads);
      p.Int(m, "ffn_hidden", &cfg->model.ffn_hidden);
      p.Double(m, "rope_theta", &cfg->model.rope_theta);
      p.Double(m, "norm_eps", &cfg->model.norm_eps);
      p.String(m, "init_from", &cfg->model.init_from);
    }
  }

  if (const auto* f = top.Find("training")) {
    MapFields m;
    if (p.Map(f->value, "training", kTrainingKeys, &m)) {
      p.Int(m, "inner_steps", &cfg->training.inner_steps);
      p.Int(m, "batch_size", &cfg->training.batch_size);
      p.Int(m, "eval_batches", &cfg->training.eval_batches);
      p.Int(m, "eval_every", &cfg->training.eval_every);
      int overlap = 0;
      if (p.Enum(m, "overlap", {"false", "true"}, &overlap)) cfg->training.overlap = overlap == 1;
      int precision = 0;
      if (p.Enum(m, "precision", {"auto", "fp32", "tf32", "bf16"}, &precision)) {
        cfg->training.precision = static_cast<Precision>(precision);
      }
      if (const auto* g = m.Find("adaptive_steps")) {
        MapFields a;
        AdaptiveStepsConfig& ad = cfg->training.adaptive;
        if (p.Map(g->value, "training.adaptive_steps", kAdaptiveKeys, &a)) {
          int enabled = ad.enabled ? 1 : 0;
          if (p.Enum(a, "enabled", {"false", "true"}, &enabled)) ad.enabled = enabled == 1;
          p.Double(a, "round_time_s", &ad.round_time_s);
          p.Int(a, "min_inner_steps", &ad.min_inner_steps);
          p.Int(a, "max_inner_steps", &ad.max_inner_steps);
        }
      }
      if (const auto* g = m.Find("inner_optimizer")) {
        MapFields o;
        InnerOptimizerConfig& in = cfg->training.inner;
        if (p.Map(g->value, "training.inner_optimizer", kInnerKeys, &o)) {
          int unused = 0;
          p.Enum(o, "name", {"adamw"}, &unused);
          p.Double(o, "lr", &in.lr);
          if (const auto* b = o.Find("betas")) {
            const std::string path = "training.inner_optimizer.betas";
            if (!b->value.IsSequence() || b->value.size() != 2) {
              p.Error(path, b->value, "expected a list of two numbers, got " + Describe(b->value),
                      "[beta1, beta2], each in [0, 1)");
              p.MarkBad(path + "[0]");
              p.MarkBad(path + "[1]");
            } else {
              double* dst[2] = {&in.beta1, &in.beta2};
              for (size_t i = 0; i < 2; ++i) {
                const YAML::Node item = b->value[i];
                const std::string item_path = path + "[" + std::to_string(i) + "]";
                p.Record(item_path, item);
                if (!item.IsScalar() || !ParseDouble(item.Scalar(), dst[i])) {
                  p.TypeError(item_path, item, "a finite number");
                }
              }
            }
          }
          p.Double(o, "eps", &in.eps);
          p.Double(o, "weight_decay", &in.weight_decay);
          p.Double(o, "grad_clip", &in.grad_clip);
          p.Int(o, "warmup_steps", &in.warmup_steps);
        }
      }
    }
  }

  if (const auto* f = top.Find("outer_optimizer")) ParseOuterOptimizer(&p, f->value, &cfg->outer);

  bool downlink_set = false;
  if (const auto* f = top.Find("codec")) ParseCodec(&p, f->value, &cfg->codec, &downlink_set);

  bool expected_set = false;
  bool min_set = false;
  if (const auto* f = top.Find("quorum")) {
    MapFields m;
    if (p.Map(f->value, "quorum", kQuorumKeys, &m)) {
      expected_set = m.Find("expected_workers") != nullptr;
      min_set = m.Find("min_workers") != nullptr;
      p.Int(m, "expected_workers", &cfg->quorum.expected_workers);
      p.Int(m, "min_workers", &cfg->quorum.min_workers);
      p.Double(m, "round_deadline_s", &cfg->quorum.round_deadline_s);
      p.Double(m, "max_norm_ratio", &cfg->quorum.max_norm_ratio);
      p.Double(m, "start_timeout_s", &cfg->quorum.start_timeout_s);
      int rule = 0;
      if (p.Enum(m, "aggregation", kAggregationNames, &rule)) {
        cfg->quorum.aggregation = static_cast<AggregationRule>(rule);
      }
      int weighting = 0;
      if (p.Enum(m, "weighting", kWeightingNames, &weighting)) {
        cfg->quorum.weighting = static_cast<AggregationWeighting>(weighting);
      }
    }
  }

  if (const auto* f = top.Find("network")) {
    MapFields m;
    if (p.Map(f->value, "network", kNetworkKeys, &m)) {
      p.String(m, "bind", &cfg->network.bind);
      p.String(m, "control", &cfg->network.control);
      p.Int(m, "heartbeat_interval_ms", &cfg->network.heartbeat_interval_ms);
      p.Int(m, "heartbeat_timeout_ms", &cfg->network.heartbeat_timeout_ms);
      p.String(m, "security", &cfg->network.security);
      p.Int64(m, "max_message_bytes", &cfg->network.max_message_bytes);
      p.String(m, "metrics", &cfg->network.metrics);
      for (auto [key, field] : {std::pair<const char*, std::string*>{"server_key", &cfg->network.server_key},
                                {"site_keys", &cfg->network.site_keys},
                                {"operator_keys", &cfg->network.operator_keys},
                                {"dashboard_token", &cfg->network.dashboard_token}}) {
        if (p.String(m, key, field)) *field = ResolveRelative(source, *field);
      }
    }
  }

  if (const auto* f = top.Find("output")) {
    MapFields m;
    if (p.Map(f->value, "output", kOutputKeys, &m)) {
      p.String(m, "run_dir", &cfg->output.run_dir);
      p.String(m, "metrics_file", &cfg->output.metrics_file);
    }
  }

  if (const auto* f = top.Find("pipeline")) {
    MapFields m;
    if (p.Map(f->value, "pipeline", kPipelineKeys, &m)) {
      PipelineConfig& pc = cfg->pipeline;
      p.Int(m, "stages", &pc.stages);
      p.Int(m, "replicas", &pc.replicas);
      p.Int(m, "ratio", &pc.ratio);
      int dtype = 0;
      if (p.Enum(m, "wire_dtype", kWireDtypeNames, &dtype)) pc.wire_dtype = static_cast<WireDtype>(dtype);
      p.Int(m, "micro_batches", &pc.micro_batches);
      int schedule = 1;
      if (p.Enum(m, "schedule", kScheduleNames, &schedule)) pc.schedule = kScheduleNames[schedule];
      p.Double(m, "link_mbit", &pc.link_mbit);
      p.Int(m, "peer_timeout_ms", &pc.peer_timeout_ms);
      if (const auto* sp = m.Find("split")) ParseCountList(&p, sp->value, "pipeline.split", "block", &pc.split);
    }
  }

  if (const auto* f = top.Find("personalization")) {
    MapFields m;
    if (p.Map(f->value, "personalization", kPersonalizationKeys, &m)) {
      PersonalizationConfig& pc = cfg->personalization;
      p.StringList(m, "tensors", &pc.tensors);
      if (const auto* cl = m.Find("clusters")) {
        const std::string path = "personalization.clusters";
        if (!cl->value.IsMap()) {
          p.TypeError(path, cl->value, "a map of cluster name to a list of site names");
          p.MarkBad(path);
        } else {
          MapFields clusters;
          std::vector<std::string> names;
          for (const auto& kv : cl->value) names.push_back(kv.first.Scalar());
          if (p.Map(cl->value, path, names, &clusters)) {
            for (const std::string& name : names) {
              std::vector<std::string> sites;
              if (p.StringList(clusters, name, &sites)) pc.clusters.emplace_back(name, std::move(sites));
            }
          }
        }
      }
    }
  }

  if (const auto* f = top.Find("fpld")) {
    MapFields m;
    if (p.Map(f->value, "fpld", kFpldKeys, &m)) {
      FpldConfig& fc = cfg->fpld;
      fc.enabled = true;
      if (const auto* pr = m.Find("probes")) {
        MapFields d;
        if (p.Map(pr->value, "fpld.probes", kDataKeys, &d)) {
          if (p.String(d, "dir", &fc.probes.dir)) fc.probes.dir = ResolveRelative(source, fc.probes.dir);
          p.StringList(d, "files", &fc.probes.files);
          p.Double(d, "validation_fraction", &fc.probes.validation_fraction);
        }
      }
      p.Int(m, "contexts", &fc.contexts);
      p.Int(m, "positions", &fc.positions);
      p.Int(m, "bits", &fc.bits);
      p.Double(m, "clip", &fc.clip);
      p.Int(m, "topk", &fc.topk);
      p.Int(m, "student_steps", &fc.student_steps);
      p.Double(m, "student_lr", &fc.student_lr);
      p.Int(m, "student_batch", &fc.student_batch);
      p.Int(m, "student_eval_batches", &fc.student_eval_batches);
      int exact = 0;
      if (p.Enum(m, "exact_reference", {"false", "true"}, &exact)) fc.exact_reference = exact == 1;
    }
  }

  if (const auto* f = top.Find("fcrag")) {
    MapFields m;
    if (p.Map(f->value, "fcrag", kFcragKeys, &m)) {
      FcragConfig& fc = cfg->fcrag;
      fc.enabled = true;
      p.StringList(m, "labels", &fc.labels);
      p.Int(m, "retrieve_k", &fc.retrieve_k);
      p.Double(m, "smoothing", &fc.smoothing);
      p.Int(m, "score_bits", &fc.score_bits);
      p.Double(m, "score_max", &fc.score_max);
      p.Int(m, "summary_bits", &fc.summary_bits);
      p.Double(m, "alpha", &fc.alpha);
      p.Double(m, "calibration_fraction", &fc.calibration_fraction);
      p.Int(m, "trials", &fc.trials);
      p.Int(m, "min_chars", &fc.min_chars);
      p.Int(m, "max_chars", &fc.max_chars);
      int serve = 0;
      if (p.Enum(m, "serve", {"false", "true"}, &serve)) fc.serve = serve == 1;
    }
  }

  if (const auto* f = top.Find("parablock")) {
    MapFields m;
    if (p.Map(f->value, "parablock", kParaBlockKeys, &m)) {
      ParaBlockConfig& pb = cfg->parablock;
      p.Int(m, "blocks", &pb.blocks);
      int schedule = 0;
      if (p.Enum(m, "schedule", {"cyclic", "random"}, &schedule)) pb.random = schedule == 1;
      int assignment = 0;
      if (p.Enum(m, "assignment", {"per_worker", "shared"}, &assignment)) pb.per_worker = assignment == 0;
      if (const auto* sp = m.Find("split")) ParseCountList(&p, sp->value, "parablock.split", "layers", &pb.split);
    }
  }

  if (const auto* f = top.Find("checkpoint")) {
    MapFields m;
    if (p.Map(f->value, "checkpoint", kCheckpointKeys, &m)) {
      p.Int(m, "every", &cfg->checkpoint.every);
      p.Int(m, "keep", &cfg->checkpoint.keep);
    }
  }

  if (const auto* f = top.Find("sites")) {
    const YAML::Node& list = f->value;
    if (!list.IsNull() && !list.IsSequence()) {
      p.TypeError("sites", list, "a list of sites");
    } else if (list.IsSequence()) {
      for (size_t i = 0; i < list.size(); ++i) {
        // Every item yields a SiteConfig, even a broken one, so that
        // cfg->sites[i] and the canonical path "sites[i]" stay aligned.
        cfg->sites.push_back(ParseSiteItem(&p, list[i], i, source, cfg->network.bind, diag, state));
      }
    }
  }

  if (!expected_set && !cfg->sites.empty()) {
    cfg->quorum.expected_workers = static_cast<int>(cfg->sites.size());
  }
  if (!min_set) {
    cfg->quorum.min_workers = cfg->quorum.expected_workers;
    if (state->bad.count("quorum.expected_workers")) state->bad.insert("quorum.min_workers");
  }
  // SparseLoCo campaigns compress the downlink too where they can: every
  // site holds the whole model and the coordinator takes a plain mean.
  if (!downlink_set) {
    cfg->codec.downlink = cfg->codec.kind == CodecKind::kSparseLoCo && WholeModelMean(*cfg) ? CodecKind::kSparse2Bit
                                                                                            : CodecKind::kSparseFp32;
  }
}

bool ParseSiteTree(const YAML::Node& root, const std::string& source, Diagnostics* diag, ParseState* state,
                   SiteConfig* site) {
  state->lines[""] = Where{source, 1, ""};
  Parser p(source, "", "", diag, state);
  bool coordinator_set = false;
  return ParseSiteBody(&p, root, "", kSiteFileKeys, source, site, &coordinator_set);
}

}  // namespace config_internal
}  // namespace lowband
