// Hugging Face directories in and out of campaigns: `lowband export` writes
// a finished campaign's model (config.json + model.safetensors), a second
// campaign starts from it with model.init_from (its round 0 holds exactly the
// exported parameters, which every site pulls once), and a directory that
// describes another model is refused before anything starts.
#include <chrono>
#include <filesystem>
#include <sstream>
#include <string>

#include <catch2/catch.hpp>

#include "tests/integration/helpers.h"

namespace lowband {
namespace {

using namespace itest;  // NOLINT
using std::chrono::milliseconds;

std::string HfCampaign(int port, uint64_t seed, const std::string& extra_model) {
  std::ostringstream y;
  y << "campaign: {name: hf-it, seed: " << seed << ", rounds: 2}\n"
    << "model: {arch: llama, layers: 2, d_model: 64, heads: 4, kv_heads: 2, context: 32, vocab: 256" << extra_model
    << "}\n"
    << "training:\n  inner_steps: 6\n  batch_size: 8\n  eval_batches: 2\n"
    << "  inner_optimizer: {name: adamw, lr: 3.0e-3, warmup_steps: 2}\n"
    << "outer_optimizer: {name: nesterov, lr: 0.7, momentum: 0.9}\n"
    << "codec: {name: sparseloco, topk: 64}\n"
    << "quorum: {expected_workers: 3, min_workers: 3, round_deadline_s: 120, start_timeout_s: 60}\n"
    << "network: {bind: \"tcp://127.0.0.1:" << port << "\", control: \"tcp://127.0.0.1:" << port + 1
    << "\", heartbeat_interval_ms: 200, heartbeat_timeout_ms: 5000}\n"
    << ThreeSitesYaml();
  return y.str();
}

int RunToEnd(const std::vector<std::string>& argv, const std::string& out) {
  Subprocess p = Start(argv, out);
  auto code = p.WaitFor(milliseconds(240000));
  INFO(ReadFile(out));
  REQUIRE(code.has_value());
  return *code;
}

// summary.txt holds "key value" lines.
std::string Summary(const std::string& run_dir, const std::string& key) {
  std::istringstream in(ReadFile(run_dir + "/summary.txt"));
  for (std::string k, v; in >> k >> v;) {
    if (k == key) return v;
  }
  return "";
}

}  // namespace

TEST_CASE("hf: a llama campaign exports to Hugging Face's layout and a second campaign starts from it",
          "[integration]") {
  TempDir dir;
  const int port = FreePortBase();
  const std::string first = dir.Write("first.yaml", HfCampaign(port, 7, ""));
  REQUIRE(RunToEnd({kBin + "/lowband", "run", first, "--run-dir", dir.Path("run1")}, dir.Path("run1.out")) == 0);
  const std::string digest = Summary(dir.Path("run1"), "final_digest");
  REQUIRE(digest.size() == 16);

  REQUIRE(RunToEnd({kBin + "/lowband", "export", dir.Path("run1"), "--out", dir.Path("hf")}, dir.Path("export.out")) ==
          0);
  const std::string config = ReadFile(dir.Path("hf/config.json"));
  CHECK(config.find("\"LlamaForCausalLM\"") != std::string::npos);
  CHECK(config.find("\"num_key_value_heads\": 2") != std::string::npos);
  CHECK(std::filesystem::file_size(dir.Path("hf/model.safetensors")) > 4 * 100000);
  CHECK(ReadFile(dir.Path("export.out")).find("llama") != std::string::npos);

  // Use it: the run directory and its export are the same model (the same
  // loss to the last digit); sampling is deterministic for a seed.
  auto eval = [&](const std::string& model, const std::string& out) {
    REQUIRE(RunToEnd({kBin + "/lowband", "eval", model, "--data", "/usr/share/games/fortunes", "--files", "science"},
                     dir.Path(out)) == 0);
    const std::string text = ReadFile(dir.Path(out));
    const auto at = text.find("loss ");
    REQUIRE(at != std::string::npos);
    CHECK(text.find("bits per byte") != std::string::npos);
    return text.substr(at, text.find(',', at) - at);
  };
  CHECK(eval(dir.Path("run1"), "eval1.out") == eval(dir.Path("hf"), "eval2.out"));
  auto generate = [&](const std::string& out, const std::string& seed) {
    REQUIRE(RunToEnd({kBin + "/lowband", "generate", dir.Path("hf"), "--prompt", "The ", "-n", "24", "--seed", seed},
                     dir.Path(out)) == 0);
    return ReadFile(dir.Path(out));
  };
  const std::string a = generate("gen1.out", "3"), b = generate("gen2.out", "3");
  INFO(a);
  CHECK(a.rfind("The ", 0) == 0);
  CHECK(a.find("24 tokens in") != std::string::npos);
  CHECK(a.substr(0, 28) == b.substr(0, 28));
  CHECK(RunToEnd({kBin + "/lowband", "generate", dir.Path("nope")}, dir.Path("gen3.out")) == 66);

  // Another seed, the exported parameters: round 0 is the first campaign's end.
  const std::string second =
      dir.Write("second.yaml", HfCampaign(port + 2, 99, ", init_from: \"" + dir.Path("hf") + "\""));
  REQUIRE(RunToEnd({kBin + "/lowband", "run", second, "--run-dir", dir.Path("run2")}, dir.Path("run2.out")) == 0);
  const auto rounds = Lines(ReadFile(dir.Path("run2/metrics.jsonl")));
  REQUIRE(rounds.size() == 3);
  CHECK(Field(rounds[0], "round") == "0");
  CHECK(Field(rounds[0], "digest") == digest);
  for (const std::string& r : rounds) CHECK(Field(r, "digests_match") == "true");
  const std::string log = ReadFile(dir.Path("run2/coordinator.log"));
  CHECK(log.find("initial parameters from a Hugging Face directory") != std::string::npos);

  // A directory of another model: exit 78, each differing key named.
  const std::string wrong = dir.Write("wrong.yaml", HfCampaign(port + 4, 7, ", d_model: 128, init_from: \"" +
                                                                                dir.Path("hf") + "\""));
  // (d_model given twice would be a duplicate key: rewrite it.)
  std::string text = ReadFile(wrong);
  text.replace(text.find("d_model: 64, "), std::string("d_model: 64, ").size(), "");
  WriteFile(wrong, text);
  CHECK(RunToEnd({kBin + "/lowband-coordinator", "--campaign", wrong}, dir.Path("wrong.out")) == 78);
  CHECK(ReadFile(dir.Path("wrong.out")).find("model.d_model: campaign 128, file 64") != std::string::npos);

  // Export of nothing: 66.
  CHECK(RunToEnd({kBin + "/lowband", "export", dir.Path("nope"), "--out", dir.Path("x")}, dir.Path("nope.out")) == 66);
}

}  // namespace lowband
