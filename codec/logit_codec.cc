#include "codec/logit_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>

#include "codec/dither.h"

namespace lowband {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the logit payload is little-endian");

namespace {

// Entries sent per row.
int SentPerRow(const LogitCodec& codec, int vocab) { return codec.topk > 0 ? codec.topk : vocab; }
int IndexBytes(int vocab) { return vocab <= 256 ? 1 : 2; }
DitherGrid GridOf(const LogitCodec& codec) { return {-codec.clip, codec.clip, codec.bits}; }

// Centres and clips one row into out[vocab] (see the header for the arithmetic).
void CentreRow(const float* x, int vocab, float clip, float* out) {
  double sum = 0.0;
  int finite = 0;
  for (int c = 0; c < vocab; ++c) {
    if (std::isfinite(x[c])) {
      sum += x[c];
      ++finite;
    }
  }
  const double mean = finite > 0 ? sum / finite : 0.0;
  for (int c = 0; c < vocab; ++c) {
    if (std::isnan(x[c])) {
      out[c] = -clip;
    } else {
      // +-inf minus a finite mean stays +-inf and clamps to +-clip.
      out[c] = std::clamp(static_cast<float>(static_cast<double>(x[c]) - mean), -clip, clip);
    }
  }
}

std::string RowWhere(int r, int e) {
  return "logit payload row " + std::to_string(r) + " entry " + std::to_string(e);
}

}  // namespace

Status ValidateLogitCodec(const LogitCodec& codec, int vocab) {
  if (vocab < 1) return InvalidArgument("logit codec: vocab " + std::to_string(vocab) + " must be >= 1");
  if (codec.bits < 0 || codec.bits > kMaxDitherBits) {
    return InvalidArgument("logit codec: bits " + std::to_string(codec.bits) + ", allowed 0 (fp32) or 1..16");
  }
  if (!std::isfinite(codec.clip) || !(codec.clip > 0.0f)) {
    return InvalidArgument("logit codec: clip " + std::to_string(codec.clip) + " must be finite and > 0");
  }
  if (codec.topk < 0 || codec.topk > vocab) {
    return InvalidArgument("logit codec: topk " + std::to_string(codec.topk) + ", allowed 0..vocab (" +
                           std::to_string(vocab) + ")");
  }
  if (codec.topk > 0 && vocab > 65536) {
    return InvalidArgument("logit codec: top-k needs vocab <= 65536 (uint16 indices), vocab is " +
                           std::to_string(vocab));
  }
  return Status::Ok();
}

uint64_t LogitPayloadBytes(const LogitCodec& codec, int rows, int vocab) {
  if (rows < 1 || !ValidateLogitCodec(codec, vocab).ok()) return 0;
  const uint64_t sent = static_cast<uint64_t>(rows) * static_cast<uint64_t>(SentPerRow(codec, vocab));
  const uint64_t index_bytes = codec.topk > 0 ? sent * IndexBytes(vocab) : 0;
  return index_bytes + (codec.bits == 0 ? 4 * sent : PackedBytes(sent, codec.bits));
}

std::vector<uint8_t> EncodeLogits(const LogitCodec& codec, int rows, int vocab, const float* logits,
                                  uint64_t seed) {
  LOWBAND_CHECK(ValidateLogitCodec(codec, vocab).ok());
  LOWBAND_CHECK(rows >= 1 && static_cast<int64_t>(rows) * vocab <= kMaxLogitEntries);
  const int per_row = SentPerRow(codec, vocab);
  const size_t sent = static_cast<size_t>(rows) * per_row;
  std::vector<uint32_t> columns;  // top-k only
  std::vector<float> values;
  columns.reserve(codec.topk > 0 ? sent : 0);
  values.reserve(sent);

  std::vector<float> row(vocab);
  std::vector<int> order(vocab);
  for (int r = 0; r < rows; ++r) {
    CentreRow(logits + static_cast<size_t>(r) * vocab, vocab, codec.clip, row.data());
    if (codec.topk == 0) {
      values.insert(values.end(), row.begin(), row.end());
      continue;
    }
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + codec.topk, order.end(), [&](int a, int b) {
      return row[a] != row[b] ? row[a] > row[b] : a < b;
    });
    std::sort(order.begin(), order.begin() + codec.topk);
    for (int i = 0; i < codec.topk; ++i) {
      columns.push_back(static_cast<uint32_t>(order[i]));
      values.push_back(row[order[i]]);
    }
  }

  std::vector<uint8_t> out;
  out.reserve(LogitPayloadBytes(codec, rows, vocab));
  for (uint32_t c : columns) {
    out.push_back(static_cast<uint8_t>(c));
    if (IndexBytes(vocab) == 2) out.push_back(static_cast<uint8_t>(c >> 8));
  }
  if (codec.bits == 0) {
    const size_t at = out.size();
    out.resize(at + 4 * sent);
    if (sent > 0) std::memcpy(out.data() + at, values.data(), 4 * sent);
  } else {
    const DitherGrid grid = GridOf(codec);
    std::vector<uint16_t> codes(sent);
    for (size_t i = 0; i < sent; ++i) {
      const uint64_t r = i / per_row;
      const uint64_t column = codec.topk > 0 ? columns[i] : i % per_row;
      codes[i] = QuantizeWithDither(grid, values[i], DitherAt(seed, r * vocab + column));
    }
    const std::vector<uint8_t> packed = PackBits(codes, codec.bits);
    out.insert(out.end(), packed.begin(), packed.end());
  }
  return out;
}

