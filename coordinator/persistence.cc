#include "coordinator/persistence.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <thread>
#include <utility>
#include <variant>

#include "base/failpoint.h"
#include "base/log.h"
#include "coordinator/state_store.h"
#include "net/zmq/event_loop.h"

namespace lowband {

namespace {

struct CommitJob {
  RoundCommit commit;
};
// Internal (no DiskDone): a round checkpoint file is complete; record it.
struct RecordCheckpointJob {
  CheckpointRow row;
};
struct RecordJob {
  RoundRecord record;
  std::vector<LedgerRow> ledger;
  std::string line;
};
struct MemberJob {
  std::string site, state, device;
  uint32_t round = 0;
  std::string event;
};
struct CheckpointJob {
  std::string path;
  Checkpoint checkpoint;
  uint64_t ticket = 0;
};
struct FinishJob {
  std::string path;
  Checkpoint checkpoint;
  std::vector<LedgerRow> ledger;
  bool failed = false;
  std::string reason;
};
using Job = std::variant<CommitJob, RecordCheckpointJob, RecordJob, MemberJob, CheckpointJob, FinishJob>;

size_t CheckpointBytes(const Checkpoint& c) {
  return (c.params.values.size() + c.outer_momentum.size() + c.downlink_error.size()) * sizeof(float);
}
size_t RowsBytes(const std::vector<LedgerRow>& rows) { return rows.size() * sizeof(LedgerRow); }

// What a queued job holds, for the queue's byte bound.
size_t BytesOf(const Job& job) {
  struct {
    size_t operator()(const CommitJob& j) const { return j.commit.gradient.bulk.size(); }
    size_t operator()(const RecordCheckpointJob& j) const { return j.row.path.size(); }
    size_t operator()(const RecordJob& j) const { return j.line.size() + RowsBytes(j.ledger); }
    size_t operator()(const MemberJob& j) const { return j.site.size() + j.state.size() + j.device.size(); }
    size_t operator()(const CheckpointJob& j) const { return CheckpointBytes(j.checkpoint); }
    size_t operator()(const FinishJob& j) const { return CheckpointBytes(j.checkpoint) + RowsBytes(j.ledger); }
  } visitor;
  return std::visit(visitor, job) + 64;
}

}  // namespace

struct Persistence::Impl {
  std::unique_ptr<StateStore> store;
  FILE* metrics = nullptr;
  PersistenceOptions options;
  std::unique_ptr<Mailbox<DiskDone>> done;

  std::mutex mu;
  std::condition_variable cv;                  // the disk thread waits for jobs
  std::condition_variable space_cv;            // Submit waits for room
  std::deque<std::pair<uint64_t, Job>> queue;  // guarded by mu
  size_t queued_bytes = 0;                     // guarded by mu
  bool stopping = false;                       // guarded by mu
  std::thread thread;

  // The checkpoint thread: one round checkpoint at a time.
  std::mutex ckpt_mu;
  std::condition_variable ckpt_cv;
  std::optional<std::pair<Checkpoint, uint64_t>> ckpt_next;  // guarded by ckpt_mu
  bool ckpt_stopping = false;                                // guarded by ckpt_mu
  std::atomic<bool> ckpt_busy{false};  // set by the loop thread, cleared once recorded or failed
  std::thread ckpt_thread;

