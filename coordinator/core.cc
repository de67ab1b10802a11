#include "coordinator/core.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

#include "base/json.h"
#include "codec/blocks.h"
#include "codec/dither.h"
#include "codec/logit_codec.h"
#include "coordinator/adaptive_steps.h"
#include "coordinator/campaign_mode.h"
#include "coordinator/control_commands.h"
#include "coordinator/core_json.h"
#include "coordinator/eval_records.h"
#include "coordinator/resume.h"
#include "base/log.h"

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

// The data-sampling seed depends on the campaign seed and the site name only,
// so a site samples the same batches whatever order workers join in.
uint64_t DataSeedFor(uint64_t campaign_seed, const std::string& site) {
  return Fnv1a64(site.data(), site.size(), campaign_seed ^ 0x9e3779b97f4a7c15ull);
}

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
      params_(std::move(initial)),
      digest_(params_.Digest()),
      campaign_start_(now),
      phase_start_(now),
      round_start_(now) {
  LOWBAND_CHECK(params_.values.size() == static_cast<size_t>(params_.layout.numel()));
  pending_.round = 0;
  OpenEvalRecord(pending_, now, now);  // round 0: the initial parameters
  if (config_.fcrag.enabled) fcrag_hub_ = std::make_unique<FcragHub>(config_);
  mode_ = CampaignMode::Make(config_, params_, plan_);
  if (config_.pipeline.stages > 1) topology_ = std::make_unique<Topology>(config_.pipeline.stages, config_.pipeline.replicas);
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
  for (const auto& [site, o] : workers_) {
    if (site == w.site) break;
    if (o.state == WorkerState::kJoined) ++position;
  }
  return mode_->BlockFor(w.site, round, position);
}

void CoordinatorCore::ComputePartDigests() { mode_->ComputeDigests(*agg_, params_); }

Status CoordinatorCore::Restore(uint32_t round, ParamSet params, std::vector<float> momentum) {
  if (phase_ != Phase::kWaiting || !workers_.empty() || !evals_.history().empty() || committed_round_ != 0) {
    return FailedPrecondition("restore: the campaign has already started");
  }
  LOWBAND_RETURN_IF_ERROR(CheckRestore(params_, outer_, round, params, momentum));
  if (!momentum.empty()) outer_.set_momentum(std::move(momentum));
  params_ = std::move(params);
  digest_ = params_.Digest();
  ComputePartDigests();
  committed_round_ = round;
  pending_ = RoundRecord{};
  pending_.round = round;
  evals_.Clear();
  OpenEvalRecord(pending_, campaign_start_, campaign_start_);
  return Status::Ok();
}

Status CoordinatorCore::Replay(uint32_t round, const Encoded& gradient, uint64_t digest) {
  if (phase_ != Phase::kWaiting || !workers_.empty()) return FailedPrecondition("replay: the campaign has already started");
  if (round != committed_round_ + 1) {
    return FailedPrecondition("replay: round " + std::to_string(round) + " does not follow round " +
                              std::to_string(committed_round_));
  }
  LOWBAND_RETURN_IF_ERROR(ReplayGradient(round, gradient, plan_, &outer_, &params_));
  digest_ = params_.Digest();
  ComputePartDigests();
  committed_round_ = round;
  pending_ = RoundRecord{};
  pending_.round = round;
  evals_.Clear();
  OpenEvalRecord(pending_, campaign_start_, campaign_start_);
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
  if (auto it = workers_.find(site); it != workers_.end()) ++it->second.rejected;
  LOG_WARN("message rejected", {"peer", site.empty() ? std::string("unknown") : site},
           {"code", static_cast<int>(code)}, {"round", round}, {"reason", what});
  out->messages.push_back({peer, Make(Error{code, what, round})});
}

