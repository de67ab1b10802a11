// H_i assignment from step times (coordinator/adaptive_steps.h).
#include "coordinator/adaptive_steps.h"

#include <catch2/catch.hpp>
#include <cmath>

namespace lowband {
namespace {

TrainingConfig Adaptive(int inner_steps, double round_time_s = 0, int min_steps = 1, int max_steps = 0) {
  TrainingConfig t;
  t.inner_steps = inner_steps;
  t.adaptive.enabled = true;
  t.adaptive.round_time_s = round_time_s;
  t.adaptive.min_inner_steps = min_steps;
  t.adaptive.max_inner_steps = max_steps;
  return t;
}

TEST_CASE("adaptive steps: disabled, every site runs inner_steps", "[unit][coordinator]") {
  TrainingConfig t;
  t.inner_steps = 7;
  const auto h = AssignInnerSteps(t, {{"a", {10, 1}}, {"b", {500, 50}}});
  CHECK(h.at("a") == 7);
  CHECK(h.at("b") == 7);
  CHECK(MaxInnerSteps(t) == 7);
}

TEST_CASE("adaptive steps: the fastest site runs H, slower ones in proportion", "[unit][coordinator]") {
  const TrainingConfig t = Adaptive(8);
  // Measured campaign step times: 10, 20, 25 and 90 ms.
  const auto h = AssignInnerSteps(t, {{"a", {10, 1}}, {"b", {20, 1}}, {"c", {25, 1}}, {"d", {90, 1}}});
  CHECK(h.at("a") == 8);  // 80 ms of work
  CHECK(h.at("b") == 4);  // 80 / 20
  CHECK(h.at("c") == 3);  // floor(80 / 25)
  CHECK(h.at("d") == 1);  // floor(80 / 90) = 0, raised to min_inner_steps
}

TEST_CASE("adaptive steps: before any upload the reference figures decide", "[unit][coordinator]") {
  const TrainingConfig t = Adaptive(8);
  const auto h = AssignInnerSteps(t, {{"a", {0, 2}}, {"b", {0, 2}}, {"c", {0, 8}}});
  CHECK(h.at("a") == 8);
  CHECK(h.at("b") == 8);
  CHECK(h.at("c") == 2);
  // Nothing known at all: inner_steps.
  const auto none = AssignInnerSteps(t, {{"a", {0, 0}}, {"b", {0, 0}}});
  CHECK(none.at("a") == 8);
  CHECK(none.at("b") == 8);
}

TEST_CASE("adaptive steps: a newcomer's reference is converted by the others' ratio", "[unit][coordinator]") {
  const TrainingConfig t = Adaptive(8);
  // a and b measured 10x their reference figure; c only has a reference of
  // 4 ms, i.e. about 40 ms per campaign step: 80 / 40 = 2 steps.
  const auto h = AssignInnerSteps(t, {{"a", {10, 1}}, {"b", {20, 2}}, {"c", {0, 4}}});
  CHECK(h.at("a") == 8);
  CHECK(h.at("b") == 4);
  CHECK(h.at("c") == 2);
  // No ratio known (nobody has both): the newcomer runs inner_steps.
  const auto u = AssignInnerSteps(t, {{"a", {10, 0}}, {"c", {0, 4}}});
  CHECK(u.at("c") == 8);
}

TEST_CASE("adaptive steps: an explicit round time and the clamps", "[unit][coordinator]") {
  // 0.5 s per round, between 2 and 20 steps.
  const TrainingConfig t = Adaptive(8, 0.5, 2, 20);
  const auto h = AssignInnerSteps(t, {{"fast", {10, 1}}, {"mid", {100, 1}}, {"slow", {1000, 1}}});
  CHECK(h.at("fast") == 20);  // 50, capped at max_inner_steps
  CHECK(h.at("mid") == 5);
  CHECK(h.at("slow") == 2);   // 0.5, raised to min_inner_steps
  CHECK(MaxInnerSteps(t) == 20);
  // An exact multiple is not lost to rounding: 0.2 s / 25 ms = 8.
  const auto exact = AssignInnerSteps(Adaptive(100, 0.2, 1, 100), {{"a", {25, 1}}});
  CHECK(exact.at("a") == 8);
}

TEST_CASE("adaptive steps: step time smoothing ignores bad reports", "[unit][coordinator]") {
  CHECK(SmoothStepTime(0, 40) == 40);
  CHECK(SmoothStepTime(40, 20) == 30);
  CHECK(SmoothStepTime(40, 0) == 40);
  CHECK(SmoothStepTime(40, -3) == 40);
  CHECK(SmoothStepTime(40, std::nan("")) == 40);
  CHECK(SmoothStepTime(40, INFINITY) == 40);
}

}  // namespace
}  // namespace lowband
