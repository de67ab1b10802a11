#include "worker/core.h"

#include <algorithm>

#include "base/log.h"
#include "codec/params.h"

namespace lowband {
namespace {
constexpr std::chrono::milliseconds kHelloRetry{1000};
}

WorkerCore::WorkerCore(Hello hello, std::string campaign_hint, WorkerTime now)
    : hello_(std::move(hello)),
      campaign_(std::move(campaign_hint)),
      last_from_coordinator_(now),
      last_hello_(now),
      last_heartbeat_(now) {}

Message WorkerCore::Make(Body body) {
  Message m;
  m.campaign_id = campaign_;
  m.sender_id = hello_.site;
  m.seq = ++seq_;
  m.body = std::move(body);
  return m;
}

void WorkerCore::SendHello(WorkerTime now, WorkerOutput* out) {
  last_hello_ = now;
  out->messages.push_back(Make(hello_));
}

void WorkerCore::Start(WorkerTime now, WorkerOutput* out) { SendHello(now, out); }

void WorkerCore::Reject(ErrorCode code, const std::string& what, uint32_t round, WorkerOutput* out) {
  ++rejected_;
  LOG_WARN("message rejected", {"code", static_cast<int>(code)}, {"round", round}, {"reason", what});
  out->messages.push_back(Make(Error{code, what, round}));
}

void WorkerCore::HandleMalformed(const Status& why, WorkerOutput* out) {
  Reject(ErrorCode::kMalformed, why.ToString(), 0, out);
}

void WorkerCore::HandleMessage(const Message& msg, WorkerTime now, WorkerOutput* out) {
  if (msg.protocol_version != kProtocolVersion) {
    if (std::holds_alternative<Error>(msg.body)) return;  // no error in answer to an error
    Reject(ErrorCode::kWrongVersion, "protocol version " + std::to_string(msg.protocol_version), 0, out);
    return;
  }
  // A worker learns its campaign from the first Welcome unless it was
  // given one (--campaign). Until then its coordinator's refusals of its
  // hello and a CampaignEnd ("campaign already finished") are for it,
  // whatever campaign they name.
  if (campaign_.empty() && std::holds_alternative<Welcome>(msg.body) && !msg.campaign_id.empty()) {
    campaign_ = msg.campaign_id;
  }
  const bool unwelcomed_reply = campaign_.empty() && (std::holds_alternative<CampaignEnd>(msg.body) ||
                                                      std::holds_alternative<Error>(msg.body));
  if (msg.campaign_id != campaign_ && !unwelcomed_reply) {
    // Never an error in answer to an error (two ends that disagree would
    // answer each other forever): an Error from another campaign is dropped.
    if (std::holds_alternative<Error>(msg.body)) {
      ++rejected_;
      LOG_WARN("error from another campaign ignored", {"campaign", msg.campaign_id},
               {"error", std::get<Error>(msg.body).message});
      return;
    }
    Reject(ErrorCode::kWrongCampaign,
           "message for campaign '" + msg.campaign_id + "', this worker is in '" + campaign_ + "'", 0, out);
    return;
  }
  last_from_coordinator_ = now;

  if (const auto* w = std::get_if<Welcome>(&msg.body)) {
    if (w->worker_id != hello_.site) {
      Reject(ErrorCode::kUnexpected, "welcome for '" + w->worker_id + "', this site is '" + hello_.site + "'", 0,
             out);
      return;
    }
    registered_ = true;
    configured_ = true;
    overlap_ = w->training.overlap;
    const ModelSpec& own = hello_.own_model;
    fpld_own_ = w->fpld.enabled && own.layers > 0 &&
                !(own.layers == w->model.layers && own.d_model == w->model.d_model && own.heads == w->model.heads);
    target_round_.reset();
    training_round_.reset();
    heartbeat_interval_ = std::chrono::milliseconds(std::max<uint32_t>(w->heartbeat_interval_ms, 10));
    heartbeat_timeout_ = std::chrono::milliseconds(std::max<uint32_t>(w->heartbeat_timeout_ms, 100));
    LOG_INFO("welcomed", {"site", hello_.site}, {"layers", w->model.layers}, {"d_model", w->model.d_model},
             {"rounds", w->training.rounds}, {"inner_steps", w->training.inner_steps});
    out->jobs.push_back(ConfigureJob{*w});
    return;
  }
  if (const auto* end = std::get_if<CampaignEnd>(&msg.body)) {
    LOG_INFO("campaign ended", {"reason", end->reason}, {"round", end->final_round});
    out->exit = true;
    out->exit_code = 0;
    out->exit_reason = end->reason;
    return;
  }
  if (const auto* err = std::get_if<Error>(&msg.body)) {
    LOG_WARN("coordinator reported error", {"code", static_cast<int>(err->code)}, {"round", err->round},
             {"reason", err->message});
    // A restarted coordinator answers each message queued for it with "not
    // registered": say hello once (then at the retry interval), not once per
    // error, or each hello costs a full model sync.
    if (err->code == ErrorCode::kNotRegistered && (registered_ || now - last_hello_ >= kHelloRetry)) {
      registered_ = false;
      SendHello(now, out);
    }
    return;
  }
  if (std::holds_alternative<Heartbeat>(msg.body)) return;
  if (!registered_ || !configured_) {
    Reject(ErrorCode::kUnexpected, std::string(BodyName(msg.body)) + " before welcome", 0, out);
    return;
  }
  if (const auto* s = std::get_if<ModelSync>(&msg.body)) {
    target_round_ = s->round;
    target_digest_ = s->digest;
    training_round_.reset();
    out->jobs.push_back(SyncJob{*s, msg.bulk});
    return;
  }
  if (const auto* rs = std::get_if<RoundStart>(&msg.body)) {
    if (training_round_ == rs->round && !overlap_) return;  // already training it
    if (overlap_ && trains_outstanding_.count(rs->round)) return;  // already queued
    // Overlap: the round after the next may be announced before the
    // aggregate in between arrives (docs/overlap.md).
    const bool follows = fpld_own_ || (target_round_ && (*target_round_ + 1 == rs->round ||
                                                         (overlap_ && *target_round_ + 2 == rs->round)));
    if (!follows) {
      Reject(ErrorCode::kWrongRound,
             "round " + std::to_string(rs->round) + " starts from round " + std::to_string(rs->round - 1) +
                 " but this replica is at " + (target_round_ ? std::to_string(*target_round_) : "none"),
             rs->round, out);
      return;
    }
    if (!fpld_own_ && rs->model_version != target_digest_) {
      Reject(ErrorCode::kDigestMismatch, "round start names parameters this replica does not hold", rs->round,
             out);
      return;
    }
    if (rs->inner_steps < 1 || rs->inner_steps > 1000000) {
      Reject(ErrorCode::kBadPayload, "inner_steps out of range", rs->round, out);
      return;
    }
    training_round_ = rs->round;
    ++trains_outstanding_[rs->round];
    out->jobs.push_back(TrainJob{rs->round, rs->inner_steps, rs->model_version, rs->block});
    return;
  }
  if (const auto* fr = std::get_if<FcragRequest>(&msg.body)) {
    out->jobs.push_back(FcragJob{*fr, msg.bulk});
    return;
  }
  if (const auto* agg = std::get_if<Aggregate>(&msg.body)) {
    if (!target_round_ || *target_round_ + 1 != agg->round) {
      Reject(ErrorCode::kDigestMismatch,
             "aggregate for round " + std::to_string(agg->round) + " does not follow this replica's round " +
                 (target_round_ ? std::to_string(*target_round_) : "none"),
             agg->round, out);
      return;
    }
    target_round_ = agg->round;
    target_digest_ = agg->digest;
    if (training_round_ && *training_round_ <= agg->round) training_round_.reset();
    out->jobs.push_back(ApplyJob{*agg, msg.bulk});
    return;
  }
  Reject(ErrorCode::kUnexpected, std::string("a coordinator may not send ") + BodyName(msg.body), 0, out);
}

bool WorkerCore::SupersededTrain(uint32_t round) {
  auto it = trains_outstanding_.find(round);
  if (it == trains_outstanding_.end()) return false;
  const bool newer_queued = --it->second > 0;
  if (it->second <= 0) trains_outstanding_.erase(it);
  if (newer_queued) LOG_INFO("result of a superseded training job dropped", {"round", round});
  return newer_queued;
}

void WorkerCore::OnJobResult(JobResult result, WorkerTime now, WorkerOutput* out) {
  if (std::holds_alternative<ConfigureDone>(result)) return;
  if (auto* fr = std::get_if<FcragDone>(&result)) {
    Message m = Make(fr->reply);
    m.bulk = std::move(fr->bulk);
    out->messages.push_back(std::move(m));
    return;
  }
  if (auto* ev = std::get_if<EvalDone>(&result)) {
    if (!ev->digest_ok) {
      LOG_ERROR("replica digest differs from the coordinator's", {"round", ev->round},
                {"digest", DigestHex(ev->digest)});
    }
    out->messages.push_back(
        Make(EvalReport{ev->round, ev->val_loss, ev->val_tokens, ev->digest, {}, std::move(ev->rank_digests)}));
    return;
  }
  if (auto* tr = std::get_if<TrainDone>(&result)) {
    if (SupersededTrain(tr->upload.round)) return;
    if (overlap_) {
      // Several rounds are in flight; a round is closed once its aggregate
      // (or a later sync) has come.
      if (target_round_ && tr->upload.round > *target_round_) {
        Message m = Make(tr->upload);
        m.bulk = std::move(tr->bulk);
        out->messages.push_back(std::move(m));
      } else {
        LOG_WARN("training result for a closed round dropped", {"round", tr->upload.round});
      }
      return;
    }
    if (training_round_ != tr->upload.round) {
      LOG_WARN("training result for a closed round dropped", {"round", tr->upload.round});
      return;
    }
    training_round_.reset();
    Message m = tr->logits ? Make(*tr->logits) : Make(tr->upload);
    m.bulk = std::move(tr->bulk);
    out->messages.push_back(std::move(m));
    return;
  }
  auto& failed = std::get<JobFailed>(result);
  LOG_ERROR("job failed", {"round", failed.round}, {"reason", failed.what}, {"fatal", failed.fatal});
  if (failed.train && SupersededTrain(failed.round) && !failed.fatal) return;
  if (training_round_ == failed.round) training_round_.reset();
  out->messages.push_back(Make(Error{failed.code, failed.what, failed.round}));
  if (failed.fatal) {
    out->exit = true;
    // A site that lost a rank exits for a restart (EX_TEMPFAIL), not as broken.
    out->exit_code = failed.code == ErrorCode::kSiteDown ? 75 : 1;
    out->exit_reason = failed.what;
  }
}

void WorkerCore::SiteDown(const std::string& why, WorkerOutput* out) {
  LOG_ERROR("site down", {"reason", why});
  out->messages.push_back(Make(Error{ErrorCode::kSiteDown, why, training_round_.value_or(target_round_.value_or(0))}));
  out->exit = true;
  out->exit_code = 75;
  out->exit_reason = why;
}

void WorkerCore::OnTick(WorkerTime now, WorkerOutput* out) {
  if (!registered_) {
    if (now - last_hello_ >= kHelloRetry) SendHello(now, out);
    return;
  }
  if (now - last_from_coordinator_ > heartbeat_timeout_) {
    LOG_WARN("coordinator silent, saying hello again",
             {"silent_ms", static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                               now - last_from_coordinator_).count())});
    registered_ = false;
    training_round_.reset();
    SendHello(now, out);
    return;
  }
  if (now - last_heartbeat_ >= heartbeat_interval_) {
    last_heartbeat_ = now;
    out->messages.push_back(Make(Heartbeat{target_round_.value_or(0), training_round_ ? "training" : "idle"}));
  }
}

}  // namespace lowband
