// A site's local text corpus, byte-level tokenized (vocabulary 256), split
// into training and validation streams, with deterministic batch sampling.
// Torch-free: batches are int64 token ids the trainer turns into tensors.
// Not thread-safe; owned by the training thread.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "config/config.h"
#include "base/status.h"

namespace lowband {

struct TokenBatch {
  int batch = 0;
  int length = 0;                 // tokens per row (context)
  std::vector<int64_t> inputs;    // batch*length
  std::vector<int64_t> targets;   // batch*length, inputs shifted by one
};

// Text-file helpers shared by the corpus and FC-RAG's document stores.
// Strict UTF-8 check (no overlongs, no surrogates, <= U+10FFFF) that also
// rejects NUL, which never appears in text but is common in binary files:
// empty when valid, else what is wrong and at which offset.
std::string TextProblem(const std::string& s);
// The file's records: fortune(6) entries when the text has "%" separator
// lines (separators dropped, each record keeps its trailing newline;
// blank-only records dropped), else one record per line.
std::vector<std::string> TextRecords(const std::string& text);
// The whole file; NotFound / InvalidArgument name the path.
Status ReadTextFile(const std::string& path, std::string* out);

class Corpus {
 public:
  // Reads data.files (or every text file) under data.dir. Files that are not
  // valid UTF-8 text (NUL bytes, bad sequences) are skipped with a warning
  // when listing a directory, and are an error when named explicitly.
  // fortune(6) files (records separated by "%" lines) have separators
  // stripped. The validation split is the last validation_fraction of each
  // file's records. NotFound / InvalidArgument name the offending path.
  static StatusOr<Corpus> Load(const DataConfig& data);
  // Builds a corpus from in-memory text (tests).
  static Corpus FromText(const std::string& train_text, const std::string& val_text);

  size_t train_tokens() const { return train_.size(); }
  size_t val_tokens() const { return val_.size(); }
  const std::vector<std::string>& files() const { return files_; }

  // Random windows of context+1 tokens from the training stream.
  // Requires train_tokens() > context.
  TokenBatch SampleTrain(int batch, int context, std::mt19937_64* rng) const;
  // Deterministic, non-overlapping validation windows: batch `index` of at
  // `batch` rows each. Returns an empty batch when the stream is exhausted.
  TokenBatch ValidationBatch(int index, int batch, int context) const;

 private:
  std::vector<uint8_t> train_;
  std::vector<uint8_t> val_;
  std::vector<std::string> files_;
};

}  // namespace lowband
