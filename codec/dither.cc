#include "codec/dither.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "codec/params.h"

namespace lowband {

namespace {

// splitmix64's output function (Stafford's mix 13): a bijection on 64 bits
// whose output bits each depend on every input bit.
uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

Status ValidateGrid(const DitherGrid& grid) {
  if (!std::isfinite(grid.lo) || !std::isfinite(grid.hi) || !(grid.lo < grid.hi)) {
    return InvalidArgument("dither grid [" + std::to_string(grid.lo) + ", " + std::to_string(grid.hi) +
                           "] must be finite with lo < hi");
  }
  if (grid.bits < 1 || grid.bits > kMaxDitherBits) {
    return InvalidArgument("dither grid bits " + std::to_string(grid.bits) + ", allowed 1..16");
  }
  return Status::Ok();
}

double GridStep(const DitherGrid& grid) {
  return (static_cast<double>(grid.hi) - grid.lo) / static_cast<double>((1u << grid.bits) - 1);
}

double DitherVariance(const DitherGrid& grid) {
  const double d = GridStep(grid);
  return d * d / 12.0;
}

float DitherAt(uint64_t seed, uint64_t j) {
  // Counter mode: the mixed seed picks a starting point, j steps along the
  // golden-ratio Weyl sequence as splitmix64 does, and the result is mixed
  // again. Adjacent seeds therefore do not give shifted copies of one stream.
  const uint64_t h = Mix64(Mix64(seed) + (j + 1) * 0x9e3779b97f4a7c15ULL);
  // The top 24 bits fit a float mantissa exactly, so the value is exactly
  // uniform on a 2^-24 lattice of [-0.5, 0.5).
  return static_cast<float>(h >> 40) * 0x1p-24f - 0.5f;
}

uint16_t QuantizeWithDither(const DitherGrid& grid, float x, float u) {
  const double top = static_cast<double>((1u << grid.bits) - 1);
  const double xc = std::isnan(x) ? grid.lo : std::clamp<double>(x, grid.lo, grid.hi);
  // (xc - lo)/D + u lies in [-0.5, top + 0.5), so floor(. + 0.5) is already
  // in [0, top]; the clamp only guards against rounding of the division.
  const double q = std::floor((xc - grid.lo) / GridStep(grid) + u + 0.5);
  return static_cast<uint16_t>(std::clamp(q, 0.0, top));
}

float DequantizeWithDither(const DitherGrid& grid, uint16_t q, float u) {
  return static_cast<float>(grid.lo + (static_cast<double>(q) - u) * GridStep(grid));
}

std::vector<uint16_t> DitherQuantize(const DitherGrid& grid, const float* x, size_t n, uint64_t seed) {
  LOWBAND_CHECK(ValidateGrid(grid).ok());
  std::vector<uint16_t> q(n);
  for (size_t j = 0; j < n; ++j) q[j] = QuantizeWithDither(grid, x[j], DitherAt(seed, j));
  return q;
}

void DitherDequantize(const DitherGrid& grid, const uint16_t* q, size_t n, uint64_t seed, float* out) {
  LOWBAND_CHECK(ValidateGrid(grid).ok());
  for (size_t j = 0; j < n; ++j) out[j] = DequantizeWithDither(grid, q[j], DitherAt(seed, j));
}

uint64_t PackedBytes(uint64_t n, int bits) { return (n * static_cast<uint64_t>(bits) + 7) / 8; }

std::vector<uint8_t> PackBits(const std::vector<uint16_t>& codes, int bits) {
  LOWBAND_CHECK(bits >= 1 && bits <= kMaxDitherBits);
  const uint32_t limit = 1u << bits;
  std::vector<uint8_t> out(PackedBytes(codes.size(), bits));
  // A 64-bit accumulator holds at most 7 + 16 pending bits.
  uint64_t acc = 0;
  int have = 0;
  size_t o = 0;
  for (uint16_t c : codes) {
    LOWBAND_CHECK(c < limit);
    acc |= static_cast<uint64_t>(c) << have;
    for (have += bits; have >= 8; have -= 8, acc >>= 8) out[o++] = static_cast<uint8_t>(acc);
  }
  if (have > 0) out[o] = static_cast<uint8_t>(acc);
  return out;
}

StatusOr<std::vector<uint16_t>> UnpackBits(const uint8_t* data, size_t len, size_t n, int bits) {
  if (bits < 1 || bits > kMaxDitherBits) {
    return InvalidArgument("packed codes: bits " + std::to_string(bits) + ", allowed 1..16");
  }
  // n * bits must not wrap before it is compared with len.
  if (n > (UINT64_MAX - 7) / kMaxDitherBits) {
    return InvalidArgument("packed codes: count " + std::to_string(n) + " is too large");
  }
  const uint64_t want = PackedBytes(n, bits);
  if (len != want) {
    return InvalidArgument("packed codes: " + std::to_string(len) + " bytes, expected " + std::to_string(want) +
                           " for " + std::to_string(n) + " codes of " + std::to_string(bits) + " bits");
  }
  std::vector<uint16_t> codes(n);
  const uint64_t mask = (1u << bits) - 1;
  uint64_t acc = 0;
  int have = 0;
  size_t p = 0;
  for (size_t i = 0; i < n; ++i) {
    for (; have < bits; have += 8) acc |= static_cast<uint64_t>(data[p++]) << have;
    codes[i] = static_cast<uint16_t>(acc & mask);
    acc >>= bits;
    have -= bits;
  }
  // What is left in the accumulator is exactly the last byte's pad bits.
  if (acc != 0) return InvalidArgument("packed codes: pad bits of the last byte are not zero");
  return codes;
}

uint64_t DitherSeedFor(uint64_t seed, uint32_t round, const std::string& site) {
  const uint64_t s = Fnv1a64(site.data(), site.size(), seed ^ 0xd1b54a32d192ed03ull);
  return Fnv1a64(&round, sizeof(round), s);
}

}  // namespace lowband
