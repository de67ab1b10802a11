#include "coordinator/outer_optimizer.h"

#include "base/status.h"

namespace lowband {

OuterOptimizer::OuterOptimizer(const OuterOptimizerConfig& config, size_t num_params) : config_(config) {
  if (config_.kind != OuterOptimizerKind::kFedAvg && config_.momentum != 0) {
    momentum_.assign(num_params, 0.0f);
  }
}

std::vector<float> OuterOptimizer::Step(const std::vector<float>& g) {
  const float lr = static_cast<float>(config_.lr);
  const float mu = static_cast<float>(config_.momentum);
  std::vector<float> u(g.size());
  if (momentum_.empty()) {  // fedavg, or sgd without momentum
    for (size_t i = 0; i < g.size(); ++i) u[i] = lr * g[i];
    return u;
  }
  LOWBAND_CHECK(momentum_.size() == g.size());
  if (config_.kind == OuterOptimizerKind::kNesterov) {
    for (size_t i = 0; i < g.size(); ++i) {
      momentum_[i] = mu * momentum_[i] + g[i];
      u[i] = lr * (g[i] + mu * momentum_[i]);
    }
  } else {
    for (size_t i = 0; i < g.size(); ++i) {
      momentum_[i] = mu * momentum_[i] + g[i];
      u[i] = lr * momentum_[i];
    }
  }
  return u;
}

Update OuterOptimizer::Step(const LayoutPlan& plan, Update g) {
  if (g.dense || !stateless()) {
    Update u;
    u.dense = true;
    u.values = Step(g.dense ? g.values : Densify(plan, g));
    return u;
  }
  const float lr = static_cast<float>(config_.lr);
  for (float& v : g.value) v = lr * v;
  return g;
}

}  // namespace lowband
