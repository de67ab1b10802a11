#include "codec/codec.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>

namespace lowband {

// The bulk formats are little-endian and are read and written with memcpy of
// host values; every supported host is little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "lowband codecs assume a little-endian host");

namespace {

// ---------------------------------------------------------------- helpers

uint64_t Ceil12(uint64_t n) { return (3 * n + 1) / 2; }  // bytes of n packed 12-bit indices
uint64_t Ceil2(uint64_t n) { return (n + 3) / 4; }       // bytes of n packed 2-bit codes

template <typename T>
std::string Num(T v) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));
    return buf;
  } else {
    return std::to_string(v);
  }
}

// "sparseloco tensor 3 (blocks.0.attn.w)"
std::string TensorWhere(CodecKind kind, const ParamLayout& layout, size_t t) {
  return std::string(CodecName(kind)) + " tensor " + std::to_string(t) + " (" + layout.tensors[t].name + ")";
}
// "sparseloco tensor 3 (blocks.0.attn.w) chunk 7" (chunk numbered within the tensor)
std::string ChunkWhere(CodecKind kind, const ParamLayout& layout, const LayoutPlan& plan, size_t t, size_t c) {
  return TensorWhere(kind, layout, t) + " chunk " + std::to_string(c - plan.tensors[t].first_chunk);
}
// The error for local index l of chunk c that is out of range or not above
// the previous index `prev` of the same chunk.
Status BadIndex(CodecKind kind, const ParamLayout& layout, const LayoutPlan& plan, size_t t, size_t c, int64_t l,
                int64_t prev) {
  const int64_t n = plan.chunks[c].numel();
  return InvalidArgument(ChunkWhere(kind, layout, plan, t, c) + ": index " + std::to_string(l) +
                         (l >= n ? " >= chunk size " + std::to_string(n)
                                 : " after " + std::to_string(prev) + " (indices must be strictly increasing)"));
}
// Tensor holding flat element i (only on error paths).
size_t TensorOf(const LayoutPlan& plan, uint64_t i) {
  size_t t = 0;
  while (t + 1 < plan.tensors.size() && static_cast<uint64_t>(plan.tensors[t + 1].offset) <= i) ++t;
  return t;
}
std::string ElementWhere(CodecKind kind, const ParamLayout& layout, const LayoutPlan& plan, uint64_t i) {
  const size_t t = TensorOf(plan, i);
  return TensorWhere(kind, layout, t) + " element " + std::to_string(i - plan.tensors[t].offset);
}

inline float LoadF32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline uint16_t LoadU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

// Local index i of a 12-bit packed stream (see the header comment). For the
// odd last index of a stream this reads its 2 bytes only.
inline uint32_t Get12(const uint8_t* p, uint64_t i) {
  const uint8_t* q = p + (i >> 1) * 3;
  return (i & 1) ? (static_cast<uint32_t>(q[1]) >> 4) | (static_cast<uint32_t>(q[2]) << 4)
                 : static_cast<uint32_t>(q[0]) | (static_cast<uint32_t>(q[1] & 0x0f) << 8);
}
// Pad bits of a stream of n 12-bit indices: the high nibble of an odd tail.
inline bool Pad12Clean(const uint8_t* p, uint64_t n) { return (n & 1) == 0 || (p[(n >> 1) * 3 + 1] & 0xf0) == 0; }
// Pad bits of a stream of n 2-bit codes: the unused high bits of the last byte.
inline bool Pad2Clean(const uint8_t* p, uint64_t n) { return (n & 3) == 0 || (p[n >> 2] >> (2 * (n & 3))) == 0; }

// Writes n indices (each < 4096) 12-bit packed; returns the end.
uint8_t* Pack12(const uint16_t* idx, uint64_t n, uint8_t* dst) {
  uint64_t i = 0;
  for (; i + 1 < n; i += 2) {
    const uint32_t a = idx[i], b = idx[i + 1];
    dst[0] = static_cast<uint8_t>(a);
    dst[1] = static_cast<uint8_t>((a >> 8) | ((b & 0x0f) << 4));
    dst[2] = static_cast<uint8_t>(b >> 4);
    dst += 3;
  }
  if (i < n) {
    dst[0] = static_cast<uint8_t>(idx[i]);
    dst[1] = static_cast<uint8_t>(idx[i] >> 8);
    dst += 2;
  }
  return dst;
}

// Writes n codes (each <= 3) 4 per byte, first in the low bits; returns the end.
uint8_t* Pack2(const uint8_t* codes, uint64_t n, uint8_t* dst) {
  const uint64_t full = n / 4;
  for (uint64_t j = 0; j < full; ++j) {
    const uint8_t* c = codes + 4 * j;
    dst[j] = static_cast<uint8_t>(c[0] | (c[1] << 2) | (c[2] << 4) | (c[3] << 6));
  }
  dst += full;
  if (n & 3) {
    uint8_t b = 0;
    for (uint64_t i = full * 4; i < n; ++i) b = static_cast<uint8_t>(b | (codes[i] << (2 * (i & 3))));
    *dst++ = b;
  }
  return dst;
}

bool IsBf16Finite(uint16_t bits) { return (bits & 0x7f80) != 0x7f80; }

// A plan that PlanLayout made for this layout (cheap shape check: a plan for
// another layout is a caller bug, reported rather than read out of bounds).
Status CheckPlan(const ParamLayout& layout, const LayoutPlan& plan) {
  bool ok = plan.tensors.size() == layout.tensors.size() && plan.numel == layout.numel();
  for (size_t t = 0; ok && t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    ok = tp.numel == layout.tensors[t].numel() && tp.first_chunk + tp.num_chunks <= plan.chunks.size();
  }
  if (!ok) {
    return InvalidArgument("chunk plan (" + std::to_string(plan.tensors.size()) + " tensors, " + Num(plan.numel) +
                           " elements) was not made for this layout (" + std::to_string(layout.tensors.size()) +
                           " tensors, " + Num(layout.numel()) + " elements)");
  }
  return Status::Ok();
}

// Structure of an Update against the plan; optionally that every value is finite.
Status CheckUpdate(const LayoutPlan& plan, const Update& u, bool require_finite) {
  if (u.dense) {
    if (u.values.size() != static_cast<uint64_t>(plan.numel)) {
      return InvalidArgument("dense update has " + Num(u.values.size()) +
                             " values, layout has " + Num(plan.numel));
    }
    if (require_finite) {
      for (size_t i = 0; i < u.values.size(); ++i) {
        if (!std::isfinite(u.values[i])) {
          return InvalidArgument("dense update: element " + Num(i) + " is " +
                                 Num(u.values[i]));
        }
      }
    }
    return Status::Ok();
  }
  if (u.begin.size() != plan.chunks.size() + 1 || u.begin[0] != 0 || u.index.size() != u.value.size() ||
      u.begin.back() != u.index.size()) {
    return InvalidArgument("sparse update is malformed: " + Num(u.begin.size()) +
                           " chunk offsets for " + Num(plan.chunks.size()) + " chunks, " +
                           Num(u.index.size()) + " indices, " +
                           Num(u.value.size()) + " values");
  }
  for (size_t c = 0; c < plan.chunks.size(); ++c) {
    const uint32_t b = u.begin[c], e = u.begin[c + 1];
    if (e < b || e > u.index.size()) {
      return InvalidArgument("sparse update: chunk " + Num(c) + " has entries [" +
                             Num(b) + ", " + Num(e) + ")");
    }
    const int64_t n = plan.chunks[c].numel();
    int64_t prev = -1;
    for (uint32_t i = b; i < e; ++i) {
      const int64_t l = u.index[i];
      if (l >= n || l <= prev) {
        return InvalidArgument("sparse update: chunk " + Num(c) + " index " + Num(l) +
                               (l >= n ? " >= chunk size " + Num(n) : " after " + Num(prev) + " (not increasing)"));
      }
      prev = l;
      if (require_finite && !std::isfinite(u.value[i])) {
        return InvalidArgument("sparse update: chunk " + Num(c) + " index " + Num(l) +
                               " is " + Num(u.value[i]));
      }
    }
  }
  return Status::Ok();
}

// Flat index of the first element of local row r of chunk ch in tensor tp.
inline int64_t RowBase(const TensorPlan& tp, const Chunk& ch, int64_t r) {
  return tp.offset + ch.origin + r * tp.row_stride;
}

Encoded Finish(const ParamLayout& layout, CodecKind kind, uint32_t topk, Frame bulk, const uint64_t* checksum = nullptr) {
  Encoded out;
  out.header.codec = kind;
  out.header.num_elements = static_cast<uint64_t>(layout.numel());
  out.header.layout_digest = layout.Digest();
  out.header.byte_length = bulk.size();
  out.header.checksum = checksum ? *checksum : BulkChecksum(bulk.data(), bulk.size());
  out.header.topk = topk;
  out.bulk = std::move(bulk);
  return out;
}

// Header fields that do not need the bulk's contents: codec known, element
// count, layout digest, topk, stated length.
Status CheckHeader(const ParamLayout& layout, const BlobHeader& header, const Bytes& bulk) {
  switch (header.codec) {
    case CodecKind::kDenseFp32:
    case CodecKind::kDenseBf16:
    case CodecKind::kInt8:
    case CodecKind::kSparseLoCo:
    case CodecKind::kSparseFp32:
    case CodecKind::kSparse2Bit: break;
    default:
      return InvalidArgument("unknown codec value " + std::to_string(static_cast<int>(header.codec)));
  }
  if (header.num_elements != static_cast<uint64_t>(layout.numel())) {
    return InvalidArgument("payload has " + Num(header.num_elements) + " elements, layout has " +
                           Num(layout.numel()));
  }
  if (header.layout_digest != layout.Digest()) {
    return InvalidArgument("payload layout digest " + DigestHex(header.layout_digest) +
                           " does not match the model layout " + DigestHex(layout.Digest()));
  }
  if (header.codec == CodecKind::kSparseLoCo) {
    if (header.topk < 1 || header.topk > kChunkElems) {
      return InvalidArgument("sparseloco payload has topk " + std::to_string(header.topk) + ", allowed 1..4096");
    }
  } else if (header.topk != 0) {
    return InvalidArgument(std::string(CodecName(header.codec)) + " payload has topk " +
                           std::to_string(header.topk) + ", must be 0");
  }
  if (header.byte_length != bulk.size()) {
    return Corruption("bulk frame is " + Num(bulk.size()) + " bytes, header says " +
                      Num(header.byte_length));
  }
  return Status::Ok();
}

