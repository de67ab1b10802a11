#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "codec/params.h"

using namespace lowband;

TEST_CASE("Xxh64 gives the reference xxHash values", "[unit][params]") {
  // Expected values from `xxh64sum` (xxHash 0.8.1).
  CHECK(Xxh64("", 0) == 0xef46db3751d8e999ull);
  CHECK(Xxh64("abc", 3) == 0x44bc2cf5ad770999ull);
  std::vector<uint8_t> k(1000);
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(i * 7 + 3);
  CHECK(Xxh64(k.data(), k.size()) == 0x5f235fa033f1a3fbull);  // stripes, 8-, 4- and 1-byte tails
  CHECK(BulkChecksum(k.data(), k.size()) == Xxh64(k.data(), k.size()));
  k[999] ^= 1;
  CHECK(Xxh64(k.data(), k.size()) != 0x5f235fa033f1a3fbull);
}
