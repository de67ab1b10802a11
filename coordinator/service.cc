#include "coordinator/service.h"

#include <sys/stat.h>

#include <chrono>
#include <cinttypes>
#include <cmath>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>

#include "coordinator/checkpoint.h"
#include "net/zmq/curve.h"
#include "net/zmq/event_loop.h"
#include "base/failpoint.h"
#include "base/json.h"
#include "base/log.h"
#include "data/corpus.h"
#include "ops/metrics_http.h"
#include "coordinator/compute.h"
#include "coordinator/dashboard.h"
#include "coordinator/persistence.h"
#include "ops/systemd.h"
#include "net/zmq/zmq_transport.h"
#include "protocol/wire.h"
#include "coordinator/state_store.h"

namespace lowband {
namespace {

constexpr int kExitUnavailable = 69;  // EX_UNAVAILABLE

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) {
    b /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

}  // namespace

struct CoordinatorService::Impl {
  Impl(CampaignConfig c, ParamSet initial, CoordinatorOptions o)
      : config(std::move(c)), options(std::move(o)), core(config, std::move(initial), Clock::now()) {
    if (config.fpld.enabled) core.SetFpld(options.fpld_probes, options.distil);
    limits.max_bulk_bytes = static_cast<size_t>(config.network.max_message_bytes);
  }

  CampaignConfig config;
  CoordinatorOptions options;
  CoordinatorCore core;
  WireLimits limits;
  zmq::context_t ctx{1};
  std::unique_ptr<ZmqServerTransport> workers;
  std::unique_ptr<ZmqServerTransport> control;
  std::unique_ptr<ZapHandler> zap;  // CurveZMQ: admits allow-listed keys
  BandwidthLedger ledger;
  std::unique_ptr<StateStore> store;
  uint32_t ledger_saved_from = 0;  // ledger rounds >= this may have changed since the last save
  static constexpr uint32_t kLedgerRoundsHeld = 4;  // per-round ledger detail kept behind the last saved round
  std::map<std::string, std::string> member_states;  // site -> state last written to the store
  bool resumed = false;
  uint32_t started_round = 0;  // the last round whose RoundStart went out
  std::unique_ptr<MetricsHttpServer> metrics_http;
  SystemdNotifier systemd;
  uint64_t lost_events = 0;  // sites marked lost (stragglers that went silent)
  int restarts = 0;
  std::optional<int> ended_exit;  // the stored campaign had ended: exit code after lingering
  Clock::time_point linger_until;
  FILE* metrics = nullptr;
  // FC-RAG: control requests answered when the sites have (ticket -> peer),
  // and the campaign's own calibration result.
  std::map<uint64_t, std::string> deferred_controls;
  // Dashboard (coordinator/dashboard.h): the newest kDashboardRounds round
  // records as written to the metrics file (older ones stay in the file and
  // state.db), and the operator token ("" = read-only).
  static constexpr size_t kDashboardRounds = 10000;
  std::deque<std::string> record_lines;
  void KeepRecordLine(std::string line) {
    record_lines.push_back(std::move(line));
    if (record_lines.size() > kDashboardRounds) record_lines.pop_front();
  }
  std::string dashboard_token;
  HttpResponse HandleHttp(const HttpRequest& req);
  std::string StateJson();
  std::string fcrag_result;
  void OnFcragResult(const FcragResult& r);
  bool done = false;
  int exit_code = 0;

  int Run(SignalWatcher& signals);
  // Opens RUN_DIR/state.db and either records a new campaign or rebuilds
  // the core from the newest checkpoint plus the logged rounds after it.
  // Returns an exit code to stop with, or -1 to go on.
  int OpenState();
  int Resume(const CampaignRow& row);
  // Disk work runs on Persistence's thread (coordinator/persistence.h); the
  // loop submits jobs and hears of their outcomes through OnDisk. A round
  // is durable before any worker hears of it: every message other than a
  // heartbeat that the core emits once a round's commit (or the campaign's
  // end) has been submitted waits in `held`, in order, until that job is
  // done ("barrier" = the newest such job, "disk_done" = the newest job
  // done; jobs finish in submission order).
  std::unique_ptr<Persistence> disk;
  // Rounds are aggregated on the compute thread (coordinator/compute.h);
  // OnCompute hands each result back to the core.
  std::unique_ptr<ComputeThread> compute;
  void OnCompute();
  struct Held {
    uint64_t after = 0;  // the job it waits for
    Outgoing out;
  };
  std::deque<Held> held;
  uint64_t barrier = 0;
  uint64_t disk_done = 0;
  std::deque<std::pair<uint64_t, uint32_t>> sent_failpoints;  // (job, round): "aggregate_sent" once released
  // Operator checkpoints being written: ticket -> control peer.
  std::map<uint64_t, std::string> checkpoint_controls;
  std::map<uint64_t, uint64_t> checkpoint_digests;  // ticket -> digest of the parameters written
  uint64_t next_checkpoint_ticket = 1;
  struct Ending {
    bool failed = false;
    std::string reason;
  };
  std::optional<Ending> ending;  // the campaign's end, submitted and not yet durable
  void OnDisk();
  void OnDiskDone(const DiskDone& d);
  void Send(Outgoing& o);
  void ReleaseHeld();
  void AfterSend();
  void SaveMembers();
  std::string RenderMetrics() const;
  Status TrimMetrics(uint32_t last_recorded);
  uint32_t last_recorded = 0;  // newest round whose record the state database holds
  std::vector<RoundRecord> unevaluated;  // resumed: committed rounds older than the newest, never evaluated
  void OnWorkers();
  void OnControl();
  // `lowband checkpoint`: the last committed round to RUN_DIR, answered
  // when written (OnDiskDone); an immediate answer when refused.
  std::optional<ControlResponse> WriteCheckpointNow(const std::string& peer);
  void Dispatch(CoreOutput& out);
  void OnCommitted(const RoundRecord& r);
  void FinishDurably(const CoreOutput& out);
  void OnFinished();
  void PrintSummary();
  void WriteSummary();
  // Compression of one message kind against dense fp32 (see the definition).
  // Dense fp32 bytes `messages` messages of `kind` to or from `site` in
  // `round` would take: 4 bytes per parameter they cover (a pipeline
  // stage's slice, a ParaBlock block, or the whole model; FPLD: the probe
  // logits). The ledger's compression ratios divide this by the bytes sent.
  double DenseBytes(const std::string& site, uint32_t round, const std::string& kind, uint64_t messages) const;
  // Pipeline traffic a worker reported with its upload or evaluation.
  void RecordPeerTraffic(const std::string& site, uint32_t round, const Message& msg);
  // Pipeline: the ledger's traffic across boundary b (stages b and b+1).
  struct BoundaryFigures {
    LedgerEntry forward, backward, labels, eval;
    double ratio = 0;  // fp32 full-width activations / bytes, forward and backward
  };
  BoundaryFigures Boundary(int b, int64_t round) const;
  std::string BoundariesJson(int64_t round) const;
  // What a site's round upload is: its pseudo-gradient, or FPLD probe logits.
  const char* UploadKind() const { return config.fpld.enabled ? "logit_upload" : "delta_upload"; }
  Clock::time_point started = Clock::now();
};

CoordinatorService::CoordinatorService(CampaignConfig config, ParamSet initial, CoordinatorOptions options)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(initial), std::move(options))) {}
CoordinatorService::~CoordinatorService() = default;
int CoordinatorService::Run(SignalWatcher& signals) { return impl_->Run(signals); }

