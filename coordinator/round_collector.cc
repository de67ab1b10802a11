#include "coordinator/round_collector.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "base/json.h"
#include "base/log.h"
#include "codec/dither.h"
#include "codec/logit_codec.h"
#include "coordinator/adaptive_steps.h"

namespace lowband {
namespace {

// Pseudo-gradients are parameter differences after a few steps; an entry
// beyond this means a diverged or hostile worker, and rejecting it keeps the
// aggregate and the outer step finite.
constexpr float kMaxDeltaMagnitude = 1e6f;

float MaxAbs(const Update& u) {
  float peak = 0;
  for (float v : u.dense ? u.values : u.value) peak = std::max(peak, std::fabs(v));
  return peak;
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

RoundCollector::RoundCollector(const CampaignConfig& config, const CampaignMode* mode, EvalRecords* evals,
                               Membership* members, Host* host, TimePoint now)
    : config_(config), mode_(mode), evals_(evals), members_(members), host_(host), round_start_(now) {}

void RoundCollector::ResetRecord(uint32_t round) {
  pending_ = RoundRecord{};
  pending_.round = round;
}

std::vector<std::pair<std::string, Message>> RoundCollector::Open(uint32_t round, TimePoint now) {
  round_start_ = now;
  uploads_.clear();
  ResetRecord(round);
  round_steps_.clear();
  if (config_.training.adaptive.enabled) {
    std::map<std::string, StepTimes> times;
    for (const auto& [site, w] : members_->workers()) {
      if (w.state == WorkerState::kJoined) times[site] = StepTimes{w.step_ms, w.hello.step_time_ms};
    }
    round_steps_ = AssignInnerSteps(config_.training, times);
  }
  // Overlap: uploads of this round that came while the previous one was
  // still open or being evaluated.
  std::vector<std::pair<std::string, Message>> due;
  for (auto it = early_uploads_.begin(); it != early_uploads_.end();) {
    if (it->first.first <= round) {
      if (it->first.first == round) due.emplace_back(it->first.second, std::move(it->second));
      it = early_uploads_.erase(it);
    } else {
      ++it;
    }
  }
  return due;
}

bool RoundCollector::Complete(bool deadline_passed) const {
  const int have = static_cast<int>(uploads_.size());
  if (have < std::max(config_.quorum.min_workers, 1)) return false;
  if (deadline_passed) return true;
  for (const auto& [site, w] : members_->workers()) {
    if (w.state == WorkerState::kJoined && !uploads_.count(site)) return false;
  }
  return true;
}

int RoundCollector::StepsOf(const std::string& site) const {
  auto steps = round_steps_.find(site);
  return steps == round_steps_.end() ? 0 : steps->second;
}

const RoundRecord& RoundCollector::Commit(const CloseResult& r, uint32_t round, uint64_t digest) {
  pending_.fpld.payload_bytes = r.logit_payload_bytes;
  pending_.fpld.fp32_bytes = r.logit_fp32_bytes;
  pending_.fpld.teacher_kl = r.teacher_kl;
  pending_.fpld.student_kl = r.student_kl;
  pending_.fpld.distill_loss = r.distill_loss;
  pending_.fpld.public_val_loss = r.public_val_loss;
  pending_.digest = digest;
  pending_.down_codec = r.down.header.codec;
  pending_.aggregate_nnz = r.nnz;
  pending_.round = round;
  return pending_;
}

int RoundCollector::StepsFor(const WorkerInfo& w) {
  auto it = round_steps_.find(w.site);
  if (it != round_steps_.end()) return it->second;
  if (!config_.training.adaptive.enabled) return round_steps_[w.site] = config_.training.inner_steps;
  // Assigned once per round for every live worker (StartRound); a worker
  // joining mid-round gets its share against the same field.
  std::map<std::string, StepTimes> times;
  for (const auto& [site, o] : members_->workers()) {
    if (o.state != WorkerState::kJoined && site != w.site) continue;
    times[site] = StepTimes{o.step_ms, o.hello.step_time_ms};
  }
  const auto steps = AssignInnerSteps(config_.training, times);
  const int h = steps.at(w.site);
  round_steps_[w.site] = h;
  return h;
}

// FPLD: a site's probe logits after its round of local training. Checked
// against the campaign's encoding and decoded (codec/logit_codec.h) before
// anything is kept; a bad upload changes nothing.
bool RoundCollector::HandleLogitUpload(WorkerInfo& w, const Message& msg, const LogitUpload& m, CoreOutput* out) {
  if (!mode_->TakesLogits()) {
    host_->Reply(w.peer, ErrorCode::kUnexpected, "logit upload in a campaign that is not an FPLD campaign", m.round, out);
    return false;
  }
  if (!UploadIsDue(w, m.round, m.step_time_ms, out)) return false;
  const FpldConfig& f = config_.fpld;
  const uint32_t rows = static_cast<uint32_t>(f.contexts) * static_cast<uint32_t>(f.positions);
  // As for a delta upload: the most steps any site can be given (adaptive
  // steps may give a fast site more than training.inner_steps).
  const uint64_t max_tokens = static_cast<uint64_t>(MaxInnerSteps(config_.training)) *
                              static_cast<uint64_t>(config_.training.batch_size) *
                              static_cast<uint64_t>(config_.model.context) * w.hello.ranks;
  std::string bad;
  if (!std::isfinite(m.train_loss) || m.tokens == 0 || m.tokens > max_tokens) {
    bad = "needs a finite train_loss and 1.." + std::to_string(max_tokens) + " tokens";
  } else if (m.rows != rows || m.vocab != static_cast<uint32_t>(config_.model.vocab)) {
    bad = "covers " + std::to_string(m.rows) + " x " + std::to_string(m.vocab) + " logits, the probe set has " +
          std::to_string(rows) + " x " + std::to_string(config_.model.vocab);
  } else if (m.bits != f.bits || m.clip != static_cast<float>(f.clip) || m.topk != f.topk) {
    bad = "is encoded at bits " + std::to_string(m.bits) + ", topk " + std::to_string(m.topk) +
          ", clip " + JsonNumber(m.clip) + "; the campaign uses bits " + std::to_string(f.bits) + ", topk " +
          std::to_string(f.topk) + ", clip " + JsonNumber(f.clip);
  } else if (m.exact_bytes != (f.exact_reference ? uint64_t{rows} * m.vocab * sizeof(float) : 0)) {
    bad = "carries " + std::to_string(m.exact_bytes) + " bytes of reference logits, the campaign expects " +
          (f.exact_reference ? std::to_string(uint64_t{rows} * m.vocab * sizeof(float)) : std::string("none"));
  }
  if (!bad.empty()) {
    host_->Reply(w.peer, ErrorCode::kBadPayload, "logit upload " + bad, m.round, out);
    return false;
  }
  const LogitCodec codec{f.bits, static_cast<float>(f.clip), f.topk};
  const size_t payload = msg.bulk.size() - m.exact_bytes;
  auto logits = DecodeLogits(codec, static_cast<int>(rows), config_.model.vocab, msg.bulk.data(), payload,
                             DitherSeedFor(config_.training.seed, m.round, w.site));
  if (!logits.ok()) {
    host_->Reply(w.peer, ErrorCode::kBadPayload, "logit payload rejected: " + logits.status().ToString(), m.round, out);
    return false;
  }
  Upload up{0, 0, Update{}, Frame{}, m.train_loss, m.tokens, 0, m.step_time_ms, m.wait_ms, m.cycle_ms, {}, {}, 0};
  up.logits = std::move(logits).value();
  up.logit_bytes = payload;
  if (m.exact_bytes > 0) {
    up.exact.resize(m.exact_bytes / sizeof(float));
    std::memcpy(up.exact.data(), msg.bulk.data() + payload, m.exact_bytes);
    for (float v : up.exact) {
      if (!std::isfinite(v)) {
        host_->Reply(w.peer, ErrorCode::kBadPayload, "reference logits hold a non-finite value", m.round, out);
        return false;
      }
    }
  }
  uploads_[w.site] = std::move(up);
  w.last_step_time_ms = m.step_time_ms;
  w.step_ms = SmoothStepTime(w.step_ms, m.step_time_ms);
  LOG_DEBUG("logit upload accepted", {"site", w.site}, {"round", m.round}, {"bytes", static_cast<uint64_t>(payload)});
  return true;
}

// An upload for `round` may be taken now: the open round, nothing from the
// site yet. Otherwise replies (wrong round, duplicate); a late upload is
// counted on its round's pending record and its step time still tells how
// much the site can do next time.
bool RoundCollector::UploadIsDue(WorkerInfo& w, uint32_t round, double step_time_ms, CoreOutput* out) {
  const CampaignView v = host_->View();
  const uint32_t open_round = v.committed_round + 1;
  if (!v.training || round != open_round || v.closing) {
    if ((round <= v.committed_round && round >= 1) || (v.closing && round == open_round)) {
      // Too late for its round (closed at the deadline or quorum); its step
      // time still tells how much the site can do next time.
      w.step_ms = SmoothStepTime(w.step_ms, step_time_ms);
      w.last_step_time_ms = step_time_ms;
      if (v.closing && round == open_round) {  // closed, still being aggregated: its record is pending_
        ++pending_.late_uploads;
        LOG_INFO("late upload dropped", {"site", w.site}, {"round", round}, {"step_time_ms", step_time_ms});
      } else if (EvalRecord* e = evals_->Find(round)) {
        ++e->record.late_uploads;
        LOG_INFO("late upload dropped", {"site", w.site}, {"round", round}, {"step_time_ms", step_time_ms});
      }
      host_->Reply(w.peer, ErrorCode::kWrongRound,
            "upload for round " + std::to_string(round) + " arrived after the round closed", round, out);
    } else {
      host_->Reply(w.peer, ErrorCode::kWrongRound,
            "upload for round " + std::to_string(round) + " but " +
                (v.training ? "round " + std::to_string(open_round) + " is open"
                                            : std::string("no round is collecting uploads")),
            round, out);
    }
    return false;
  }
  if (uploads_.count(w.site)) {
    host_->Reply(w.peer, ErrorCode::kDuplicate, "duplicate upload for round " + std::to_string(round), round, out);
    return false;
  }
  return true;
}

bool RoundCollector::HandleUpload(WorkerInfo& w, const Message& msg, const DeltaUpload& m, CoreOutput* out) {
  const CampaignView v = host_->View();
  const uint32_t open_round = v.committed_round + 1;
  if (!mode_->TakesDeltas()) {
    host_->Reply(w.peer, ErrorCode::kUnexpected, "a parameter delta in an FPLD campaign (sites send probe logits)", m.round,
          out);
    return false;
  }
  if (config_.training.overlap) {
    // Overlap: uploads of rounds not open yet are held, up to committed + 2
    // (the furthest round announced: a fast site can finish round t+2 while
    // a slower one is still evaluating round t).
    const bool ahead = v.training ? m.round > open_round : m.round >= open_round;
    if (ahead && m.round <= v.committed_round + 2 && !v.finished) {
      const auto key = std::make_pair(m.round, w.site);
      if (early_uploads_.count(key)) {
        host_->Reply(w.peer, ErrorCode::kDuplicate, "duplicate upload for round " + std::to_string(m.round), m.round, out);
      } else {
        early_uploads_[key] = msg;
        LOG_DEBUG("upload held until its round opens", {"site", w.site}, {"round", m.round});
      }
      return false;
    }
  }
  if (!UploadIsDue(w, m.round, m.step_time_ms, out)) return false;
  // Overlap: round r trains from theta_{r-2} plus the site's own progress
  // (or from theta_{r-1} right after a sync).
  const bool base_ok = m.base_digest == host_->DigestFor(w) ||
                       (config_.training.overlap && m.round >= 2 && m.base_digest == host_->DigestOfRound(m.round - 2));
  if (!base_ok) {
    host_->Reply(w.peer, ErrorCode::kDigestMismatch,
          "upload trained from parameters " + DigestHex(m.base_digest) + ", round " +
              std::to_string(v.committed_round) + " parameters are " + DigestHex(host_->DigestFor(w)),
          m.round, out);
    return false;
  }
  if (!std::isfinite(m.train_loss) || m.tokens == 0) {
    host_->Reply(w.peer, ErrorCode::kBadPayload, "upload needs a finite train_loss and tokens > 0", m.round, out);
    return false;
  }
  // Tokens weight the aggregate: no site may claim more than the most steps
  // any site can be given, on each of its ranks.
  const uint64_t max_tokens = static_cast<uint64_t>(MaxInnerSteps(config_.training)) *
                              static_cast<uint64_t>(config_.training.batch_size) *
                              static_cast<uint64_t>(config_.model.context) * w.hello.ranks;
  if (m.tokens > max_tokens) {
    host_->Reply(w.peer, ErrorCode::kBadPayload,
          "upload claims " + std::to_string(m.tokens) + " tokens; a round has at most " + std::to_string(max_tokens),
          m.round, out);
    return false;
  }
  if (m.blob.codec != config_.codec.kind) {
    host_->Reply(w.peer, ErrorCode::kBadPayload,
          std::string("delta payload uses codec ") + CodecName(m.blob.codec) + ", the campaign uses " +
              CodecName(config_.codec.kind),
          m.round, out);
    return false;
  }
  // Pipeline: the worker's stage; ParaBlock: the block the round asked of it;
  // personalisation: its cluster.
  CampaignMode::Slice slice;
  if (std::string bad = mode_->UploadSlice(w, m.round, m.block, &slice); !bad.empty()) {
    host_->Reply(w.peer, ErrorCode::kBadPayload, bad, m.round, out);
    return false;
  }
  const int part_index = slice.part;
  Upload up{w.stage, part_index, Update{}, Frame{}, m.train_loss, m.tokens, 0, m.step_time_ms, m.wait_ms, m.cycle_ms,
            {}, {}, 0};
  // A plain mean of sparseloco uploads reads them in place (RoundUpload):
  // the payload is checked as ParseUpdate would and kept as it came, with
  // no parsed copy (3.4x larger) made.
  const bool in_place = m.blob.codec == CodecKind::kSparseLoCo && mode_->kind() == Aggregation::Kind::kMean;
  PayloadStats stats;
  Status checked = Status::Ok();
  if (in_place) {
    checked = CheckSparseLoCoPayload(*slice.layout, *slice.plan, m.blob, msg.bulk, &stats);
  } else {
    auto delta = ParseUpdate(*slice.layout, *slice.plan, m.blob, msg.bulk);
    if (delta.ok()) {
      up.delta = std::move(delta).value();
      stats.max_abs = MaxAbs(up.delta);
      for (float v : up.delta.dense ? up.delta.values : up.delta.value) stats.sum_sq += static_cast<double>(v) * v;
    } else {
      checked = delta.status();
    }
  }
  if (!checked.ok()) {
    host_->Reply(w.peer, ErrorCode::kBadPayload, "delta payload rejected: " + checked.ToString(), m.round, out);
    return false;
  }
  const float peak = stats.max_abs;
  if (!(peak <= kMaxDeltaMagnitude)) {
    host_->Reply(w.peer, ErrorCode::kBadPayload,
          "delta payload rejected: an entry of magnitude " + std::to_string(peak) + " exceeds " +
              std::to_string(kMaxDeltaMagnitude) + " (diverged or hostile)",
          m.round, out);
    return false;
  }
  up.norm = std::sqrt(stats.sum_sq);
  if (in_place) up.sparseloco = msg.bulk;
  uploads_[w.site] = std::move(up);
  w.last_step_time_ms = m.step_time_ms;
  w.step_ms = SmoothStepTime(w.step_ms, m.step_time_ms);
  w.unconfirmed_resyncs = 0;  // it trained from the round's parameters
  LOG_DEBUG("upload accepted", {"site", w.site}, {"round", m.round}, {"train_loss", m.train_loss});
  return true;
}

// Live workers asked to train this round whose upload is not in at the
// deadline: left out of the round (their upload, should it come, is refused
// as late) and counted. Not finishing H_i steps in the time elapsed means a
// step takes at least elapsed / H_i: the estimate rises to that, so adaptive
// steps give the site less next round even though it reported nothing.
void RoundCollector::MarkStragglers(TimePoint now) {
  const double elapsed_ms = Seconds(now - round_start_) * 1000.0;
  for (auto& [site, w] : members_->mutable_workers()) {
    auto st = round_steps_.find(site);
    if (w.state != WorkerState::kJoined || uploads_.count(site) || st == round_steps_.end()) continue;
    SiteRoundStats& s = pending_.sites[site];
    s.late = true;
    s.inner_steps = st->second;
    ++pending_.stragglers;
    const double floor_ms = elapsed_ms / std::max(st->second, 1);
    if (floor_ms > w.step_ms) w.step_ms = floor_ms;
    LOG_INFO("straggler left out of the round", {"site", site}, {"round", pending_.round},
             {"inner_steps", st->second}, {"step_ms_at_least", floor_ms});
  }
}

void RoundCollector::RejectNormOutliers(CoreOutput* out) {
  const double ratio = config_.quorum.max_norm_ratio;
  if (ratio <= 0) return;
  // Deltas of different pipeline stages are not comparable: one median per stage.
  std::map<int, std::vector<double>> norms_by_stage;
  for (const auto& [site, up] : uploads_) norms_by_stage[up.part].push_back(up.norm);
  std::map<int, double> median_of;
  for (auto& [stage, norms] : norms_by_stage) {
    if (norms.size() < 3) continue;
    std::nth_element(norms.begin(), norms.begin() + norms.size() / 2, norms.end());
    // A zero median (most deltas empty) is no scale to judge the others by:
    // every non-empty delta would be "infinitely" far above it.
    if (norms[norms.size() / 2] > 0) median_of[stage] = norms[norms.size() / 2];
  }
  const uint32_t round = host_->View().committed_round + 1;
  for (auto it = uploads_.begin(); it != uploads_.end();) {
    auto med = median_of.find(it->second.part);
    const double median = med == median_of.end() ? 0.0 : med->second;
    const size_t count = norms_by_stage[it->second.part].size();
    if (med != median_of.end() && it->second.norm > ratio * median) {
      char what[200];
      std::snprintf(what, sizeof(what),
                    "upload rejected: its norm %.6g is %.1fx the median %.6g of this round's %zu uploads (limit %gx)",
                    it->second.norm, it->second.norm / median, median, count, ratio);
      const WorkerInfo* w = members_->Find(it->first);
      host_->Reply(w ? w->peer : std::string(), ErrorCode::kBadPayload, what, round, out,
            "norm_outlier");
      it = uploads_.erase(it);
    } else {
      ++it;
    }
  }
}

CloseJob RoundCollector::Close(TimePoint now, const char* why, CoreOutput* out) {
  LOWBAND_CHECK(!uploads_.empty());
  if (mode_->ChecksNorms()) RejectNormOutliers(out);
  if (std::string(why) == "deadline") MarkStragglers(now);
  pending_.train_s = Seconds(now - round_start_);
  const int have = static_cast<int>(uploads_.size());

  // Pipeline: only the last stage computes the loss; every stage's worker
  // reports the tokens its replica trained on.
  double loss_sum = 0;
  uint64_t tokens = 0;
  for (const auto& [site, up] : uploads_) {
    SiteRoundStats& s = pending_.sites[site];
    s.tokens = up.tokens;
    s.uploaded = true;
    // Overlap announces rounds ahead, so the H_i map may already be the next
    // round's; without adaptive steps H is the campaign's.
    if (!config_.training.adaptive.enabled) {
      s.inner_steps = config_.training.inner_steps;
    } else if (auto st = round_steps_.find(site); st != round_steps_.end()) {
      s.inner_steps = st->second;
    }
    s.block = mode_->RecordedBlock(up.part);
    s.step_time_ms = up.step_time_ms;
    s.wait_s = up.wait_ms / 1000.0;
    pending_.exposed_comm_s = std::max(pending_.exposed_comm_s, s.wait_s);
    if (up.cycle_ms > 0 && s.inner_steps > 0) {
      s.utilisation = std::min(1.0, up.step_time_ms * s.inner_steps / up.cycle_ms);
      pending_.utilisation = std::isfinite(pending_.utilisation) ? std::min(pending_.utilisation, s.utilisation)
                                                                 : s.utilisation;
    }
    if (!mode_->CountsLoss(up.stage)) continue;
    loss_sum += up.train_loss * static_cast<double>(up.tokens);
    tokens += up.tokens;
    s.train_loss = up.train_loss;
  }
  if (tokens == 0) {  // no last-stage upload this round: the loss is unknown
    loss_sum = std::numeric_limits<double>::quiet_NaN();
    tokens = 1;
  }
  pending_.train_loss = loss_sum / static_cast<double>(tokens);
  pending_.tokens = tokens;
  pending_.contributors = have;
  CloseJob job;
  job.round = host_->View().committed_round + 1;
  for (auto& [site, up] : uploads_) {
    RoundUpload& u = job.uploads[site];
    u.stage = up.stage;
    u.part = up.part;
    u.delta = std::move(up.delta);
    u.sparseloco = std::move(up.sparseloco);
    u.tokens = up.tokens;
    u.logits = std::move(up.logits);
    u.exact = std::move(up.exact);
    u.logit_bytes = up.logit_bytes;
  }
  uploads_.clear();
  return job;
}

}  // namespace lowband
