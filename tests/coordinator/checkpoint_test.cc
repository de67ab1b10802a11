#include "coordinator/checkpoint.h"

#include <stdlib.h>

#include <catch2/catch.hpp>

#include "tests/fakes/temp_dir.h"
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace lowband {
namespace {

namespace fs = std::filesystem;

using testing::TempDir;

Checkpoint MakeCheckpoint(uint32_t round, float scale) {
  Checkpoint c;
  c.round = round;
  c.campaign = "quickstart";
  c.params.layout.tensors = {{"embed.weight", {4, 3}}, {"ln.bias", {3}}, {"scalar", {}}};
  for (int64_t i = 0; i < c.params.layout.numel(); ++i) c.params.values.push_back(scale * (i - 7.5f));
  return c;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// Replaces the trailing checksum so a crafted body passes the first check
// and reaches the field-by-field bounds checks.
std::string Reseal(std::string bytes) {
  bytes.resize(bytes.size() - 8);
  uint64_t sum = Fnv1a64(bytes.data(), bytes.size());
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((sum >> (8 * i)) & 0xff));
  return bytes;
}

void PutU32(std::string* bytes, size_t offset, uint32_t v) {
  for (int i = 0; i < 4; ++i) (*bytes)[offset + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

}  // namespace

TEST_CASE("checkpoint: round trip", "[unit]") {
  TempDir dir;
  const std::string path = dir.Path("a/b/global.ckpt");  // parents are created
  const Checkpoint in = MakeCheckpoint(42, 0.25f);
  REQUIRE(WriteCheckpoint(path, in).ok());
  CHECK_FALSE(fs::exists(path + ".tmp"));

  auto out = ReadCheckpoint(path);
  INFO((out.ok() ? "" : out.status().ToString()));
  REQUIRE(out.ok());
  CHECK(out->round == 42);
  CHECK(out->campaign == "quickstart");
  CHECK(out->params.layout == in.params.layout);
  CHECK(out->params.values == in.params.values);
  CHECK(out->params.Digest() == in.params.Digest());

  SECTION("empty parameter set") {
    Checkpoint empty;
    REQUIRE(WriteCheckpoint(path, empty).ok());
    auto e = ReadCheckpoint(path);
    REQUIRE(e.ok());
    CHECK(e->params.values.empty());
    CHECK(e->params.layout.tensors.empty());
  }
}

TEST_CASE("checkpoint: the outer optimizer's momentum round-trips, and must match the parameters", "[unit]") {
  TempDir dir;
  Checkpoint ck = MakeCheckpoint(9, 0.5f);
  ck.outer_momentum.assign(ck.params.values.size(), 0.0f);
  for (size_t i = 0; i < ck.outer_momentum.size(); ++i) ck.outer_momentum[i] = -0.25f * static_cast<float>(i);
  const std::string path = dir.Path("m.lbck");
  REQUIRE(WriteCheckpoint(path, ck).ok());
  auto back = ReadCheckpoint(path);
  REQUIRE(back.ok());
  CHECK(back->outer_momentum == ck.outer_momentum);
  CHECK(back->params.values == ck.params.values);

  ck.outer_momentum.resize(3);
  CHECK(WriteCheckpoint(dir.Path("bad.lbck"), ck).code() == StatusCode::kInvalidArgument);
  // A failed write leaves no file, and the hook before the rename sees the
  // complete temporary file.
  CHECK_FALSE(std::filesystem::exists(dir.Path("bad.lbck")));
  ck.outer_momentum.clear();
  bool saw_tmp = false;
  REQUIRE(WriteCheckpoint(dir.Path("h.lbck"), ck, [&] {
            saw_tmp = std::filesystem::exists(dir.Path("h.lbck.tmp")) && !std::filesystem::exists(dir.Path("h.lbck"));
          }).ok());
  CHECK(saw_tmp);
  auto plain = ReadCheckpoint(dir.Path("h.lbck"));
  REQUIRE(plain.ok());
  CHECK(plain->outer_momentum.empty());
}

TEST_CASE("checkpoint: the downlink's error feedback round-trips, and version 3 files read without it", "[unit]") {
  TempDir dir;
  Checkpoint ck = MakeCheckpoint(5, 0.5f);
  ck.outer_momentum.assign(ck.params.values.size(), 0.125f);
  for (size_t i = 0; i < ck.params.values.size(); ++i)
    ck.downlink_error.push_back(1e-3f * static_cast<float>(i) - 0.5f);
  const std::string path = dir.Path("e.lbck");
  REQUIRE(WriteCheckpoint(path, ck).ok());
  auto back = ReadCheckpoint(path);
  REQUIRE(back.ok());
  CHECK(back->downlink_error == ck.downlink_error);
  CHECK(back->outer_momentum == ck.outer_momentum);
  CHECK(back->params.values == ck.params.values);

  Checkpoint bad = ck;
  bad.downlink_error.resize(2);
  CHECK(WriteCheckpoint(dir.Path("bad.lbck"), bad).code() == StatusCode::kInvalidArgument);

  // A version 3 file is a version 4 file without the downlink count.
  ck.downlink_error.clear();
  REQUIRE(WriteCheckpoint(path, ck).ok());
  std::string v3 = ReadBytes(path);
  v3.erase(v3.size() - 16, 8);  // the zero count before the checksum
  PutU32(&v3, 4, 3);
  v3.resize(v3.size() - 8);
  const uint64_t sum = Xxh64(v3.data(), v3.size());
  for (int i = 0; i < 8; ++i) v3.push_back(static_cast<char>((sum >> (8 * i)) & 0xff));
  WriteBytes(path, v3);
  auto old = ReadCheckpoint(path);
  INFO((old.ok() ? "" : old.status().ToString()));
  REQUIRE(old.ok());
  CHECK(old->downlink_error.empty());
  CHECK(old->outer_momentum == ck.outer_momentum);
  CHECK(old->params.values == ck.params.values);
}

TEST_CASE("checkpoint: overwrite is atomic and replaces the old file", "[unit]") {
  TempDir dir;
  const std::string path = dir.Path("global.ckpt");
  REQUIRE(WriteCheckpoint(path, MakeCheckpoint(1, 1.0f)).ok());
  // A leftover temp file from a crashed writer must not get in the way.
  WriteBytes(path + ".tmp", "stale partial write");
  REQUIRE(WriteCheckpoint(path, MakeCheckpoint(2, -3.0f)).ok());
  CHECK_FALSE(fs::exists(path + ".tmp"));
  auto out = ReadCheckpoint(path);
  REQUIRE(out.ok());
  CHECK(out->round == 2);
  CHECK(out->params.values == MakeCheckpoint(2, -3.0f).params.values);
}

TEST_CASE("checkpoint: writer rejects values that do not match the layout", "[unit]") {
  TempDir dir;
  Checkpoint c = MakeCheckpoint(1, 1.0f);
  c.params.values.pop_back();
  Status st = WriteCheckpoint(dir.Path("x.ckpt"), c);
  CHECK(st.code() == StatusCode::kInvalidArgument);
  CHECK_FALSE(fs::exists(dir.Path("x.ckpt")));
}

TEST_CASE("checkpoint: missing file is NotFound", "[unit]") {
  TempDir dir;
  auto r = ReadCheckpoint(dir.Path("nope.ckpt"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kNotFound);
}

TEST_CASE("checkpoint: every truncation is Corruption", "[unit]") {
  TempDir dir;
  const std::string path = dir.Path("global.ckpt");
  REQUIRE(WriteCheckpoint(path, MakeCheckpoint(7, 1.0f)).ok());
  const std::string bytes = ReadBytes(path);
  const std::string cut = dir.Path("cut.ckpt");
  for (size_t n = 0; n < bytes.size(); ++n) {
    WriteBytes(cut, bytes.substr(0, n));
    auto r = ReadCheckpoint(cut);
    INFO("length " << n);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kCorruption);
  }
  WriteBytes(cut, bytes + "x");  // trailing garbage
  auto r = ReadCheckpoint(cut);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kCorruption);
}

TEST_CASE("checkpoint: every flipped byte is Corruption", "[unit]") {
  TempDir dir;
  const std::string path = dir.Path("global.ckpt");
  REQUIRE(WriteCheckpoint(path, MakeCheckpoint(7, 1.0f)).ok());
  const std::string bytes = ReadBytes(path);
  const std::string bad = dir.Path("bad.ckpt");
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string flipped = bytes;
    flipped[i] = static_cast<char>(flipped[i] ^ 0x40);
    WriteBytes(bad, flipped);
    auto r = ReadCheckpoint(bad);
    INFO("byte " << i);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kCorruption);
  }
}

