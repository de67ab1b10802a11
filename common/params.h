// ParamSet: a model's parameters as one flat fp32 buffer plus a layout of
// named tensors. The torch-free currency between trainer, codecs, cores and
// checkpoints. Value type; not thread-safe to share, move it across threads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

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

// FNV-1a 64 of a byte range, continuing from `seed`.
uint64_t Fnv1a64(const void* data, size_t size, uint64_t seed = 0xcbf29ce484222325ull);
// XXH64 (the xxHash 64-bit algorithm, same values as `xxh64sum`): the
// checksum of bulk frames. FNV-1a goes a byte at a time (~4 cycles a byte,
// 4 ms for a 3 MB payload); XXH64 reads 32-byte stripes on four independent
// lanes at ~10 GB/s, so checking a payload costs far less than encoding it.
uint64_t Xxh64(const void* data, size_t size, uint64_t seed = 0);
inline uint64_t BulkChecksum(const void* data, size_t size) { return Xxh64(data, size); }
std::string DigestHex(uint64_t digest);

// All values finite?
bool AllFinite(const std::vector<float>& values);

}  // namespace lowband
