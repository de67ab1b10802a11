#include "worker/core.h"

#include <algorithm>

#include "base/hash.h"
#include "base/log.h"
#include "codec/params.h"
#include "protocol/wire.h"

namespace lowband {
namespace {
constexpr std::chrono::milliseconds kHelloRetry{1000};

// The same campaign settings for this site (its index among the sites and
// the heartbeat settings aside): a Welcome repeated, not a new setup.
bool SameSetup(const Welcome& a, Welcome b) {
  b.worker_index = a.worker_index;
  b.heartbeat_interval_ms = a.heartbeat_interval_ms;
  b.heartbeat_timeout_ms = a.heartbeat_timeout_ms;
  Message ma, mb;
  ma.body = a;
  mb.body = std::move(b);
  return EncodeMessage(ma)[0].bytes() == EncodeMessage(mb)[0].bytes();
}

bool SameOffer(const ModelSync& a, const ModelSync& b) {
  return a.round == b.round && a.digest == b.digest && a.blob.byte_length == b.blob.byte_length &&
         a.blob.checksum == b.blob.checksum;
}

double Seconds(WorkerClock::duration d) { return std::chrono::duration<double>(d).count(); }
}  // namespace

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
  Hello h = hello_;
  if (target_round_ && !transferring() && !fpld_own_) {  // what its replica holds once its jobs are done
    h.held_round = *target_round_;
    h.held_digest = target_digest_;
  }
  out->messages.push_back(Make(std::move(h)));
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
    heartbeat_interval_ = std::chrono::milliseconds(std::max<uint32_t>(w->heartbeat_interval_ms, 10));
    heartbeat_timeout_ = std::chrono::milliseconds(std::max<uint32_t>(w->heartbeat_timeout_ms, 100));
    if (welcome_ && SameSetup(*welcome_, *w)) {
      // Said hello again (the coordinator seemed silent, or its Welcome was
      // slow to come): the replica, and a model transfer in flight, stay.
      // A coordinator that registered the site anew offers the model next.
      LOG_INFO("welcomed again, same campaign settings", {"site", hello_.site},
               {"round", target_round_ ? static_cast<long long>(*target_round_) : -1LL},
               {"pulling", pull_.has_value()});
      welcome_ = *w;
      return;
    }
    overlap_ = w->training.overlap;
    const ModelSpec& own = hello_.own_model;
    fpld_own_ = w->fpld.enabled && own.layers > 0 &&
                !(own.layers == w->model.layers && own.d_model == w->model.d_model && own.heads == w->model.heads);
    target_round_.reset();
    training_round_.reset();
    AbandonTransfer("a new Welcome");
    welcome_ = *w;
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
    HandleOffer(*s, now, out);
    return;
  }
  if (const auto* c = std::get_if<SyncChunk>(&msg.body)) {
    HandleChunk(*c, msg.bulk, now, out);
    return;
  }
  if (transferring() && (std::holds_alternative<RoundStart>(msg.body) || std::holds_alternative<Aggregate>(msg.body) ||
                         std::holds_alternative<FcragRequest>(msg.body))) {
    if (held_.size() >= kMaxHeld) {
      AbandonTransfer("too many messages waiting for it");
      Reject(ErrorCode::kBadPayload, "model transfer given up: " + std::to_string(kMaxHeld) + " messages waited for it",
             target_round_.value_or(0), out);
      return;
    }
    held_.push_back(msg);
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

void WorkerCore::HandleOffer(const ModelSync& s, WorkerTime now, WorkerOutput* out) {
  if (pull_ && SameOffer(pull_->offer, s)) {
    // Offered again (a re-registration): go on from the last verified
    // chunk; requests in flight may be lost, so ask again from there.
    LOG_INFO("model offered again; the transfer goes on", {"round", s.round},
             {"verified_bytes", pull_->verified}, {"bytes", s.blob.byte_length});
    pull_->asked = pull_->verified;
    pull_->last_chunk = now;
    AskChunks(out);
    return;
  }
  if (offer_ && SameOffer(*offer_, s)) return;  // being checked already
  if (s.blob.codec != CodecKind::kDenseFp32 || s.blob.byte_length == 0 ||
      s.blob.byte_length > (uint64_t{1} << 40)) {
    Reject(ErrorCode::kBadPayload,
           std::string("model sync offers a ") + std::to_string(s.blob.byte_length) + "-byte " +
               CodecName(s.blob.codec) + " payload; expected dense_fp32 of 1 byte to 1 TiB",
           s.round, out);
    return;
  }
  // A newer offer supersedes an older one and whatever waited for it (the
  // coordinator announces its rounds again after a sync).
  AbandonTransfer("a newer offer");
  target_round_ = s.round;
  target_digest_ = s.digest;
  training_round_.reset();
  offer_ = s;
  out->jobs.push_back(SyncJob{s, Frame(), ++offer_seq_});
}

void WorkerCore::AskChunks(WorkerOutput* out) {
  Pull& p = *pull_;
  const uint64_t total = p.offer.blob.byte_length;
  if (p.asked < p.verified) p.asked = p.verified;
  const double budget = p.rate > 0 ? std::min(p.rate * kPullSeconds, kMaxInFlightBytes) : 4.0 * kMinChunkBytes;
  const auto chunk = static_cast<uint64_t>(std::clamp(budget / 2, double{kMinChunkBytes}, double{kMaxChunkBytes}));
  const auto in_flight = static_cast<uint64_t>(std::max(budget, double(chunk)));
  while (p.asked < total && p.asked - p.verified < in_flight) {
    const uint64_t length = std::min(chunk, total - p.asked);
    out->messages.push_back(Make(SyncPull{p.offer.round, p.offer.digest, p.asked, static_cast<uint32_t>(length)}));
    p.asked += length;
  }
}

void WorkerCore::HandleChunk(const SyncChunk& c, const Frame& bytes, WorkerTime now, WorkerOutput* out) {
  // Chunks come in the order asked; one for another transfer, or a repeat
  // of bytes already verified (asked again after a re-offer), is dropped.
  if (!pull_ || c.round != pull_->offer.round || c.digest != pull_->offer.digest || c.offset != pull_->verified ||
      c.length != bytes.size() || c.offset + c.length > pull_->offer.blob.byte_length) {
    LOG_DEBUG("model chunk not waited for, dropped", {"round", c.round}, {"offset", c.offset});
    return;
  }
  Pull& p = *pull_;
  // The wire checked the chunk against its checksum; the copy is checked
  // once whole, against the offer's.
  std::copy(bytes.begin(), bytes.end(), p.data.begin() + static_cast<std::ptrdiff_t>(c.offset));
  p.verified += c.length;
  p.last_chunk = now;
  // The rate over spans long enough that chunks released together (a
  // loop iteration, a burst) do not look infinitely fast.
  if (now - p.mark_time >= kRateSpan) {
    const double rate = static_cast<double>(p.verified - p.mark_bytes) / Seconds(now - p.mark_time);
    p.rate = p.rate > 0 ? 0.5 * p.rate + 0.5 * rate : rate;
    p.mark_bytes = p.verified;
    p.mark_time = now;
  }
  if (p.verified < p.offer.blob.byte_length) {
    // Progress every tenth of the way (a 1B-parameter model on a thin link
    // takes minutes).
    const uint64_t total = p.offer.blob.byte_length;
    if ((p.verified - c.length) * 10 / total != p.verified * 10 / total) {
      LOG_INFO("model transfer", {"round", p.offer.round}, {"percent", p.verified * 100 / total},
               {"bytes", p.verified}, {"of", total}, {"mb_per_s", p.rate / 1e6});
    }
    AskChunks(out);
    return;
  }
  const uint64_t checksum = BulkChecksum(p.data.data(), p.data.size());
  if (checksum != p.offer.blob.checksum) {
    const ModelSync offer = p.offer;
    AbandonTransfer("checksum mismatch");
    Reject(ErrorCode::kBadPayload,
           "model transfer of round " + std::to_string(offer.round) + " hashes to " + DigestHex(checksum) +
               ", the offer says " + DigestHex(offer.blob.checksum),
           offer.round, out);
    return;
  }
  LOG_INFO("model received", {"round", p.offer.round}, {"bytes", p.offer.blob.byte_length},
           {"seconds", Seconds(now - p.started)});
  out->jobs.push_back(SyncJob{p.offer, Frame(std::move(p.data)), 0});
  pull_.reset();
  ReleaseHeld(now, out);
}

void WorkerCore::AbandonTransfer(const char* why) {
  if (pull_) {
    LOG_INFO("model transfer abandoned", {"reason", why}, {"round", pull_->offer.round},
             {"verified_bytes", pull_->verified});
  }
  offer_.reset();
  pull_.reset();
  held_.clear();
}

void WorkerCore::ReleaseHeld(WorkerTime now, WorkerOutput* out) {
  std::deque<Message> held = std::move(held_);
  held_.clear();
  while (!held.empty()) {
    Message m = std::move(held.front());
    held.pop_front();
    HandleMessage(m, now, out);
    if (transferring()) {  // a held message started another transfer: the rest wait for it
      for (auto& later : held) held_.push_back(std::move(later));
      return;
    }
  }
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
  if (const auto* need = std::get_if<SyncNeeded>(&result)) {
    if (!offer_ || need->offer != offer_seq_) return;  // superseded
    Pull p;
    p.offer = *offer_;
    offer_.reset();
    p.data.resize(p.offer.blob.byte_length);
    p.started = now;
    p.last_chunk = now;
    p.mark_time = now;
    LOG_INFO("pulling the model", {"round", p.offer.round}, {"bytes", p.offer.blob.byte_length});
    pull_ = std::move(p);
    AskChunks(out);
    return;
  }
  if (auto* fr = std::get_if<FcragDone>(&result)) {
    Message m = Make(fr->reply);
    m.bulk = std::move(fr->bulk);
    out->messages.push_back(std::move(m));
    return;
  }
  if (auto* ev = std::get_if<EvalDone>(&result)) {
    const bool offer_held = offer_ && ev->offer != 0 && ev->offer == offer_seq_;
    if (offer_held) offer_.reset();
    if (!ev->digest_ok) {
      LOG_ERROR("replica digest differs from the coordinator's", {"round", ev->round},
                {"digest", DigestHex(ev->digest)});
    }
    out->messages.push_back(
        Make(EvalReport{ev->round, ev->val_loss, ev->val_tokens, ev->digest, {}, std::move(ev->rank_digests)}));
    if (offer_held) ReleaseHeld(now, out);
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
  if (offer_ && failed.offer != 0 && failed.offer == offer_seq_) {
    AbandonTransfer("its check failed");  // the coordinator re-syncs on the error
    target_round_.reset();
  }
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
  if (pull_ && pull_->asked > pull_->verified && now - pull_->last_chunk > heartbeat_timeout_ / 2) {
    // Chunks asked for and none came: the requests (or the replies) were
    // lost; ask again from the last verified byte.
    LOG_INFO("model chunks overdue, asking again", {"verified_bytes", pull_->verified});
    pull_->asked = pull_->verified;
    pull_->last_chunk = now;
    pull_->rate = 0;
    pull_->mark_bytes = pull_->verified;
    pull_->mark_time = now;
    AskChunks(out);
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
