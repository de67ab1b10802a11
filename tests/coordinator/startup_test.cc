// Startup: trimming the metrics file after a restart, and opening a run
// directory's state (new campaign, another campaign's state).
#include "coordinator/startup.h"

#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>
#include <string>

#include "tests/fakes/fake_cluster.h"
#include "tests/fakes/temp_dir.h"

namespace lowband {
namespace {

using testing::TempDir;
using testing::TinyCampaign;
using testing::TinyParams;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST_CASE("startup: TrimMetrics keeps recorded rounds and drops later lines", "[unit][coordinator]") {
  TempDir dir;
  CHECK(TrimMetrics(dir.Path("absent.jsonl"), 3).ok());
  const std::string path = dir.Write("metrics.jsonl",
                                     "{\"round\":0,\"val_loss\":5}\n"
                                     "{\"round\":1,\"val_loss\":4}\n"
                                     "\n"
                                     "{\"round\":2,\"val_loss\":3}\n"
                                     "{\"round\":3,\"val_lo");
  REQUIRE(TrimMetrics(path, 1).ok());
  CHECK(Slurp(path) == "{\"round\":0,\"val_loss\":5}\n{\"round\":1,\"val_loss\":4}\n");
  // Nothing to drop: the file is left as it is.
  REQUIRE(TrimMetrics(path, 7).ok());
  CHECK(Slurp(path) == "{\"round\":0,\"val_loss\":5}\n{\"round\":1,\"val_loss\":4}\n");
}

TEST_CASE("startup: a new run directory records the campaign and another campaign's is refused", "[unit][coordinator]") {
  TempDir dir;
  const std::string run_dir = dir.Path("run");
  {
    CoordinatorCore core(TinyCampaign(), TinyParams(), TimePoint{});
    BandwidthLedger ledger;
    OpenedState opened;
    CHECK(OpenCampaignState(TinyCampaign(), run_dir, false, core, ledger, &opened) == -1);
    CHECK(opened.store != nullptr);
    CHECK_FALSE(opened.resumed);
    CHECK_FALSE(opened.ended_exit);
  }
  CampaignConfig other = TinyCampaign();
  other.name = "other";
  CoordinatorCore core(other, TinyParams(), TimePoint{});
  BandwidthLedger ledger;
  OpenedState opened;
  CHECK(OpenCampaignState(other, run_dir, false, core, ledger, &opened) == kExitConfig);
}

}  // namespace
}  // namespace lowband
