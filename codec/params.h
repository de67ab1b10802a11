// ParamSet: a model's parameters as one flat fp32 buffer plus a layout of
// named tensors. The torch-free currency between trainer, codecs, cores and
// checkpoints. Value type; not thread-safe to share, move it across threads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/hash.h"
#include "base/status.h"

namespace lowband {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel() const;
};

struct ParamLayout {
  std::vector<TensorSpec> tensors;
  int64_t numel() const;
  // FNV-1a 64 over names and shapes: both ends must agree on it.
  uint64_t Digest() const;
  bool operator==(const ParamLayout& o) const;
};

struct ParamSet {
  ParamLayout layout;
  std::vector<float> values;  // concatenation in layout order, size == layout.numel()

  // ValuesDigest of the values: equal iff bit-identical (to 2^-64).
  uint64_t Digest() const;
};

// Digest of parameter values, a replica's identity, checked every round on
// both sides: XXH64 of the raw fp32 bytes (~10 GB/s). It was FNV-1a 64 until
// checkpoint version 3; a byte at a time (~1 GB/s) that cost each side
// ~0.4 s per digest of a 100M-parameter model, every round.
uint64_t ValuesDigest(const float* values, size_t count);

// All values finite?
bool AllFinite(const std::vector<float>& values);

}  // namespace lowband
