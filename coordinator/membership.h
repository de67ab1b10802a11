// Membership: who takes part in the campaign. Owns the worker registry (by
// site, WorkerInfo), the transport peer -> site map, the pipeline topology
// (stage slots and each replica's welcome epoch) and the model-sync cache.
// Its rules: a hello registers or re-registers a site (checks: site name,
// ranks, pipeline endpoint and slot, the site limit) and is answered with
// Welcome + ModelSync (a pipeline worker waits, unwelcomed, until its
// replica is complete); a sync is packed once per round and digest (a
// snapshot), offered without its bytes and deferred while a round is being
// aggregated; a site that does not hold the offered parameters pulls the
// snapshot in chunks (SyncPull -> SyncChunk), which stays here while it is
// offered or pulled, whatever rounds commit meanwhile; an error-triggered re-sync is
// rate limited (one per committed round, eviction after
// kMaxUnconfirmedResyncs in a row); eviction and loss take a site out of the
// campaign; heartbeats go out every interval and a silent site is lost at
// the timeout.
//
// What the campaign is doing (round, phase, parameters) and what leaving
// does to the round and the evaluations belong to the core: Membership asks
// its Host. No I/O, no clock reads (time is passed in). Thread: the
// coordinator loop. Errors: a refused hello gets an Error reply (through the
// Host, counted) and changes nothing.
#pragma once

#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "codec/codec.h"
#include "codec/params.h"
#include "config/config.h"
#include "coordinator/aggregation.h"
#include "coordinator/campaign_mode.h"
#include "coordinator/core_types.h"
#include "coordinator/eval_records.h"
#include "coordinator/topology.h"
#include "protocol/messages.h"

namespace lowband {

class Membership {
 public:
  // Error-triggered re-syncs a site may cause in a row before it is evicted.
  static constexpr int kMaxUnconfirmedResyncs = 3;
  // Rounds a site may catch up from the aggregate log; more and it gets
  // the model (each logged round is one apply job on the site).
  static constexpr int kMaxCatchUpRounds = 256;

  using CampaignView = ::lowband::CampaignView;  // coordinator/core_types.h

  // What Membership needs of the rest of the core. Implemented by
  // CoordinatorCore, on the loop thread. Membership calls AfterLeave last,
  // its own state settled: the host may call back into it from there (a
  // round that closes sends syncs).
  class Host {
   public:
    virtual ~Host() = default;
    virtual CampaignView View() const = 0;
    // A message stamped with the core's campaign id and sequence number.
    virtual Message Make(Body body) = 0;
    // Error reply, counted under `reason` (default: the code's name).
    virtual void Reply(const std::string& peer, ErrorCode code, const std::string& what, uint32_t round,
                       CoreOutput* out, const char* reason = nullptr) = 0;
    // Counted as rejected under `reason`, without a reply.
    virtual void CountRejected(const char* reason) = 0;
    // The site's upload for the open round, if any, is void.
    virtual void DropUpload(const std::string& site) = 0;
    // The site left (lost, evicted): its FC-RAG exchanges are over.
    virtual void SiteGone(const std::string& site, TimePoint now, CoreOutput* out) = 0;
    // A worker left: the round or an evaluation may be complete now.
    virtual void AfterLeave(TimePoint now, CoreOutput* out) = 0;
    // While training: RoundStart for the open round (open_only) or every
    // round the worker has not heard of yet (overlap).
    virtual void AnnounceRounds(WorkerInfo& w, bool open_only, CoreOutput* out) = 0;
  };

  // `config`, `mode`, `evals` and `host` outlive the Membership.
  Membership(const CampaignConfig& config, const CampaignMode* mode, EvalRecords* evals, Host* host);

  // A hello from `peer` (the campaign not finished). Registers the site
  // (a restarted worker re-registers under its new peer; its earlier upload
  // and evaluations are void) and welcomes it, or replies with an Error.
  // True when the site is (still) registered and joined.
  bool HandleHello(const std::string& peer, const Hello& m, TimePoint now, CoreOutput* out);

  // ModelSync of the committed parameters (the site's view of them) to `w`;
  // it evaluates the committed round next. While a round is being
  // aggregated the sync waits (TakeDeferredSync[s]).
  void SendSync(WorkerInfo& w, CoreOutput* out);
  // A chunk of a snapshot for `w`, or an Error reply for a pull outside
  // it. False when the snapshot is no longer held (idle past the
  // heartbeat timeout, or a restarted coordinator): the caller offers the
  // committed parameters again.
  bool HandlePull(WorkerInfo& w, const SyncPull& pull, TimePoint now, CoreOutput* out);
  // Snapshots held now (each a whole packed model), for tests and metrics.
  size_t snapshots() const { return snapshots_.size(); }

