// StateStore: the coordinator's durable state in one SQLite database
// (RUN_DIR/state.db, WAL journal, synchronous=FULL): the campaign, every
// committed round (with its aggregated pseudo-gradient until a checkpoint
// makes it redundant), per-site round figures, membership and its events,
// the bandwidth ledger and the checkpoint files written.
//
// A round is committed when CommitRound returns: the coordinator calls it
// before any worker hears of the round's outcome, so a restart can always
// rebuild theta_r from the newest checkpoint at or before r plus the logged
// gradients after it (coordinator/service.cc). Every write is one
// transaction; a failed write leaves the previous state intact.
//
// Owned by the coordinator loop thread; not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/ledger.h"
#include "protocol/messages.h"
#include "base/status.h"
#include "coordinator/core.h"

struct sqlite3;

namespace lowband {

struct CampaignRow {
  std::string name;
  uint64_t fingerprint = 0;     // CampaignFingerprint of the settings that shape the result
  uint64_t initial_digest = 0;  // digest of the round-0 parameters
  std::string status = "running";  // running | completed | failed
  std::string reason;
  uint32_t committed_round = 0;
  int restarts = 0;
};

// A committed round with the record it has so far (train figures at commit;
// validation figures once recorded) and, unless pruned, its gradient.
struct StoredRound {
  RoundRecord record;
  bool recorded = false;  // the evaluation finished and the record was written
  std::optional<Encoded> gradient;
};

struct CheckpointRow {
  uint32_t round = 0;
  std::string path;
  uint64_t digest = 0;
};

class StateStore {
 public:
  static StatusOr<std::unique_ptr<StateStore>> Open(const std::string& path);
  ~StateStore();

  // The campaign row, or nullopt for a new database.
  StatusOr<std::optional<CampaignRow>> Campaign();
  Status CreateCampaign(const CampaignRow& row);
  Status NoteRestart();
  Status FinishCampaign(bool failed, const std::string& reason);

  // Durably commits round `c.round` (train figures, sites that uploaded,
  // digest) with its aggregated pseudo-gradient.
  Status CommitRound(const RoundCommit& c);
  // The round's evaluation finished: validation figures, per-site figures
  // and the ledger rows given (upserted as totals).
  Status RecordRound(const RoundRecord& r, const std::vector<LedgerRow>& ledger);
  Status SaveLedger(const std::vector<LedgerRow>& ledger);
  Status RecordMember(const std::string& site, const std::string& state, const std::string& device, uint32_t round,
                      const std::string& event);

  Status RecordCheckpoint(const CheckpointRow& row);
  StatusOr<std::vector<CheckpointRow>> Checkpoints();  // oldest first
  // Forgets checkpoint rows below `oldest_kept` and the gradients of rounds
  // at or below it (a checkpoint at `oldest_kept` makes them redundant).
  Status Prune(uint32_t oldest_kept);

  // Committed rounds, oldest first; with_gradients loads the logged
  // gradients of rounds after `after` (others come without).
  StatusOr<std::vector<StoredRound>> Rounds(bool with_gradients, uint32_t after = 0);
  StatusOr<std::vector<LedgerRow>> Ledger();

 private:
  explicit StateStore(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  Status Exec(const char* sql);
  Status Error(const std::string& what) const;
  sqlite3* db_;
  std::string path_;
};

// FNV-1a 64 of CanonicalSettings(config) (config/canonical.h, which lists
// the settings in and out): every setting that shapes the campaign's result,
// none of the operational ones. A restart whose fingerprint differs from the
// stored one must not resume the stored state.
uint64_t CampaignFingerprint(const CampaignConfig& config);

}  // namespace lowband
