// Conformal calibration: ranks on hand-made inputs, thresholds, quantized
// summaries (round-up, +inf code, hostile payloads), Monte Carlo coverage of
// split conformal, pooled summaries and FedCP-QQ inside binomial bands, the
// exact FedCP-QQ coverage against closed forms, and the FC-RAG bound.
#include "fcrag/conformal.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "codec/dither.h"

namespace lowband {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Half-width of a +-4 standard error band for a proportion p over `trials`.
double Band(double p, int trials) { return 4.0 * std::sqrt(p * (1.0 - p) / trials); }

std::vector<double> Uniform(std::mt19937_64& rng, size_t n) {
  std::uniform_real_distribution<double> dist(0.0, 1.0);
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

TEST_CASE("ConformalRank on hand-made inputs", "[unit][common]") {
  CHECK(ConformalRank(9, 0.1) == 9);    // 10 * 0.9 = 9
  CHECK(ConformalRank(4, 0.1) == 5);    // ceil(4.5) = 5 > n
  CHECK(ConformalRank(19, 0.05) == 19); // 20 * 0.95 = 19
  CHECK(ConformalRank(99, 0.1) == 90);  // integral: not bumped to 91 by rounding
  CHECK(ConformalRank(9, 0.3) == 7);
  CHECK(ConformalRank(3, 0.5) == 2);
  CHECK(ConformalRank(50, 0.1) == 46);  // ceil(45.9)
  CHECK(ConformalRank(0, 0.1) == 1);
  for (size_t n = 1; n < 2000; ++n) {  // (n+1)(1 - 1/(n+1)) = n exactly
    REQUIRE(ConformalRank(n, 1.0 / static_cast<double>(n + 1)) == n);
  }
}

TEST_CASE("SplitConformalThreshold picks the k-th smallest or +inf", "[unit][common]") {
  std::vector<double> s = {5, 3, 9, 1, 7, 2, 8, 4, 6};
  CHECK(*SplitConformalThreshold(s, 0.1) == 9.0);
  CHECK(*SplitConformalThreshold(s, 0.3) == 7.0);
  CHECK(*SplitConformalThreshold({4, 1, 3, 2}, 0.1) == kInf);
  std::vector<double> twenty(19);
  std::iota(twenty.begin(), twenty.end(), 1.0);
  CHECK(*SplitConformalThreshold(twenty, 0.05) == 19.0);
  CHECK(*SplitConformalThreshold({}, 0.5) == kInf);
  for (double alpha : {0.0, 1.0, -0.1, 1.5, std::nan("")}) {
    StatusOr<double> r = SplitConformalThreshold(s, alpha);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message().find("alpha") != std::string::npos);
  }
  CHECK_FALSE(SplitConformalThreshold({1, std::nan(""), 3}, 0.1).ok());
  CHECK_FALSE(SplitConformalThreshold({1, kInf, 3}, 0.1).ok());
}

TEST_CASE("split conformal coverage matches k/(n+1) on exchangeable scores", "[unit][common]") {
  const int trials = 2000;
  const size_t n = 50;
  const double alpha = 0.1;
  const double expected = static_cast<double>(ConformalRank(n, alpha)) / (n + 1);  // 46/51
  std::mt19937_64 rng(11);
  std::exponential_distribution<double> dist(1.0);  // any continuous law
  int covered = 0;
  for (int t = 0; t < trials; ++t) {
    std::vector<double> cal(n);
    for (double& x : cal) x = dist(rng);
    covered += dist(rng) <= *SplitConformalThreshold(cal, alpha);
  }
  const double rate = static_cast<double>(covered) / trials;
  INFO("coverage " << rate << " expected " << expected);
  CHECK(std::fabs(rate - expected) <= Band(expected, trials));
  CHECK(expected >= 1 - alpha);
}

TEST_CASE("score codes round up to the grid - +inf code above the range", "[unit][common]") {
  const ScoreRange unit{0.0, 1.0};
  const int bits = 3;  // 8 values k/7, +inf code 8
  CHECK(ValidateScoreRange(unit, bits).ok());
  CHECK_FALSE(ValidateScoreRange(unit, 0).ok());
  CHECK_FALSE(ValidateScoreRange(unit, 16).ok());
  CHECK_FALSE(ValidateScoreRange({1.0, 1.0}, 3).ok());
  CHECK_FALSE(ValidateScoreRange({0.0, kInf}, 3).ok());
  for (uint32_t c = 0; c < 8; ++c) CHECK(ScoreCode(CodeValue(c, unit, bits), unit, bits) == c);
  CHECK(CodeValue(7, unit, bits) == 1.0);
  CHECK(CodeValue(8, unit, bits) == kInf);
  CHECK(ScoreCode(-3.0, unit, bits) == 0);
  CHECK(ScoreCode(1.0, unit, bits) == 7);
  CHECK(ScoreCode(1.0000001, unit, bits) == 8);
  CHECK(ScoreCode(std::nan(""), unit, bits) == 8);
  CHECK(ScoreCode(0.5, unit, bits) == 4);  // 3.5/7 -> 4/7
  std::mt19937_64 rng(12);
  for (double s : Uniform(rng, 10000)) {
    const double v = CodeValue(ScoreCode(s, {-0.3, 1.7}, 9), {-0.3, 1.7}, 9);
    REQUIRE(v >= s);
    REQUIRE(v - s <= 2.0 / 511 + 1e-12);
  }
}

TEST_CASE("pooled threshold equals the exact one on the grid, rounds up off it", "[unit][common]") {
  const ScoreRange range{0.0, 7.0};  // 3 bits: step exactly 1
  std::mt19937_64 rng(13);
  std::uniform_int_distribution<int> level(0, 7);
  std::vector<ScoreSummary> summaries;
  std::vector<double> all;
  for (int site = 0; site < 3; ++site) {
    std::vector<double> s(15);
    for (double& x : s) x = level(rng);
    all.insert(all.end(), s.begin(), s.end());
    summaries.push_back(SummarizeScores(s, range, 3));
  }
  CHECK(*PooledThreshold(summaries, range, 0.2) == *SplitConformalThreshold(all, 0.2));

  // Off the grid, at mixed widths: >= exact, by at most the coarsest step.
  std::uniform_real_distribution<double> dist(0.0, 7.0);
  summaries.clear();
  all.clear();
  const int widths[] = {3, 5, 8};
  for (int bits : widths) {
    std::vector<double> s(40);
    for (double& x : s) x = dist(rng);
    all.insert(all.end(), s.begin(), s.end());
    summaries.push_back(SummarizeScores(s, range, bits));
  }
  for (double alpha : {0.05, 0.1, 0.3, 0.7}) {
    const double exact = *SplitConformalThreshold(all, alpha);
    const double pooled = *PooledThreshold(summaries, range, alpha);
    INFO("alpha " << alpha);
    CHECK(pooled >= exact);
    CHECK(pooled - exact <= 1.0);
  }
}

TEST_CASE("pooled threshold reaches +inf through the +inf code", "[unit][common]") {
  const ScoreRange range{0.0, 1.0};
  // 10 scores, 3 above the range: rank 10 of 10 at alpha 0.1 is a +inf code.
  std::vector<double> s = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 5.0, 6.0, 7.0};
  const ScoreSummary sum = SummarizeScores(s, range, 4);
  CHECK(sum.codes.back() == InfCode(4));
  CHECK(*PooledThreshold({sum}, range, 0.1) == kInf);
  CHECK(*PooledThreshold({sum}, range, 0.4) == CodeValue(ScoreCode(0.7, range, 4), range, 4));  // rank 7
  CHECK(*PooledThreshold({}, range, 0.1) == kInf);
}

