#include "fcrag/conformal.h"

#include <math.h>  // lgamma_r: std::lgamma writes the global signgam

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <string>
#include <utility>

#include "codec/dither.h"

namespace lowband {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr uint32_t kMaxSummaryCount = uint32_t{1} << 26;
// Integration error allowed when comparing a FedCP-QQ coverage with 1 - alpha.
constexpr double kCoverageSlack = 1e-9;

Status CheckAlpha(double alpha) {
  if (!(alpha > 0.0 && alpha < 1.0)) {
    return InvalidArgument("conformal alpha " + std::to_string(alpha) + " must be in (0, 1)");
  }
  return Status::Ok();
}

Status CheckRange(ScoreRange range) {
  if (!std::isfinite(range.lo) || !std::isfinite(range.hi) || !(range.lo < range.hi)) {
    return InvalidArgument("score range [" + std::to_string(range.lo) + ", " + std::to_string(range.hi) +
                           "] must be finite with lo < hi");
  }
  return Status::Ok();
}

double LogGamma(double x) {
  int sign;
  return lgamma_r(x, &sign);
}

// Codes of one summary: each <= InfCode(bits), non-decreasing.
Status CheckCodes(const std::vector<uint32_t>& codes, int bits, const std::string& where) {
  for (size_t i = 0; i < codes.size(); ++i) {
    if (codes[i] > InfCode(bits)) {
      return InvalidArgument(where + " code " + std::to_string(i) + ": " + std::to_string(codes[i]) + " > " +
                             std::to_string(InfCode(bits)) + " (the +inf code of " + std::to_string(bits) +
                             " bits)");
    }
    if (i > 0 && codes[i] < codes[i - 1]) {
      return InvalidArgument(where + " code " + std::to_string(i) + ": " + std::to_string(codes[i]) + " after " +
                             std::to_string(codes[i - 1]) + " (codes must be sorted)");
    }
  }
  return Status::Ok();
}

// Lentz's method for the continued fraction of the incomplete beta function,
//   I_x(a,b) = x^a (1-x)^b / (a B(a,b)) * 1/(1+ d1/(1+ d2/(1+ ...))),
//   d_{2m} = m(b-m)x / ((a+2m-1)(a+2m)),
//   d_{2m+1} = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)),
// which converges fast for x < (a+1)/(a+b+2).
double BetaContinuedFraction(double a, double b, double x) {
  constexpr double kTiny = 1e-300, kEps = 1e-15;
  auto guard = [](double v) { return std::fabs(v) < kTiny ? kTiny : v; };
  double c = 1.0;
  double d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0));
  double h = d;
  for (int m = 1; m <= 100000; ++m) {
    const double even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m));
    const double odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1));
    double delta = 1.0;
    for (double coef : {even, odd}) {
      d = 1.0 / guard(1.0 + coef * d);
      c = guard(1.0 + coef / c);
      delta = c * d;
      h *= delta;
    }
    if (std::fabs(delta - 1.0) < kEps) break;
  }
  return h;
}

// Adaptive Simpson on [a, b] given f at a, the midpoint and b.
template <typename F>
double Simpson(const F& f, double a, double b, double fa, double fm, double fb, double whole, double tol,
               int depth) {
  const double m = 0.5 * (a + b), lm = 0.5 * (a + m), rm = 0.5 * (m + b);
  const double flm = f(lm), frm = f(rm);
  const double left = (m - a) / 6.0 * (fa + 4.0 * flm + fm);
  const double right = (b - m) / 6.0 * (fm + 4.0 * frm + fb);
  const double diff = left + right - whole;
  if (depth <= 0 || std::fabs(diff) <= 15.0 * tol) return left + right + diff / 15.0;
  return Simpson(f, a, m, fa, flm, fm, left, 0.5 * tol, depth - 1) +
         Simpson(f, m, b, fm, frm, fb, right, 0.5 * tol, depth - 1);
}

// Integral of f over [0, 1]. Starting from 64 panels means a sharp step of
// the (monotone) integrands here is always straddled by some panel whose
// halves disagree, so the refinement finds it.
template <typename F>
double IntegrateUnit(const F& f) {
  constexpr int kPanels = 64;
  constexpr double kTolerance = 1e-11;
  double total = 0.0;
  for (int p = 0; p < kPanels; ++p) {
    const double a = static_cast<double>(p) / kPanels, b = static_cast<double>(p + 1) / kPanels;
    const double fa = f(a), fm = f(0.5 * (a + b)), fb = f(b);
    const double whole = (b - a) / 6.0 * (fa + 4.0 * fm + fb);
    total += Simpson(f, a, b, fa, fm, fb, whole, kTolerance / kPanels, 40);
  }
  return total;
}

}  // namespace

