// Operator commands as the coordinator core parses them.
#include "coordinator/control_commands.h"

#include <catch2/catch.hpp>

namespace lowband {
namespace {

using Verb = ControlCommand::Verb;

TEST_CASE("control commands: words come from the command and the args alike", "[unit][coordinator]") {
  CHECK(ParseControl({"status", {}}).verb == Verb::kStatus);
  CHECK(ParseControl({"workers", {}}).verb == Verb::kWorkers);
  CHECK(ParseControl({"round pause", {}}).verb == Verb::kRoundPause);
  CHECK(ParseControl({"round", {"pause"}}).verb == Verb::kRoundPause);
  CHECK(ParseControl({"round  resume", {}}).verb == Verb::kRoundResume);
  CHECK(ParseControl({"round", {"close"}}).verb == Verb::kRoundClose);
  CHECK(ParseControl({"campaign abort", {}}).verb == Verb::kAbort);
  const ControlCommand evict = ParseControl({"worker evict", {"site-b"}});
  CHECK(evict.verb == Verb::kEvict);
  CHECK(evict.site == "site-b");
  CHECK(ParseControl({"calibrate", {"--alpha", "0.2"}}).verb == Verb::kFcrag);
  const ControlCommand predict = ParseControl({"predict some text", {}});
  CHECK(predict.verb == Verb::kFcrag);
  CHECK(predict.words == std::vector<std::string>{"predict", "some", "text"});
}

TEST_CASE("control commands: wrong arity or unknown words are unknown commands", "[unit][coordinator]") {
  CHECK(ParseControl({"status now", {}}).verb == Verb::kUnknown);
  CHECK(ParseControl({"round", {}}).verb == Verb::kUnknown);
  CHECK(ParseControl({"round stop", {}}).verb == Verb::kUnknown);
  CHECK(ParseControl({"worker evict", {}}).verb == Verb::kUnknown);
  CHECK(ParseControl({"", {}}).verb == Verb::kUnknown);
  CHECK(UnknownControlMessage({"explode", {"x"}}) ==
        "unknown command 'explode ...' (allowed: status, workers, round pause|resume|close, campaign abort, "
        "worker evict SITE, checkpoint, calibrate, predict)");
}

TEST_CASE("control commands: calibrate options and predict text", "[unit][coordinator]") {
  FcragPlan plan;
  CHECK(ParseFcragCommand({"calibrate", "--alpha", "0.2", "--score-bits", "4", "--summary-bits", "3", "--trials", "7"},
                          &plan) == "");
  CHECK(plan.alpha == 0.2);
  CHECK(plan.score_bits == 4);
  CHECK(plan.summary_bits == 3);
  CHECK(plan.trials == 7);
  FcragPlan bad;
  CHECK(ParseFcragCommand({"calibrate", "--alpha", "1"}, &bad) ==
        "calibrate: bad option '--alpha 1' (allowed: --alpha in (0,1), --score-bits 0..16, --summary-bits 1..15, "
        "--trials 1..10000)");
  CHECK(ParseFcragCommand({"calibrate", "--trials", "2.5"}, &bad).find("bad option '--trials 2.5'") != std::string::npos);
  CHECK(ParseFcragCommand({"calibrate", "--bogus"}, &bad).find("bad option '--bogus'") != std::string::npos);
  FcragPlan p;
  CHECK(ParseFcragCommand({"predict", "hello", "world"}, &p) == "");
  CHECK(p.predict);
  CHECK(p.text == "hello world");
  FcragPlan empty;
  CHECK(ParseFcragCommand({"predict"}, &empty) == "predict needs a text of 1..65536 bytes");
}

}  // namespace
}  // namespace lowband
