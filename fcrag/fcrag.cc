#include "fcrag/fcrag.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <string_view>
#include <system_error>
#include <unordered_set>

#include "data/corpus.h"
#include "codec/dither.h"
#include "base/log.h"

namespace lowband {
namespace fs = std::filesystem;

namespace {

// ---- loading ----------------------------------------------------------------------

void TrimTrailingSpace(std::string* s) {
  const size_t keep = s->find_last_not_of(" \t\r\n");
  s->erase(keep == std::string::npos ? 0 : keep + 1);
}

// The file's records (data/corpus.h TextRecords), trimmed at the end;
// blank ones dropped.
std::vector<std::string> SplitRecords(const std::string& text) {
  std::vector<std::string> records;
  for (std::string record : TextRecords(text)) {
    TrimTrailingSpace(&record);
    if (!record.empty()) records.push_back(std::move(record));
  }
  return records;
}

// Cuts valid UTF-8 to at most max_bytes without splitting a character: the
// cut backs up over continuation bytes (10xxxxxx) to a lead byte.
void TruncateUtf8(std::string* s, size_t max_bytes) {
  if (s->size() <= max_bytes) return;
  size_t cut = max_bytes;
  while (cut > 0 && (static_cast<unsigned char>((*s)[cut]) & 0xC0) == 0x80) --cut;
  s->resize(cut);
}

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out;
}

// ---- tokens -----------------------------------------------------------------------

bool IsStopWord(std::string_view token) {
  // Function words that carry no topic; kept short so that short fortunes
  // keep most of their tokens.
  static const std::unordered_set<std::string_view> kStopWords = {
      "a",    "an",   "and",   "are",  "as",   "at",    "be",   "but",  "by",   "for",
      "from", "had",  "has",   "have", "he",   "her",   "his",  "i",    "if",   "in",
      "into", "is",   "it",    "its",  "me",   "my",    "no",   "not",  "of",   "on",
      "or",   "our",  "she",   "so",   "than", "that",  "the",  "their", "them", "then",
      "there", "these", "they", "this", "to",  "was",   "we",   "were", "what", "which",
      "who",  "will", "with",  "would", "you", "your"};
  return kStopWords.count(token) > 0;
}

// Calls fn(token) for every indexed token of `text`; the string_view is only
// valid during the call.
template <typename Fn>
void ForEachToken(const std::string& text, Fn&& fn) {
  std::string token;
  auto flush = [&]() {
    if (!token.empty() && !IsStopWord(token)) fn(std::string_view(token));
    token.clear();
  };
  for (const char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c >= 'A' && c <= 'Z') {
      token += static_cast<char>(c - 'A' + 'a');
    } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
      token += ch;
    } else {
      flush();
    }
  }
  flush();
}

// The dither grid over the score range, in float, as both wire ends build it.
DitherGrid WireGrid(ScoreRange range, int bits) {
  DitherGrid grid;
  grid.lo = static_cast<float>(range.lo);
  grid.hi = static_cast<float>(range.hi);
  grid.bits = bits;
  return grid;
}

bool RangeOk(ScoreRange range) {
  return std::isfinite(range.lo) && std::isfinite(range.hi) && range.lo < range.hi &&
         std::isfinite(static_cast<float>(range.lo)) && std::isfinite(static_cast<float>(range.hi)) &&
         static_cast<float>(range.lo) < static_cast<float>(range.hi);
}

}  // namespace

// ---- data -------------------------------------------------------------------------