Status CheckChecksum(const BlobHeader& header, const Bytes& bulk) {
  if (BulkChecksum(bulk.data(), bulk.size()) != header.checksum) {
    return Corruption(std::string(CodecName(header.codec)) + " bulk frame checksum mismatch");
  }
  return Status::Ok();
}

Status WrongLength(CodecKind kind, uint64_t have, uint64_t want, const std::string& why) {
  return Corruption(std::string(CodecName(kind)) + " bulk frame is " + Num(have) + " bytes, " + why + " needs " +
                    Num(want));
}

// ---------------------------------------------------------------- parsers
// Each runs after CheckHeader, the exact length check and the checksum.

StatusOr<Update> ParseDenseFp32(const ParamLayout& layout, const LayoutPlan& plan, const Bytes& bulk) {
  Update u;
  u.dense = true;
  u.values.resize(static_cast<size_t>(plan.numel));
  if (!bulk.empty()) std::memcpy(u.values.data(), bulk.data(), bulk.size());
  for (size_t i = 0; i < u.values.size(); ++i) {
    if (!std::isfinite(u.values[i])) {
      return InvalidArgument(ElementWhere(CodecKind::kDenseFp32, layout, plan, i) + ": value is " +
                             Num(u.values[i]));
    }
  }
  return u;
}

StatusOr<Update> ParseDenseBf16(const ParamLayout& layout, const LayoutPlan& plan, const Bytes& bulk) {
  Update u;
  u.dense = true;
  u.values.resize(static_cast<size_t>(plan.numel));
  const uint8_t* p = bulk.data();
  for (size_t i = 0; i < u.values.size(); ++i) {
    const uint16_t bits = LoadU16(p + 2 * i);
    if (!IsBf16Finite(bits)) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "%04x", bits);
      return InvalidArgument(ElementWhere(CodecKind::kDenseBf16, layout, plan, i) +
                             ": non-finite bfloat16 bits 0x" + hex);
    }
    const uint32_t f = static_cast<uint32_t>(bits) << 16;
    std::memcpy(&u.values[i], &f, sizeof(float));
  }
  return u;
}

StatusOr<Update> ParseInt8(const ParamLayout& layout, const LayoutPlan& plan, const Bytes& bulk) {
  constexpr CodecKind kKind = CodecKind::kInt8;
  Update u;
  u.dense = true;
  u.values.resize(static_cast<size_t>(plan.numel));
  const uint8_t* p = bulk.data();
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    const uint8_t* scales = p;
    const auto* q = reinterpret_cast<const int8_t*>(p + 4 * tp.num_chunks);
    p += 4 * tp.num_chunks + static_cast<uint64_t>(tp.numel);
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      const Chunk& ch = plan.chunks[c];
      const float s = LoadF32(scales + 4 * (c - tp.first_chunk));
      // 127 * s finite and s >= 0 bound every q * s (|q| <= 127).
      if (!std::isfinite(s) || s < 0 || !std::isfinite(127.0f * s)) {
        return InvalidArgument(ChunkWhere(kKind, layout, plan, t, c) + ": scale " + Num(s) +
                               " (must be finite, >= 0, and 127 * scale finite)");
      }
      for (int64_t r = 0; r < ch.rows; ++r) {
        float* dst = u.values.data() + RowBase(tp, ch, r);
        for (int32_t col = 0; col < ch.cols; ++col) {
          const int8_t v = *q++;
          if (v == -128) {
            return InvalidArgument(ChunkWhere(kKind, layout, plan, t, c) + ": q = -128 at local index " +
                                   Num(r * ch.cols + col) + " (allowed -127..127)");
          }
          dst[col] = static_cast<float>(v) * s;
        }
      }
    }
  }
  return u;
}

// Every check of a sparseloco bulk; sink(chunk, entry, local index, value)
// for each entry in stream order (entry counts from 0 over the layout).
template <typename Sink>
Status VisitSparseLoCo(const ParamLayout& layout, const LayoutPlan& plan, const Bytes& bulk, Sink sink) {
  constexpr CodecKind kKind = CodecKind::kSparseLoCo;
  const uint8_t* p = bulk.data();
  uint32_t e = 0;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    float table[4];
    for (int j = 0; j < 4; ++j) {
      table[j] = LoadF32(p + 4 * j);
      if (!std::isfinite(table[j])) {
        return InvalidArgument(TensorWhere(kKind, layout, t) + ": table entry " + std::to_string(j) + " is " +
                               Num(table[j]));
      }
    }
    const uint64_t k_total = static_cast<uint64_t>(tp.kept);
    const uint8_t* idx = p + 16;
    const uint8_t* codes = idx + Ceil12(k_total);
    p = codes + Ceil2(k_total);
    if (!Pad12Clean(idx, k_total)) {
      return InvalidArgument(TensorWhere(kKind, layout, t) + ": nonzero pad bits after the last 12-bit index");
    }
    if (!Pad2Clean(codes, k_total)) {
      return InvalidArgument(TensorWhere(kKind, layout, t) + ": nonzero pad bits after the last 2-bit code");
    }
    uint64_t i = 0;  // entry within the tensor's streams
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      const Chunk& ch = plan.chunks[c];
      const uint32_t n = static_cast<uint32_t>(ch.numel());
      int64_t prev = -1;
      for (int32_t j = 0; j < ch.k; ++j, ++i, ++e) {
        const uint32_t l = Get12(idx, i);
        if (l >= n || static_cast<int64_t>(l) <= prev) {
          return BadIndex(kKind, layout, plan, t, c, l, prev);
        }
        prev = l;
        sink(c, e, static_cast<uint16_t>(l), table[(codes[i >> 2] >> (2 * (i & 3))) & 3]);
      }
    }
  }
  return Status::Ok();
}

StatusOr<Update> ParseSparseLoCo(const ParamLayout& layout, const LayoutPlan& plan, const Bytes& bulk) {
  Update u;
  u.dense = false;
  u.begin.resize(plan.chunks.size() + 1);
  u.index.resize(static_cast<size_t>(plan.kept));
  u.value.resize(static_cast<size_t>(plan.kept));
  // Chunks are visited in order and each has k >= 0 entries: begin[c] is
  // the entry count before chunk c's first entry (set for empty chunks too).
  size_t next_chunk = 0;
  LOWBAND_RETURN_IF_ERROR(VisitSparseLoCo(layout, plan, bulk, [&](size_t c, uint32_t e, uint16_t l, float v) {
    while (next_chunk <= c) u.begin[next_chunk++] = e;
    u.index[e] = l;
    u.value[e] = v;
  }));
  const uint32_t total = static_cast<uint32_t>(plan.kept);
  while (next_chunk <= plan.chunks.size()) u.begin[next_chunk++] = total;
  return u;
}

// Sum of the chunk counts of a sparse_fp32 frame (bulk holds at least the
// counts); rejects a count above its chunk's size.
StatusOr<uint64_t> SparseFp32Entries(const ParamLayout& layout, const LayoutPlan& plan, const Bytes& bulk) {
  uint64_t m = 0;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      const uint16_t count = LoadU16(bulk.data() + 2 * c);
      if (count > plan.chunks[c].numel()) {
        return InvalidArgument(ChunkWhere(CodecKind::kSparseFp32, layout, plan, t, c) + ": count " +
                               std::to_string(count) + " > chunk size " + Num(plan.chunks[c].numel()));
      }
      m += count;
    }
  }
  return m;
}

StatusOr<Update> ParseSparseFp32(const ParamLayout& layout, const LayoutPlan& plan, const Bytes& bulk,
                                 uint64_t m) {
  constexpr CodecKind kKind = CodecKind::kSparseFp32;
  Update u;
  u.dense = false;
  u.begin.resize(plan.chunks.size() + 1);
  u.index.resize(m);
  u.value.resize(m);
  const uint8_t* counts = bulk.data();
  const uint8_t* idx = counts + 2 * plan.chunks.size();
  const uint8_t* vals = idx + Ceil12(m);
  if (!Pad12Clean(idx, m)) {
    return InvalidArgument("sparse_fp32: nonzero pad bits after the last 12-bit index");
  }
  if (m) std::memcpy(u.value.data(), vals, 4 * m);
  uint32_t e = 0;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      const uint32_t n = static_cast<uint32_t>(plan.chunks[c].numel());
      const uint32_t count = LoadU16(counts + 2 * c);
      u.begin[c] = e;
      int64_t prev = -1;
      for (uint32_t j = 0; j < count; ++j, ++e) {
        const uint32_t l = Get12(idx, e);
        if (l >= n || static_cast<int64_t>(l) <= prev) {
          return BadIndex(kKind, layout, plan, t, c, l, prev);
        }
        prev = l;
        u.index[e] = static_cast<uint16_t>(l);
        if (!std::isfinite(u.value[e])) {
          return InvalidArgument(ChunkWhere(kKind, layout, plan, t, c) + ": value at index " +
                                 Num(l) + " is " + Num(u.value[e]));
        }
      }
    }
  }
  u.begin[plan.chunks.size()] = e;
  return u;
}

// sparse_2bit's index stream, read a bit at a time from the low bit of each
// byte; never past `end`.
class BitReader {
 public:
  BitReader(const uint8_t* p, const uint8_t* end) : p_(p), end_(end) {}
  // False at the end of the stream.
  bool Bit(uint32_t* bit) {
    if (p_ == end_) return false;
    *bit = (*p_ >> used_) & 1u;
    if (++used_ == 8) {
      used_ = 0;
      ++p_;
    }
    return true;
  }
  // Bytes begun so far (a partly read byte counts), and whether the unread
  // bits of that byte are zero.
  uint64_t BytesBegun(const uint8_t* start) const { return static_cast<uint64_t>(p_ - start) + (used_ ? 1 : 0); }
  bool PadClean() const { return used_ == 0 || (*p_ >> used_) == 0; }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
  int used_ = 0;  // bits of *p_ already read
};

