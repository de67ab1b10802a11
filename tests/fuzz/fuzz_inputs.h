// Input formats of the libFuzzer targets, shared by the targets and by the
// seed generator (fuzz_make_seeds.cc) so the checked-in corpus stays in the
// format the targets read. Header-only; any thread.
//
// fuzz_message     [u8 flags][u32 header_len, only with 2 or 3 frames][frames]
//                  flags & 3: 0 = one frame (the rest), 1 = header + bulk
//                  (header = next header_len bytes, clamped; bulk = the rest),
//                  2 = header + bulk + an empty third frame, 3 = no frames.
//                  flags & 4: tight WireLimits (kTightLimit bytes each).
// fuzz_update      [u8 codec][u8 flags][i16 topk][u32 perturb][bulk]
//                  codec % 8 (6 and 7 are unknown values). The BlobHeader is
//                  made correct for the fixed layout (FuzzLayout) and the bulk
//                  (length, XXH64 checksum, element count, digest, topk)
//                  unless a kUpdate* flag breaks one field with `perturb`.
// fuzz_checkpoint  [u8 mode][file bytes]; mode & 1: the target appends the
//                  Fnv1a64 trailer itself, so mutations get past the checksum.
// fuzz_config      the YAML text itself (campaign and site parsers both run).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "codec/params.h"

namespace lowband::fuzz {

// ---- fuzz_message
constexpr uint8_t kMessageFramesMask = 3;
constexpr uint8_t kMessageTightLimits = 4;
constexpr size_t kTightLimit = 64;

// ---- fuzz_update
constexpr size_t kUpdatePrefixBytes = 8;
constexpr uint8_t kUpdateBadChecksum = 1 << 0;   // checksum ^= perturb | 1
constexpr uint8_t kUpdateBadLength = 1 << 1;     // byte_length += (int32) perturb
constexpr uint8_t kUpdateBadElements = 1 << 2;   // num_elements += (int32) perturb
constexpr uint8_t kUpdateBadDigest = 1 << 3;     // layout_digest ^= perturb | 1
constexpr uint8_t kUpdateRawTopk = 1 << 4;       // header.topk = perturb
constexpr uint8_t kUpdateMeanChoosers = 1 << 5;  // AggregationRule::kMeanChoosers
// bits 6..7: the second update aggregated with a parsed one
constexpr int kUpdatePartnerShift = 6;
enum class Partner { kNone = 0, kSelf = 1, kDense = 2, kSparse = 3 };

// One 2-D tensor with full, right-edge, bottom-edge and corner tiles
// (130 = 2*64 + 2, 70 = 64 + 6) and one 1-D tensor of a full and a short
// 4096-element chunk: every chunk shape of the plan occurs.
inline ParamLayout FuzzLayout() {
  ParamLayout layout;
  layout.tensors.push_back(TensorSpec{"blocks.0.w", {130, 70}});
  layout.tensors.push_back(TensorSpec{"bias", {5000}});
  return layout;
}

inline void PutU16(std::vector<uint8_t>* out, uint16_t v) {
  out->push_back(static_cast<uint8_t>(v));
  out->push_back(static_cast<uint8_t>(v >> 8));
}
inline void PutU32(std::vector<uint8_t>* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
inline uint16_t GetU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t GetU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

}  // namespace lowband::fuzz
