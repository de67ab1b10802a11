#include "coordinator/core.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "base/json.h"
#include "codec/blocks.h"
#include "coordinator/campaign_mode.h"
#include "coordinator/control_commands.h"
#include "coordinator/core_json.h"
#include "coordinator/eval_records.h"
#include "coordinator/resume.h"
#include "base/log.h"

namespace lowband {
namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

const char* WorkerStateName(WorkerState s) {
  switch (s) {
    case WorkerState::kJoined: return "joined";
    case WorkerState::kLost: return "lost";
    case WorkerState::kEvicted: return "evicted";
  }
  return "unknown";
}

const char* CoordinatorCore::PhaseName(Phase p) {
  switch (p) {
    case Phase::kWaiting: return "waiting";
    case Phase::kEvaluating: return "evaluating";
    case Phase::kTraining: return "training";
    case Phase::kHeld: return "held";
    case Phase::kCalibrating: return "calibrating";
    case Phase::kFinished: return "finished";
  }
  return "unknown";
}

CoordinatorCore::CoordinatorCore(CampaignConfig config, ParamSet initial, TimePoint now)
    : config_(std::move(config)),
      plan_(PlanLayout(initial.layout, config_.codec.topk)),
      outer_(config_.outer, initial.values.size()),
      downlink_(config_.codec.downlink, initial.values.size(), config_.codec.downlink_budget),
      params_(std::move(initial)),
      digest_(params_.Digest()),
      campaign_start_(now),
      phase_start_(now) {
  LOWBAND_CHECK(params_.values.size() == static_cast<size_t>(params_.layout.numel()));
  if (config_.fcrag.enabled) fcrag_hub_ = std::make_unique<FcragHub>(config_);
  mode_ = CampaignMode::Make(config_, params_, plan_);
  membership_ = std::make_unique<Membership>(config_, mode_.get(), &evals_, static_cast<Membership::Host*>(this));
  collector_ = std::make_unique<RoundCollector>(config_, mode_.get(), &evals_, membership_.get(),
                                                static_cast<RoundCollector::Host*>(this), now);
  OpenEvalRecord(collector_->record(), now, now);  // round 0: the initial parameters
  BuildAggregation();
  ComputePartDigests();
}

void CoordinatorCore::BuildAggregation() {
  Aggregation::Setup a;
  mode_->Describe(&a);
  a.rule = config_.quorum.aggregation;
  a.uniform = config_.quorum.weighting == AggregationWeighting::kUniform;
  a.sparse_codec = config_.codec.kind == CodecKind::kSparseLoCo;
  a.vocab = config_.model.vocab;
  a.distil = distil_;
  agg_ = std::make_shared<const Aggregation>(std::move(a));
}

StatusOr<ParamSet> CoordinatorCore::ClusterLayout(const CampaignConfig& config, const ParamSet& model) {
  return CampaignMode::ClusterLayout(config, model);
}

std::string CoordinatorCore::ClusterOf(const std::string& site) const { return mode_->ClusterName(site); }

int CoordinatorCore::BlockFor(const WorkerInfo& w, uint32_t round) {
  // The worker's position among the round's live workers, by name.
  int position = 0;
  for (const auto& [site, o] : membership_->workers()) {
    if (site == w.site) break;
    if (o.state == WorkerState::kJoined) ++position;
  }
  return mode_->BlockFor(w.site, round, position);
}

void CoordinatorCore::ComputePartDigests() { mode_->ComputeDigests(*agg_, params_); }

Status CoordinatorCore::Restore(uint32_t round, ParamSet params, std::vector<float> momentum,
                                std::vector<float> downlink_error) {
  if (phase_ != Phase::kWaiting || !membership_->workers().empty() || !evals_.history().empty() || committed_round_ != 0) {
    return FailedPrecondition("restore: the campaign has already started");
  }
  LOWBAND_RETURN_IF_ERROR(CheckRestore(params_, outer_, downlink_, round, params, momentum, downlink_error));
  if (!momentum.empty()) outer_.set_momentum(std::move(momentum));
  if (!downlink_error.empty()) downlink_.set_error(std::move(downlink_error));
  params_ = std::move(params);
  digest_ = params_.Digest();
  ComputePartDigests();
  committed_round_ = round;
  collector_->ResetRecord(round);
  evals_.Clear();
  OpenEvalRecord(collector_->record(), campaign_start_, campaign_start_);
  return Status::Ok();
}

Status CoordinatorCore::Replay(uint32_t round, const Encoded& gradient, uint64_t digest) {
  if (phase_ != Phase::kWaiting || !membership_->workers().empty()) return FailedPrecondition("replay: the campaign has already started");
  if (round != committed_round_ + 1) {
    return FailedPrecondition("replay: round " + std::to_string(round) + " does not follow round " +
                              std::to_string(committed_round_));
  }
  LOWBAND_RETURN_IF_ERROR(ReplayGradient(round, gradient, plan_, &outer_, &downlink_, &params_));
  digest_ = params_.Digest();
  ComputePartDigests();
  committed_round_ = round;
  collector_->ResetRecord(round);
  evals_.Clear();
  OpenEvalRecord(collector_->record(), campaign_start_, campaign_start_);
  if (digest_ != digest) {
    return Corruption("replay: round " + std::to_string(round) + " gives parameters " + DigestHex(digest_) +
                      ", the log recorded " + DigestHex(digest));
  }
  return Status::Ok();
}

void CoordinatorCore::RestoreHistory(std::vector<RoundRecord> recorded, std::optional<RoundRecord> unrecorded) {
  evals_.set_history(std::move(recorded));
  if (unrecorded && unrecorded->round == committed_round_) {
    RoundRecord r = *unrecorded;
    r.val_loss = std::numeric_limits<double>::quiet_NaN();
    r.evaluated = 0;
    evals_.Clear();
    OpenEvalRecord(std::move(r), campaign_start_, campaign_start_);
  }
}

void CoordinatorCore::RestoreEnded(uint32_t round, const std::string& reason) {
  committed_round_ = round;
  phase_ = Phase::kFinished;
  LOG_INFO("campaign ended before this start", {"round", round}, {"reason", reason});
}

Message CoordinatorCore::Make(Body body) {
  Message m;
  m.campaign_id = config_.name;
  m.sender_id = "coordinator";
  m.seq = ++seq_;
  m.body = std::move(body);
  return m;
}

void CoordinatorCore::Reply(const std::string& peer, ErrorCode code, const std::string& what, uint32_t round,
                            CoreOutput* out, const char* reason) {
  ++rejected_;
  ++rejected_by_reason_[reason ? reason : ErrorCodeName(code)];
  std::string site = SiteOfPeer(peer);
  if (WorkerInfo* w = membership_->Find(site)) ++w->rejected;
  LOG_WARN("message rejected", {"peer", site.empty() ? std::string("unknown") : site},
           {"code", static_cast<int>(code)}, {"round", round}, {"reason", what});
  out->messages.push_back({peer, Make(Error{code, what, round})});
}

int64_t CoordinatorCore::UploadParamsOf(const std::string& site, uint32_t round) const {
  if (mode_->block_rounds()) {
    const RoundRecord* rec = round == collector_->record().round ? &collector_->record() : nullptr;
    for (auto r = evals_.history().rbegin(); !rec && r != evals_.history().rend(); ++r) {
      if (r->round == round) rec = &*r;
    }
    if (rec) {
      auto s = rec->sites.find(site);
      if (s != rec->sites.end() && s->second.block >= 0) return mode_->BlockNumel(s->second.block);
    }
  }
  return ParamsOf(site);
}

int64_t CoordinatorCore::ParamsOf(const std::string& site) const {
  auto it = workers().find(site);
  return mode_->ParamsOf(it == workers().end() ? nullptr : &it->second);
}

int CoordinatorCore::StageOf(const std::string& site) const {
  auto it = workers().find(site);
  return it == workers().end() ? -1 : mode_->StageOf(it->second);
}

std::string CoordinatorCore::SiteOfPeer(const std::string& peer) const { return membership_->SiteOfPeer(peer); }

int CoordinatorCore::LiveWorkers() const { return membership_->LiveWorkers(); }

void CoordinatorCore::HandleMalformed(const std::string& peer, const Status& why, CoreOutput* out) {
  Reply(peer, ErrorCode::kMalformed, why.ToString(), 0, out);
}

void CoordinatorCore::HandleUnauthorized(const std::string& peer, const std::string& why, CoreOutput* out) {
  Reply(peer, ErrorCode::kNotRegistered, why, 0, out, "unauthorized");
}

void CoordinatorCore::HandleMessage(const std::string& peer, const Message& msg, TimePoint now,
                                    CoreOutput* out) {
  // Never an error in answer to an error: two ends that disagree (another
  // campaign, a restarted peer) would otherwise answer each other forever.
  // A refused Error is counted and logged only.
  const bool is_error = std::holds_alternative<Error>(msg.body);
  auto refuse = [&](ErrorCode code, const std::string& what) {
    if (!is_error) {
      Reply(peer, code, what, 0, out);
      return;
    }
    ++rejected_;
    ++rejected_by_reason_[ErrorCodeName(code)];
    LOG_WARN("error message ignored", {"code", static_cast<int>(code)}, {"reason", what},
             {"error", std::get<Error>(msg.body).message});
  };
  if (msg.protocol_version != kProtocolVersion) {
    refuse(ErrorCode::kWrongVersion, "protocol version " + std::to_string(msg.protocol_version) + ", expected " +
                                         std::to_string(kProtocolVersion));
    return;
  }
  // A worker that has not been welcomed yet does not know the campaign name.
  const bool anonymous_hello = msg.campaign_id.empty() && std::holds_alternative<Hello>(msg.body);
  if (msg.campaign_id != config_.name && !anonymous_hello) {
    refuse(ErrorCode::kWrongCampaign,
           "campaign '" + msg.campaign_id + "' is not this coordinator's campaign '" + config_.name + "'");
    return;
  }
  if (const auto* hello = std::get_if<Hello>(&msg.body)) {
    HandleHello(peer, *hello, now, out);
    return;
  }
  WorkerInfo* joined = membership_->JoinedAt(peer);
  if (!joined) {
    refuse(ErrorCode::kNotRegistered, std::string(BodyName(msg.body)) + " from a peer that has not said hello");
    return;
  }
  WorkerInfo& w = *joined;
  w.last_seen = now;
  if (std::holds_alternative<Heartbeat>(msg.body)) return;
  if (const auto* pull = std::get_if<SyncPull>(&msg.body)) {
    if (!membership_->HandlePull(w, *pull, now, out)) {
      // The snapshot it was pulling is gone: offer what is committed now.
      membership_->SendSync(w, out);
      if (phase_ == Phase::kTraining && !collector_->Has(w.site)) {
        w.announced_round = committed_round_;  // its replica starts over from theta_c
        SendRoundStarts(w, out);
      }
    }
    return;
  }
  if (const auto* up = std::get_if<DeltaUpload>(&msg.body)) {
    HandleUpload(w, msg, *up, now, out);
  } else if (const auto* lu = std::get_if<LogitUpload>(&msg.body)) {
    if (collector_->HandleLogitUpload(w, msg, *lu, out)) MaybeCloseRound(now, false, out);
  } else if (const auto* fr = std::get_if<FcragReply>(&msg.body)) {
    if (!fcrag_hub_) {
      Reply(peer, ErrorCode::kUnexpected, "FC-RAG reply in a campaign without fcrag", 0, out);
      return;
    }
    std::vector<FcragResult> done;
    const std::string why = fcrag_hub_->OnReply(w.site, *fr, msg.bulk, now, FcragSender(out), &done);
    if (!why.empty()) Reply(peer, ErrorCode::kUnexpected, why, 0, out);
    OnFcragResults(std::move(done), out);
  } else if (const auto* ev = std::get_if<EvalReport>(&msg.body)) {
    HandleEvalReport(w, *ev, now, out);
  } else if (const auto* err = std::get_if<Error>(&msg.body)) {
    LOG_WARN("worker reported error", {"site", w.site}, {"code", static_cast<int>(err->code)},
             {"round", err->round}, {"reason", err->message});
    if (err->code == ErrorCode::kSiteDown) {
      // A rank of a multi-rank site is gone: the site leaves now rather than
      // at the heartbeat timeout, and says hello again once restarted.
      if (w.state == WorkerState::kJoined) membership_->MarkLost(w, "site down: " + err->message, now, out);
      return;
    }
    if (err->code == ErrorCode::kDigestMismatch || err->code == ErrorCode::kBadPayload) {
      // The worker's replica is not at theta_c: give it the parameters again.
      if (membership_->Resync(w, std::string("it reported ") + ErrorCodeName(err->code), now, out) &&
          phase_ == Phase::kTraining && !collector_->Has(w.site)) {
        w.announced_round = committed_round_;  // its replica starts over from theta_c
        SendRoundStarts(w, out);
      }
    }
  } else {
    Reply(peer, ErrorCode::kUnexpected,
          std::string("a worker may not send ") + BodyName(msg.body) + " to the coordinator", 0, out);
  }
}

void CoordinatorCore::HandleHello(const std::string& peer, const Hello& m, TimePoint now, CoreOutput* out) {
  if (phase_ == Phase::kFinished) {
    out->messages.push_back({peer, Make(CampaignEnd{"campaign already finished", committed_round_})});
    return;
  }
  if (!membership_->HandleHello(peer, m, now, out)) return;
  if (phase_ == Phase::kWaiting && LiveWorkers() >= config_.quorum.expected_workers) {
    phase_ = Phase::kEvaluating;  // round 0 (or a restart's committed round): evaluate it
    phase_start_ = now;
    evals_.RestartClocks(now);
    LOG_INFO("all expected workers joined", {"workers", LiveWorkers()});
  }
  MaybeFinishEvals(now, out);
}

void CoordinatorCore::SendRoundStart(WorkerInfo& w, CoreOutput* out, uint32_t round) {
  RoundStart rs;
  rs.round = round == 0 ? committed_round_ + 1 : round;
  rs.model_version = mode_->Adopts(w) ? DigestFor(w) : 0;
  rs.inner_steps = collector_->StepsFor(w);
  rs.block = BlockFor(w, rs.round);
  rs.deadline_ms = static_cast<uint32_t>(config_.quorum.round_deadline_s * 1000);
  w.announced_round = std::max(w.announced_round, rs.round);
  out->messages.push_back({w.peer, Make(rs)});
}

// Overlapped rounds (training.overlap, docs/overlap.md): every worker always
// knows the round after the one it is training. A worker (re)joining the
// open round r hears of r and r+1; afterwards CloseRound(t) announces t+2
// right behind the aggregate of t.
void CoordinatorCore::SendRoundStarts(WorkerInfo& w, CoreOutput* out) {
  const uint32_t open = committed_round_ + 1;
  if (w.announced_round < open) SendRoundStart(w, out, open);
  if (config_.training.overlap && open + 1 <= static_cast<uint32_t>(config_.training.rounds) &&
      w.announced_round < open + 1) {
    SendRoundStart(w, out, open + 1);
  }
}

uint64_t CoordinatorCore::DigestOfRound(uint32_t round) const {
  if (round == committed_round_) return digest_;
  if (const EvalRecord* e = evals_.Find(round)) return e->record.digest;
  for (auto r = evals_.history().rbegin(); r != evals_.history().rend(); ++r) {
    if (r->round == round && !r->reevaluated) return r->digest;
  }
  return 0;
}

uint32_t CoordinatorCore::LedgerRoundOf(const Message& m, uint32_t fallback) const {
  uint32_t named = 0;
  if (const auto* up = std::get_if<DeltaUpload>(&m.body)) {
    named = up->round;
  } else if (const auto* lu = std::get_if<LogitUpload>(&m.body)) {
    named = lu->round;
  } else if (const auto* ev = std::get_if<EvalReport>(&m.body)) {
    named = ev->round;
  } else if (const auto* agg = std::get_if<Aggregate>(&m.body)) {
    named = agg->round;
  } else if (const auto* rs = std::get_if<RoundStart>(&m.body)) {
    named = rs->round;
  } else {
    return fallback;
  }
  const bool near = static_cast<uint64_t>(named) + 2 >= committed_round_ && named <= committed_round_ + 2ull;
  return near ? named : fallback;
}

void CoordinatorCore::StartRound(TimePoint now, CoreOutput* out) {
  phase_ = Phase::kTraining;
  phase_start_ = now;
  const uint32_t round = committed_round_ + 1;
  mode_->ForgetBlocksBefore(round);
  // Overlap: uploads of this round that came while the previous one was
  // still open or being evaluated, taken once every worker has heard of it.
  std::vector<std::pair<std::string, Message>> due = collector_->Open(round, now);
  for (auto& [site, w] : membership_->mutable_workers()) {
    if (w.state != WorkerState::kJoined) continue;
    SendRoundStarts(w, out);
  }
  LOG_DEBUG("round started", {"round", round}, {"workers", LiveWorkers()});
  for (auto& [site, msg] : due) {
    WorkerInfo* w = membership_->Find(site);
    const auto* up = std::get_if<DeltaUpload>(&msg.body);
    if (!w || w->state != WorkerState::kJoined || !up) continue;
    HandleUpload(*w, msg, *up, now, out);
    if (phase_ != Phase::kTraining) break;  // the round closed (and maybe the campaign ended)
  }
}

void CoordinatorCore::SetFpld(std::vector<uint8_t> probes, DistilFn distil) {
  mode_->SetProbes(std::move(probes));
  distil_ = std::move(distil);
  BuildAggregation();
}


void CoordinatorCore::HandleUpload(WorkerInfo& w, const Message& msg, const DeltaUpload& m, TimePoint now,
                                   CoreOutput* out) {
  if (collector_->HandleUpload(w, msg, m, out)) MaybeCloseRound(now, false, out);
}

void CoordinatorCore::MaybeCloseRound(TimePoint now, bool deadline_passed, CoreOutput* out) {
  if (phase_ != Phase::kTraining || closing_ || !collector_->Complete(deadline_passed)) return;
  CloseRound(now, deadline_passed ? "deadline" : "complete", out);
}

void CoordinatorCore::CloseRound(TimePoint now, const char* why, CoreOutput* out) {
  LOWBAND_CHECK(phase_ == Phase::kTraining && collector_->uploads() > 0);
  CloseJob job = collector_->Close(now, why, out);
  // The parameter values and the optimizer go with the job (the layout
  // stays: uploads for later rounds are still parsed against it).
  job.params.layout = params_.layout;
  job.params.values = std::move(params_.values);
  params_.values.clear();
  job.outer = std::move(outer_);
  job.downlink = std::move(downlink_);
  job.payloads = std::move(payloads_);
  closing_why_ = why;
  if (async_close_) {
    closing_ = true;
    out->close_jobs.push_back(std::move(job));
    return;
  }
  FinishClose(agg_->Close(std::move(job), nullptr), now, out);
}

void CoordinatorCore::HandleClosed(CloseResult result, TimePoint now, CoreOutput* out) {
  LOWBAND_CHECK(closing_ && result.round == committed_round_ + 1);
  closing_ = false;
  FinishClose(std::move(result), now, out);
}

void CoordinatorCore::FinishClose(CloseResult r, TimePoint now, CoreOutput* out) {
  params_.values = std::move(r.params.values);
  outer_ = std::move(r.outer);
  downlink_ = std::move(r.downlink);
  payloads_ = std::move(r.payloads);
  // The campaign ended while the round was aggregated (an abort, the start
  // timeout): the round still commits, then the end.
  std::optional<std::pair<std::string, bool>> ended = std::move(finish_after_close_);
  finish_after_close_.reset();
  if (!r.status.ok()) {
    Finish(r.status.message(), true, out);
    return;
  }
  const int have = collector_->record().contributors;
  const uint64_t base_digest = digest_;
  digest_ = r.digest;
  mode_->SetDigests(std::move(r.part_digests), std::move(r.view_digests));
  committed_round_ += 1;
  const RoundRecord& record = collector_->Commit(r, committed_round_, digest_);
  out->commits.push_back(RoundCommit{record, std::move(r.logged)});
  EvalRecord& evaluation = OpenEvalRecord(record, collector_->round_start(), now);
  const char* why = closing_why_.c_str();
  if (mode_->OneAggregateForAll()) {
    membership_->LogAggregate(committed_round_, base_digest,
                              Aggregate{committed_round_, digest_, static_cast<uint32_t>(have), r.down.header},
                              r.down.bulk);
  }
  for (auto& [site, w] : membership_->mutable_workers()) {
    if (w.state != WorkerState::kJoined || !w.welcomed || !mode_->Adopts(w)) continue;
    // It missed a round, or asked for the model while the round was being
    // aggregated: full parameters instead.
    if (w.synced_round + 1 != committed_round_ || membership_->TakeDeferredSync(site)) {
      membership_->SendSync(w, out);
      continue;
    }
    const Encoded& down = mode_->DownFor(w, r);
    Message m = Make(Aggregate{committed_round_, DigestFor(w), static_cast<uint32_t>(have), down.header});
    m.bulk = down.bulk;
    w.synced_round = committed_round_;
    evaluation.expected.insert(site);
    out->messages.push_back({w.peer, std::move(m)});
  }
  if (config_.training.overlap) {
    // Right behind the aggregate of t: the round after the one every worker
    // is training now (t+2), so nobody waits for it (docs/overlap.md).
    for (auto& [site, w] : membership_->mutable_workers()) {
      if (w.state != WorkerState::kJoined || !w.welcomed) continue;
      for (uint32_t next = committed_round_ + 1; next <= committed_round_ + 2; ++next) {
        if (next <= static_cast<uint32_t>(config_.training.rounds) && w.announced_round < next) {
          SendRoundStart(w, out, next);
        }
      }
    }
  }
  LOG_DEBUG("round closed", {"round", committed_round_}, {"contributors", have},
            {"digest", DigestHex(digest_)}, {"why", why});
  if (config_.training.overlap && committed_round_ < static_cast<uint32_t>(config_.training.rounds)) {
    // Overlap: the next round opens now; this one's record waits for its
    // evaluations, which the workers run after training the next round
    // (docs/overlap.md).
    if (paused_) {
      phase_ = Phase::kHeld;
      phase_start_ = now;
      LOG_INFO("round held by operator pause", {"round", committed_round_ + 1});
    } else {
      StartRound(now, out);
    }
  } else {
    phase_ = Phase::kEvaluating;
    phase_start_ = now;
  }
  // Sites that asked for the model while it was being aggregated (a join, a
  // re-sync) get the new one, unless the aggregate just reached them.
  for (const std::string& site : membership_->TakeDeferredSyncs()) {
    WorkerInfo* w = membership_->Find(site);
    if (!w || w->state != WorkerState::kJoined || !w->welcomed) continue;
    if (w->synced_round == committed_round_) continue;
    membership_->SendSync(*w, out);
    if (phase_ == Phase::kTraining) SendRoundStarts(*w, out);
  }
  MaybeFinishEvals(now, out);
  if (ended) Finish(ended->first, ended->second, out);
}

EvalRecord& CoordinatorCore::OpenEvalRecord(RoundRecord record, TimePoint round_start, TimePoint now) {
  record.digest = digest_;
  return evals_.Open(std::move(record), round_start, now);
}

// The digest a site's evaluation of `round` must show: its view of the
// committed parameters, or an earlier pending round's (overlap only, where
// every site holds the whole model).
uint64_t CoordinatorCore::EvalDigestFor(const WorkerInfo& w, uint32_t round) const {
  if (round == committed_round_) return DigestFor(w);
  const EvalRecord* e = evals_.Find(round);
  return e ? e->record.digest : 0;
}

void CoordinatorCore::HandleEvalReport(WorkerInfo& w, const EvalReport& m, TimePoint now, CoreOutput* out) {
  if (!std::isfinite(m.val_loss) || m.val_loss < 0) {
    Reply(w.peer, ErrorCode::kBadPayload, "eval report needs a finite, non-negative val_loss", m.round, out);
    return;
  }
  EvalRecord* pending = evals_.Find(m.round);
  if (m.round != committed_round_ && !pending) {
    // Stale or early: it describes no parameters a record waits for.
    LOG_DEBUG("eval report for another round ignored", {"site", w.site}, {"round", m.round},
              {"committed", committed_round_});
    return;
  }
  w.last_eval_round = m.round;
  w.last_val_loss = m.val_loss;
  const uint64_t expected = EvalDigestFor(w, m.round);
  // A site of several ranks reports every rank's digest: one per rank, and
  // each must match.
  const uint64_t reported = ReportedDigest(m, w.hello.ranks, expected, w.site);
  if (reported != expected) {
    if (pending) {
      ++pending->record.digest_mismatches;
      pending->record.sites[w.site].digest_ok = false;
    }
    LOG_ERROR("parameter digest mismatch", {"site", w.site}, {"round", m.round},
              {"worker_digest", DigestHex(reported)}, {"coordinator_digest", DigestHex(expected)});
    out->messages.push_back({w.peer, Make(Error{ErrorCode::kDigestMismatch,
                                                "replica digest " + DigestHex(reported) + " differs from " +
                                                    DigestHex(expected) + "; re-syncing",
                                                m.round})});
    membership_->Resync(w, "its evaluation digest differed", now, out);  // its report of the committed round replaces this one
    return;
  }
  w.unconfirmed_resyncs = 0;  // its replica holds the round's parameters
  // Reports of a round whose record is already written come from a worker
  // that re-synced to theta_c mid-round.
  if (!pending) return;
  pending->evals[w.site] = m;
  MaybeFinishEvals(now, out);
}

bool CoordinatorCore::EvalComplete(const EvalRecord& e, TimePoint now) const {
  const auto deadline = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(config_.quorum.round_deadline_s));
  auto live = [this](const std::string& site) { return membership_->IsLive(site); };
  return EvalRecords::Complete(e, live, *mode_, config_.quorum.min_workers, committed_round_, deadline, now);
}

