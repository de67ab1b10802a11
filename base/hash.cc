#include "base/hash.h"

#include <cstdio>
#include <cstring>

namespace lowband {

uint64_t Fnv1a64(const void* data, size_t size, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = seed;
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

namespace {
constexpr uint64_t kP1 = 0x9E3779B185EBCA87ull, kP2 = 0xC2B2AE3D27D4EB4Full, kP3 = 0x165667B19E3779F9ull,
                   kP4 = 0x85EBCA77C2B2AE63ull, kP5 = 0x27D4EB2F165667C5ull;
inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t Read64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);  // little-endian hosts only (codec.cc asserts it)
  return v;
}
inline uint64_t Read32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t Round(uint64_t acc, uint64_t input) { return Rotl(acc + input * kP2, 31) * kP1; }
inline uint64_t Merge(uint64_t h, uint64_t v) { return (h ^ Round(0, v)) * kP1 + kP4; }
}  // namespace

uint64_t Xxh64(const void* data, size_t size, uint64_t seed) {
  // Offsets, not pointer arithmetic past the end: data may be null when
  // size is 0.
  const auto* p = static_cast<const unsigned char*>(data);
  size_t i = 0;
  uint64_t h;
  if (size >= 32) {
    uint64_t v1 = seed + kP1 + kP2, v2 = seed + kP2, v3 = seed, v4 = seed - kP1;
    for (; i + 32 <= size; i += 32) {
      v1 = Round(v1, Read64(p + i));
      v2 = Round(v2, Read64(p + i + 8));
      v3 = Round(v3, Read64(p + i + 16));
      v4 = Round(v4, Read64(p + i + 24));
    }
    h = Rotl(v1, 1) + Rotl(v2, 7) + Rotl(v3, 12) + Rotl(v4, 18);
    h = Merge(Merge(Merge(Merge(h, v1), v2), v3), v4);
  } else {
    h = seed + kP5;
  }
  h += static_cast<uint64_t>(size);
  for (; i + 8 <= size; i += 8) h = Rotl(h ^ Round(0, Read64(p + i)), 27) * kP1 + kP4;
  if (i + 4 <= size) {
    h = Rotl(h ^ (Read32(p + i) * kP1), 23) * kP2 + kP3;
    i += 4;
  }
  for (; i < size; ++i) h = Rotl(h ^ (p[i] * kP5), 11) * kP1;
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

std::string DigestHex(uint64_t digest) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(digest));
  return buf;
}

}  // namespace lowband
