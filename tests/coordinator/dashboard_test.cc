// The dashboard page and `lowband report`'s static page.
#include "coordinator/dashboard.h"

#include <catch2/catch.hpp>
#include <string>

#include "tests/fakes/temp_dir.h"

namespace lowband {
namespace {

using testing::TempDir;

TEST_CASE("dashboard: the page is self-contained and polls its state", "[unit][coordinator]") {
  const std::string& page = DashboardPage();
  CHECK(page.find("<canvas id=\"c_loss\"") != std::string::npos);
  CHECK(page.find("fetch(\"/api/state\"") != std::string::npos);
  CHECK(page.find("http://") == std::string::npos);
  CHECK(page.find("https://") == std::string::npos);
  CHECK(page.find("<script src") == std::string::npos);
  CHECK(page.find("<link") == std::string::npos);
}

TEST_CASE("report: the state is embedded from the run directory - bad inputs are named", "[unit][coordinator]") {
  TempDir dir;
  CHECK_THAT(ReportPage(dir.path().string()).status().ToString(), Catch::Contains("metrics.jsonl"));
  dir.Write("metrics.jsonl",
            "{\"round\":0,\"val_loss\":5.5,\"bytes_up\":10,\"bytes_down\":20}\n"
            "{\"round\":1,\"train_loss\":4.0,\"val_loss\":4.5,\"bytes_up\":10,\"bytes_down\":20,\"note\":\"</script>\"}\n");
  dir.Write("summary.txt", "campaign demo\nstatus completed\nrounds 1\n");
  auto page = ReportPage(dir.path().string());
  REQUIRE(page.ok());
  CHECK(page->find("<title>lowband report: demo</title>") != std::string::npos);
  CHECK(page->find("\"val_loss\":4.5") != std::string::npos);
  CHECK(page->find("\"phase\":\"completed\"") != std::string::npos);
  CHECK(page->find("<\\/script>") != std::string::npos);  // cannot close the page's script early
  CHECK(page->find(";render();\n") != std::string::npos);  // static: drawn once, not polled
  CHECK(page->find("\npoll();\n</script>") == std::string::npos);
  CHECK(page->find("\"fcrag\":null") != std::string::npos);

  dir.Write("fcrag.json", "{\"alpha\":0.1,\"coverage_mean\":0.93}\n");
  page = ReportPage(dir.path().string());
  REQUIRE(page.ok());
  CHECK(page->find("\"coverage_mean\":0.93") != std::string::npos);

  dir.Write("fcrag.json", "garbage");
  CHECK_THAT(ReportPage(dir.path().string()).status().ToString(), Catch::Contains("fcrag.json"));
  dir.Write("fcrag.json", "{}");
  dir.Write("metrics.jsonl", "{\"round\":0}\nnot json\n");
  CHECK_THAT(ReportPage(dir.path().string()).status().ToString(), Catch::Contains("metrics.jsonl:2"));
  dir.Write("metrics.jsonl", "{\"round\":\"x\"}\n");
  CHECK_FALSE(ReportPage(dir.path().string()).ok());
  dir.Write("metrics.jsonl", "");
  CHECK_THAT(ReportPage(dir.path().string()).status().ToString(), Catch::Contains("no round records"));
}

}  // namespace
}  // namespace lowband
