// The operator's JSON views of the coordinator core, rendered from known states.
#include "coordinator/core_json.h"

#include <catch2/catch.hpp>

namespace lowband {
namespace {

TEST_CASE("core json: status of a known state, with and without a written record", "[unit][coordinator]") {
  StatusSnapshot s;
  s.campaign = "tiny";
  s.phase = "training";
  s.committed_round = 2;
  s.rounds = 5;
  s.live_workers = 3;
  s.expected_workers = 3;
  s.paused = true;
  s.uploads = 1;
  s.digest = 0x0123456789abcdefull;
  s.pipeline_stages = 1;
  s.parameters = 21;
  s.rejected_messages = 4;
  CHECK(StatusJson(s) ==
        "{\"campaign\":\"tiny\",\"phase\":\"training\",\"committed_round\":2,\"rounds\":5,\"live_workers\":3,"
        "\"expected_workers\":3,\"paused\":true,\"uploads\":1,\"digest\":\"0123456789abcdef\","
        "\"pipeline_stages\":1,\"parameters\":21,\"rejected_messages\":4}");
  RoundRecord last;
  last.round = 2;
  last.train_loss = 1.5;
  last.val_loss = 2.25;
  s.last = &last;
  const std::string with = StatusJson(s);
  CHECK(with.find("\"rejected_messages\":4,\"last_round\":2,\"train_loss\":1.5,\"val_loss\":2.25}") !=
        std::string::npos);
}

TEST_CASE("core json: the status line says paused only while the campaign runs", "[unit][coordinator]") {
  StatusSnapshot s;
  s.campaign = "tiny";
  s.phase = "held";
  s.committed_round = 3;
  s.rounds = 4;
  s.live_workers = 2;
  s.expected_workers = 3;
  s.paused = true;
  CHECK(StatusLine(s, false) == "campaign tiny: held (paused), round 3/4, 2/3 workers live");
  s.phase = "finished";
  CHECK(StatusLine(s, true) == "campaign tiny: finished, round 3/4, 2/3 workers live");
}

TEST_CASE("core json: one object per worker, in the order given", "[unit][coordinator]") {
  const TimePoint now{std::chrono::seconds(100)};
  WorkerInfo a;
  a.site = "site-a";
  a.hello.device = "cpu";
  a.hello.ranks = 2;
  a.synced_round = 3;
  a.last_seen = now - std::chrono::milliseconds(1500);
  a.last_step_time_ms = 12.5;
  a.last_val_loss = 0.75;
  a.rejected = 1;
  WorkerInfo b = a;
  b.site = "site-b";
  b.state = WorkerState::kEvicted;
  CHECK(WorkersJson({}, now) == "[]");
  const std::string json = WorkersJson({WorkerRow{&a, 1, 7, true}, WorkerRow{&b, -1, 0, false}}, now);
  CHECK(json ==
        "[{\"site\":\"site-a\",\"state\":\"joined\",\"stage\":1,\"inner_steps\":7,\"device\":\"cpu\",\"ranks\":2,"
        "\"synced_round\":3,\"last_seen_s\":1.5,\"step_time_ms\":12.5,\"val_loss\":0.75,\"uploaded\":true,"
        "\"rejected\":1},"
        "{\"site\":\"site-b\",\"state\":\"evicted\",\"stage\":-1,\"inner_steps\":0,\"device\":\"cpu\",\"ranks\":2,"
        "\"synced_round\":3,\"last_seen_s\":1.5,\"step_time_ms\":12.5,\"val_loss\":0.75,\"uploaded\":false,"
        "\"rejected\":1}]");
}

}  // namespace
}  // namespace lowband
