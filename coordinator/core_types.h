// The values the coordinator core's pieces share: messages out (Outgoing,
// CoreOutput), round records (RoundRecord, RoundCommit) and what the core
// knows of a worker (WorkerInfo). Plain data; included by coordinator/core.h,
// which is where users get them from. Thread: the coordinator loop.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "codec/params.h"
#include "coordinator/aggregation.h"
#include "coordinator/fcrag_hub.h"
#include "protocol/messages.h"

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
  // Compute utilisation: inner-step time / the training thread's cycle
  // (DeltaUpload.cycle_ms); NaN when unknown (a site's first round).
  double utilisation = std::numeric_limits<double>::quiet_NaN();
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
  int stragglers = 0;    // live sites with no upload when the round closed at its deadline
  double exposed_comm_s = 0;  // the largest wait_s of the round's sites
  double utilisation = std::numeric_limits<double>::quiet_NaN();  // the lowest of the round's sites
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
  double train_s = 0;    // round start to close: the training phase, as long as its slowest counted site
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

// The campaign as the core sees it now, for the pieces that act on it
// (Membership, RoundCollector). Read afresh at every use: a worker leaving
// or an upload arriving can close a round.
struct CampaignView {
  uint32_t committed_round = 0;
  const char* phase = "";  // CoordinatorCore::PhaseName, for heartbeats
  bool training = false;   // a round collects uploads
  bool finished = false;
  bool closing = false;    // a round's aggregation is running elsewhere
  uint64_t digest = 0;     // of the committed parameters
  const ParamSet* params = nullptr;
  const Aggregation* aggregation = nullptr;
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

}  // namespace lowband