void CoordinatorService::Impl::Dispatch(CoreOutput& out) {
  for (CloseJob& job : out.close_jobs) {
    const uint32_t round = job.round;
    if (Status st = compute->Submit(std::move(job)); !st.ok()) {
      // The core closes one round at a time; a refusal is a bug.
      LOG_ERROR("cannot aggregate the round; stopping", {"round", round}, {"reason", st.ToString()});
      done = true;
      exit_code = 1;
      out = CoreOutput{};
      return;
    }
  }
  for (size_t i = 0; i < out.commits.size(); ++i) {
    RoundCommit& c = out.commits[i];
    const uint32_t round = c.record.round;
    // The core's parameters are those of the last round it closed: only
    // that one can be checkpointed now (an overlapped round closing with it
    // is durable through its logged gradient).
    std::optional<Checkpoint> ckpt;
    if (i + 1 == out.commits.size() && round % static_cast<uint32_t>(config.checkpoint.every) == 0) {
      ckpt = Checkpoint{round, config.name, core.params(), core.outer_momentum()};
    }
    barrier = disk->CommitRound(std::move(c), std::move(ckpt));
    sent_failpoints.emplace_back(barrier, round);
  }
  // Records and the end of the campaign reach the disk before the workers
  // hear of them (the next RoundStart, CampaignEnd).
  for (const RoundRecord& r : out.committed) OnCommitted(r);
  for (const FcragResult& r : out.fcrag_results) OnFcragResult(r);
  if (out.finished) FinishDurably(out);
  for (Outgoing& o : out.messages) {
    const bool gated = barrier > disk_done || !held.empty();
    if (gated && !std::holds_alternative<Heartbeat>(o.msg.body)) {
      held.push_back({barrier, std::move(o)});
    } else {
      Send(o);
    }
  }
  AfterSend();
  SaveMembers();
  out = CoreOutput{};
}

void CoordinatorService::Impl::Send(Outgoing& o) {
  const char* kind = BodyName(o.msg.body);
  Frames frames = EncodeMessage(o.msg);
  uint64_t bytes = 0;
  for (const auto& f : frames) bytes += f.size();
  const std::string site = core.SiteOfPeer(o.peer);
  Status st = workers->Send(o.peer, std::move(frames));
  if (!st.ok()) {
    LOG_WARN("send failed", {"peer", site}, {"kind", kind}, {"reason", st.ToString()});
    return;
  }
  if (!site.empty()) {
    const uint32_t round = core.LedgerRoundOf(o.msg, core.ledger_round());
    ledger.Record(site, Direction::kDown, round, kind, bytes, DenseBytes(site, round, kind, 1));
  }
  if (const auto* sync = std::get_if<ModelSync>(&o.msg.body); sync && sync->round > 0) {
    // A join after round 0: a restarted or returning site (or a restarted
    // coordinator's sites) catching up, whatever it missed, in one message.
    LOG_INFO("site caught up", {"site", site}, {"round", sync->round}, {"bytes", bytes});
    if (options.progress) {
      std::printf("             %s re-synced to round %u: %s in one transfer\n", site.c_str(), sync->round,
                  HumanBytes(static_cast<double>(bytes)).c_str());
      std::fflush(stdout);
    }
  }
}

// Messages whose job is done go out, in order.
void CoordinatorService::Impl::ReleaseHeld() {
  while (!held.empty() && held.front().after <= disk_done) {
    Send(held.front().out);
    held.pop_front();
  }
  AfterSend();
}

// Crash-test points that mean "the workers have heard of it".
void CoordinatorService::Impl::AfterSend() {
  const uint64_t released = held.empty() ? disk_done : std::min(disk_done, held.front().after - 1);
  while (!sent_failpoints.empty() && sent_failpoints.front().first <= released) {
    FailPoint("aggregate_sent", sent_failpoints.front().second);
    sent_failpoints.pop_front();
  }
  if (held.empty() && core.phase() == CoordinatorCore::Phase::kTraining &&
      core.committed_round() + 1 != started_round) {
    started_round = core.committed_round() + 1;
    FailPoint("round_started", started_round);
  }
}

void CoordinatorService::Impl::OnCompute() {
  for (CloseResult& r : compute->Drain()) {
    CoreOutput out;
    core.HandleClosed(std::move(r), Clock::now(), &out);
    Dispatch(out);
    if (done) return;
  }
}

void CoordinatorService::Impl::OnDisk() {
  for (const DiskDone& d : disk->Drain()) {
    OnDiskDone(d);
    if (done) return;
  }
}

void CoordinatorService::Impl::OnDiskDone(const DiskDone& d) {
  disk_done = d.seq;
  switch (d.kind) {
    case DiskDone::Kind::kCommit:
      if (!d.status.ok()) {
        // Nobody may hear of a round that is not durable: stop here, with
        // the state on disk at the previous round; a restart redoes this one.
        LOG_ERROR("cannot commit the round durably; stopping", {"round", d.round}, {"reason", d.status.ToString()});
        held.clear();
        done = true;
        exit_code = 1;
        return;
      }
      break;
    case DiskDone::Kind::kRecord:
      if (d.status.ok()) {
        ledger_saved_from = std::max(ledger_saved_from, d.round);
        // Older rounds' rows are durable and no message is booked that far
        // back (LedgerRoundOf: within two of the committed round).
        if (d.round > kLedgerRoundsHeld) ledger.ForgetBefore(d.round - kLedgerRoundsHeld);
      } else {
        LOG_WARN("cannot record the round", {"round", d.round}, {"reason", d.status.ToString()});
      }
      break;
    case DiskDone::Kind::kMember:
      if (!d.status.ok()) LOG_WARN("cannot record membership", {"round", d.round}, {"reason", d.status.ToString()});
      break;
    case DiskDone::Kind::kCheckpoint: {
      ControlResponse resp;
      if (d.status.ok()) {
        LOG_INFO("checkpoint written", {"path", d.path}, {"round", d.round});
        JsonObject o;
        o.Add("path", d.path).Add("round", d.round).Add("digest", DigestHex(checkpoint_digests[d.ticket]));
        resp = {true, d.path, o.str()};
      } else {
        LOG_ERROR("checkpoint failed", {"path", d.path}, {"reason", d.status.ToString()});
        resp = {false, "checkpoint of round " + std::to_string(d.round) + " failed: " + d.status.ToString(), ""};
      }
      checkpoint_digests.erase(d.ticket);
      auto peer = checkpoint_controls.find(d.ticket);
      if (peer != checkpoint_controls.end()) {
        Message reply;
        reply.campaign_id = config.name;
        reply.sender_id = "coordinator";
        reply.body = resp;
        if (Status st = control->Send(peer->second, EncodeMessage(reply)); !st.ok()) {
          LOG_WARN("control reply failed", {"reason", st.ToString()});
        }
        checkpoint_controls.erase(peer);
      }
      break;
    }
    case DiskDone::Kind::kFinish:
      if (!d.status.ok()) exit_code = 1;
      break;
  }
  ReleaseHeld();
  if (d.kind == DiskDone::Kind::kFinish) OnFinished();
}

// Membership changes (joined, lost, evicted) since the last call.
void CoordinatorService::Impl::SaveMembers() {
  for (const auto& [site, w] : core.workers()) {
    const std::string state = WorkerStateName(w.state);
    // A rejoin shows as a new peer in the same state.
    const std::string key = state + "/" + w.peer;
    auto it = member_states.find(site);
    if (it != member_states.end() && it->second == key) continue;
    std::string event = state;
    if (w.state == WorkerState::kJoined) event = it == member_states.end() ? "joined" : "rejoined";
    if (w.state == WorkerState::kLost) ++lost_events;
    member_states[site] = key;
    disk->RecordMember(site, state, w.hello.device, core.committed_round(), event);
  }
}

void CoordinatorService::Impl::OnWorkers() {
  Inbound in;
  // Bounded drain so a flood on one socket cannot starve timers and signals.
  for (int i = 0; i < 256 && workers->TryReceive(&in); ++i) {
    uint64_t bytes = 0;
    for (const auto& f : in.frames) bytes += f.size();
    const uint32_t open_round = core.ledger_round();
    CoreOutput out;
    auto msg = DecodeMessage(std::move(in.frames), limits);
    const uint32_t round = msg.ok() ? core.LedgerRoundOf(*msg, open_round) : open_round;
    std::string kind = "malformed";
    const Hello* hello = msg.ok() ? std::get_if<Hello>(&msg->body) : nullptr;
    if (!msg.ok()) {
      core.HandleMalformed(in.peer, msg.status(), &out);
    } else if (zap && hello && hello->site != in.user_id) {
      // The key decides who a peer is: site-a's key cannot say hello as site-b.
      kind = BodyName(msg->body);
      LOG_WARN("hello refused: key belongs to another site", {"claimed", hello->site}, {"key_of", in.user_id});
      core.HandleUnauthorized(in.peer,
                              "hello as '" + hello->site + "' over a connection authenticated as '" + in.user_id + "'",
                              &out);
    } else {
      kind = BodyName(msg->body);
      core.HandleMessage(in.peer, *msg, Clock::now(), &out);
    }
    const std::string site = core.SiteOfPeer(in.peer);
    // FPLD benchmarks: the fp32 reference logits behind a payload are
    // booked apart, so the upload's own bytes (and ratio) stay its own.
    const auto* logits = msg.ok() ? std::get_if<LogitUpload>(&msg->body) : nullptr;
    const uint64_t reference = logits && logits->exact_bytes <= bytes ? logits->exact_bytes : 0;
    const std::string booked = site.empty() ? "(unregistered)" : site;
    ledger.Record(booked, Direction::kUp, round, kind, bytes - reference, DenseBytes(booked, round, kind, 1));
    if (reference > 0) ledger.Record(booked, Direction::kUp, round, "logit_reference", reference);
    if (msg.ok() && !site.empty()) RecordPeerTraffic(site, round, *msg);
    if (kind == "delta_upload" && core.phase() == CoordinatorCore::Phase::kTraining && core.uploads_received() == 1) {
      FailPoint("upload", core.committed_round() + 1);  // one upload in, the others still to come
    }
    Dispatch(out);
  }
}

