// FPLD on real processes (issue 8): three sites on loopback, one of them
// with a smaller model of its own; only probe logits go up, the distilled
// student comes down to the sites of its architecture.
#include <catch2/catch.hpp>
#include <chrono>
#include <sstream>
#include <string>

#include "base/process.h"
#include "tests/fakes/temp_dir.h"
#include "tests/integration/helpers.h"

namespace lowband {
namespace {

using namespace itest;  // NOLINT
using std::chrono::milliseconds;

std::string TinyFpldCampaign(int port, int rounds) {
  std::ostringstream y;
  y << "campaign: {name: it-fpld, seed: 5, rounds: " << rounds << "}\n"
    << "model: {layers: 2, d_model: 64, heads: 4, context: 32, vocab: 256}\n"
    << "training:\n  inner_steps: 8\n  batch_size: 8\n  eval_batches: 4\n"
    << "  inner_optimizer: {name: adamw, lr: 3.0e-3, warmup_steps: 5}\n"
    << "outer_optimizer: {name: sgd, lr: 1.0, momentum: 0}\n"
    << "fpld:\n  probes: {dir: /usr/share/games/fortunes, files: [fortunes, platitudes], validation_fraction: 0.2}\n"
    << "  contexts: 16\n  positions: 8\n  bits: 4\n  clip: 8\n  student_steps: 15\n  student_lr: 3.0e-3\n"
    << "  student_batch: 8\n  exact_reference: true\n"
    << "quorum: {expected_workers: 3, min_workers: 3, round_deadline_s: 120, start_timeout_s: 60}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1
    << "\", heartbeat_interval_ms: 200, heartbeat_timeout_ms: 10000}\n"
    << "sites:\n";
  const char* files[3] = {"[computers, science]", "[literature, wisdom]", "[people, work]"};
  for (int i = 0; i < 3; ++i) {
    y << "  - site: {name: site-" << static_cast<char>('a' + i)
      << (i == 2 ? ", model: {layers: 1, d_model: 32, heads: 2}" : "") << "}\n"
      << "    data: {dir: /usr/share/games/fortunes, files: " << files[i] << ", validation_fraction: 0.1}\n";
  }
  return y.str();
}

TEST_CASE("lowband run: an FPLD campaign sends only logits up and its student learns", "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string campaign = dir.Path("campaign.yaml");
  const int rounds = 3;
  WriteFile(campaign, TinyFpldCampaign(port, rounds));
  const std::string metrics = dir.Path("metrics.jsonl");
  Subprocess run = Start({kBin + "/lowband", "run", campaign, "--run-dir", dir.path().string(), "--metrics-out", metrics},
                         dir.Path("run.out"));
  auto code = run.WaitFor(milliseconds(300000));
  INFO(ReadFile(dir.Path("run.out")));
  REQUIRE(code.has_value());
  REQUIRE(*code == 0);

  auto records = Lines(ReadFile(metrics));
  REQUIRE(records.size() == static_cast<size_t>(rounds + 1));
  const uint64_t payload = 16 * 8 * 256 * 4 / 8;  // rows x vocab x 4 bits, per site
  double first_public = 0, last_public = 0;
  for (size_t r = 1; r < records.size(); ++r) {
    const std::string& rec = records[r];
    INFO(rec);
    CHECK(Field(rec, "contributors") == "3");
    CHECK(Field(rec, "digests_match") == "true");
    CHECK(Field(rec, "evaluated") == "2");  // site-c has its own model: nothing of the student's to evaluate
    const std::string f = rec.substr(rec.find("\"fpld\":"));
    CHECK(std::stoull(Field(f, "logit_payload_bytes")) == 3 * payload);
    CHECK(std::stoull(Field(f, "logit_fp32_bytes")) == 3 * payload * 8);
    // Whole messages against fp32 logits: just under 8x at 4 bits (headers).
    const double ratio = std::stod(Field(rec, "compression_ratio"));
    CHECK(ratio > 7.0);
    CHECK(ratio < 8.0);
    const double teacher_kl = std::stod(Field(f, "teacher_kl"));
    CHECK(teacher_kl > 0);
    CHECK(teacher_kl < 0.05);
    CHECK(std::stod(Field(f, "student_kl")) > 0);
    const double pub = std::stod(Field(f, "student_public_val_loss"));
    (r == 1 ? first_public : last_public) = pub;
    // site-c uploads logits but gets no parameters down after joining.
    const std::string c = rec.substr(rec.find("\"site-c\":"));
    CHECK(Field(c, "uploaded") == "true");
    CHECK(std::stoull(Field(c, "bytes_down")) < 4096);
  }
  INFO("student public val " << first_public << " -> " << last_public);
  CHECK(last_public < first_public);
  const double first = std::stod(Field(records.front(), "val_loss"));
  const double last = std::stod(Field(records.back(), "val_loss"));
  INFO("val_loss " << first << " -> " << last);
  CHECK(last < 0.9 * first);
  CHECK(ProcessesMentioning(campaign) == 0);
}

}  // namespace
}  // namespace lowband
