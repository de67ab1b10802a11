// Subtractive-dither uniform quantizer, shared by the FPLD logit codec
// (codec/logit_codec.h, docs/design.md 3.6) and the FC-RAG score uploads (docs/design.md 3.7).
// Pure functions on value types; any thread.
//
// Grid: 2^bits levels lo + q*D, q = 0..2^bits-1, step D = (hi-lo)/(2^bits-1).
// Dither: coordinate j of a payload gets u_j = D * DitherAt(seed, j), a
// counter-based pseudo-random value uniform on [-D/2, D/2). Sender and
// receiver both regenerate it from (seed, j), so it is never sent.
//   encode  q  = clamp(round((x + u_j - lo) / D), 0, 2^bits-1),  x clamped to [lo, hi] first
//   decode  x^ = lo + q*D - u_j
// For every x in [lo, hi] (edges included: with x clamped, the rounding never
// leaves the grid) the error x^ - x is uniform on (-D/2, D/2], independent of
// x: unbiased, variance D^2/12 (DitherVariance). Arithmetic is in double; the
// decoded value is rounded to float, which adds at most half a float ulp.
//
// Bit packing: code i occupies stream bits [i*bits, (i+1)*bits), least
// significant bit first; stream bit b is bit b%8 of byte b/8. The last
// byte's unused high bits are zero. ceil(n*bits/8) bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace lowband {

constexpr int kMaxDitherBits = 16;

struct DitherGrid {
  float lo = 0.0f;
  float hi = 1.0f;
  int bits = 8;  // 1..kMaxDitherBits
};

// InvalidArgument unless lo and hi are finite, lo < hi and bits is in 1..16.
Status ValidateGrid(const DitherGrid& grid);

// The step D of a valid grid, in double.
double GridStep(const DitherGrid& grid);
// D^2 / 12: the variance of the dithered error of a valid grid.
double DitherVariance(const DitherGrid& grid);

// The dither of coordinate j under `seed`, in units of D: a value in
// [-0.5, 0.5) on a 2^-24 lattice, from a splitmix64-style hash of (seed, j).
// Distinct seeds give unrelated streams.
float DitherAt(uint64_t seed, uint64_t j);

// One coordinate with dither `u` (= DitherAt(seed, j)). NaN encodes as lo.
// The grid must be valid (callers validate once; not checked per value).
uint16_t QuantizeWithDither(const DitherGrid& grid, float x, float u);
float DequantizeWithDither(const DitherGrid& grid, uint16_t q, float u);

// x[0..n) with coordinates j = 0..n-1. Valid grid required (CHECK).
std::vector<uint16_t> DitherQuantize(const DitherGrid& grid, const float* x, size_t n, uint64_t seed);
void DitherDequantize(const DitherGrid& grid, const uint16_t* q, size_t n, uint64_t seed, float* out);

// ceil(n * bits / 8).
uint64_t PackedBytes(uint64_t n, int bits);

// Packs codes (each < 2^bits, bits 1..16; CHECK) in the bit order above.
std::vector<uint8_t> PackBits(const std::vector<uint16_t>& codes, int bits);

// Untrusted input. InvalidArgument when bits is not 1..16, when len is not
// exactly PackedBytes(n, bits) ("packed codes: 5 bytes, expected 6 for 13
// codes of 3 bits"), or when the pad bits are not zero. Allocates n codes
// only after the length check.
StatusOr<std::vector<uint16_t>> UnpackBits(const uint8_t* data, size_t len, size_t n, int bits);

// The dither seed of what `site` sends in `round` (FPLD logits, FC-RAG
// scores), derived from a seed both ends know: it never travels.
uint64_t DitherSeedFor(uint64_t seed, uint32_t round, const std::string& site);

}  // namespace lowband