TEST_CASE("summary packing round trips - malformed summaries are rejected", "[unit][common]") {
  const ScoreRange range{-2.0, 3.0};
  std::mt19937_64 rng(14);
  std::normal_distribution<double> dist(0.0, 2.0);
  for (int bits = 1; bits <= kMaxSummaryBits; ++bits) {
    std::vector<double> s(33);
    for (double& x : s) x = dist(rng);
    const ScoreSummary sum = SummarizeScores(s, range, bits);
    const std::vector<uint8_t> p = PackSummary(sum);
    REQUIRE(p.size() == SummaryBytes(bits, 33));
    StatusOr<ScoreSummary> back = UnpackSummary(p.data(), p.size(), bits, 33);
    REQUIRE(back.ok());
    REQUIRE(back->codes == sum.codes);
    REQUIRE(back->bits == bits);
    REQUIRE(back->count == 33);
  }

  auto expect_error = [](const StatusOr<ScoreSummary>& r, const std::string& part) {
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    INFO(r.status().message());
    CHECK(r.status().message().find(part) != std::string::npos);
  };
  // 4 codes at bits 3 are 4-bit fields: {1, 9, 2, 8} -> 0x91, 0x82.
  std::vector<uint8_t> p = {0x21, 0x83};  // {1, 2, 3, 8}: well formed
  CHECK(UnpackSummary(p.data(), p.size(), 3, 4).ok());
  expect_error(UnpackSummary(p.data(), 1, 3, 4), "expected 2");
  expect_error(UnpackSummary(p.data(), p.size(), 3, 3), "pad bits");  // 12 bits: code 8 lands in the pad nibble
  p = {0x91, 0x82};
  expect_error(UnpackSummary(p.data(), p.size(), 3, 4), "code 1: 9 > 8");
  p = {0x21, 0x81};  // {1, 2, 1, 8}
  expect_error(UnpackSummary(p.data(), p.size(), 3, 4), "code 2: 1 after 2");
  expect_error(UnpackSummary(p.data(), p.size(), 0, 4), "bits 0");
  expect_error(UnpackSummary(p.data(), p.size(), 16, 4), "bits 16");
  expect_error(UnpackSummary(p.data(), p.size(), 3, (1u << 26) + 1), "exceeds");

  // PooledThreshold checks the summaries it is handed.
  ScoreSummary bad{3, 4, {1, 2, 3}};
  CHECK_FALSE(PooledThreshold({bad}, {0.0, 1.0}, 0.1).ok());
  bad = {3, 3, {3, 2, 1}};
  CHECK_FALSE(PooledThreshold({bad}, {0.0, 1.0}, 0.1).ok());
  bad = {3, 1, {9}};
  CHECK_FALSE(PooledThreshold({bad}, {0.0, 1.0}, 0.1).ok());
  CHECK_FALSE(PooledThreshold({}, {1.0, 0.0}, 0.1).ok());
  CHECK_FALSE(PooledThreshold({}, {0.0, 1.0}, 1.0).ok());
}

