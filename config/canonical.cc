// CanonicalSettings: see config/canonical.h for what is in and out.
//
// Each config struct with fields in the text is taken apart with a
// structured binding that names every one of its fields, in declaration
// order. A field added to one of them in config/config.h therefore stops
// this file from compiling until it is written here or named as left out:
// the fingerprint cannot silently fall behind the config again.
#include "config/canonical.h"

#include <cstdint>
#include <iomanip>
#include <locale>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace lowband {
namespace {

// Appends "key=value\n" lines.
class SettingsWriter {
 public:
  void Int(const std::string& key, int64_t v) { Line(key, std::to_string(v)); }
  void Uint(const std::string& key, uint64_t v) { Line(key, std::to_string(v)); }
  void Bool(const std::string& key, bool v) { Line(key, v ? "true" : "false"); }
  void Name(const std::string& key, const char* name) { Line(key, name); }
  void Double(const std::string& key, double v) { Line(key, FormatExact(v)); }
  void String(const std::string& key, const std::string& v) { Line(key, Quote(v)); }

  void Ints(const std::string& key, const std::vector<int>& items) {
    std::string value = "[";
    for (size_t i = 0; i < items.size(); ++i) value += (i > 0 ? "," : "") + std::to_string(items[i]);
    Line(key, value + "]");
  }

  void Doubles(const std::string& key, const std::vector<double>& items) {
    std::string value = "[";
    for (size_t i = 0; i < items.size(); ++i) value += (i > 0 ? "," : "") + FormatExact(items[i]);
    Line(key, value + "]");
  }

  void Strings(const std::string& key, const std::vector<std::string>& items) {
    std::string value = "[";
    for (size_t i = 0; i < items.size(); ++i) value += (i > 0 ? "," : "") + Quote(items[i]);
    Line(key, value + "]");
  }

  std::string Take() { return std::move(text_); }

 private:
  void Line(const std::string& key, const std::string& value) {
    text_ += key;
    text_ += '=';
    text_ += value;
    text_ += '\n';
  }

  // 17 significant digits read back to the same double; the classic locale
  // keeps the decimal point a '.' whatever LC_NUMERIC says (printf would
  // follow it). An ostream in the default float format prints as "%.17g".
  static std::string FormatExact(double v) {
    std::ostringstream os;
    os.imbue(std::locale::classic());
    os << std::setprecision(17) << v;
    return os.str();
  }

  // Quoted and escaped, so that no string (a path, a tensor prefix) can end
  // a line early or pass for a list separator.
  static std::string Quote(const std::string& s) {
    static const char kHex[] = "0123456789abcdef";
    std::string out = "\"";
    for (char ch : s) {
      const unsigned char c = static_cast<unsigned char>(ch);
      if (c == '\\' || c == '"') {
        out += '\\';
        out += ch;
      } else if (c < 0x20 || c == 0x7f) {
        out += "\\x";
        out += kHex[c >> 4];
        out += kHex[c & 0xf];
      } else {
        out += ch;
      }
    }
    return out + "\"";
  }

