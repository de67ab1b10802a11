// Subtractive-dither quantizer: error bound, unbiasedness and variance (on
// average and at fixed points, edges included), reproducibility, and the
// bit packer's layout, round trips and rejections.
#include "codec/dither.h"

#include <cmath>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

namespace lowband {
namespace {

TEST_CASE("ValidateGrid refuses bad bounds and bit widths", "[unit][common]") {
  CHECK(ValidateGrid({-1.0f, 1.0f, 1}).ok());
  CHECK(ValidateGrid({-1.0f, 1.0f, 16}).ok());
  CHECK_FALSE(ValidateGrid({-1.0f, 1.0f, 0}).ok());
  CHECK_FALSE(ValidateGrid({-1.0f, 1.0f, 17}).ok());
  CHECK_FALSE(ValidateGrid({1.0f, 1.0f, 8}).ok());
  CHECK_FALSE(ValidateGrid({2.0f, 1.0f, 8}).ok());
  CHECK_FALSE(ValidateGrid({-INFINITY, 1.0f, 8}).ok());
  CHECK_FALSE(ValidateGrid({NAN, 1.0f, 8}).ok());
  CHECK(GridStep({-1.0f, 1.0f, 2}) == Approx(2.0 / 3));
  CHECK(DitherVariance({-1.0f, 1.0f, 2}) == Approx(4.0 / 9 / 12));
}

TEST_CASE("DitherAt is reproducible, within half a step either side and about uniform", "[unit][common]") {
  double sum = 0.0, sum_sq = 0.0;
  const int n = 100000;
  for (int j = 0; j < n; ++j) {
    const float u = DitherAt(7, j);
    REQUIRE(u >= -0.5f);
    REQUIRE(u < 0.5f);
    REQUIRE(u == DitherAt(7, j));
    sum += u;
    sum_sq += u * u;
  }
  CHECK(std::fabs(sum / n) < 4 * std::sqrt(1.0 / 12 / n));
  CHECK(sum_sq / n == Approx(1.0 / 12).epsilon(0.02));
  // Neighbouring seeds are unrelated streams, not shifted copies.
  int equal = 0;
  for (int j = 0; j < 1000; ++j) equal += DitherAt(7, j) == DitherAt(8, j) || DitherAt(7, j + 1) == DitherAt(8, j);
  CHECK(equal == 0);
}

TEST_CASE("dithered error stays within half a step, every width", "[unit][common]") {
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<float> dist(-3.5f, 2.5f);
  std::vector<float> x(2000), back(x.size());
  for (float& v : x) v = dist(rng);
  x[0] = -3.5f;  // both edges
  x[1] = 2.5f;
  for (int bits = 1; bits <= 16; ++bits) {
    const DitherGrid grid{-3.5f, 2.5f, bits};
    const std::vector<uint16_t> q = DitherQuantize(grid, x.data(), x.size(), 99);
    DitherDequantize(grid, q.data(), q.size(), 99, back.data());
    const double half = GridStep(grid) / 2 + 1e-6;  // + float rounding of the result
    for (size_t j = 0; j < x.size(); ++j) {
      REQUIRE(q[j] < (1u << bits));
      REQUIRE(std::fabs(back[j] - x[j]) <= half);
    }
  }
}

TEST_CASE("values outside the grid are clamped first", "[unit][common]") {
  const DitherGrid grid{0.0f, 1.0f, 4};
  const float x[] = {-5.0f, 7.0f, NAN};
  const std::vector<uint16_t> q = DitherQuantize(grid, x, 3, 3);
  float back[3];
  DitherDequantize(grid, q.data(), 3, 3, back);
  CHECK(std::fabs(back[0] - 0.0f) <= GridStep(grid) / 2 + 1e-7);
  CHECK(std::fabs(back[1] - 1.0f) <= GridStep(grid) / 2 + 1e-7);
  CHECK(std::fabs(back[2] - 0.0f) <= GridStep(grid) / 2 + 1e-7);  // NaN encodes as lo
}

TEST_CASE("dithered error is unbiased with variance step^2/12", "[unit][common]") {
  const DitherGrid grid{-1.0f, 1.0f, 4};
  const double var = DitherVariance(grid), step = GridStep(grid);
  std::mt19937_64 rng(2);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);

  SECTION("over 200k random coordinates and 4 seeds") {
    const size_t n = 50000;
    std::vector<float> x(n), back(n);
    double sum = 0.0, sum_sq = 0.0;
    for (uint64_t seed = 10; seed < 14; ++seed) {
      for (float& v : x) v = dist(rng);
      const std::vector<uint16_t> q = DitherQuantize(grid, x.data(), n, seed);
      DitherDequantize(grid, q.data(), n, seed, back.data());
      for (size_t j = 0; j < n; ++j) {
        const double e = static_cast<double>(back[j]) - x[j];
        sum += e;
        sum_sq += e * e;
      }
    }
    const double total = 4.0 * n;
    CHECK(std::fabs(sum / total) < 4 * std::sqrt(var / total));
    CHECK(sum_sq / total == Approx(var).epsilon(0.05));
  }