StatusOr<FcragData> LoadFcragData(const DataConfig& data, const std::vector<std::string>& labels,
                                  int min_chars, int max_chars) {
  if (data.dir.empty()) return InvalidArgument("data.dir is empty");
  if (data.files.empty()) {
    return InvalidArgument("FC-RAG data.files is empty: name the collections (labels: " + JoinNames(labels) +
                           ")");
  }
  if (labels.empty()) return InvalidArgument("FC-RAG label list is empty");
  if (!(data.validation_fraction > 0.0 && data.validation_fraction < 1.0)) {
    return InvalidArgument("data.validation_fraction must be in (0, 1), got " +
                           std::to_string(data.validation_fraction));
  }
  if (min_chars < 0 || max_chars < std::max(1, min_chars)) {
    return InvalidArgument("FC-RAG record lengths need 0 <= min_chars <= max_chars and max_chars >= 1, got " +
                           std::to_string(min_chars) + " and " + std::to_string(max_chars));
  }
  std::unordered_map<std::string, int> label_of;
  for (size_t i = 0; i < labels.size(); ++i) {
    if (!label_of.emplace(labels[i], static_cast<int>(i)).second) {
      return InvalidArgument("FC-RAG label list repeats '" + labels[i] + "'");
    }
  }
  // Every name is checked before any file is read, so a config mistake is
  // reported without touching the disk.
  std::set<std::string> seen;
  for (const auto& name : data.files) {
    if (label_of.count(name) == 0) {
      return InvalidArgument("FC-RAG data file '" + name + "' in " + data.dir +
                             " is not a label; labels: " + JoinNames(labels));
    }
    if (!seen.insert(name).second) return InvalidArgument("FC-RAG data.files repeats '" + name + "'");
  }

  const fs::path dir(data.dir);
  std::error_code ec;
  const fs::file_status dir_status = fs::status(dir, ec);
  if (ec || !fs::exists(dir_status)) return NotFound("data directory not found: " + data.dir);
  if (!fs::is_directory(dir_status)) return InvalidArgument("data.dir is not a directory: " + data.dir);

  FcragData out;
  for (const auto& name : data.files) {
    const fs::path path = dir / name;
    const fs::file_status st = fs::status(path, ec);
    if (ec || !fs::exists(st)) return NotFound("data file not found: " + path.string());
    if (!fs::is_regular_file(st)) return InvalidArgument("data file is not a regular file: " + path.string());
    std::string text;
    LOWBAND_RETURN_IF_ERROR(ReadTextFile(path, &text));
    const std::string problem = TextProblem(text);
    if (!problem.empty()) return InvalidArgument("data file is not UTF-8 text: " + path.string() + ": " + problem);

    std::vector<std::string> records;
    for (std::string& record : SplitRecords(text)) {
      if (record.size() < static_cast<size_t>(min_chars)) continue;
      TruncateUtf8(&record, static_cast<size_t>(max_chars));
      records.push_back(std::move(record));
    }
    if (records.empty()) {
      return InvalidArgument("data file has no record of at least " + std::to_string(min_chars) +
                             " bytes: " + path.string());
    }
    const int label = label_of.at(name);
    const size_t n = records.size();
    size_t n_queries = 0;
    if (n >= 2) {
      const long long want = std::llround(data.validation_fraction * static_cast<double>(n));
      n_queries = static_cast<size_t>(std::clamp<long long>(want, 1, static_cast<long long>(n) - 1));
    } else {
      LOG_WARN("fcrag: file has a single record: no queries from it", {"path", path.string()});
    }
    const size_t first_query = n - n_queries;
    for (size_t i = 0; i < first_query; ++i) out.store.push_back(Document{std::move(records[i]), label});
    for (size_t i = first_query; i < n; ++i) out.queries.push_back(LabeledText{std::move(records[i]), label});
  }
  return out;
}

// ---- BM25 -------------------------------------------------------------------------

std::vector<std::string> Bm25Tokens(const std::string& text) {
  std::vector<std::string> tokens;
  ForEachToken(text, [&tokens](std::string_view t) { tokens.emplace_back(t); });
  return tokens;
}

Bm25Index::Bm25Index(const std::vector<Document>& store) {
  LOWBAND_CHECK(store.size() < static_cast<size_t>(std::numeric_limits<int>::max()));
  const int n_docs = static_cast<int>(store.size());
  doc_lengths_.assign(store.size(), 0);
  std::vector<int> ids;  // the current document's term ids
  double total_length = 0.0;
  for (int d = 0; d < n_docs; ++d) {
    ids.clear();
    ForEachToken(store[d].text, [&](std::string_view t) {
      auto it = term_ids_.find(std::string(t));
      if (it == term_ids_.end()) {
        it = term_ids_.emplace(std::string(t), static_cast<int>(postings_.size())).first;
        postings_.emplace_back();
      }
      ids.push_back(it->second);
    });
    doc_lengths_[d] = static_cast<int>(ids.size());
    total_length += static_cast<double>(ids.size());
    // Runs of equal ids in the sorted list are the term frequencies; d grows
    // monotonically, so every postings list stays in document order.
    std::sort(ids.begin(), ids.end());
    for (size_t i = 0; i < ids.size();) {
      size_t j = i;
      while (j < ids.size() && ids[j] == ids[i]) ++j;
      postings_[ids[i]].push_back(Posting{d, static_cast<int>(j - i)});
      i = j;
    }
  }
  avgdl_ = n_docs > 0 ? total_length / n_docs : 0.0;
  length_norm_.resize(store.size());
  for (int d = 0; d < n_docs; ++d) {
    // With avgdl = 0 every document is empty and never matches; the norm is
    // then never used, but keep it finite.
    const double relative = avgdl_ > 0.0 ? doc_lengths_[d] / avgdl_ : 1.0;
    length_norm_[d] = kBm25K1 * (1.0 - kBm25B + kBm25B * relative);
  }
  idf_.resize(postings_.size());
  for (size_t t = 0; t < postings_.size(); ++t) {
    const double df = static_cast<double>(postings_[t].size());
    idf_[t] = std::log(1.0 + (n_docs - df + 0.5) / (df + 0.5));
  }
}