class BitWriter {
 public:
  explicit BitWriter(uint8_t* p) : p_(p) {}
  void Bits(uint32_t v, int n) {  // the low n bits of v, lowest first
    for (int i = 0; i < n; ++i) One((v >> i) & 1u);
  }
  void One(uint32_t bit) {
    if (used_ == 0) *p_ = 0;
    *p_ = static_cast<uint8_t>(*p_ | (bit << used_));
    if (++used_ == 8) {
      used_ = 0;
      ++p_;
    }
  }
  uint8_t* End() { return used_ ? p_ + 1 : p_; }

 private:
  uint8_t* p_;
  int used_ = 0;
};

// Runs after CheckHeader and the checksum; `counts_end` bytes (tables and
// counts) are known present and the counts <= their chunks' sizes, m their
// sum. Decodes the index stream bounded by the bulk's end, then requires the
// codes to fill the rest exactly.
StatusOr<Update> ParseSparse2Bit(const ParamLayout& layout, const LayoutPlan& plan, const Bytes& bulk,
                                 uint64_t counts_end, uint64_t m) {
  constexpr CodecKind kKind = CodecKind::kSparse2Bit;
  const uint8_t* p = bulk.data();
  const uint64_t tables_bytes = 16 * plan.tensors.size();
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    for (int j = 0; j < 4; ++j) {
      const float v = LoadF32(p + 16 * t + 4 * j);
      if (!std::isfinite(v)) {
        return InvalidArgument(TensorWhere(kKind, layout, t) + ": table entry " + std::to_string(j) + " is " + Num(v));
      }
    }
  }
  Update u;
  u.dense = false;
  u.begin.resize(plan.chunks.size() + 1);
  u.index.resize(m);
  u.value.resize(m);
  const uint8_t* counts = p + tables_bytes;
  const uint8_t* stream = p + counts_end;
  BitReader in(stream, p + bulk.size());
  uint32_t e = 0;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      const int64_t n = plan.chunks[c].numel();
      const uint32_t count = LoadU16(counts + 2 * c);
      const int b = Sparse2BitRiceParam(n, count);
      u.begin[c] = e;
      int64_t prev = -1;
      for (uint32_t j = 0; j < count; ++j, ++e) {
        // g = q * 2^b + r; the quotient's run stops as soon as it passes the chunk.
        int64_t q = 0;
        uint32_t bit = 0;
        for (;;) {
          if (!in.Bit(&bit)) {
            return InvalidArgument(ChunkWhere(kKind, layout, plan, t, c) + ": index stream ends inside entry " +
                                   std::to_string(j) + " of " + std::to_string(count));
          }
          if (bit == 0) break;
          if ((++q << b) > n) {
            return InvalidArgument(ChunkWhere(kKind, layout, plan, t, c) + ": gap of entry " + std::to_string(j) +
                                   " runs past the chunk's " + Num(n) + " elements");
          }
        }
        int64_t r = 0;
        for (int i = 0; i < b; ++i) {
          if (!in.Bit(&bit)) {
            return InvalidArgument(ChunkWhere(kKind, layout, plan, t, c) + ": index stream ends inside entry " +
                                   std::to_string(j) + " of " + std::to_string(count));
          }
          r |= static_cast<int64_t>(bit) << i;
        }
        const int64_t l = prev + 1 + (q << b) + r;
        if (l >= n) return BadIndex(kKind, layout, plan, t, c, l, prev);
        prev = l;
        u.index[e] = static_cast<uint16_t>(l);
      }
    }
  }
  u.begin[plan.chunks.size()] = e;
  if (!in.PadClean()) return InvalidArgument("sparse_2bit: nonzero pad bits after the last index");
  const uint64_t codes_at = counts_end + in.BytesBegun(stream);
  const uint64_t want = codes_at + Ceil2(m);
  if (bulk.size() != want) {
    return WrongLength(kKind, bulk.size(), want,
                       Num(m) + " entries whose indices take " + Num(codes_at - counts_end) + " bytes");
  }
  const uint8_t* codes = p + codes_at;
  if (!Pad2Clean(codes, m)) return InvalidArgument("sparse_2bit: nonzero pad bits after the last 2-bit code");
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    float table[4];
    std::memcpy(table, p + 16 * t, 16);
    for (uint32_t i = u.begin[tp.first_chunk]; i < u.begin[tp.first_chunk + tp.num_chunks]; ++i) {
      u.value[i] = table[(codes[i >> 2] >> (2 * (i & 3))) & 3];
    }
  }
  return u;
}

StatusOr<Encoded> PackSparseFp32(const ParamLayout& layout, const LayoutPlan& plan, const Update& u) {
  const uint64_t m = u.value.size();
  Bytes bulk(BulkBytes(plan, CodecKind::kSparseFp32, m));
  uint8_t* p = bulk.data();
  for (size_t c = 0; c < plan.chunks.size(); ++c) {
    const uint32_t count = u.begin[c + 1] - u.begin[c];  // <= 4096 (checked indices)
    p[2 * c] = static_cast<uint8_t>(count);
    p[2 * c + 1] = static_cast<uint8_t>(count >> 8);
  }
  p += 2 * plan.chunks.size();
  p = Pack12(u.index.data(), m, p);
  if (m) std::memcpy(p, u.value.data(), 4 * m);
  return Finish(layout, CodecKind::kSparseFp32, 0, std::move(bulk));
}

}  // namespace

// ---------------------------------------------------------------- plan

int64_t LayoutPlan::FlatIndex(size_t t, size_t c, int64_t l) const {
  const TensorPlan& tp = tensors[t];
  const Chunk& ch = chunks[c];
  return tp.offset + ch.origin + (l / ch.cols) * tp.row_stride + (l % ch.cols);
}

LayoutPlan PlanLayout(const ParamLayout& layout, int topk) {
  LayoutPlan plan;
  plan.topk = std::clamp<int>(topk, 1, static_cast<int>(kChunkElems));
  const int64_t k_num = plan.topk;
  auto add = [&](TensorPlan* tp, int64_t origin, int64_t rows, int64_t cols) {
    Chunk ch;
    ch.origin = origin;
    ch.rows = static_cast<int32_t>(rows);
    ch.cols = static_cast<int32_t>(cols);
    const int64_t n = rows * cols;
    ch.k = static_cast<int32_t>(std::min<int64_t>(n, (k_num * n + kChunkElems - 1) / kChunkElems));
    tp->kept += ch.k;
    plan.chunks.push_back(ch);
  };
  plan.tensors.reserve(layout.tensors.size());
  int64_t offset = 0;
  for (const TensorSpec& spec : layout.tensors) {
    TensorPlan tp;
    tp.offset = offset;
    tp.numel = spec.numel();
    tp.first_chunk = plan.chunks.size();
    for (int64_t d : spec.shape) LOWBAND_CHECK(d >= 0);  // loaders reject negative dimensions
    if (tp.numel > 0 && spec.shape.size() == 2) {
      const int64_t rows = spec.shape[0], cols = spec.shape[1];
      const int64_t rf = rows / kTileSide, cf = cols / kTileSide, rr = rows % kTileSide, rc = cols % kTileSide;
      tp.row_stride = cols;
      for (int64_t i = 0; i < rf; ++i) {
        for (int64_t j = 0; j < cf; ++j) add(&tp, i * kTileSide * cols + j * kTileSide, kTileSide, kTileSide);
      }
      if (rc > 0) {
        for (int64_t i = 0; i < rf; ++i) add(&tp, i * kTileSide * cols + cf * kTileSide, kTileSide, rc);
      }
      if (rr > 0) {
        for (int64_t j = 0; j < cf; ++j) add(&tp, rf * kTileSide * cols + j * kTileSide, rr, kTileSide);
      }
      if (rr > 0 && rc > 0) add(&tp, rf * kTileSide * cols + cf * kTileSide, rr, rc);
    } else if (tp.numel > 0) {
      for (int64_t base = 0; base < tp.numel; base += kChunkElems) {
        add(&tp, base, 1, std::min(kChunkElems, tp.numel - base));
      }
    }
    tp.num_chunks = plan.chunks.size() - tp.first_chunk;
    plan.kept += tp.kept;
    offset += tp.numel;
    plan.tensors.push_back(tp);
  }
  plan.numel = offset;
  return plan;
}

// ---------------------------------------------------------------- updates

std::vector<float> Densify(const LayoutPlan& plan, const Update& u) {
  LOWBAND_CHECK(CheckUpdate(plan, u, false).ok());
  if (u.dense) return u.values;
  std::vector<float> out(static_cast<size_t>(plan.numel), 0.0f);
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      for (uint32_t e = u.begin[c]; e < u.begin[c + 1]; ++e) out[plan.FlatIndex(t, c, u.index[e])] = u.value[e];
    }
  }
  return out;
}

Status ApplyUpdate(const LayoutPlan& plan, const Update& u, std::vector<float>* theta) {
  if (theta->size() != static_cast<uint64_t>(plan.numel)) {
    return InvalidArgument("parameters have " + Num(theta->size()) +
                           " values, the plan has " + Num(plan.numel));
  }
  LOWBAND_RETURN_IF_ERROR(CheckUpdate(plan, u, false));
  float* th = theta->data();
  if (u.dense) {
    const float* v = u.values.data();
    for (size_t i = 0, n = u.values.size(); i < n; ++i) th[i] = th[i] - v[i];
    return Status::Ok();
  }
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      for (uint32_t e = u.begin[c]; e < u.begin[c + 1]; ++e) {
        const int64_t i = plan.FlatIndex(t, c, u.index[e]);
        th[i] = th[i] - u.value[e];
      }
    }
  }
  return Status::Ok();
}

// ---------------------------------------------------------------- sizes

uint64_t BulkBytes(const LayoutPlan& plan, CodecKind kind, uint64_t nnz) {
  const uint64_t p = static_cast<uint64_t>(plan.numel);
  switch (kind) {
    case CodecKind::kDenseFp32: return 4 * p;
    case CodecKind::kDenseBf16: return 2 * p;
    case CodecKind::kInt8: return 4 * plan.chunks.size() + p;
    case CodecKind::kSparseLoCo: {
      uint64_t bytes = 0;
      for (const TensorPlan& tp : plan.tensors) {
        const uint64_t k = static_cast<uint64_t>(tp.kept);
        bytes += 16 + Ceil12(k) + Ceil2(k);
      }
      return bytes;
    }
    case CodecKind::kSparseFp32: return 2 * plan.chunks.size() + Ceil12(nnz) + 4 * nnz;
    case CodecKind::kSparse2Bit: return 0;  // depends on the indices: Sparse2BitBytes
  }
  return 0;
}