void CoordinatorService::Impl::OnControl() {
  Inbound in;
  for (int i = 0; i < 64 && control->TryReceive(&in); ++i) {
    ControlResponse resp;
    CoreOutput out;
    auto msg = DecodeMessage(in.frames, limits);
    if (!msg.ok()) {
      resp = {false, "malformed control request: " + msg.status().ToString(), ""};
    } else if (const auto* req = std::get_if<ControlRequest>(&msg->body)) {
      // The checkpoint needs the disk, which the core does not touch.
      if (req->command == "checkpoint" && req->args.empty()) {
        std::optional<ControlResponse> refused = WriteCheckpointNow(in.peer);
        if (!refused) continue;  // answered when written
        resp = *refused;
      } else {
        resp = core.HandleControl(*req, Clock::now(), &out);
      }
      LOG_INFO("control request", {"command", req->command}, {"ok", resp.ok}, {"reply", resp.message});
    } else {
      resp = {false, std::string("control endpoint expects control_request, got ") + BodyName(msg->body), ""};
    }
    if (out.deferred_ticket != 0) {
      deferred_controls[out.deferred_ticket] = in.peer;  // answered with its FC-RAG result
      Dispatch(out);
      if (done) return;
      continue;
    }
    Message reply;
    reply.campaign_id = config.name;
    reply.sender_id = "coordinator";
    reply.body = resp;
    Status st = control->Send(in.peer, EncodeMessage(reply));
    if (!st.ok()) LOG_WARN("control reply failed", {"reason", st.ToString()});
    // After the reply, so that an aborting operator hears back before the
    // coordinator exits.
    Dispatch(out);
    if (done) return;
  }
}

// RUN_DIR/checkpoint-round-N.lbck of the last committed round, written
// atomically by WriteCheckpoint on the disk thread; the operator hears back
// when it is on disk (OnDiskDone).
std::optional<ControlResponse> CoordinatorService::Impl::WriteCheckpointNow(const std::string& peer) {
  if (options.run_dir.empty()) return ControlResponse{false, "the coordinator has no run directory (--run-dir)", ""};
  if (core.closing()) {
    return ControlResponse{false,
                           "round " + std::to_string(core.committed_round() + 1) +
                               " is being aggregated; ask again in a moment",
                           ""};
  }
  const uint32_t round = core.committed_round();
  const std::string path = options.run_dir + "/checkpoint-round-" + std::to_string(round) + ".lbck";
  const uint64_t ticket = next_checkpoint_ticket++;
  checkpoint_controls[ticket] = peer;
  checkpoint_digests[ticket] = core.digest();
  disk->WriteCheckpointFile(path, Checkpoint{round, config.name, core.params(), core.outer_momentum()}, ticket);
  return std::nullopt;
}

// The Prometheus text of the coordinator's state (GET /metrics).
std::string CoordinatorService::Impl::RenderMetrics() const {
  PromText t;
  const auto& h = core.history();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  t.Add("lowband_rounds_committed_total", "counter", "Rounds committed (round 0, the initial evaluation, excluded).",
        core.committed_round());
  t.Add("lowband_rounds_planned", "gauge", "Rounds the campaign runs.", config.training.rounds);
  t.Add("lowband_train_loss", "gauge", "Token-weighted training loss of the last recorded round.",
        h.empty() ? nan : h.back().train_loss);
  t.Add("lowband_val_loss", "gauge", "Token-weighted validation loss of the last recorded round.",
        h.empty() ? nan : h.back().val_loss);
  double wall = 0;
  int late = 0, mismatches = 0;
  for (const RoundRecord& r : h) {
    if (r.round > 0) wall += r.wall_s;
    late += r.late_uploads;
    mismatches += r.digest_mismatches;
  }
  t.Add("lowband_round_duration_seconds_total", "counter", "Wall time of the recorded rounds, summed.", wall);
  t.Add("lowband_last_round_duration_seconds", "gauge", "Wall time of the last recorded round.",
        h.empty() ? nan : h.back().wall_s);
  std::map<std::string, int> states;
  for (const auto& [site, w] : core.workers()) {
    ++states[WorkerStateName(w.state)];
    for (Direction d : {Direction::kUp, Direction::kDown}) {
      t.Add("lowband_bytes_total", "counter", "Bytes of every message to or from a site, headers included.",
            static_cast<double>(ledger.SiteTotal(site, d)), {{"site", site}, {"direction", d == Direction::kUp ? "up" : "down"}});
    }
  }
  for (const auto& [site, w] : core.workers()) {
    t.Add("lowband_upload_bytes_total", "counter", "Bytes of a site's delta uploads.",
          static_cast<double>(ledger.KindTotal(Direction::kUp, UploadKind(), -1, site).bytes), {{"site", site}});
  }
  for (const auto& [site, w] : core.workers()) {
    t.Add("lowband_aggregate_bytes_total", "counter", "Bytes of the aggregates sent to a site.",
          static_cast<double>(ledger.KindTotal(Direction::kDown, "aggregate", -1, site).bytes), {{"site", site}});
  }
  for (const auto& [site, w] : core.workers()) {
    t.Add("lowband_site_rejected_messages_total", "counter", "Messages from a site rejected with an error reply.",
          static_cast<double>(w.rejected), {{"site", site}});
  }
  const uint32_t last = h.empty() ? 0 : h.back().round;
  t.Add("lowband_compression_ratio", "gauge",
        "Dense fp32 bytes over bytes sent, for the last recorded round's uploads (up) and aggregates (down).",
        ledger.Ratio(Direction::kUp, UploadKind(), last), {{"direction", "up"}});
  t.Add("lowband_compression_ratio", "gauge", "", ledger.Ratio(Direction::kDown, "aggregate", last),
        {{"direction", "down"}});
  for (const char* state : {"joined", "lost", "evicted"}) {
    t.Add("lowband_workers", "gauge", "Registered sites by state.", states[state], {{"state", state}});
  }
  t.Add("lowband_expected_workers", "gauge", "Sites the campaign waits for.", config.quorum.expected_workers);
  t.Add("lowband_workers_lost_total", "counter", "Times a site was marked lost (silent past the heartbeat timeout).",
        static_cast<double>(lost_events));
  t.Add("lowband_late_uploads_total", "counter", "Uploads that arrived after their round had closed (stragglers).",
        late);
  t.Add("lowband_digest_mismatches_total", "counter", "Replica digests that differed from the coordinator's.",
        mismatches);
  t.Add("lowband_rejected_messages_total", "counter", "Inbound messages rejected, by reason.",
        static_cast<double>(core.rejected_messages()), {{"reason", "all"}});
  for (const auto& [reason, n] : core.rejected_by_reason()) {
    t.Add("lowband_rejected_messages_total", "counter", "", static_cast<double>(n), {{"reason", reason}});
  }
  t.Add("lowband_dropped_messages_total", "counter",
        "Inbound messages dropped by the transport (too many frames, or larger than max_message_bytes).",
        static_cast<double>(workers ? workers->dropped_messages() : 0));
  if (zap) {
    t.Add("lowband_auth_refused_total", "counter", "CurveZMQ handshakes refused by the ZAP handler (unknown keys).",
          static_cast<double>(zap->refused()));
    t.Add("lowband_auth_accepted_total", "counter", "CurveZMQ handshakes accepted.", static_cast<double>(zap->accepted()));
  }
  t.Add("lowband_coordinator_restarts_total", "counter", "Restarts this campaign has resumed from.", restarts);
  t.Add("lowband_campaign_finished", "gauge", "1 once the campaign has ended.",
        core.phase() == CoordinatorCore::Phase::kFinished ? 1 : 0);
  return t.str();
}