  std::string text_;
};

void WriteModel(const std::string& prefix, const ModelConfig& model, SettingsWriter* w) {
  const auto& [layers, d_model, heads, context, vocab, arch, kv_heads, ffn_hidden, rope_theta, norm_eps, init_from] =
      model;
  w->Int(prefix + "layers", layers);
  w->Int(prefix + "d_model", d_model);
  w->Int(prefix + "heads", heads);
  w->Int(prefix + "context", context);
  w->Int(prefix + "vocab", vocab);
  // GPT-2 campaigns keep the fingerprint they had before model.arch existed.
  if (arch != ModelArch::kGpt2) {
    w->Name(prefix + "arch", ModelArchName(arch));
    w->Int(prefix + "kv_heads", KvHeads(model));
    w->Int(prefix + "ffn_hidden", FfnHidden(model));
    w->Double(prefix + "rope_theta", rope_theta);
    w->Double(prefix + "norm_eps", norm_eps);
  }
  static_cast<void>(kv_heads);
  static_cast<void>(ffn_hidden);
  // The starting parameters (the campaign's recorded initial digest checks
  // the file's content on a resume).
  if (!init_from.empty()) w->String(prefix + "init_from", init_from);
}

void WriteData(const std::string& prefix, const DataConfig& data, SettingsWriter* w) {
  const auto& [dir, files, validation_fraction] = data;
  w->String(prefix + "dir", dir);
  w->Strings(prefix + "files", files);
  w->Double(prefix + "validation_fraction", validation_fraction);
}

void WriteTraining(const TrainingConfig& training, SettingsWriter* w) {
  // rounds and seed are written with the campaign section (campaign.rounds
  // is out: see config/canonical.h).
  const auto& [rounds, inner_steps, batch_size, eval_batches, eval_every, seed, inner, adaptive, overlap, precision] =
      training;
  static_cast<void>(rounds);
  static_cast<void>(seed);
  w->Int("training.inner_steps", inner_steps);
  w->Int("training.batch_size", batch_size);
  w->Int("training.eval_batches", eval_batches);
  w->Int("training.eval_every", eval_every);
  w->Bool("training.overlap", overlap);
  w->String("training.precision", PrecisionName(precision));

  const auto& [lr, beta1, beta2, eps, weight_decay, grad_clip, warmup_steps] = inner;
  const std::string io = "training.inner_optimizer.";
  w->Double(io + "lr", lr);
  w->Doubles(io + "betas", {beta1, beta2});
  w->Double(io + "eps", eps);
  w->Double(io + "weight_decay", weight_decay);
  w->Double(io + "grad_clip", grad_clip);
  w->Int(io + "warmup_steps", warmup_steps);

  const auto& [enabled, round_time_s, min_inner_steps, max_inner_steps] = adaptive;
  const std::string as = "training.adaptive_steps.";
  w->Bool(as + "enabled", enabled);
  w->Double(as + "round_time_s", round_time_s);
  w->Int(as + "min_inner_steps", min_inner_steps);
  w->Int(as + "max_inner_steps", max_inner_steps);
}

}  // namespace

