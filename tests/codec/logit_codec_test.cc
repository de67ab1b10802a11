// FPLD logit payloads: centring and clipping, round trips at every width,
// fp32 exactness, top-k selection and layout, exact sizes, hostile payloads,
// and the KL that distillation measures.
#include "codec/logit_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "codec/dither.h"

namespace lowband {
namespace {

std::vector<float> RandomLogits(int rows, int vocab, float sd, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(1.5f, sd);  // offset: centring must remove it
  std::vector<float> x(static_cast<size_t>(rows) * vocab);
  for (float& v : x) v = dist(rng);
  return x;
}

// The centring and clipping the header specifies, written out independently.
std::vector<float> Centred(const std::vector<float>& x, int rows, int vocab, float clip) {
  std::vector<float> out(x.size());
  for (int r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (int c = 0; c < vocab; ++c) sum += x[r * vocab + c];
    const double mean = sum / vocab;
    for (int c = 0; c < vocab; ++c) {
      out[r * vocab + c] = std::clamp(static_cast<float>(x[r * vocab + c] - mean), -clip, clip);
    }
  }
  return out;
}

StatusOr<std::vector<float>> RoundTrip(const LogitCodec& codec, int rows, int vocab, const std::vector<float>& x,
                                       uint64_t seed, std::vector<uint8_t>* payload = nullptr) {
  std::vector<uint8_t> bytes = EncodeLogits(codec, rows, vocab, x.data(), seed);
  REQUIRE(bytes.size() == LogitPayloadBytes(codec, rows, vocab));
  StatusOr<std::vector<float>> out = DecodeLogits(codec, rows, vocab, bytes.data(), bytes.size(), seed);
  if (payload) *payload = std::move(bytes);
  return out;
}

TEST_CASE("ValidateLogitCodec names the bad field", "[unit][common]") {
  CHECK(ValidateLogitCodec({8, 8.0f, 0}, 100).ok());
  CHECK(ValidateLogitCodec({0, 8.0f, 100}, 100).ok());
  CHECK_FALSE(ValidateLogitCodec({17, 8.0f, 0}, 100).ok());
  CHECK_FALSE(ValidateLogitCodec({-1, 8.0f, 0}, 100).ok());
  CHECK_FALSE(ValidateLogitCodec({8, 0.0f, 0}, 100).ok());
  CHECK_FALSE(ValidateLogitCodec({8, NAN, 0}, 100).ok());
  CHECK_FALSE(ValidateLogitCodec({8, 8.0f, 101}, 100).ok());
  CHECK_FALSE(ValidateLogitCodec({8, 8.0f, 0}, 0).ok());
  CHECK(ValidateLogitCodec({8, 8.0f, 0}, 100000).ok());
  const Status s = ValidateLogitCodec({8, 8.0f, 5}, 100000);
  CHECK(s.message().find("65536") != std::string::npos);
}

TEST_CASE("logits round trip within half a step after centring and clipping", "[unit][common]") {
  const int rows = 6, vocab = 41;
  const std::vector<float> x = RandomLogits(rows, vocab, 4.0f, 1);  // sd 4: some entries clip at 8
  const std::vector<float> c = Centred(x, rows, vocab, 8.0f);
  for (int bits = 1; bits <= 16; ++bits) {
    const LogitCodec codec{bits, 8.0f, 0};
    StatusOr<std::vector<float>> back = RoundTrip(codec, rows, vocab, x, 42);
    REQUIRE(back.ok());
    const double half = GridStep({-8.0f, 8.0f, bits}) / 2 + 1e-5;
    for (size_t i = 0; i < c.size(); ++i) REQUIRE(std::fabs((*back)[i] - c[i]) <= half);
  }
}

TEST_CASE("fp32 logits decode to the centred, clipped values exactly", "[unit][common]") {
  const int rows = 5, vocab = 300;
  std::vector<float> x = RandomLogits(rows, vocab, 5.0f, 2);
  x[3] = std::numeric_limits<float>::infinity();  // +inf -> clip, left out of the mean
  x[4] = NAN;                                     // NaN -> -clip
  std::vector<float> finite_row(x.begin(), x.begin() + vocab);
  finite_row.erase(finite_row.begin() + 3, finite_row.begin() + 5);
  const LogitCodec codec{0, 8.0f, 0};
  StatusOr<std::vector<float>> back = RoundTrip(codec, rows, vocab, x, 0);
  REQUIRE(back.ok());
  const std::vector<float> c = Centred(x, rows, vocab, 8.0f);
  for (size_t i = vocab; i < c.size(); ++i) REQUIRE((*back)[i] == c[i]);
  // Row 0: the mean is over its finite entries only.
  const double mean = std::accumulate(finite_row.begin(), finite_row.end(), 0.0) / finite_row.size();
  CHECK((*back)[0] == std::clamp(static_cast<float>(x[0] - mean), -8.0f, 8.0f));
  CHECK((*back)[3] == 8.0f);
  CHECK((*back)[4] == -8.0f);
}

TEST_CASE("top-k keeps each row's k largest and fills the rest with -clip", "[unit][common]") {
  for (int vocab : {50, 300}) {  // uint8 and uint16 indices
    const int rows = 4, k = 7;
    const std::vector<float> x = RandomLogits(rows, vocab, 3.0f, 3 + vocab);
    const std::vector<float> c = Centred(x, rows, vocab, 8.0f);
    for (int bits : {0, 12}) {
      const LogitCodec codec{bits, 8.0f, k};
      std::vector<uint8_t> payload;
      StatusOr<std::vector<float>> back = RoundTrip(codec, rows, vocab, x, 9, &payload);
      REQUIRE(back.ok());
      const int index_bytes = vocab <= 256 ? 1 : 2;
      const uint64_t values = bits == 0 ? 4ull * rows * k : PackedBytes(rows * k, bits);
      CHECK(payload.size() == static_cast<uint64_t>(rows) * k * index_bytes + values);
      for (int r = 0; r < rows; ++r) {
        std::vector<int> order(vocab);
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(), [&](int a, int b) { return c[r * vocab + a] > c[r * vocab + b]; });
        std::vector<bool> kept(vocab, false);
        for (int i = 0; i < k; ++i) kept[order[i]] = true;
        for (int col = 0; col < vocab; ++col) {
          const float got = (*back)[r * vocab + col];
          INFO("vocab " << vocab << " bits " << bits << " row " << r << " col " << col);
          if (!kept[col]) {
            REQUIRE(got == -8.0f);
          } else if (bits == 0) {
            REQUIRE(got == c[r * vocab + col]);
          } else {
            REQUIRE(std::fabs(got - c[r * vocab + col]) <= GridStep({-8.0f, 8.0f, bits}) / 2 + 1e-5);
          }
        }
        // Indices are sent row by row in increasing column order.
        for (int i = 1; i < k; ++i) {
          const size_t at = (static_cast<size_t>(r) * k + i) * index_bytes;
          const int cur = index_bytes == 1 ? payload[at] : payload[at] | payload[at + 1] << 8;
          const int prev = index_bytes == 1 ? payload[at - 1] : payload[at - 2] | payload[at - 1] << 8;
          REQUIRE(prev < cur);
        }
      }
    }
  }
}

TEST_CASE("payload size is exact and linear in bits", "[unit][common]") {
  const int rows = 3, vocab = 64;  // 192 entries: a whole number of bytes at any width
  const uint64_t one_bit = LogitPayloadBytes({1, 8.0f, 0}, rows, vocab);
  CHECK(one_bit == 24);
  for (int bits = 1; bits <= 16; ++bits) CHECK(LogitPayloadBytes({bits, 8.0f, 0}, rows, vocab) == bits * one_bit);
  CHECK(LogitPayloadBytes({0, 8.0f, 0}, rows, vocab) == 4ull * rows * vocab);
  CHECK(LogitPayloadBytes({5, 8.0f, 0}, 1, 3) == 2);                   // ceil(15 / 8)
  CHECK(LogitPayloadBytes({4, 8.0f, 10}, 2, 1000) == 2 * 10 * 2 + 10);  // uint16 indices
  CHECK(LogitPayloadBytes({4, 8.0f, 0}, 0, 10) == 0);
  CHECK(LogitPayloadBytes({99, 8.0f, 0}, 1, 10) == 0);
}

TEST_CASE("malformed logit payloads are rejected with what and where", "[unit][common]") {
  const int rows = 3, vocab = 50;
  const std::vector<float> x = RandomLogits(rows, vocab, 2.0f, 4);
  auto decode = [&](const LogitCodec& codec, const std::vector<uint8_t>& p) {
    return DecodeLogits(codec, rows, vocab, p.data(), p.size(), 1);
  };
  auto expect_error = [](const StatusOr<std::vector<float>>& r, const std::string& part) {
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    INFO(r.status().message());
    CHECK(r.status().message().find(part) != std::string::npos);
  };

  const LogitCodec dense{6, 8.0f, 0};
  std::vector<uint8_t> p = EncodeLogits(dense, rows, vocab, x.data(), 1);
  std::vector<uint8_t> bad(p.begin(), p.end() - 1);
  expect_error(decode(dense, bad), "expected");
  bad = p;
  bad.push_back(0);
  expect_error(decode(dense, bad), "expected");
  bad = p;
  bad.back() |= 0x80;  // 150 * 6 = 900 bits: the last byte has 4 pad bits
  expect_error(decode(dense, bad), "pad bits");

  const LogitCodec topk{0, 8.0f, 4};
  p = EncodeLogits(topk, rows, vocab, x.data(), 1);
  bad = p;
  bad[5] = 60;  // row 1 entry 1
  expect_error(decode(topk, bad), "row 1 entry 1: column 60 >= vocab 50");
  bad = p;
  bad[6] = bad[5];
  expect_error(decode(topk, bad), "row 1 entry 2: column " + std::to_string(p[5]) + " is a duplicate");
  bad = p;
  std::swap(bad[8], bad[9]);  // row 2 entries 0 and 1
  expect_error(decode(topk, bad), "row 2 entry 1");
  bad = p;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(bad.data() + rows * 4 + 4 * 5, &nan, 4);  // after rows*k uint8 indices
  expect_error(decode(topk, bad), "row 1 entry 1 (column " + std::to_string(p[5]) + "): value nan is not finite");
  const float big = 9.0f;
  std::memcpy(bad.data() + rows * 4, &big, 4);
  expect_error(decode(topk, bad), "outside [-clip, clip]");

  expect_error(DecodeLogits(dense, 0, vocab, p.data(), p.size(), 1), "rows");
  expect_error(DecodeLogits(dense, 1 << 20, 1 << 7, p.data(), p.size(), 1), "entries");
  expect_error(DecodeLogits({17, 8.0f, 0}, rows, vocab, p.data(), p.size(), 1), "bits 17");
  expect_error(DecodeLogits({4, 8.0f, 51}, rows, vocab, p.data(), p.size(), 1), "topk 51");
}

TEST_CASE("random corruptions never crash the decoder", "[unit][common]") {
  const int rows = 4, vocab = 300;
  const std::vector<float> x = RandomLogits(rows, vocab, 2.0f, 5);
  std::mt19937_64 rng(6);
  for (const LogitCodec& codec : {LogitCodec{0, 8.0f, 9}, LogitCodec{5, 8.0f, 9}, LogitCodec{3, 8.0f, 0}}) {
    const std::vector<uint8_t> good = EncodeLogits(codec, rows, vocab, x.data(), 2);
    for (int trial = 0; trial < 300; ++trial) {
      std::vector<uint8_t> p = good;
      for (int m = 0; m < 3; ++m) p[rng() % p.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
      if (trial % 10 == 0) p.resize(rng() % (good.size() + 8));
      StatusOr<std::vector<float>> r = DecodeLogits(codec, rows, vocab, p.data(), p.size(), 2);
      if (r.ok()) {
        REQUIRE(r->size() == static_cast<size_t>(rows) * vocab);
        for (float v : *r) REQUIRE(std::isfinite(v));
      }
    }
  }
}

TEST_CASE("MeanKl is zero on equal rows, positive otherwise, shift invariant", "[unit][common]") {
  const int rows = 4, vocab = 30;
  const std::vector<float> p = RandomLogits(rows, vocab, 2.0f, 7);
  std::vector<float> q = RandomLogits(rows, vocab, 2.0f, 8);
  CHECK(MeanKl(p.data(), p.data(), rows, vocab) == Approx(0.0).margin(1e-12));
  CHECK(MeanKl(p.data(), q.data(), rows, vocab) > 0.01);
  std::vector<float> shifted = p;
  for (float& v : shifted) v += 1000.0f;  // no overflow: log-sum-exp
  CHECK(MeanKl(p.data(), shifted.data(), rows, vocab) == Approx(0.0).margin(1e-9));
  // Two-way hand check: p = (0, 0), q = (0, log 3): KL = log 2 - 0.5 log 3.
  const float a[] = {0.0f, 0.0f}, b[] = {0.0f, std::log(3.0f)};
  CHECK(MeanKl(a, b, 1, 2) == Approx(std::log(2.0) - 0.5 * std::log(3.0)).epsilon(1e-6));
}

TEST_CASE("KL of the decoded logits falls as bits rise", "[unit][common]") {
  const int rows = 32, vocab = 64;
  const std::vector<float> x = RandomLogits(rows, vocab, 2.0f, 9);
  double previous = 1e30;
  for (int bits : {2, 4, 6, 8, 12}) {
    StatusOr<std::vector<float>> back = RoundTrip({bits, 8.0f, 0}, rows, vocab, x, 11);
    REQUIRE(back.ok());
    const double kl = MeanKl(x.data(), back->data(), rows, vocab);
    INFO("bits " << bits << " KL " << kl);
    CHECK(kl < previous);
    previous = kl;
  }
  CHECK(previous < 1e-4);
}

}  // namespace
}  // namespace lowband