// Compression of one message kind against dense fp32: the fp32 payload bytes
// the same messages would carry (4 bytes per parameter they cover: a
// pipeline stage's slice, or the whole model) over the bytes they took
// (header frames included). 0 when none were sent.
double CoordinatorService::Impl::DenseBytes(const std::string& site, uint32_t round, const std::string& kind,
                                            uint64_t messages) const {
  // FPLD: against the same probe logits as fp32.
  const int64_t covered = kind == "logit_upload" ? static_cast<int64_t>(config.fpld.contexts) *
                                                       config.fpld.positions * config.model.vocab
                          : kind == "delta_upload" ? core.UploadParamsOf(site, round)
                                                   : core.ParamsOf(site);
  return static_cast<double>(messages) * static_cast<double>(covered) * 4.0;
}

void CoordinatorService::Impl::RecordPeerTraffic(const std::string& site, uint32_t round, const Message& msg) {
  const std::vector<PeerTraffic>* traffic = nullptr;
  if (const auto* up = std::get_if<DeltaUpload>(&msg.body)) traffic = &up->peer_traffic;
  if (const auto* ev = std::get_if<EvalReport>(&msg.body)) traffic = &ev->peer_traffic;
  if (!traffic || traffic->empty()) return;
  const int stage = core.StageOf(site);
  const int stages = config.pipeline.stages;
  for (const PeerTraffic& t : *traffic) {
    // Self-reported: only what the site's own stage could have sent counts.
    if (stage < 0 || static_cast<int>(t.from_stage) != stage || static_cast<int>(t.to_stage) >= stages) {
      LOG_WARN("peer traffic report ignored", {"site", site}, {"stage", stage},
               {"from_stage", static_cast<uint64_t>(t.from_stage)}, {"to_stage", static_cast<uint64_t>(t.to_stage)});
      continue;
    }
    const std::string kind = "stage" + std::to_string(t.from_stage) + "->" + std::to_string(t.to_stage) + "." +
                             PeerTrafficKindName(t.kind);
    ledger.Add(site, Direction::kPeer, round, kind, LedgerEntry{t.bytes, t.messages});
  }
}

CoordinatorService::Impl::BoundaryFigures CoordinatorService::Impl::Boundary(int b, int64_t round) const {
  auto kind = [](int from, int to, const char* what) {
    return "stage" + std::to_string(from) + "->" + std::to_string(to) + "." + what;
  };
  BoundaryFigures f;
  f.forward = ledger.KindTotal(Direction::kPeer, kind(b, b + 1, "forward"), round);
  f.backward = ledger.KindTotal(Direction::kPeer, kind(b + 1, b, "backward"), round);
  f.eval = ledger.KindTotal(Direction::kPeer, kind(b, b + 1, "eval"), round);
  const int last = config.pipeline.stages - 1;
  if (b + 1 == last) f.labels = ledger.KindTotal(Direction::kPeer, kind(0, last, "labels"), round);
  // Without a bottleneck every micro-batch would carry its activations at
  // full width in fp32: tokens x d_model x 4 bytes each way.
  const double mb_tokens = static_cast<double>(config.training.batch_size) / config.pipeline.micro_batches *
                           config.model.context;
  const double dense = static_cast<double>(f.forward.messages + f.backward.messages) * mb_tokens *
                       config.model.d_model * 4.0;
  const uint64_t bytes = f.forward.bytes + f.backward.bytes;
  f.ratio = bytes > 0 ? dense / static_cast<double>(bytes) : 0.0;
  return f;
}

std::string CoordinatorService::Impl::BoundariesJson(int64_t round) const {
  std::string json = "[";
  for (int b = 0; b + 1 < config.pipeline.stages; ++b) {
    const BoundaryFigures f = Boundary(b, round);
    if (json.size() > 1) json += ',';
    JsonObject o;
    o.Add("boundary", b)
        .Add("forward_bytes", f.forward.bytes)
        .Add("forward_messages", f.forward.messages)
        .Add("backward_bytes", f.backward.bytes)
        .Add("backward_messages", f.backward.messages)
        .Add("labels_bytes", f.labels.bytes)
        .Add("eval_bytes", f.eval.bytes)
        .Add("compression_ratio", f.ratio);
    json += o.str();
  }
  return json + "]";
}

