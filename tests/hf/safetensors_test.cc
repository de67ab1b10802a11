// The safetensors reader and writer (hf/safetensors.h): files written by
// hand here (the format's own layout, not our writer) read back; our files
// round-trip; and every way a hostile file can be wrong is refused with a
// message that says what, never a crash.
#include "hf/safetensors.h"

#include <cstring>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

namespace lowband {
namespace {

using Catch::Matchers::Contains;

// A file from a header text and data bytes, as the format lays it out.
std::string File(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string Floats(std::vector<float> v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4); }

std::string Refused(const std::string& bytes) {
  auto r = Safetensors::Parse(bytes, "m.safetensors");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  return r.status().message();
}

}  // namespace

TEST_CASE("safetensors: a hand-written file with F32, BF16 and F16 tensors reads back", "[unit]") {
  // bf16 0x3f80 = 1, 0xc000 = -2; f16 0x3c00 = 1, 0xc000 = -2, 0x0001 = 2^-24.
  const std::string bf16("\x80\x3f\x00\xc0", 4);
  const std::string f16("\x00\x3c\x00\xc0\x01\x00", 6);
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2],"data_offsets":[24,28]},)"
      R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"h":{"dtype":"F16","shape":[3],"data_offsets":[28,34]}})";
  auto r = Safetensors::Parse(File(header, Floats({1, 2, 3, 4, 5, -6.5f}) + bf16 + f16), "x");
  REQUIRE(r.ok());
  REQUIRE(r->tensors().size() == 3);
  CHECK(r->tensors()[0].name == "a");  // file order
  CHECK(r->metadata().at("format") == "pt");
  const StTensor* a = r->Find("a");
  REQUIRE(a);
  CHECK(a->shape == std::vector<int64_t>{2, 3});
  CHECK(r->Values(*a) == std::vector<float>{1, 2, 3, 4, 5, -6.5f});
  CHECK(r->Values(*r->Find("b")) == std::vector<float>{1, -2});
  CHECK(r->Values(*r->Find("h")) == std::vector<float>{1, -2, 5.9604644775390625e-8f});
  CHECK(r->Find("nope") == nullptr);
}

TEST_CASE("safetensors: our files round-trip in F32 and BF16", "[unit]") {
  const std::vector<float> w = {0.5f, -1.25f, 3.0f, 1.0f / 3.0f, 1e-20f, -0.0f};
  const std::vector<float> s = {42.0f};
  std::vector<StWrite> tensors = {{"layer.weight", {2, 3}, w.data()}, {"scale", {}, s.data()}};
  auto f32 = EncodeSafetensors(tensors, {{"format", "pt"}}, StDtype::kF32);
  REQUIRE(f32.ok());
  CHECK((f32->size() - 8 - 48) % 4 == 0);
  uint64_t n = 0;
  std::memcpy(&n, f32->data(), 8);
  CHECK(n % 8 == 0);  // the header is padded
  auto r = Safetensors::Parse(*f32, "x");
  REQUIRE(r.ok());
  CHECK(r->Values(*r->Find("layer.weight")) == w);
  CHECK(r->Find("scale")->shape.empty());
  CHECK(r->Values(*r->Find("scale")) == s);
  CHECK(r->metadata().at("format") == "pt");

  auto bf16 = EncodeSafetensors(tensors, {}, StDtype::kBf16);
  REQUIRE(bf16.ok());
  auto b = Safetensors::Parse(*bf16, "x");
  REQUIRE(b.ok());
  const std::vector<float> got = b->Values(*b->Find("layer.weight"));
  REQUIRE(got.size() == w.size());
  for (size_t i = 0; i < w.size(); ++i) CHECK(std::abs(got[i] - w[i]) <= std::abs(w[i]) / 128);
  CHECK(got[3] == 0.333984375f);  // 1/3 rounded to nearest even in bf16

  CHECK_FALSE(EncodeSafetensors({{"a", {1}, s.data()}, {"a", {1}, s.data()}}, {}, StDtype::kF32).ok());
  CHECK_FALSE(EncodeSafetensors({{"", {1}, s.data()}}, {}, StDtype::kF32).ok());
}

