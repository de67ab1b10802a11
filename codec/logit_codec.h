// FPLD probe-logit payloads (docs/design.md 3.6): a worker's logits on the shared
// probe set, [rows x vocab] row-major fp32, centred, clipped, then dithered
// to `bits` per coordinate (codec/dither.h) or kept as fp32, optionally only
// the top-k of each row. Pure functions; any thread.
//
// Encoding, per row r (the arithmetic is part of the contract):
//   mean   = (sum over the row's finite x, in double, column order) / (their
//            count); 0 when the row has none. Softmax is shift invariant.
//   c      = float(double(x) - mean) clamped to [-clip, clip];
//            x = +inf gives clip, x = -inf or NaN gives -clip.
//   topk=0: every column is sent, in column order.
//   topk=k: the k largest c of the row (ties: lower column first), sent in
//           increasing column order; columns not sent decode to -clip.
// Payload (little-endian, exact length, no header; shape, codec and seed are
// known to both ends from the campaign and round):
//   [topk > 0] rows*k column indices, row after row, strictly increasing
//              within a row: uint8 when vocab <= 256, else uint16.
//   values     the sent c in the same order, as
//              bits = 0: float32 each;
//              bits 1..16: codes on the grid [-clip, clip] with subtractive
//              dither of coordinate j = r*vocab + column under `seed`,
//              bit-packed (PackBits), ceil(rows*k*bits/8) bytes (k = vocab
//              when topk = 0).
// Decoded value of a sent entry: c exactly (bits 0), or c + e with e uniform
// on (-D/2, D/2], D = 2*clip/(2^bits - 1), independent of c (bits > 0).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/status.h"

namespace lowband {

// Largest rows*vocab a payload may describe (bounds the decoder's allocation).
constexpr int64_t kMaxLogitEntries = int64_t{1} << 26;

struct LogitCodec {
  int bits = 8;       // 0: fp32; 1..16: dithered codes
  float clip = 8.0f;  // centred logits are clipped to [-clip, clip]
  int topk = 0;       // 0: every column; else the k largest of each row
};

// InvalidArgument unless vocab >= 1, bits in 0..16, clip finite and > 0,
// topk in 0..vocab, and vocab <= 65536 when topk > 0 (uint16 indices).
Status ValidateLogitCodec(const LogitCodec& codec, int vocab);

// Exact payload size; 0 for an invalid codec or rows, vocab < 1.
uint64_t LogitPayloadBytes(const LogitCodec& codec, int rows, int vocab);

// Encodes logits[rows*vocab]. The caller guarantees a valid codec, rows >= 1
// and rows*vocab <= kMaxLogitEntries (CHECK).
std::vector<uint8_t> EncodeLogits(const LogitCodec& codec, int rows, int vocab, const float* logits,
                                  uint64_t seed);

// Decodes an untrusted payload into rows*vocab floats. InvalidArgument, saying
// what and where ("logit payload row 3 entry 1: column 70 >= vocab 50"), on an
// invalid codec, rows or vocab < 1, rows*vocab > kMaxLogitEntries, a length
// other than LogitPayloadBytes (checked before any allocation), a column >=
// vocab, a repeated or decreasing column within a row, non-zero pad bits, or
// an fp32 value that is not finite or lies outside [-clip, clip].
StatusOr<std::vector<float>> DecodeLogits(const LogitCodec& codec, int rows, int vocab, const uint8_t* data,
                                          size_t len, uint64_t seed);

// Mean over rows of KL(softmax(p_r) || softmax(q_r)) in nats, computed in
// double through log-sum-exp (no overflow for any finite logits). Rows and
// vocab >= 1; logits finite (p may hold -inf: those terms contribute 0).
double MeanKl(const float* p_logits, const float* q_logits, int rows, int vocab);

}  // namespace lowband
