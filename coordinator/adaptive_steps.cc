#include "coordinator/adaptive_steps.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace lowband {

int MaxInnerSteps(const TrainingConfig& training) {
  const AdaptiveStepsConfig& a = training.adaptive;
  if (!a.enabled) return training.inner_steps;
  return a.max_inner_steps > 0 ? a.max_inner_steps : training.inner_steps;
}

double SmoothStepTime(double previous_ms, double reported_ms) {
  if (!std::isfinite(reported_ms) || reported_ms <= 0) return previous_ms;
  if (previous_ms <= 0) return reported_ms;
  return 0.5 * previous_ms + 0.5 * reported_ms;
}

std::map<std::string, int> AssignInnerSteps(const TrainingConfig& training,
                                            const std::map<std::string, StepTimes>& sites) {
  std::map<std::string, int> steps;
  const AdaptiveStepsConfig& a = training.adaptive;
  if (!a.enabled) {
    for (const auto& [site, t] : sites) steps[site] = training.inner_steps;
    return steps;
  }
  const int hi = MaxInnerSteps(training);
  const int lo = std::min(a.min_inner_steps, hi);
  auto clamp = [&](double h) {
    if (!(h >= lo)) return lo;  // also NaN
    return h >= hi ? hi : static_cast<int>(h);
  };

  // Campaign/reference ratio: median over sites with both figures.
  std::vector<double> ratios;
  bool any_campaign = false;
  for (const auto& [site, t] : sites) {
    if (t.campaign_ms > 0) any_campaign = true;
    if (t.campaign_ms > 0 && t.reference_ms > 0) ratios.push_back(t.campaign_ms / t.reference_ms);
  }
  double ratio = 0;
  if (!ratios.empty()) {
    std::sort(ratios.begin(), ratios.end());
    const size_t n = ratios.size();
    ratio = n % 2 ? ratios[n / 2] : 0.5 * (ratios[n / 2 - 1] + ratios[n / 2]);
  }
  // Each site's step time in one unit: campaign ms when anything is measured
  // (references converted by the ratio), else reference ms.
  const bool campaign_unit = any_campaign;
  std::map<std::string, double> est;
  for (const auto& [site, t] : sites) {
    double e = 0;
    if (campaign_unit) {
      e = t.campaign_ms > 0 ? t.campaign_ms : (ratio > 0 && t.reference_ms > 0 ? t.reference_ms * ratio : 0);
    } else {
      e = t.reference_ms;
    }
    if (std::isfinite(e) && e > 0) est[site] = e;
  }

  double target_ms = 0;
  if (a.round_time_s > 0 && campaign_unit) {
    target_ms = a.round_time_s * 1000.0;
  } else if (a.round_time_s <= 0 && !est.empty()) {
    double fastest = 0;
    for (const auto& [site, e] : est) fastest = fastest == 0 ? e : std::min(fastest, e);
    target_ms = training.inner_steps * fastest;
  }
  for (const auto& [site, t] : sites) {
    auto it = est.find(site);
    if (target_ms <= 0 || it == est.end()) {
      steps[site] = clamp(training.inner_steps);
    } else {
      // The small slack keeps an exact multiple (8 x 25 ms in 200 ms) from
      // rounding down through floating-point error.
      steps[site] = clamp(std::floor(target_ms / it->second * (1 + 1e-9)));
    }
  }
  return steps;
}

}  // namespace lowband
