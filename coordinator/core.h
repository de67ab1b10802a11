// CoordinatorCore: the campaign state machine. Transport-free: decoded
// messages, control requests and clock ticks go in; messages to send, round
// records and the end of the campaign come out. No sockets, threads, disk or
// clock reads (time is passed in). Lives on the coordinator loop thread.
//
// Campaign:
//   waiting  -- expected_workers joined, welcomed and synced -->
//   round 0 evaluation (every worker evaluates the initial parameters) -->
//   round r = 1..R: RoundStart to every synced worker; collect DeltaUploads;
//     close when every live participant uploaded, or at the deadline with
//     >= min_workers uploads; mean pseudo-gradient -> outer optimizer ->
//     update u; theta_r = theta_{r-1} - u; Aggregate(u, digest(theta_r)) to
//     every synced worker; collect EvalReports (val loss + digest) -> record.
//   finished: CampaignEnd to every worker.
// Operator control (HandleControl): `round pause` holds the next RoundStart
// once the current round is committed (phase held); `round resume` starts it;
// `round close` closes the open round now with the uploads received (>= 1,
// min_workers ignored); `campaign abort` fails the campaign; `worker evict
// SITE` drops the site (state evicted: no quorum, its pending upload/eval
// dropped, CampaignEnd "evicted by operator" sent to it, later messages
// refused as unregistered). An evicted site may rejoin only by saying hello
// again (a restarted worker), like a lost one.
// A worker that joins (or rejoins) gets Welcome + ModelSync(theta_c) and, if a
// round is collecting uploads, that round's RoundStart too.
//
// Every message is checked against the state before it is used; anything
// unexpected gets an Error reply and changes nothing.
//
// Pieces (each its own header, contract and test file): CampaignMode
// (campaign_mode.h: what differs between plain, pipeline, ParaBlock,
// personalised and FPLD campaigns, chosen once), EvalRecords
// (eval_records.h: records waiting for evaluations, completion, history),
// the operator's command parser (control_commands.h) and JSON views
// (core_json.h), the resume checks and replay (resume.h), Membership
// (membership.h: the worker registry, hellos, welcomes, syncs, re-syncs,
// eviction, loss, heartbeats) and RoundCollector (round_collector.h: the
// open round's uploads, early uploads, stragglers, norm outliers, adaptive
// steps and the record). This class owns and wires them and runs the phase
// machine, the parameters, the aggregation and FC-RAG.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "config/config.h"
#include "protocol/messages.h"
#include "codec/params.h"
#include "coordinator/aggregation.h"
#include "coordinator/campaign_mode.h"
#include "coordinator/core_json.h"
#include "coordinator/core_types.h"
#include "coordinator/eval_records.h"
#include "coordinator/distiller.h"
#include "coordinator/fcrag_hub.h"
#include "coordinator/membership.h"
#include "coordinator/outer_optimizer.h"
#include "coordinator/round_collector.h"

#include <functional>

namespace lowband {


class CoordinatorCore : private Membership::Host, private RoundCollector::Host {
 public:
  // kHeld: a round was committed while paused; the next round waits for
  // `round resume`.
  // kCalibrating: FC-RAG, after the training rounds (docs/fcrag.md).
  // Error-triggered re-syncs a site may cause in a row before it is evicted
  // (Membership::Resync).
  static constexpr int kMaxUnconfirmedResyncs = Membership::kMaxUnconfirmedResyncs;

  enum class Phase { kWaiting, kEvaluating, kTraining, kHeld, kCalibrating, kFinished };

  // `initial` is the model's layout; with personalisation the core extends
  // it with one copy of the personalised tensors per cluster (the layout of
  // checkpoints and the round log), see ClusterLayout.
  CoordinatorCore(CampaignConfig config, ParamSet initial, TimePoint now);

  // FPLD campaigns: the public probe set (fpld.contexts x model.context
  // tokens, sent with every Welcome) and the student's distillation, called
  // when a round closes with the mean of the sites' dequantized logits.
  using DistilFn = lowband::DistilFn;
  void SetFpld(std::vector<uint8_t> probes, DistilFn distil);

  // With async on, closing a round emits a CloseJob (CoreOutput.close_jobs)
  // holding the round's uploads, the parameters and the outer optimizer,
  // instead of aggregating inline; until HandleClosed gives them back the
  // round stays closed (later uploads for it are late), syncs wait, and
  // params() is empty. Off (the default), CloseRound aggregates inline.
  void SetAsyncClose(bool async) { async_close_ = async; }
  // The campaign's aggregation (immutable; safe to use from another thread).
  std::shared_ptr<const Aggregation> aggregation() const { return agg_; }
  // The result of the CloseJob the core emitted: commits the round.
  void HandleClosed(CloseResult result, TimePoint now, CoreOutput* out);
  // A round's aggregation is running elsewhere (async close).
  bool closing() const { return closing_; }

  // Personalisation: the model layout extended with "cluster/<name>/<tensor>"
  // copies of the tensors whose names start with a personalised prefix, one
  // set per cluster, values copied from the model's. InvalidArgument if no
  // tensor matches a prefix. Without personalisation: the model unchanged.
  static StatusOr<ParamSet> ClusterLayout(const CampaignConfig& config, const ParamSet& model);

