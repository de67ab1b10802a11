#include "data/corpus.h"

#include <catch2/catch.hpp>

#include "tests/fakes/temp_dir.h"
#include "tests/fakes/skip.h"
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

namespace lowband {
namespace {
namespace fs = std::filesystem;

using testing::TempDir;

std::string ToString(const std::vector<int64_t>& tokens) {
  std::string s;
  for (int64_t t : tokens) s += static_cast<char>(t);
  return s;
}

// The whole training stream: with context = size - 1 there is one window.
std::string TrainText(const Corpus& c) {
  std::mt19937_64 rng(1);
  TokenBatch b = c.SampleTrain(1, static_cast<int>(c.train_tokens()) - 1, &rng);
  return ToString(b.inputs) + static_cast<char>(b.targets.back());
}

std::string ValText(const Corpus& c) {
  TokenBatch b = c.ValidationBatch(0, 1, static_cast<int>(c.val_tokens()) - 1);
  return ToString(b.inputs) + static_cast<char>(b.targets.back());
}

DataConfig Data(const TempDir& dir, double fraction = 0.1, std::vector<std::string> files = {}) {
  DataConfig d;
  d.dir = dir.path().string();
  d.files = std::move(files);
  d.validation_fraction = fraction;
  return d;
}

std::string Fortunes(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += "record " + std::to_string(i) + " says hello\nand more\n%\n";
  return s;
}

}  // namespace

TEST_CASE("Corpus strips fortune separators and splits off the last records", "[unit]") {
  TempDir dir;
  dir.Write("quotes", "a\n%\nb line\n%\nc\n%\nd\n%\n");
  auto corpus = Corpus::Load(Data(dir, 0.25));
  REQUIRE(corpus.ok());
  CHECK(TrainText(*corpus) == "a\n\nb line\n\nc\n");
  CHECK(ValText(*corpus) == "d\n");
  REQUIRE(corpus->files().size() == 1);
  CHECK(corpus->files()[0] == (dir.path() / "quotes").string());
}

TEST_CASE("Corpus splits plain text files by lines", "[unit]") {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 10; ++i) text += "line " + std::to_string(i) + "\n";
  dir.Write("plain.txt", text);
  auto corpus = Corpus::Load(Data(dir, 0.2));
  REQUIRE(corpus.ok());
  CHECK(TrainText(*corpus) == "line 0\nline 1\nline 2\nline 3\nline 4\nline 5\nline 6\nline 7");
  CHECK(ValText(*corpus) == "line 8\nline 9");
}