void CoordinatorCore::MaybeFinishEvals(TimePoint now, CoreOutput* out) {
  while (!evals_.empty() && phase_ != Phase::kWaiting && phase_ != Phase::kFinished) {
    if (!EvalComplete(evals_.Oldest(), now)) return;
    EvalRecord e = evals_.PopOldest();
    const uint32_t round = e.record.round;
    FinishEvalRecord(std::move(e), now, out);
    if (round >= static_cast<uint32_t>(config_.training.rounds)) {
      if (fcrag_hub_) return StartCalibration(now, out);
      Finish("completed " + std::to_string(round) + " rounds", false, out);
      return;
    }
    if (phase_ != Phase::kEvaluating || round != committed_round_) continue;
    if (paused_) {
      phase_ = Phase::kHeld;
      phase_start_ = now;
      LOG_INFO("round held by operator pause", {"round", committed_round_ + 1});
      return;
    }
    StartRound(now, out);
  }
}

void CoordinatorCore::FinishEvalRecord(EvalRecord e, TimePoint now, CoreOutput* out) {
  auto stage_of = [this](const std::string& site) {
    const WorkerInfo* w = membership_->Find(site);
    return w ? w->stage : 0;
  };
  out->committed.push_back(evals_.Write(std::move(e), *mode_, stage_of, campaign_start_, now));
}

