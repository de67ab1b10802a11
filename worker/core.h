// WorkerCore: a site's protocol state machine. Transport-free and
// torch-free: decoded messages, job results and clock ticks go in; messages
// to send and jobs for the training thread come out. The jobs themselves
// (configure, sync, train, apply, evaluate) run elsewhere (worker/executor.h)
// and report back through OnJobResult. Lives on the worker loop thread.
//
// Lifecycle: Hello (repeated until Welcome) -> Welcome: configure job ->
// ModelSync (an offer): check job; the replica holds it: evaluate ->
// EvalReport; it does not: SyncPull/SyncChunk until the model is in, then
// sync+evaluate job -> EvalReport; RoundStart(r): train job ->
// DeltaUpload; Aggregate(r): apply+evaluate job -> EvalReport; CampaignEnd:
// exit. Silence from the coordinator past the heartbeat timeout, or a
// "not registered" error, sends the worker back to Hello (a restarted
// coordinator re-syncs it).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "protocol/messages.h"

namespace lowband {

using WorkerClock = std::chrono::steady_clock;
using WorkerTime = WorkerClock::time_point;

struct ConfigureJob {
  Welcome welcome;
};
struct SyncJob {  // load parameters (bulk), then evaluate
  ModelSync sync;
  Frame bulk;  // empty: an offer, checked against the replica's digest
  uint64_t offer = 0;  // the core's number for an offer (0: a load)
};
struct TrainJob {
  uint32_t round = 0;
  int inner_steps = 0;
  uint64_t base_digest = 0;
  int block = -1;  // ParaBlock: the only block to train (-1: the whole model)
};
struct ApplyJob {  // apply the outer update, then evaluate
  Aggregate aggregate;
  Frame bulk;
};
struct FcragJob {  // FC-RAG: answer the hub's request from the site's store and queries
  FcragRequest request;
  Frame bulk;
};
using Job = std::variant<ConfigureJob, SyncJob, TrainJob, ApplyJob, FcragJob>;

struct ConfigureDone {};
struct EvalDone {
  uint32_t round = 0;
  double val_loss = 0;
  uint64_t val_tokens = 0;
  uint64_t digest = 0;
  bool digest_ok = true;  // digest (and every rank's) equals what the coordinator announced
  std::vector<uint64_t> rank_digests;  // a site of several ranks: each rank's, rank order
  uint64_t offer = 0;  // the offer this evaluation answers (the replica held it), or 0
};
struct SyncNeeded {  // the replica does not hold the offered parameters: pull them
  uint64_t offer = 0;
};
struct TrainDone {
  DeltaUpload upload;  // blob filled in (FPLD: only the round and figures)
  std::optional<LogitUpload> logits;  // FPLD: sent instead of the delta
  Frame bulk;
};
struct JobFailed {
  bool fatal = false;  // the worker cannot go on (e.g. device unavailable)
  ErrorCode code = ErrorCode::kInternal;
  uint32_t round = 0;
  std::string what;
  bool train = false;  // the failed job was a TrainJob
  uint64_t offer = 0;  // the failed job was the check of this offer
};
struct FcragDone {
  FcragReply reply;  // blob filled in
  Frame bulk;
};
using JobResult = std::variant<ConfigureDone, EvalDone, TrainDone, JobFailed, FcragDone, SyncNeeded>;

struct WorkerOutput {
  std::vector<Message> messages;
  std::vector<Job> jobs;
  bool exit = false;
  int exit_code = 0;
  std::string exit_reason;
};

class WorkerCore {
 public:
  // `hello` describes this site (name, device, memory, step time, tokens).
  WorkerCore(Hello hello, std::string campaign_hint, WorkerTime now);

  void Start(WorkerTime now, WorkerOutput* out);
  void HandleMessage(const Message& msg, WorkerTime now, WorkerOutput* out);
  void HandleMalformed(const Status& why, WorkerOutput* out);
  void OnJobResult(JobResult result, WorkerTime now, WorkerOutput* out);
  void OnTick(WorkerTime now, WorkerOutput* out);
  // A rank of this site is gone (docs/ranks.md): tell the coordinator, so it
  // takes the site out of the round at once, and exit with status 75 for a
  // restart.
  void SiteDown(const std::string& why, WorkerOutput* out);