TEST_CASE("Corpus validation split is disjoint and nonempty", "[unit]") {
  TempDir dir;
  dir.Write("one", Fortunes(20));
  dir.Write("two", Fortunes(2));
  SECTION("every record lands in exactly one stream") {
    auto corpus = Corpus::Load(Data(dir, 0.1, {"one"}));
    REQUIRE(corpus.ok());
    const std::string train = TrainText(*corpus), val = ValText(*corpus);
    CHECK(train.find('%') == std::string::npos);
    CHECK(val.find('%') == std::string::npos);
    for (int i = 0; i < 20; ++i) {
      const std::string rec = "record " + std::to_string(i) + " says";
      const bool in_train = train.find(rec) != std::string::npos;
      const bool in_val = val.find(rec) != std::string::npos;
      INFO(rec);
      CHECK(in_train != in_val);
      CHECK(in_val == (i >= 18));  // the last 10%
    }
  }
  SECTION("at least one record each way, however extreme the fraction") {
    for (double fraction : {0.001, 0.999}) {
      auto corpus = Corpus::Load(Data(dir, fraction, {"two"}));
      REQUIRE(corpus.ok());
      CHECK(TrainText(*corpus).find("record 0") != std::string::npos);
      CHECK(ValText(*corpus).find("record 1") != std::string::npos);
      CHECK(ValText(*corpus).find("record 0") == std::string::npos);
    }
  }
  SECTION("each file contributes its own validation tail") {
    auto corpus = Corpus::Load(Data(dir, 0.1));
    REQUIRE(corpus.ok());
    CHECK(corpus->files().size() == 2);
    const std::string val = ValText(*corpus);
    CHECK(val.find("record 19") != std::string::npos);  // from "one"
    CHECK(val.find("record 1 ") != std::string::npos);  // from "two"
  }
  SECTION("a fraction outside (0, 1) is rejected") {
    CHECK(Corpus::Load(Data(dir, 0.0)).status().code() == StatusCode::kInvalidArgument);
    CHECK(Corpus::Load(Data(dir, 1.0)).status().code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("Corpus sampling is deterministic for a seed", "[unit]") {
  std::string text;
  for (int i = 0; i < 500; ++i) text += "token stream " + std::to_string(i) + " ";
  Corpus corpus = Corpus::FromText(text, "validation text that is long enough");
  std::mt19937_64 a(7), b(7), c(8);
  TokenBatch ba = corpus.SampleTrain(4, 32, &a);
  TokenBatch bb = corpus.SampleTrain(4, 32, &b);
  TokenBatch bc = corpus.SampleTrain(4, 32, &c);
  CHECK(ba.inputs == bb.inputs);
  CHECK(ba.targets == bb.targets);
  CHECK(ba.inputs != bc.inputs);
  // The generator's state carries on: the next batch differs.
  CHECK(corpus.SampleTrain(4, 32, &a).inputs != ba.inputs);

  REQUIRE(ba.batch == 4);
  REQUIRE(ba.length == 32);
  REQUIRE(ba.inputs.size() == 4u * 32u);
  for (int r = 0; r < 4; ++r) {
    std::vector<int64_t> in(ba.inputs.begin() + r * 32, ba.inputs.begin() + (r + 1) * 32);
    std::vector<int64_t> tg(ba.targets.begin() + r * 32, ba.targets.begin() + (r + 1) * 32);
    for (int t = 0; t + 1 < 32; ++t) CHECK(tg[t] == in[t + 1]);
    const std::string window = ToString(in) + static_cast<char>(tg.back());
    CHECK(text.find(window) != std::string::npos);
  }
}

TEST_CASE("Corpus validation batches are fixed, non-overlapping windows", "[unit]") {
  std::string val;
  for (int i = 0; i < 10; ++i) val += std::string(9, static_cast<char>('a' + i));  // 10 windows of 9
  Corpus corpus = Corpus::FromText("training text long enough for it", val);
  TokenBatch b0 = corpus.ValidationBatch(0, 4, 8);
  TokenBatch b1 = corpus.ValidationBatch(1, 4, 8);
  TokenBatch b2 = corpus.ValidationBatch(2, 4, 8);
  TokenBatch b3 = corpus.ValidationBatch(3, 4, 8);
  CHECK(b0.batch == 4);
  CHECK(b1.batch == 4);
  CHECK(b2.batch == 2);  // partial last batch
  CHECK(b3.batch == 0);
  CHECK(b3.inputs.empty());
  for (int r = 0; r < 4; ++r) {
    CHECK(b0.inputs[r * 8] == 'a' + r);
    CHECK(b0.targets[r * 8 + 7] == 'a' + r);  // a window never crosses into the next
    CHECK(b1.inputs[r * 8] == 'e' + r);
  }
  CHECK(corpus.ValidationBatch(0, 4, 8).inputs == b0.inputs);
}

TEST_CASE("Corpus directory listing skips binary, index and alias files", "[unit]") {
  TempDir dir;
  dir.Write("science", Fortunes(5));
  dir.Write("science.dat", std::string("\x00\x00\x00\x02\x00\x00\x00\x05", 8));
  fs::create_symlink("science", dir.path() / "science.u8");
  fs::create_symlink("science", dir.path() / "alias");  // same file under another name
  dir.Write("blob.bin", std::string("text\0more", 9));
  dir.Write("latin1.txt", "caf\xe9 au lait\n");
  dir.Write("utf8.txt", "caf\xc3\xa9 au lait\nsecond line\n");
  fs::create_directory(dir.path() / "subdir");
  dir.Write(".hidden", "hidden text\nmore\n");

  auto corpus = Corpus::Load(Data(dir));
  REQUIRE(corpus.ok());
  std::set<std::string> names;
  for (const auto& f : corpus->files()) names.insert(fs::path(f).filename().string());
  // "alias" is a symlink to "science": the file is read once, under its own name.
  CHECK(names == std::set<std::string>{"science", "utf8.txt"});
  const std::string all = TrainText(*corpus) + ValText(*corpus);
  CHECK(all.find('\0') == std::string::npos);
  CHECK(all.find("record 0") != std::string::npos);
  CHECK(all.find("record 0") == all.rfind("record 0"));  // read once

  SECTION("a named binary file is an error naming it") {
    auto bad = Corpus::Load(Data(dir, 0.1, {"science", "blob.bin"}));
    CHECK(bad.status().code() == StatusCode::kInvalidArgument);
    CHECK(bad.status().message().find("blob.bin") != std::string::npos);
    auto latin = Corpus::Load(Data(dir, 0.1, {"latin1.txt"}));
    CHECK(latin.status().code() == StatusCode::kInvalidArgument);
  }
  SECTION("a named missing file is NotFound naming it") {
    auto missing = Corpus::Load(Data(dir, 0.1, {"nope"}));
    CHECK(missing.status().code() == StatusCode::kNotFound);
    CHECK(missing.status().message().find("nope") != std::string::npos);
  }
}

TEST_CASE("Corpus load errors name the path", "[unit]") {
  DataConfig data;
  data.dir = "/nonexistent/lowband/corpus/dir";
  auto missing = Corpus::Load(data);
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK(missing.status().message().find(data.dir) != std::string::npos);

  TempDir empty;
  auto none = Corpus::Load(Data(empty));
  CHECK(none.status().code() == StatusCode::kInvalidArgument);
  CHECK(none.status().message().find(empty.path().string()) != std::string::npos);
}

TEST_CASE("Corpus loads Debian's fortunes directory when installed", "[unit]") {
  const std::string fortunes = "/usr/share/games/fortunes";
  if (!fs::exists(fs::path(fortunes) / "computers")) LOWBAND_SKIP(fortunes << "/computers missing (Debian package fortunes)");
  DataConfig data;
  data.dir = fortunes;
  data.files = {"computers", "science"};
  auto corpus = Corpus::Load(data);
  REQUIRE(corpus.ok());
  CHECK(corpus->files().size() == 2);
  CHECK(corpus->train_tokens() > 300000);
  CHECK(corpus->val_tokens() > 20000);
  CHECK(TrainText(*corpus).find("\n%\n") == std::string::npos);
}

}  // namespace lowband