void CoordinatorCore::OnTick(TimePoint now, CoreOutput* out) {
  if (phase_ == Phase::kFinished) return;
  membership_->OnTick(now, out);  // heartbeats, liveness
  if (phase_ == Phase::kFinished) return;
  const auto deadline = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(config_.quorum.round_deadline_s));
  if (phase_ == Phase::kWaiting) {
    if (Seconds(now - campaign_start_) > config_.quorum.start_timeout_s) {
      Finish("only " + std::to_string(LiveWorkers()) + " of " + std::to_string(config_.quorum.expected_workers) +
                 " expected workers joined within start_timeout_s=" + JsonNumber(config_.quorum.start_timeout_s),
             true, out);
    }
  } else if (phase_ == Phase::kTraining && now - phase_start_ > deadline) {
    MaybeCloseRound(now, true, out);
  }
  if (phase_ != Phase::kWaiting) MaybeFinishEvals(now, out);  // evaluation deadlines
  if (phase_ == Phase::kCalibrating) {
    std::vector<FcragResult> done;
    fcrag_hub_->OnTick(now, FcragSender(out), &done);
    OnFcragResults(std::move(done), out);
  }
}

// The pieces' host: the campaign as it stands, and what a site joining or
// leaving does to the round, the evaluations and FC-RAG.
CampaignView CoordinatorCore::View() const {
  CampaignView v;
  v.committed_round = committed_round_;
  v.phase = PhaseName(phase_);
  v.training = phase_ == Phase::kTraining;
  v.finished = phase_ == Phase::kFinished;
  v.closing = closing_;
  v.digest = digest_;
  v.params = &params_;
  v.aggregation = agg_.get();
  return v;
}