int Sparse2BitRiceParam(int64_t n, int64_t m) {
  if (m <= 0 || n <= m) return 0;
  const int64_t q = (n - m) / m;
  int b = 0;
  while ((q >> (b + 1)) != 0) ++b;
  return b;
}

uint64_t Sparse2BitIndexBits(int64_t n, const uint16_t* indices, size_t m) {
  const int b = Sparse2BitRiceParam(n, static_cast<int64_t>(m));
  uint64_t bits = 0;
  int64_t prev = -1;
  for (size_t j = 0; j < m; ++j) {
    const int64_t g = indices[j] - prev - 1;
    prev = indices[j];
    bits += static_cast<uint64_t>(g >> b) + 1 + static_cast<uint64_t>(b);
  }
  return bits;
}

uint64_t Sparse2BitBytes(const LayoutPlan& plan, const Sparse2BitParts& parts) {
  LOWBAND_CHECK(parts.begin.size() == plan.chunks.size() + 1);
  uint64_t bits = 0;
  for (size_t c = 0; c < plan.chunks.size(); ++c) {
    bits += Sparse2BitIndexBits(plan.chunks[c].numel(), parts.indices.data() + parts.begin[c],
                                parts.begin[c + 1] - parts.begin[c]);
  }
  return 16 * plan.tensors.size() + 2 * plan.chunks.size() + (bits + 7) / 8 + Ceil2(parts.begin.back());
}

// ---------------------------------------------------------------- packing

StatusOr<Encoded> PackSparse2Bit(const ParamLayout& layout, const LayoutPlan& plan, const Sparse2BitParts& parts) {
  constexpr CodecKind kKind = CodecKind::kSparse2Bit;
  LOWBAND_RETURN_IF_ERROR(CheckPlan(layout, plan));
  if (parts.tables.size() != 4 * plan.tensors.size() || parts.begin.size() != plan.chunks.size() + 1 ||
      parts.begin.front() != 0 || parts.indices.size() != parts.begin.back() ||
      parts.codes.size() != parts.begin.back()) {
    return InvalidArgument("sparse_2bit parts: " + Num(parts.tables.size()) + " table entries, " +
                           Num(parts.begin.size()) + " chunk starts, " + Num(parts.indices.size()) + " indices, " +
                           Num(parts.codes.size()) + " codes; the plan needs " + Num(4 * plan.tensors.size()) +
                           " table entries, " + Num(plan.chunks.size() + 1) +
                           " chunk starts from 0, and as many "
                           "codes and indices as the last start says");
  }
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (int j = 0; j < 4; ++j) {
      const float v = parts.tables[4 * t + j];
      if (!std::isfinite(v)) {
        return InvalidArgument(TensorWhere(kKind, layout, t) + ": table entry " + std::to_string(j) + " is " + Num(v));
      }
    }
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      const int64_t n = plan.chunks[c].numel();
      if (parts.begin[c + 1] < parts.begin[c] || parts.begin[c + 1] - parts.begin[c] > n) {
        return InvalidArgument(ChunkWhere(kKind, layout, plan, t, c) + ": entries [" + Num(parts.begin[c]) + ", " +
                               Num(parts.begin[c + 1]) + ") for a chunk of " + Num(n));
      }
      int64_t prev = -1;
      for (uint32_t i = parts.begin[c]; i < parts.begin[c + 1]; ++i) {
        const int64_t l = parts.indices[i];
        if (l >= n || l <= prev) return BadIndex(kKind, layout, plan, t, c, l, prev);
        prev = l;
        if (parts.codes[i] > 3) {
          return InvalidArgument(ChunkWhere(kKind, layout, plan, t, c) + ": code " + std::to_string(parts.codes[i]) +
                                 " at index " + Num(l) + " (allowed 0..3)");
        }
      }
    }
  }
  Bytes bulk(Sparse2BitBytes(plan, parts));
  uint8_t* p = bulk.data();
  std::memcpy(p, parts.tables.data(), 4 * parts.tables.size());
  p += 4 * parts.tables.size();
  for (size_t c = 0; c < plan.chunks.size(); ++c) {
    const uint32_t count = parts.begin[c + 1] - parts.begin[c];
    p[2 * c] = static_cast<uint8_t>(count);
    p[2 * c + 1] = static_cast<uint8_t>(count >> 8);
  }
  p += 2 * plan.chunks.size();
  BitWriter out(p);
  for (size_t c = 0; c < plan.chunks.size(); ++c) {
    const uint32_t m = parts.begin[c + 1] - parts.begin[c];
    const int b = Sparse2BitRiceParam(plan.chunks[c].numel(), m);
    int64_t prev = -1;
    for (uint32_t i = parts.begin[c]; i < parts.begin[c + 1]; ++i) {
      const int64_t g = parts.indices[i] - prev - 1;
      prev = parts.indices[i];
      for (int64_t q = g >> b; q > 0; --q) out.One(1);
      out.One(0);
      out.Bits(static_cast<uint32_t>(g), b);
    }
  }
  p = Pack2(parts.codes.data(), parts.codes.size(), out.End());
  LOWBAND_CHECK(p == bulk.data() + bulk.size());
  return Finish(layout, kKind, 0, std::move(bulk));
}

StatusOr<Encoded> PackSparseLoCo(const ParamLayout& layout, const LayoutPlan& plan, const SparseLoCoParts& parts) {
  constexpr CodecKind kKind = CodecKind::kSparseLoCo;
  LOWBAND_RETURN_IF_ERROR(CheckPlan(layout, plan));
  if (parts.tables.size() != 4 * plan.tensors.size() || parts.indices.size() != static_cast<uint64_t>(plan.kept) ||
      parts.codes.size() != static_cast<uint64_t>(plan.kept)) {
    return InvalidArgument("sparseloco parts: " + Num(parts.tables.size()) + " table entries, " +
                           Num(parts.indices.size()) + " indices, " +
                           Num(parts.codes.size()) + " codes; the plan needs " +
                           Num(4 * plan.tensors.size()) + ", " + Num(plan.kept) + ", " +
                           Num(plan.kept));
  }
  // Validate everything before writing.
  uint64_t i = 0;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (int j = 0; j < 4; ++j) {
      const float v = parts.tables[4 * t + j];
      if (!std::isfinite(v)) {
        return InvalidArgument(TensorWhere(kKind, layout, t) + ": table entry " + std::to_string(j) + " is " + Num(v));
      }
    }
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      const int64_t n = plan.chunks[c].numel();
      int64_t prev = -1;
      for (int32_t j = 0; j < plan.chunks[c].k; ++j, ++i) {
        const int64_t l = parts.indices[i];
        if (l >= n || l <= prev) {
          return BadIndex(kKind, layout, plan, t, c, l, prev);
        }
        prev = l;
        if (parts.codes[i] > 3) {
          return InvalidArgument(ChunkWhere(kKind, layout, plan, t, c) + ": code " + std::to_string(parts.codes[i]) +
                                 " at index " + Num(l) + " (allowed 0..3)");
        }
      }
    }
  }
  Bytes bulk(BulkBytes(plan, kKind));
  uint8_t* p = bulk.data();
  uint64_t e = 0;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const uint64_t k = static_cast<uint64_t>(plan.tensors[t].kept);
    std::memcpy(p, &parts.tables[4 * t], 16);
    p = Pack12(parts.indices.data() + e, k, p + 16);
    p = Pack2(parts.codes.data() + e, k, p);
    e += k;
  }
  return Finish(layout, kKind, static_cast<uint32_t>(plan.topk), std::move(bulk));
}

namespace {
StatusOr<Encoded> Seal(const ParamLayout& layout, const LayoutPlan& plan, CodecKind kind, Frame bulk,
                       const uint64_t* checksum) {
  LOWBAND_RETURN_IF_ERROR(CheckPlan(layout, plan));
  const uint64_t want = BulkBytes(plan, kind);
  if (kind == CodecKind::kSparseFp32 || kind == CodecKind::kSparse2Bit || bulk.size() != want) {
    return InvalidArgument(std::string(CodecName(kind)) + " packed bulk is " + Num(bulk.size()) + " bytes, the plan needs " +
                           Num(want));
  }
  return Finish(layout, kind, kind == CodecKind::kSparseLoCo ? static_cast<uint32_t>(plan.topk) : 0, std::move(bulk),
                checksum);
}
}  // namespace

StatusOr<Encoded> SealPackedBulk(const ParamLayout& layout, const LayoutPlan& plan, CodecKind kind, Bytes bulk) {
  return Seal(layout, plan, kind, std::move(bulk), nullptr);
}

StatusOr<Encoded> SealPackedBulk(const ParamLayout& layout, const LayoutPlan& plan, CodecKind kind, Frame bulk,
                                 uint64_t checksum) {
  return Seal(layout, plan, kind, std::move(bulk), &checksum);
}

StatusOr<Encoded> PackInt8(const ParamLayout& layout, const LayoutPlan& plan, const Int8Parts& parts) {
  constexpr CodecKind kKind = CodecKind::kInt8;
  LOWBAND_RETURN_IF_ERROR(CheckPlan(layout, plan));
  if (parts.scales.size() != plan.chunks.size() || parts.q.size() != static_cast<uint64_t>(plan.numel)) {
    return InvalidArgument("int8 parts: " + Num(parts.scales.size()) + " scales, " +
                           Num(parts.q.size()) + " values; the plan needs " +
                           Num(plan.chunks.size()) + ", " + Num(plan.numel));
  }
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      const float s = parts.scales[c];
      if (!std::isfinite(s) || s < 0 || !std::isfinite(127.0f * s)) {
        return InvalidArgument(ChunkWhere(kKind, layout, plan, t, c) + ": scale " + Num(s) +
                               " (must be finite, >= 0, and 127 * scale finite)");
      }
    }
  }
  const int8_t* q = parts.q.data();
  for (size_t i = 0; i < parts.q.size(); ++i) {
    if (q[i] == -128) {
      return InvalidArgument("int8 parts: q = -128 at plan position " + Num(i) +
                             " (allowed -127..127)");
    }
  }
  Bytes bulk(BulkBytes(plan, kKind));
  uint8_t* p = bulk.data();
  for (const TensorPlan& tp : plan.tensors) {
    if (tp.num_chunks) std::memcpy(p, &parts.scales[tp.first_chunk], 4 * tp.num_chunks);
    p += 4 * tp.num_chunks;
    if (tp.numel > 0) std::memcpy(p, q + tp.offset, static_cast<size_t>(tp.numel));
    p += std::max<int64_t>(tp.numel, 0);
  }
  return Finish(layout, kKind, 0, std::move(bulk));
}