void CoordinatorService::Impl::OnCommitted(const RoundRecord& r) {
  if (r.reevaluated) {
    // Recorded before the restart; this evaluation only confirms that every
    // replica holds the resumed parameters.
    LOG_INFO("resumed round re-evaluated", {"round", r.round}, {"val_loss", r.val_loss},
             {"evaluated", r.evaluated}, {"digest", DigestHex(r.digest)});
    if (options.progress) {
      std::printf("round %3u/%-3d resumed after a restart: val %.4f on %d sites, digest %s%s\n", r.round,
                  config.training.rounds, r.val_loss, r.evaluated, DigestHex(r.digest).c_str(),
                  r.digest_mismatches ? "  DIGEST MISMATCH" : "");
      std::fflush(stdout);
    }
    return;
  }
  const uint64_t up = ledger.RoundTotal(r.round, Direction::kUp);
  const uint64_t down = ledger.RoundTotal(r.round, Direction::kDown);
  const LedgerEntry uploads = ledger.KindTotal(Direction::kUp, UploadKind(), r.round);
  const LedgerEntry aggregates = ledger.KindTotal(Direction::kDown, "aggregate", r.round);
  const double ratio_up = ledger.Ratio(Direction::kUp, UploadKind(), r.round);
  const double ratio_down = ledger.Ratio(Direction::kDown, "aggregate", r.round);
  LOG_INFO("round committed", {"round", r.round}, {"train_loss", r.train_loss}, {"val_loss", r.val_loss},
           {"bytes_up", up}, {"bytes_down", down}, {"ratio_up", ratio_up}, {"ratio_down", ratio_down},
           {"contributors", r.contributors}, {"digest", DigestHex(r.digest)}, {"wall_s", r.wall_s});
  if (options.progress) {
    char train[16];
    if (std::isfinite(r.train_loss)) {
      std::snprintf(train, sizeof(train), "%.4f", r.train_loss);
    } else {
      std::snprintf(train, sizeof(train), "   -  ");
    }
    std::printf("round %3u/%-3d train %s  val %.4f  up %10s (x%6.1f)  down %10s (x%5.1f %s)  %6.2f s  wait %5.2f s  "
                "sites %d%s\n",
                r.round, config.training.rounds, train, r.val_loss, HumanBytes(up).c_str(), ratio_up,
                HumanBytes(down).c_str(), ratio_down, r.round == 0 ? "-" : CodecName(r.down_codec), r.wall_s,
                r.exposed_comm_s, r.evaluated, r.digest_mismatches ? "  DIGEST MISMATCH" : "");
    if (config.training.adaptive.enabled && r.round > 0) {
      // H_i per site and its step time; stragglers whose previous upload came too late.
      std::string line;
      for (const auto& [name, s] : r.sites) {
        if (s.inner_steps <= 0) continue;
        char item[128];
        std::snprintf(item, sizeof(item), "%s%s H %d (%.0f ms/step%s)", line.empty() ? "" : ", ", name.c_str(),
                      s.inner_steps, s.step_time_ms, s.uploaded ? "" : ", no upload");
        line += item;
      }
      std::printf("             steps: %s%s\n", line.c_str(),
                  r.stragglers ? ("; stragglers left out: " + std::to_string(r.stragglers)).c_str() : "");
    }
    if (config.fpld.enabled && r.round > 0) {
      std::printf("             fpld: logits %s up (x%.1f vs fp32)  student: public val %.4f  distil KL %.4f%s\n",
                  HumanBytes(static_cast<double>(r.fpld.payload_bytes)).c_str(),
                  r.fpld.payload_bytes ? static_cast<double>(r.fpld.fp32_bytes) / r.fpld.payload_bytes : 0.0,
                  r.fpld.public_val_loss, r.fpld.distill_loss,
                  std::isfinite(r.fpld.teacher_kl)
                      ? ("  KL to the unquantized teacher: teacher " + JsonNumber(r.fpld.teacher_kl) + ", student " +
                         JsonNumber(r.fpld.student_kl))
                            .c_str()
                      : "");
    }
    if (!r.cluster_val_loss.empty()) {
      std::string line;
      for (const auto& [name, loss] : r.cluster_val_loss) {
        char item[96];
        std::snprintf(item, sizeof(item), "%s%s %.4f", line.empty() ? "" : ", ", name.c_str(), loss);
        line += item;
      }
      std::printf("             val by cluster: %s\n", line.c_str());
    }
    for (int b = 0; b + 1 < config.pipeline.stages && r.round > 0; ++b) {
      const BoundaryFigures f = Boundary(b, r.round);
      std::printf("             boundary %d|%d: forward %10s  backward %10s  (x%.1f vs fp32 at d_model %d)\n", b,
                  b + 1, HumanBytes(f.forward.bytes).c_str(), HumanBytes(f.backward.bytes).c_str(), f.ratio,
                  config.model.d_model);
    }
    std::fflush(stdout);
  }
  std::string line;
  {
    std::string sites = "{";
    for (const auto& [name, s] : r.sites) {
      if (sites.size() > 1) sites += ',';
      JsonObject o;
      o.Add("train_loss", s.train_loss)
          .Add("val_loss", s.val_loss)
          .Add("tokens", s.tokens)
          .Add("uploaded", s.uploaded)
          .Add("digest_ok", s.digest_ok)
          .Add("inner_steps", s.inner_steps)
          .Add("block", s.block)
          .Add("step_time_ms", s.step_time_ms)
          .Add("straggler", s.late)
          .Add("wait_s", s.wait_s)
          .Add("bytes_up", ledger.SiteRoundTotal(name, r.round, Direction::kUp))
          .Add("bytes_down", ledger.SiteRoundTotal(name, r.round, Direction::kDown))
          .Add("upload_bytes", ledger.KindTotal(Direction::kUp, UploadKind(), r.round, name).bytes);
      sites += JsonString(name) + ":" + o.str();
    }
    sites += "}";
    JsonObject o;
    o.Add("round", r.round)
        .Add("train_loss", r.train_loss)
        .Add("val_loss", r.val_loss)
        .Add("bytes_up", up)
        .Add("bytes_down", down)
        .Add("upload_bytes", uploads.bytes)
        .Add("aggregate_bytes", aggregates.bytes)
        .Add("compression_ratio", ratio_up)
        .Add("compression_ratio_down", ratio_down)
        .Add("codec", CodecName(config.codec.kind))
        .Add("down_codec", CodecName(r.down_codec))
        .Add("aggregate_nnz", r.aggregate_nnz)
        .Add("wall_s", r.wall_s)
        .Add("elapsed_s", r.elapsed_s)
        .Add("tokens", r.tokens)
        .Add("contributors", r.contributors)
        .Add("evaluated", r.evaluated)
        .Add("late_uploads", r.late_uploads)
        .Add("stragglers", r.stragglers)
        .Add("train_s", r.train_s)
        .Add("exposed_comm_s", r.exposed_comm_s)
        .Add("digest", DigestHex(r.digest))
        .Add("digests_match", r.digest_mismatches == 0)
        .AddRaw("sites", sites);
    if (config.pipeline.stages > 1) o.AddRaw("boundaries", BoundariesJson(r.round));
    if (config.fpld.enabled) {
      JsonObject f;
      f.Add("logit_payload_bytes", r.fpld.payload_bytes)
          .Add("logit_fp32_bytes", r.fpld.fp32_bytes)
          .Add("bits", config.fpld.bits)
          .Add("teacher_kl", r.fpld.teacher_kl)
          .Add("student_kl", r.fpld.student_kl)
          .Add("distill_loss", r.fpld.distill_loss)
          .Add("student_public_val_loss", r.fpld.public_val_loss);
      o.AddRaw("fpld", f.str());
    }
    if (!r.cluster_val_loss.empty()) {
      JsonObject clusters;
      for (const auto& [name, loss] : r.cluster_val_loss) clusters.Add(name, loss);
      o.AddRaw("cluster_val_loss", clusters.str());
    }
    line = o.str();
    KeepRecordLine(line);  // the dashboard's history
  }
  {
    char status[160];
    std::snprintf(status, sizeof(status), "campaign %s: round %u/%d committed, val loss %.4f, %d sites",
                  config.name.c_str(), r.round, config.training.rounds, r.val_loss, r.evaluated);
    systemd.Status(status);
  }
  // The metrics line, then the record in the state database (disk thread).
  disk->RecordRound(r, ledger.RowsSince(ledger_saved_from), std::move(line));
}

// The dashboard's routes: the page, its state, its round controls, and the
// Prometheus text. Runs on the loop thread like every other handler.
HttpResponse CoordinatorService::Impl::HandleHttp(const HttpRequest& req) {
  const bool read = req.method == "GET" || req.method == "HEAD";
  if (req.path == "/metrics" && read) return {200, "text/plain; version=0.0.4; charset=utf-8", RenderMetrics()};
  if ((req.path == "/" || req.path == "/index.html") && read) return {200, "text/html; charset=utf-8", DashboardPage()};
  if (req.path == "/api/state" && read) return {200, "application/json", StateJson()};
  if (req.path == "/api/control") {
    auto answer = [](unsigned status, bool ok, const std::string& message) {
      JsonObject o;
      o.Add("ok", ok).Add("message", message);
      return HttpResponse{status, "application/json", o.str()};
    };
    if (req.method != "POST") return answer(405, false, "round controls are POST requests");
    if (dashboard_token.empty()) return answer(403, false, "read-only dashboard: no network.dashboard_token configured");
    const std::string given = req.authorization.rfind("Bearer ", 0) == 0 ? req.authorization.substr(7) : "";
    // Compare in constant time: the token is a secret.
    unsigned diff = given.size() != dashboard_token.size();
    for (size_t i = 0; i < dashboard_token.size(); ++i) {
      diff |= static_cast<unsigned char>(i < given.size() ? given[i] : 0) ^ static_cast<unsigned char>(dashboard_token[i]);
    }
    if (diff != 0) {
      LOG_WARN("dashboard control refused: bad or missing operator token");
      return answer(401, false, "the operator token is missing or wrong");
    }
    const std::string command = QueryParam(req.query, "command");
    ControlRequest cr;
    if (command == "pause" || command == "resume" || command == "close") {
      cr.command = "round " + command;
    } else if (command == "evict") {
      cr.command = "worker evict";
      cr.args = {QueryParam(req.query, "site")};
    } else {
      return answer(400, false, "unknown command '" + command + "' (allowed: pause, resume, close, evict&site=SITE)");
    }
    CoreOutput out;
    const ControlResponse resp = core.HandleControl(cr, Clock::now(), &out);
    LOG_INFO("dashboard control", {"command", cr.command}, {"ok", resp.ok}, {"reply", resp.message});
    Dispatch(out);
    return answer(resp.ok ? 200 : 409, resp.ok, resp.message);
  }
  if (req.path == "/metrics" || req.path == "/" || req.path == "/index.html" || req.path == "/api/state") {
    return {405, "text/plain", "only GET or HEAD here\n"};
  }
  return {404, "text/plain", "not found: the dashboard is at /, its state at /api/state, metrics at /metrics\n"};
}

std::string CoordinatorService::Impl::StateJson() {
  CoreOutput none;
  const ControlResponse status = core.HandleControl(ControlRequest{"status", {}}, Clock::now(), &none);
  const ControlResponse workers = core.HandleControl(ControlRequest{"workers", {}}, Clock::now(), &none);
  std::string records = "[";
  for (const std::string& line : record_lines) {
    if (records.size() > 1) records += ',';
    records += line;
  }
  records += "]";
  JsonObject o;
  o.AddRaw("status", status.json).AddRaw("workers", workers.json).AddRaw("records", records)
      .Add("control", !dashboard_token.empty()).AddRaw("fcrag", fcrag_result.empty() ? "null" : fcrag_result);
  return o.str();
}

