#include "codec/params.h"

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

uint64_t ValuesDigest(const float* values, size_t count) { return Xxh64(values, count * sizeof(float)); }

uint64_t ParamSet::Digest() const { return ValuesDigest(values.data(), values.size()); }

bool AllFinite(const std::vector<float>& values) {
  for (float v : values) {
    if (!std::isfinite(v)) return false;
  }
  return true;
}

}  // namespace lowband