  // The Aggregate of committed round `round` (OneAggregateForAll modes),
  // applied to parameters of digest `base`: kept, newest last, while all
  // of them together are smaller than half the model, for sites that come back
  // a few rounds behind with their replica (CatchUp).
  void LogAggregate(uint32_t round, uint64_t base, const Aggregate& aggregate, const Frame& bulk);
  size_t logged_aggregates() const { return aggregate_log_.size(); }
  // An error-triggered re-sync of `w`'s replica, rate limited (one per
  // committed round; eviction after kMaxUnconfirmedResyncs in a row). True
  // when the model was sent.
  bool Resync(WorkerInfo& w, const std::string& why, TimePoint now, CoreOutput* out);
  // Takes `w` out of the campaign: no quorum, its pending upload/evaluation
  // dropped, CampaignEnd{reason} sent; it may rejoin only by saying hello.
  void Evict(WorkerInfo& w, const std::string& reason, TimePoint now, CoreOutput* out);
  // `w` is gone (silent, its site down): like Evict without CampaignEnd.
  void MarkLost(WorkerInfo& w, const std::string& why, TimePoint now, CoreOutput* out);
  // Liveness (a site silent for heartbeat_timeout_ms is lost) and
  // heartbeats every heartbeat_interval_ms. Stops if the campaign ends.
  void OnTick(TimePoint now, CoreOutput* out);

  // Syncs deferred while a round was aggregated: whether `site` asked (and
  // forget it), and every one left.
  bool TakeDeferredSync(const std::string& site) { return syncs_after_close_.erase(site) > 0; }
  std::set<std::string> TakeDeferredSyncs();

  const std::map<std::string, WorkerInfo>& workers() const { return workers_; }
  // The registry, for the per-round fields the core keeps on a worker
  // (synced and announced rounds, step times, confirmations).
  std::map<std::string, WorkerInfo>& mutable_workers() { return workers_; }
  WorkerInfo* Find(const std::string& site);
  // The joined worker that `peer` speaks for, or nullptr (not registered,
  // replaced by a newer peer, lost or evicted).
  WorkerInfo* JoinedAt(const std::string& peer);
  // Site name for a transport peer, or "" if unknown.
  std::string SiteOfPeer(const std::string& peer) const;
  int LiveWorkers() const;
  bool IsLive(const std::string& site) const;

 private:
  // Welcome (+ ModelSync, + RoundStart while training) to every worker of
  // `replica`, once all its stages are held: neighbours learn each other's
  // endpoints, a replacement's neighbours re-configure.
  void WelcomeReplica(int replica, CoreOutput* out);
  void SendWelcome(WorkerInfo& w, CoreOutput* out);
  // A site saying hello with the replica of an earlier round it held (its
  // hello says which): an offer of those parameters (checked, not sent)
  // and the logged aggregates since, when they are all logged (LogAggregate
  // keeps less than half the model). False (nothing sent) otherwise.
  bool CatchUp(WorkerInfo& w, CoreOutput* out);
  // Common to loss and eviction: slot released, upload and evaluations and
  // FC-RAG exchanges dropped.
  void Leave(WorkerInfo& w, TimePoint now, CoreOutput* out);

  const CampaignConfig& config_;
  const CampaignMode* mode_;
  EvalRecords* evals_;
  Host* host_;
  std::map<std::string, WorkerInfo> workers_;  // by site name
  std::map<std::string, std::string> peer_to_site_;
  std::unique_ptr<Topology> topology_;     // pipeline campaigns: stage slots
  std::map<int, uint32_t> replica_epoch_;  // welcomes of each replica so far
  // Packed model syncs by (round, digest): offered to sites and pulled by
  // them. One is dropped once neither offered nor pulled for the heartbeat
  // timeout, or (the oldest first) when more than MaxSnapshots() are held.
  struct Snapshot {
    Encoded payload;
    TimePoint last_used;
  };
  size_t MaxSnapshots() const;
  // Drops snapshots idle past the timeout, then the oldest until `room`
  // more fit under MaxSnapshots().
  void DropIdleSnapshots(size_t room = 0);
  std::map<std::pair<uint32_t, uint64_t>, Snapshot> snapshots_;
  TimePoint now_{};  // the latest time handed in (SendSync is given none)
  struct LoggedAggregate {
    uint64_t base = 0;  // digest of the parameters it applies to
    Aggregate aggregate;
    Frame bulk;
  };
  std::deque<LoggedAggregate> aggregate_log_;
  uint64_t logged_bytes_ = 0;
  std::set<std::string> syncs_after_close_;
};

}  // namespace lowband