StatusOr<Encoded> PackDenseFp32(const ParamLayout& layout, const std::vector<float>& values) {
  if (values.size() != static_cast<uint64_t>(layout.numel())) {
    return InvalidArgument("dense_fp32: " + Num(values.size()) + " values, layout has " +
                           Num(layout.numel()));
  }
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return InvalidArgument("dense_fp32: element " + Num(i) + " is " + Num(values[i]));
    }
  }
  Bytes bulk(values.size() * sizeof(float));
  if (!bulk.empty()) std::memcpy(bulk.data(), values.data(), bulk.size());
  return Finish(layout, CodecKind::kDenseFp32, 0, std::move(bulk));
}

StatusOr<Encoded> PackDenseBf16(const ParamLayout& layout, const std::vector<uint16_t>& bits) {
  if (bits.size() != static_cast<uint64_t>(layout.numel())) {
    return InvalidArgument("dense_bf16: " + Num(bits.size()) + " values, layout has " +
                           Num(layout.numel()));
  }
  for (size_t i = 0; i < bits.size(); ++i) {
    if (!IsBf16Finite(bits[i])) {
      return InvalidArgument("dense_bf16: element " + Num(i) + " is not finite");
    }
  }
  Bytes bulk(bits.size() * sizeof(uint16_t));
  if (!bulk.empty()) std::memcpy(bulk.data(), bits.data(), bulk.size());
  return Finish(layout, CodecKind::kDenseBf16, 0, std::move(bulk));
}

StatusOr<Encoded> PackAggregate(const ParamLayout& layout, const LayoutPlan& plan, const Update& u) {
  LOWBAND_RETURN_IF_ERROR(CheckPlan(layout, plan));
  LOWBAND_RETURN_IF_ERROR(CheckUpdate(plan, u, true));
  if (u.dense) return PackDenseFp32(layout, u.values);
  if (BulkBytes(plan, CodecKind::kSparseFp32, u.nnz()) < BulkBytes(plan, CodecKind::kDenseFp32)) {
    return PackSparseFp32(layout, plan, u);
  }
  return PackDenseFp32(layout, Densify(plan, u));
}

// ---------------------------------------------------------------- parsing

Status CheckBlob(const ParamLayout& layout, CodecKind expected_codec, const BlobHeader& header,
                 const Bytes& bulk) {
  if (header.codec != expected_codec) {
    return InvalidArgument(std::string("codec is ") + CodecName(header.codec) + ", expected " +
                           CodecName(expected_codec));
  }
  LOWBAND_RETURN_IF_ERROR(CheckHeader(layout, header, bulk));
  return CheckChecksum(header, bulk);
}

StatusOr<Update> ParseUpdate(const ParamLayout& layout, const LayoutPlan& plan, const BlobHeader& header,
                             const Bytes& bulk) {
  LOWBAND_RETURN_IF_ERROR(CheckPlan(layout, plan));
  LOWBAND_RETURN_IF_ERROR(CheckHeader(layout, header, bulk));
  const CodecKind kind = header.codec;
  const uint64_t have = bulk.size();
  if (kind == CodecKind::kSparseLoCo && header.topk != static_cast<uint32_t>(plan.topk)) {
    return InvalidArgument("sparseloco payload has topk " + std::to_string(header.topk) + ", the campaign uses " +
                           std::to_string(plan.topk));
  }
  // Exact length from the plan (sparse_fp32: and its counts) before any allocation.
  uint64_t m = 0;
  if (kind == CodecKind::kSparseFp32) {
    const uint64_t counts_bytes = 2 * plan.chunks.size();
    if (have < counts_bytes) {
      return WrongLength(kind, have, counts_bytes, "the chunk counts alone (" + Num(plan.chunks.size()) +
                                                       " chunks)");
    }
    LOWBAND_ASSIGN_OR_RETURN(m, SparseFp32Entries(layout, plan, bulk));
    const uint64_t want = BulkBytes(plan, kind, m);
    if (have != want) return WrongLength(kind, have, want, Num(m) + " entries");
    if (m > std::numeric_limits<uint32_t>::max()) {
      return InvalidArgument("sparse_fp32 payload has " + Num(m) + " entries, more than an update can hold");
    }
  } else if (kind == CodecKind::kSparse2Bit) {
    // Tables and counts, then at least a bit per index and the codes: a
    // bound on what the counts may ask for before anything is allocated.
    const uint64_t counts_end = 16 * plan.tensors.size() + 2 * plan.chunks.size();
    if (have < counts_end) {
      return WrongLength(kind, have, counts_end,
                         "the tables and chunk counts alone (" + Num(plan.tensors.size()) + " tensors, " +
                             Num(plan.chunks.size()) + " chunks)");
    }
    for (size_t t = 0; t < plan.tensors.size(); ++t) {
      const TensorPlan& tp = plan.tensors[t];
      for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
        const uint16_t count = LoadU16(bulk.data() + 16 * plan.tensors.size() + 2 * c);
        if (count > plan.chunks[c].numel()) {
          return InvalidArgument(ChunkWhere(kind, layout, plan, t, c) + ": count " + std::to_string(count) +
                                 " > chunk size " + Num(plan.chunks[c].numel()));
        }
        m += count;
      }
    }
    const uint64_t least = counts_end + (m + 7) / 8 + Ceil2(m);
    if (have < least) return WrongLength(kind, have, least, "at least, " + Num(m) + " entries");
    if (m > std::numeric_limits<uint32_t>::max()) {
      return InvalidArgument("sparse_2bit payload has " + Num(m) + " entries, more than an update can hold");
    }
    LOWBAND_RETURN_IF_ERROR(CheckChecksum(header, bulk));
    return ParseSparse2Bit(layout, plan, bulk, counts_end, m);
  } else {
    const uint64_t want = BulkBytes(plan, kind);
    if (have != want) {
      return WrongLength(kind, have, want,
                         kind == CodecKind::kSparseLoCo ? "the layout at topk " + std::to_string(plan.topk)
                                                        : std::string("the layout"));
    }
  }
  LOWBAND_RETURN_IF_ERROR(CheckChecksum(header, bulk));
  switch (kind) {
    case CodecKind::kDenseFp32: return ParseDenseFp32(layout, plan, bulk);
    case CodecKind::kDenseBf16: return ParseDenseBf16(layout, plan, bulk);
    case CodecKind::kInt8: return ParseInt8(layout, plan, bulk);
    case CodecKind::kSparseLoCo: return ParseSparseLoCo(layout, plan, bulk);
    case CodecKind::kSparseFp32: return ParseSparseFp32(layout, plan, bulk, m);
    case CodecKind::kSparse2Bit: break;  // parsed above
  }
  return InvalidArgument("unknown codec");
}

Status CheckSparseLoCoPayload(const ParamLayout& layout, const LayoutPlan& plan, const BlobHeader& header,
                              const Bytes& bulk, PayloadStats* stats) {
  LOWBAND_RETURN_IF_ERROR(CheckPlan(layout, plan));
  LOWBAND_RETURN_IF_ERROR(CheckHeader(layout, header, bulk));
  if (header.codec != CodecKind::kSparseLoCo) {
    return InvalidArgument(std::string("codec is ") + CodecName(header.codec) + ", expected sparseloco");
  }
  if (header.topk != static_cast<uint32_t>(plan.topk)) {
    return InvalidArgument("sparseloco payload has topk " + std::to_string(header.topk) + ", the campaign uses " +
                           std::to_string(plan.topk));
  }
  const uint64_t want = BulkBytes(plan, CodecKind::kSparseLoCo);
  if (bulk.size() != want) {
    return WrongLength(CodecKind::kSparseLoCo, bulk.size(), want, "the layout at topk " + std::to_string(plan.topk));
  }
  LOWBAND_RETURN_IF_ERROR(CheckChecksum(header, bulk));
  // The checks VisitSparseLoCo makes, branch-free; on any failure it runs
  // to say what failed where.
  auto slow = [&] { return VisitSparseLoCo(layout, plan, bulk, [](size_t, uint32_t, uint16_t, float) {}); };
  float max_abs = 0;
  double sum_sq = 0;
  const uint8_t* p = bulk.data();
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    float table[4];
    std::memcpy(table, p, sizeof(table));
    const uint64_t k_total = static_cast<uint64_t>(tp.kept);
    const uint8_t* idx = p + 16;
    const uint8_t* codes = idx + Ceil12(k_total);
    p = codes + Ceil2(k_total);
    bool bad = !std::isfinite(table[0]) || !std::isfinite(table[1]) || !std::isfinite(table[2]) ||
               !std::isfinite(table[3]) || !Pad12Clean(idx, k_total) || !Pad2Clean(codes, k_total);
    uint64_t i = 0;  // entry within the tensor's streams
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      const Chunk& ch = plan.chunks[c];
      if (ch.k == 0) continue;
      const uint64_t last = i + static_cast<uint64_t>(ch.k);
      int32_t prev = -1;
      if (i & 1) {
        const int32_t l = static_cast<int32_t>(Get12(idx, i++));
        bad = bad || l <= prev;
        prev = l;
      }
      bool unordered = false;
      for (; i + 1 < last; i += 2) {
        // Two indices in 3 bytes (the 4th read is the next pair's, or a
        // code byte: the codes follow every non-empty index stream).
        uint32_t x;
        std::memcpy(&x, idx + (i >> 1) * 3, sizeof(x));
        const int32_t a = static_cast<int32_t>(x & 0xfff), b = static_cast<int32_t>((x >> 12) & 0xfff);
        unordered |= (a <= prev) | (b <= a);
        prev = b;
      }
      if (i < last) {
        const int32_t l = static_cast<int32_t>(Get12(idx, i++));
        unordered |= l <= prev;
        prev = l;
      }
      // Increasing, so the last index is the largest.
      bad = bad || unordered || prev >= static_cast<int32_t>(ch.numel());
    }
    if (bad) {
      Status st = slow();
      LOWBAND_CHECK(!st.ok());  // the same checks
      return st;
    }
    // How often each table entry is used: 4 codes a byte, counted 16 bits
    // apiece in one word (flushed before a count can reach 2^16); the pad
    // codes of the last byte are zero (checked above).
    static const std::array<uint64_t, 256> kCounts = [] {
      std::array<uint64_t, 256> a{};
      for (int b = 0; b < 256; ++b) {
        for (int j = 0; j < 4; ++j) a[static_cast<size_t>(b)] += uint64_t{1} << (16 * ((b >> (2 * j)) & 3));
      }
      return a;
    }();
    uint64_t count[4] = {0, 0, 0, 0};
    const uint64_t code_bytes = Ceil2(k_total);
    for (uint64_t b = 0; b < code_bytes;) {
      const uint64_t end = std::min(code_bytes, b + 16383);
      uint64_t packed = 0;
      for (; b < end; ++b) packed += kCounts[codes[b]];
      for (int j = 0; j < 4; ++j) count[j] += (packed >> (16 * j)) & 0xffff;
    }
    count[0] -= 4 * code_bytes - k_total;
    for (int j = 0; j < 4; ++j) {
      if (count[j] == 0) continue;
      max_abs = std::max(max_abs, std::fabs(table[j]));
      sum_sq += static_cast<double>(count[j]) * (static_cast<double>(table[j]) * table[j]);
    }
  }
  stats->max_abs = max_abs;
  stats->sum_sq = sum_sq;
  return Status::Ok();
}

