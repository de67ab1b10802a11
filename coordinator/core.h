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
// (core_json.h), and the resume checks and replay (resume.h). Membership
// and round collection still live in this class.
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
#include "coordinator/outer_optimizer.h"
#include "coordinator/topology.h"

#include <functional>

namespace lowband {


class CoordinatorCore {
 public:
  // kHeld: a round was committed while paused; the next round waits for
  // `round resume`.
  // kCalibrating: FC-RAG, after the training rounds (docs/fcrag.md).
  // Error-triggered re-syncs a site may cause in a row before it is evicted
  // (Resync).
  static constexpr int kMaxUnconfirmedResyncs = 3;

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
  // the core at committed round `round` with a checkpoint's parameters and
  // outer-optimizer state (empty momentum is allowed at round 0 or for a
  // stateless optimizer); Replay then re-applies each later logged round in
  // order (outer step on its gradient, apply) and checks the digest the log
  // recorded; RestoreHistory hands back the records written before the
  // restart and, if the committed round's evaluation never finished, its
  // partial record. The campaign then waits for the expected workers,
  // re-evaluates the committed round and goes on.
  Status Restore(uint32_t round, ParamSet params, std::vector<float> momentum);
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
  // Uploads accepted for the open round.
  size_t uploads_received() const { return uploads_.size(); }
  uint64_t digest() const { return digest_; }
  const std::map<std::string, WorkerInfo>& workers() const { return workers_; }
  const std::vector<RoundRecord>& history() const { return evals_.history(); }
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
  struct Upload {
    int stage = 0;  // pipeline: the stage whose parameters the delta covers
    int part = 0;   // the slice it covers: the stage (pipeline), the block (ParaBlock), else 0
    Update delta;
    double train_loss;
    uint64_t tokens;
    double norm;  // L2 norm of the delta
    double step_time_ms = 0;
    double wait_ms = 0;
    std::vector<float> logits, exact;  // FPLD: dequantized probe logits (and the fp32 reference)
    uint64_t logit_bytes = 0;          // FPLD: the quantized payload
  };
  void HandleLogitUpload(WorkerInfo& w, const Message& msg, const LogitUpload& m, TimePoint now, CoreOutput* out);
  bool UploadIsDue(WorkerInfo& w, uint32_t round, double step_time_ms, CoreOutput* out);
  DistilFn distil_;
  // FC-RAG: the hub's exchanges, started once training is over.
  std::unique_ptr<FcragHub> fcrag_hub_;
  uint64_t next_ticket_ = 1;
  void StartCalibration(TimePoint now, CoreOutput* out);
  void PumpFcrag(TimePoint now, CoreOutput* out);
  FcragHub::Send FcragSender(CoreOutput* out);
  void OnFcragResults(std::vector<FcragResult> results, CoreOutput* out);
  ControlResponse FcragControl(const std::vector<std::string>& words, TimePoint now, CoreOutput* out);

