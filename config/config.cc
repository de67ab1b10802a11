// Campaign and site configuration loading with yaml-cpp.
//
// Loading happens in two passes so that every problem is reported at once:
//  1. Parse: walk the YAML tree, reject unknown/duplicate keys and values of
//     the wrong type, fill the structs, and remember the file and line of
//     every key seen (a LineMap keyed by a canonical key path).
//  2. Check: range and cross-field rules on the filled structs. The same
//     checks back ValidateCampaign() for configs built in code; the LineMap
//     only decides where an error is reported.
// yaml-cpp throws; every call into it stays inside this file under a catch.
#include "config/config.h"
#include "base/hash.h"

#include <arpa/inet.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include <yaml-cpp/yaml.h>

namespace lowband {

const char* OuterOptimizerName(OuterOptimizerKind kind) {
  switch (kind) {
    case OuterOptimizerKind::kNesterov: return "nesterov";
    case OuterOptimizerKind::kSgd: return "sgd";
    case OuterOptimizerKind::kFedAvg: return "fedavg";
  }
  return "unknown";
}

const char* WireDtypeName(WireDtype d) {
  switch (d) {
    case WireDtype::kFp32: return "fp32";
    case WireDtype::kBf16: return "bf16";
    case WireDtype::kFp16: return "fp16";
  }
  return "unknown";
}

const char* CodecName(CodecKind kind) {
  switch (kind) {
    case CodecKind::kDenseFp32: return "dense_fp32";
    case CodecKind::kDenseBf16: return "dense_bf16";
    case CodecKind::kInt8: return "int8";
    case CodecKind::kSparseLoCo: return "sparseloco";
    case CodecKind::kSparseFp32: return "sparse_fp32";
  }
  return "unknown";
}

const char* WeightingName(AggregationWeighting w) {
  return w == AggregationWeighting::kTokens ? "tokens" : "uniform";
}

const char* AggregationName(AggregationRule rule) {
  switch (rule) {
    case AggregationRule::kMeanAll: return "mean";
    case AggregationRule::kMeanChoosers: return "mean_of_choosers";
  }
  return "unknown";
}

namespace {

// A config file is small; anything bigger is a mistake (wrong path), and
// bounding it keeps a stray multi-GB file from being slurped into memory.
constexpr size_t kMaxConfigFileBytes = 16u << 20;

// Sanity bounds: they keep products such as layers * d_model^2 far from
// overflow and catch typos (an extra zero) before a worker allocates.
constexpr int kMaxLayers = 256;
constexpr int kMaxDModel = 16384;
constexpr int kMaxContext = 1 << 20;
constexpr int kByteVocab = 256;
constexpr int kMaxThreads = 1024;
// sparseloco: topk counts values kept per full chunk of this many (codec/codec.h kChunkElems).
constexpr int kSparseLoCoChunk = 4096;

const char* const kNameChars = "[A-Za-z0-9_.-]+";

// ---------------------------------------------------------------------------
// Diagnostics

// Where an error is reported: file, 1-based line (0 = unknown) and the key
// path as the user sees it in that file.
struct Where {
  std::string file;
  int line = 0;
  std::string key;
};

// Collects error lines from several files and returns them sorted by file
// (in order of first appearance) and line, so the report reads top-down.
class Diagnostics {
 public:
  // A key path that a --set wrote (or created on the way) in `file`: errors
  // at or under it are about the command line, not about a line of the file.
  struct Override {
    std::string owned;  // canonical path of the shallowest node the set wrote
    std::string key;    // KEY as the user wrote it
  };
  void SetOverrides(std::string file, std::vector<Override> overrides) {
    override_file_ = std::move(file);
    overrides_ = std::move(overrides);
  }