// ---------------------------------------------------------------- aggregation

namespace {

// A sparseloco bulk's streams, read in place: per tensor the byte offset of
// its table (the index and code streams follow), and per chunk the number
// of its entries before it in its tensor's streams. The same for every
// payload of a plan.
struct SparseLoCoOffsets {
  std::vector<uint64_t> tensor_at;
  std::vector<uint64_t> entry_at;
  explicit SparseLoCoOffsets(const LayoutPlan& plan) : tensor_at(plan.tensors.size()), entry_at(plan.chunks.size()) {
    uint64_t at = 0;
    for (size_t t = 0; t < plan.tensors.size(); ++t) {
      const TensorPlan& tp = plan.tensors[t];
      tensor_at[t] = at;
      const uint64_t k = static_cast<uint64_t>(tp.kept);
      at += 16 + Ceil12(k) + Ceil2(k);
      uint64_t e = 0;
      for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
        entry_at[c] = e;
        e += static_cast<uint64_t>(plan.chunks[c].k);
      }
    }
  }
};

// fn(local index, value) for each entry of chunk c (of tensor t) of input
// `in` (a sparse Update or a sparseloco bulk), in increasing index order:
// the entries ParseUpdate gives.
template <typename Fn>
inline void ForEachEntry(const LayoutPlan& plan, const SparseLoCoOffsets& off, const AggregateInput& in, size_t t,
                         size_t c, Fn fn) {
  if (in.update != nullptr) {
    const Update& u = *in.update;
    for (uint32_t e = u.begin[c]; e < u.begin[c + 1]; ++e) fn(u.index[e], u.value[e]);
    return;
  }
  const uint8_t* p = in.sparseloco->data() + off.tensor_at[t];
  float table[4];
  std::memcpy(table, p, sizeof(table));
  const uint8_t* idx = p + 16;
  const uint8_t* codes = idx + Ceil12(static_cast<uint64_t>(plan.tensors[t].kept));
  const uint64_t first = off.entry_at[c], last = first + static_cast<uint64_t>(plan.chunks[c].k);
  auto code = [&](uint64_t i) { return (codes[i >> 2] >> (2 * (i & 3))) & 3; };
  uint64_t i = first;
  if ((i & 1) && i < last) {
    fn(static_cast<uint16_t>(Get12(idx, i)), table[code(i)]);
    ++i;
  }
  for (; i + 1 < last; i += 2) {  // a pair of indices in 3 bytes
    const uint8_t* q = idx + (i >> 1) * 3;
    fn(static_cast<uint16_t>(q[0] | ((q[1] & 0x0f) << 8)), table[code(i)]);
    fn(static_cast<uint16_t>((q[1] >> 4) | (q[2] << 4)), table[code(i + 1)]);
  }
  if (i < last) fn(static_cast<uint16_t>(Get12(idx, i)), table[code(i)]);
}

// Asks for chunk c's bytes of a sparseloco input ahead of reading them: the
// inputs are read at as many places at once as there are sites, more
// streams than a core's prefetcher follows.
inline void PrefetchChunk(const LayoutPlan& plan, const SparseLoCoOffsets& off, const AggregateInput& in, size_t t,
                          size_t c) {
  if (in.sparseloco == nullptr) return;
  const uint8_t* idx = in.sparseloco->data() + off.tensor_at[t] + 16;
  const uint64_t first = off.entry_at[c], k = static_cast<uint64_t>(plan.chunks[c].k);
  const uint8_t* from = idx + (first >> 1) * 3;
  const uint8_t* to = idx + ((first + k) >> 1) * 3 + 2;
  for (const uint8_t* q = from; q <= to + 63; q += 64) __builtin_prefetch(q);
  const uint8_t* codes = idx + Ceil12(static_cast<uint64_t>(plan.tensors[t].kept));
  __builtin_prefetch(codes + (first >> 2));
  __builtin_prefetch(codes + ((first + k) >> 2));
}

// fn(local index) for each entry of chunk c of input `in`, increasing.
template <typename Fn>
inline void ForEachIndex(const LayoutPlan& plan, const SparseLoCoOffsets& off, const AggregateInput& in, size_t t,
                         size_t c, Fn fn) {
  if (in.update != nullptr) {
    const Update& u = *in.update;
    for (uint32_t e = u.begin[c]; e < u.begin[c + 1]; ++e) fn(u.index[e]);
    return;
  }
  const uint8_t* idx = in.sparseloco->data() + off.tensor_at[t] + 16;
  const uint64_t first = off.entry_at[c], last = first + static_cast<uint64_t>(plan.chunks[c].k);
  uint64_t i = first;
  if ((i & 1) && i < last) fn(Get12(idx, i++));
  for (; i + 1 < last; i += 2) {
    const uint8_t* q = idx + (i >> 1) * 3;
    fn(static_cast<uint32_t>(q[0] | ((q[1] & 0x0f) << 8)));
    fn(static_cast<uint32_t>((q[1] >> 4) | (q[2] << 4)));
  }
  if (i < last) fn(Get12(idx, i));
}

// w[i]: weight of update i normalised to mean 1 (all 1.0f when unweighted,
// or when the weights are equal: R * w / (R * w) is exactly 1).
std::vector<float> NormalisedWeights(const std::vector<double>& weights, size_t r_total) {
  std::vector<float> w(r_total, 1.0f);
  if (!weights.empty()) {
    LOWBAND_CHECK(weights.size() == r_total);
    double total = 0;
    for (double x : weights) {
      LOWBAND_CHECK(std::isfinite(x) && x > 0);
      total += x;
    }
    for (size_t i = 0; i < r_total; ++i) w[i] = static_cast<float>(weights[i] * static_cast<double>(r_total) / total);
  }
  return w;
}

// Chunks handed to one thread at a time, and (sparse result) per piece
// assembled in order: enough work per range that the pool's hand-off does
// not show, small enough that the pieces waiting to be appended stay small.
constexpr int64_t kAggregateChunksPerRange = 256;

}  // namespace

Update AggregateMean(const LayoutPlan& plan, const std::vector<const Update*>& updates, AggregationRule rule,
                     const std::vector<double>& weights) {
  std::vector<AggregateInput> inputs;
  inputs.reserve(updates.size());
  for (const Update* u : updates) inputs.push_back(AggregateInput{u, nullptr});
  return AggregateMean(plan, inputs, rule, weights, nullptr);
}