void CoordinatorCore::CountRejected(const char* reason) {
  ++rejected_;
  ++rejected_by_reason_[reason];
}

void CoordinatorCore::DropUpload(const std::string& site) { collector_->Drop(site); }

void CoordinatorCore::SiteGone(const std::string& site, TimePoint now, CoreOutput* out) {
  if (!fcrag_hub_) return;
  std::vector<FcragResult> done;
  fcrag_hub_->SiteGone(site, now, FcragSender(out), &done);
  OnFcragResults(std::move(done), out);
}

void CoordinatorCore::AfterLeave(TimePoint now, CoreOutput* out) {
  MaybeCloseRound(now, false, out);
  MaybeFinishEvals(now, out);
}

void CoordinatorCore::AnnounceRounds(WorkerInfo& w, bool open_only, CoreOutput* out) {
  if (open_only) {
    SendRoundStart(w, out);
  } else {
    SendRoundStarts(w, out);
  }
}

void CoordinatorCore::Finish(const std::string& reason, bool failed, CoreOutput* out) {
  if (phase_ == Phase::kFinished) return;
  if (closing_) {  // the final state includes the parameters the close job holds: finish when it returns
    if (!finish_after_close_) finish_after_close_ = std::make_pair(reason, failed);
    return;
  }
  phase_ = Phase::kFinished;
  out->finished = true;
  out->failed = failed;
  out->finish_reason = reason;
  for (const auto& [site, w] : workers()) {
    if (w.state != WorkerState::kJoined) continue;
    out->messages.push_back({w.peer, Make(CampaignEnd{reason, committed_round_})});
  }
  if (failed) {
    LOG_ERROR("campaign failed", {"reason", reason}, {"round", committed_round_});
  } else {
    LOG_INFO("campaign finished", {"reason", reason}, {"round", committed_round_}, {"digest", DigestHex(digest_)});
  }
}

