#include "coordinator/service.h"

#include <sys/stat.h>

#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include "base/failpoint.h"
#include "base/hash.h"
#include "base/json.h"
#include "base/log.h"
#include "coordinator/checkpoint.h"
#include "coordinator/compute.h"
#include "coordinator/http_api.h"
#include "coordinator/persistence.h"
#include "coordinator/prometheus.h"
#include "coordinator/reporting.h"
#include "coordinator/startup.h"
#include "coordinator/state_store.h"
#include "data/corpus.h"
#include "net/zmq/curve.h"
#include "net/zmq/event_loop.h"
#include "net/zmq/zmq_transport.h"
#include "ops/metrics_http.h"
#include "ops/systemd.h"
#include "protocol/wire.h"

namespace lowband {
namespace {

constexpr int kExitUnavailable = 69;  // EX_UNAVAILABLE

}  // namespace

// The loop's state. What it reports is rendered by RoundReporter
// (coordinator/reporting.h) and RenderPrometheus (coordinator/prometheus.h);
// the HTTP routes are HttpApi's (coordinator/http_api.h), which calls back
// through the Backend methods below; the state is opened (or a campaign
// resumed) by OpenCampaignState (coordinator/startup.h) before the loop.
struct CoordinatorService::Impl final : HttpApi::Backend {
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
  RoundReporter reporter{config, core, ledger};
  std::unique_ptr<StateStore> store;  // from OpenCampaignState until the disk thread takes it
  uint32_t ledger_saved_from = 0;  // ledger rounds >= this may have changed since the last save
  static constexpr uint32_t kLedgerRoundsHeld = 4;  // per-round ledger detail kept behind the last saved round
  std::map<std::string, std::string> member_states;  // site -> state last written to the store
  bool resumed = false;
  uint32_t started_round = 0;  // the last round whose RoundStart went out
  std::unique_ptr<HttpApi> http_api;
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
  // The dashboard's round history (the metrics lines as written).
  RecordLines record_lines;
  std::string fcrag_result;
  void OnFcragResult(const FcragResult& r);
  bool done = false;
  int exit_code = 0;