  void Add(const Where& at, const std::string& problem, const std::string& allowed = "") {
    const Where where = Redirect(at);
    std::string text = where.file;
    if (where.line > 0) text += ":" + std::to_string(where.line);
    text += ": ";
    if (!where.key.empty()) text += where.key + ": ";
    text += problem;
    if (!allowed.empty()) text += " (allowed: " + allowed + ")";
    entries_.push_back({Rank(where.file), where.line, entries_.size(), std::move(text)});
  }

  bool empty() const { return entries_.empty(); }

  Status ToStatus() const {
    if (entries_.empty()) return Status::Ok();
    std::vector<Entry> sorted = entries_;
    std::sort(sorted.begin(), sorted.end(), [](const Entry& a, const Entry& b) {
      if (a.rank != b.rank) return a.rank < b.rank;
      if (a.line != b.line) return a.line < b.line;
      return a.seq < b.seq;
    });
    std::string message;
    std::set<std::string> seen;  // one mistake may trip a check twice
    for (const Entry& e : sorted) {
      if (!seen.insert(e.text).second) continue;
      if (!message.empty()) message += "\n";
      message += e.text;
    }
    return InvalidArgument(std::move(message));
  }

  // Fixes the report order of a file before any error in it is added.
  void RegisterFile(const std::string& file) { Rank(file); }

 private:
  struct Entry {
    size_t rank;
    int line;
    size_t seq;
    std::string text;
  };

  size_t Rank(const std::string& file) {
    for (size_t i = 0; i < files_.size(); ++i) {
      if (files_[i] == file) return i;
    }
    files_.push_back(file);
    return files_.size() - 1;
  }

  // The last set wins, as when they were applied.
  Where Redirect(const Where& where) const {
    if (overrides_.empty() || where.file != override_file_) return where;
    for (auto it = overrides_.rbegin(); it != overrides_.rend(); ++it) {
      const std::string& o = it->owned;
      const bool under = where.key == o || (where.key.size() > o.size() && where.key.compare(0, o.size(), o) == 0 &&
                                            (where.key[o.size()] == '.' || where.key[o.size()] == '['));
      if (!under) continue;
      return Where{"--set " + it->key, 0, where.key == it->key ? "" : where.key};
    }
    return where;
  }