  SECTION("at fixed points, the grid edges and a grid value included") {
    // Independent of x: the same mean and variance wherever x sits in its cell.
    for (float x0 : {-1.0f, 1.0f, static_cast<float>(-1.0 + 3 * step), 0.123f, 0.99f}) {
      const size_t n = 40000;
      std::vector<float> x(n, x0), back(n);
      const std::vector<uint16_t> q = DitherQuantize(grid, x.data(), n, 77);
      DitherDequantize(grid, q.data(), n, 77, back.data());
      double sum = 0.0, sum_sq = 0.0;
      for (size_t j = 0; j < n; ++j) {
        const double e = static_cast<double>(back[j]) - x0;
        sum += e;
        sum_sq += e * e;
      }
      INFO("x = " << x0);
      CHECK(std::fabs(sum / n) < 4 * std::sqrt(var / n));
      CHECK(sum_sq / n == Approx(var).epsilon(0.05));
    }
  }
}

TEST_CASE("the same seed reproduces the codes, another seed does not", "[unit][common]") {
  const DitherGrid grid{-8.0f, 8.0f, 6};
  std::vector<float> x(500);
  for (size_t j = 0; j < x.size(); ++j) x[j] = std::sin(0.37f * j) * 7.0f;
  const std::vector<uint16_t> a = DitherQuantize(grid, x.data(), x.size(), 5);
  CHECK(a == DitherQuantize(grid, x.data(), x.size(), 5));
  CHECK(a != DitherQuantize(grid, x.data(), x.size(), 6));
}

TEST_CASE("PackBits lays codes out least significant bit first", "[unit][common]") {
  // 1, 2, 3, 4, 5 at 3 bits: 0b11'010'001 = 0xd1, then 0b0'101'100'0 = 0x58.
  CHECK(PackBits({1, 2, 3, 4, 5}, 3) == std::vector<uint8_t>{0xd1, 0x58});
  CHECK(PackBits({0xabcd, 0x0102}, 16) == std::vector<uint8_t>{0xcd, 0xab, 0x02, 0x01});
  CHECK(PackBits({}, 7).empty());
  CHECK(PackedBytes(13, 3) == 5);
  CHECK(PackedBytes(16, 3) == 6);
}

TEST_CASE("bit packing round trips every width and odd counts", "[unit][common]") {
  std::mt19937_64 rng(3);
  for (int bits = 1; bits <= 16; ++bits) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{37}, size_t{1000}}) {
      std::vector<uint16_t> codes(n);
      for (uint16_t& c : codes) c = static_cast<uint16_t>(rng() & ((1u << bits) - 1));
      if (n > 0) codes.back() = static_cast<uint16_t>((1u << bits) - 1);  // the largest code
      const std::vector<uint8_t> packed = PackBits(codes, bits);
      REQUIRE(packed.size() == PackedBytes(n, bits));
      StatusOr<std::vector<uint16_t>> back = UnpackBits(packed.data(), packed.size(), n, bits);
      REQUIRE(back.ok());
      REQUIRE(*back == codes);
    }
  }
}

TEST_CASE("UnpackBits rejects wrong lengths, widths and pad bits", "[unit][common]") {
  const std::vector<uint8_t> packed = PackBits({1, 2, 3, 4, 5}, 3);  // 2 bytes
  StatusOr<std::vector<uint16_t>> r = UnpackBits(packed.data(), 1, 5, 3);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  CHECK(r.status().message() == "packed codes: 1 bytes, expected 2 for 5 codes of 3 bits");
  const std::vector<uint8_t> longer = {0xd1, 0x58, 0x00};
  CHECK_FALSE(UnpackBits(longer.data(), longer.size(), 5, 3).ok());
  CHECK_FALSE(UnpackBits(packed.data(), packed.size(), 5, 0).ok());
  CHECK_FALSE(UnpackBits(packed.data(), packed.size(), 5, 17).ok());
  const std::vector<uint8_t> dirty = {0xd1, 0xd8};  // bit 15 is pad
  r = UnpackBits(dirty.data(), dirty.size(), 5, 3);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("pad bits") != std::string::npos);
  CHECK_FALSE(UnpackBits(nullptr, 0, SIZE_MAX, 8).ok());
}

}  // namespace
}  // namespace lowband