void CoordinatorCore::Abort(const std::string& reason, CoreOutput* out) { Finish(reason, true, out); }

StatusSnapshot CoordinatorCore::Snapshot() const {
  StatusSnapshot s;
  s.campaign = config_.name;
  s.phase = PhaseName(phase_);
  s.committed_round = committed_round_;
  s.rounds = config_.training.rounds;
  s.live_workers = LiveWorkers();
  s.expected_workers = config_.quorum.expected_workers;
  s.paused = paused_;
  s.uploads = static_cast<int>(collector_->uploads());
  s.digest = digest_;
  s.pipeline_stages = config_.pipeline.stages;
  s.parameters = static_cast<uint64_t>(params_.layout.numel());
  s.rejected_messages = rejected_;
  s.last = evals_.history().empty() ? nullptr : &evals_.history().back();
  return s;
}

std::vector<WorkerRow> CoordinatorCore::WorkerRows() const {
  std::vector<WorkerRow> rows;
  for (const auto& [site, w] : workers()) {
    rows.push_back(WorkerRow{&w, mode_->StageOf(w), collector_->StepsOf(site), collector_->Has(site)});
  }
  return rows;
}

// FC-RAG (docs/fcrag.md): once the training rounds are over, the campaign's
// own calibration (fcrag.alpha, score_bits, summary_bits, trials).
void CoordinatorCore::StartCalibration(TimePoint now, CoreOutput* out) {
  phase_ = Phase::kCalibrating;
  phase_start_ = now;
  const FcragConfig& f = config_.fcrag;
  FcragPlan plan;
  plan.score_bits = f.score_bits;
  plan.summary_bits = f.summary_bits;
  plan.alpha = f.alpha;
  plan.trials = f.trials;
  fcrag_hub_->Enqueue(plan);
  LOG_INFO("FC-RAG calibration started", {"alpha", f.alpha}, {"score_bits", f.score_bits},
           {"summary_bits", f.summary_bits}, {"trials", f.trials});
  PumpFcrag(now, out);
}