  std::vector<std::string> files_;
  std::vector<Entry> entries_;
  std::string override_file_;
  std::vector<Override> overrides_;
};

// What the parse pass learnt about positions, for the check pass.
struct ParseState {
  // Canonical key path ("sites[0].site.name") -> where it was written.
  std::map<std::string, Where> lines;
  // Canonical paths whose value is unknown (type error) or derived from
  // another key; checks on them would only repeat an error.
  std::set<std::string> bad;
};

// ---------------------------------------------------------------------------
// Scalars and small helpers

std::string Join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string JoinList(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) {
    if (!out.empty()) out += ", ";
    out += s;
  }
  return out;
}

std::string FormatDouble(double v) {
  std::ostringstream os;
  os.imbue(std::locale::classic());
  os << v;
  return os.str();
}

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

bool ValidName(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

bool AllDigits(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

bool ValidDevice(const std::string& s) {
  if (s == "cpu" || s == "cuda") return true;
  if (s.rfind("cuda:", 0) != 0) return false;
  std::string n = s.substr(5);
  return AllDigits(n) && n.size() <= 4;
}

// A ZeroMQ endpoint we accept: tcp://HOST:PORT or ipc://PATH.
struct Endpoint {
  std::string scheme;  // "tcp" or "ipc"
  std::string host;    // tcp: as written, brackets kept for IPv6
  int port = 0;
  std::string path;    // ipc
};

const char* const kEndpointForms = "tcp://HOST:PORT, ipc://PATH";

bool ValidHost(const std::string& host) {
  if (host == "*") return true;
  if (host.size() >= 3 && host.front() == '[' && host.back() == ']') {
    for (size_t i = 1; i + 1 < host.size(); ++i) {
      char c = host[i];
      bool ok = std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.';
      if (!ok) return false;
    }
    return true;
  }
  if (host.empty() || host.size() > 253) return false;
  for (char c : host) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}

bool ParseEndpoint(const std::string& s, Endpoint* ep) {
  if (s.rfind("ipc://", 0) == 0) {
    ep->scheme = "ipc";
    ep->path = s.substr(6);
    return !ep->path.empty();
  }
  if (s.rfind("tcp://", 0) != 0) return false;
  std::string rest = s.substr(6);
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = rest.substr(0, colon);
  std::string port = rest.substr(colon + 1);
  if (!ValidHost(host) || !AllDigits(port) || port.size() > 5) return false;
  int p = std::atoi(port.c_str());
  if (p < 1 || p > 65535) return false;
  ep->scheme = "tcp";
  ep->host = host;
  ep->port = p;
  return true;
}

bool IsLoopbackIpv4(const std::string& host) {
  // 127.0.0.0/8, written as four dotted decimal octets.
  if (host.rfind("127.", 0) != 0) return false;
  int parts = 0;
  size_t start = 0;
  while (start <= host.size()) {
    size_t dot = host.find('.', start);
    std::string octet = host.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!AllDigits(octet) || octet.size() > 3 || std::atoi(octet.c_str()) > 255) return false;
    ++parts;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts == 4;
}

bool IsLoopback(const Endpoint& ep) {
  if (ep.scheme == "ipc") return true;
  return ep.host == "localhost" || ep.host == "[::1]" || IsLoopbackIpv4(ep.host);
}

// A local worker cannot connect to a wildcard bind address; it dials the
// loopback address of the same port instead.
std::string BindToConnect(const std::string& bind) {
  Endpoint ep;
  if (!ParseEndpoint(bind, &ep) || ep.scheme != "tcp") return bind;
  if (ep.host == "*" || ep.host == "0.0.0.0") return "tcp://127.0.0.1:" + std::to_string(ep.port);
  if (ep.host == "[::]") return "tcp://[::1]:" + std::to_string(ep.port);
  return bind;
}

std::string ResolveRelative(const std::string& base_file, const std::string& p) {
  namespace fs = std::filesystem;
  fs::path path(p);
  if (p.empty() || path.is_absolute()) return p;
  fs::path dir = fs::path(base_file).parent_path();
  if (dir.empty()) return path.lexically_normal().string();
  return (dir / path).lexically_normal().string();
}

// Reads a whole config file. NotFound names the path and the OS reason.
StatusOr<std::string> ReadConfigFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NotFound(path + ": cannot open: " + std::strerror(errno));
  std::string text;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return NotFound(path + ": cannot read: " + std::strerror(err));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxConfigFileBytes) {
      ::close(fd);
      return InvalidArgument(path + ": larger than " + std::to_string(kMaxConfigFileBytes) +
                             " bytes; not a config file");
    }
  }
  ::close(fd);
  return text;
}

int LineOf(const YAML::Node& node) {
  try {
    YAML::Mark m = node.Mark();
    return m.is_null() ? 0 : m.line + 1;
  } catch (const std::exception&) {
    return 0;
  }
}

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

// ---------------------------------------------------------------------------
// Parse pass

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
          site->model = ModelConfig{4, 128, 4, 0, 0};  // context and vocab: the campaign's
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
// Check pass

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

constexpr int kMaxRankTimeoutS = 86400;

// A DNS-style host name: dot-separated labels of letters, digits and '-'
// (not at either end of a label), at most 253 characters.
bool ValidDnsName(const std::string& host) {
  if (host.empty() || host.size() > 253) return false;
  size_t start = 0;
  while (true) {
    const size_t dot = host.find('.', start);
    const std::string label = host.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    for (char c : label) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
      if (!ok) return false;
    }
    if (dot == std::string::npos) return true;
    start = dot + 1;
  }
}

