#include "coordinator/membership.h"

#include <algorithm>
#include <iterator>
#include <optional>

#include "base/hash.h"
#include "base/log.h"
#include "coordinator/welcome.h"

namespace lowband {
namespace {

// The data-sampling seed depends on the campaign seed and the site name only,
// so a site samples the same batches whatever order workers join in.
uint64_t DataSeedFor(uint64_t campaign_seed, const std::string& site) {
  return Fnv1a64(site.data(), site.size(), campaign_seed ^ 0x9e3779b97f4a7c15ull);
}

}  // namespace

Membership::Membership(const CampaignConfig& config, const CampaignMode* mode, EvalRecords* evals, Host* host)
    : config_(config), mode_(mode), evals_(evals), host_(host) {
  if (config_.pipeline.stages > 1) topology_ = std::make_unique<Topology>(config_.pipeline.stages, config_.pipeline.replicas);
}

WorkerInfo* Membership::Find(const std::string& site) {
  auto it = workers_.find(site);
  return it == workers_.end() ? nullptr : &it->second;
}

WorkerInfo* Membership::JoinedAt(const std::string& peer) {
  const std::string site = SiteOfPeer(peer);
  auto it = workers_.find(site);
  if (site.empty() || it == workers_.end() || it->second.peer != peer || it->second.state != WorkerState::kJoined) {
    return nullptr;
  }
  return &it->second;
}

std::string Membership::SiteOfPeer(const std::string& peer) const {
  auto it = peer_to_site_.find(peer);
  return it == peer_to_site_.end() ? std::string() : it->second;
}

int Membership::LiveWorkers() const {
  int n = 0;
  for (const auto& [site, w] : workers_) n += w.state == WorkerState::kJoined;
  return n;
}

bool Membership::IsLive(const std::string& site) const {
  auto w = workers_.find(site);
  return w != workers_.end() && w->second.state == WorkerState::kJoined;
}

bool Membership::HandleHello(const std::string& peer, const Hello& m, TimePoint now, CoreOutput* out) {
  now_ = now;
  if (m.site.empty() || m.site.size() > 128) {
    host_->Reply(peer, ErrorCode::kMalformed, "hello needs a site name of 1..128 characters", 0, out);
    return false;
  }
  // Ranks multiply the tokens a site may claim (and so its weight): no more
  // than its site entry says, or the most a site may have.
  uint32_t max_ranks = kMaxSiteRanks;
  for (const SiteConfig& s : config_.sites) {
    if (s.name == m.site) max_ranks = static_cast<uint32_t>(std::max(1, s.ranks));
  }
  if (m.ranks > max_ranks) {
    host_->Reply(peer, ErrorCode::kBadPayload,
                 "hello says site " + m.site + " has " + std::to_string(m.ranks) + " ranks; at most " +
                     std::to_string(max_ranks) + " (its site.ranks)",
                 0, out);
    return false;
  }
  auto existing = workers_.find(m.site);
  const bool rejoin = existing != workers_.end();
  std::optional<StageSlot> slot;
  if (topology_) {
    if (m.peer_endpoint.empty()) {
      host_->Reply(peer, ErrorCode::kMalformed, "a pipeline campaign needs the worker's peer endpoint (site.peer)", 0,
                   out);
      return false;
    }
    if (rejoin && !existing->second.welcomed && existing->second.state == WorkerState::kJoined &&
        existing->second.peer == peer) {
      existing->second.last_seen = now;  // still waiting for its replica: a repeated hello
      existing->second.hello = m;
      return false;
    }
    slot = topology_->Assign(m.site);
    if (!slot) {
      host_->Reply(peer, ErrorCode::kUnexpected,
                   "every pipeline slot (" + std::to_string(config_.pipeline.stages) + " stages x " +
                       std::to_string(config_.pipeline.replicas) + " replicas) is held",
                   0, out);
      return false;
    }
  }
  if (!topology_ && rejoin && existing->second.state == WorkerState::kJoined && existing->second.peer == peer) {
    // The same connection says hello again: every second until it has
    // processed its Welcome (a large model takes longer than that to arrive,
    // and to build on a GPU), or when it thought the coordinator silent. Its
    // Welcome and parameters are already on their way down this connection,
    // ahead of anything sent now: a fresh Welcome registers it again, while
    // a second copy of the model would only queue behind the first (one site
    // alone got an 85M-parameter model three times). Its digest at the next
    // evaluation still proves its replica.
    WorkerInfo& w = existing->second;
    w.last_seen = now;
    w.hello = m;
    LOG_DEBUG("repeated hello on the same connection: welcome again, no new sync", {"site", m.site});
    SendWelcome(w, out);
    if (host_->View().training) host_->AnnounceRounds(w, false, out);
    return false;
  }
  if (!rejoin && static_cast<int>(workers_.size()) >= std::max(config_.quorum.expected_workers, 1) * 4) {
    host_->Reply(peer, ErrorCode::kUnexpected, "too many sites registered", 0, out);
    return false;
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
  host_->DropUpload(m.site);  // a restarted worker's earlier upload, if any, is void
  evals_->Forget(m.site);     // it evaluates what it is synced to next
  const CampaignView v = host_->View();
  LOG_INFO(rejoin ? "worker rejoined" : "worker joined", {"site", m.site}, {"device", m.device}, {"ranks", m.ranks},
           {"step_time_ms", m.step_time_ms}, {"train_tokens", m.train_tokens}, {"val_tokens", m.val_tokens},
           {"round", v.committed_round});

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
    if (mode_->Adopts(w) && !CatchUp(w, out)) SendSync(w, out);
    w.announced_round = host_->View().committed_round;
    if (host_->View().training) host_->AnnounceRounds(w, false, out);
  }
  return true;
}

void Membership::SendWelcome(WorkerInfo& w, CoreOutput* out) {
  Welcome wel;
  wel.worker_id = w.site;
  wel.model = ToSpec(config_.model);
  wel.training = ToSpec(config_.training);
  wel.codec = ToSpec(config_.codec);
  wel.data_seed = DataSeedFor(config_.training.seed, w.site);
  wel.worker_index = static_cast<int>(std::distance(workers_.begin(), workers_.find(w.site)));
  wel.heartbeat_interval_ms = config_.network.heartbeat_interval_ms;
  wel.heartbeat_timeout_ms = config_.network.heartbeat_timeout_ms;
  mode_->FillWelcome(&wel);
  if (config_.fcrag.enabled) wel.fcrag = ToSpec(config_.fcrag);
  if (topology_) {
    wel.pipeline = ToSpec(config_.pipeline);
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
  out->messages.push_back({w.peer, host_->Make(wel)});
}

void Membership::WelcomeReplica(int replica, CoreOutput* out) {
  // Step numbers restart from the new epoch on every stage (protocol/messages.h).
  uint32_t& epoch = replica_epoch_[replica];
  epoch = (epoch + 1) % 4096;
  for (int s = 0; s < config_.pipeline.stages; ++s) {
    auto it = workers_.find(topology_->SiteAt(StageSlot{s, replica}));
    if (it == workers_.end()) continue;
    WorkerInfo& w = it->second;
    w.welcomed = true;
    host_->DropUpload(w.site);  // a re-configured stage trains the round again
    SendWelcome(w, out);
    SendSync(w, out);
    if (host_->View().training) host_->AnnounceRounds(w, true, out);
  }
  LOG_INFO("pipeline replica complete", {"replica", replica}, {"stages", config_.pipeline.stages});
}

void Membership::Leave(WorkerInfo& w, TimePoint now, CoreOutput* out) {
  if (topology_) topology_->Release(w.site);
  host_->DropUpload(w.site);
  evals_->Forget(w.site);
  host_->SiteGone(w.site, now, out);
}

void Membership::Evict(WorkerInfo& w, const std::string& reason, TimePoint now, CoreOutput* out) {
  const bool was_joined = w.state == WorkerState::kJoined;
  w.state = WorkerState::kEvicted;
  Leave(w, now, out);
  const uint32_t round = host_->View().committed_round;
  if (was_joined) out->messages.push_back({w.peer, host_->Make(CampaignEnd{reason, round})});
  LOG_WARN("worker evicted", {"site", w.site}, {"reason", reason}, {"round", round}, {"live", LiveWorkers()});
  host_->AfterLeave(now, out);
}

void Membership::MarkLost(WorkerInfo& w, const std::string& why, TimePoint now, CoreOutput* out) {
  w.state = WorkerState::kLost;
  Leave(w, now, out);
  LOG_WARN("worker lost", {"site", w.site}, {"reason", why}, {"round", host_->View().committed_round},
           {"live", LiveWorkers()});
  host_->AfterLeave(now, out);
}

// Every re-sync sends a whole model, so a site that keeps reporting a bad
// replica (buggy or hostile) must not make the coordinator send models
// forever: one re-sync per committed round (later reports in the same round
// wait for the one in flight), and a site whose replica is still wrong after
// kMaxUnconfirmedResyncs re-syncs in a row, with no accepted upload or
// matching evaluation between them, is evicted.
bool Membership::Resync(WorkerInfo& w, const std::string& why, TimePoint now, CoreOutput* out) {
  now_ = now;
  if (w.state != WorkerState::kJoined) return false;
  const uint32_t round = host_->View().committed_round;
  if (w.last_resync_round && *w.last_resync_round == round) {
    host_->CountRejected("resync_limited");
    LOG_DEBUG("re-sync already sent this round", {"site", w.site}, {"round", round}, {"why", why});
    return false;
  }
  if (w.unconfirmed_resyncs >= kMaxUnconfirmedResyncs) {
    host_->CountRejected("resync_limited");
    Evict(w,
          "evicted: its replica was still wrong after " + std::to_string(kMaxUnconfirmedResyncs) +
              " re-syncs in a row (" + why + ")",
          now, out);
    return false;
  }
  ++w.unconfirmed_resyncs;
  w.last_resync_round = round;
  LOG_WARN("re-syncing a site's replica", {"site", w.site}, {"round", round}, {"why", why},
           {"attempt", w.unconfirmed_resyncs});
  SendSync(w, out);
  return true;
}

void Membership::SendSync(WorkerInfo& w, CoreOutput* out) {
  const CampaignView v = host_->View();
  if (v.closing) {  // the parameters are being aggregated: the new ones go out after (FinishClose)
    syncs_after_close_.insert(w.site);
    return;
  }
  // Sites synced in the same round to the same parameters share one packed
  // snapshot (a join storm packs the model once).
  const uint64_t digest = mode_->DigestFor(w, v.digest);
  const auto key = std::make_pair(v.committed_round, digest);
  auto snap = snapshots_.find(key);
  if (snap == snapshots_.end()) {
    StatusOr<Encoded> enc = mode_->SyncPayload(w, *v.params, *v.aggregation);
    // Dense fp32 of our own parameters cannot fail; a failure is a bug.
    LOWBAND_CHECK(enc.ok());
    DropIdleSnapshots(/*room=*/1);
    snap = snapshots_.emplace(key, Snapshot{std::move(enc).value(), now_}).first;
  }
  snap->second.last_used = now_;
  // Offered without its bytes: the site checks its own digest first.
  Message m = host_->Make(ModelSync{v.committed_round, digest, snap->second.payload.header});
  w.synced_round = v.committed_round;
  // It evaluates the committed round next and no earlier pending one.
  evals_->Forget(w.site);
  evals_->Expect(v.committed_round, w.site);
  out->messages.push_back({w.peer, std::move(m)});
}

bool Membership::HandlePull(WorkerInfo& w, const SyncPull& pull, TimePoint now, CoreOutput* out) {
  now_ = now;
  auto snap = snapshots_.find(std::make_pair(pull.round, pull.digest));
  if (snap == snapshots_.end()) {
    host_->CountRejected("sync_gone");
    LOG_INFO("model sync pulled is no longer held; offering the committed parameters", {"site", w.site},
             {"round", pull.round}, {"digest", DigestHex(pull.digest)});
    return false;
  }
  const Frame& bytes = snap->second.payload.bulk;
  if (pull.offset >= bytes.size()) {
    host_->Reply(w.peer, ErrorCode::kBadPayload,
                 "sync pull at offset " + std::to_string(pull.offset) + " of a " + std::to_string(bytes.size()) +
                     "-byte model",
                 pull.round, out);
    return true;
  }
  snap->second.last_used = now;
  const size_t length = static_cast<size_t>(std::min<uint64_t>(pull.length, bytes.size() - pull.offset));
  const uint8_t* from = bytes.data() + pull.offset;
  SyncChunk chunk{pull.round, pull.digest, pull.offset, static_cast<uint32_t>(length), BulkChecksum(from, length)};
  Message m = host_->Make(chunk);
  m.bulk = Frame(from, from + length);
  out->messages.push_back({w.peer, std::move(m)});
  return true;
}

size_t Membership::MaxSnapshots() const {
  // One per stage of a pipeline round, plus rounds still being pulled.
  return static_cast<size_t>(std::max(config_.pipeline.stages, 1)) + 2;
}

void Membership::DropIdleSnapshots(size_t room) {
  const auto idle = std::chrono::milliseconds(config_.network.heartbeat_timeout_ms);
  for (auto it = snapshots_.begin(); it != snapshots_.end();) {
    it = now_ - it->second.last_used > idle ? snapshots_.erase(it) : std::next(it);
  }
  while (!snapshots_.empty() && snapshots_.size() + room > MaxSnapshots()) {
    auto oldest = std::min_element(snapshots_.begin(), snapshots_.end(), [](const auto& a, const auto& b) {
      return a.second.last_used < b.second.last_used;
    });
    LOG_WARN("model sync snapshot dropped while possibly still pulled (too many held)",
             {"round", oldest->first.first}, {"digest", DigestHex(oldest->first.second)});
    snapshots_.erase(oldest);
  }
}

void Membership::LogAggregate(uint32_t round, uint64_t base, const Aggregate& aggregate, const Frame& bulk) {
  if (!aggregate_log_.empty() && aggregate_log_.back().aggregate.round + 1 != round) {
    aggregate_log_.clear();  // a gap (a resumed campaign): start over
    logged_bytes_ = 0;
  }
  aggregate_log_.push_back(LoggedAggregate{base, aggregate, bulk});
  logged_bytes_ += bulk.size();
  // Half the model at most: the log is resident memory beside the
  // parameters, the round's uploads and the payload being written; with
  // up to the whole model (an aggregate of 87% of it, as 64 sites'
  // independent top-k choices make) the coordinator's peak would exceed 3x
  // the model's fp32 size (bench/coordinator_scale), for a catch-up that
  // saves an eighth of a model transfer.
  const uint64_t model_bytes = static_cast<uint64_t>(host_->View().params->layout.numel()) * sizeof(float);
  while (!aggregate_log_.empty() && 2 * logged_bytes_ >= model_bytes) {
    logged_bytes_ -= aggregate_log_.front().bulk.size();
    aggregate_log_.pop_front();
  }
}

bool Membership::CatchUp(WorkerInfo& w, CoreOutput* out) {
  const CampaignView v = host_->View();
  const Hello& h = w.hello;
  if (topology_ || !mode_->OneAggregateForAll() || v.closing || h.held_digest == 0 ||
      h.held_round >= v.committed_round || aggregate_log_.empty() ||
      aggregate_log_.back().aggregate.round != v.committed_round || aggregate_log_.front().aggregate.round > h.held_round + 1) {
    return false;
  }
  const auto first = aggregate_log_.begin() + (h.held_round + 1 - aggregate_log_.front().aggregate.round);
  if (first->base != h.held_digest) return false;  // it holds other parameters of that round
  if (aggregate_log_.end() - first > kMaxCatchUpRounds) return false;
  uint64_t bytes = 0;
  for (auto it = first; it != aggregate_log_.end(); ++it) bytes += it->bulk.size();
  // An offer of what it holds (no payload kept: a site that turns out not
  // to hold it pulls, is told the snapshot is gone and gets the model).
  ModelSync offer{h.held_round, h.held_digest, {}};
  offer.blob.codec = CodecKind::kDenseFp32;
  offer.blob.num_elements = static_cast<uint64_t>(v.params->layout.numel());
  offer.blob.layout_digest = v.params->layout.Digest();
  offer.blob.byte_length = offer.blob.num_elements * sizeof(float);
  out->messages.push_back({w.peer, host_->Make(offer)});
  for (auto it = first; it != aggregate_log_.end(); ++it) {
    Message m = host_->Make(it->aggregate);
    m.bulk = it->bulk;
    out->messages.push_back({w.peer, std::move(m)});
  }
  LOG_INFO("site catches up with the logged updates", {"site", w.site}, {"from_round", h.held_round},
           {"to_round", v.committed_round}, {"bytes", bytes}, {"model_bytes", offer.blob.byte_length});
  w.synced_round = v.committed_round;
  evals_->Forget(w.site);
  evals_->Expect(v.committed_round, w.site);
  return true;
}

std::set<std::string> Membership::TakeDeferredSyncs() {
  std::set<std::string> syncs = std::move(syncs_after_close_);
  syncs_after_close_.clear();
  return syncs;
}

void Membership::OnTick(TimePoint now, CoreOutput* out) {
  now_ = now;
  DropIdleSnapshots();
  const auto interval = std::chrono::milliseconds(config_.network.heartbeat_interval_ms);
  const auto timeout = std::chrono::milliseconds(config_.network.heartbeat_timeout_ms);
  for (auto& [site, w] : workers_) {
    if (w.state != WorkerState::kJoined) continue;
    if (now - w.last_seen > timeout) {
      MarkLost(w, "no message for " + std::to_string(config_.network.heartbeat_timeout_ms) + " ms", now, out);
      if (host_->View().finished) return;
      continue;
    }
    if (now - w.last_heartbeat_sent >= interval) {
      w.last_heartbeat_sent = now;
      const CampaignView v = host_->View();
      out->messages.push_back({w.peer, host_->Make(Heartbeat{v.committed_round, v.phase})});
    }
  }
}

}  // namespace lowband