TEST_CASE("pooled 3-bit summaries keep coverage >= the exact split conformal", "[unit][common]") {
  const int trials = 2000, sites = 4;
  const size_t per_site = 25;
  const double alpha = 0.1;
  const double exact = static_cast<double>(ConformalRank(sites * per_site, alpha)) / (sites * per_site + 1);
  std::mt19937_64 rng(15);
  std::uniform_real_distribution<double> dist(0.0, 1.0);
  int covered = 0;
  for (int t = 0; t < trials; ++t) {
    std::vector<ScoreSummary> summaries;
    for (int i = 0; i < sites; ++i) summaries.push_back(SummarizeScores(Uniform(rng, per_site), {0.0, 1.0}, 3));
    covered += dist(rng) <= *PooledThreshold(summaries, {0.0, 1.0}, alpha);
  }
  const double rate = static_cast<double>(covered) / trials;
  INFO("coverage " << rate << " exact-score coverage " << exact);
  CHECK(rate >= exact - Band(exact, trials));
}

TEST_CASE("RegularizedIncompleteBeta matches binomial tails and symmetries", "[unit][common]") {
  // I_x(k, n-k+1) = P(Binomial(n, x) >= k).
  for (int n : {1, 5, 20, 60}) {
    for (int k = 1; k <= n; ++k) {
      for (double x : {0.01, 0.2, 0.5, 0.77, 0.99}) {
        double tail = 0.0;
        for (int j = k; j <= n; ++j) {
          tail += std::exp(std::lgamma(n + 1.0) - std::lgamma(j + 1.0) - std::lgamma(n - j + 1.0) +
                           j * std::log(x) + (n - j) * std::log1p(-x));
        }
        INFO("n " << n << " k " << k << " x " << x);
        REQUIRE(RegularizedIncompleteBeta(x, k, n - k + 1) == Approx(tail).epsilon(1e-10).margin(1e-14));
      }
    }
  }
  CHECK(RegularizedIncompleteBeta(0.3, 1, 1) == Approx(0.3));
  CHECK(RegularizedIncompleteBeta(0.5, 7.5, 7.5) == Approx(0.5));
  CHECK(RegularizedIncompleteBeta(0.0, 2, 3) == 0.0);
  CHECK(RegularizedIncompleteBeta(1.0, 2, 3) == 1.0);
}