FcragHub::Send CoordinatorCore::FcragSender(CoreOutput* out) {
  return [this, out](const std::string& site, FcragRequest rq, Bytes bulk) {
    const WorkerInfo* w = membership_->Find(site);
    if (!w) return;
    Message m = Make(rq);
    m.bulk = std::move(bulk);
    out->messages.push_back({w->peer, std::move(m)});
  };
}

void CoordinatorCore::PumpFcrag(TimePoint now, CoreOutput* out) {
  std::vector<std::string> sites;
  for (const auto& [site, w] : workers()) {
    if (w.state == WorkerState::kJoined && w.welcomed) sites.push_back(site);
  }
  std::vector<FcragResult> done;
  fcrag_hub_->Pump(sites, now, FcragSender(out), &done);
  OnFcragResults(std::move(done), out);
}

void CoordinatorCore::OnFcragResults(std::vector<FcragResult> results, CoreOutput* out) {
  for (FcragResult& r : results) {
    LOG_INFO(r.ok ? "FC-RAG result" : "FC-RAG failed", {"ticket", r.ticket}, {"result", r.message});
    const bool own = r.ticket == 0;
    const bool failed = !r.ok;
    const std::string message = r.message;
    out->fcrag_results.push_back(std::move(r));
    if (own && phase_ == Phase::kCalibrating) {
      if (failed) {
        Finish("FC-RAG calibration failed: " + message, true, out);
      } else if (!config_.fcrag.serve) {
        Finish("completed " + std::to_string(committed_round_) + " rounds and the FC-RAG calibration", false, out);
      }
    }
  }
}