size_t ConformalRank(size_t n, double alpha) {
  LOWBAND_CHECK(alpha > 0.0 && alpha < 1.0);
  const double x = (static_cast<double>(n) + 1.0) * (1.0 - alpha);
  const double k = std::ceil(x - 1e-12 * std::max(1.0, x));
  return std::max<size_t>(1, static_cast<size_t>(k));
}

StatusOr<double> SplitConformalThreshold(std::vector<double> scores, double alpha) {
  LOWBAND_RETURN_IF_ERROR(CheckAlpha(alpha));
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isfinite(scores[i])) {
      return InvalidArgument("calibration score " + std::to_string(i) + " is not finite");
    }
  }
  const size_t k = ConformalRank(scores.size(), alpha);
  if (k > scores.size()) return kInf;
  std::nth_element(scores.begin(), scores.begin() + (k - 1), scores.end());
  return scores[k - 1];
}

// ---------------------------------------------------------------- summaries

Status ValidateScoreRange(ScoreRange range, int bits) {
  LOWBAND_RETURN_IF_ERROR(CheckRange(range));
  if (bits < 1 || bits > kMaxSummaryBits) {
    return InvalidArgument("score summary bits " + std::to_string(bits) + ", allowed 1..15");
  }
  return Status::Ok();
}

double CodeValue(uint32_t code, ScoreRange range, int bits) {
  const uint32_t top = InfCode(bits) - 1;
  if (code > top) return kInf;
  if (code == top) return range.hi;
  return range.lo + code * ((range.hi - range.lo) / top);
}

uint32_t ScoreCode(double score, ScoreRange range, int bits) {
  if (std::isnan(score) || score > range.hi) return InfCode(bits);
  if (score <= range.lo) return 0;
  const uint32_t top = InfCode(bits) - 1;
  const double t = std::ceil((score - range.lo) / ((range.hi - range.lo) / top));
  uint32_t c = static_cast<uint32_t>(std::clamp(t, 0.0, static_cast<double>(top)));
  // The division may round either way; settle on the smallest code whose
  // value is >= score (CodeValue(top) = hi >= score ends the second loop).
  while (c > 0 && CodeValue(c - 1, range, bits) >= score) --c;
  while (CodeValue(c, range, bits) < score) ++c;
  return c;
}

ScoreSummary SummarizeScores(const std::vector<double>& scores, ScoreRange range, int bits) {
  LOWBAND_CHECK(ValidateScoreRange(range, bits).ok());
  LOWBAND_CHECK(scores.size() <= UINT32_MAX);
  ScoreSummary s;
  s.bits = bits;
  s.count = static_cast<uint32_t>(scores.size());
  s.codes.reserve(scores.size());
  for (double v : scores) s.codes.push_back(ScoreCode(v, range, bits));
  std::sort(s.codes.begin(), s.codes.end());
  return s;
}

uint64_t SummaryBytes(int bits, uint32_t count) { return PackedBytes(count, bits + 1); }

std::vector<uint8_t> PackSummary(const ScoreSummary& summary) {
  LOWBAND_CHECK(summary.bits >= 1 && summary.bits <= kMaxSummaryBits);
  LOWBAND_CHECK(summary.codes.size() == summary.count);
  LOWBAND_CHECK(CheckCodes(summary.codes, summary.bits, "summary").ok());
  return PackBits(std::vector<uint16_t>(summary.codes.begin(), summary.codes.end()), summary.bits + 1);
}

StatusOr<ScoreSummary> UnpackSummary(const uint8_t* data, size_t len, int bits, uint32_t count) {
  if (bits < 1 || bits > kMaxSummaryBits) {
    return InvalidArgument("score summary: bits " + std::to_string(bits) + ", allowed 1..15");
  }
  if (count > kMaxSummaryCount) {
    return InvalidArgument("score summary: count " + std::to_string(count) + " exceeds " +
                           std::to_string(kMaxSummaryCount));
  }
  StatusOr<std::vector<uint16_t>> packed = UnpackBits(data, len, count, bits + 1);
  if (!packed.ok()) return InvalidArgument("score summary: " + packed.status().message());
  ScoreSummary s;
  s.bits = bits;
  s.count = count;
  s.codes.assign(packed->begin(), packed->end());
  LOWBAND_RETURN_IF_ERROR(CheckCodes(s.codes, bits, "score summary"));
  return s;
}