TEST_CASE("FedCP-QQ coverage integral matches closed forms", "[unit][common]") {
  // One site: E[Beta(k, n-k+1)] = k/(n+1), the split-conformal coverage.
  for (size_t k : {1, 4, 9}) CHECK(QuantileOfQuantilesCoverage(1, 9, k, 1) == Approx(k / 10.0).margin(1e-10));
  // The maximum (minimum) of all K n scores: Kn/(Kn+1) (1/(Kn+1)).
  CHECK(QuantileOfQuantilesCoverage(5, 20, 20, 5) == Approx(100.0 / 101).margin(1e-10));
  CHECK(QuantileOfQuantilesCoverage(5, 20, 1, 1) == Approx(1.0 / 101).margin(1e-10));
  CHECK(QuantileOfQuantilesCoverage(40, 500, 500, 40) == Approx(20000.0 / 20001).margin(1e-9));
}

TEST_CASE("FedCP-QQ plan: coverage >= 1 - alpha, the smallest such", "[unit][common]") {
  const size_t sites = 5, n = 20;
  const double alpha = 0.1;
  StatusOr<QuantileOfQuantiles> plan = PlanQuantileOfQuantiles(sites, n, alpha);
  REQUIRE(plan.ok());
  INFO("k " << plan->k << " l " << plan->l << " coverage " << plan->coverage);
  CHECK(plan->coverage >= 1 - alpha - 1e-9);
  // Brute force over every (k, l).
  double best = 2.0;
  for (size_t l = 1; l <= sites; ++l) {
    for (size_t k = 1; k <= n; ++k) {
      const double c = QuantileOfQuantilesCoverage(sites, n, k, l);
      if (c >= 1 - alpha - 1e-9) best = std::min(best, c);
    }
  }
  CHECK(plan->coverage == Approx(best).margin(1e-12));

  // One site reduces to split conformal.
  StatusOr<QuantileOfQuantiles> one = PlanQuantileOfQuantiles(1, 9, 0.1);
  REQUIRE(one.ok());
  CHECK(one->k == 9);
  CHECK(one->l == 1);
  CHECK(one->coverage == Approx(0.9).margin(1e-9));
}

