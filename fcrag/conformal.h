// FC-RAG calibration (docs/design.md 3.7): split-conformal thresholds, B_cal-bit
// calibration summaries pooled at the coordinator, the one-shot FedCP-QQ
// quantile-of-quantiles rule (arXiv 2302.06322) and the coverage bound that
// campaigns report. Pure functions on value types; any thread.
//
// Scores are nonconformity scores (e.g. -log P(y | X, Z)); a prediction set
// is C(X) = {y : s(X, y) <= threshold}. With n exchangeable calibration
// scores and a test score, the k-th smallest calibration score,
// k = ConformalRank(n, alpha), covers the test score with probability
// >= 1 - alpha (exactly k/(n+1) for continuous scores).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/status.h"

namespace lowband {

// k = ceil((n+1)(1-alpha)), at least 1. The product is taken as integral when
// it is within a relative 1e-12 of an integer, so (n+1)(1-alpha) = 90 in
// exact arithmetic gives 90 even if the double reads 90.00000000000001.
// alpha must be in (0, 1) (CHECK; callers validate it).
size_t ConformalRank(size_t n, double alpha);

// The k-th smallest score (k as above); +infinity when k > n (too few scores
// for this alpha: the set must then hold every candidate). InvalidArgument
// when alpha is not in (0, 1) or a score is not finite.
StatusOr<double> SplitConformalThreshold(std::vector<double> scores, double alpha);

// ---- B_cal-bit calibration summaries ----------------------------------------
// Grid of 2^bits values over [lo, hi]: v_c = lo + c*D, D = (hi-lo)/(2^bits-1),
// c = 0..2^bits-1 (v_top is hi exactly). A score is rounded UP to the
// smallest grid value >= it: scores <= lo give code 0, scores > hi (and NaN)
// the special code 2^bits, whose value is +infinity. A site sends its codes
// sorted, i.e. its quantized order statistics, bits+1 bits each.
constexpr int kMaxSummaryBits = 15;  // so that bits+1 fits the 16-bit packer

struct ScoreRange {
  double lo = 0.0;
  double hi = 1.0;
};

// InvalidArgument unless lo, hi finite, lo < hi and bits in 1..15.
Status ValidateScoreRange(ScoreRange range, int bits);

inline uint32_t InfCode(int bits) { return uint32_t{1} << bits; }
// The smallest code whose value is >= score. Valid range and bits (unchecked).
uint32_t ScoreCode(double score, ScoreRange range, int bits);
// The grid value of a code (the upper edge of the cell it stands for);
// +infinity for InfCode(bits). code <= InfCode(bits) (unchecked).
double CodeValue(uint32_t code, ScoreRange range, int bits);

struct ScoreSummary {
  int bits = 0;                 // B_cal
  uint32_t count = 0;           // number of calibration scores n_i
  std::vector<uint32_t> codes;  // count codes, non-decreasing, each <= InfCode(bits)
};

// Valid range and bits required (CHECK); scores.size() < 2^32 (CHECK).
ScoreSummary SummarizeScores(const std::vector<double>& scores, ScoreRange range, int bits);
// ceil(count * (bits+1) / 8).
uint64_t SummaryBytes(int bits, uint32_t count);
// The codes bit-packed (codec/dither.h order) at bits+1 bits each; the
// header fields travel in the message. A summary as SummarizeScores makes it
// (CHECK).
std::vector<uint8_t> PackSummary(const ScoreSummary& summary);
// Untrusted input. InvalidArgument (what and where) when bits is not 1..15,
// count > 2^26, len != SummaryBytes(bits, count), pad bits are set, a code
// exceeds InfCode(bits) or codes decrease.
StatusOr<ScoreSummary> UnpackSummary(const uint8_t* data, size_t len, int bits, uint32_t count);

// Split-conformal threshold over the pooled n = sum count_i scores: the k-th
// smallest CodeValue, k = ConformalRank(n, alpha); +infinity when k > n or the
// rank lands on a +inf code. Sites may use different bits. Every code value
// is >= the score it stands for, so the k-th smallest pooled value is >= the
// exact pooled threshold and the coverage >= 1 - alpha is kept (the price is
// at most one grid step D of extra width inside [lo, hi]). InvalidArgument on
// a bad alpha or range, or a summary that is not well formed.
StatusOr<double> PooledThreshold(const std::vector<ScoreSummary>& summaries, ScoreRange range, double alpha);

// ---- FedCP-QQ: one-shot quantile of quantiles ---------------------------------
// Each of K sites holding n scores sends its local k-th smallest score; the
// server takes the l-th smallest of the K values. For continuous i.i.d.
// scores, with F their CDF, F(local k-th) ~ Beta(k, n-k+1) and the coverage
// P(test <= threshold) = E[F(threshold)] = E[l-th order statistic of K
// i.i.d. Beta(k, n-k+1)] = integral over t in [0,1] of P(Bin(K, I_t(k,
// n-k+1)) < l) dt, computed by adaptive Simpson (absolute error ~1e-11).
struct QuantileOfQuantiles {
  size_t k = 0;  // local rank, 1..n
  size_t l = 0;  // rank among the K local values, 1..K
  double coverage = 0.0;
};

// Regularized incomplete beta I_x(a, b) for a, b > 0, x in [0, 1] (clamped),
// by Lentz's continued fraction with the symmetry swap; ~1e-14 relative.
double RegularizedIncompleteBeta(double x, double a, double b);

// The exact coverage above. 1 <= k <= n, 1 <= l <= sites (CHECK).
double QuantileOfQuantilesCoverage(size_t sites, size_t n_per_site, size_t k, size_t l);

// Among (k, l) with coverage >= 1 - alpha (allowing 1e-9 of integration
// error), the one with the smallest coverage, i.e. the smallest expected
// F(threshold); ties go to the smaller l. InvalidArgument for alpha not in
// (0, 1), sites or n_per_site = 0, or when even k = n, l = K (coverage
// Kn/(Kn+1)) falls short: "K sites x n scores reach at most ...". Cost: about
// K log2(n) integrations.
StatusOr<QuantileOfQuantiles> PlanQuantileOfQuantiles(size_t sites, size_t n_per_site, double alpha);

// A site's k-th smallest score (NaN counts as +inf); +inf when k > size.
// The plan assumes every site uses exactly n scores: a site with fewer
// sends +inf (conservative); one with more should subsample to n.
double LocalOrderStatistic(std::vector<double> scores, size_t k);

// The l-th smallest local value (NaN as +inf); +inf when fewer than l arrive.
// Missing sites only raise the result (the l-th smallest of a subset is >=
// that of the whole), so coverage is kept when sites drop out.
double QuantileOfQuantilesThreshold(const std::vector<double>& local_values, const QuantileOfQuantiles& plan);

// ---- coverage bound -------------------------------------------------------------
// P(y in C(X)) >= 1 - alpha - 1/(n+1) - delta_fl - delta_rag (docs/design.md 3.7).
struct CoverageBound {
  double nominal = 0.0;        // 1 - alpha
  double finite_sample = 0.0;  // 1/(n+1)
  double delta_fl = 0.0;       // as given: the federated model's shift
  double delta_rag = 0.0;      // f_max * sqrt(sum_i v(B_i)) / K
  double lower = 0.0;          // nominal - the three terms, clamped at 0
};

// v(B) = D^2/12 of a B-bit dither grid over score_range (DitherVariance), 0
// for B = 0 (unquantized scores). site_bits in 0..16, sites >= 1, score range
// finite with lo < hi (CHECK).
CoverageBound FcragCoverageBound(double alpha, size_t n, double delta_fl, double f_max,
                                 const std::vector<int>& site_bits, ScoreRange score_range, size_t sites);

// Maximum of a Gaussian kernel density estimate of the finite scores, with
// Silverman's bandwidth h = 0.9 min(sd, IQR/1.349) n^(-1/5), evaluated on a
// grid over [min, max] with step <= h/4 (at most 65536 points; kernels cut
// at 6h). Smoothing slightly underestimates sharp peaks. +infinity when
// fewer than 2 finite scores or they are all equal (a point mass).
double EstimateDensityMax(const std::vector<double>& scores);

}  // namespace lowband
