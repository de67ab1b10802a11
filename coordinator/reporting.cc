#include "coordinator/reporting.h"

#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <limits>
#include <map>

#include "base/hash.h"
#include "base/json.h"

namespace lowband {
namespace {

// printf into a string: the progress and summary formats stay the printf
// formats they were, so the text is the same byte for byte.
__attribute__((format(printf, 2, 3))) void Appendf(std::string* out, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list again;
  va_copy(again, args);
  const int n = std::vsnprintf(nullptr, 0, fmt, args);
  va_end(args);
  if (n > 0) {
    const size_t at = out->size();
    out->resize(at + static_cast<size_t>(n) + 1);
    std::vsnprintf(out->data() + at, static_cast<size_t>(n) + 1, fmt, again);
    out->resize(at + static_cast<size_t>(n));
  }
  va_end(again);
}

// A loss as "2.4484", or "   -  " when unknown (round 0's training loss,
// rounds training.eval_every skips).
std::string Loss(double loss) {
  if (!std::isfinite(loss)) return "   -  ";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4f", loss);
  return buf;
}

// A fraction as " 93%", or "  - " when unknown.
std::string Percent(double fraction) {
  if (!std::isfinite(fraction)) return "  - ";
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%3.0f%%", 100.0 * fraction);
  return buf;
}

}  // namespace

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) {
    b /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

const char* UploadKind(const CampaignConfig& config) {
  return config.fpld.enabled ? "logit_upload" : "delta_upload";
}

// Compression of one message kind against dense fp32: the fp32 payload bytes
// the same messages would carry (4 bytes per parameter they cover: a
// pipeline stage's slice, or the whole model) over the bytes they took
// (header frames included). 0 when none were sent.
double DenseBytes(const CampaignConfig& config, const CoordinatorCore& core, const std::string& site, uint32_t round,
                  const std::string& kind, uint64_t messages) {
  // FPLD: against the same probe logits as fp32.
  const int64_t covered = kind == "logit_upload" ? static_cast<int64_t>(config.fpld.contexts) *
                                                       config.fpld.positions * config.model.vocab
                          : kind == "delta_upload" ? core.UploadParamsOf(site, round)
                                                   : core.ParamsOf(site);
  return static_cast<double>(messages) * static_cast<double>(covered) * 4.0;
}

void RecordLines::Keep(std::string line) {
  lines_.push_back(std::move(line));
  if (lines_.size() > kRounds) lines_.pop_front();
}

std::string RecordLines::JsonArray() const {
  std::string records = "[";
  for (const std::string& line : lines_) {
    if (records.size() > 1) records += ',';
    records += line;
  }
  records += "]";
  return records;
}

RoundReporter::Figures RoundReporter::RoundFigures(uint32_t round) const {
  Figures f;
  f.up = ledger_.RoundTotal(round, Direction::kUp);
  f.down = ledger_.RoundTotal(round, Direction::kDown);
  f.uploads = ledger_.KindTotal(Direction::kUp, UploadKind(config_), round);
  f.aggregates = ledger_.KindTotal(Direction::kDown, "aggregate", round);
  f.ratio_up = ledger_.Ratio(Direction::kUp, UploadKind(config_), round);
  f.ratio_down = ledger_.Ratio(Direction::kDown, "aggregate", round);
  return f;
}

RoundReporter::BoundaryFigures RoundReporter::Boundary(int b, int64_t round) const {
  auto kind = [](int from, int to, const char* what) {
    return "stage" + std::to_string(from) + "->" + std::to_string(to) + "." + what;
  };
  BoundaryFigures f;
  f.forward = ledger_.KindTotal(Direction::kPeer, kind(b, b + 1, "forward"), round);
  f.backward = ledger_.KindTotal(Direction::kPeer, kind(b + 1, b, "backward"), round);
  f.eval = ledger_.KindTotal(Direction::kPeer, kind(b, b + 1, "eval"), round);
  const int last = config_.pipeline.stages - 1;
  if (b + 1 == last) f.labels = ledger_.KindTotal(Direction::kPeer, kind(0, last, "labels"), round);
  // Without a bottleneck every micro-batch would carry its activations at
  // full width in fp32: tokens x d_model x 4 bytes each way.
  const double mb_tokens = static_cast<double>(config_.training.batch_size) / config_.pipeline.micro_batches *
                           config_.model.context;
  const double dense = static_cast<double>(f.forward.messages + f.backward.messages) * mb_tokens *
                       config_.model.d_model * 4.0;
  const uint64_t bytes = f.forward.bytes + f.backward.bytes;
  f.ratio = bytes > 0 ? dense / static_cast<double>(bytes) : 0.0;
  return f;
}

std::string RoundReporter::BoundariesJson(int64_t round) const {
  std::string json = "[";
  for (int b = 0; b + 1 < config_.pipeline.stages; ++b) {
    const BoundaryFigures f = Boundary(b, round);
    if (json.size() > 1) json += ',';
    JsonObject o;
    o.Add("boundary", b)
        .Add("forward_bytes", f.forward.bytes)
        .Add("forward_messages", f.forward.messages)
        .Add("backward_bytes", f.backward.bytes)
        .Add("backward_messages", f.backward.messages)
        .Add("labels_bytes", f.labels.bytes)
        .Add("eval_bytes", f.eval.bytes)
        .Add("compression_ratio", f.ratio);
    json += o.str();
  }
  return json + "]";
}

std::string RoundReporter::ResumedLine(const RoundRecord& r) const {
  std::string out;
  Appendf(&out, "round %3u/%-3d resumed after a restart: val %.4f on %d sites, digest %s%s\n", r.round,
          config_.training.rounds, r.val_loss, r.evaluated, DigestHex(r.digest).c_str(),
          r.digest_mismatches ? "  DIGEST MISMATCH" : "");
  return out;
}

std::string RoundReporter::ResyncLine(const std::string& site, uint32_t round, uint64_t bytes) const {
  std::string out;
  Appendf(&out, "             %s re-synced to round %u: %s in one transfer\n", site.c_str(), round,
          HumanBytes(static_cast<double>(bytes)).c_str());
  return out;
}

std::string RoundReporter::ProgressLines(const RoundRecord& r) const {
  const Figures fig = RoundFigures(r.round);
  std::string out;
  Appendf(&out,
          "round %3u/%-3d train %s  val %s  up %10s (x%6.1f)  down %10s (x%5.1f %s)  %6.2f s  wait %5.2f s  "
          "util %s  sites %d%s\n",
          r.round, config_.training.rounds, Loss(r.train_loss).c_str(), Loss(r.val_loss).c_str(),
          HumanBytes(fig.up).c_str(), fig.ratio_up,
          HumanBytes(fig.down).c_str(), fig.ratio_down, r.round == 0 ? "-" : CodecName(r.down_codec), r.wall_s,
          r.exposed_comm_s, Percent(r.utilisation).c_str(), r.evaluated, r.digest_mismatches ? "  DIGEST MISMATCH" : "");
  if (config_.training.adaptive.enabled && r.round > 0) {
    // H_i per site and its step time; stragglers whose previous upload came too late.
    std::string line;
    for (const auto& [name, s] : r.sites) {
      if (s.inner_steps <= 0) continue;
      char item[128];
      std::snprintf(item, sizeof(item), "%s%s H %d (%.0f ms/step%s)", line.empty() ? "" : ", ", name.c_str(),
                    s.inner_steps, s.step_time_ms, s.uploaded ? "" : ", no upload");
      line += item;
    }
    Appendf(&out, "             steps: %s%s\n", line.c_str(),
            r.stragglers ? ("; stragglers left out: " + std::to_string(r.stragglers)).c_str() : "");
  }
  if (config_.fpld.enabled && r.round > 0) {
    Appendf(&out, "             fpld: logits %s up (x%.1f vs fp32)  student: public val %.4f  distil KL %.4f%s\n",
            HumanBytes(static_cast<double>(r.fpld.payload_bytes)).c_str(),
            r.fpld.payload_bytes ? static_cast<double>(r.fpld.fp32_bytes) / r.fpld.payload_bytes : 0.0,
            r.fpld.public_val_loss, r.fpld.distill_loss,
            std::isfinite(r.fpld.teacher_kl)
                ? ("  KL to the unquantized teacher: teacher " + JsonNumber(r.fpld.teacher_kl) + ", student " +
                   JsonNumber(r.fpld.student_kl))
                      .c_str()
                : "");
  }
  if (!r.cluster_val_loss.empty()) {
    std::string line;
    for (const auto& [name, loss] : r.cluster_val_loss) {
      char item[96];
      std::snprintf(item, sizeof(item), "%s%s %.4f", line.empty() ? "" : ", ", name.c_str(), loss);
      line += item;
    }
    Appendf(&out, "             val by cluster: %s\n", line.c_str());
  }
  for (int b = 0; b + 1 < config_.pipeline.stages && r.round > 0; ++b) {
    const BoundaryFigures f = Boundary(b, r.round);
    Appendf(&out, "             boundary %d|%d: forward %10s  backward %10s  (x%.1f vs fp32 at d_model %d)\n", b,
            b + 1, HumanBytes(f.forward.bytes).c_str(), HumanBytes(f.backward.bytes).c_str(), f.ratio,
            config_.model.d_model);
  }
  return out;
}

std::string RoundReporter::RecordLine(const RoundRecord& r) const {
  const Figures fig = RoundFigures(r.round);
  std::string sites = "{";
  for (const auto& [name, s] : r.sites) {
    if (sites.size() > 1) sites += ',';
    JsonObject o;
    o.Add("train_loss", s.train_loss)
        .Add("val_loss", s.val_loss)
        .Add("tokens", s.tokens)
        .Add("uploaded", s.uploaded)
        .Add("digest_ok", s.digest_ok)
        .Add("inner_steps", s.inner_steps)
        .Add("block", s.block)
        .Add("step_time_ms", s.step_time_ms)
        .Add("straggler", s.late)
        .Add("wait_s", s.wait_s)
        .Add("utilisation", s.utilisation)
        .Add("bytes_up", ledger_.SiteRoundTotal(name, r.round, Direction::kUp))
        .Add("bytes_down", ledger_.SiteRoundTotal(name, r.round, Direction::kDown))
        .Add("upload_bytes", ledger_.KindTotal(Direction::kUp, UploadKind(config_), r.round, name).bytes);
    sites += JsonString(name) + ":" + o.str();
  }
  sites += "}";
  JsonObject o;
  o.Add("round", r.round)
      .Add("train_loss", r.train_loss)
      .Add("val_loss", r.val_loss)
      .Add("bytes_up", fig.up)
      .Add("bytes_down", fig.down)
      .Add("upload_bytes", fig.uploads.bytes)
      .Add("aggregate_bytes", fig.aggregates.bytes)
      .Add("compression_ratio", fig.ratio_up)
      .Add("compression_ratio_down", fig.ratio_down)
      .Add("codec", CodecName(config_.codec.kind))
      .Add("down_codec", CodecName(r.down_codec))
      .Add("aggregate_nnz", r.aggregate_nnz)
      .Add("wall_s", r.wall_s)
      .Add("elapsed_s", r.elapsed_s)
      .Add("tokens", r.tokens)
      .Add("contributors", r.contributors)
      .Add("evaluated", r.evaluated)
      .Add("late_uploads", r.late_uploads)
      .Add("stragglers", r.stragglers)
      .Add("train_s", r.train_s)
      .Add("exposed_comm_s", r.exposed_comm_s)
      .Add("utilisation", r.utilisation)
      .Add("digest", DigestHex(r.digest))
      .Add("digests_match", r.digest_mismatches == 0)
      .AddRaw("sites", sites);
  if (config_.pipeline.stages > 1) o.AddRaw("boundaries", BoundariesJson(r.round));
  if (config_.fpld.enabled) {
    JsonObject f;
    f.Add("logit_payload_bytes", r.fpld.payload_bytes)
        .Add("logit_fp32_bytes", r.fpld.fp32_bytes)
        .Add("bits", config_.fpld.bits)
        .Add("teacher_kl", r.fpld.teacher_kl)
        .Add("student_kl", r.fpld.student_kl)
        .Add("distill_loss", r.fpld.distill_loss)
        .Add("student_public_val_loss", r.fpld.public_val_loss);
    o.AddRaw("fpld", f.str());
  }
  if (!r.cluster_val_loss.empty()) {
    JsonObject clusters;
    for (const auto& [name, loss] : r.cluster_val_loss) clusters.Add(name, loss);
    o.AddRaw("cluster_val_loss", clusters.str());
  }
  return o.str();
}

std::string RoundReporter::StatusLine(const RoundRecord& r) const {
  char status[160];
  std::snprintf(status, sizeof(status), "campaign %s: round %u/%d committed, val loss %.4f, %d sites",
                config_.name.c_str(), r.round, config_.training.rounds, r.val_loss, r.evaluated);
  return status;
}

std::string RoundReporter::FinalTable() const {
  std::string out;
  Appendf(&out, "\n%-16s %12s %12s %12s %10s %12s %10s %7s\n", "site", "bytes up", "bytes down", "uploads",
          "up ratio", "aggregates", "dn ratio", "rounds");
  std::map<std::string, int> rounds = core_.history_totals().uploaded_rounds;
  const char* upload_kind = UploadKind(config_);
  auto row = [&](const std::string& label, const std::string& site, int n) {
    const LedgerEntry up = ledger_.KindTotal(Direction::kUp, upload_kind, -1, site);
    const LedgerEntry dn = ledger_.KindTotal(Direction::kDown, "aggregate", -1, site);
    const uint64_t total_up = site.empty() ? ledger_.Total(Direction::kUp) : ledger_.SiteTotal(site, Direction::kUp);
    const uint64_t total_dn =
        site.empty() ? ledger_.Total(Direction::kDown) : ledger_.SiteTotal(site, Direction::kDown);
    Appendf(&out, "%-16s %12s %12s %12s %9.1fx %12s %9.1fx %7d\n", label.c_str(), HumanBytes(total_up).c_str(),
            HumanBytes(total_dn).c_str(), HumanBytes(up.bytes).c_str(),
            ledger_.Ratio(Direction::kUp, upload_kind, -1, site), HumanBytes(dn.bytes).c_str(),
            ledger_.Ratio(Direction::kDown, "aggregate", -1, site), n);
  };
  int all_rounds = 0;
  for (const auto& [name, w] : core_.workers()) {
    row(name, name, rounds[name]);
    all_rounds += rounds[name];
  }
  row("total", "", all_rounds);
  Appendf(&out, "(bytes up/down: every message, headers included; uploads/aggregates: the delta_upload and\n"
                " aggregate messages alone; ratio: dense fp32 bytes of the same messages / bytes sent)\n");
  for (int b = 0; b + 1 < config_.pipeline.stages; ++b) {
    const BoundaryFigures f = Boundary(b, -1);
    auto per = [](const LedgerEntry& e) { return e.messages ? static_cast<double>(e.bytes) / e.messages : 0.0; };
    Appendf(&out,
            "boundary %d|%d: forward %s (%" PRIu64 " micro-batches, %.0f B each), backward %s (%.0f B each), "
            "labels %s, validation %s; x%.1f vs fp32 activations at d_model %d\n",
            b, b + 1, HumanBytes(f.forward.bytes).c_str(), f.forward.messages, per(f.forward),
            HumanBytes(f.backward.bytes).c_str(), per(f.backward), HumanBytes(f.labels.bytes).c_str(),
            HumanBytes(f.eval.bytes).c_str(), f.ratio, config_.model.d_model);
  }
  const auto& h = core_.history();
  if (core_.history_totals().records >= 2) {
    const double first = core_.history_totals().first_val_loss, last = h.back().val_loss;
    Appendf(&out, "validation loss %.4f -> %.4f (%.1f%% lower), final digest %s\n", first, last,
            100.0 * (first - last) / first, DigestHex(core_.digest()).c_str());
  }
  return out;
}

std::string RoundReporter::Summary(bool failed, const std::string& fcrag_result, double wall_s) const {
  std::string f;
  const auto& h = core_.history();
  const uint64_t tokens = core_.history_totals().tokens;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const char* upload_kind = UploadKind(config_);
  Appendf(&f, "campaign %s\n", config_.name.c_str());
  Appendf(&f, "status %s\n", failed ? "failed" : "completed");
  Appendf(&f, "codec %s\n", CodecName(config_.codec.kind));
  Appendf(&f, "outer %s\n", OuterOptimizerName(config_.outer.kind));
  Appendf(&f, "rounds %u\n", core_.committed_round());
  Appendf(&f, "inner_steps %d\n", config_.training.inner_steps);
  Appendf(&f, "parameters %zu\n", core_.params().values.size());
  Appendf(&f, "tokens %" PRIu64 "\n", tokens);
  Appendf(&f, "initial_val_loss %.6f\n", h.empty() ? nan : core_.history_totals().first_val_loss);
  Appendf(&f, "final_val_loss %.6f\n", h.empty() ? nan : h.back().val_loss);
  Appendf(&f, "bytes_up %" PRIu64 "\n", ledger_.Total(Direction::kUp));
  Appendf(&f, "bytes_down %" PRIu64 "\n", ledger_.Total(Direction::kDown));
  const LedgerEntry up = ledger_.KindTotal(Direction::kUp, upload_kind);
  const LedgerEntry dn = ledger_.KindTotal(Direction::kDown, "aggregate");
  Appendf(&f, "upload_bytes %" PRIu64 "\n", up.bytes);
  Appendf(&f, "aggregate_bytes %" PRIu64 "\n", dn.bytes);
  Appendf(&f, "ratio_up %.2f\n", ledger_.Ratio(Direction::kUp, upload_kind));
  Appendf(&f, "ratio_down %.2f\n", ledger_.Ratio(Direction::kDown, "aggregate"));
  for (int b = 0; b + 1 < config_.pipeline.stages; ++b) {
    // Per micro-batch message, header frames included (bench/resbm_pipeline).
    const BoundaryFigures bf = Boundary(b, -1);
    auto per = [](const LedgerEntry& e) { return e.messages ? static_cast<double>(e.bytes) / e.messages : 0.0; };
    Appendf(&f, "boundary%d_forward_bytes %" PRIu64 "\n", b, bf.forward.bytes);
    Appendf(&f, "boundary%d_backward_bytes %" PRIu64 "\n", b, bf.backward.bytes);
    Appendf(&f, "boundary%d_forward_bytes_per_message %.1f\n", b, per(bf.forward));
    Appendf(&f, "boundary%d_backward_bytes_per_message %.1f\n", b, per(bf.backward));
    Appendf(&f, "boundary%d_ratio %.2f\n", b, bf.ratio);
  }
  if (!fcrag_result.empty()) Appendf(&f, "fcrag %s\n", fcrag_result.c_str());
  Appendf(&f, "wall_s %.2f\n", wall_s);
  Appendf(&f, "final_digest %s\n", DigestHex(core_.digest()).c_str());
  return f;
}

}  // namespace lowband