StatusOr<std::vector<float>> DecodeLogits(const LogitCodec& codec, int rows, int vocab, const uint8_t* data,
                                          size_t len, uint64_t seed) {
  LOWBAND_RETURN_IF_ERROR(ValidateLogitCodec(codec, vocab));
  if (rows < 1 || static_cast<int64_t>(rows) * vocab > kMaxLogitEntries) {
    return InvalidArgument("logit payload: " + std::to_string(rows) + " rows x " + std::to_string(vocab) +
                           " vocab, allowed rows >= 1 and at most " + std::to_string(kMaxLogitEntries) +
                           " entries");
  }
  const uint64_t want = LogitPayloadBytes(codec, rows, vocab);
  if (len != want) {
    return InvalidArgument("logit payload: " + std::to_string(len) + " bytes, expected " + std::to_string(want) +
                           " for " + std::to_string(rows) + " rows x " + std::to_string(vocab) + " vocab, bits " +
                           std::to_string(codec.bits) + ", topk " + std::to_string(codec.topk));
  }
  const int per_row = SentPerRow(codec, vocab);
  const size_t sent = static_cast<size_t>(rows) * per_row;

  // Columns of the sent entries: read and checked (top-k) or implied.
  std::vector<uint32_t> columns(sent);
  size_t at = 0;
  if (codec.topk > 0) {
    const int width = IndexBytes(vocab);
    for (size_t i = 0; i < sent; ++i, at += width) {
      const uint32_t c = width == 1 ? data[at] : static_cast<uint32_t>(data[at] | (data[at + 1] << 8));
      const int r = static_cast<int>(i / per_row), e = static_cast<int>(i % per_row);
      if (c >= static_cast<uint32_t>(vocab)) {
        return InvalidArgument(RowWhere(r, e) + ": column " + std::to_string(c) + " >= vocab " +
                               std::to_string(vocab));
      }
      if (e > 0 && c <= columns[i - 1]) {
        return InvalidArgument(RowWhere(r, e) + ": column " + std::to_string(c) +
                               (c == columns[i - 1] ? " is a duplicate"
                                                    : " after " + std::to_string(columns[i - 1]) +
                                                          " (columns must be strictly increasing)"));
      }
      columns[i] = c;
    }
  } else {
    for (size_t i = 0; i < sent; ++i) columns[i] = static_cast<uint32_t>(i % per_row);
  }

  std::vector<float> out(static_cast<size_t>(rows) * vocab, codec.topk > 0 ? -codec.clip : 0.0f);
  auto slot = [&](size_t i) -> float& { return out[(i / per_row) * vocab + columns[i]]; };
  if (codec.bits == 0) {
    for (size_t i = 0; i < sent; ++i, at += 4) {
      float v;
      std::memcpy(&v, data + at, 4);
      if (!std::isfinite(v) || std::fabs(v) > codec.clip) {
        return InvalidArgument(RowWhere(static_cast<int>(i / per_row), static_cast<int>(i % per_row)) +
                               " (column " + std::to_string(columns[i]) + "): value " + std::to_string(v) +
                               (std::isfinite(v) ? " outside [-clip, clip]" : " is not finite"));
      }
      slot(i) = v;
    }
    return out;
  }
  StatusOr<std::vector<uint16_t>> codes = UnpackBits(data + at, len - at, sent, codec.bits);
  if (!codes.ok()) return InvalidArgument("logit payload values: " + codes.status().message());
  const DitherGrid grid = GridOf(codec);
  for (size_t i = 0; i < sent; ++i) {
    slot(i) = DequantizeWithDither(grid, (*codes)[i], DitherAt(seed, (i / per_row) * vocab + columns[i]));
  }
  return out;
}

double MeanKl(const float* p_logits, const float* q_logits, int rows, int vocab) {
  LOWBAND_CHECK(rows >= 1 && vocab >= 1);
  // log softmax(x)_c = x_c - lse(x), lse(x) = m + log sum exp(x_c - m).
  auto lse = [vocab](const float* x) {
    const double m = *std::max_element(x, x + vocab);
    double s = 0.0;
    for (int c = 0; c < vocab; ++c) s += std::exp(x[c] - m);
    return m + std::log(s);
  };
  double total = 0.0;
  for (int r = 0; r < rows; ++r) {
    const float* p = p_logits + static_cast<size_t>(r) * vocab;
    const float* q = q_logits + static_cast<size_t>(r) * vocab;
    const double lp = lse(p), lq = lse(q);
    double kl = 0.0;
    for (int c = 0; c < vocab; ++c) {
      const double log_p = p[c] - lp;
      const double prob = std::exp(log_p);
      if (prob > 0.0) kl += prob * (log_p - (q[c] - lq));
    }
    total += std::max(kl, 0.0);  // rounding can leave a tiny negative
  }
  return total / rows;
}

}  // namespace lowband