int64_t CoordinatorCore::UploadParamsOf(const std::string& site, uint32_t round) const {
  if (mode_->block_rounds()) {
    const RoundRecord* rec = round == pending_.round ? &pending_ : nullptr;
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
  auto it = workers_.find(site);
  return mode_->ParamsOf(it == workers_.end() ? nullptr : &it->second);
}

int CoordinatorCore::StageOf(const std::string& site) const {
  auto it = workers_.find(site);
  return it == workers_.end() ? -1 : mode_->StageOf(it->second);
}

std::string CoordinatorCore::SiteOfPeer(const std::string& peer) const {
  auto it = peer_to_site_.find(peer);
  return it == peer_to_site_.end() ? std::string() : it->second;
}

template <typename Reports>
bool CoordinatorCore::Complete(const Reports& got, bool deadline_passed) const {
  const int have = static_cast<int>(got.size());
  if (have < std::max(config_.quorum.min_workers, 1)) return false;
  if (deadline_passed) return true;
  for (const auto& [site, w] : workers_) {
    if (w.state == WorkerState::kJoined && !got.count(site)) return false;
  }
  return true;
}

int CoordinatorCore::LiveWorkers() const {
  int n = 0;
  for (const auto& [site, w] : workers_) n += w.state == WorkerState::kJoined;
  return n;
}

void CoordinatorCore::HandleMalformed(const std::string& peer, const Status& why, CoreOutput* out) {
  Reply(peer, ErrorCode::kMalformed, why.ToString(), 0, out);
}

void CoordinatorCore::HandleUnauthorized(const std::string& peer, const std::string& why, CoreOutput* out) {
  Reply(peer, ErrorCode::kNotRegistered, why, 0, out, "unauthorized");
}

void CoordinatorCore::HandleMessage(const std::string& peer, const Message& msg, TimePoint now,
                                    CoreOutput* out) {
  if (msg.protocol_version != kProtocolVersion) {
    Reply(peer, ErrorCode::kWrongVersion,
          "protocol version " + std::to_string(msg.protocol_version) + ", expected " +
              std::to_string(kProtocolVersion),
          0, out);
    return;
  }
  // A worker that has not been welcomed yet does not know the campaign name.
  const bool anonymous_hello = msg.campaign_id.empty() && std::holds_alternative<Hello>(msg.body);
  if (msg.campaign_id != config_.name && !anonymous_hello) {
    Reply(peer, ErrorCode::kWrongCampaign,
          "campaign '" + msg.campaign_id + "' is not this coordinator's campaign '" + config_.name + "'", 0, out);
    return;
  }
  if (const auto* hello = std::get_if<Hello>(&msg.body)) {
    HandleHello(peer, *hello, now, out);
    return;
  }
  const std::string site = SiteOfPeer(peer);
  auto it = workers_.find(site);
  if (site.empty() || it == workers_.end() || it->second.peer != peer || it->second.state != WorkerState::kJoined) {
    Reply(peer, ErrorCode::kNotRegistered, std::string(BodyName(msg.body)) + " from a peer that has not said hello",
          0, out);
    return;
  }
  WorkerInfo& w = it->second;
  w.last_seen = now;
  if (std::holds_alternative<Heartbeat>(msg.body)) return;
  if (const auto* up = std::get_if<DeltaUpload>(&msg.body)) {
    HandleUpload(w, msg, *up, now, out);
  } else if (const auto* lu = std::get_if<LogitUpload>(&msg.body)) {
    HandleLogitUpload(w, msg, *lu, now, out);
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
      if (w.state == WorkerState::kJoined) MarkLost(w, "site down: " + err->message, now, out);
      return;
    }
    if (err->code == ErrorCode::kDigestMismatch || err->code == ErrorCode::kBadPayload) {
      // The worker's replica is not at theta_c: give it the parameters again.
      if (Resync(w, std::string("it reported ") + ErrorCodeName(err->code), now, out) &&
          phase_ == Phase::kTraining && !uploads_.count(w.site)) {
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
  if (m.site.empty() || m.site.size() > 128) {
    Reply(peer, ErrorCode::kMalformed, "hello needs a site name of 1..128 characters", 0, out);
    return;
  }
  // Ranks multiply the tokens a site may claim (and so its weight): no more
  // than its site entry says, or the most a site may have.
  uint32_t max_ranks = kMaxSiteRanks;
  for (const SiteConfig& s : config_.sites) {
    if (s.name == m.site) max_ranks = static_cast<uint32_t>(std::max(1, s.ranks));
  }
  if (m.ranks > max_ranks) {
    Reply(peer, ErrorCode::kBadPayload,
          "hello says site " + m.site + " has " + std::to_string(m.ranks) + " ranks; at most " +
              std::to_string(max_ranks) + " (its site.ranks)",
          0, out);
    return;
  }
  auto existing = workers_.find(m.site);
  const bool rejoin = existing != workers_.end();
  std::optional<StageSlot> slot;
  if (topology_) {
    if (m.peer_endpoint.empty()) {
      Reply(peer, ErrorCode::kMalformed, "a pipeline campaign needs the worker's peer endpoint (site.peer)", 0, out);
      return;
    }
    if (rejoin && !existing->second.welcomed && existing->second.state == WorkerState::kJoined &&
        existing->second.peer == peer) {
      existing->second.last_seen = now;  // still waiting for its replica: a repeated hello
      existing->second.hello = m;
      return;
    }
    slot = topology_->Assign(m.site);
    if (!slot) {
      Reply(peer, ErrorCode::kUnexpected,
            "every pipeline slot (" + std::to_string(config_.pipeline.stages) + " stages x " +
                std::to_string(config_.pipeline.replicas) + " replicas) is held",
            0, out);
      return;
    }
  }
  if (!rejoin && static_cast<int>(workers_.size()) >= std::max(config_.quorum.expected_workers, 1) * 4) {
    Reply(peer, ErrorCode::kUnexpected, "too many sites registered", 0, out);
    return;
  }
  if (rejoin) peer_to_site_.erase(existing->second.peer);
  WorkerInfo& w = workers_[m.site];
  w.site = m.site;
  w.peer = peer;
  w.hello = m;
  w.state = WorkerState::kJoined;
  w.last_seen = now;
  w.last_heartbeat_sent = now;
  w.last_eval_round.reset();
  w.last_step_time_ms = m.step_time_ms;
  peer_to_site_[peer] = m.site;
  uploads_.erase(m.site);  // a restarted worker's earlier upload, if any, is void
  ForgetEvals(m.site);     // it evaluates what it is synced to next
  LOG_INFO(rejoin ? "worker rejoined" : "worker joined", {"site", m.site}, {"device", m.device}, {"ranks", m.ranks},
           {"step_time_ms", m.step_time_ms}, {"train_tokens", m.train_tokens}, {"val_tokens", m.val_tokens},
           {"round", committed_round_});

  if (topology_) {
    w.stage = slot->stage;
    w.replica = slot->replica;
    w.welcomed = false;
    if (topology_->ReplicaComplete(w.replica)) {
      WelcomeReplica(w.replica, out);
    } else {
      LOG_INFO("pipeline slot assigned, waiting for the rest of its replica", {"site", m.site},
               {"stage", w.stage}, {"replica", w.replica});
    }
  } else {
    SendWelcome(w, out);
    if (mode_->Adopts(w)) SendSync(w, out);
    w.announced_round = committed_round_;
    if (phase_ == Phase::kTraining) SendRoundStarts(w, out);
  }
  if (phase_ == Phase::kWaiting && LiveWorkers() >= config_.quorum.expected_workers) {
    phase_ = Phase::kEvaluating;  // round 0 (or a restart's committed round): evaluate it
    phase_start_ = now;
    evals_.RestartClocks(now);
    LOG_INFO("all expected workers joined", {"workers", LiveWorkers()});
  }
  MaybeFinishEvals(now, out);
}

void CoordinatorCore::SendWelcome(WorkerInfo& w, CoreOutput* out) {
  Welcome wel;
  wel.worker_id = w.site;
  wel.model = config_.model;
  wel.training = config_.training;
  wel.codec = config_.codec;
  wel.data_seed = DataSeedFor(config_.training.seed, w.site);
  wel.worker_index = static_cast<int>(std::distance(workers_.begin(), workers_.find(w.site)));
  wel.heartbeat_interval_ms = config_.network.heartbeat_interval_ms;
  wel.heartbeat_timeout_ms = config_.network.heartbeat_timeout_ms;
  mode_->FillWelcome(&wel);
  if (config_.fcrag.enabled) {
    wel.fcrag.enabled = true;
    wel.fcrag.labels = config_.fcrag.labels;
    wel.fcrag.retrieve_k = config_.fcrag.retrieve_k;
    wel.fcrag.smoothing = config_.fcrag.smoothing;
    wel.fcrag.min_chars = config_.fcrag.min_chars;
    wel.fcrag.max_chars = config_.fcrag.max_chars;
  }
  if (topology_) {
    wel.pipeline = config_.pipeline;
    wel.stage = w.stage;
    wel.replica = w.replica;
    wel.pipeline_epoch = replica_epoch_[w.replica];
    // Replicas of a stage sample different data; the stages of one replica
    // see the same batches, which stage 0 reads and the last stage's labels
    // come from: seed by replica, not by site.
    wel.data_seed = DataSeedFor(config_.training.seed, "replica-" + std::to_string(w.replica));
    for (int s = 0; s < config_.pipeline.stages; ++s) {
      auto it = workers_.find(topology_->SiteAt(StageSlot{s, w.replica}));
      wel.stage_endpoints.push_back(it == workers_.end() ? std::string() : it->second.hello.peer_endpoint);
    }
  }
  out->messages.push_back({w.peer, Make(wel)});
}

void CoordinatorCore::WelcomeReplica(int replica, CoreOutput* out) {
  // Step numbers restart from the new epoch on every stage (protocol/messages.h).
  uint32_t& epoch = replica_epoch_[replica];
  epoch = (epoch + 1) % 4096;
  for (int s = 0; s < config_.pipeline.stages; ++s) {
    auto it = workers_.find(topology_->SiteAt(StageSlot{s, replica}));
    if (it == workers_.end()) continue;
    WorkerInfo& w = it->second;
    w.welcomed = true;
    uploads_.erase(w.site);  // a re-configured stage trains the round again
    SendWelcome(w, out);
    SendSync(w, out);
    if (phase_ == Phase::kTraining) SendRoundStart(w, out);
  }
  LOG_INFO("pipeline replica complete", {"replica", replica}, {"stages", config_.pipeline.stages});
}

void CoordinatorCore::Evict(WorkerInfo& w, const std::string& reason, TimePoint now, CoreOutput* out) {
  const bool was_joined = w.state == WorkerState::kJoined;
  w.state = WorkerState::kEvicted;
  if (topology_) topology_->Release(w.site);
  uploads_.erase(w.site);
  ForgetEvals(w.site);
  if (fcrag_hub_) {
    std::vector<FcragResult> done;
    fcrag_hub_->SiteGone(w.site, now, FcragSender(out), &done);
    OnFcragResults(std::move(done), out);
  }
  if (was_joined) out->messages.push_back({w.peer, Make(CampaignEnd{reason, committed_round_})});
  LOG_WARN("worker evicted", {"site", w.site}, {"reason", reason}, {"round", committed_round_},
           {"live", LiveWorkers()});
  MaybeCloseRound(now, false, out);
  MaybeFinishEvals(now, out);
}

// Every re-sync sends a whole model, so a site that keeps reporting a bad
// replica (buggy or hostile) must not make the coordinator send models
// forever: one re-sync per committed round (later reports in the same round
// wait for the one in flight), and a site whose replica is still wrong after
// kMaxUnconfirmedResyncs re-syncs in a row, with no accepted upload or
// matching evaluation between them, is evicted.
bool CoordinatorCore::Resync(WorkerInfo& w, const std::string& why, TimePoint now, CoreOutput* out) {
  if (w.state != WorkerState::kJoined) return false;
  if (w.last_resync_round && *w.last_resync_round == committed_round_) {
    ++rejected_;
    ++rejected_by_reason_["resync_limited"];
    LOG_DEBUG("re-sync already sent this round", {"site", w.site}, {"round", committed_round_}, {"why", why});
    return false;
  }
  if (w.unconfirmed_resyncs >= kMaxUnconfirmedResyncs) {
    ++rejected_;
    ++rejected_by_reason_["resync_limited"];
    Evict(w,
          "evicted: its replica was still wrong after " + std::to_string(kMaxUnconfirmedResyncs) +
              " re-syncs in a row (" + why + ")",
          now, out);
    return false;
  }
  ++w.unconfirmed_resyncs;
  w.last_resync_round = committed_round_;
  LOG_WARN("re-syncing a site's replica", {"site", w.site}, {"round", committed_round_}, {"why", why},
           {"attempt", w.unconfirmed_resyncs});
  SendSync(w, out);
  return true;
}

void CoordinatorCore::SendSync(WorkerInfo& w, CoreOutput* out) {
  if (closing_) {  // the parameters are being aggregated: the new ones go out after (FinishClose)
    syncs_after_close_.insert(w.site);
    return;
  }
  // Sites synced in the same round to the same parameters share one packed
  // payload (a join storm packs the model once, and sends one buffer).
  const uint64_t digest = DigestFor(w);
  if (sync_cache_round_ != committed_round_) {
    sync_cache_.clear();
    sync_cache_round_ = committed_round_;
  }
  auto cached = sync_cache_.find(digest);
  if (cached == sync_cache_.end()) {
    StatusOr<Encoded> enc = mode_->SyncPayload(w, params_, *agg_);
    // Dense fp32 of our own parameters cannot fail; a failure is a bug.
    LOWBAND_CHECK(enc.ok());
    cached = sync_cache_.emplace(digest, std::move(enc).value()).first;
  }
  Message m = Make(ModelSync{committed_round_, digest, cached->second.header});
  m.bulk = cached->second.bulk;
  w.synced_round = committed_round_;
  // It evaluates the committed round next and no earlier pending one.
  ForgetEvals(w.site);
  evals_.Expect(committed_round_, w.site);
  out->messages.push_back({w.peer, std::move(m)});
}

void CoordinatorCore::SendRoundStart(WorkerInfo& w, CoreOutput* out, uint32_t round) {
  RoundStart rs;
  rs.round = round == 0 ? committed_round_ + 1 : round;
  rs.model_version = mode_->Adopts(w) ? DigestFor(w) : 0;
  rs.inner_steps = StepsFor(w);
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

int CoordinatorCore::StepsFor(const WorkerInfo& w) {
  auto it = round_steps_.find(w.site);
  if (it != round_steps_.end()) return it->second;
  if (!config_.training.adaptive.enabled) return round_steps_[w.site] = config_.training.inner_steps;
  // Assigned once per round for every live worker (StartRound); a worker
  // joining mid-round gets its share against the same field.
  std::map<std::string, StepTimes> times;
  for (const auto& [site, o] : workers_) {
    if (o.state != WorkerState::kJoined && site != w.site) continue;
    times[site] = StepTimes{o.step_ms, o.hello.step_time_ms};
  }
  const auto steps = AssignInnerSteps(config_.training, times);
  const int h = steps.at(w.site);
  round_steps_[w.site] = h;
  return h;
}

void CoordinatorCore::StartRound(TimePoint now, CoreOutput* out) {
  phase_ = Phase::kTraining;
  phase_start_ = now;
  round_start_ = now;
  uploads_.clear();
  pending_ = RoundRecord{};
  pending_.round = committed_round_ + 1;
  round_steps_.clear();
  mode_->ForgetBlocksBefore(committed_round_ + 1);
  if (config_.training.adaptive.enabled) {
    std::map<std::string, StepTimes> times;
    for (const auto& [site, w] : workers_) {
      if (w.state == WorkerState::kJoined) times[site] = StepTimes{w.step_ms, w.hello.step_time_ms};
    }
    round_steps_ = AssignInnerSteps(config_.training, times);
  }
  for (auto& [site, w] : workers_) {
    if (w.state != WorkerState::kJoined) continue;
    SendRoundStarts(w, out);
  }
  LOG_DEBUG("round started", {"round", pending_.round}, {"workers", LiveWorkers()});
  // Overlap: uploads of this round that came while the previous one was
  // still open or being evaluated.
  std::vector<std::pair<std::string, Message>> due;
  for (auto it = early_uploads_.begin(); it != early_uploads_.end();) {
    if (it->first.first <= pending_.round) {
      if (it->first.first == pending_.round) due.emplace_back(it->first.second, std::move(it->second));
      it = early_uploads_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [site, msg] : due) {
    auto w = workers_.find(site);
    const auto* up = std::get_if<DeltaUpload>(&msg.body);
    if (w == workers_.end() || w->second.state != WorkerState::kJoined || !up) continue;
    HandleUpload(w->second, msg, *up, now, out);
    if (phase_ != Phase::kTraining) break;  // the round closed (and maybe the campaign ended)
  }
}

void CoordinatorCore::SetFpld(std::vector<uint8_t> probes, DistilFn distil) {
  mode_->SetProbes(std::move(probes));
  distil_ = std::move(distil);
  BuildAggregation();
}

// FPLD: a site's probe logits after its round of local training. Checked
// against the campaign's encoding and decoded (codec/logit_codec.h) before
// anything is kept; a bad upload changes nothing.
void CoordinatorCore::HandleLogitUpload(WorkerInfo& w, const Message& msg, const LogitUpload& m, TimePoint now,
                                        CoreOutput* out) {
  if (!mode_->TakesLogits()) {
    Reply(w.peer, ErrorCode::kUnexpected, "logit upload in a campaign that is not an FPLD campaign", m.round, out);
    return;
  }
  if (!UploadIsDue(w, m.round, m.step_time_ms, out)) return;
  const FpldConfig& f = config_.fpld;
  const uint32_t rows = static_cast<uint32_t>(f.contexts) * static_cast<uint32_t>(f.positions);
  const uint64_t max_tokens = static_cast<uint64_t>(config_.training.inner_steps) *
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
    Reply(w.peer, ErrorCode::kBadPayload, "logit upload " + bad, m.round, out);
    return;
  }
  const LogitCodec codec{f.bits, static_cast<float>(f.clip), f.topk};
  const size_t payload = msg.bulk.size() - m.exact_bytes;
  auto logits = DecodeLogits(codec, static_cast<int>(rows), config_.model.vocab, msg.bulk.data(), payload,
                             DitherSeedFor(config_.training.seed, m.round, w.site));
  if (!logits.ok()) {
    Reply(w.peer, ErrorCode::kBadPayload, "logit payload rejected: " + logits.status().ToString(), m.round, out);
    return;
  }
  Upload up{0, 0, Update{}, m.train_loss, m.tokens, 0, m.step_time_ms, m.wait_ms, {}, {}, 0};
  up.logits = std::move(logits).value();
  up.logit_bytes = payload;
  if (m.exact_bytes > 0) {
    up.exact.resize(m.exact_bytes / sizeof(float));
    std::memcpy(up.exact.data(), msg.bulk.data() + payload, m.exact_bytes);
    for (float v : up.exact) {
      if (!std::isfinite(v)) {
        Reply(w.peer, ErrorCode::kBadPayload, "reference logits hold a non-finite value", m.round, out);
        return;
      }
    }
  }
  uploads_[w.site] = std::move(up);
  w.last_step_time_ms = m.step_time_ms;
  w.step_ms = SmoothStepTime(w.step_ms, m.step_time_ms);
  LOG_DEBUG("logit upload accepted", {"site", w.site}, {"round", m.round}, {"bytes", static_cast<uint64_t>(payload)});
  MaybeCloseRound(now, false, out);
}


// An upload for `round` may be taken now: the open round, nothing from the
// site yet. Otherwise replies (wrong round, duplicate); a late upload is
// counted on its round's pending record and its step time still tells how
// much the site can do next time.
bool CoordinatorCore::UploadIsDue(WorkerInfo& w, uint32_t round, double step_time_ms, CoreOutput* out) {
  const uint32_t open_round = committed_round_ + 1;
  if (phase_ != Phase::kTraining || round != open_round || closing_) {
    if ((round <= committed_round_ && round >= 1) || (closing_ && round == open_round)) {
      // Too late for its round (closed at the deadline or quorum); its step
      // time still tells how much the site can do next time.
      w.step_ms = SmoothStepTime(w.step_ms, step_time_ms);
      w.last_step_time_ms = step_time_ms;
      if (closing_ && round == open_round) {  // closed, still being aggregated: its record is pending_
        ++pending_.late_uploads;
        LOG_INFO("late upload dropped", {"site", w.site}, {"round", round}, {"step_time_ms", step_time_ms});
      } else if (EvalRecord* e = evals_.Find(round)) {
        ++e->record.late_uploads;
        LOG_INFO("late upload dropped", {"site", w.site}, {"round", round}, {"step_time_ms", step_time_ms});
      }
      Reply(w.peer, ErrorCode::kWrongRound,
            "upload for round " + std::to_string(round) + " arrived after the round closed", round, out);
    } else {
      Reply(w.peer, ErrorCode::kWrongRound,
            "upload for round " + std::to_string(round) + " but " +
                (phase_ == Phase::kTraining ? "round " + std::to_string(open_round) + " is open"
                                            : std::string("no round is collecting uploads")),
            round, out);
    }
    return false;
  }
  if (uploads_.count(w.site)) {
    Reply(w.peer, ErrorCode::kDuplicate, "duplicate upload for round " + std::to_string(round), round, out);
    return false;
  }
  return true;
}

void CoordinatorCore::HandleUpload(WorkerInfo& w, const Message& msg, const DeltaUpload& m, TimePoint now,
                                   CoreOutput* out) {
  const uint32_t open_round = committed_round_ + 1;
  if (!mode_->TakesDeltas()) {
    Reply(w.peer, ErrorCode::kUnexpected, "a parameter delta in an FPLD campaign (sites send probe logits)", m.round,
          out);
    return;
  }
  if (config_.training.overlap) {
    // Overlap: uploads of rounds not open yet are held, up to committed + 2
    // (the furthest round announced: a fast site can finish round t+2 while
    // a slower one is still evaluating round t).
    const bool ahead = phase_ == Phase::kTraining ? m.round > open_round : m.round >= open_round;
    if (ahead && m.round <= committed_round_ + 2 && phase_ != Phase::kFinished) {
      const auto key = std::make_pair(m.round, w.site);
      if (early_uploads_.count(key)) {
        Reply(w.peer, ErrorCode::kDuplicate, "duplicate upload for round " + std::to_string(m.round), m.round, out);
      } else {
        early_uploads_[key] = msg;
        LOG_DEBUG("upload held until its round opens", {"site", w.site}, {"round", m.round});
      }
      return;
    }
  }
  if (!UploadIsDue(w, m.round, m.step_time_ms, out)) return;
  // Overlap: round r trains from theta_{r-2} plus the site's own progress
  // (or from theta_{r-1} right after a sync).
  const bool base_ok = m.base_digest == DigestFor(w) ||
                       (config_.training.overlap && m.round >= 2 && m.base_digest == DigestOfRound(m.round - 2));
  if (!base_ok) {
    Reply(w.peer, ErrorCode::kDigestMismatch,
          "upload trained from parameters " + DigestHex(m.base_digest) + ", round " +
              std::to_string(committed_round_) + " parameters are " + DigestHex(DigestFor(w)),
          m.round, out);
    return;
  }
  if (!std::isfinite(m.train_loss) || m.tokens == 0) {
    Reply(w.peer, ErrorCode::kBadPayload, "upload needs a finite train_loss and tokens > 0", m.round, out);
    return;
  }
  // Tokens weight the aggregate: no site may claim more than the most steps
  // any site can be given, on each of its ranks.
  const uint64_t max_tokens = static_cast<uint64_t>(MaxInnerSteps(config_.training)) *
                              static_cast<uint64_t>(config_.training.batch_size) *
                              static_cast<uint64_t>(config_.model.context) * w.hello.ranks;
  if (m.tokens > max_tokens) {
    Reply(w.peer, ErrorCode::kBadPayload,
          "upload claims " + std::to_string(m.tokens) + " tokens; a round has at most " + std::to_string(max_tokens),
          m.round, out);
    return;
  }
  if (m.blob.codec != config_.codec.kind) {
    Reply(w.peer, ErrorCode::kBadPayload,
          std::string("delta payload uses codec ") + CodecName(m.blob.codec) + ", the campaign uses " +
              CodecName(config_.codec.kind),
          m.round, out);
    return;
  }
  // Pipeline: the worker's stage; ParaBlock: the block the round asked of it;
  // personalisation: its cluster.
  CampaignMode::Slice slice;
  if (std::string bad = mode_->UploadSlice(w, m.round, m.block, &slice); !bad.empty()) {
    Reply(w.peer, ErrorCode::kBadPayload, bad, m.round, out);
    return;
  }
  const int part_index = slice.part;
  auto delta = ParseUpdate(*slice.layout, *slice.plan, m.blob, msg.bulk);
  if (!delta.ok()) {
    Reply(w.peer, ErrorCode::kBadPayload, "delta payload rejected: " + delta.status().ToString(), m.round, out);
    return;
  }
  const float peak = MaxAbs(*delta);
  if (!(peak <= kMaxDeltaMagnitude)) {
    Reply(w.peer, ErrorCode::kBadPayload,
          "delta payload rejected: an entry of magnitude " + std::to_string(peak) + " exceeds " +
              std::to_string(kMaxDeltaMagnitude) + " (diverged or hostile)",
          m.round, out);
    return;
  }
  double sum_sq = 0;
  for (float v : delta->dense ? delta->values : delta->value) sum_sq += static_cast<double>(v) * v;
  uploads_[w.site] = Upload{w.stage, part_index, std::move(delta).value(), m.train_loss, m.tokens, std::sqrt(sum_sq),
                            m.step_time_ms, m.wait_ms, {}, {}, 0};
  w.last_step_time_ms = m.step_time_ms;
  w.step_ms = SmoothStepTime(w.step_ms, m.step_time_ms);
  w.unconfirmed_resyncs = 0;  // it trained from the round's parameters
  LOG_DEBUG("upload accepted", {"site", w.site}, {"round", m.round}, {"train_loss", m.train_loss});
  MaybeCloseRound(now, false, out);
}

void CoordinatorCore::MaybeCloseRound(TimePoint now, bool deadline_passed, CoreOutput* out) {
  if (phase_ != Phase::kTraining || closing_ || !Complete(uploads_, deadline_passed)) return;
  CloseRound(now, deadline_passed ? "deadline" : "complete", out);
}

// Live workers asked to train this round whose upload is not in at the
// deadline: left out of the round (their upload, should it come, is refused
// as late) and counted. Not finishing H_i steps in the time elapsed means a
// step takes at least elapsed / H_i: the estimate rises to that, so adaptive
// steps give the site less next round even though it reported nothing.
void CoordinatorCore::MarkStragglers(TimePoint now) {
  const double elapsed_ms = Seconds(now - round_start_) * 1000.0;
  for (auto& [site, w] : workers_) {
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

void CoordinatorCore::RejectNormOutliers(CoreOutput* out) {
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
  const uint32_t round = committed_round_ + 1;
  for (auto it = uploads_.begin(); it != uploads_.end();) {
    auto med = median_of.find(it->second.part);
    const double median = med == median_of.end() ? 0.0 : med->second;
    const size_t count = norms_by_stage[it->second.part].size();
    if (med != median_of.end() && it->second.norm > ratio * median) {
      char what[200];
      std::snprintf(what, sizeof(what),
                    "upload rejected: its norm %.6g is %.1fx the median %.6g of this round's %zu uploads (limit %gx)",
                    it->second.norm, it->second.norm / median, median, count, ratio);
      auto w = workers_.find(it->first);
      Reply(w != workers_.end() ? w->second.peer : std::string(), ErrorCode::kBadPayload, what, round, out,
            "norm_outlier");
      it = uploads_.erase(it);
    } else {
      ++it;
    }
  }
}

void CoordinatorCore::CloseRound(TimePoint now, const char* why, CoreOutput* out) {
  LOWBAND_CHECK(phase_ == Phase::kTraining && !uploads_.empty());
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
  job.round = committed_round_ + 1;
  for (auto& [site, up] : uploads_) {
    RoundUpload& u = job.uploads[site];
    u.stage = up.stage;
    u.part = up.part;
    u.delta = std::move(up.delta);
    u.tokens = up.tokens;
    u.logits = std::move(up.logits);
    u.exact = std::move(up.exact);
    u.logit_bytes = up.logit_bytes;
  }
  uploads_.clear();
  // The parameter values and the optimizer go with the job (the layout
  // stays: uploads for later rounds are still parsed against it).
  job.params.layout = params_.layout;
  job.params.values = std::move(params_.values);
  sync_cache_.clear();  // the committed round's syncs are done with
  params_.values.clear();
  job.outer = std::move(outer_);
  closing_why_ = why;
  if (async_close_) {
    closing_ = true;
    out->close_jobs.push_back(std::move(job));
    return;
  }
  FinishClose(agg_->Close(std::move(job)), now, out);
}

void CoordinatorCore::HandleClosed(CloseResult result, TimePoint now, CoreOutput* out) {
  LOWBAND_CHECK(closing_ && result.round == committed_round_ + 1);
  closing_ = false;
  FinishClose(std::move(result), now, out);
}

void CoordinatorCore::FinishClose(CloseResult r, TimePoint now, CoreOutput* out) {
  params_.values = std::move(r.params.values);
  outer_ = std::move(r.outer);
  // The campaign ended while the round was aggregated (an abort, the start
  // timeout): the round still commits, then the end.
  std::optional<std::pair<std::string, bool>> ended = std::move(finish_after_close_);
  finish_after_close_.reset();
  if (!r.status.ok()) {
    Finish(r.status.message(), true, out);
    return;
  }
  const int have = pending_.contributors;
  pending_.fpld.payload_bytes = r.logit_payload_bytes;
  pending_.fpld.fp32_bytes = r.logit_fp32_bytes;
  pending_.fpld.teacher_kl = r.teacher_kl;
  pending_.fpld.student_kl = r.student_kl;
  pending_.fpld.distill_loss = r.distill_loss;
  pending_.fpld.public_val_loss = r.public_val_loss;
  digest_ = r.digest;
  mode_->SetDigests(std::move(r.part_digests), std::move(r.view_digests));
  committed_round_ += 1;
  pending_.digest = digest_;

  pending_.down_codec = r.down.header.codec;
  pending_.aggregate_nnz = r.nnz;
  pending_.round = committed_round_;
  out->commits.push_back(RoundCommit{pending_, std::move(r.logged)});
  EvalRecord& evaluation = OpenEvalRecord(pending_, round_start_, now);
  const char* why = closing_why_.c_str();
  for (auto& [site, w] : workers_) {
    if (w.state != WorkerState::kJoined || !w.welcomed || !mode_->Adopts(w)) continue;
    // It missed a round, or asked for the model while the round was being
    // aggregated: full parameters instead.
    if (w.synced_round + 1 != committed_round_ || syncs_after_close_.erase(site) > 0) {
      SendSync(w, out);
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
    for (auto& [site, w] : workers_) {
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
  std::set<std::string> syncs = std::move(syncs_after_close_);
  syncs_after_close_.clear();
  for (const std::string& site : syncs) {
    auto it = workers_.find(site);
    if (it == workers_.end() || it->second.state != WorkerState::kJoined || !it->second.welcomed) continue;
    if (it->second.synced_round == committed_round_) continue;
    SendSync(it->second, out);
    if (phase_ == Phase::kTraining) SendRoundStarts(it->second, out);
  }
  MaybeFinishEvals(now, out);
  if (ended) Finish(ended->first, ended->second, out);
}

EvalRecord& CoordinatorCore::OpenEvalRecord(RoundRecord record, TimePoint round_start, TimePoint now) {
  record.digest = digest_;
  return evals_.Open(std::move(record), round_start, now);
}

void CoordinatorCore::ForgetEvals(const std::string& site) { evals_.Forget(site); }

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
    Resync(w, "its evaluation digest differed", now, out);  // its report of the committed round replaces this one
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
  auto live = [this](const std::string& site) {
    auto w = workers_.find(site);
    return w != workers_.end() && w->second.state == WorkerState::kJoined;
  };
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
    auto w = workers_.find(site);
    return w == workers_.end() ? 0 : w->second.stage;
  };
  out->committed.push_back(evals_.Write(std::move(e), *mode_, stage_of, campaign_start_, now));
}

void CoordinatorCore::MarkLost(WorkerInfo& w, const std::string& why, TimePoint now, CoreOutput* out) {
  w.state = WorkerState::kLost;
  if (topology_) topology_->Release(w.site);
  uploads_.erase(w.site);
  ForgetEvals(w.site);
  if (fcrag_hub_) {
    std::vector<FcragResult> done;
    fcrag_hub_->SiteGone(w.site, now, FcragSender(out), &done);
    OnFcragResults(std::move(done), out);
  }
  LOG_WARN("worker lost", {"site", w.site}, {"reason", why}, {"round", committed_round_}, {"live", LiveWorkers()});
  MaybeCloseRound(now, false, out);
  MaybeFinishEvals(now, out);
}

void CoordinatorCore::OnTick(TimePoint now, CoreOutput* out) {
  if (phase_ == Phase::kFinished) return;
  const auto interval = std::chrono::milliseconds(config_.network.heartbeat_interval_ms);
  const auto timeout = std::chrono::milliseconds(config_.network.heartbeat_timeout_ms);
  for (auto& [site, w] : workers_) {
    if (w.state != WorkerState::kJoined) continue;
    if (now - w.last_seen > timeout) {
      MarkLost(w, "no message for " + std::to_string(config_.network.heartbeat_timeout_ms) + " ms", now, out);
      if (phase_ == Phase::kFinished) return;
      continue;
    }
    if (now - w.last_heartbeat_sent >= interval) {
      w.last_heartbeat_sent = now;
      out->messages.push_back({w.peer, Make(Heartbeat{committed_round_, PhaseName(phase_)})});
    }
  }
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
  for (auto& [site, w] : workers_) {
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
  s.uploads = static_cast<int>(uploads_.size());
  s.digest = digest_;
  s.pipeline_stages = config_.pipeline.stages;
  s.parameters = static_cast<uint64_t>(params_.layout.numel());
  s.rejected_messages = rejected_;
  s.last = evals_.history().empty() ? nullptr : &evals_.history().back();
  return s;
}

std::vector<WorkerRow> CoordinatorCore::WorkerRows() const {
  std::vector<WorkerRow> rows;
  for (const auto& [site, w] : workers_) {
    auto steps = round_steps_.find(site);
    rows.push_back(WorkerRow{&w, mode_->StageOf(w), steps == round_steps_.end() ? 0 : steps->second,
                             uploads_.count(site) > 0});
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
    auto w = workers_.find(site);
    if (w == workers_.end()) return;
    Message m = Make(rq);
    m.bulk = std::move(bulk);
    out->messages.push_back({w->second.peer, std::move(m)});
  };
}

void CoordinatorCore::PumpFcrag(TimePoint now, CoreOutput* out) {
  std::vector<std::string> sites;
  for (const auto& [site, w] : workers_) {
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
      return {true, std::to_string(workers_.size()) + " workers", WorkersJson(WorkerRows(), now)};
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
      if (uploads_.empty()) return refuse("no uploads yet for round " + open_round);
      const size_t have = uploads_.size();
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
      auto it = workers_.find(cmd.site);
      if (it == workers_.end()) return refuse("unknown site '" + cmd.site + "'");
      WorkerInfo& w = it->second;
      if (w.state == WorkerState::kEvicted) return refuse("site '" + cmd.site + "' is already evicted");
      Evict(w, "evicted by operator", now, out);
      return {true, "site " + cmd.site + " evicted; " + std::to_string(LiveWorkers()) + " workers live", ""};
    }
    case Verb::kUnknown:
      break;
  }
  return {false, UnknownControlMessage(req), ""};
}

}  // namespace lowband
