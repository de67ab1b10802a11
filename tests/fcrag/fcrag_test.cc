// FC-RAG site side: loading labelled fortune files, BM25 on a hand-made
// corpus, retrieval-augmented label scores, their dithered wire form,
// prediction sets, query splits, and a check on the system's real fortune
// collections that the retriever is a working classifier.
#include "fcrag/fcrag.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "codec/dither.h"
#include "tests/fakes/temp_dir.h"
#include "tests/fakes/skip.h"

namespace lowband {
namespace {

using testing::TempDir;

constexpr double kInf = std::numeric_limits<double>::infinity();

DataConfig Data(const std::string& dir, std::vector<std::string> files, double fraction) {
  DataConfig d;
  d.dir = dir;
  d.files = std::move(files);
  d.validation_fraction = fraction;
  return d;
}

// n fortune records "<stem> record i is here" joined by "%" lines.
std::string Fortunes(const std::string& stem, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += stem + " record " + std::to_string(i) + " is here\n%\n";
  return s;
}

std::vector<Document> Store(const std::vector<std::string>& texts, const std::vector<int>& labels) {
  std::vector<Document> store;
  for (size_t i = 0; i < texts.size(); ++i) store.push_back(Document{texts[i], labels[i]});
  return store;
}

double SumExpNeg(const std::vector<double>& scores) {
  double sum = 0.0;
  for (double s : scores) sum += std::exp(-s);
  return sum;
}

}  // namespace

// ---- loading ------------------------------------------------------------------------

TEST_CASE("LoadFcragData labels files and holds out each file's last records", "[unit][common]") {
  TempDir dir;
  dir.Write("alpha", Fortunes("alpha", 10));
  dir.Write("beta", Fortunes("beta", 4));
  const std::vector<std::string> labels = {"gamma", "beta", "alpha"};
  auto data = LoadFcragData(Data(dir.path().string(), {"alpha", "beta"}, 0.2), labels, 1, 1000);
  REQUIRE(data.ok());
  // alpha: 10 records, round(2.0) = 2 queries; beta: 4 records, round(0.8) = 1.
  REQUIRE(data->store.size() == 8 + 3);
  REQUIRE(data->queries.size() == 2 + 1);
  CHECK(data->store[0].text == "alpha record 0 is here");
  CHECK(data->store[0].label == 2);
  CHECK(data->store[7].text == "alpha record 7 is here");
  CHECK(data->store[8].text == "beta record 0 is here");
  CHECK(data->store[8].label == 1);
  CHECK(data->queries[0].text == "alpha record 8 is here");
  CHECK(data->queries[1].text == "alpha record 9 is here");
  CHECK(data->queries[0].label == 2);
  CHECK(data->queries[2].text == "beta record 3 is here");
  CHECK(data->queries[2].label == 1);
}

TEST_CASE("LoadFcragData keeps multi-line records and drops blank ones", "[unit][common]") {
  TempDir dir;
  dir.Write("quotes", "first line\r\n\tsecond line\n\n%\n%\n   \n%\nlast one\n");
  auto data = LoadFcragData(Data(dir.path().string(), {"quotes"}, 0.5), {"quotes"}, 0, 1000);
  REQUIRE(data.ok());
  REQUIRE(data->store.size() == 1);
  REQUIRE(data->queries.size() == 1);
  CHECK(data->store[0].text == "first line\n\tsecond line");
  CHECK(data->queries[0].text == "last one");
}

TEST_CASE("LoadFcragData drops short records and cuts long ones at a character boundary", "[unit][common]") {
  TempDir dir;
  // "caf\xc3\xa9" is "café": bytes 3 and 4 are one character.
  dir.Write("mixed", "tiny\n%\ncaf\xc3\xa9 au lait\n%\nabcdefghij\n%\nshort\n%\nmedium text\n");
  auto data = LoadFcragData(Data(dir.path().string(), {"mixed"}, 0.25), {"mixed"}, 5, 4);
  REQUIRE_FALSE(data.ok());  // max_chars < min_chars
  data = LoadFcragData(Data(dir.path().string(), {"mixed"}, 0.25), {"mixed"}, 5, 5);
  REQUIRE(data.ok());
  // "tiny" (4 bytes) is dropped; 4 records kept, the last one is a query.
  REQUIRE(data->store.size() == 3);
  REQUIRE(data->queries.size() == 1);
  CHECK(data->store[0].text == "caf\xc3\xa9");  // 5 bytes fit exactly
  CHECK(data->store[1].text == "abcde");
  CHECK(data->store[2].text == "short");
  CHECK(data->queries[0].text == "mediu");
  data = LoadFcragData(Data(dir.path().string(), {"mixed"}, 0.25), {"mixed"}, 5, 8);
  REQUIRE(data.ok());
  CHECK(data->store[0].text == "caf\xc3\xa9 au");
  // A cut in the middle of the two-byte character backs up before it.
  auto cut = LoadFcragData(Data(dir.path().string(), {"mixed"}, 0.25), {"mixed"}, 4, 4);
  REQUIRE(cut.ok());
  CHECK(cut->store[0].text == "tiny");
  CHECK(cut->store[1].text == "caf");  // not "caf\xc3"
}

TEST_CASE("LoadFcragData refuses bad inputs with a clear message", "[unit][common]") {
  TempDir dir;
  dir.Write("alpha", Fortunes("alpha", 5));
  dir.Write("binary", std::string("text\0more\n%\nx\n", 14));
  dir.Write("short", "ab\n%\ncd\n");
  const std::string d = dir.path().string();
  const std::vector<std::string> labels = {"alpha", "binary", "short", "absent"};

  auto unknown = LoadFcragData(Data(d, {"alpha", "stranger"}, 0.1), labels, 1, 100);
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.status().code() == StatusCode::kInvalidArgument);
  CHECK(unknown.status().message().find("'stranger'") != std::string::npos);
  CHECK(unknown.status().message().find("alpha, binary, short, absent") != std::string::npos);

