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
#include "coordinator/distiller.h"
#include "coordinator/fcrag_hub.h"
#include "coordinator/outer_optimizer.h"
#include "coordinator/topology.h"

#include <functional>

namespace lowband {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

struct Outgoing {
  std::string peer;  // transport routing id
  Message msg;
};

struct SiteRoundStats {
  double train_loss = std::numeric_limits<double>::quiet_NaN();
  uint64_t tokens = 0;
  double val_loss = std::numeric_limits<double>::quiet_NaN();
  bool uploaded = false;
  bool digest_ok = true;
  int inner_steps = 0;  // H_i the round asked of the site (0: not started)
  int block = -1;       // ParaBlock: the block it trained (-1: whole model)
  double step_time_ms = std::numeric_limits<double>::quiet_NaN();  // its reported mean step time
  bool late = false;    // asked to train, no upload by the deadline (left out)
  double wait_s = 0;    // exposed communication: its training thread's idle time before this round's training
};

// One committed round (round 0 = evaluation of the initial parameters).
struct RoundRecord {
  uint32_t round = 0;
  double train_loss = std::numeric_limits<double>::quiet_NaN();  // token-weighted; NaN for round 0
  double val_loss = std::numeric_limits<double>::quiet_NaN();    // token-weighted over sites
  uint64_t tokens = 0;
  int contributors = 0;  // uploads aggregated
  int evaluated = 0;     // eval reports received
  int late_uploads = 0;  // rejected because the round had closed
  int stragglers = 0;
  double exposed_comm_s = 0;  // the largest wait_s of the round's sites
  std::map<std::string, double> cluster_val_loss;  // personalisation: token-weighted per cluster
  // FPLD (docs/fpld.md): the round's logit uploads and its student.
  struct Fpld {
    uint64_t payload_bytes = 0;  // logit payloads (quantized part) of the round's uploads
    uint64_t fp32_bytes = 0;     // the same logits as fp32
    double teacher_kl = std::numeric_limits<double>::quiet_NaN();  // KL(exact mean || quantized mean), probes
    double student_kl = std::numeric_limits<double>::quiet_NaN();  // KL(exact mean || student), probes
    double distill_loss = std::numeric_limits<double>::quiet_NaN();
    double public_val_loss = std::numeric_limits<double>::quiet_NaN();  // student, public validation text
  } fpld;
  double train_s = 0;    // round start to close: the training phase, as long as its slowest counted site    // live sites with no upload when the round closed at its deadline
  int digest_mismatches = 0;
  double wall_s = 0;     // the round's start to its record (with overlap, the next round overlaps it)
  double elapsed_s = 0;  // the coordinator's start (this run) to the record
  uint64_t digest = 0;
  CodecKind down_codec = CodecKind::kDenseFp32;  // how the aggregate went down
  uint64_t aggregate_nnz = 0;                    // nonzero entries of the outer update
  // A restarted coordinator evaluated a round whose record was already
  // written before the restart: report it, do not record it twice.
  bool reevaluated = false;
  std::map<std::string, SiteRoundStats> sites;
};

// A closed round, to be made durable before any worker hears of it: the
// record so far (train figures, digest of theta_r) and the aggregated
// pseudo-gradient g the outer step was applied to (sparse_fp32 or
// dense_fp32), from which theta_r can be rebuilt exactly (Replay).
struct RoundCommit {
  RoundRecord record;
  Encoded gradient;
};

struct CoreOutput {
  // Rounds closed, in order (overlapped rounds can close two at once): the
  // caller persists them before sending `messages`.
  std::vector<RoundCommit> commits;
  std::vector<Outgoing> messages;
  std::vector<RoundRecord> committed;
  bool finished = false;
  bool failed = false;
  std::string finish_reason;
  // FC-RAG results (the campaign's own calibration has ticket 0; others
  // answer the deferred control request of that ticket).
  std::vector<FcragResult> fcrag_results;
  // Set when HandleControl's answer comes later, as the fcrag result of
  // this ticket.
  uint64_t deferred_ticket = 0;
  // Asynchronous close (SetAsyncClose): the round to aggregate. The caller
  // runs Aggregation::Close on it (aggregation()), off its loop, and hands
  // the result to HandleClosed.
  std::vector<CloseJob> close_jobs;
};

enum class WorkerState { kJoined, kLost, kEvicted };
const char* WorkerStateName(WorkerState s);

struct WorkerInfo {
  std::string site;
  std::string peer;
  Hello hello;
  WorkerState state = WorkerState::kJoined;
  TimePoint last_seen;
  TimePoint last_heartbeat_sent;
  uint32_t synced_round = 0;  // round of the parameters it was last sent
  uint32_t announced_round = 0;  // newest round it was sent a RoundStart for
  std::optional<uint32_t> last_eval_round;
  double last_val_loss = std::numeric_limits<double>::quiet_NaN();
  double last_step_time_ms = 0;
  double step_ms = 0;  // smoothed reported step time (adaptive steps)
  uint64_t rejected = 0;
  // Error-triggered re-syncs (CoordinatorCore::Resync): in a row without an
  // accepted upload or a matching evaluation, and the round of the last one.
  int unconfirmed_resyncs = 0;
  std::optional<uint32_t> last_resync_round;
  // Pipeline campaigns: its slot, and whether it has been welcomed (a worker
  // waits, unwelcomed, until every stage of its replica has a worker).
  int stage = 0;
  int replica = 0;
  bool welcomed = true;
};

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
  const std::vector<RoundRecord>& history() const { return history_; }
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
  bool fpld() const { return config_.fpld.enabled; }
  // FPLD: a site with a model of its own takes no part in the student's
  // parameters (no sync, aggregate or evaluation; round starts name no digest).
  bool Adopts(const WorkerInfo& w) const;
  void HandleLogitUpload(WorkerInfo& w, const Message& msg, const LogitUpload& m, TimePoint now, CoreOutput* out);
  bool UploadIsDue(WorkerInfo& w, uint32_t round, double step_time_ms, CoreOutput* out);
  std::vector<uint8_t> probes_;
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
  // Round records waiting for evaluations: the committed round's and, with
  // overlap, earlier ones. `expected`: the sites sent round r's parameters
  // (aggregate or sync) that have not moved past them since (a later sync,
  // loss, eviction, a new hello).
  struct EvalRecord {
    RoundRecord record;
    std::map<std::string, EvalReport> evals;  // by site
    std::set<std::string> expected;
    TimePoint round_start;
    TimePoint eval_start;
  };
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
  std::string StatusJson() const;
  std::string WorkersJson(TimePoint now) const;