// The campaign's own calibration goes to RUN_DIR/fcrag.json, the progress
// output and summary.txt; an operator's calibrate/predict to its caller.
void CoordinatorService::Impl::OnFcragResult(const FcragResult& r) {
  if (r.ticket == 0) {
    fcrag_result = r.json;
    if (options.progress) {
      std::printf("fc-rag %s: %s\n", r.ok ? "calibration" : "calibration failed", r.message.c_str());
      std::fflush(stdout);
    }
    if (r.ok) {
      const std::string path = options.run_dir + "/fcrag.json";
      if (FILE* f = std::fopen(path.c_str(), "w")) {
        std::fprintf(f, "%s\n", r.json.c_str());
        std::fclose(f);
      }
    }
    return;
  }
  auto it = deferred_controls.find(r.ticket);
  if (it == deferred_controls.end()) return;
  Message reply;
  reply.campaign_id = config.name;
  reply.sender_id = "coordinator";
  reply.body = ControlResponse{r.ok, r.message, r.json};
  Status st = control->Send(it->second, EncodeMessage(reply));
  if (!st.ok()) LOG_WARN("control reply failed", {"reason", st.ToString()});
  deferred_controls.erase(it);
}

// A restart keeps the metrics records of the rounds the state database has
// recorded and drops any later line (written just before a crash), so that
// every round appears exactly once.
Status CoordinatorService::Impl::TrimMetrics(uint32_t last_recorded) {
  std::ifstream in(options.metrics_out);
  if (!in) return Status::Ok();  // nothing written yet
  std::string kept, line;
  size_t dropped = 0;
  while (std::getline(in, line)) {
    const std::string prefix = "{\"round\":";
    unsigned long round = 0;
    const bool numbered = line.rfind(prefix, 0) == 0 &&
                          std::sscanf(line.c_str() + prefix.size(), "%lu", &round) == 1;
    if (numbered && round <= last_recorded) {
      kept += line + "\n";
    } else if (!line.empty()) {
      ++dropped;
    }
  }
  in.close();
  if (dropped == 0) return Status::Ok();
  const std::string tmp = options.metrics_out + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << kept;
    if (!out.flush()) return Internal("cannot write " + tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, options.metrics_out, ec);
  if (ec) return Internal("cannot replace " + options.metrics_out + ": " + ec.message());
  LOG_INFO("metrics records after the last recorded round dropped", {"path", options.metrics_out},
           {"dropped", static_cast<uint64_t>(dropped)}, {"last_recorded", last_recorded});
  return Status::Ok();
}

void CoordinatorService::Impl::PrintSummary() {
  std::printf("\n%-16s %12s %12s %12s %10s %12s %10s %7s\n", "site", "bytes up", "bytes down", "uploads",
              "up ratio", "aggregates", "dn ratio", "rounds");
  std::map<std::string, int> rounds;
  for (const auto& r : core.history()) {
    for (const auto& [name, s] : r.sites) rounds[name] += s.uploaded;
  }
  auto row = [&](const std::string& label, const std::string& site, int n) {
    const LedgerEntry up = ledger.KindTotal(Direction::kUp, UploadKind(), -1, site);
    const LedgerEntry dn = ledger.KindTotal(Direction::kDown, "aggregate", -1, site);
    const uint64_t total_up = site.empty() ? ledger.Total(Direction::kUp) : ledger.SiteTotal(site, Direction::kUp);
    const uint64_t total_dn =
        site.empty() ? ledger.Total(Direction::kDown) : ledger.SiteTotal(site, Direction::kDown);
    std::printf("%-16s %12s %12s %12s %9.1fx %12s %9.1fx %7d\n", label.c_str(), HumanBytes(total_up).c_str(),
                HumanBytes(total_dn).c_str(), HumanBytes(up.bytes).c_str(), ledger.Ratio(Direction::kUp, UploadKind(), -1, site),
                HumanBytes(dn.bytes).c_str(), ledger.Ratio(Direction::kDown, "aggregate", -1, site), n);
  };
  int all_rounds = 0;
  for (const auto& [name, w] : core.workers()) {
    row(name, name, rounds[name]);
    all_rounds += rounds[name];
  }
  row("total", "", all_rounds);
  std::printf("(bytes up/down: every message, headers included; uploads/aggregates: the delta_upload and\n"
              " aggregate messages alone; ratio: dense fp32 bytes of the same messages / bytes sent)\n");
  for (int b = 0; b + 1 < config.pipeline.stages; ++b) {
    const BoundaryFigures f = Boundary(b, -1);
    auto per = [](const LedgerEntry& e) { return e.messages ? static_cast<double>(e.bytes) / e.messages : 0.0; };
    std::printf("boundary %d|%d: forward %s (%" PRIu64 " micro-batches, %.0f B each), backward %s (%.0f B each), "
                "labels %s, validation %s; x%.1f vs fp32 activations at d_model %d\n",
                b, b + 1, HumanBytes(f.forward.bytes).c_str(), f.forward.messages, per(f.forward),
                HumanBytes(f.backward.bytes).c_str(), per(f.backward), HumanBytes(f.labels.bytes).c_str(),
                HumanBytes(f.eval.bytes).c_str(), f.ratio, config.model.d_model);
  }
  const auto& h = core.history();
  if (h.size() >= 2) {
    const double first = h.front().val_loss, last = h.back().val_loss;
    std::printf("validation loss %.4f -> %.4f (%.1f%% lower), final digest %s\n", first, last,
                100.0 * (first - last) / first, DigestHex(core.digest()).c_str());
  }
  std::fflush(stdout);
}

// RUN_DIR/summary.txt: one "key value" per line, for scripts (bench/).
void CoordinatorService::Impl::WriteSummary() {
  const std::string path = options.run_dir + "/summary.txt";
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) {
    LOG_WARN("cannot write summary", {"path", path});
    return;
  }
  const auto& h = core.history();
  uint64_t tokens = 0;
  for (const auto& r : h) tokens += r.tokens;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::fprintf(f, "campaign %s\n", config.name.c_str());
  std::fprintf(f, "status %s\n", ending->failed ? "failed" : "completed");
  std::fprintf(f, "codec %s\n", CodecName(config.codec.kind));
  std::fprintf(f, "outer %s\n", OuterOptimizerName(config.outer.kind));
  std::fprintf(f, "rounds %u\n", core.committed_round());
  std::fprintf(f, "inner_steps %d\n", config.training.inner_steps);
  std::fprintf(f, "parameters %zu\n", core.params().values.size());
  std::fprintf(f, "tokens %" PRIu64 "\n", tokens);
  std::fprintf(f, "initial_val_loss %.6f\n", h.empty() ? nan : h.front().val_loss);
  std::fprintf(f, "final_val_loss %.6f\n", h.empty() ? nan : h.back().val_loss);
  std::fprintf(f, "bytes_up %" PRIu64 "\n", ledger.Total(Direction::kUp));
  std::fprintf(f, "bytes_down %" PRIu64 "\n", ledger.Total(Direction::kDown));
  const LedgerEntry up = ledger.KindTotal(Direction::kUp, UploadKind());
  const LedgerEntry dn = ledger.KindTotal(Direction::kDown, "aggregate");
  std::fprintf(f, "upload_bytes %" PRIu64 "\n", up.bytes);
  std::fprintf(f, "aggregate_bytes %" PRIu64 "\n", dn.bytes);
  std::fprintf(f, "ratio_up %.2f\n", ledger.Ratio(Direction::kUp, UploadKind()));
  std::fprintf(f, "ratio_down %.2f\n", ledger.Ratio(Direction::kDown, "aggregate"));
  for (int b = 0; b + 1 < config.pipeline.stages; ++b) {
    // Per micro-batch message, header frames included (bench/resbm_pipeline).
    const BoundaryFigures bf = Boundary(b, -1);
    auto per = [](const LedgerEntry& e) { return e.messages ? static_cast<double>(e.bytes) / e.messages : 0.0; };
    std::fprintf(f, "boundary%d_forward_bytes %" PRIu64 "\n", b, bf.forward.bytes);
    std::fprintf(f, "boundary%d_backward_bytes %" PRIu64 "\n", b, bf.backward.bytes);
    std::fprintf(f, "boundary%d_forward_bytes_per_message %.1f\n", b, per(bf.forward));
    std::fprintf(f, "boundary%d_backward_bytes_per_message %.1f\n", b, per(bf.backward));
    std::fprintf(f, "boundary%d_ratio %.2f\n", b, bf.ratio);
  }
  if (!fcrag_result.empty()) std::fprintf(f, "fcrag %s\n", fcrag_result.c_str());
  std::fprintf(f, "wall_s %.2f\n", std::chrono::duration<double>(Clock::now() - started).count());
  std::fprintf(f, "final_digest %s\n", DigestHex(core.digest()).c_str());
  std::fclose(f);
}