  auto missing = LoadFcragData(Data(d, {"absent"}, 0.1), labels, 1, 100);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK(missing.status().message().find("absent") != std::string::npos);

  auto binary = LoadFcragData(Data(d, {"binary"}, 0.1), labels, 1, 100);
  REQUIRE_FALSE(binary.ok());
  CHECK(binary.status().message().find("NUL") != std::string::npos);

  auto too_short = LoadFcragData(Data(d, {"short"}, 0.1), labels, 3, 100);
  REQUIRE_FALSE(too_short.ok());
  CHECK(too_short.status().message().find("short") != std::string::npos);

  CHECK_FALSE(LoadFcragData(Data(d, {}, 0.1), labels, 1, 100).ok());
  CHECK_FALSE(LoadFcragData(Data(d, {"alpha", "alpha"}, 0.1), labels, 1, 100).ok());
  CHECK_FALSE(LoadFcragData(Data(d, {"alpha"}, 0.1), {"alpha", "alpha"}, 1, 100).ok());
  CHECK_FALSE(LoadFcragData(Data(d, {"alpha"}, 0.0), labels, 1, 100).ok());
  CHECK_FALSE(LoadFcragData(Data(d, {"alpha"}, 0.1), labels, -1, 100).ok());
  CHECK(LoadFcragData(Data((dir.path() / "nowhere").string(), {"alpha"}, 0.1), labels, 1, 100).status().code() ==
        StatusCode::kNotFound);
}

// ---- BM25 ---------------------------------------------------------------------------------

TEST_CASE("Bm25Tokens lower-cases ASCII alphanumeric runs and drops stop words", "[unit][common]") {
  CHECK(Bm25Tokens("Hello, WORLD! It's the 42nd caf\xc3\xa9-bar") ==
        std::vector<std::string>{"hello", "world", "s", "42nd", "caf", "bar"});
  CHECK(Bm25Tokens("").empty());
  CHECK(Bm25Tokens("the of and ... !!").empty());
}