std::string CanonicalSettings(const CampaignConfig& config) {
  const auto& [name, model, training, outer, codec, pipeline, parablock, personalization, fpld, fcrag, quorum,
               network, output, checkpoint, sites, source] = config;
  // Operational sections, out as a whole.
  static_cast<void>(network);
  static_cast<void>(output);
  static_cast<void>(checkpoint);
  static_cast<void>(source);

  SettingsWriter w;
  w.Int("lowband.settings", 1);

  w.String("campaign.name", name);
  w.Uint("campaign.seed", training.seed);

  WriteModel("model.", model, &w);
  WriteTraining(training, &w);

  {
    const auto& [kind, lr, momentum] = outer;
    w.Name("outer_optimizer.name", OuterOptimizerName(kind));
    w.Double("outer_optimizer.lr", lr);
    w.Double("outer_optimizer.momentum", momentum);
  }
  {
    const auto& [kind, topk, error_feedback, downlink, downlink_budget] = codec;
    w.Name("codec.name", CodecName(kind));
    w.Int("codec.topk", topk);
    w.Double("codec.error_feedback", error_feedback);
    w.Name("codec.downlink", CodecName(downlink));
    w.Double("codec.downlink_budget", downlink_budget);
  }
  {
    const auto& [expected_workers, min_workers, round_deadline_s, start_timeout_s, aggregation, weighting,
                 max_norm_ratio] = quorum;
    static_cast<void>(expected_workers);
    static_cast<void>(min_workers);
    static_cast<void>(round_deadline_s);
    static_cast<void>(start_timeout_s);
    w.Name("quorum.aggregation", AggregationName(aggregation));
    w.Name("quorum.weighting", WeightingName(weighting));
    w.Double("quorum.max_norm_ratio", max_norm_ratio);
  }
  {
    const auto& [stages, replicas, ratio, wire_dtype, split, micro_batches, schedule, link_mbit, peer_timeout_ms] =
        pipeline;
    static_cast<void>(link_mbit);
    static_cast<void>(peer_timeout_ms);
    w.Int("pipeline.stages", stages);
    w.Int("pipeline.replicas", replicas);
    w.Int("pipeline.ratio", ratio);
    w.Name("pipeline.wire_dtype", WireDtypeName(wire_dtype));
    w.Ints("pipeline.split", split);
    w.Int("pipeline.micro_batches", micro_batches);
    w.String("pipeline.schedule", schedule);
  }
  {
    const auto& [blocks, split, random, per_worker] = parablock;
    w.Int("parablock.blocks", blocks);
    w.Ints("parablock.split", split);
    w.Name("parablock.schedule", random ? "random" : "cyclic");
    w.Name("parablock.assignment", per_worker ? "per_worker" : "shared");
  }
  {
    const auto& [tensors, clusters] = personalization;
    w.Strings("personalization.tensors", tensors);
    w.Int("personalization.clusters.count", static_cast<int64_t>(clusters.size()));
    for (size_t i = 0; i < clusters.size(); ++i) {
      const std::string key = "personalization.clusters[" + std::to_string(i) + "].";
      w.String(key + "name", clusters[i].first);
      w.Strings(key + "sites", clusters[i].second);
    }
  }
  {
    const auto& [enabled, probes, contexts, positions, bits, clip, topk, student_steps, student_lr, student_batch,
                 student_eval_batches, exact_reference] = fpld;
    w.Bool("fpld.enabled", enabled);
    WriteData("fpld.probes.", probes, &w);
    w.Int("fpld.contexts", contexts);
    w.Int("fpld.positions", positions);
    w.Int("fpld.bits", bits);
    w.Double("fpld.clip", clip);
    w.Int("fpld.topk", topk);
    w.Int("fpld.student_steps", student_steps);
    w.Double("fpld.student_lr", student_lr);
    w.Int("fpld.student_batch", student_batch);
    w.Int("fpld.student_eval_batches", student_eval_batches);
    w.Bool("fpld.exact_reference", exact_reference);
  }
  {
    const auto& [enabled, labels, retrieve_k, smoothing, score_bits, score_max, summary_bits, alpha,
                 calibration_fraction, trials, min_chars, max_chars, serve] = fcrag;
    static_cast<void>(serve);
    w.Bool("fcrag.enabled", enabled);
    w.Strings("fcrag.labels", labels);
    w.Int("fcrag.retrieve_k", retrieve_k);
    w.Double("fcrag.smoothing", smoothing);
    w.Int("fcrag.score_bits", score_bits);
    w.Double("fcrag.score_max", score_max);
    w.Int("fcrag.summary_bits", summary_bits);
    w.Double("fcrag.alpha", alpha);
    w.Double("fcrag.calibration_fraction", calibration_fraction);
    w.Int("fcrag.trials", trials);
    w.Int("fcrag.min_chars", min_chars);
    w.Int("fcrag.max_chars", max_chars);
  }

  w.Int("sites.count", static_cast<int64_t>(sites.size()));
  for (size_t i = 0; i < sites.size(); ++i) {
    const auto& [site_name, site_model, coordinator, device, threads, metrics, key, server_key, peer, slowdown,
                 link_mbit, ranks, rendezvous, local_ranks, rank_timeout_s, data, site_source] = sites[i];
    // How a site is reached, on what hardware and how fast: not what it
    // computes.
    static_cast<void>(coordinator);
    static_cast<void>(device);
    static_cast<void>(threads);
    static_cast<void>(metrics);
    static_cast<void>(key);
    static_cast<void>(server_key);
    static_cast<void>(peer);
    static_cast<void>(slowdown);
    static_cast<void>(link_mbit);
    static_cast<void>(rendezvous);
    static_cast<void>(local_ranks);
    static_cast<void>(rank_timeout_s);
    static_cast<void>(site_source);
    const std::string prefix = "sites[" + std::to_string(i) + "].";
    w.String(prefix + "site.name", site_name);
    // Ranks run data-parallel inner steps: each adds a batch to every step.
    w.Int(prefix + "site.ranks", ranks);
    WriteModel(prefix + "site.model.", site_model, &w);
    WriteData(prefix + "data.", data, &w);
  }
  return w.Take();
}

}  // namespace lowband