  Message Make(Body body);
  // Error reply; counted under `reason` (default: the code's name).
  void Reply(const std::string& peer, ErrorCode code, const std::string& what, uint32_t round, CoreOutput* out,
             const char* reason = nullptr);
  // Drops uploads whose norm is far above the round's median (Error reply).
  void RejectNormOutliers(CoreOutput* out);
  void MarkStragglers(TimePoint now);
  void HandleHello(const std::string& peer, const Hello& m, TimePoint now, CoreOutput* out);
  void HandleUpload(WorkerInfo& w, const Message& msg, const DeltaUpload& m, TimePoint now, CoreOutput* out);
  void HandleEvalReport(WorkerInfo& w, const EvalReport& m, TimePoint now, CoreOutput* out);
  void SendSync(WorkerInfo& w, CoreOutput* out);
  // An error-triggered re-sync of `w`'s replica, rate limited (one per
  // committed round; eviction after kMaxUnconfirmedResyncs in a row). True
  // when the model was sent.
  bool Resync(WorkerInfo& w, const std::string& why, TimePoint now, CoreOutput* out);
  // Takes `w` out of the campaign: no quorum, its pending upload/evaluation
  // dropped, CampaignEnd{reason} sent; it may rejoin only by saying hello.
  void Evict(WorkerInfo& w, const std::string& reason, TimePoint now, CoreOutput* out);
  // RoundStart for `round` (0: the open round, committed + 1).
  void SendRoundStart(WorkerInfo& w, CoreOutput* out, uint32_t round = 0);
  void SendRoundStarts(WorkerInfo& w, CoreOutput* out);
  // The digest of the parameters after `round` (0 if unknown).
  uint64_t DigestOfRound(uint32_t round) const;
  // Overlap: uploads for the round after the open one, held until it opens.
  std::map<std::pair<uint32_t, std::string>, Message> early_uploads_;  // by (round, site)
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
  // The site will not evaluate any pending round (lost, evicted, said hello).
  void ForgetEvals(const std::string& site);
  uint64_t EvalDigestFor(const WorkerInfo& w, uint32_t round) const;
  void MarkLost(WorkerInfo& w, const std::string& why, TimePoint now, CoreOutput* out);
  void Finish(const std::string& reason, bool failed, CoreOutput* out);
  // True when every live worker has reported (uploads or evaluations) and
  // the reports reach min_workers, or the deadline passed with min_workers.
  template <typename Reports>
  bool Complete(const Reports& got, bool deadline_passed) const;
  int LiveWorkers() const;
  // What the operator's `status` and `workers` show (coordinator/core_json.h).
  StatusSnapshot Snapshot() const;
  std::vector<WorkerRow> WorkerRows() const;

  // What differs between plain, pipeline, ParaBlock, personalised and FPLD
  // campaigns (coordinator/campaign_mode.h), chosen once.
  std::unique_ptr<CampaignMode> mode_;
  void ComputePartDigests();
  uint64_t DigestFor(const WorkerInfo& w) const { return mode_->DigestFor(w, digest_); }
  // Welcome (+ ModelSync, + RoundStart while training) to every worker of
  // `replica`, once all its stages are held: neighbours learn each other's
  // endpoints, a replacement's neighbours re-configure.
  void WelcomeReplica(int replica, CoreOutput* out);
  void SendWelcome(WorkerInfo& w, CoreOutput* out);
  int BlockFor(const WorkerInfo& w, uint32_t round);

  CampaignConfig config_;
  LayoutPlan plan_;  // chunk plan of the layout at the campaign's topk
  std::unique_ptr<Topology> topology_;  // pipeline campaigns: stage slots
  std::map<int, uint32_t> replica_epoch_;  // welcomes of each replica so far
  // H_i of the open round by site (adaptive steps; docs/configuration.md).
  std::map<std::string, int> round_steps_;
  int StepsFor(const WorkerInfo& w);
  // The aggregation (built once the parts and views are) and the state of
  // an asynchronous close: the job's round is out, params_.values and
  // outer_ with it; syncs asked for meanwhile, and a finish, wait for it.
  void BuildAggregation();
  void FinishClose(CloseResult r, TimePoint now, CoreOutput* out);
  std::shared_ptr<const Aggregation> agg_;
  // Model syncs of round sync_cache_round_, by the digest of what they carry.
  uint32_t sync_cache_round_ = std::numeric_limits<uint32_t>::max();
  std::map<uint64_t, Encoded> sync_cache_;
  bool async_close_ = false;
  bool closing_ = false;
  std::string closing_why_;
  std::set<std::string> syncs_after_close_;
  std::optional<std::pair<std::string, bool>> finish_after_close_;  // reason, failed
  OuterOptimizer outer_;
  ParamSet params_;
  uint64_t digest_ = 0;
  Phase phase_ = Phase::kWaiting;
  uint32_t committed_round_ = 0;
  TimePoint campaign_start_;
  TimePoint phase_start_;    // when the current round's training or eval began
  TimePoint round_start_;    // when the current record's round began
  std::map<std::string, WorkerInfo> workers_;  // by site name
  std::map<std::string, std::string> peer_to_site_;
  std::map<std::string, Upload> uploads_;      // current round, by site
  EvalRecords evals_;
  RoundRecord pending_;                        // the open round's record
  uint64_t seq_ = 0;
  uint64_t rejected_ = 0;
  std::map<std::string, uint64_t> rejected_by_reason_;
  bool finished_sent_ = false;
  bool paused_ = false;  // operator pause: the next round is held
};

}  // namespace lowband