  void Loop();
  void CheckpointLoop();
  DiskDone Run(uint64_t seq, Job& job);
  DiskDone Commit(CommitJob& j);
  DiskDone Record(RecordJob& j);
  DiskDone Member(MemberJob& j);
  DiskDone WriteFile(CheckpointJob& j);
  DiskDone Finish(FinishJob& j);
  void RecordRoundCheckpoint(const CheckpointRow& row);
  void Post(DiskDone d);
  uint64_t Enqueue(uint64_t seq, Job job);
};

StatusOr<std::unique_ptr<Persistence>> Persistence::Start(std::unique_ptr<StateStore> store, FILE* metrics,
                                                          PersistenceOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->store = std::move(store);
  impl->metrics = metrics;
  impl->options = std::move(options);
  // Every submitted job posts exactly one outcome, and submissions stop at
  // max_queued_jobs in flight: the mailbox never refuses.
  auto mailbox = Mailbox<DiskDone>::Create(impl->options.max_queued_jobs + 1);
  if (!mailbox.ok()) return mailbox.status();
  impl->done = std::move(mailbox).value();
  Impl* raw = impl.get();
  try {
    impl->thread = std::thread([raw] { raw->Loop(); });
  } catch (const std::system_error& e) {
    return Unavailable(std::string("cannot start the disk thread: ") + e.what());
  }
  try {
    impl->ckpt_thread = std::thread([raw] { raw->CheckpointLoop(); });
  } catch (const std::system_error& e) {
    {
      std::lock_guard<std::mutex> lock(raw->mu);
      raw->stopping = true;
    }
    raw->cv.notify_all();
    raw->thread.join();
    return Unavailable(std::string("cannot start the checkpoint thread: ") + e.what());
  }
  return std::unique_ptr<Persistence>(new Persistence(std::move(impl)));
}

Persistence::Persistence(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Persistence::~Persistence() {
  // The checkpoint in progress finishes and queues its record first.
  {
    std::lock_guard<std::mutex> lock(impl_->ckpt_mu);
    impl_->ckpt_stopping = true;
  }
  impl_->ckpt_cv.notify_all();
  impl_->ckpt_thread.join();
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  impl_->thread.join();
  if (impl_->metrics) std::fclose(impl_->metrics);
}

uint64_t Persistence::CommitRound(RoundCommit c) { return impl_->Enqueue(++submitted_, CommitJob{std::move(c)}); }

bool Persistence::CheckpointBusy() const { return impl_->ckpt_busy.load(); }

void Persistence::CheckpointRound(Checkpoint checkpoint, uint64_t digest) {
  if (impl_->ckpt_busy.exchange(true)) {
    LOG_WARN("round checkpoint dropped: the previous one is still being written", {"round", checkpoint.round});
    return;
  }
  {
    std::lock_guard<std::mutex> lock(impl_->ckpt_mu);
    impl_->ckpt_next.emplace(std::move(checkpoint), digest);
  }
  impl_->ckpt_cv.notify_one();
}

uint64_t Persistence::RecordRound(RoundRecord r, std::vector<LedgerRow> ledger, std::string metrics_line) {
  return impl_->Enqueue(++submitted_, RecordJob{std::move(r), std::move(ledger), std::move(metrics_line)});
}

uint64_t Persistence::RecordMember(std::string site, std::string state, std::string device, uint32_t round,
                                   std::string event) {
  return impl_->Enqueue(++submitted_,
                        MemberJob{std::move(site), std::move(state), std::move(device), round, std::move(event)});
}

uint64_t Persistence::WriteCheckpointFile(std::string path, Checkpoint checkpoint, uint64_t ticket) {
  return impl_->Enqueue(++submitted_, CheckpointJob{std::move(path), std::move(checkpoint), ticket});
}

uint64_t Persistence::Finish(std::string path, Checkpoint final_checkpoint, std::vector<LedgerRow> ledger, bool failed,
                             std::string reason) {
  return impl_->Enqueue(++submitted_, FinishJob{std::move(path), std::move(final_checkpoint), std::move(ledger), failed,
                                                std::move(reason)});
}

int Persistence::fd() const { return impl_->done->fd(); }

std::vector<DiskDone> Persistence::Drain() {
  std::vector<DiskDone> out = impl_->done->Drain();
  drained_ += out.size();
  return out;
}

uint64_t Persistence::Impl::Enqueue(uint64_t seq, Job job) {
  const size_t bytes = BytesOf(job);
  std::unique_lock<std::mutex> lock(mu);
  auto full = [&] {
    return !queue.empty() &&
           (queued_bytes + bytes > options.max_queued_bytes || queue.size() >= options.max_queued_jobs);
  };
  if (full()) {
    const auto start = std::chrono::steady_clock::now();
    LOG_WARN("disk queue full: waiting for the disk", {"queued_bytes", static_cast<uint64_t>(queued_bytes)},
             {"jobs", static_cast<uint64_t>(queue.size())});
    space_cv.wait(lock, [&] { return !full(); });
    LOG_WARN(
        "disk queue has room again",
        {"waited_ms", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count()});
  }
  queued_bytes += bytes;
  queue.emplace_back(seq, std::move(job));
  lock.unlock();
  cv.notify_one();
  return seq;
}

void Persistence::Impl::Loop() {
  for (;;) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return stopping || !queue.empty(); });
    if (queue.empty()) return;  // stopping, and every job has run
    auto [seq, job] = std::move(queue.front());
    queue.pop_front();
    lock.unlock();
    const size_t bytes = BytesOf(job);
    const bool internal = std::holds_alternative<RecordCheckpointJob>(job);
    DiskDone d = Run(seq, job);
    {
      std::lock_guard<std::mutex> relock(mu);
      queued_bytes -= bytes;
    }
    space_cv.notify_all();
    if (!internal) Post(std::move(d));
  }
}