TEST_CASE("safetensors: hostile files are refused with what is wrong", "[unit]") {
  const std::string data = Floats({1, 2});
  auto one = [](const std::string& entry) { return "{\"t\":" + entry + "}"; };
  CHECK_THAT(Refused("abc"), Contains("3 bytes, shorter than the header length"));
  CHECK_THAT(Refused(File("{}", "").substr(0, 8) + "{"), Contains("runs past the end of the file"));
  std::string huge(8, '\0');
  huge[4] = 1;  // 2^32
  CHECK_THAT(Refused(huge), Contains("exceeds 100 MB"));
  CHECK_THAT(Refused(File("{\"t\":", "")), Contains("header is not JSON"));
  CHECK_THAT(Refused(File("[1,2]", "")), Contains("not a JSON object"));
  CHECK_THAT(Refused(File(one(R"({"dtype":"Q4","shape":[1],"data_offsets":[0,8]})"), data)),
             Contains("tensor 't': unknown dtype Q4"));
  // Other dtypes are structure only: an I64 tensor parses, its values are not floats.
  auto ints = Safetensors::Parse(File(one(R"({"dtype":"I64","shape":[1],"data_offsets":[0,8]})"), data), "x");
  REQUIRE(ints.ok());
  CHECK_FALSE(IsFloat(ints->tensors()[0].dtype));
  CHECK(ints->Values(ints->tensors()[0]).empty());
  CHECK_THAT(Refused(File(one(R"({"shape":[2],"data_offsets":[0,8]})"), data)), Contains("dtype missing"));
  CHECK_THAT(Refused(File(one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), data)),
             Contains("non-negative integer"));
  CHECK_THAT(Refused(File(one(R"({"dtype":"F32","shape":"2","data_offsets":[0,8]})"), data)),
             Contains("shape missing, not an array"));
  CHECK_THAT(Refused(File(one(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})"), data)),
             Contains("shape too large"));
  CHECK_THAT(Refused(File(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,16]})"), data)),
             Contains("data_offsets [0, 16] outside the 8 bytes of data"));
  CHECK_THAT(Refused(File(one(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), data)),
             Contains("outside the 8 bytes"));
  CHECK_THAT(Refused(File(one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), data)),
             Contains("8 bytes for 3 F32 values"));
  CHECK_THAT(Refused(File(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"), data)),
             Contains("data_offsets is not two non-negative integers"));
  CHECK_THAT(Refused(File(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})"), data)),
             Contains("4 bytes after the last tensor"));
  CHECK_THAT(Refused(File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                          data)),
             Contains("tensors overlap or leave a gap"));
  CHECK_THAT(Refused(File(one(R"({"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), data)),
             Contains("starts at byte 4, expected 0"));
  CHECK_THAT(Refused(File(R"({"__metadata__":{"k":1}})", "")), Contains("__metadata__.k is not a string"));
  CHECK_THAT(Refused(File(R"({"t":5})", "")), Contains("tensor 't' is not an object"));
}

TEST_CASE("safetensors: every truncation of a valid file is refused, none crashes", "[unit]") {
  const std::vector<float> w = {1, 2, 3, 4};
  auto full = EncodeSafetensors({{"w", {4}, w.data()}}, {{"k", "v"}}, StDtype::kF32);
  REQUIRE(full.ok());
  for (size_t len = 0; len < full->size(); ++len) {
    INFO("length " << len);
    CHECK_FALSE(Safetensors::Parse(full->substr(0, len), "x").ok());
  }
  CHECK(Safetensors::Parse(*full, "x").ok());
  CHECK(Safetensors::Read("/nonexistent/model.safetensors").status().code() == StatusCode::kNotFound);
}

}  // namespace lowband