Update AggregateMean(const LayoutPlan& plan, const std::vector<AggregateInput>& inputs, AggregationRule rule,
                     const std::vector<double>& weights, ThreadPool* pool) {
  LOWBAND_CHECK(!inputs.empty());
  const size_t r_total = inputs.size();
  const std::vector<float> w = NormalisedWeights(weights, r_total);
  float w_all = 0.0f;  // sum of the weights, in update order
  for (float x : w) w_all += x;
  const uint64_t sparseloco_bytes = BulkBytes(plan, CodecKind::kSparseLoCo);
  size_t n_dense = 0;
  uint64_t nnz_bound = 0;
  for (const AggregateInput& in : inputs) {
    LOWBAND_CHECK((in.update == nullptr) != (in.sparseloco == nullptr));
    if (in.update != nullptr) {
      LOWBAND_CHECK(CheckUpdate(plan, *in.update, false).ok());
      if (in.update->dense) ++n_dense;
      nnz_bound += in.update->nnz();
    } else {
      LOWBAND_CHECK(in.sparseloco->size() == sparseloco_bytes);
      nnz_bound += static_cast<uint64_t>(plan.kept);
    }
  }
  const SparseLoCoOffsets off(plan);
  // kMeanAll divides every coordinate by the sum of all weights (R when
  // unweighted); kMeanChoosers by the weight of the updates with an entry.
  const bool all = rule == AggregationRule::kMeanAll;
  const float inv_all = 1.0f / w_all;
  float w_dense = 0.0f;
  for (size_t i = 0; i < r_total; ++i) {
    if (inputs[i].update != nullptr && inputs[i].update->dense) w_dense += w[i];
  }
  std::vector<uint32_t> tensor_of(plan.chunks.size(), 0);
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) tensor_of[c] = static_cast<uint32_t>(t);
  }

  // Chunk-sized scratch: sums, chooser counts and weights, touched local indices.
  struct Scratch {
    std::vector<float> sum = std::vector<float>(kChunkElems, 0.0f);
    std::vector<uint32_t> cnt = std::vector<uint32_t>(kChunkElems, 0);
    std::vector<float> wsum = std::vector<float>(kChunkElems, 0.0f);
    std::vector<uint16_t> touched;
  };
  // A sparse result's entries of a range of chunks, appended in chunk order.
  struct Piece {
    std::vector<uint16_t> index;
    std::vector<float> value;
    std::vector<uint32_t> count;  // per chunk of the range
  };

  Update out;
  out.dense = n_dense > 0;
  const int64_t n_chunks = static_cast<int64_t>(plan.chunks.size());
  if (out.dense) {
    out.values.assign(static_cast<size_t>(plan.numel), 0.0f);
    // Every chunk writes its own elements of out.values.
    auto run = [&](int64_t begin, int64_t end) {
      Scratch s;
      for (int64_t ci = begin; ci < end; ++ci) {
        const size_t c = static_cast<size_t>(ci);
        const TensorPlan& tp = plan.tensors[tensor_of[c]];
        const Chunk& ch = plan.chunks[c];
        const int64_t n_c = ch.numel();
        std::fill(s.sum.begin(), s.sum.begin() + n_c, 0.0f);
        std::fill(s.wsum.begin(), s.wsum.begin() + n_c, 0.0f);
        for (size_t i = 0; i < r_total; ++i) {
          const AggregateInput& in = inputs[i];
          const float wi = w[i];
          if (in.update != nullptr && in.update->dense) {
            for (int64_t r = 0; r < ch.rows; ++r) {
              const float* src = in.update->values.data() + RowBase(tp, ch, r);
              float* sr = s.sum.data() + r * ch.cols;
              for (int32_t col = 0; col < ch.cols; ++col) sr[col] += wi * src[col];
            }
          } else {
            ForEachEntry(plan, off, in, tensor_of[c], c, [&](uint16_t l, float v) {
              s.sum[l] += wi * v;
              s.wsum[l] += wi;
            });
          }
        }
        for (int64_t r = 0; r < ch.rows; ++r) {
          float* dst = out.values.data() + RowBase(tp, ch, r);
          for (int32_t col = 0; col < ch.cols; ++col) {
            const int64_t l = r * ch.cols + col;
            dst[col] = s.sum[l] * (all ? inv_all : 1.0f / (w_dense + s.wsum[l]));
          }
        }
      }
    };
    if (pool == nullptr) {
      run(0, n_chunks);
    } else {
      LOWBAND_CHECK(pool->ParallelFor(n_chunks, kAggregateChunksPerRange, run).ok());  // run throws only bad_alloc
    }
    return out;
  }

  out.begin.assign(plan.chunks.size() + 1, 0);
  const uint64_t cap = std::min<uint64_t>(nnz_bound, static_cast<uint64_t>(plan.numel));
  out.index.reserve(cap);
  out.value.reserve(cap);
  // Chunks [begin, end) into `piece`.
  auto sparse_range = [&](int64_t begin, int64_t end, Scratch* sc, Piece* piece) {
    Scratch& s = *sc;
    for (int64_t ci = begin; ci < end; ++ci) {
      const size_t c = static_cast<size_t>(ci);
      const int64_t n_c = plan.chunks[c].numel();
      s.touched.clear();
      for (size_t i = 0; i < r_total; ++i) {
        const float wi = w[i];
        ForEachEntry(plan, off, inputs[i], tensor_of[c], c, [&](uint16_t l, float v) {
          if (s.cnt[l] == 0) {
            s.touched.push_back(l);
            s.sum[l] = 0.0f;
            s.wsum[l] = 0.0f;
          }
          s.sum[l] += wi * v;
          s.wsum[l] += wi;
          ++s.cnt[l];
        });
      }
      const size_t before = piece->index.size();
      auto emit = [&](uint16_t l) {
        piece->index.push_back(l);
        piece->value.push_back(s.sum[l] * (all ? inv_all : 1.0f / s.wsum[l]));
        s.cnt[l] = 0;
      };
      if (s.touched.size() * 8 > static_cast<size_t>(n_c)) {
        // Dense enough: a scan of the chunk is cheaper than sorting.
        for (int64_t l = 0; l < n_c; ++l) {
          if (s.cnt[l]) emit(static_cast<uint16_t>(l));
        }
      } else {
        std::sort(s.touched.begin(), s.touched.end());
        for (uint16_t l : s.touched) emit(l);
      }
      piece->count.push_back(static_cast<uint32_t>(piece->index.size() - before));
    }
  };
  auto append = [&](int64_t begin, Piece* piece) {
    out.index.insert(out.index.end(), piece->index.begin(), piece->index.end());
    out.value.insert(out.value.end(), piece->value.begin(), piece->value.end());
    for (size_t j = 0; j < piece->count.size(); ++j) {
      const size_t c = static_cast<size_t>(begin) + j;
      out.begin[c + 1] = out.begin[c] + piece->count[j];
    }
    // Emptied, not freed: the next wave writes into the same (resident)
    // pages; fresh ones cost a page fault each (~20 us on a VM).
    piece->index.clear();
    piece->value.clear();
    piece->count.clear();
  };
  // Waves of `threads` ranges of kAggregateChunksPerRange chunks: each
  // thread fills its range's piece, then the pieces are appended in chunk
  // order (the result does not depend on the thread count).
  const int64_t threads = pool == nullptr ? 1 : pool->size();
  std::vector<Scratch> scratch(static_cast<size_t>(threads));
  std::vector<Piece> pieces(static_cast<size_t>(threads));
  for (int64_t wave = 0; wave < n_chunks; wave += threads * kAggregateChunksPerRange) {
    const int64_t ranges = std::min<int64_t>(threads, (n_chunks - wave + kAggregateChunksPerRange - 1) /
                                                          kAggregateChunksPerRange);
    auto run = [&](int64_t rb, int64_t re) {
      for (int64_t r = rb; r < re; ++r) {
        const int64_t b = wave + r * kAggregateChunksPerRange;
        sparse_range(b, std::min(n_chunks, b + kAggregateChunksPerRange), &scratch[static_cast<size_t>(r)],
                     &pieces[static_cast<size_t>(r)]);
      }
    };
    if (pool == nullptr || ranges == 1) {
      run(0, ranges);
    } else {
      LOWBAND_CHECK(pool->ParallelFor(ranges, 1, run).ok());  // run throws only bad_alloc
    }
    for (int64_t r = 0; r < ranges; ++r) append(wave + r * kAggregateChunksPerRange, &pieces[static_cast<size_t>(r)]);
  }
  return out;
}

namespace {

// 12-bit packed indices written from entry `e` on, by one thread, while
// other threads write the entries before and after: a byte holding two
// entries is written here only when both are (a pair in 3 bytes); the
// byte shared with a neighbour's entry is left for FixShared12.
struct Index12Writer {
  uint8_t* stream;
  uint64_t e;
  uint32_t pending = 0;
  bool has_pending = false;
  void Put(uint32_t l) {
    uint8_t* q = stream + (e >> 1) * 3;
    if ((e & 1) == 0) {
      q[0] = static_cast<uint8_t>(l);
      pending = l;
      has_pending = true;
    } else {
      if (has_pending) q[1] = static_cast<uint8_t>((pending >> 8) | ((l & 0x0f) << 4));
      q[2] = static_cast<uint8_t>(l >> 4);
      has_pending = false;
    }
    ++e;
  }
  // n indices in a row.
  void PutAll(const uint16_t* l, int64_t n) {
    int64_t i = 0;
    if ((e & 1) && n > 0) Put(l[i++]);
    uint8_t* q = stream + (e >> 1) * 3;  // e even from here
    for (; i + 1 < n; i += 2, q += 3, e += 2) {
      const uint32_t a = l[i], b = l[i + 1];
      q[0] = static_cast<uint8_t>(a);
      q[1] = static_cast<uint8_t>((a >> 8) | ((b & 0x0f) << 4));
      q[2] = static_cast<uint8_t>(b >> 4);
      has_pending = false;
    }
    if (i < n) Put(l[i]);
  }
};

// The bytes Index12Writer left: the middle byte of each pair split between
// two chunks (written again where one writer held both: the same value),
// and an odd stream's last 2-byte index. at[c]: chunk c's first entry;
// first[c], last[c]: its first and last local index (chunks with entries).
void FixShared12(uint8_t* stream, const std::vector<uint64_t>& at, const std::vector<uint16_t>& first,
                 const std::vector<uint16_t>& last) {
  const size_t n_chunks = first.size();
  uint32_t prev_last = 0;
  for (size_t c = 0; c < n_chunks; ++c) {
    if (at[c + 1] == at[c]) continue;
    const uint64_t e = at[c];
    if (e & 1) stream[(e >> 1) * 3 + 1] = static_cast<uint8_t>((prev_last >> 8) | ((first[c] & 0x0f) << 4));
    prev_last = last[c];
  }
  const uint64_t m = at[n_chunks];
  if (m & 1) stream[((m - 1) >> 1) * 3 + 1] = static_cast<uint8_t>(prev_last >> 8);
}

// fn(begin, end) over [0, n) chunks, spread over `pool` (may be null).
void ForChunks(ThreadPool* pool, int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (pool == nullptr || n <= kAggregateChunksPerRange) {
    fn(0, n);
    return;
  }
  LOWBAND_CHECK(pool->ParallelFor(n, kAggregateChunksPerRange, fn).ok());  // fn throws only bad_alloc
}

}  // namespace