// `calibrate [--alpha A] [--score-bits B] [--summary-bits B] [--trials T]`
// and `predict TEXT...`: answered when the sites have.
ControlResponse CoordinatorCore::FcragControl(const std::vector<std::string>& words, TimePoint now, CoreOutput* out) {
  if (!fcrag_hub_) return {false, "this campaign has no fcrag section", ""};
  if (phase_ != Phase::kCalibrating) {
    return {false, std::string("FC-RAG starts after the training rounds (phase ") + PhaseName(phase_) + ")", ""};
  }
  FcragPlan plan;
  plan.ticket = next_ticket_++;
  plan.score_bits = config_.fcrag.score_bits;
  plan.summary_bits = config_.fcrag.summary_bits;
  plan.alpha = config_.fcrag.alpha;
  plan.trials = 1;
  if (std::string bad = ParseFcragCommand(words, &plan); !bad.empty()) return {false, bad, ""};
  out->deferred_ticket = plan.ticket;
  fcrag_hub_->Enqueue(std::move(plan));
  PumpFcrag(now, out);
  return {true, "", ""};
}

ControlResponse CoordinatorCore::HandleControl(const ControlRequest& req, TimePoint now, CoreOutput* out) {
  using Verb = ControlCommand::Verb;
  const ControlCommand cmd = ParseControl(req);
  const std::string open_round = std::to_string(committed_round_ + 1);
  const bool finished = phase_ == Phase::kFinished;
  auto refuse = [&](const std::string& why) {
    LOG_WARN("control command refused", {"command", req.command}, {"reason", why});
    return ControlResponse{false, why, ""};
  };
  switch (cmd.verb) {
    case Verb::kStatus: {
      const StatusSnapshot s = Snapshot();
      return {true, StatusLine(s, finished), StatusJson(s)};
    }
    case Verb::kWorkers:
      return {true, std::to_string(workers().size()) + " workers", WorkersJson(WorkerRows(), now)};
    case Verb::kRoundPause:
      if (finished) return refuse("campaign already finished");
      if (paused_) return refuse("campaign is already paused");
      paused_ = true;
      LOG_INFO("operator paused rounds", {"round", committed_round_});
      return {true,
              phase_ == Phase::kTraining
                  ? "paused: round " + open_round + " still collects uploads; no round starts after it"
                  : "paused: no new round will start",
              ""};
    case Verb::kRoundResume:
      if (finished) return refuse("campaign already finished");
      if (!paused_) return refuse("campaign is not paused");
      paused_ = false;
      LOG_INFO("operator resumed rounds", {"round", committed_round_});
      if (phase_ == Phase::kHeld) {
        StartRound(now, out);
        return {true, "resumed: round " + open_round + " started", ""};
      }
      return {true, "resumed", ""};
    case Verb::kRoundClose: {
      if (finished) return refuse("campaign already finished");
      if (phase_ != Phase::kTraining) {
        return refuse(std::string("no round is collecting uploads (phase ") + PhaseName(phase_) + ")");
      }
      if (collector_->uploads() == 0) return refuse("no uploads yet for round " + open_round);
      const size_t have = collector_->uploads();
      LOG_INFO("operator closed round", {"round", open_round}, {"uploads", static_cast<uint64_t>(have)});
      CloseRound(now, "operator", out);
      return {true,
              "round " + open_round + " closed with " + std::to_string(have) + " upload" + (have == 1 ? "" : "s"),
              ""};
    }
    case Verb::kFcrag:
      if (finished) break;
      return FcragControl(cmd.words, now, out);
    case Verb::kAbort:
      if (finished) return refuse("campaign already finished");
      Abort("aborted by operator", out);
      return {true, "campaign " + config_.name + " aborted at round " + std::to_string(committed_round_), ""};
    case Verb::kEvict: {
      if (finished) return refuse("campaign already finished");
      WorkerInfo* found = membership_->Find(cmd.site);
      if (!found) return refuse("unknown site '" + cmd.site + "'");
      WorkerInfo& w = *found;
      if (w.state == WorkerState::kEvicted) return refuse("site '" + cmd.site + "' is already evicted");
      membership_->Evict(w, "evicted by operator", now, out);
      return {true, "site " + cmd.site + " evicted; " + std::to_string(LiveWorkers()) + " workers live", ""};
    }
    case Verb::kUnknown:
      break;
  }
  return {false, UnknownControlMessage(req), ""};
}

}  // namespace lowband
