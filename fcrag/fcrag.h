// FC-RAG, the site-local half (docs/design.md 3.7): a site's labelled text (document
// store and held-out queries), an Okapi BM25 retriever over its store, the
// retrieval-augmented label scores s(X, y) = -log P(y | X, Z) it sends to the
// hub, their B-bit dithered wire form, prediction sets and the
// calibration/test split of the queries. Calibration thresholds and the
// coverage bound live in fcrag/conformal.h.
//
// Torch-free. Free functions are pure (any thread). A Bm25Index is immutable
// after construction, so Search may run on several threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fcrag/conformal.h"
#include "config/config.h"
#include "base/status.h"

namespace lowband {

// ---- data -----------------------------------------------------------------------
// A retrievable document. `label` indexes the campaign-wide label list: the
// collection (= file name) the document came from.
struct Document {
  std::string text;
  int label = 0;
};

// A query with its true label (index into the same label list).
struct LabeledText {
  std::string text;
  int label = 0;
};

struct FcragData {
  std::vector<Document> store;        // retrievable documents, file by file
  std::vector<LabeledText> queries;   // held-out records, file by file
};

// Reads every file of data.files under data.dir as fortune(6) records
// (separated by "%" lines; a file without "%" lines has one record per
// non-blank line). Each file's label is the position of its name in
// `labels`. Record text is the record's lines joined by "\n" with trailing
// whitespace removed. Lengths are in bytes: records shorter than min_chars
// are dropped; longer than max_chars are cut to at most max_chars bytes,
// backing up to a UTF-8 character boundary. Of each file's n kept records,
// the last round(validation_fraction * n) (at least 1, leaving at least 1)
// become queries, the rest its documents; a file with a single kept record
// gives only a document (logged). Output order follows data.files.
//
// InvalidArgument when data.files is empty, a file name is repeated or is
// not in `labels` (the message names it and the allowed labels), `labels`
// is empty or repeats a name, validation_fraction is not in (0, 1),
// min_chars < 0 or max_chars < max(1, min_chars), a file is not UTF-8 text
// (NUL bytes, bad sequences) or keeps no record of min_chars bytes.
// NotFound names a missing directory or file.
StatusOr<FcragData> LoadFcragData(const DataConfig& data, const std::vector<std::string>& labels,
                                  int min_chars, int max_chars);

// ---- BM25 retrieval ---------------------------------------------------------------
// Okapi BM25 with the usual constants k1 = 1.2 (term-frequency saturation)
// and b = 0.75 (document-length normalisation):
//   score(D, Q) = sum over distinct query terms t present in D of
//       idf(t) * tf(t, D) * (k1 + 1) / (tf(t, D) + k1 * (1 - b + b * |D| / avgdl))
//   idf(t) = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
// where |D| counts D's indexed tokens and avgdl is their mean over the N
// documents. This idf is always > 0, so every document sharing a term with
// the query scores > 0. A query term is counted once however often it
// repeats in the query.
constexpr double kBm25K1 = 1.2;
constexpr double kBm25B = 0.75;

// Tokens as the index sees them: maximal runs of ASCII letters and digits,
// lower-cased; every other byte (punctuation, space, any non-ASCII byte)
// separates tokens. A short fixed English stop-word list ("the", "of",
// "and", ...) is removed.
std::vector<std::string> Bm25Tokens(const std::string& text);

class Bm25Index {
 public:
  // Indexes store[i].text as document i. Cost O(total tokens).
  explicit Bm25Index(const std::vector<Document>& store);

  // The top min(k, matches) documents as (document index, score), score > 0,
  // best first; equal scores in increasing document index. Empty when k <= 0
  // or the query has no indexed term. Cost: the postings of the query's
  // terms plus a partial sort of the matches.
  std::vector<std::pair<int, double>> Search(const std::string& query, int k) const;

  size_t size() const { return doc_lengths_.size(); }
  size_t num_terms() const { return postings_.size(); }
  double avgdl() const { return avgdl_; }