  // Pipeline campaigns: the global parameters are every stage's tensors in
  // stage order ("stage<S>." prefixes, ml/model_init.h); a Part is one
  // stage's slice. Workers of stage S see only their part: syncs, round
  // starts, uploads, aggregates and digests are per part; the outer step,
  // checkpoints and the round log stay on the whole.
  using Part = ParamPart;
  bool pipelined() const { return !parts_.empty(); }
  void BuildParts();
  void ComputePartDigests();
  uint64_t DigestFor(const WorkerInfo& w) const {
    if (pipelined()) return part_digests_[w.stage];
    if (personal()) return view_digests_[ClusterIndex(w.site)];
    return digest_;
  }
  // Personalisation (ClusterLayout): cluster 0 = sites in no cluster (the
  // model's own copies), 1.. = the named clusters. A worker sees the model
  // layout: its view maps each model tensor to the extended tensor it reads.
  bool personal() const { return !views_.empty(); }
  void BuildViews();
  int ClusterIndex(const std::string& site) const;
  std::vector<float> ViewValues(int cluster) const;
  // Welcome (+ ModelSync, + RoundStart while training) to every worker of
  // `replica`, once all its stages are held: neighbours learn each other's
  // endpoints, a replacement's neighbours re-configure.
  void WelcomeReplica(int replica, CoreOutput* out);
  void SendWelcome(WorkerInfo& w, CoreOutput* out);
  // Per-part means of the uploads (Upload.part), joined into one update of
  // the whole layout; a part nobody uploaded stays where it is.
  // ParaBlock: one Part per block (codec/blocks.h), full tensor names.
  void BuildBlockParts();
  int BlockFor(const WorkerInfo& w, uint32_t round);

  CampaignConfig config_;
  LayoutPlan plan_;  // chunk plan of the layout at the campaign's topk
  std::vector<Part> parts_;
  std::vector<uint64_t> part_digests_;
  std::unique_ptr<Topology> topology_;
  std::map<int, uint32_t> replica_epoch_;  // welcomes of each replica so far
  // H_i of the open round by site (adaptive steps; docs/configuration.md).
  std::map<std::string, int> round_steps_;
  std::vector<int> layer_blocks_;             // ParaBlock: block of each layer (empty: off)
  std::vector<Part> block_parts_;
  std::map<uint32_t, std::map<std::string, int>> round_blocks_;  // block by round and site
  ParamLayout model_layout_;                 // personalisation: what workers hold
  LayoutPlan model_plan_;
  std::vector<std::vector<size_t>> views_;   // per cluster index: model tensor -> extended tensor
  std::vector<bool> personal_tensor_;        // per model tensor
  std::map<std::string, int> cluster_of_site_;
  std::vector<uint64_t> view_digests_;
  int StepsFor(const WorkerInfo& w);
  // The aggregation (built once the parts and views are) and the state of
  // an asynchronous close: the job's round is out, params_.values and
  // outer_ with it; syncs asked for meanwhile, and a finish, wait for it.
  void BuildAggregation();
  void FinishClose(CloseResult r, TimePoint now, CoreOutput* out);
  std::shared_ptr<const Aggregation> agg_;
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
  std::map<uint32_t, EvalRecord> evaluating_;  // by round
  RoundRecord pending_;                        // the open round's record
  std::vector<RoundRecord> history_;
  uint64_t seq_ = 0;
  uint64_t rejected_ = 0;
  std::map<std::string, uint64_t> rejected_by_reason_;
  bool finished_sent_ = false;
  bool paused_ = false;  // operator pause: the next round is held
};

}  // namespace lowband