  bool registered() const { return registered_; }
  std::optional<uint32_t> synced_round() const { return target_round_; }
  std::optional<uint32_t> training_round() const { return training_round_; }
  const std::string& campaign() const { return campaign_; }
  uint64_t rejected_messages() const { return rejected_; }
  // Model transfer in progress: bytes verified so far and the total (0, 0
  // when none).
  uint64_t pull_verified() const { return pull_ ? pull_->verified : 0; }
  uint64_t pull_total() const { return pull_ ? pull_->offer.blob.byte_length : 0; }

  // Pulls ask for chunks of 64 KiB..1 MiB, keeping about kPullSeconds of
  // the measured transfer rate in flight (at least one chunk): enough to
  // fill the link, little enough that a heartbeat behind it on a thin link
  // waits about that long.
  static constexpr uint32_t kMinChunkBytes = 64u << 10;
  static constexpr uint32_t kMaxChunkBytes = 1u << 20;
  static constexpr double kPullSeconds = 1.0;
  static constexpr std::chrono::milliseconds kRateSpan{200};
  static constexpr double kMaxInFlightBytes = 64.0 * (1u << 20);
  // Messages waiting for a model transfer: more and the transfer is given
  // up (the coordinator re-syncs).
  static constexpr size_t kMaxHeld = 4096;

 private:
  Message Make(Body body);
  // A TrainJob of `round` finished: true when a newer one for the same round
  // is still queued (its result, not this one, answers the coordinator).
  bool SupersededTrain(uint32_t round);
  void SendHello(WorkerTime now, WorkerOutput* out);
  void Reject(ErrorCode code, const std::string& what, uint32_t round, WorkerOutput* out);
  // Model transfer (docs/protocol.md "Model transfer").
  void HandleOffer(const ModelSync& offer, WorkerTime now, WorkerOutput* out);
  void HandleChunk(const SyncChunk& chunk, const Frame& bytes, WorkerTime now, WorkerOutput* out);
  void AskChunks(WorkerOutput* out);
  // Drops the transfer and what waited for it.
  void AbandonTransfer(const char* why);
  // The messages that waited for the model, through HandleMessage in order.
  void ReleaseHeld(WorkerTime now, WorkerOutput* out);
  bool transferring() const { return offer_.has_value() || pull_.has_value(); }

  Hello hello_;
  std::string campaign_;  // from config until the first Welcome-carrying message
  bool registered_ = false;
  bool configured_ = false;
  std::optional<uint32_t> target_round_;  // round of the parameters after queued jobs
  uint64_t target_digest_ = 0;
  std::optional<uint32_t> training_round_;
  // FPLD, a site with a model of its own: no digests to follow, round
  // starts name none.
  bool fpld_own_ = false;
  bool overlap_ = false;  // Welcome.training.overlap: rounds in flight back to back
  // TrainJobs queued or running, by round. A re-welcome can queue a second
  // job for the round in flight; only the last one's result counts.
  std::map<uint32_t, int> trains_outstanding_;
  // An offer the executor is checking against its replica, and its number.
  std::optional<ModelSync> offer_;
  uint64_t offer_seq_ = 0;
  struct Pull {
    ModelSync offer;
    Bytes data;             // the payload; [0, verified) received and checked
    uint64_t verified = 0;
    uint64_t asked = 0;     // requests cover [verified, asked)
    double rate = 0;        // bytes/s, smoothed over spans of kRateSpan or more
    uint64_t mark_bytes = 0;  // verified at mark_time, where the current span began
    WorkerTime mark_time;
    WorkerTime started;
    WorkerTime last_chunk;  // or when the requests were (re)sent
  };
  std::optional<Pull> pull_;
  // Round starts, aggregates and FC-RAG requests that came while the model
  // was being checked or pulled: they apply to it, so they wait for it.
  std::deque<Message> held_;
  // The last Welcome acted on: a repeated one (same campaign settings)
  // keeps the replica's state, a transfer in flight included.
  std::optional<Welcome> welcome_;
  std::chrono::milliseconds heartbeat_interval_{1000};
  std::chrono::milliseconds heartbeat_timeout_{10000};
  WorkerTime last_from_coordinator_;
  WorkerTime last_hello_;
  WorkerTime last_heartbeat_;
  uint64_t seq_ = 0;
  uint64_t rejected_ = 0;
};

}  // namespace lowband