TEST_CASE("Bm25Index ranks the matching document first", "[unit][common]") {
  const auto store = Store({"The cat sat on the mat.", "Dogs chase cats in the park.",
                            "Quantum physics of black holes.", "The cat and the dog are friends.",
                            "A black cat crossing the road."},
                           {0, 0, 1, 0, 0});
  const Bm25Index index(store);
  CHECK(index.size() == 5);
  auto hits = index.Search("what about quantum holes?", 10);
  REQUIRE(hits.size() == 1);
  CHECK(hits[0].first == 2);
  CHECK(hits[0].second > 0.0);

  hits = index.Search("cat on a mat", 10);
  REQUIRE(hits.size() == 3);  // docs 0, 3, 4 contain "cat"; "cats" is another term
  CHECK(hits[0].first == 0);
  for (size_t i = 1; i < hits.size(); ++i) CHECK(hits[i - 1].second >= hits[i].second);
}

TEST_CASE("Bm25Index follows the Okapi formula: idf weights rare terms more", "[unit][common]") {
  // Equal lengths (2 tokens each), so only idf tells the documents apart.
  const auto store = Store({"apple banana", "apple cherry", "apple date", "kiwi fig"}, {0, 0, 0, 1});
  const Bm25Index index(store);
  CHECK(index.avgdl() == 2.0);
  CHECK(index.num_terms() == 6);
  const auto hits = index.Search("apple kiwi", 10);
  REQUIRE(hits.size() == 4);
  CHECK(hits[0].first == 3);  // kiwi: df 1
  // With |D| = avgdl and tf = 1 the term weight is exactly idf.
  CHECK(hits[0].second == Approx(std::log(1.0 + (4 - 1 + 0.5) / (1 + 0.5))).epsilon(1e-12));
  CHECK(hits[1].second == Approx(std::log(1.0 + (4 - 3 + 0.5) / (3 + 0.5))).epsilon(1e-12));
  // Equal scores come in document order.
  CHECK(hits[1].first == 0);
  CHECK(hits[2].first == 1);
  CHECK(hits[3].first == 2);
  CHECK(hits[1].second == hits[3].second);

  // Repeating a query term does not count it twice; tf in the document does,
  // with saturation: tf = 2 at |D| = avgdl gives idf * 2 * 2.2 / 3.2.
  CHECK(index.Search("kiwi kiwi KIWI", 10)[0].second == hits[0].second);
  const auto store2 = Store({"kiwi kiwi", "apple fig"}, {0, 0});
  const Bm25Index index2(store2);
  const double idf = std::log(1.0 + (2 - 1 + 0.5) / (1 + 0.5));
  CHECK(index2.Search("kiwi", 1)[0].second == Approx(idf * 2 * 2.2 / 3.2).epsilon(1e-12));
}

TEST_CASE("Bm25Index honours k and returns nothing for empty or unknown queries", "[unit][common]") {
  const auto store = Store({"apple banana", "apple cherry", "apple date", "kiwi fig", "the of"}, {0, 0, 0, 1, 1});
  const Bm25Index index(store);
  auto hits = index.Search("apple", 2);
  REQUIRE(hits.size() == 2);
  CHECK(hits[0].first == 0);
  CHECK(hits[1].first == 1);
  CHECK(index.Search("apple", 0).empty());
  CHECK(index.Search("apple", -3).empty());
  CHECK(index.Search("", 5).empty());
  CHECK(index.Search("the of !!", 5).empty());
  CHECK(index.Search("durian", 5).empty());
  const Bm25Index empty(std::vector<Document>{});
  CHECK(empty.size() == 0);
  CHECK(empty.Search("apple", 5).empty());
}

// ---- label scores -----------------------------------------------------------------------------