StatusOr<double> PooledThreshold(const std::vector<ScoreSummary>& summaries, ScoreRange range, double alpha) {
  LOWBAND_RETURN_IF_ERROR(CheckAlpha(alpha));
  LOWBAND_RETURN_IF_ERROR(CheckRange(range));
  std::vector<double> values;
  for (size_t i = 0; i < summaries.size(); ++i) {
    const ScoreSummary& s = summaries[i];
    const std::string where = "summary " + std::to_string(i);
    if (s.bits < 1 || s.bits > kMaxSummaryBits) {
      return InvalidArgument(where + ": bits " + std::to_string(s.bits) + ", allowed 1..15");
    }
    if (s.codes.size() != s.count) {
      return InvalidArgument(where + ": " + std::to_string(s.codes.size()) + " codes, count says " +
                             std::to_string(s.count));
    }
    LOWBAND_RETURN_IF_ERROR(CheckCodes(s.codes, s.bits, where));
    for (uint32_t c : s.codes) values.push_back(CodeValue(c, range, s.bits));
  }
  const size_t k = ConformalRank(values.size(), alpha);
  if (k > values.size()) return kInf;
  std::nth_element(values.begin(), values.begin() + (k - 1), values.end());
  return values[k - 1];
}

// ---------------------------------------------------------------- FedCP-QQ

double RegularizedIncompleteBeta(double x, double a, double b) {
  if (x <= 0.0) return 0.0;
  if (x >= 1.0) return 1.0;
  const double front =
      std::exp(LogGamma(a + b) - LogGamma(a) - LogGamma(b) + a * std::log(x) + b * std::log1p(-x));
  // The fraction converges quickly only below the mean; above it use
  // I_x(a, b) = 1 - I_{1-x}(b, a).
  if (x < (a + 1.0) / (a + b + 2.0)) return front * BetaContinuedFraction(a, b, x) / a;
  return 1.0 - front * BetaContinuedFraction(b, a, 1.0 - x) / b;
}

double QuantileOfQuantilesCoverage(size_t sites, size_t n_per_site, size_t k, size_t l) {
  LOWBAND_CHECK(k >= 1 && k <= n_per_site && l >= 1 && l <= sites);
  const double a = static_cast<double>(k), b = static_cast<double>(n_per_site - k + 1);
  const double kk = static_cast<double>(sites);
  std::vector<double> log_choose(l);  // log C(K, j), j < l
  for (size_t j = 0; j < l; ++j) {
    log_choose[j] = LogGamma(kk + 1) - LogGamma(j + 1.0) - LogGamma(kk - j + 1);
  }
  // P(l-th smallest of K values > t) = P(fewer than l of them <= t)
  //   = sum_{j<l} C(K,j) G^j (1-G)^(K-j),  G = I_t(k, n-k+1).
  auto survival = [&](double t) {
    const double g = RegularizedIncompleteBeta(t, a, b);
    if (g <= 0.0) return 1.0;
    if (g >= 1.0) return 0.0;
    const double log_g = std::log(g), log_1mg = std::log1p(-g);
    double s = 0.0;
    for (size_t j = 0; j < l; ++j) s += std::exp(log_choose[j] + j * log_g + (kk - j) * log_1mg);
    return std::min(s, 1.0);
  };
  // E[X] = integral of P(X > t) for X in [0, 1].
  return IntegrateUnit(survival);
}