  int Run(SignalWatcher& signals);
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
  // A round checkpoint is due: the round, its digest and its commit's job.
  struct RoundCheckpointDue {
    uint32_t round = 0;
    uint64_t digest = 0;
    uint64_t after = 0;
  };
  std::optional<RoundCheckpointDue> checkpoint_next;
  bool checkpoint_owed = false;  // due, not yet handed to the checkpoint thread
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
  void CheckpointIfDue();
  void Send(Outgoing& o);
  void ReleaseHeld();
  void AfterSend();
  void SaveMembers();
  void OnWorkers();
  void OnControl();
  // `lowband checkpoint`: the last committed round to RUN_DIR, answered
  // when written (OnDiskDone); an immediate answer when refused.
  std::optional<ControlResponse> WriteCheckpointNow(const std::string& peer);
  void Dispatch(CoreOutput& out);
  void OnCommitted(const RoundRecord& r);
  void FinishDurably(const CoreOutput& out);
  void OnFinished();
  void WriteSummary();
  // Pipeline traffic a worker reported with its upload or evaluation.
  void RecordPeerTraffic(const std::string& site, uint32_t round, const Message& msg);
  // HttpApi::Backend (the dashboard's routes).
  std::string PrometheusText() override;
  std::string StateJson() override;
  ControlResponse RunDashboardControl(const ControlRequest& req) override;
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
  std::optional<std::pair<uint32_t, uint64_t>> closed;  // the newest round committed here, its digest
  for (RoundCommit& c : out.commits) {
    const uint32_t round = c.record.round;
    closed.emplace(round, c.record.digest);
    barrier = disk->CommitRound(std::move(c));
    sent_failpoints.emplace_back(barrier, round);
  }
  // Only the last round closed here can be checkpointed (the core's
  // parameters are its); that happens once its messages are out.
  if (closed && (checkpoint_owed || closed->first % static_cast<uint32_t>(config.checkpoint.every) == 0)) {
    checkpoint_owed = true;
    checkpoint_next = RoundCheckpointDue{closed->first, closed->second, barrier};
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
  CheckpointIfDue();
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
    ledger.Record(site, Direction::kDown, round, kind, bytes, DenseBytes(config, core, site, round, kind, 1));
  }
  // (A catch-up from the aggregate log offers what the site holds, with no
  // payload: checksum 0; the log says "site catches up".)
  if (const auto* sync = std::get_if<ModelSync>(&o.msg.body); sync && sync->round > 0 && sync->blob.checksum != 0) {
    // A join after round 0: a restarted or returning site (or a restarted
    // coordinator's sites) catching up, whatever it missed, with one model
    // (offered here; pulled in chunks unless the site holds it already).
    LOG_INFO("site caught up", {"site", site}, {"round", sync->round}, {"bytes", sync->blob.byte_length});
    if (options.progress) {
      std::fputs(reporter.ResyncLine(site, sync->round, sync->blob.byte_length).c_str(), stdout);
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
  CheckpointIfDue();
}

// The round checkpoint due, once the round's commit is durable and its
// messages are out: the copy of the parameters (hundreds of MB) is then off
// the round's path too. Its file is written on the checkpoint thread, one
// at a time: while the previous one is still being written, or once the
// core has moved past the round, it stays owed and the next round to
// commit is checkpointed instead.
void CoordinatorService::Impl::CheckpointIfDue() {
  if (!checkpoint_next || checkpoint_next->after > disk_done) return;
  const RoundCheckpointDue due = *checkpoint_next;
  checkpoint_next.reset();
  // The campaign's end writes the final checkpoint instead.
  if (core.committed_round() != due.round || core.phase() == CoordinatorCore::Phase::kFinished) return;
  if (disk->CheckpointBusy()) {
    LOG_DEBUG("round checkpoint deferred: the previous one is still being written", {"round", due.round});
    return;
  }
  checkpoint_owed = false;
  disk->CheckpointRound(Checkpoint{due.round, config.name, core.params(), core.outer_momentum(), core.downlink_error()},
                        due.digest);
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
    ledger.Record(booked, Direction::kUp, round, kind, bytes - reference,
                  DenseBytes(config, core, booked, round, kind, 1));
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
  disk->WriteCheckpointFile(
      path, Checkpoint{round, config.name, core.params(), core.outer_momentum(), core.downlink_error()}, ticket);
  return std::nullopt;
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

void CoordinatorService::Impl::OnCommitted(const RoundRecord& r) {
  if (r.reevaluated) {
    // Recorded before the restart; this evaluation only confirms that every
    // replica holds the resumed parameters.
    LOG_INFO("resumed round re-evaluated", {"round", r.round}, {"val_loss", r.val_loss},
             {"evaluated", r.evaluated}, {"digest", DigestHex(r.digest)});
    if (options.progress) {
      std::fputs(reporter.ResumedLine(r).c_str(), stdout);
      std::fflush(stdout);
    }
    return;
  }
  const RoundReporter::Figures f = reporter.RoundFigures(r.round);
  LOG_INFO("round committed", {"round", r.round}, {"train_loss", r.train_loss}, {"val_loss", r.val_loss},
           {"bytes_up", f.up}, {"bytes_down", f.down}, {"ratio_up", f.ratio_up}, {"ratio_down", f.ratio_down},
           {"contributors", r.contributors}, {"digest", DigestHex(r.digest)}, {"wall_s", r.wall_s});
  if (options.progress) {
    std::fputs(reporter.ProgressLines(r).c_str(), stdout);
    std::fflush(stdout);
  }
  std::string line = reporter.RecordLine(r);
  record_lines.Keep(line);  // the dashboard's history
  systemd.Status(reporter.StatusLine(r));
  // The metrics line, then the record in the state database (disk thread).
  disk->RecordRound(r, ledger.RowsSince(ledger_saved_from), std::move(line));
}

// GET /metrics.
std::string CoordinatorService::Impl::PrometheusText() {
  ServiceCounters c;
  c.lost_events = lost_events;
  c.restarts = restarts;
  c.dropped_messages = workers ? workers->dropped_messages() : 0;
  if (zap) {
    c.curve = true;
    c.auth_refused = zap->refused();
    c.auth_accepted = zap->accepted();
  }
  return RenderPrometheus(config, core, ledger, c);
}

// GET /api/state.
std::string CoordinatorService::Impl::StateJson() {
  return DashboardStateJson(core, record_lines, http_api && http_api->control_enabled(), fcrag_result);
}

// POST /api/control, once HttpApi has checked the token and the command.
ControlResponse CoordinatorService::Impl::RunDashboardControl(const ControlRequest& req) {
  CoreOutput out;
  const ControlResponse resp = core.HandleControl(req, Clock::now(), &out);
  LOG_INFO("dashboard control", {"command", req.command}, {"ok", resp.ok}, {"reply", resp.message});
  Dispatch(out);
  return resp;
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

// The final checkpoint, the ledger, then the campaign's end in the state
// database (disk thread); CampaignEnd waits for it, OnFinished follows it.
void CoordinatorService::Impl::FinishDurably(const CoreOutput& out) {
  exit_code = out.failed ? 1 : 0;
  ending = Ending{out.failed, out.finish_reason};
  barrier = disk->Finish(
      options.run_dir + "/checkpoint-final.lbck",
      Checkpoint{core.committed_round(), config.name, core.params(), core.outer_momentum(), core.downlink_error()},
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
    std::fputs(reporter.FinalTable().c_str(), stdout);
    std::fflush(stdout);
  }
}

// RUN_DIR/summary.txt (coordinator/reporting.h).
void CoordinatorService::Impl::WriteSummary() {
  const std::string path = options.run_dir + "/summary.txt";
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) {
    LOG_WARN("cannot write summary", {"path", path});
    return;
  }
  const std::string text =
      reporter.Summary(ending->failed, fcrag_result, std::chrono::duration<double>(Clock::now() - started).count());
  std::fputs(text.c_str(), f);
  std::fclose(f);
}

int CoordinatorService::Impl::Run(SignalWatcher& signals) {
  OpenedState opened;
  if (int code = OpenCampaignState(config, options.run_dir, options.progress, core, ledger, &opened); code >= 0) {
    return code;
  }
  store = std::move(opened.store);
  resumed = opened.resumed;
  restarts = opened.restarts;
  ledger_saved_from = opened.ledger_saved_from;
  ended_exit = opened.ended_exit;
  linger_until = opened.linger_until;
  if (resumed && !options.metrics_out.empty()) {
    if (Status st = TrimMetrics(options.metrics_out, opened.last_recorded); !st.ok()) {
      LOG_ERROR("cannot trim the metrics file", {"reason", st.ToString()});
      return 1;
    }
    std::ifstream kept(options.metrics_out);
    for (std::string line; std::getline(kept, line);) {
      if (!line.empty()) record_lines.Keep(line);  // the dashboard's history before the restart
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
  for (const RoundRecord& r : opened.unevaluated) {
    LOG_WARN("round recorded without evaluations: the restart came first", {"round", r.round});
    OnCommitted(r);
  }
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
    std::string dashboard_token;
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
    http_api = std::make_unique<HttpApi>(std::move(dashboard_token), this);
    auto m = MetricsHttpServer::Listen(config.network.metrics,
                                       [this](const HttpRequest& r) { return http_api->Handle(r); });
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