std::vector<std::pair<int, double>> Bm25Index::Search(const std::string& query, int k) const {
  std::vector<std::pair<int, double>> hits;
  if (k <= 0 || doc_lengths_.empty()) return hits;
  std::vector<int> terms;
  ForEachToken(query, [&](std::string_view t) {
    auto it = term_ids_.find(std::string(t));
    if (it != term_ids_.end()) terms.push_back(it->second);
  });
  std::sort(terms.begin(), terms.end());
  terms.erase(std::unique(terms.begin(), terms.end()), terms.end());
  if (terms.empty()) return hits;

  // Dense accumulator: every contribution is > 0 (idf > 0, tf >= 1), so a
  // zero entry marks a document not yet touched.
  std::vector<double> acc(doc_lengths_.size(), 0.0);
  std::vector<int> touched;
  for (const int t : terms) {
    const double idf = idf_[t];
    for (const Posting& p : postings_[t]) {
      if (acc[p.doc] == 0.0) touched.push_back(p.doc);
      acc[p.doc] += idf * p.tf * (kBm25K1 + 1.0) / (p.tf + length_norm_[p.doc]);
    }
  }
  hits.reserve(touched.size());
  for (const int d : touched) hits.emplace_back(d, acc[d]);
  // A strict total order (score down, then index up), so the result does not
  // depend on the order documents were touched or on the sort algorithm.
  auto better = [](const std::pair<int, double>& a, const std::pair<int, double>& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  };
  const size_t keep = std::min(hits.size(), static_cast<size_t>(k));
  std::partial_sort(hits.begin(), hits.begin() + static_cast<std::ptrdiff_t>(keep), hits.end(), better);
  hits.resize(keep);
  return hits;
}

// ---- label scores -------------------------------------------------------------------

std::vector<double> LabelScores(const Bm25Index& index, const std::vector<Document>& store,
                                const std::string& query, int num_labels, int k, double smoothing, double mass_scale) {
  LOWBAND_CHECK(index.size() == store.size());
  LOWBAND_CHECK(mass_scale > 0.0 && std::isfinite(mass_scale));
  LOWBAND_CHECK(num_labels >= 1);
  LOWBAND_CHECK(smoothing > 0.0 && std::isfinite(smoothing));
  std::vector<double> mass(static_cast<size_t>(num_labels), smoothing);
  double total = smoothing * num_labels;
  for (const auto& [doc, score] : index.Search(query, k)) {
    const int label = store[doc].label;
    LOWBAND_CHECK(label >= 0 && label < num_labels);
    mass[label] += score / mass_scale;
    total += score / mass_scale;
  }
  // -log(m / total) as log(total) - log(m): both logs are of positive,
  // finite values, and nothing retrieved gives exactly log(num_labels).
  const double log_total = std::log(total);
  std::vector<double> scores(mass.size());
  for (size_t y = 0; y < mass.size(); ++y) scores[y] = log_total - std::log(mass[y]);
  return scores;
}

double TypicalMass(const Bm25Index& index, const std::vector<LabeledText>& queries, int k) {
  std::vector<double> masses;
  for (const LabeledText& q : queries) {
    double m = 0;
    for (const auto& [doc, score] : index.Search(q.text, k)) m += score;
    if (m > 0) masses.push_back(m);
  }
  if (masses.empty()) return 1.0;
  std::nth_element(masses.begin(), masses.begin() + masses.size() / 2, masses.end());
  return masses[masses.size() / 2];
}

// ---- wire -----------------------------------------------------------------------------