// The final checkpoint, the ledger, then the campaign's end in the state
// database (disk thread); CampaignEnd waits for it, OnFinished follows it.
void CoordinatorService::Impl::FinishDurably(const CoreOutput& out) {
  exit_code = out.failed ? 1 : 0;
  ending = Ending{out.failed, out.finish_reason};
  barrier = disk->Finish(options.run_dir + "/checkpoint-final.lbck",
                         Checkpoint{core.committed_round(), config.name, core.params(), core.outer_momentum()},
                         ledger.RowsSince(ledger_saved_from), out.failed, out.finish_reason);
}

void CoordinatorService::Impl::OnFinished() {
  done = true;
  WriteSummary();
  if (options.progress) {
    if (ending->failed) {
      std::printf("campaign failed: %s\n", ending->reason.c_str());
    } else {
      std::printf("campaign %s finished: %s\n", config.name.c_str(), ending->reason.c_str());
    }
    PrintSummary();
  }
}

int CoordinatorService::Impl::OpenState() {
  std::error_code ec;
  std::filesystem::create_directories(options.run_dir + "/checkpoints", ec);
  if (ec) {
    LOG_ERROR("cannot create the run directory", {"path", options.run_dir}, {"reason", ec.message()});
    return 1;
  }
  const std::string db = options.run_dir + "/state.db";
  auto opened = StateStore::Open(db);
  if (!opened.ok()) {
    LOG_ERROR("cannot open the campaign state", {"path", db}, {"reason", opened.status().ToString()});
    return 1;
  }
  store = std::move(opened).value();
  auto row = store->Campaign();
  if (!row.ok()) {
    LOG_ERROR("cannot read the campaign state", {"path", db}, {"reason", row.status().ToString()});
    return 1;
  }
  const uint64_t fingerprint = CampaignFingerprint(config);
  if (!row->has_value()) {
    CampaignRow fresh;
    fresh.name = config.name;
    fresh.fingerprint = fingerprint;
    fresh.initial_digest = core.digest();
    if (Status st = store->CreateCampaign(fresh); !st.ok()) {
      LOG_ERROR("cannot record the campaign", {"path", db}, {"reason", st.ToString()});
      return 1;
    }
    return -1;
  }
  const CampaignRow& stored = **row;
  if (stored.name != config.name || stored.fingerprint != fingerprint || stored.initial_digest != core.digest()) {
    std::fprintf(stderr,
                 "lowband-coordinator: %s holds campaign '%s' with other settings (model, training, optimizer, "
                 "codec or seed differ from %s); resume it with its own campaign file, or give this one another "
                 "output.run_dir\n",
                 db.c_str(), stored.name.c_str(), config.source.c_str());
    LOG_ERROR("state belongs to another campaign", {"path", db}, {"stored", stored.name});
    return kExitConfig;
  }
  if (stored.status != "running") {
    // Killed after recording the end but perhaps before every worker heard
    // it: answer hellos with CampaignEnd for a while, then exit.
    const auto linger = std::chrono::milliseconds(2 * config.network.heartbeat_timeout_ms);
    std::fprintf(stderr,
                 "lowband-coordinator: campaign '%s' in %s already ended at round %u (%s: %s); nothing to resume; "
                 "telling workers that ask for %.0f s\n",
                 stored.name.c_str(), db.c_str(), stored.committed_round, stored.status.c_str(), stored.reason.c_str(),
                 std::chrono::duration<double>(linger).count());
    LOG_INFO("campaign already ended", {"round", stored.committed_round}, {"status", stored.status});
    core.RestoreEnded(stored.committed_round, stored.reason);
    ended_exit = stored.status == "completed" ? 0 : 1;
    linger_until = Clock::now() + linger;
    return -1;
  }
  return Resume(stored);
}

int CoordinatorService::Impl::Resume(const CampaignRow& row) {
  const auto started_resume = Clock::now();
  auto fail = [&](const std::string& what, const Status& st) {
    LOG_ERROR("cannot resume the campaign", {"what", what}, {"reason", st.ToString()});
    std::fprintf(stderr, "lowband-coordinator: cannot resume campaign '%s' from %s: %s: %s\n", row.name.c_str(),
                 options.run_dir.c_str(), what.c_str(), st.ToString().c_str());
    return 1;
  };
  // A checkpoint write cut short leaves only its temporary file.
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(options.run_dir + "/checkpoints", ec)) {
    if (e.path().extension() == ".tmp") std::filesystem::remove(e.path(), ec);
  }
  auto rows = store->Checkpoints();
  if (!rows.ok()) return fail("listing checkpoints", rows.status());
  // The newest readable checkpoint whose digest is the recorded one.
  uint32_t base = 0;
  for (auto it = rows->rbegin(); it != rows->rend(); ++it) {
    if (it->round > row.committed_round) continue;
    auto ckpt = ReadCheckpoint(it->path);
    if (!ckpt.ok() || ckpt->params.Digest() != it->digest) {
      LOG_WARN("checkpoint unusable, trying an older one", {"path", it->path},
               {"reason", ckpt.ok() ? std::string("digest differs from the recorded one") : ckpt.status().ToString()});
      continue;
    }
    Status st = core.Restore(ckpt->round, std::move(ckpt->params), std::move(ckpt->outer_momentum));
    if (!st.ok()) return fail("restoring " + it->path, st);
    base = it->round;
    break;
  }
  auto stored = store->Rounds(/*with_gradients=*/true, base);
  if (!stored.ok()) return fail("reading the round log", stored.status());
  std::vector<RoundRecord> recorded;
  std::optional<RoundRecord> unrecorded;
  int replayed = 0;
  for (StoredRound& s : *stored) {
    const uint32_t r = s.record.round;
    if (r > row.committed_round) break;
    if (r > base) {
      if (!s.gradient) {
        return fail("replaying round " + std::to_string(r),
                    Corruption("neither a checkpoint at or after it nor its logged gradient survives"));
      }
      Status st = core.Replay(r, *s.gradient, s.record.digest);
      if (!st.ok()) return fail("replaying round " + std::to_string(r), st);
      ++replayed;
    }
    if (s.recorded) {
      last_recorded = r;
      recorded.push_back(std::move(s.record));
    } else if (r == row.committed_round) {
      unrecorded = std::move(s.record);
    } else {
      // Overlapped rounds: committed, but the restart came before its
      // evaluations. Recorded as it is (no validation loss) once the
      // metrics file is open; the campaign goes on from the newest round.
      recorded.push_back(s.record);
      unevaluated.push_back(std::move(s.record));
    }
  }
  if (core.committed_round() != row.committed_round) {
    return fail("rebuilding round " + std::to_string(row.committed_round),
                Corruption("the log stops at round " + std::to_string(core.committed_round())));
  }
  // Round 0's record (the initial evaluation) lives with the rounds too.
  core.RestoreHistory(std::move(recorded), std::move(unrecorded));
  auto saved = store->Ledger();
  if (!saved.ok()) return fail("reading the ledger", saved.status());
  for (LedgerRow& l : *saved) {
    l.entry.dense_bytes = DenseBytes(l.site, l.round, l.kind, l.entry.messages);
    ledger.Add(l.site, l.dir, l.round, l.kind, l.entry);
  }
  ledger_saved_from = core.committed_round();
  (void)store->NoteRestart();
  restarts = row.restarts + 1;
  resumed = true;
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - started_resume).count();
  LOG_INFO("campaign resumed", {"round", core.committed_round()}, {"checkpoint_round", base},
           {"replayed_rounds", replayed}, {"digest", DigestHex(core.digest())}, {"restarts", row.restarts + 1},
           {"rebuild_ms", ms});
  if (options.progress) {
    std::printf("coordinator: resuming campaign %s at round %u (checkpoint of round %u + %d logged rounds, %.0f ms), "
                "digest %s\n",
                config.name.c_str(), core.committed_round(), base, replayed, ms, DigestHex(core.digest()).c_str());
    std::fflush(stdout);
  }
  return -1;
}