void Persistence::Impl::Post(DiskDone d) {
  // Capacity covers every job in flight (Start), so this cannot fail.
  if (!done->Post(std::move(d))) LOG_ERROR("disk outcome dropped: mailbox full");
}

DiskDone Persistence::Impl::Run(uint64_t seq, Job& job) {
  DiskDone d;
  if (auto* j = std::get_if<CommitJob>(&job)) d = Commit(*j);
  if (auto* j = std::get_if<RecordCheckpointJob>(&job)) RecordRoundCheckpoint(j->row);
  if (auto* j = std::get_if<RecordJob>(&job)) d = Record(*j);
  if (auto* j = std::get_if<MemberJob>(&job)) d = Member(*j);
  if (auto* j = std::get_if<CheckpointJob>(&job)) d = WriteFile(*j);
  if (auto* j = std::get_if<FinishJob>(&job)) d = Finish(*j);
  d.seq = seq;
  return d;
}

DiskDone Persistence::Impl::Commit(CommitJob& j) {
  const uint32_t round = j.commit.record.round;
  DiskDone d{0, DiskDone::Kind::kCommit, round, Status::Ok(), "", 0};
  FailPoint("commit", round);
  d.status = store->CommitRound(j.commit);
  if (d.status.ok()) FailPoint("committed", round);
  return d;
}

void Persistence::Impl::CheckpointLoop() {
  for (;;) {
    std::unique_lock<std::mutex> lock(ckpt_mu);
    ckpt_cv.wait(lock, [&] { return ckpt_stopping || ckpt_next; });
    if (!ckpt_next) return;  // stopping, and the last one is written
    auto [ckpt, digest] = std::move(*ckpt_next);
    ckpt_next.reset();
    lock.unlock();
    const uint32_t round = ckpt.round;
    char name[64];
    std::snprintf(name, sizeof(name), "/checkpoints/round-%06u.lbck", round);
    const std::string path = options.run_dir + name;
    const auto start = std::chrono::steady_clock::now();
    Status st = WriteCheckpoint(path, ckpt, [round] { FailPoint("checkpoint", round); });
    if (!st.ok()) {
      // The round is durable through its logged gradient: the campaign goes on.
      LOG_ERROR("checkpoint failed", {"round", round}, {"reason", st.ToString()});
      ckpt_busy = false;
      continue;
    }
    LOG_DEBUG("checkpoint file written", {"path", path}, {"round", round},
              {"ms", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count()});
    Enqueue(0, RecordCheckpointJob{CheckpointRow{round, path, digest}});
  }
}