StatusOr<QuantileOfQuantiles> PlanQuantileOfQuantiles(size_t sites, size_t n_per_site, double alpha) {
  LOWBAND_RETURN_IF_ERROR(CheckAlpha(alpha));
  if (sites == 0 || n_per_site == 0) {
    return InvalidArgument("FedCP-QQ needs sites >= 1 and scores per site >= 1, got " + std::to_string(sites) +
                           " sites x " + std::to_string(n_per_site) + " scores");
  }
  const double target = 1.0 - alpha - kCoverageSlack;
  // k = n, l = K is the maximum of all K n scores: coverage Kn/(Kn+1).
  const double total = static_cast<double>(sites) * static_cast<double>(n_per_site);
  if (total / (total + 1.0) < target) {
    return InvalidArgument("FedCP-QQ infeasible: " + std::to_string(sites) + " sites x " +
                           std::to_string(n_per_site) + " scores reach at most coverage " +
                           std::to_string(total / (total + 1.0)) + " < 1 - alpha = " + std::to_string(1.0 - alpha));
  }
  std::map<std::pair<size_t, size_t>, double> memo;
  auto coverage = [&](size_t k, size_t l) {
    auto [it, fresh] = memo.try_emplace({k, l}, 0.0);
    if (fresh) it->second = QuantileOfQuantilesCoverage(sites, n_per_site, k, l);
    return it->second;
  };
  // Coverage rises with k and with l. For each l, binary-search the least
  // feasible k; that k can only fall as l grows, so it bounds the next search.
  QuantileOfQuantiles best;
  size_t k_hi = n_per_site;
  for (size_t l = 1; l <= sites; ++l) {
    if (coverage(k_hi, l) < target) continue;  // this l cannot reach 1 - alpha
    size_t lo = 1, hi = k_hi;
    while (lo < hi) {
      const size_t mid = lo + (hi - lo) / 2;
      if (coverage(mid, l) >= target) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    k_hi = lo;
    const double c = coverage(lo, l);
    if (best.k == 0 || c < best.coverage) best = {lo, l, c};
  }
  LOWBAND_CHECK(best.k != 0);  // l = K, k = n is feasible by the test above
  return best;
}

double LocalOrderStatistic(std::vector<double> scores, size_t k) {
  if (k == 0 || k > scores.size()) return kInf;
  for (double& s : scores) {
    if (std::isnan(s)) s = kInf;
  }
  std::nth_element(scores.begin(), scores.begin() + (k - 1), scores.end());
  return scores[k - 1];
}

double QuantileOfQuantilesThreshold(const std::vector<double>& local_values, const QuantileOfQuantiles& plan) {
  return LocalOrderStatistic(local_values, plan.l);
}

// ---------------------------------------------------------------- bound

CoverageBound FcragCoverageBound(double alpha, size_t n, double delta_fl, double f_max,
                                 const std::vector<int>& site_bits, ScoreRange score_range, size_t sites) {
  LOWBAND_CHECK(sites >= 1);
  LOWBAND_CHECK(CheckRange(score_range).ok());
  double variance_sum = 0.0;
  for (int b : site_bits) {
    LOWBAND_CHECK(b >= 0 && b <= kMaxDitherBits);
    if (b == 0) continue;  // unquantized scores add no dither noise
    // D^2/12 as DitherVariance, in double over the double range.
    const double step = (score_range.hi - score_range.lo) / static_cast<double>((1u << b) - 1);
    variance_sum += step * step / 12.0;
  }
  CoverageBound out;
  out.nominal = 1.0 - alpha;
  out.finite_sample = 1.0 / (static_cast<double>(n) + 1.0);
  out.delta_fl = delta_fl;
  out.delta_rag = f_max * std::sqrt(variance_sum) / static_cast<double>(sites);
  out.lower = std::max(0.0, out.nominal - out.finite_sample - out.delta_fl - out.delta_rag);
  return out;
}

double EstimateDensityMax(const std::vector<double>& scores) {
  std::vector<double> x;
  x.reserve(scores.size());
  for (double s : scores) {
    if (std::isfinite(s)) x.push_back(s);
  }
  const size_t n = x.size();
  if (n < 2) return kInf;
  std::sort(x.begin(), x.end());
  const double mean = std::accumulate(x.begin(), x.end(), 0.0) / n;
  double ss = 0.0;
  for (double v : x) ss += (v - mean) * (v - mean);
  const double sd = std::sqrt(ss / (n - 1));
  auto quantile = [&](double p) {  // linear interpolation between order statistics
    const double at = p * (n - 1);
    const size_t i = static_cast<size_t>(at);
    return i + 1 < n ? x[i] + (at - i) * (x[i + 1] - x[i]) : x[i];
  };
  const double iqr = quantile(0.75) - quantile(0.25);
  const double spread = iqr > 0.0 ? std::min(sd, iqr / 1.349) : sd;
  if (!(spread > 0.0)) return kInf;
  const double h = 0.9 * spread * std::pow(static_cast<double>(n), -0.2);

  const double range = x.back() - x.front();
  const double points = std::clamp(std::ceil(range / (0.25 * h)) + 1.0, 2.0, 65536.0);
  const double step = range / (points - 1.0);
  double best = 0.0;
  for (size_t i = 0; i < static_cast<size_t>(points); ++i) {
    const double t = x.front() + i * step;
    auto first = std::lower_bound(x.begin(), x.end(), t - 6.0 * h);
    auto last = std::upper_bound(first, x.end(), t + 6.0 * h);
    double sum = 0.0;
    for (auto it = first; it != last; ++it) {
      const double z = (*it - t) / h;
      sum += std::exp(-0.5 * z * z);
    }
    best = std::max(best, sum);
  }
  return best / (n * h * std::sqrt(2.0 * M_PI));
}

}  // namespace lowband