int CoordinatorService::Impl::Run(SignalWatcher& signals) {
  if (int code = OpenState(); code >= 0) return code;
  if (resumed && !options.metrics_out.empty()) {
    if (Status st = TrimMetrics(last_recorded); !st.ok()) {
      LOG_ERROR("cannot trim the metrics file", {"reason", st.ToString()});
      return 1;
    }
    std::ifstream kept(options.metrics_out);
    for (std::string line; std::getline(kept, line);) {
      if (!line.empty()) KeepRecordLine(line);  // the dashboard's history before the restart
    }
  }
  if (!options.metrics_out.empty() && !ended_exit) {
    std::error_code ec;
    const auto parent = std::filesystem::path(options.metrics_out).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    metrics = std::fopen(options.metrics_out.c_str(), resumed ? "a" : "w");
    if (!metrics) {
      LOG_ERROR("cannot open metrics file", {"path", options.metrics_out});
      return 1;
    }
  }
  // From here on the disk thread owns the state database and the metrics file.
  PersistenceOptions popts;
  popts.run_dir = options.run_dir;
  popts.checkpoint_keep = config.checkpoint.keep;
  auto started_disk = Persistence::Start(std::move(store), metrics, popts);
  metrics = nullptr;
  if (!started_disk.ok()) {
    LOG_ERROR("cannot start the disk thread", {"reason", started_disk.status().ToString()});
    return 1;
  }
  disk = std::move(started_disk).value();
  auto started_compute = ComputeThread::Start(core.aggregation());
  if (!started_compute.ok()) {
    LOG_ERROR("cannot start the compute thread", {"reason", started_compute.status().ToString()});
    return 1;
  }
  compute = std::move(started_compute).value();
  core.SetAsyncClose(true);
  for (const RoundRecord& r : unevaluated) {
    LOG_WARN("round recorded without evaluations: the restart came first", {"round", r.round});
    OnCommitted(r);
  }
  unevaluated.clear();
  std::optional<CurveServerOptions> worker_curve, control_curve;
  if (config.network.security == "curve") {
    auto key = ReadCurveKeyFile(config.network.server_key, /*secret_required=*/true);
    auto sites = key.ok() ? ReadAllowList(config.network.site_keys) : key.status();
    auto operators = sites.ok() ? ReadAllowList(config.network.operator_keys) : sites.status();
    if (!operators.ok()) {
      std::fprintf(stderr, "lowband-coordinator: CurveZMQ keys: %s\n", operators.status().ToString().c_str());
      LOG_ERROR("cannot load CurveZMQ keys", {"reason", operators.status().ToString()});
      return kExitConfig;
    }
    auto handler = ZapHandler::Create(ctx, {{"workers", *sites}, {"control", *operators}});
    if (!handler.ok()) {
      LOG_ERROR("cannot start the ZAP handler", {"reason", handler.status().ToString()});
      return 1;
    }
    zap = std::move(handler).value();
    worker_curve = CurveServerOptions{key->secret_key, "workers"};
    control_curve = CurveServerOptions{key->secret_key, "control"};
    LOG_INFO("CurveZMQ on", {"public_key", key->public_key}, {"sites", static_cast<uint64_t>(sites->size())},
             {"operators", static_cast<uint64_t>(operators->size())});
  }
  auto w = ZmqServerTransport::Bind(ctx, config.network.bind,
                                    config.network.max_message_bytes + static_cast<int64_t>(limits.max_header_bytes),
                                    worker_curve ? &*worker_curve : nullptr);
  if (!w.ok()) {
    LOG_ERROR("cannot bind worker endpoint", {"endpoint", config.network.bind}, {"reason", w.status().ToString()});
    return kExitUnavailable;
  }
  workers = std::move(w).value();
  auto c = ZmqServerTransport::Bind(ctx, config.network.control, 1 << 20, control_curve ? &*control_curve : nullptr);
  if (!c.ok()) {
    LOG_ERROR("cannot bind control endpoint", {"endpoint", config.network.control},
              {"reason", c.status().ToString()});
    return kExitUnavailable;
  }
  control = std::move(c).value();
  EventLoop loop;
  if (!config.network.metrics.empty()) {
    if (!config.network.dashboard_token.empty()) {
      std::string token;
      const Status st = ReadTextFile(config.network.dashboard_token, &token);
      token = token.substr(0, token.find('\n'));
      while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
      if (!st.ok() || token.size() < 16) {
        std::fprintf(stderr, "lowband-coordinator: network.dashboard_token: %s\n",
                     st.ok() ? ("the token in " + config.network.dashboard_token + " is shorter than 16 characters").c_str()
                             : st.ToString().c_str());
        return kExitConfig;
      }
      dashboard_token = token;
    }
    auto m = MetricsHttpServer::Listen(config.network.metrics, [this](const HttpRequest& r) { return HandleHttp(r); });
    if (!m.ok()) {
      LOG_ERROR("cannot serve metrics", {"address", config.network.metrics}, {"reason", m.status().ToString()});
      return kExitUnavailable;
    }
    metrics_http = std::move(m).value();
    metrics_http->AddTo(loop);
    LOG_INFO("metrics endpoint", {"url", "http://" + config.network.metrics + "/metrics"},
             {"port", metrics_http->port()});
  }
  loop.AddFd(disk->fd(), [this] { OnDisk(); });
  loop.AddFd(compute->fd(), [this] { OnCompute(); });
  if (zap) loop.AddSocket(zap->socket(), [this] { zap->OnReadable(); });
  loop.AddSocket(workers->socket(), [this] { OnWorkers(); });
  loop.AddSocket(control->socket(), [this] { OnControl(); });
  signals.AddTo(loop);
  LOG_INFO("coordinator listening", {"campaign", config.name}, {"bind", config.network.bind},
           {"control", config.network.control}, {"parameters", static_cast<unsigned long>(core.params().values.size())},
           {"expected_workers", config.quorum.expected_workers}, {"rounds", config.training.rounds});
  systemd.Ready("campaign " + config.name + ": round " + std::to_string(core.committed_round()) + "/" +
                std::to_string(config.training.rounds) + ", waiting for " +
                std::to_string(config.quorum.expected_workers) + " workers on " + config.network.bind);
  if (options.progress) {
    std::printf("coordinator: %zu parameters, waiting for %d workers on %s\n", core.params().values.size(),
                config.quorum.expected_workers, config.network.bind.c_str());
    std::fflush(stdout);
  }
  const auto tick = std::chrono::milliseconds(std::max(10, std::min(100, config.network.heartbeat_interval_ms / 2)));
  auto next_tick = Clock::now();
  while (!done && !signals.stop_requested()) {
    const auto now = Clock::now();
    if (ended_exit && now >= linger_until) {
      done = true;
      exit_code = *ended_exit;
      break;
    }
    if (now >= next_tick) {
      CoreOutput out;
      core.OnTick(now, &out);
      Dispatch(out);
      if (metrics_http) metrics_http->OnTick();
      systemd.Tick(now);
      next_tick = now + tick;
    }
    Status st = loop.RunOnce(std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - Clock::now()) +
                             std::chrono::milliseconds(1));
    if (!st.ok()) {
      LOG_ERROR("event loop failed", {"reason", st.ToString()});
      exit_code = 1;
      break;
    }
  }
  if (signals.stop_requested() && !done) {
    LOG_INFO("stopping on signal", {"round", core.committed_round()});
  }
  systemd.Stopping("campaign " + config.name + ": stopping at round " + std::to_string(core.committed_round()));
  // A round being aggregated is dropped (a restart redoes it); jobs still
  // queued for the disk (a stop by signal) run before its thread joins.
  compute.reset();
  disk.reset();
  // Closing the sockets lingers briefly so CampaignEnd reaches the workers.
  metrics_http.reset();  // before the loop it is registered with goes
  workers.reset();
  zap.reset();
  control.reset();
  return exit_code;
}

}  // namespace lowband
