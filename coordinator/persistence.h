// Persistence: the coordinator's disk thread. Everything the coordinator
// writes while a campaign runs goes through it, so the event loop never waits
// on SQLite or fsync: round commits, round records with their metrics line,
// membership events, operator checkpoints, and the end of the campaign
// (final checkpoint, ledger, status).
//
// Jobs run one at a time in submission order, on one thread that owns the
// StateStore and the metrics file from Start on (the service opens and, on a
// restart, reads the store on the loop thread before that). Submit queues a
// job and returns its sequence number; when the job is done its outcome is
// posted to the loop as a DiskDone (Drain, woken through fd()). The queue is
// bounded in bytes (parameters, gradients and lines held by queued jobs):
// a Submit that would pass the bound waits until the disk thread has caught
// up, so a disk slower than the rounds slows the campaign down instead of
// growing memory without limit (logged when it happens).
//
// Round checkpoints (the whole model, hundreds of MB at real sizes) are
// written by a second thread, off the commit path: a round is durable once
// its aggregated gradient is in the store (its commit), and the workers hear
// of it then, not seconds later when its checkpoint file is synced. The file
// is recorded in the store (and older ones pruned) by the disk thread once
// it is complete. One round checkpoint is written at a time: while one is,
// the caller skips the next (CheckpointBusy); the log covers the rounds in
// between.
//
// Threads: Start, Submit, Drain, fd and the destructor on the loop thread;
// the jobs on the disk thread. The destructor lets the round checkpoint in
// progress finish, runs the jobs still queued, then joins.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "coordinator/checkpoint.h"
#include "coordinator/core.h"
#include "coordinator/ledger.h"

namespace lowband {

class StateStore;

struct PersistenceOptions {
  std::string run_dir;      // checkpoints go to RUN_DIR/checkpoints/round-NNNNNN.lbck
  int checkpoint_keep = 3;  // round checkpoints kept (older files and their log pruned)
  size_t max_queued_bytes = size_t{4} << 30;
  size_t max_queued_jobs = 4096;
};

// One job's outcome, posted to the loop.
struct DiskDone {
  enum class Kind { kCommit, kRecord, kMember, kCheckpoint, kFinish };
  uint64_t seq = 0;
  Kind kind = Kind::kCommit;
  uint32_t round = 0;
  Status status;
  std::string path;     // kCheckpoint, kFinish: the checkpoint written
  uint64_t ticket = 0;  // kCheckpoint: the caller's ticket
};

class Persistence {
 public:
  // Takes over `store` and `metrics` (may be null; closed by the
  // destructor). Unavailable if the thread or the wake-up fd cannot be made.
  static StatusOr<std::unique_ptr<Persistence>> Start(std::unique_ptr<StateStore> store, FILE* metrics,
                                                      PersistenceOptions options);
  ~Persistence();
  Persistence(const Persistence&) = delete;
  Persistence& operator=(const Persistence&) = delete;

  // Makes round `c.record.round` durable (StateStore::CommitRound). A
  // failed commit is a failed job (the round is not durable).
  uint64_t CommitRound(RoundCommit c);
  // True while a round checkpoint is being written or recorded.
  bool CheckpointBusy() const;
  // Writes `checkpoint` (a committed round's, `digest` its parameters') as
  // RUN_DIR/checkpoints/round-NNNNNN.lbck on the checkpoint thread, then
  // records it and prunes beyond checkpoint_keep on the disk thread. Posts
  // no DiskDone: a failed checkpoint is logged and the campaign goes on
  // (the logged gradients make the rounds durable). Dropped, with a
  // warning, while CheckpointBusy().
  void CheckpointRound(Checkpoint checkpoint, uint64_t digest);
  // Appends `metrics_line` (with a newline, flushed) to the metrics file,
  // then records the round's evaluation and ledger rows.
  uint64_t RecordRound(RoundRecord r, std::vector<LedgerRow> ledger, std::string metrics_line);
  uint64_t RecordMember(std::string site, std::string state, std::string device, uint32_t round, std::string event);
  // An operator checkpoint to `path` (not recorded in the store).
  uint64_t WriteCheckpointFile(std::string path, Checkpoint checkpoint, uint64_t ticket);
  // The end of the campaign: the final checkpoint at `path`, the ledger
  // rows, the campaign's status. The job fails if any part does.
  uint64_t Finish(std::string path, Checkpoint final_checkpoint, std::vector<LedgerRow> ledger, bool failed,
                  std::string reason);

  // Loop thread: readable when outcomes wait; Drain returns them in order.
  int fd() const;
  std::vector<DiskDone> Drain();
  // Jobs submitted and not yet drained as done.
  size_t pending() const { return submitted_ - drained_; }

 private:
  struct Impl;
  explicit Persistence(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  uint64_t submitted_ = 0;
  uint64_t drained_ = 0;
};

}  // namespace lowband