TEST_CASE("LabelScores is -log of a smoothed retrieval distribution", "[unit][common]") {
  SECTION("a store of label 0 only favours label 0") {
    const auto store = Store({"apple banana", "apple cherry", "kiwi fig"}, {0, 0, 0});
    const Bm25Index index(store);
    const auto s = LabelScores(index, store, "apple pie", 3, 5, 0.5);
    REQUIRE(s.size() == 3);
    CHECK(s[0] < s[1]);
    CHECK(s[1] == s[2]);
    CHECK(SumExpNeg(s) == Approx(1.0).margin(1e-9));
  }
  SECTION("exact value on two labels") {
    const auto store = Store({"apple banana", "kiwi fig"}, {0, 1});
    const Bm25Index index(store);
    const auto hits = index.Search("apple", 5);
    REQUIRE(hits.size() == 1);
    const double w = hits[0].second;
    const auto s = LabelScores(index, store, "apple", 2, 5, 1.0);
    CHECK(s[0] == Approx(-std::log((1.0 + w) / (2.0 + w))).epsilon(1e-12));
    CHECK(s[1] == Approx(-std::log(1.0 / (2.0 + w))).epsilon(1e-12));
    CHECK(SumExpNeg(s) == Approx(1.0).margin(1e-9));
  }
  SECTION("only the top k count") {
    const auto store = Store({"apple apple", "apple banana cherry date", "apple fig grape kiwi"}, {0, 1, 1});
    const Bm25Index index(store);
    const auto top1 = LabelScores(index, store, "apple", 2, 1, 0.1);
    const auto top3 = LabelScores(index, store, "apple", 2, 3, 0.1);
    CHECK(top1[0] < top1[1]);
    CHECK(top3[1] < top3[0]);
  }
  SECTION("nothing retrieved gives the uniform distribution") {
    const auto store = Store({"apple banana"}, {0});
    const Bm25Index index(store);
    for (const double s : LabelScores(index, store, "zebra", 4, 5, 1.0)) CHECK(s == Approx(std::log(4.0)));
  }
}

// ---- wire -------------------------------------------------------------------------------------

TEST_CASE("EncodeScores/DecodeScores round trip within half a grid step", "[unit][common]") {
  const ScoreRange range{0.0, 10.0};
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> dist(-1.0, 11.0);
  std::vector<double> scores(997);
  for (double& s : scores) s = dist(rng);
  scores[0] = 0.0;
  scores[1] = 10.0;
  scores[2] = std::numeric_limits<double>::quiet_NaN();
  scores[3] = kInf;
  auto clip = [&](double s) { return std::isnan(s) ? range.lo : std::clamp(s, range.lo, range.hi); };

  for (const int bits : {1, 3, 8, 16}) {
    CAPTURE(bits);
    const auto payload = EncodeScores(scores, range, bits, 42);
    CHECK(payload.size() == PackedBytes(scores.size(), bits));
    auto decoded = DecodeScores(payload.data(), payload.size(), scores.size(), range, bits, 42);
    REQUIRE(decoded.ok());
    REQUIRE(decoded->size() == scores.size());
    const double half_step = 0.5 * (range.hi - range.lo) / ((1 << bits) - 1);
    double mean_error = 0.0;
    for (size_t i = 0; i < scores.size(); ++i) {
      const double err = (*decoded)[i] - clip(scores[i]);
      CHECK(std::abs(err) <= half_step + 1e-5);
      mean_error += err / scores.size();
    }
    // Subtractive dither: errors uniform on a step, mean 0 (sd of the mean
    // is step / sqrt(12 * 997)); 5 sd.
    CHECK(std::abs(mean_error) <= 5.0 * 2.0 * half_step / std::sqrt(12.0 * scores.size()));
  }
  SECTION("fp32 is exact") {
    const auto payload = EncodeScores(scores, range, 0, 42);
    CHECK(payload.size() == 4 * scores.size());
    auto decoded = DecodeScores(payload.data(), payload.size(), scores.size(), range, 0, 42);
    REQUIRE(decoded.ok());
    for (size_t i = 0; i < scores.size(); ++i) {
      CHECK((*decoded)[i] == static_cast<double>(static_cast<float>(clip(scores[i]))));
    }
    CHECK(payload[4 * 1 + 3] == 0x41);  // 10.0f = 0x41200000, little-endian
    CHECK(payload[4 * 1 + 2] == 0x20);
  }
  SECTION("no scores") {
    const auto payload = EncodeScores({}, range, 4, 1);
    CHECK(payload.empty());
    auto decoded = DecodeScores(payload.data(), 0, 0, range, 4, 1);
    REQUIRE(decoded.ok());
    CHECK(decoded->empty());
  }
}

