#include "coordinator/outer_optimizer.h"

#include <catch2/catch.hpp>

namespace lowband {
namespace {

TEST_CASE("nesterov outer step matches the DiLoCo formula", "[unit][coordinator]") {
  OuterOptimizer opt({OuterOptimizerKind::kNesterov, 0.7, 0.9}, 2);
  std::vector<float> g1 = {1.0f, -2.0f};
  auto u1 = opt.Step(g1);
  // m = g; u = lr (g + mu m)
  CHECK(u1[0] == Approx(0.7 * (1.0 + 0.9 * 1.0)));
  CHECK(u1[1] == Approx(0.7 * (-2.0 + 0.9 * -2.0)));
  std::vector<float> g2 = {0.5f, 0.0f};
  auto u2 = opt.Step(g2);
  const double m0 = 0.9 * 1.0 + 0.5, m1 = 0.9 * -2.0 + 0.0;
  CHECK(u2[0] == Approx(0.7 * (0.5 + 0.9 * m0)));
  CHECK(u2[1] == Approx(0.7 * (0.0 + 0.9 * m1)));
}

TEST_CASE("sgd with lr 1 and no momentum returns the mean delta itself", "[unit][coordinator]") {
  OuterOptimizer opt({OuterOptimizerKind::kSgd, 1.0, 0.0}, 3);
  std::vector<float> g = {0.25f, -1.5f, 3.0f};
  CHECK(opt.Step(g) == g);
  CHECK(opt.Step(g) == g);  // stateless
}

TEST_CASE("sgd with momentum and fedavg server lr", "[unit][coordinator]") {
  OuterOptimizer sgd({OuterOptimizerKind::kSgd, 0.5, 0.5}, 1);
  CHECK(sgd.Step({2.0f})[0] == Approx(1.0));          // m = 2
  CHECK(sgd.Step({2.0f})[0] == Approx(0.5 * 3.0));    // m = 0.5*2 + 2
  OuterOptimizer fedavg({OuterOptimizerKind::kFedAvg, 0.8, 0.0}, 1);
  CHECK(fedavg.Step({2.0f})[0] == Approx(1.6));
}

}  // namespace
}  // namespace lowband