std::vector<uint8_t> EncodeScores(const std::vector<double>& scores, ScoreRange range, int bits,
                                  uint64_t seed) {
  LOWBAND_CHECK(RangeOk(range));
  LOWBAND_CHECK(bits >= 0 && bits <= kMaxDitherBits);
  std::vector<float> clipped(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    const double s = scores[i];
    clipped[i] = static_cast<float>(std::isnan(s) ? range.lo : std::clamp(s, range.lo, range.hi));
  }
  if (bits > 0) {
    const DitherGrid grid = WireGrid(range, bits);
    return PackBits(DitherQuantize(grid, clipped.data(), clipped.size(), seed), bits);
  }
  std::vector<uint8_t> out(4 * clipped.size());
  for (size_t i = 0; i < clipped.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &clipped[i], sizeof(u));
    for (int byte = 0; byte < 4; ++byte) out[4 * i + byte] = static_cast<uint8_t>(u >> (8 * byte));
  }
  return out;
}

StatusOr<std::vector<double>> DecodeScores(const uint8_t* data, size_t len, size_t n, ScoreRange range,
                                           int bits, uint64_t seed) {
  if (!RangeOk(range)) {
    return InvalidArgument("score range [" + std::to_string(range.lo) + ", " + std::to_string(range.hi) +
                           "] must be finite (also as float) with lo < hi");
  }
  if (bits < 0 || bits > kMaxDitherBits) {
    return InvalidArgument("score bits " + std::to_string(bits) + ", allowed 0..16 (0 = fp32)");
  }
  if (len > 0 && data == nullptr) return InvalidArgument("score payload: null data with length " + std::to_string(len));
  // Every score takes at least one bit, so a well-formed payload has
  // n <= 8 * len; checking that first keeps the size arithmetic below from
  // overflowing on a hostile n.
  const int bits_per_score = bits == 0 ? 32 : bits;
  const bool plausible = len <= std::numeric_limits<size_t>::max() / 16 && n <= 8 * len;
  const uint64_t expected = plausible ? PackedBytes(n, bits_per_score) : 0;
  if (!plausible || expected != len) {
    return InvalidArgument("score payload: " + std::to_string(len) + " bytes, expected " +
                           (plausible ? std::to_string(expected) : std::string("far more")) + " for " +
                           std::to_string(n) + " scores of " + std::to_string(bits_per_score) + " bits");
  }
  std::vector<double> out(n);
  if (bits > 0) {
    LOWBAND_ASSIGN_OR_RETURN(std::vector<uint16_t> codes, UnpackBits(data, len, n, bits));
    std::vector<float> values(n);
    DitherDequantize(WireGrid(range, bits), codes.data(), n, seed, values.data());
    for (size_t i = 0; i < n; ++i) out[i] = values[i];
    return out;
  }
  const float lo = static_cast<float>(range.lo);
  const float hi = static_cast<float>(range.hi);
  for (size_t i = 0; i < n; ++i) {
    uint32_t u = 0;
    for (int byte = 0; byte < 4; ++byte) u |= static_cast<uint32_t>(data[4 * i + byte]) << (8 * byte);
    float v;
    std::memcpy(&v, &u, sizeof(v));
    if (!std::isfinite(v)) return InvalidArgument("score payload: score " + std::to_string(i) + " is not finite");
    // The sender clips to the range, so anything outside it is corrupt.
    if (v < lo || v > hi) {
      return InvalidArgument("score payload: score " + std::to_string(i) + " = " + std::to_string(v) +
                             " outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    out[i] = v;
  }
  return out;
}

// ---- prediction sets and splits ----------------------------------------------------------

std::vector<int> PredictionSet(const std::vector<double>& scores, double threshold) {
  std::vector<int> set;
  for (size_t y = 0; y < scores.size(); ++y) {
    if (scores[y] <= threshold) set.push_back(static_cast<int>(y));  // false for NaN
  }
  return set;
}

void SplitQueries(size_t n, double calibration_fraction, uint64_t seed, std::vector<size_t>* calibration,
                  std::vector<size_t>* test) {
  LOWBAND_CHECK(calibration != nullptr && test != nullptr);
  LOWBAND_CHECK(calibration_fraction >= 0.0 && calibration_fraction <= 1.0);
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  // Fisher-Yates with a plain modulo: std::shuffle and the std distributions
  // differ between standard libraries, mt19937_64 does not; the modulo bias
  // of a 64-bit draw is negligible.
  std::mt19937_64 rng(seed);
  for (size_t i = n; i > 1; --i) {
    const size_t j = static_cast<size_t>(rng() % i);
    std::swap(order[i - 1], order[j]);
  }
  const size_t n_cal = std::min(n, static_cast<size_t>(std::llround(calibration_fraction * static_cast<double>(n))));
  calibration->assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n_cal));
  test->assign(order.begin() + static_cast<std::ptrdiff_t>(n_cal), order.end());
  std::sort(calibration->begin(), calibration->end());
  std::sort(test->begin(), test->end());
}

}  // namespace lowband
