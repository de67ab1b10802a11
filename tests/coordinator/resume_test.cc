// Resume: the checks a checkpoint passes and the replay of a logged round.
#include "coordinator/resume.h"

#include <catch2/catch.hpp>

#include "tests/fakes/fake_cluster.h"

namespace lowband {
namespace {

OuterOptimizerConfig Nesterov() { return OuterOptimizerConfig{}; }  // nesterov, momentum 0.9

TEST_CASE("resume: a checkpoint must have the campaign's layout and the optimizer's momentum",
          "[unit][coordinator]") {
  const ParamSet campaign = testing::TinyParams();
  const OuterOptimizer outer(Nesterov(), campaign.values.size());
  const DownlinkEncoder down(CodecKind::kSparseFp32, campaign.values.size());
  CHECK(CheckRestore(campaign, outer, down, 0, campaign, {}, {}).ok());
  CHECK(CheckRestore(campaign, outer, down, 3, campaign, std::vector<float>(24, 0.f), {}).ok());
  const Status no_momentum = CheckRestore(campaign, outer, down, 3, campaign, {}, {});
  CHECK(no_momentum.code() == StatusCode::kInvalidArgument);
  CHECK(no_momentum.message() == "restore: the checkpoint of round 3 lacks the outer optimizer's momentum");
  const Status short_momentum = CheckRestore(campaign, outer, down, 3, campaign, std::vector<float>(5, 0.f), {});
  CHECK(short_momentum.message() ==
        "restore: the checkpoint holds 5 outer-optimizer values, the campaign's optimizer keeps 24");
  ParamSet other = campaign;
  other.layout.tensors[1].name = "c";
  CHECK(CheckRestore(campaign, outer, down, 0, other, {}, {}).message().find("is not the campaign model's") !=
        std::string::npos);
}

TEST_CASE("resume: replaying a logged gradient applies the outer step, and a bad log changes nothing",
          "[unit][coordinator]") {
  ParamSet params = testing::TinyParams();
  const LayoutPlan plan = PlanLayout(params.layout, 0);
  OuterOptimizer outer(Nesterov(), params.values.size());
  DownlinkEncoder down(CodecKind::kSparseFp32, params.values.size());
  const std::vector<float> g(24, 0.5f);
  auto enc = PackDenseFp32(params.layout, g);
  REQUIRE(enc.ok());
  const ParamSet before = params;
  Encoded bad = *enc;
  bad.header.codec = CodecKind::kSparseLoCo;
  const Status refused = ReplayGradient(2, bad, plan, &outer, &down, &params);
  CHECK(refused.code() == StatusCode::kCorruption);
  CHECK(refused.message().find("replay: round 2's logged gradient uses codec") == 0);
  CHECK(params.values == before.values);
  Encoded cut = *enc;
  cut.bulk.resize(8);
  CHECK(ReplayGradient(2, cut, plan, &outer, &down, &params).code() == StatusCode::kCorruption);
  CHECK(params.values == before.values);
  REQUIRE(ReplayGradient(2, *enc, plan, &outer, &down, &params).ok());
  CHECK(params.Digest() != before.Digest());
}

}  // namespace
}  // namespace lowband
