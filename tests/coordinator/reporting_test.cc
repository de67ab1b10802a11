// RoundReporter: the progress lines, the metrics JSONL record, the systemd
// status, summary.txt and the final table, for a given record and ledger.
#include "coordinator/reporting.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "tests/fakes/fake_cluster.h"

namespace lowband {
namespace {

using testing::TinyCampaign;
using testing::TinyParams;

RoundRecord SampleRecord() {
  RoundRecord r;
  r.round = 2;
  r.train_loss = 3.5;
  r.val_loss = 3.25;
  r.tokens = 640;
  r.contributors = 1;
  r.evaluated = 1;
  r.wall_s = 1.5;
  r.utilisation = 0.93;
  r.digest = 0x1913150318f8f8afULL;
  SiteRoundStats s;
  s.train_loss = 3.5;
  s.val_loss = 3.25;
  s.tokens = 640;
  s.uploaded = true;
  s.inner_steps = 2;
  s.utilisation = 0.93;
  r.sites["site-a"] = s;
  return r;
}

// Positions of `keys` in `json`, which must appear in this order.
void CheckKeyOrder(const std::string& json, const std::vector<std::string>& keys) {
  size_t at = 0;
  for (const std::string& k : keys) {
    const size_t found = json.find("\"" + k + "\":", at);
    INFO(k);
    REQUIRE(found != std::string::npos);
    at = found + 1;
  }
}

TEST_CASE("reporting: human bytes and upload kinds", "[unit][coordinator]") {
  CHECK(HumanBytes(999) == "999 B");
  CHECK(HumanBytes(1000) == "1.00 KB");
  CHECK(HumanBytes(1234567) == "1.23 MB");
  CampaignConfig c = TinyCampaign();
  CHECK(std::string(UploadKind(c)) == "delta_upload");
  c.fpld.enabled = true;
  CHECK(std::string(UploadKind(c)) == "logit_upload");
}

TEST_CASE("reporting: the metrics record keeps its fields in order with the ledger figures", "[unit][coordinator]") {
  const CampaignConfig config = TinyCampaign(1, 5);
  CoordinatorCore core(config, TinyParams(), TimePoint{});
  BandwidthLedger ledger;
  ledger.Record("site-a", Direction::kUp, 2, "delta_upload", 1000, 4000);
  ledger.Record("site-a", Direction::kUp, 2, "heartbeat", 24);
  ledger.Record("site-a", Direction::kDown, 2, "aggregate", 500, 4000);
  const RoundReporter reporter(config, core, ledger);
  const std::string line = reporter.RecordLine(SampleRecord());
  CHECK(line.rfind("{\"round\":2,\"train_loss\":3.5,\"val_loss\":3.25,\"bytes_up\":1024,\"bytes_down\":500,"
                   "\"upload_bytes\":1000,\"aggregate_bytes\":500,\"compression_ratio\":4,"
                   "\"compression_ratio_down\":8,",
                   0) == 0);
  CheckKeyOrder(line, {"round", "train_loss", "val_loss", "bytes_up", "bytes_down", "upload_bytes",
                       "aggregate_bytes", "compression_ratio", "compression_ratio_down", "codec", "down_codec",
                       "aggregate_nnz", "wall_s", "elapsed_s", "tokens", "contributors", "evaluated",
                       "late_uploads", "stragglers", "train_s", "exposed_comm_s", "utilisation", "digest", "digests_match",
                       "sites"});
  CHECK(line.find("\"digest\":\"1913150318f8f8af\",\"digests_match\":true") != std::string::npos);
  CHECK(line.find("\"sites\":{\"site-a\":{\"train_loss\":3.5,") != std::string::npos);
  CHECK(line.find("\"bytes_up\":1024,\"bytes_down\":500,\"upload_bytes\":1000}}") != std::string::npos);
  CHECK(line.find("boundaries") == std::string::npos);  // one stage
  CHECK(line.find("fpld") == std::string::npos);
  CHECK(line.back() == '}');
  CHECK(line.find('\n') == std::string::npos);

  const RoundReporter::Figures f = reporter.RoundFigures(2);
  CHECK(f.up == 1024);
  CHECK(f.down == 500);
  CHECK(f.ratio_up == Approx(4.0));
  CHECK(f.ratio_down == Approx(8.0));
}

TEST_CASE("reporting: progress and status and re-sync lines", "[unit][coordinator]") {
  const CampaignConfig config = TinyCampaign(1, 5);
  CoordinatorCore core(config, TinyParams(), TimePoint{});
  BandwidthLedger ledger;
  ledger.Record("site-a", Direction::kUp, 2, "delta_upload", 1000, 4000);
  ledger.Record("site-a", Direction::kDown, 2, "aggregate", 500, 4000);
  const RoundReporter reporter(config, core, ledger);
  const RoundRecord r = SampleRecord();
  CHECK(reporter.ProgressLines(r) ==
        "round   2/5   train 3.5000  val 3.2500  up    1.00 KB (x   4.0)  down      500 B (x  8.0 dense_fp32)    "
        "1.50 s  wait  0.00 s  util  93%  sites 1\n");
  RoundRecord r0 = r;
  r0.round = 0;
  r0.train_loss = std::numeric_limits<double>::quiet_NaN();
  CHECK(reporter.ProgressLines(r0).rfind("round   0/5   train    -    val 3.2500", 0) == 0);
  CHECK(reporter.ResumedLine(r) == "round   2/5   resumed after a restart: val 3.2500 on 1 sites, digest "
                                   "1913150318f8f8af\n");
  CHECK(reporter.StatusLine(r) == "campaign tiny: round 2/5 committed, val loss 3.2500, 1 sites");
  CHECK(reporter.ResyncLine("site-b", 3, 2500000) == "             site-b re-synced to round 3: 2.50 MB in one transfer\n");
}

TEST_CASE("reporting: summary.txt and the final table", "[unit][coordinator]") {
  const CampaignConfig config = TinyCampaign(1, 5);
  CoordinatorCore core(config, TinyParams(), TimePoint{});
  BandwidthLedger ledger;
  ledger.Record("site-a", Direction::kUp, 1, "delta_upload", 1000, 4000);
  ledger.Record("site-a", Direction::kDown, 1, "aggregate", 500, 4000);
  const RoundReporter reporter(config, core, ledger);
  const std::string summary = reporter.Summary(false, "", 12.5);
  CHECK(summary.rfind("campaign tiny\nstatus completed\ncodec ", 0) == 0);
  CHECK(summary.find("\nrounds 0\ninner_steps 2\nparameters 24\ntokens 0\ninitial_val_loss nan\n"
                     "final_val_loss nan\nbytes_up 1000\nbytes_down 500\nupload_bytes 1000\naggregate_bytes 500\n"
                     "ratio_up 4.00\nratio_down 8.00\nwall_s 12.50\nfinal_digest ") != std::string::npos);
  CHECK(summary.find("fcrag") == std::string::npos);
  CHECK(summary.back() == '\n');
  const std::string failed = reporter.Summary(true, "{\"ok\":true}", 1);
  CHECK(failed.find("status failed\n") != std::string::npos);
  CHECK(failed.find("\nfcrag {\"ok\":true}\nwall_s 1.00\n") != std::string::npos);

  const std::string table = reporter.FinalTable();
  CHECK(table.rfind("\nsite                 bytes up   bytes down      uploads   up ratio   aggregates   dn ratio  "
                    "rounds\n",
                    0) == 0);
  CHECK(table.find("total                 1.00 KB        500 B      1.00 KB       4.0x        500 B       8.0x"
                   "       0\n") != std::string::npos);
}

TEST_CASE("reporting: the dashboard keeps the newest record lines as a JSON array", "[unit][coordinator]") {
  RecordLines lines;
  CHECK(lines.JsonArray() == "[]");
  lines.Keep("{\"round\":0}");
  lines.Keep("{\"round\":1}");
  CHECK(lines.JsonArray() == "[{\"round\":0},{\"round\":1}]");
  for (size_t i = 0; i < RecordLines::kRounds; ++i) lines.Keep("{}");
  CHECK(lines.size() == RecordLines::kRounds);
  CHECK(lines.JsonArray().find("round") == std::string::npos);
}

}  // namespace
}  // namespace lowband