  // Resuming after a restart, before any message is handled: Restore puts
  // the core at committed round `round` with a checkpoint's parameters,
  // outer-optimizer state and downlink error feedback (empty momentum is
  // allowed at round 0 or for a stateless optimizer, an empty error at round
  // 0 or for an uncompressed downlink); Replay then re-applies each later
  // logged round in order (outer step on its gradient, downlink encoding,
  // apply) and checks the digest the log recorded; RestoreHistory hands back the records written before the
  // restart and, if the committed round's evaluation never finished, its
  // partial record. The campaign then waits for the expected workers,
  // re-evaluates the committed round and goes on.
  Status Restore(uint32_t round, ParamSet params, std::vector<float> momentum, std::vector<float> downlink_error);
  Status Replay(uint32_t round, const Encoded& gradient, uint64_t digest);
  void RestoreHistory(std::vector<RoundRecord> recorded, std::optional<RoundRecord> unrecorded);
  // The stored campaign has already ended at `round`: finished phase, every
  // hello answered with CampaignEnd.
  void RestoreEnded(uint32_t round, const std::string& reason);

  // A decoded message from transport peer `peer`.
  void HandleMessage(const std::string& peer, const Message& msg, TimePoint now, CoreOutput* out);
  // Bytes from `peer` that failed wire decoding: Error reply, nothing else.
  void HandleMalformed(const std::string& peer, const Status& why, CoreOutput* out);
  // A message the transport's authentication rules out (a CurveZMQ key
  // speaking for another site): Error reply, counted as "unauthorized".
  void HandleUnauthorized(const std::string& peer, const std::string& why, CoreOutput* out);
  // Timers: heartbeats, liveness, round deadline, start timeout.
  void OnTick(TimePoint now, CoreOutput* out);
  // An operator command (status, workers, round pause|resume|close,
  // campaign abort, worker evict SITE). Messages it causes go to `out`;
  // a refused command answers ok=false and changes nothing.
  ControlResponse HandleControl(const ControlRequest& req, TimePoint now, CoreOutput* out);
  // Ends the campaign now (operator abort); CampaignEnd to every worker.
  void Abort(const std::string& reason, CoreOutput* out);

  Phase phase() const { return phase_; }
  bool paused() const { return paused_; }
  static const char* PhaseName(Phase p);
  // The round whose record is being formed (for the bandwidth ledger).
  uint32_t ledger_round() const { return phase_ == Phase::kTraining ? committed_round_ + 1 : committed_round_; }
  // The round a message's bytes are booked under: the round an upload,
  // evaluation, aggregate or round start names (within two of the committed
  // round: overlapped rounds run ahead), else `fallback` (ledger_round()
  // when the message was received or sent).
  uint32_t LedgerRoundOf(const Message& m, uint32_t fallback) const;
  uint32_t committed_round() const { return committed_round_; }
  const ParamSet& params() const { return params_; }
  const std::vector<float>& outer_momentum() const { return outer_.momentum(); }
  const std::vector<float>& downlink_error() const { return downlink_.error(); }
  // Uploads accepted for the open round.
  size_t uploads_received() const { return collector_->uploads(); }
  uint64_t digest() const { return digest_; }
  const std::map<std::string, WorkerInfo>& workers() const { return membership_->workers(); }
  const Membership& membership() const { return *membership_; }
  // The newest EvalRecords::kHistoryKept records, and totals over all.
  const std::deque<RoundRecord>& history() const { return evals_.history(); }
  const EvalRecords::Totals& history_totals() const { return evals_.totals(); }
  // Parameters a site's uploads and aggregates cover: its stage's slice in a
  // pipeline campaign, every parameter otherwise (and for unknown sites).
  int64_t ParamsOf(const std::string& site) const;
  // What a site's upload of `round` covers: ParamsOf, or with ParaBlock the
  // block it trained that round.
  int64_t UploadParamsOf(const std::string& site, uint32_t round) const;
  // Pipeline campaigns: the stage a known site holds (or held), else -1.
  int StageOf(const std::string& site) const;
  // Personalisation: the site's cluster name ("" for none).
  std::string ClusterOf(const std::string& site) const;
  // site name for a transport peer, or "" if unknown.
  std::string SiteOfPeer(const std::string& peer) const;
  const CampaignConfig& config() const { return config_; }
  uint64_t rejected_messages() const { return rejected_; }
  // Rejections by reason (ErrorCodeName).
  const std::map<std::string, uint64_t>& rejected_by_reason() const { return rejected_by_reason_; }

 private:
  DistilFn distil_;
  // FC-RAG: the hub's exchanges, started once training is over.
  std::unique_ptr<FcragHub> fcrag_hub_;
  uint64_t next_ticket_ = 1;
  void StartCalibration(TimePoint now, CoreOutput* out);
  void PumpFcrag(TimePoint now, CoreOutput* out);
  FcragHub::Send FcragSender(CoreOutput* out);
  void OnFcragResults(std::vector<FcragResult> results, CoreOutput* out);
  ControlResponse FcragControl(const std::vector<std::string>& words, TimePoint now, CoreOutput* out);

