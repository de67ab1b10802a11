// Outer optimizer of the DiLoCo family, applied by the coordinator to the
// averaged pseudo-gradient g. It returns the update u that every replica
// applies as theta <- theta - u, so replicas stay bit-identical whatever the
// optimizer keeps as state. Plain fp32 loops: the result must not depend on
// BLAS or threading. Lives on the coordinator loop thread.
#pragma once

#include <vector>

#include "codec/codec.h"
#include "config/config.h"

namespace lowband {

class OuterOptimizer {
 public:
  OuterOptimizer() = default;  // a placeholder to move one into
  OuterOptimizer(const OuterOptimizerConfig& config, size_t num_params);

  //  nesterov: m <- mu*m + g;  u = lr*(g + mu*m)   (DiLoCo: lr 0.7, mu 0.9)
  //  sgd:      m <- mu*m + g;  u = lr*m            (mu = 0: u = lr*g; SparseLoCo: lr 1)
  //  fedavg:   u = lr*g                            (lr = server learning rate)
  std::vector<float> Step(const std::vector<float>& g);
  // Same rules on an aggregated Update. A sparse g stays sparse when the
  // rule keeps no state (fedavg, sgd without momentum: u = lr*g on g's
  // entries, so SparseLoCo's aggregate goes down as sparse as it came up);
  // otherwise g is densified.
  Update Step(const LayoutPlan& plan, Update g);
  bool stateless() const { return momentum_.empty(); }
  // u = g bit for bit (stateless with lr 1: SparseLoCo's sgd, lr 1, momentum 0).
  bool identity() const { return stateless() && static_cast<float>(config_.lr) == 1.0f; }

  const std::vector<float>& momentum() const { return momentum_; }
  void set_momentum(std::vector<float> m) { momentum_ = std::move(m); }

 private:
  OuterOptimizerConfig config_;
  std::vector<float> momentum_;
};

}  // namespace lowband