TEST_CASE("DecodeScores rejects malformed payloads", "[unit][common]") {
  const ScoreRange range{0.0, 8.0};
  const std::vector<double> scores = {0.5, 1.5, 7.0};
  auto is_invalid = [](const StatusOr<std::vector<double>>& r, const std::string& needle) {
    return !r.ok() && r.status().code() == StatusCode::kInvalidArgument &&
           r.status().message().find(needle) != std::string::npos;
  };
  auto packed = EncodeScores(scores, range, 3, 5);  // 9 bits: 2 bytes
  REQUIRE(packed.size() == 2);
  CHECK(is_invalid(DecodeScores(packed.data(), 1, 3, range, 3, 5), "expected 2"));
  CHECK(is_invalid(DecodeScores(packed.data(), 2, 6, range, 3, 5), "expected 3"));  // 18 bits
  CHECK(is_invalid(DecodeScores(packed.data(), 2, size_t{1} << 60, range, 3, 5), "bytes"));
  CHECK(is_invalid(DecodeScores(packed.data(), 2, std::numeric_limits<size_t>::max(), range, 3, 5), "bytes"));
  auto padded = packed;
  padded[1] |= 0x80;  // a pad bit
  CHECK_FALSE(DecodeScores(padded.data(), 2, 3, range, 3, 5).ok());
  CHECK(is_invalid(DecodeScores(packed.data(), 2, 3, range, 17, 5), "bits"));
  CHECK(is_invalid(DecodeScores(packed.data(), 2, 3, range, -1, 5), "bits"));
  CHECK(is_invalid(DecodeScores(packed.data(), 2, 3, ScoreRange{1.0, 1.0}, 3, 5), "range"));
  CHECK(is_invalid(DecodeScores(packed.data(), 2, 3, ScoreRange{0.0, kInf}, 3, 5), "range"));

  auto raw = EncodeScores(scores, range, 0, 5);
  REQUIRE(raw.size() == 12);
  CHECK(is_invalid(DecodeScores(raw.data(), 11, 3, range, 0, 5), "expected 12"));
  CHECK(is_invalid(DecodeScores(raw.data(), 12, 2, range, 0, 5), "expected 8"));
  auto nan = raw;
  nan[4 + 3] = 0x7f, nan[4 + 2] = 0xc0;  // 0x7fc0xxxx: a quiet NaN
  CHECK(is_invalid(DecodeScores(nan.data(), 12, 3, range, 0, 5), "score 1 is not finite"));
  auto inf = raw;
  inf[8 + 3] = 0x7f, inf[8 + 2] = 0x80, inf[8 + 1] = 0, inf[8] = 0;  // +inf
  CHECK(is_invalid(DecodeScores(inf.data(), 12, 3, range, 0, 5), "score 2 is not finite"));
  auto outside = raw;
  outside[3] = 0xbf, outside[2] = 0x80, outside[1] = 0, outside[0] = 0;  // -1.0f
  CHECK(is_invalid(DecodeScores(outside.data(), 12, 3, range, 0, 5), "outside"));
}

// ---- prediction sets and splits -------------------------------------------------------------------

TEST_CASE("PredictionSet keeps the labels at or below the threshold", "[unit][common]") {
  const std::vector<double> s = {0.5, 2.0, 1.0, std::numeric_limits<double>::quiet_NaN(), kInf};
  CHECK(PredictionSet(s, 1.0) == std::vector<int>{0, 2});
  CHECK(PredictionSet(s, 2.0) == std::vector<int>{0, 1, 2});
  CHECK(PredictionSet(s, kInf) == std::vector<int>{0, 1, 2, 4});
  CHECK(PredictionSet(s, 0.1).empty());
  CHECK(PredictionSet({}, 1.0).empty());
}