TEST_CASE("FedCP-QQ Monte Carlo coverage matches the plan", "[unit][common]") {
  const size_t sites = 5, n = 20;
  const QuantileOfQuantiles plan = *PlanQuantileOfQuantiles(sites, n, 0.1);
  const int trials = 4000;
  std::mt19937_64 rng(16);
  std::lognormal_distribution<double> dist(0.0, 1.0);
  int covered = 0;
  for (int t = 0; t < trials; ++t) {
    std::vector<double> local(sites);
    for (double& v : local) {
      std::vector<double> s(n);
      for (double& x : s) x = dist(rng);
      v = LocalOrderStatistic(s, plan.k);
    }
    covered += dist(rng) <= QuantileOfQuantilesThreshold(local, plan);
  }
  const double rate = static_cast<double>(covered) / trials;
  INFO("coverage " << rate << " planned " << plan.coverage);
  CHECK(std::fabs(rate - plan.coverage) <= Band(plan.coverage, trials));
}

TEST_CASE("FedCP-QQ refuses infeasible plans - missing values are conservative", "[unit][common]") {
  StatusOr<QuantileOfQuantiles> r = PlanQuantileOfQuantiles(2, 3, 0.1);  // at most 6/7
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  CHECK(r.status().message().find("infeasible") != std::string::npos);
  CHECK_FALSE(PlanQuantileOfQuantiles(0, 10, 0.1).ok());
  CHECK_FALSE(PlanQuantileOfQuantiles(10, 0, 0.1).ok());
  CHECK_FALSE(PlanQuantileOfQuantiles(10, 10, 0.0).ok());
  CHECK(PlanQuantileOfQuantiles(3, 3, 0.1).ok());  // 9/10 exactly

  CHECK(LocalOrderStatistic({3, 1, 2}, 2) == 2.0);
  CHECK(LocalOrderStatistic({3, 1, 2}, 4) == kInf);
  CHECK(LocalOrderStatistic({std::nan(""), 1, 2}, 3) == kInf);
  const QuantileOfQuantiles plan{2, 3, 0.9};
  CHECK(QuantileOfQuantilesThreshold({5, 1, 4, 2}, plan) == 4.0);
  CHECK(QuantileOfQuantilesThreshold({5, 1}, plan) == kInf);
}

TEST_CASE("FcragCoverageBound adds up the docs/design.md 3.7 terms", "[unit][common]") {
  const ScoreRange range{0.0, 10.0};
  const CoverageBound b = FcragCoverageBound(0.1, 99, 0.02, 0.5, {4, 4, 8, 0}, range, 4);
  const double v4 = std::pow(10.0 / 15, 2) / 12, v8 = std::pow(10.0 / 255, 2) / 12;
  CHECK(v4 == Approx(DitherVariance({0.0f, 10.0f, 4})));
  CHECK(b.nominal == Approx(0.9));
  CHECK(b.finite_sample == Approx(0.01));
  CHECK(b.delta_fl == 0.02);
  CHECK(b.delta_rag == Approx(0.5 * std::sqrt(2 * v4 + v8) / 4));
  CHECK(b.lower == Approx(0.9 - 0.01 - 0.02 - b.delta_rag));
  CHECK(FcragCoverageBound(0.1, 99, 0.95, 0.5, {4}, range, 1).lower == 0.0);
  CHECK(FcragCoverageBound(0.1, 99, 0.0, 0.5, {0, 0}, range, 2).delta_rag == 0.0);
}

TEST_CASE("EstimateDensityMax finds the peak of known densities", "[unit][common]") {
  std::mt19937_64 rng(17);
  std::normal_distribution<double> normal(3.0, 0.5);
  std::vector<double> s(5000);
  for (double& x : s) x = normal(rng);
  CHECK(EstimateDensityMax(s) == Approx(1.0 / (0.5 * std::sqrt(2 * M_PI))).epsilon(0.1));
  std::vector<double> u = Uniform(rng, 5000);
  for (double& x : u) x *= 2.0;
  CHECK(EstimateDensityMax(u) == Approx(0.5).epsilon(0.15));
  CHECK(EstimateDensityMax({1.0}) == kInf);
  CHECK(EstimateDensityMax({2.0, 2.0, 2.0}) == kInf);
  CHECK(EstimateDensityMax({kInf, std::nan(""), 1.0}) == kInf);
}

}  // namespace
}  // namespace lowband
