#include "coordinator/startup.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "base/hash.h"
#include "base/log.h"
#include "coordinator/checkpoint.h"
#include "coordinator/reporting.h"

namespace lowband {
namespace {

int Resume(const CampaignConfig& config, const std::string& run_dir, bool progress, const CampaignRow& row,
           CoordinatorCore& core, BandwidthLedger& ledger, OpenedState* opened) {
  StateStore* store = opened->store.get();
  const auto started_resume = Clock::now();
  auto fail = [&](const std::string& what, const Status& st) {
    LOG_ERROR("cannot resume the campaign", {"what", what}, {"reason", st.ToString()});
    std::fprintf(stderr, "lowband-coordinator: cannot resume campaign '%s' from %s: %s: %s\n", row.name.c_str(),
                 run_dir.c_str(), what.c_str(), st.ToString().c_str());
    return 1;
  };
  // A checkpoint write cut short leaves only its temporary file.
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(run_dir + "/checkpoints", ec)) {
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
    Status st = core.Restore(ckpt->round, std::move(ckpt->params), std::move(ckpt->outer_momentum),
                             std::move(ckpt->downlink_error));
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
      opened->last_recorded = r;
      recorded.push_back(std::move(s.record));
    } else if (r == row.committed_round) {
      unrecorded = std::move(s.record);
    } else {
      // Overlapped rounds: committed, but the restart came before its
      // evaluations. Recorded as it is (no validation loss) once the
      // metrics file is open; the campaign goes on from the newest round.
      recorded.push_back(s.record);
      opened->unevaluated.push_back(std::move(s.record));
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
    l.entry.dense_bytes = DenseBytes(config, core, l.site, l.round, l.kind, l.entry.messages);
    ledger.Add(l.site, l.dir, l.round, l.kind, l.entry);
  }
  opened->ledger_saved_from = core.committed_round();
  (void)store->NoteRestart();
  opened->restarts = row.restarts + 1;
  opened->resumed = true;
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - started_resume).count();
  LOG_INFO("campaign resumed", {"round", core.committed_round()}, {"checkpoint_round", base},
           {"replayed_rounds", replayed}, {"digest", DigestHex(core.digest())}, {"restarts", row.restarts + 1},
           {"rebuild_ms", ms});
  if (progress) {
    std::printf("coordinator: resuming campaign %s at round %u (checkpoint of round %u + %d logged rounds, %.0f ms), "
                "digest %s\n",
                config.name.c_str(), core.committed_round(), base, replayed, ms, DigestHex(core.digest()).c_str());
    std::fflush(stdout);
  }
  return -1;
}

}  // namespace

int OpenCampaignState(const CampaignConfig& config, const std::string& run_dir, bool progress, CoordinatorCore& core,
                      BandwidthLedger& ledger, OpenedState* opened) {
  std::error_code ec;
  std::filesystem::create_directories(run_dir + "/checkpoints", ec);
  if (ec) {
    LOG_ERROR("cannot create the run directory", {"path", run_dir}, {"reason", ec.message()});
    return 1;
  }
  const std::string db = run_dir + "/state.db";
  auto store = StateStore::Open(db);
  if (!store.ok()) {
    LOG_ERROR("cannot open the campaign state", {"path", db}, {"reason", store.status().ToString()});
    return 1;
  }
  opened->store = std::move(store).value();
  auto row = opened->store->Campaign();
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
    if (Status st = opened->store->CreateCampaign(fresh); !st.ok()) {
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
    opened->ended_exit = stored.status == "completed" ? 0 : 1;
    opened->linger_until = Clock::now() + linger;
    return -1;
  }
  return Resume(config, run_dir, progress, stored, core, ledger, opened);
}

// A restart keeps the metrics records of the rounds the state database has
// recorded and drops any later line (written just before a crash), so that
// every round appears exactly once.
Status TrimMetrics(const std::string& metrics_out, uint32_t last_recorded) {
  std::ifstream in(metrics_out);
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
  const std::string tmp = metrics_out + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << kept;
    if (!out.flush()) return Internal("cannot write " + tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, metrics_out, ec);
  if (ec) return Internal("cannot replace " + metrics_out + ": " + ec.message());
  LOG_INFO("metrics records after the last recorded round dropped", {"path", metrics_out},
           {"dropped", static_cast<uint64_t>(dropped)}, {"last_recorded", last_recorded});
  return Status::Ok();
}

}  // namespace lowband