TEST_CASE("SplitQueries is a seeded partition", "[unit][common]") {
  std::vector<size_t> cal, test;
  SplitQueries(100, 0.3, 11, &cal, &test);
  CHECK(cal.size() == 30);
  CHECK(test.size() == 70);
  CHECK(std::is_sorted(cal.begin(), cal.end()));
  CHECK(std::is_sorted(test.begin(), test.end()));
  std::set<size_t> all(cal.begin(), cal.end());
  all.insert(test.begin(), test.end());
  CHECK(all.size() == 100);
  CHECK(*all.rbegin() == 99);

  std::vector<size_t> cal2, test2;
  SplitQueries(100, 0.3, 11, &cal2, &test2);
  CHECK(cal2 == cal);
  CHECK(test2 == test);
  SplitQueries(100, 0.3, 12, &cal2, &test2);
  CHECK(cal2 != cal);
  // Not just the first 30 indices.
  std::vector<size_t> first30(30);
  std::iota(first30.begin(), first30.end(), size_t{0});
  CHECK(cal != first30);

  SplitQueries(10, 0.0, 1, &cal, &test);
  CHECK(cal.empty());
  CHECK(test.size() == 10);
  SplitQueries(10, 1.0, 1, &cal, &test);
  CHECK(cal.size() == 10);
  CHECK(test.empty());
  SplitQueries(0, 0.5, 1, &cal, &test);
  CHECK(cal.empty());
  CHECK(test.empty());
}

// ---- the real fortune collections ---------------------------------------------------------------

// Two sites with disjoint collections; the hub averages their scores. Each
// site's retriever only knows its own collections, so a query is classified
// right only if the home site's evidence outweighs the other site's. With
// every label held by one site, the average's argmin is the label with the
// largest raw retrieved BM25 mass (the smoothing and the normalisers cancel),
// and BM25 masses grow with the store, so the larger site A wins more of the
// close calls: site B's queries are the harder ones. The check is that a
// clear majority of all held-out queries is classified right, and each
// site's share well above the 1/4 of chance.
TEST_CASE("FC-RAG on the fortune collections classifies held-out fortunes", "[unit][common]") {
  const std::string dir = "/usr/share/games/fortunes";
  const std::vector<std::string> labels = {"computers", "science", "literature", "wisdom"};
  for (const auto& name : labels) {
    if (!std::filesystem::exists(std::filesystem::path(dir) / name)) {
      LOWBAND_SKIP("fortune collection " << dir << "/" << name << " missing (Debian package fortunes)");
    }
  }
  const auto start = std::chrono::steady_clock::now();
  constexpr int kMinChars = 20;
  constexpr int kMaxChars = 2000;
  auto a = LoadFcragData(Data(dir, {"computers", "science"}, 0.1), labels, kMinChars, kMaxChars);
  auto b = LoadFcragData(Data(dir, {"literature", "wisdom"}, 0.1), labels, kMinChars, kMaxChars);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  const Bm25Index index_a(a->store);
  const Bm25Index index_b(b->store);
  constexpr int kTopK = 10;
  constexpr double kSmoothing = 1.0;
  const int num_labels = static_cast<int>(labels.size());

  auto accuracy = [&](const std::vector<LabeledText>& queries) {
    int right = 0;
    for (const auto& q : queries) {
      const auto sa = LabelScores(index_a, a->store, q.text, num_labels, kTopK, kSmoothing);
      const auto sb = LabelScores(index_b, b->store, q.text, num_labels, kTopK, kSmoothing);
      std::vector<double> avg(labels.size());
      for (size_t y = 0; y < avg.size(); ++y) avg[y] = 0.5 * (sa[y] + sb[y]);
      const int best = static_cast<int>(std::min_element(avg.begin(), avg.end()) - avg.begin());
      right += best == q.label;
    }
    return static_cast<double>(right) / static_cast<double>(queries.size());
  };
  const double acc_a = accuracy(a->queries);
  const double acc_b = accuracy(b->queries);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO("site A: " << a->store.size() << " docs, " << a->queries.size() << " queries, top-1 " << acc_a);
  INFO("site B: " << b->store.size() << " docs, " << b->queries.size() << " queries, top-1 " << acc_b);
  INFO("load + index + score: " << seconds << " s");
  const double pooled = (acc_a * a->queries.size() + acc_b * b->queries.size()) /
                        static_cast<double>(a->queries.size() + b->queries.size());
  INFO("pooled top-1 " << pooled);
  CHECK(pooled > 0.5);
  CHECK(acc_a > 0.35);
  CHECK(acc_b > 0.35);
}

}  // namespace lowband
