#include "common/params.h"

#include <cmath>
#include <cstdio>

namespace lowband {

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t ParamLayout::numel() const {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.numel();
  return n;
}

uint64_t Fnv1a64(const void* data, size_t size, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = seed;
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t ParamLayout::Digest() const {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const auto& t : tensors) {
    h = Fnv1a64(t.name.data(), t.name.size(), h);
    for (int64_t d : t.shape) h = Fnv1a64(&d, sizeof(d), h);
    const char sep = 0;
    h = Fnv1a64(&sep, 1, h);
  }
  return h;
}

bool ParamLayout::operator==(const ParamLayout& o) const {
  if (tensors.size() != o.tensors.size()) return false;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].name != o.tensors[i].name || tensors[i].shape != o.tensors[i].shape) return false;
  }
  return true;
}

uint64_t ParamSet::Digest() const { return Fnv1a64(values.data(), values.size() * sizeof(float)); }

std::string DigestHex(uint64_t digest) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(digest));
  return buf;
}

bool AllFinite(const std::vector<float>& values) {
  for (float v : values) {
    if (!std::isfinite(v)) return false;
  }
  return true;
}

}  // namespace lowband
