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

  // FNV-1a 64 over the raw fp32 bytes: equal iff bit-identical.
  uint64_t Digest() const;
};

// All values finite?
bool AllFinite(const std::vector<float>& values);

}  // namespace lowband