StatusOr<Encoded> PackAggregateMean(const ParamLayout& layout, const LayoutPlan& plan,
                                    const std::vector<AggregateInput>& inputs, AggregationRule rule,
                                    const std::vector<double>& weights, ThreadPool* pool, std::shared_ptr<Bytes> buffer,
                                    std::vector<float>* theta, uint64_t* nnz, uint64_t* theta_digest,
                                    PackMeanTimes* times) {
  auto lap_start = std::chrono::steady_clock::now();
  auto lap = [&](double PackMeanTimes::*field) {
    const auto now = std::chrono::steady_clock::now();
    if (times) times->*field += std::chrono::duration<double>(now - lap_start).count();
    lap_start = now;
  };
  LOWBAND_RETURN_IF_ERROR(CheckPlan(layout, plan));
  LOWBAND_CHECK(theta_digest == nullptr || theta != nullptr);
  LOWBAND_CHECK(!inputs.empty() && buffer != nullptr);
  LOWBAND_CHECK(theta == nullptr || theta->size() == static_cast<size_t>(plan.numel));
  const size_t r_total = inputs.size();
  const std::vector<float> w = NormalisedWeights(weights, r_total);
  float w_all = 0.0f;  // sum of the weights, in update order (as AggregateMean)
  for (float x : w) w_all += x;
  const float inv_all = 1.0f / w_all;
  const bool all = rule == AggregationRule::kMeanAll;
  const SparseLoCoOffsets off(plan);
  const uint64_t sparseloco_bytes = BulkBytes(plan, CodecKind::kSparseLoCo);

  // Every partial sum is at most sum_i w_i max_i |input i| in magnitude (up
  // to rounding), every mean at most that over the smallest weight.
  double bound = 0;
  float w_min = std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < r_total; ++i) {
    const AggregateInput& in = inputs[i];
    LOWBAND_CHECK((in.update == nullptr) != (in.sparseloco == nullptr));
    float peak = 0;
    bool finite = true;
    if (in.update != nullptr) {
      LOWBAND_CHECK(CheckUpdate(plan, *in.update, false).ok());
      LOWBAND_CHECK(!in.update->dense);
      for (float v : in.update->value) {
        finite = finite && std::isfinite(v);
        peak = std::max(peak, std::fabs(v));
      }
    } else {
      LOWBAND_CHECK(in.sparseloco->size() == sparseloco_bytes);
      for (size_t t = 0; t < plan.tensors.size(); ++t) {
        for (int j = 0; j < 4; ++j) {
          const float v = LoadF32(in.sparseloco->data() + off.tensor_at[t] + 4 * j);
          finite = finite && std::isfinite(v);
          peak = std::max(peak, std::fabs(v));
        }
      }
    }
    if (!finite) return FailedPrecondition("aggregate: input " + Num(i) + " holds a non-finite value");
    bound += static_cast<double>(w[i]) * peak;
    w_min = std::min(w_min, w[i]);
  }
  constexpr double kFar = 1e36;  // fp32 overflows at 3.4e38
  if (!(w_min > 0) || !(bound <= kFar) || !(bound / w_min <= kFar)) {
    return FailedPrecondition("aggregate: the inputs' magnitudes do not bound the mean below fp32 overflow");
  }

  std::vector<uint32_t> tensor_of(plan.chunks.size(), 0);
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) tensor_of[c] = static_cast<uint32_t>(t);
  }
  const size_t n_chunks = plan.chunks.size();
  constexpr int64_t kWords = kChunkElems / 64;

  // Pass 1: each chunk's entries (the union of the inputs' indices), so
  // at[c] is where chunk c's entries start.
  std::vector<uint64_t> at(n_chunks + 1, 0);
  ForChunks(pool, static_cast<int64_t>(n_chunks), [&](int64_t begin, int64_t end) {
    uint64_t bits[kWords];
    for (int64_t ci = begin; ci < end; ++ci) {
      const size_t c = static_cast<size_t>(ci);
      const int64_t words = (plan.chunks[c].numel() + 63) / 64;
      std::fill(bits, bits + words, 0);
      if (c + 1 < n_chunks) {
        for (const AggregateInput& in : inputs) PrefetchChunk(plan, off, in, tensor_of[c + 1], c + 1);
      }
      for (const AggregateInput& in : inputs) {
        ForEachIndex(plan, off, in, tensor_of[c], c, [&](uint32_t l) { bits[l >> 6] |= uint64_t{1} << (l & 63); });
      }
      uint64_t n = 0;
      for (int64_t j = 0; j < words; ++j) n += static_cast<uint64_t>(__builtin_popcountll(bits[j]));
      at[c + 1] = n;
    }
  });
  for (size_t c = 0; c < n_chunks; ++c) at[c + 1] += at[c];
  lap(&PackMeanTimes::count_s);
  const uint64_t m = at[n_chunks];
  if (m > std::numeric_limits<uint32_t>::max()) {
    return FailedPrecondition("aggregate: " + Num(m) + " entries, more than an update can hold");
  }

  // The payload: PackAggregate's choice of format, in the caller's buffer
  // (one too small or far too large is replaced: with room to spare, whose
  // untouched pages cost nothing).
  const bool sparse = BulkBytes(plan, CodecKind::kSparseFp32, m) < BulkBytes(plan, CodecKind::kDenseFp32);
  const uint64_t size = sparse ? BulkBytes(plan, CodecKind::kSparseFp32, m) : BulkBytes(plan, CodecKind::kDenseFp32);
  if (buffer->capacity() < size || buffer->capacity() > size + size / 2) {
    Bytes().swap(*buffer);
    buffer->reserve(size + size / 32);
  }
  buffer->resize(size);  // zero-fills only what grew since the last round
  uint8_t* out = buffer->data();
  uint8_t* idx_out = out + 2 * n_chunks;
  uint8_t* val_out = idx_out + Ceil12(m);
  if (sparse) {
    for (size_t c = 0; c < n_chunks; ++c) {
      const uint64_t count = at[c + 1] - at[c];  // <= 4096
      out[2 * c] = static_cast<uint8_t>(count);
      out[2 * c + 1] = static_cast<uint8_t>(count >> 8);
    }
  }
  std::vector<uint16_t> first_l(n_chunks, 0), last_l(n_chunks, 0);

  // Pass 2: each chunk's sums (as AggregateMean: from 0.0f, the inputs in
  // order, then times 1 / the weight), written in index order at at[c],
  // and theta -= mean.
  float* th = theta ? theta->data() : nullptr;
  auto pass2 = [&](auto all_tag, int64_t begin, int64_t end) {
    constexpr bool kAll = decltype(all_tag)::value;
    std::vector<float> sum(kChunkElems), wsum(kAll ? 0 : kChunkElems), local_value(kChunkElems);
    std::vector<uint16_t> local_index(kChunkElems);
    uint64_t bits[kWords];
    Index12Writer index{idx_out, at[static_cast<size_t>(begin)]};
    bool finite = true;
    for (int64_t ci = begin; ci < end; ++ci) {
      const size_t c = static_cast<size_t>(ci);
      const size_t t = tensor_of[c];
      const TensorPlan& tp = plan.tensors[t];
      const Chunk& ch = plan.chunks[c];
      const int64_t n_c = ch.numel();
      const int64_t words = (n_c + 63) / 64;
      std::fill(sum.begin(), sum.begin() + n_c, 0.0f);
      if (!kAll) std::fill(wsum.begin(), wsum.begin() + n_c, 0.0f);
      std::fill(bits, bits + words, 0);
      // The rows written below (a 64 x 64 tile's are 64 rows of 256 bytes,
      // a model row apart: read from memory one by one otherwise), and the
      // next chunk's inputs.
      for (int64_t r = 0; r < ch.rows; ++r) {
        const int64_t row = RowBase(tp, ch, r);
        for (int64_t col = 0; col < ch.cols; col += 16) {
          if (th) __builtin_prefetch(th + row + col, 1);
          if (!sparse) __builtin_prefetch(out + 4 * (row + col), 1);
        }
      }
      if (c + 1 < n_chunks) {
        for (const AggregateInput& in : inputs) PrefetchChunk(plan, off, in, tensor_of[c + 1], c + 1);
      }
      for (size_t i = 0; i < r_total; ++i) {
        const float wi = w[i];
        ForEachEntry(plan, off, inputs[i], t, c, [&](uint16_t l, float v) {
          sum[l] += wi * v;
          if (!kAll) wsum[l] += wi;
          bits[l >> 6] |= uint64_t{1} << (l & 63);
        });
      }
      if (!sparse) {  // dense_fp32: zeros where no input has an entry
        for (int64_t r = 0; r < ch.rows; ++r) {
          std::memset(out + 4 * RowBase(tp, ch, r), 0, 4 * static_cast<size_t>(ch.cols));
        }
      }
      // Row by row (a 64-column tile's row is one word of `bits`): each
      // entry's mean, its element of theta and of a dense payload.
      int64_t n = 0;
      for (int64_t r = 0; r < ch.rows; ++r) {
        const int64_t lo = r * ch.cols, hi = lo + ch.cols;
        float* dense = sparse ? nullptr : reinterpret_cast<float*>(out) + RowBase(tp, ch, r) - lo;
        float* th_row = th ? th + RowBase(tp, ch, r) - lo : nullptr;  // [l] for local index l of this row
        for (int64_t j = lo >> 6; j <= (hi - 1) >> 6; ++j) {
          uint64_t b = bits[j];
          if (64 * j < lo) b &= ~uint64_t{0} << (lo - 64 * j);
          if (64 * j + 64 > hi) b &= (uint64_t{1} << (hi - 64 * j)) - 1;
          for (; b != 0; b &= b - 1) {
            const int64_t l = 64 * j + __builtin_ctzll(b);
            const float v = sum[l] * (kAll ? inv_all : 1.0f / wsum[l]);
            local_index[n] = static_cast<uint16_t>(l);
            local_value[n++] = v;
            if (dense) dense[l] = v;
            if (th_row) th_row[l] = th_row[l] - v;
          }
        }
      }
      LOWBAND_CHECK(static_cast<uint64_t>(n) == at[c + 1] - at[c]);
      for (int64_t i = 0; i < n; ++i) finite = finite && std::isfinite(local_value[i]);
      if (sparse && n > 0) {
        first_l[c] = local_index[0];
        last_l[c] = local_index[n - 1];
        index.PutAll(local_index.data(), n);
        std::memcpy(val_out + 4 * at[c], local_value.data(), 4 * static_cast<size_t>(n));
      }
    }
    LOWBAND_CHECK(finite);  // bounded above
  };
  ForChunks(pool, static_cast<int64_t>(n_chunks), [&](int64_t begin, int64_t end) {
    if (all) {
      pass2(std::true_type(), begin, end);
    } else {
      pass2(std::false_type(), begin, end);
    }
  });
  if (sparse) FixShared12(idx_out, at, first_l, last_l);
  *nnz = m;
  lap(&PackMeanTimes::sum_s);
  // The payload's checksum and theta's digest side by side (two threads
  // of the pool): each a sequential hash of a model-sized buffer.
  uint64_t checksum = 0;
  auto hash = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i == 0) checksum = BulkChecksum(buffer->data(), buffer->size());
      if (i == 1) *theta_digest = ValuesDigest(theta->data(), theta->size());
    }
  };
  const int64_t hashes = theta_digest ? 2 : 1;
  if (pool == nullptr || hashes == 1) {
    hash(0, hashes);
  } else {
    LOWBAND_CHECK(pool->ParallelFor(hashes, 1, hash).ok());
  }
  lap(&PackMeanTimes::hash_s);
  return Finish(layout, sparse ? CodecKind::kSparseFp32 : CodecKind::kDenseFp32, 0, Frame(std::move(buffer)),
                &checksum);
}

}  // namespace lowband