void Persistence::Impl::RecordRoundCheckpoint(const CheckpointRow& row) {
  struct Clear {
    std::atomic<bool>& busy;
    ~Clear() { busy = false; }
  } clear{ckpt_busy};
  Status st = store->RecordCheckpoint(row);
  if (!st.ok()) {
    LOG_ERROR("checkpoint not recorded", {"round", row.round}, {"reason", st.ToString()});
    return;
  }
  // Retention: the newest `keep` files stay; the log before the oldest kept
  // one is redundant and goes with them.
  auto rows = store->Checkpoints();
  if (!rows.ok()) {
    LOG_ERROR("cannot list checkpoints", {"reason", rows.status().ToString()});
    return;
  }
  const size_t keep = static_cast<size_t>(options.checkpoint_keep);
  if (rows->size() > keep) {
    const size_t drop = rows->size() - keep;
    for (size_t i = 0; i < drop; ++i) {
      std::error_code ec;
      std::filesystem::remove((*rows)[i].path, ec);
      if (ec) LOG_WARN("cannot remove an old checkpoint", {"path", (*rows)[i].path}, {"reason", ec.message()});
    }
    if (Status pr = store->Prune((*rows)[drop].round); !pr.ok()) {
      LOG_ERROR("cannot prune the log", {"reason", pr.ToString()});
      return;
    }
  }
  LOG_DEBUG("checkpoint written", {"path", row.path}, {"round", row.round});
}

DiskDone Persistence::Impl::Record(RecordJob& j) {
  const uint32_t round = j.record.round;
  DiskDone d{0, DiskDone::Kind::kRecord, round, Status::Ok(), "", 0};
  if (metrics && !j.line.empty()) {
    j.line += '\n';
    std::fwrite(j.line.data(), 1, j.line.size(), metrics);
    std::fflush(metrics);
  }
  FailPoint("metrics_written", round);
  // After the metrics line: a crash between the two leaves the round
  // unrecorded, and a restart drops the line (TrimMetrics) and writes it anew.
  if (!j.record.reevaluated) d.status = store->RecordRound(j.record, j.ledger);
  return d;
}

DiskDone Persistence::Impl::Member(MemberJob& j) {
  DiskDone d{0, DiskDone::Kind::kMember, j.round, Status::Ok(), "", 0};
  d.status = store->RecordMember(j.site, j.state, j.device, j.round, j.event);
  return d;
}

DiskDone Persistence::Impl::WriteFile(CheckpointJob& j) {
  DiskDone d{0, DiskDone::Kind::kCheckpoint, j.checkpoint.round, Status::Ok(), j.path, j.ticket};
  FailPoint("operator_checkpoint", j.checkpoint.round);
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(j.path).parent_path(), ec);
  d.status = WriteCheckpoint(j.path, j.checkpoint);
  return d;
}

DiskDone Persistence::Impl::Finish(FinishJob& j) {
  DiskDone d{0, DiskDone::Kind::kFinish, j.checkpoint.round, Status::Ok(), j.path, 0};
  Status st = WriteCheckpoint(j.path, j.checkpoint);
  if (!st.ok()) {
    LOG_ERROR("final checkpoint failed", {"path", j.path}, {"reason", st.ToString()});
    d.status = st;
  } else {
    LOG_INFO("final checkpoint written", {"path", j.path}, {"round", j.checkpoint.round});
  }
  if (Status fs = store->FinishCampaign(j.failed, j.reason); !fs.ok()) {
    LOG_ERROR("cannot record the end of the campaign", {"reason", fs.ToString()});
    if (d.status.ok()) d.status = fs;
  }
  if (Status ls = store->SaveLedger(j.ledger); !ls.ok()) LOG_WARN("cannot save the ledger", {"reason", ls.ToString()});
  return d;
}

}  // namespace lowband