// site.rendezvous: HOST:PORT of rank 0's c10d store, which the other ranks
// (possibly on other hosts) dial: an IPv4 address, localhost or a DNS name,
// and a concrete port 1..65535.
bool ValidRendezvous(const std::string& v) {
  const size_t colon = v.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  const std::string host = v.substr(0, colon);
  const std::string port = v.substr(colon + 1);
  if (!AllDigits(port) || port.size() > 5) return false;
  const long p = std::atol(port.c_str());
  if (p < 1 || p > 65535) return false;
  if (host == "localhost") return true;
  in_addr addr{};
  if (::inet_pton(AF_INET, host.c_str(), &addr) == 1) return true;
  // Digits and dots only but not an IPv4 address (999.1.1.1, 10.0.0): a typo.
  if (host.find_first_not_of("0123456789.") == std::string::npos) return false;
  return ValidDnsName(host);
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

  const TrainingConfig& t = cfg.training;
  c->IntRange("training.inner_steps", t.inner_steps, 1, kIntMax);
  c->IntRange("training.batch_size", t.batch_size, 1, kIntMax);
  c->IntRange("training.eval_batches", t.eval_batches, 1, kIntMax);
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
  if (codec.kind == CodecKind::kSparseFp32) {
    c->Error("codec.name", "'sparse_fp32' is the coordinator's downlink format and cannot be chosen for uploads",
             "dense_fp32, dense_bf16, int8, sparseloco");
  }
  if (codec.kind == CodecKind::kSparseLoCo) c->IntRange("codec.topk", codec.topk, 1, kSparseLoCoChunk);
  // Checked for every codec so a typo is caught before it matters; dense_fp32
  // is lossless and ignores it.
  c->DoubleRange("codec.error_feedback", codec.error_feedback, 0, true, 1, false);

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
const std::vector<std::string> kModelKeys = {"layers", "d_model", "heads", "context", "vocab"};
const std::vector<std::string> kTrainingKeys = {"inner_steps", "batch_size", "eval_batches", "inner_optimizer",
                                                "adaptive_steps", "overlap"};
const std::vector<std::string> kAdaptiveKeys = {"enabled", "round_time_s", "min_inner_steps", "max_inner_steps"};
const std::vector<std::string> kWeightingNames = {"tokens", "uniform"};
const std::vector<std::string> kInnerKeys = {"name",         "lr",        "betas",       "eps",
                                             "weight_decay", "grad_clip", "warmup_steps"};
const std::vector<std::string> kOuterNames = {"nesterov", "sgd", "fedavg"};
// Index i is CodecKind(i); sparse_fp32 (the coordinator's downlink
// aggregate) comes last in the enum and is deliberately left out.
const std::vector<std::string> kCodecNames = {"dense_fp32", "dense_bf16", "int8", "sparseloco"};
const std::vector<std::string> kCodecKeys = {"name", "topk", "density", "error_feedback"};
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

void ParseCodec(Parser* p, const YAML::Node& node, CodecConfig* codec) {
  MapFields m;
  if (!p->Map(node, "codec", kCodecKeys, &m)) return;
  bool name_ok = true;
  if (const auto* f = m.Find("name"); f != nullptr && f->value.IsScalar() &&
                                      f->value.Scalar() == CodecName(CodecKind::kSparseFp32)) {
    // A real codec name, but only the coordinator produces it.
    p->Error("codec.name", f->value,
             "'sparse_fp32' is the coordinator's downlink format and cannot be chosen for uploads",
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
    }
  }

  if (const auto* f = top.Find("training")) {
    MapFields m;
    if (p.Map(f->value, "training", kTrainingKeys, &m)) {
      p.Int(m, "inner_steps", &cfg->training.inner_steps);
      p.Int(m, "batch_size", &cfg->training.batch_size);
      p.Int(m, "eval_batches", &cfg->training.eval_batches);
      int overlap = 0;
      if (p.Enum(m, "overlap", {"false", "true"}, &overlap)) cfg->training.overlap = overlap == 1;
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

  if (const auto* f = top.Find("codec")) ParseCodec(&p, f->value, &cfg->codec);

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
}

// ---------------------------------------------------------------------------
// --set overrides

// One step of a --set KEY: a map key, or an index into a list.
struct SetStep {
  bool is_index = false;
  std::string key;
  size_t index = 0;
};

struct SetSpec {
  std::string key;  // KEY as written
  std::vector<SetStep> steps;
  YAML::Node value;
};

std::string StepsPath(const std::vector<SetStep>& steps, size_t n) {
  std::string path;
  for (size_t i = 0; i < n; ++i) {
    path = steps[i].is_index ? path + "[" + std::to_string(steps[i].index) + "]" : Join(path, steps[i].key);
  }
  return path;
}

bool KeyChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

const char* const kSetKeyForms = "dotted map keys such as codec.name or sites[0].site.threads";

// Splits "a.b[2].c" into steps; false (reported) on bad syntax.
bool ParseSetKey(const std::string& key, const std::string& where, Diagnostics* diag, std::vector<SetStep>* steps) {
  auto fail = [&](const std::string& problem) {
    diag->Add(Where{where, 0, ""}, problem, kSetKeyForms);
    return false;
  };
  if (key.empty()) return fail("empty KEY in KEY=VALUE");
  size_t i = 0;
  while (true) {
    const size_t start = i;
    while (i < key.size() && KeyChar(key[i])) ++i;
    if (i == start) {
      if (i == key.size() || key[i] == '.') return fail("empty key segment in '" + key + "'");
      return fail("unexpected '" + std::string(1, key[i]) + "' in '" + key + "'");
    }
    steps->push_back(SetStep{false, key.substr(start, i - start), 0});
    while (i < key.size() && key[i] == '[') {
      const size_t close = key.find(']', i);
      const std::string digits = close == std::string::npos ? "" : key.substr(i + 1, close - i - 1);
      if (!AllDigits(digits) || digits.size() > 9) return fail("bad list index in '" + key + "'");
      steps->push_back(SetStep{true, "", static_cast<size_t>(std::atol(digits.c_str()))});
      i = close + 1;
    }
    if (i == key.size()) return true;
    if (key[i] != '.') return fail("unexpected '" + std::string(1, key[i]) + "' in '" + key + "'");
    ++i;
    if (i == key.size()) return fail("empty key segment in '" + key + "'");
  }
}

// Reads every KEY=VALUE; reports every malformed one.
bool ParseSets(const std::vector<std::string>& sets, Diagnostics* diag, std::vector<SetSpec>* out) {
  bool ok = true;
  for (const std::string& arg : sets) {
    const size_t eq = arg.find('=');
    // Errors about sets are listed in command-line order.
    diag->RegisterFile("--set " + (eq == std::string::npos || eq == 0 ? arg : arg.substr(0, eq)));
    if (eq == std::string::npos) {
      diag->Add(Where{"--set " + arg, 0, ""}, "expected KEY=VALUE, e.g. codec.name=sparseloco");
      ok = false;
      continue;
    }
    SetSpec spec;
    spec.key = arg.substr(0, eq);
    const std::string where = "--set " + (spec.key.empty() ? arg : spec.key);
    if (!ParseSetKey(spec.key, where, diag, &spec.steps)) {
      ok = false;
      continue;
    }
    // An empty VALUE is YAML's null, as `key:` with nothing after it.
    try {
      spec.value = YAML::Load(arg.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      diag->Add(Where{where, 0, ""}, "VALUE is not valid YAML: " + e.msg,
                "a scalar or a flow node such as {name: int8} or [0.9, 0.95]");
      ok = false;
      continue;
    }
    out->push_back(std::move(spec));
  }
  return ok;
}

// Writes one set into `root` (a map; a null document becomes one). Reports
// and returns false when the path cannot be followed. *owned is the
// canonical path of the shallowest node the set created or replaced.
bool ApplySet(YAML::Node* root, const SetSpec& set, Diagnostics* diag, std::string* owned) {
  auto fail = [&](const std::string& problem) {
    diag->Add(Where{"--set " + set.key, 0, ""}, problem);
    return false;
  };
  if (root->IsNull()) root->reset(YAML::Node(YAML::NodeType::Map));
  if (!root->IsMap()) return fail("the campaign document is " + Describe(*root) + ", not a map");
  owned->clear();
  YAML::Node container;
  container.reset(*root);
  for (size_t i = 0; i < set.steps.size(); ++i) {
    const SetStep& step = set.steps[i];
    const std::string path = StepsPath(set.steps, i);
    const std::string here = StepsPath(set.steps, i + 1);
    const bool last = i + 1 == set.steps.size();
    if (step.is_index) {
      // Only an existing item can be indexed: the list's other items would
      // otherwise have to be invented.
      if (step.index >= container.size()) {
        return fail(here + ": no such item (" + path + " has " + std::to_string(container.size()) + ")");
      }
      if (last) {
        container[step.index] = set.value;
        if (owned->empty()) *owned = here;
        return true;
      }
    } else if (last) {
      container[step.key] = set.value;
      if (owned->empty()) *owned = here;
      return true;
    }
    // Descend. Const lookups, so that a missing key is not inserted (and a
    // Node is never assigned to another: yaml-cpp would alias them).
    auto lookup = [&]() {
      const YAML::Node& view = container;
      return step.is_index ? view[step.index] : view[step.key];
    };
    const YAML::Node child = lookup();
    if (set.steps[i + 1].is_index) {
      if (!child.IsDefined() || !child.IsSequence()) {
        return fail(here + " is " + (child.IsDefined() ? Describe(child) : "missing") + ", not a list");
      }
      container.reset(child);
    } else if (!child.IsDefined() || child.IsNull()) {
      if (step.is_index) {
        container[step.index] = YAML::Node(YAML::NodeType::Map);
      } else {
        container[step.key] = YAML::Node(YAML::NodeType::Map);
      }
      if (owned->empty()) *owned = here;
      container.reset(lookup());
    } else if (!child.IsMap()) {
      return fail(here + " is " + Describe(child) + ", not a map");
    } else {
      container.reset(child);
    }
  }
  return true;  // unreachable: a key has at least one step
}

// Applies every set in order; reports every one that fails.
bool ApplySets(YAML::Node* root, const std::vector<SetSpec>& sets, Diagnostics* diag,
               std::vector<Diagnostics::Override>* applied) {
  bool ok = true;
  for (const SetSpec& set : sets) {
    std::string owned;
    if (ApplySet(root, set, diag, &owned)) {
      applied->push_back({owned, set.key});
    } else {
      ok = false;
    }
  }
  return ok;
}

// Makes the relative paths that the loader resolves against the campaign
// file (sites[i].file, inline sites[i].data.dir) absolute, so the document
// means the same when saved in another directory.
void AnchorSitePaths(YAML::Node root, const std::string& source) {
  namespace fs = std::filesystem;
  // Const lookups throughout: a non-const operator[] on a missing key would
  // leave an undefined entry behind.
  auto find = [](const YAML::Node& map, const char* key) { return map[key]; };
  // Rewrites map[key] when it is a relative path.
  auto anchor = [&](YAML::Node map, const char* key) {
    const YAML::Node v = find(map, key);
    if (!v.IsDefined() || !v.IsScalar() || v.Scalar().empty() || fs::path(v.Scalar()).is_absolute()) return;
    map[key] = fs::absolute(ResolveRelative(source, v.Scalar())).lexically_normal().string();
  };
  if (const YAML::Node net = find(root, "network"); net.IsDefined() && net.IsMap()) {
    for (const char* key : {"server_key", "site_keys", "operator_keys", "dashboard_token"}) anchor(net, key);
  }
  const YAML::Node sites = find(root, "sites");
  if (!sites.IsDefined() || !sites.IsSequence()) return;
  for (size_t i = 0; i < sites.size(); ++i) {
    const YAML::Node item = sites[i];
    if (!item.IsMap()) continue;
    if (find(item, "file").IsDefined()) {
      anchor(item, "file");
    } else {
      if (const YAML::Node data = find(item, "data"); data.IsDefined() && data.IsMap()) anchor(data, "dir");
      if (const YAML::Node site = find(item, "site"); site.IsDefined() && site.IsMap()) {
        anchor(site, "key");
        anchor(site, "server_key");
      }
    }
  }
}

std::string EmitYaml(const YAML::Node& root) {
  YAML::Emitter out;
  out << root;
  std::string text = out.c_str();
  if (text.empty() || text.back() != '\n') text += "\n";
  return text;
}

}  // namespace

StatusOr<std::string> ApplyOverrides(const std::string& yaml_text, const std::vector<std::string>& sets) {
  const std::string source = "<campaign>";
  Diagnostics diag;
  try {
    std::vector<SetSpec> specs;
    const bool sets_ok = ParseSets(sets, &diag, &specs);
    YAML::Node root;
    if (!LoadYaml(yaml_text, source, &diag, &root)) return diag.ToStatus();
    std::vector<Diagnostics::Override> applied;
    // The well-formed sets are applied even after a malformed one, so that
    // their path errors are reported too.
    if (!ApplySets(&root, specs, &diag, &applied) || !sets_ok) return diag.ToStatus();
    return EmitYaml(root);
  } catch (const std::exception& e) {
    diag.Add(Where{source, 0, ""}, std::string("cannot interpret YAML: ") + e.what());
    return diag.ToStatus();
  }
}

StatusOr<MergedCampaign> LoadCampaignWithOverrides(const std::string& path, const std::vector<std::string>& sets) {
  StatusOr<std::string> text = ReadConfigFile(path);
  if (!text.ok()) return text.status();
  Diagnostics diag;
  diag.RegisterFile(path);
  ParseState state;
  MergedCampaign merged;
  merged.config.source = path;
  YAML::Node root;
  try {
    std::vector<SetSpec> specs;
    const bool sets_ok = ParseSets(sets, &diag, &specs);
    if (!LoadYaml(*text, path, &diag, &root)) return diag.ToStatus();
    std::vector<Diagnostics::Override> applied;
    // Every malformed set is reported, but the campaign is not checked
    // after one: the check would blame the file for what the set meant to fix.
    if (!ApplySets(&root, specs, &diag, &applied) || !sets_ok) return diag.ToStatus();
    diag.SetOverrides(path, std::move(applied));
    ParseCampaignTree(root, path, &diag, &state, &merged.config);
  } catch (const std::exception& e) {
    diag.Add(Where{path, 0, ""}, std::string("cannot interpret YAML: ") + e.what());
    return diag.ToStatus();
  }
  Checker checker(path, &state, &diag);
  CheckCampaign(merged.config, &checker);
  if (!diag.empty()) return diag.ToStatus();
  try {
    AnchorSitePaths(root, path);
    merged.yaml = EmitYaml(root);
  } catch (const std::exception& e) {
    return InvalidArgument(path + ": cannot write the merged campaign: " + e.what());
  }
  return merged;
}

StatusOr<CampaignConfig> ParseCampaignYaml(const std::string& yaml_text, const std::string& source_name) {
  Diagnostics diag;
  diag.RegisterFile(source_name);
  ParseState state;
  CampaignConfig cfg;
  cfg.source = source_name;
  try {
    YAML::Node root;
    if (!LoadYaml(yaml_text, source_name, &diag, &root)) return diag.ToStatus();
    ParseCampaignTree(root, source_name, &diag, &state, &cfg);
  } catch (const std::exception& e) {
    // A yaml-cpp corner we did not foresee: still a config error, not a crash.
    diag.Add(Where{source_name, 0, ""}, std::string("cannot interpret YAML: ") + e.what());
    return diag.ToStatus();
  }
  Checker checker(source_name, &state, &diag);
  CheckCampaign(cfg, &checker);
  if (!diag.empty()) return diag.ToStatus();
  return cfg;
}

StatusOr<CampaignConfig> LoadCampaignFile(const std::string& path) {
  StatusOr<std::string> text = ReadConfigFile(path);
  if (!text.ok()) return text.status();
  return ParseCampaignYaml(*text, path);
}

bool ValidRendezvousAddress(const std::string& host_port) { return ValidRendezvous(host_port); }

StatusOr<SiteConfig> ParseSiteYaml(const std::string& yaml_text, const std::string& source_name) {
  Diagnostics diag;
  diag.RegisterFile(source_name);
  ParseState state;
  SiteConfig site;
  site.source = source_name;
  try {
    YAML::Node root;
    if (!LoadYaml(yaml_text, source_name, &diag, &root)) return diag.ToStatus();
    state.lines[""] = Where{source_name, 1, ""};
    Parser p(source_name, "", "", &diag, &state);
    bool coordinator_set = false;
    if (!ParseSiteBody(&p, root, "", kSiteFileKeys, source_name, &site, &coordinator_set)) {
      return diag.ToStatus();
    }
  } catch (const std::exception& e) {
    diag.Add(Where{source_name, 0, ""}, std::string("cannot interpret YAML: ") + e.what());
    return diag.ToStatus();
  }
  Checker checker(source_name, &state, &diag);
  CheckSite(site, "", &checker);
  if (!diag.empty()) return diag.ToStatus();
  return site;
}

StatusOr<SiteConfig> LoadSiteFile(const std::string& path) {
  StatusOr<std::string> text = ReadConfigFile(path);
  if (!text.ok()) return text.status();
  return ParseSiteYaml(*text, path);
}

Status ValidateCampaign(const CampaignConfig& config) {
  Diagnostics diag;
  Checker checker(config.source.empty() ? "<campaign>" : config.source, nullptr, &diag);
  CheckCampaign(config, &checker);
  return diag.ToStatus();
}

std::vector<int> StageBlocks(int layers, const PipelineConfig& pipeline) {
  if (!pipeline.split.empty()) return pipeline.split;
  const int s = std::max(pipeline.stages, 1);
  std::vector<int> blocks(static_cast<size_t>(s), layers / s);
  for (int i = 0; i < layers % s; ++i) ++blocks[static_cast<size_t>(i)];
  return blocks;
}

std::string StagePrefix(int stage) { return "stage" + std::to_string(stage) + "."; }

std::vector<int> LayerBlocks(int layers, const ParaBlockConfig& parablock) {
  if (parablock.blocks <= 1) return {};
  PipelineConfig even;  // the same split rule as pipeline stages
  even.stages = parablock.blocks;
  even.split = parablock.split;
  std::vector<int> of_layer;
  const std::vector<int> per_block = StageBlocks(layers, even);
  for (size_t b = 0; b < per_block.size(); ++b) of_layer.insert(of_layer.end(), per_block[b], static_cast<int>(b));
  return of_layer;
}

int BlockForRound(const ParaBlockConfig& parablock, uint64_t seed, uint32_t round, int worker_position,
                  const std::string& site) {
  const int b = std::max(parablock.blocks, 1);
  const uint64_t r = round >= 1 ? round - 1 : 0;
  if (!parablock.random) {
    const uint64_t offset = parablock.per_worker ? static_cast<uint64_t>(std::max(worker_position, 0)) : 0;
    return static_cast<int>((r + offset) % static_cast<uint64_t>(b));
  }
  // SplitMix64 over (seed, round[, site]): the same on every run.
  uint64_t x = seed ^ (0x9e3779b97f4a7c15ull * (r + 1));
  if (parablock.per_worker) x ^= Fnv1a64(site.data(), site.size(), 0xcbf29ce484222325ull);
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return static_cast<int>(x % static_cast<uint64_t>(b));
}

}  // namespace lowband