TEST_CASE("checkpoint: bad magic and version", "[unit]") {
  TempDir dir;
  const std::string path = dir.Path("global.ckpt");
  REQUIRE(WriteCheckpoint(path, MakeCheckpoint(7, 1.0f)).ok());
  std::string bytes = ReadBytes(path);

  std::string magic = bytes;
  magic[0] = 'X';
  WriteBytes(path, Reseal(magic));
  auto r = ReadCheckpoint(path);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kCorruption);
  CHECK_THAT(r.status().message(), Catch::Matchers::Contains("magic"));

  std::string version = bytes;
  PutU32(&version, 4, 99);
  WriteBytes(path, Reseal(version));
  r = ReadCheckpoint(path);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kCorruption);
  CHECK_THAT(r.status().message(), Catch::Matchers::Contains("version 99"));
}

TEST_CASE("checkpoint: hostile lengths with a valid checksum stay in bounds", "[unit]") {
  TempDir dir;
  const std::string path = dir.Path("global.ckpt");
  REQUIRE(WriteCheckpoint(path, MakeCheckpoint(7, 1.0f)).ok());
  const std::string bytes = ReadBytes(path);
  // Offsets: magic 0, version 4, round 8, campaign_len 12, campaign 16..26,
  // values digest 26, layout digest 34, tensor_count 42, first name_len 46.
  const size_t kCampaignLen = 12, kTensorCount = 42, kFirstNameLen = 46;
  REQUIRE(bytes.substr(16, 10) == "quickstart");
  for (auto [offset, value] : std::vector<std::pair<size_t, uint32_t>>{{kCampaignLen, 0xffffffffu},
                                                                        {kCampaignLen, 11},
                                                                        {kTensorCount, 0xffffffffu},
                                                                        {kTensorCount, 4},
                                                                        {kFirstNameLen, 0x7fffffffu},
                                                                        {kFirstNameLen, 13}}) {
    std::string crafted = bytes;
    PutU32(&crafted, offset, value);
    WriteBytes(path, Reseal(crafted));
    auto r = ReadCheckpoint(path);
    INFO("offset " << offset << " value " << value);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kCorruption);
  }
}

}  // namespace lowband
