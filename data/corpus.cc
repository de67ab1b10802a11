#include "data/corpus.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <system_error>

#include "base/log.h"

namespace lowband {
namespace fs = std::filesystem;

std::string TextProblem(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c == 0) return "NUL byte at offset " + std::to_string(i);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t min_cp;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2, min_cp = 0x80, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, min_cp = 0x800, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, min_cp = 0x10000, cp = c & 0x07;
    } else {
      return "invalid UTF-8 at offset " + std::to_string(i);
    }
    if (i + len > n) return "truncated UTF-8 sequence at offset " + std::to_string(i);
    for (int k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return "invalid UTF-8 at offset " + std::to_string(i);
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return "invalid UTF-8 code point at offset " + std::to_string(i);
    }
    i += len;
  }
  return "";
}

// Splits text into lines without their terminators; a final unterminated
// line counts, a trailing empty one does not.
namespace {

std::vector<std::string> SplitLines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
    start = end + 1;
  }
  return lines;
}

// The file's records: fortune(6) entries when the file has "%" separator
// lines (separators dropped, each record keeps its trailing newline, so
// joined entries are separated by a blank line; blank-only records are
// dropped), else one record per line.
}  // namespace

std::vector<std::string> TextRecords(const std::string& text) {
  const std::vector<std::string> lines = SplitLines(text);
  const bool fortune = std::find(lines.begin(), lines.end(), "%") != lines.end();
  std::vector<std::string> records;
  if (fortune) {
    std::string cur;
    auto flush = [&]() {
      if (cur.find_first_not_of(" \t\n") != std::string::npos) records.push_back(cur);
      cur.clear();
    };
    for (const auto& line : lines) {
      if (line == "%") {
        flush();
      } else {
        cur += line;
        cur += '\n';
      }
    }
    flush();
  } else {
    records = lines;  // joined back with "\n" below
  }
  return records;
}

namespace {

// Joins records with "\n" (so fortune entries are separated by a blank line).
void AppendRecords(const std::vector<std::string>& records, size_t begin, size_t end, std::string* out) {
  for (size_t i = begin; i < end; ++i) {
    if (!out->empty()) *out += '\n';
    *out += records[i];
  }
}

// Splits one file's text: the last validation_fraction of its records go to
// validation (at least one, leaving at least one for training). A file with a
// single record is split by bytes at a UTF-8 character boundary instead.
void SplitFile(const std::string& text, double validation_fraction, std::string* train, std::string* val) {
  const std::vector<std::string> records = TextRecords(text);
  if (records.empty()) return;
  if (records.size() == 1) {
    const std::string& r = records[0];
    size_t cut = static_cast<size_t>(std::floor(r.size() * (1.0 - validation_fraction)));
    cut = std::clamp<size_t>(cut, 1, r.size() > 1 ? r.size() - 1 : 1);
    while (cut < r.size() && (static_cast<unsigned char>(r[cut]) & 0xC0) == 0x80) ++cut;
    AppendRecords({r.substr(0, cut)}, 0, 1, train);
    if (cut < r.size()) AppendRecords({r.substr(cut)}, 0, 1, val);
    return;
  }
  const size_t n = records.size();
  long long n_val = std::llround(validation_fraction * static_cast<double>(n));
  n_val = std::clamp<long long>(n_val, 1, static_cast<long long>(n) - 1);
  const size_t first_val = n - static_cast<size_t>(n_val);
  AppendRecords(records, 0, first_val, train);
  AppendRecords(records, first_val, n, val);
}

}  // namespace

Status ReadTextFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return InvalidArgument("error reading " + path);
  *out = ss.str();
  return Status::Ok();
}