 private:
  struct Posting {
    int doc;
    int tf;
  };
  std::unordered_map<std::string, int> term_ids_;
  std::vector<std::vector<Posting>> postings_;  // by term id, in doc order
  std::vector<double> idf_;                     // by term id
  std::vector<int> doc_lengths_;               // indexed tokens per document
  std::vector<double> length_norm_;            // k1 * (1 - b + b * |D| / avgdl)
  double avgdl_ = 0.0;
};

// ---- retrieval-augmented label scores -----------------------------------------------
// The site's retrieval-augmented classifier. Z = the top-k documents that
// `index` (built from `store`) retrieves for `query`, with BM25 scores w_d:
//   P(y | X, Z) = (smoothing + sum_{d in Z, label d = y} w_d)
//               / (num_labels * smoothing + sum_{d in Z} w_d)
//   s(X, y)     = -log P(y | X, Z),  y = 0..num_labels-1.
// P is a distribution over the labels, so exp(-s) sums to 1. `smoothing`
// is in BM25 score units: the weaker the retrieved evidence, the closer P
// stays to uniform. A label the site's store lacks gets only the smoothing
// mass, i.e. a high score: a site can vouch only for collections it holds,
// which is why the hub averages the sites' scores. With nothing retrieved
// every label gets log(num_labels).
// Requires index built from store, num_labels >= 1, every store label in
// [0, num_labels), smoothing > 0 and finite (CHECK).
std::vector<double> LabelScores(const Bm25Index& index, const std::vector<Document>& store,
                                const std::string& query, int num_labels, int k, double smoothing, double mass_scale = 1.0);

// A site's scale for BM25 mass: the median total top-k score of its own
// queries (1 if none retrieves anything). Dividing by it makes evidence
// comparable across sites whose stores differ in size and vocabulary: a
// query as relevant to the site as its own typical query carries mass ~1
// against the smoothing (LabelScores' mass_scale).
double TypicalMass(const Bm25Index& index, const std::vector<LabeledText>& queries, int k);

// ---- scores on the wire ---------------------------------------------------------------
// Scores are clipped to `range` (NaN to range.lo) and sent as
//   bits 1..16: subtractive-dither codes (codec/dither.h) on the grid of
//               2^bits levels over [range.lo, range.hi], packed bits each,
//               ceil(n * bits / 8) bytes. The decoded value differs from the
//               clipped score by at most half a grid step, with zero mean.
//               The dither comes from `seed`, which sender and receiver share
//               and which must differ between payloads (e.g. derive it from
//               campaign, site and query).
//   bits 0:     float32 little-endian, 4 * n bytes; exact up to the float
//               rounding of the clipped score.
// Requires range finite with lo < hi, and bits in 0..16 (CHECK).
std::vector<uint8_t> EncodeScores(const std::vector<double>& scores, ScoreRange range, int bits,
                                  uint64_t seed);

// Untrusted input: `n` scores encoded as above. InvalidArgument when the
// range or bits are not valid, len is not the exact payload size for n
// scores (checked before anything is allocated), pad bits are set, or an
// fp32 value is not finite or lies outside the range.
StatusOr<std::vector<double>> DecodeScores(const uint8_t* data, size_t len, size_t n, ScoreRange range,
                                           int bits, uint64_t seed);

// ---- prediction sets and query splits --------------------------------------------------
// C(X) = {y : scores[y] <= threshold}, in increasing y; NaN scores never in.
std::vector<int> PredictionSet(const std::vector<double>& scores, double threshold);

// Splits query indices 0..n-1: a uniformly random permutation from
// mt19937_64(seed) (own Fisher-Yates, so it is the same on every standard
// library) whose first round(calibration_fraction * n) entries form
// `calibration`, the rest `test`; both returned sorted. Same (n, fraction,
// seed), same split. Requires calibration_fraction in [0, 1] and non-null
// outputs (CHECK).
void SplitQueries(size_t n, double calibration_fraction, uint64_t seed, std::vector<size_t>* calibration,
                  std::vector<size_t>* test);

}  // namespace lowband