  Message Make(Body body) override;
  // Error reply; counted under `reason` (default: the code's name).
  void Reply(const std::string& peer, ErrorCode code, const std::string& what, uint32_t round, CoreOutput* out,
             const char* reason = nullptr) override;
  // The pieces' host (Membership::Host, RoundCollector::Host, which share
  // View, Make and Reply): the campaign now, and what a site joining or
  // leaving does to the round, the evaluations and FC-RAG.
  CampaignView View() const override;
  void CountRejected(const char* reason) override;
  void DropUpload(const std::string& site) override;
  void SiteGone(const std::string& site, TimePoint now, CoreOutput* out) override;
  void AfterLeave(TimePoint now, CoreOutput* out) override;
  void AnnounceRounds(WorkerInfo& w, bool open_only, CoreOutput* out) override;
  void HandleHello(const std::string& peer, const Hello& m, TimePoint now, CoreOutput* out);
  // To the collector; an accepted upload may complete the round.
  void HandleUpload(WorkerInfo& w, const Message& msg, const DeltaUpload& m, TimePoint now, CoreOutput* out);
  void HandleEvalReport(WorkerInfo& w, const EvalReport& m, TimePoint now, CoreOutput* out);
  // RoundStart for `round` (0: the open round, committed + 1).
  void SendRoundStart(WorkerInfo& w, CoreOutput* out, uint32_t round = 0);
  void SendRoundStarts(WorkerInfo& w, CoreOutput* out);
  // The digest of the parameters after `round` (0 if unknown).
  uint64_t DigestOfRound(uint32_t round) const override;
  void StartRound(TimePoint now, CoreOutput* out);
  void MaybeCloseRound(TimePoint now, bool deadline_passed, CoreOutput* out);
  // Aggregates the uploads received and commits the round (>= 1 upload).
  void CloseRound(TimePoint now, const char* why, CoreOutput* out);
  // Round records waiting for evaluations and the written history
  // (coordinator/eval_records.h). Opening one stamps it with digest_.
  EvalRecord& OpenEvalRecord(RoundRecord record, TimePoint round_start, TimePoint now);
  bool EvalComplete(const EvalRecord& e, TimePoint now) const;
  // Writes every pending record that is complete, oldest first, stopping at
  // the first one that is not; after the committed round's record, starts
  // the next round (synchronous) or ends the campaign.
  void MaybeFinishEvals(TimePoint now, CoreOutput* out);
  void FinishEvalRecord(EvalRecord e, TimePoint now, CoreOutput* out);
  uint64_t EvalDigestFor(const WorkerInfo& w, uint32_t round) const;
  void Finish(const std::string& reason, bool failed, CoreOutput* out);
  int LiveWorkers() const;
  // What the operator's `status` and `workers` show (coordinator/core_json.h).
  StatusSnapshot Snapshot() const;
  std::vector<WorkerRow> WorkerRows() const;

  // What differs between plain, pipeline, ParaBlock, personalised and FPLD
  // campaigns (coordinator/campaign_mode.h), chosen once.
  std::unique_ptr<CampaignMode> mode_;
  void ComputePartDigests();
  uint64_t DigestFor(const WorkerInfo& w) const override { return mode_->DigestFor(w, digest_); }
  int BlockFor(const WorkerInfo& w, uint32_t round);

  CampaignConfig config_;
  LayoutPlan plan_;  // chunk plan of the layout at the campaign's topk
  // The aggregation (built once the parts and views are) and the state of
  // an asynchronous close: the job's round is out, params_.values, outer_
  // and downlink_ with it; syncs asked for meanwhile, and a finish, wait
  // for it.
  void BuildAggregation();
  void FinishClose(CloseResult r, TimePoint now, CoreOutput* out);
  std::shared_ptr<const Aggregation> agg_;
  bool async_close_ = false;
  bool closing_ = false;
  std::string closing_why_;
  std::optional<std::pair<std::string, bool>> finish_after_close_;  // reason, failed
  OuterOptimizer outer_;
  DownlinkEncoder downlink_;
  PayloadBuffers payloads_;  // the logged payloads' buffers, reused (coordinator/aggregation.h)
  ParamSet params_;
  uint64_t digest_ = 0;
  Phase phase_ = Phase::kWaiting;
  uint32_t committed_round_ = 0;
  TimePoint campaign_start_;
  TimePoint phase_start_;    // when the current round's training or eval began
  // The worker registry, syncs and liveness (coordinator/membership.h).
  std::unique_ptr<Membership> membership_;
  EvalRecords evals_;
  // The open round's uploads and record (coordinator/round_collector.h).
  std::unique_ptr<RoundCollector> collector_;
  uint64_t seq_ = 0;
  uint64_t rejected_ = 0;
  std::map<std::string, uint64_t> rejected_by_reason_;
  bool paused_ = false;  // operator pause: the next round is held
};

}  // namespace lowband