namespace {

bool HasSuffix(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<uint8_t> ToBytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

}  // namespace

StatusOr<Corpus> Corpus::Load(const DataConfig& data) {
  if (data.dir.empty()) return InvalidArgument("data.dir is empty");
  if (!(data.validation_fraction > 0.0 && data.validation_fraction < 1.0)) {
    return InvalidArgument("data.validation_fraction must be in (0, 1), got " +
                           std::to_string(data.validation_fraction));
  }
  const fs::path dir(data.dir);
  std::error_code ec;
  const fs::file_status dir_status = fs::status(dir, ec);
  if (ec || !fs::exists(dir_status)) return NotFound("data directory not found: " + data.dir);
  if (!fs::is_directory(dir_status)) return InvalidArgument("data.dir is not a directory: " + data.dir);

  // (path, named explicitly?) in load order.
  std::vector<std::pair<fs::path, bool>> candidates;
  if (!data.files.empty()) {
    for (const auto& name : data.files) {
      const fs::path p = dir / name;
      const fs::file_status st = fs::status(p, ec);
      if (ec || !fs::exists(st)) return NotFound("data file not found: " + p.string());
      if (!fs::is_regular_file(st)) return InvalidArgument("data file is not a regular file: " + p.string());
      candidates.emplace_back(p, true);
    }
  } else {
    std::vector<fs::path> listed;
    fs::directory_iterator it(dir, ec);
    if (ec) return NotFound("cannot list data directory " + data.dir + ": " + ec.message());
    for (; it != fs::directory_iterator(); it.increment(ec)) {
      if (ec) return InvalidArgument("error listing data directory " + data.dir + ": " + ec.message());
      listed.push_back(it->path());
    }
    std::sort(listed.begin(), listed.end());  // deterministic order
    int skipped_index = 0;
    for (const auto& p : listed) {
      const std::string name = p.filename().string();
      if (name.empty() || name[0] == '.') continue;
      // fortune(6) ships NAME.dat (binary strfile index) and NAME.u8 (a
      // symlink to NAME): neither is extra text.
      if (HasSuffix(name, ".dat") || HasSuffix(name, ".u8")) {
        ++skipped_index;
        continue;
      }
      const fs::file_status st = fs::status(p, ec);
      if (ec || !fs::is_regular_file(st)) continue;  // directories, dangling links, devices
      candidates.emplace_back(p, false);
    }
    if (skipped_index > 0) {
      LOG_WARN("corpus: skipped fortune index/alias files", {"dir", data.dir}, {"count", skipped_index},
               {"suffixes", ".dat .u8"});
    }
  }

  // A file reachable under several names (symlinks) is read once, under its
  // own name when that is among the candidates, else under the first link.
  auto canonical_of = [](const fs::path& p) {
    std::error_code canon_ec;
    fs::path c = fs::weakly_canonical(p, canon_ec);
    return canon_ec ? p : c;
  };
  std::set<fs::path> plain_files;
  for (const auto& candidate : candidates) {
    if (!fs::is_symlink(fs::symlink_status(candidate.first, ec))) plain_files.insert(canonical_of(candidate.first));
  }
  Corpus corpus;
  std::string train, val;
  std::set<fs::path> seen;
  for (const auto& [path, named] : candidates) {
    const fs::path canonical = canonical_of(path);
    const bool is_link = fs::is_symlink(fs::symlink_status(path, ec));
    if ((is_link && plain_files.count(canonical) > 0) || !seen.insert(canonical).second) {
      LOG_WARN("corpus: skipped duplicate (symlink to a file already read)", {"path", path.string()});
      continue;
    }
    std::string text;
    LOWBAND_RETURN_IF_ERROR(ReadTextFile(path, &text));
    const std::string problem = TextProblem(text);
    if (!problem.empty()) {
      if (named) return InvalidArgument("data file is not UTF-8 text: " + path.string() + ": " + problem);
      LOG_WARN("corpus: skipped non-text file", {"path", path.string()}, {"reason", problem});
      continue;
    }
    std::string file_train, file_val;
    SplitFile(text, data.validation_fraction, &file_train, &file_val);
    if (file_train.empty()) {
      if (named) return InvalidArgument("data file has no text: " + path.string());
      LOG_WARN("corpus: skipped empty file", {"path", path.string()});
      continue;
    }
    if (!train.empty()) train += '\n';
    train += file_train;
    if (!file_val.empty()) {
      if (!val.empty()) val += '\n';
      val += file_val;
    }
    corpus.files_.push_back(path.string());
  }
  if (corpus.files_.empty()) return InvalidArgument("no UTF-8 text files in data directory " + data.dir);
  if (val.empty()) return InvalidArgument("validation split is empty for " + data.dir);
  corpus.train_ = ToBytes(train);
  corpus.val_ = ToBytes(val);
  return corpus;
}

Corpus Corpus::FromText(const std::string& train_text, const std::string& val_text) {
  Corpus corpus;
  corpus.train_ = ToBytes(train_text);
  corpus.val_ = ToBytes(val_text);
  return corpus;
}

TokenBatch Corpus::SampleTrain(int batch, int context, std::mt19937_64* rng) const {
  TokenBatch out;
  out.batch = batch;
  out.length = context;
  const size_t window = static_cast<size_t>(context) + 1;
  LOWBAND_CHECK(batch > 0 && context > 0 && train_.size() >= window);
  out.inputs.resize(static_cast<size_t>(batch) * context);
  out.targets.resize(static_cast<size_t>(batch) * context);
  // Start offsets uniform over [0, size - window]. Plain modulo rather than
  // std::uniform_int_distribution, whose algorithm differs between standard
  // libraries; mt19937_64 itself is fully specified, so the sample sequence
  // is the same everywhere (the bias of a 64-bit modulo is negligible).
  const uint64_t starts = train_.size() - window + 1;
  for (int b = 0; b < batch; ++b) {
    const size_t start = static_cast<size_t>((*rng)() % starts);
    const size_t row = static_cast<size_t>(b) * context;
    for (int t = 0; t < context; ++t) {
      out.inputs[row + t] = train_[start + t];
      out.targets[row + t] = train_[start + t + 1];
    }
  }
  return out;
}

TokenBatch Corpus::ValidationBatch(int index, int batch, int context) const {
  TokenBatch out;
  out.length = context;
  if (index < 0 || batch <= 0 || context <= 0) return out;
  const size_t window = static_cast<size_t>(context) + 1;
  const size_t windows = val_.size() / window;
  const size_t first = static_cast<size_t>(index) * batch;
  if (first >= windows) return out;
  const size_t rows = std::min(windows - first, static_cast<size_t>(batch));
  out.batch = static_cast<int>(rows);
  out.inputs.resize(rows * context);
  out.targets.resize(rows * context);
  for (size_t r = 0; r < rows; ++r) {
    const size_t start = (first + r) * window;
    for (int t = 0; t < context; ++t) {
      out.inputs[r * context + t] = val_[start + t];
      out.targets[r * context + t] = val_[start + t + 1];
    }
  }
  return out;
}

}  // namespace lowband
