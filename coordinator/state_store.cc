#include "coordinator/state_store.h"

#include <sqlite3.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

#include "base/hash.h"
#include "codec/params.h"
#include "config/canonical.h"

namespace lowband {
namespace {

constexpr int kSchemaVersion = 1;

const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS campaign(
  id INTEGER PRIMARY KEY CHECK (id = 1),
  name TEXT NOT NULL,
  fingerprint INTEGER NOT NULL,
  initial_digest INTEGER NOT NULL,
  status TEXT NOT NULL,
  reason TEXT NOT NULL DEFAULT '',
  committed_round INTEGER NOT NULL DEFAULT 0,
  restarts INTEGER NOT NULL DEFAULT 0,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rounds(
  round INTEGER PRIMARY KEY,
  digest INTEGER NOT NULL,
  committed_at REAL NOT NULL,
  train_loss REAL, tokens INTEGER NOT NULL, contributors INTEGER NOT NULL,
  down_codec INTEGER NOT NULL, aggregate_nnz INTEGER NOT NULL,
  gradient_codec INTEGER, gradient_topk INTEGER, gradient_checksum INTEGER, gradient BLOB,
  recorded INTEGER NOT NULL DEFAULT 0,
  val_loss REAL, evaluated INTEGER NOT NULL DEFAULT 0, late_uploads INTEGER NOT NULL DEFAULT 0,
  digest_mismatches INTEGER NOT NULL DEFAULT 0, wall_s REAL);
CREATE TABLE IF NOT EXISTS round_sites(
  round INTEGER NOT NULL, site TEXT NOT NULL,
  train_loss REAL, val_loss REAL, tokens INTEGER NOT NULL, uploaded INTEGER NOT NULL, digest_ok INTEGER NOT NULL,
  PRIMARY KEY (round, site));
CREATE TABLE IF NOT EXISTS members(
  site TEXT PRIMARY KEY, state TEXT NOT NULL, device TEXT NOT NULL,
  joins INTEGER NOT NULL DEFAULT 0, last_round INTEGER NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS member_events(
  id INTEGER PRIMARY KEY, at REAL NOT NULL, site TEXT NOT NULL, event TEXT NOT NULL, round INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ledger(
  round INTEGER NOT NULL, site TEXT NOT NULL, direction TEXT NOT NULL, kind TEXT NOT NULL,
  bytes INTEGER NOT NULL, messages INTEGER NOT NULL,
  PRIMARY KEY (round, site, direction, kind));
CREATE TABLE IF NOT EXISTS checkpoints(
  round INTEGER PRIMARY KEY, path TEXT NOT NULL, digest INTEGER NOT NULL, written_at REAL NOT NULL);
)sql";

double Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// One prepared statement; finalized on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) { rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr); }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return rc_ == SQLITE_OK; }

  Stmt& Int(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& U64(int i, uint64_t v) { return Int(i, static_cast<int64_t>(v)); }
  // NaN (not a number yet) is stored as NULL.
  Stmt& Real(int i, double v) {
    if (std::isnan(v)) {
      sqlite3_bind_null(s_, i);
    } else {
      sqlite3_bind_double(s_, i, v);
    }
    return *this;
  }
  Stmt& Text(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Blob(int i, const Bytes& v) {
    sqlite3_bind_blob64(s_, i, v.data(), v.size(), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Null(int i) {
    sqlite3_bind_null(s_, i);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return rc_ = sqlite3_step(s_); }
  bool Done() { return Step() == SQLITE_DONE; }
  void Reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }

  int64_t ColInt(int i) const { return sqlite3_column_int64(s_, i); }
  uint64_t ColU64(int i) const { return static_cast<uint64_t>(sqlite3_column_int64(s_, i)); }
  double ColReal(int i) const {
    return sqlite3_column_type(s_, i) == SQLITE_NULL ? std::numeric_limits<double>::quiet_NaN()
                                                     : sqlite3_column_double(s_, i);
  }
  bool ColNull(int i) const { return sqlite3_column_type(s_, i) == SQLITE_NULL; }
  std::string ColText(int i) const {
    const auto* p = sqlite3_column_text(s_, i);
    return p ? std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(s_, i)))
             : std::string();
  }
  Bytes ColBlob(int i) const {
    const auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(s_, i));
    return p ? Bytes(p, p + sqlite3_column_bytes(s_, i)) : Bytes();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
  int rc_;
};

// BEGIN IMMEDIATE ... COMMIT; rolls back unless Commit() succeeded.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {
    ok_ = sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK;
  }
  ~Transaction() {
    if (ok_ && !committed_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  bool ok() const { return ok_; }
  bool Commit() {
    committed_ = sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK;
    return committed_;
  }

 private:
  sqlite3* db_;
  bool ok_ = false;
  bool committed_ = false;
};

const char* DirName(Direction d) {
  switch (d) {
    case Direction::kUp: return "up";
    case Direction::kDown: return "down";
    case Direction::kPeer: return "peer";
  }
  return "?";
}

}  // namespace

uint64_t CampaignFingerprint(const CampaignConfig& c) {
  const std::string text = CanonicalSettings(c);
  return Fnv1a64(text.data(), text.size());
}

StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) {
    std::string why = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    return Unavailable(path + ": cannot open the state database: " + why);
  }
  std::unique_ptr<StateStore> store(new StateStore(db, path));
  sqlite3_busy_timeout(db, 5000);
  // WAL: a commit is one append and fsync; readers (operators with the
  // sqlite3 shell) never block the coordinator. FULL: committed means on disk.
  LOWBAND_RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL"));
  LOWBAND_RETURN_IF_ERROR(store->Exec("PRAGMA synchronous=FULL"));
  LOWBAND_RETURN_IF_ERROR(store->Exec("PRAGMA foreign_keys=ON"));
  {
    Stmt q(db, "PRAGMA journal_mode");
    if (!q.ok() || q.Step() != SQLITE_ROW || q.ColText(0) != "wal") {
      return Unavailable(path + ": the state database cannot use WAL journaling (a network file system?)");
    }
  }
  LOWBAND_RETURN_IF_ERROR(store->Exec(kSchema));
  Stmt v(db, "SELECT value FROM meta WHERE key = 'schema_version'");
  if (!v.ok()) return store->Error("reading the schema version");
  if (v.Step() == SQLITE_ROW) {
    if (v.ColText(0) != std::to_string(kSchemaVersion)) {
      return FailedPrecondition(path + ": state database schema version " + v.ColText(0) + ", this build reads " +
                                std::to_string(kSchemaVersion));
    }
  } else {
    Stmt ins(db, "INSERT INTO meta(key, value) VALUES ('schema_version', ?1)");
    if (!ins.ok() || !ins.Text(1, std::to_string(kSchemaVersion)).Done()) return store->Error("writing the schema version");
  }
  return store;
}

StateStore::~StateStore() { sqlite3_close(db_); }

Status StateStore::Error(const std::string& what) const {
  return Internal(path_ + ": " + what + ": " + sqlite3_errmsg(db_));
}

Status StateStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string why = err ? err : "unknown error";
    sqlite3_free(err);
    return Internal(path_ + ": " + why);
  }
  return Status::Ok();
}

StatusOr<std::optional<CampaignRow>> StateStore::Campaign() {
  Stmt q(db_, "SELECT name, fingerprint, initial_digest, status, reason, committed_round, restarts FROM campaign");
  if (!q.ok()) return Error("reading the campaign");
  const int rc = q.Step();
  if (rc == SQLITE_DONE) return std::optional<CampaignRow>();
  if (rc != SQLITE_ROW) return Error("reading the campaign");
  CampaignRow row;
  row.name = q.ColText(0);
  row.fingerprint = q.ColU64(1);
  row.initial_digest = q.ColU64(2);
  row.status = q.ColText(3);
  row.reason = q.ColText(4);
  row.committed_round = static_cast<uint32_t>(q.ColInt(5));
  row.restarts = static_cast<int>(q.ColInt(6));
  return std::optional<CampaignRow>(row);
}

Status StateStore::CreateCampaign(const CampaignRow& row) {
  Stmt q(db_,
         "INSERT INTO campaign(id, name, fingerprint, initial_digest, status, committed_round, created_at, updated_at) "
         "VALUES (1, ?1, ?2, ?3, 'running', 0, ?4, ?4)");
  // Round 0 (the initial parameters) is committed by definition; its row
  // receives the initial evaluation's record.
  Stmt r(db_,
         "INSERT INTO rounds(round, digest, committed_at, tokens, contributors, down_codec, aggregate_nnz) "
         "VALUES (0, ?1, ?2, 0, 0, 0, 0)");
  Transaction tx(db_);
  if (!tx.ok() || !q.ok() || !r.ok() ||
      !q.Text(1, row.name).U64(2, row.fingerprint).U64(3, row.initial_digest).Real(4, Now()).Done() ||
      !r.U64(1, row.initial_digest).Real(2, Now()).Done() || !tx.Commit()) {
    return Error("creating the campaign");
  }
  return Status::Ok();
}

Status StateStore::NoteRestart() {
  Stmt q(db_, "UPDATE campaign SET restarts = restarts + 1, updated_at = ?1");
  if (!q.ok() || !q.Real(1, Now()).Done()) return Error("recording the restart");
  return Status::Ok();
}

Status StateStore::FinishCampaign(bool failed, const std::string& reason) {
  Stmt q(db_, "UPDATE campaign SET status = ?1, reason = ?2, updated_at = ?3");
  if (!q.ok() || !q.Text(1, failed ? "failed" : "completed").Text(2, reason).Real(3, Now()).Done()) {
    return Error("recording the end of the campaign");
  }
  return Status::Ok();
}

namespace {
// The per-site figures of a round as they stand (the record carries every
// figure known so far, so replacing the rows is right at commit and at record).
bool PutSites(sqlite3* db, const RoundRecord& r) {
  Stmt s(db,
         "INSERT OR REPLACE INTO round_sites(round, site, train_loss, val_loss, tokens, uploaded, digest_ok) "
         "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
  if (!s.ok()) return false;
  for (const auto& [site, st] : r.sites) {
    s.Reset();
    s.Int(1, r.round).Text(2, site).Real(3, st.train_loss).Real(4, st.val_loss).U64(5, st.tokens);
    if (!s.Int(6, st.uploaded).Int(7, st.digest_ok).Done()) return false;
  }
  return true;
}

bool PutLedger(sqlite3* db, const std::vector<LedgerRow>& ledger) {
  Stmt q(db,
         "INSERT OR REPLACE INTO ledger(round, site, direction, kind, bytes, messages) "
         "VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
  if (!q.ok()) return false;
  for (const LedgerRow& l : ledger) {
    q.Reset();
    q.Int(1, l.round).Text(2, l.site).Text(3, DirName(l.dir)).Text(4, l.kind);
    if (!q.U64(5, l.entry.bytes).U64(6, l.entry.messages).Done()) return false;
  }
  return true;
}
}  // namespace

Status StateStore::CommitRound(const RoundCommit& c) {
  const RoundRecord& r = c.record;
  Transaction tx(db_);
  if (!tx.ok()) return Error("beginning the commit of round " + std::to_string(r.round));
  Stmt q(db_,
         "INSERT INTO rounds(round, digest, committed_at, train_loss, tokens, contributors, down_codec, "
         "aggregate_nnz, gradient_codec, gradient_topk, gradient_checksum, gradient, late_uploads) "
         "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)");
  if (!q.ok()) return Error("preparing the commit of round " + std::to_string(r.round));
  q.Int(1, r.round).U64(2, r.digest).Real(3, Now()).Real(4, r.train_loss).U64(5, r.tokens).Int(6, r.contributors);
  q.Int(7, static_cast<int>(r.down_codec)).U64(8, r.aggregate_nnz);
  q.Int(9, static_cast<int>(c.gradient.header.codec)).Int(10, c.gradient.header.topk);
  q.U64(11, c.gradient.header.checksum).Blob(12, c.gradient.bulk).Int(13, r.late_uploads);
  if (!q.Done()) return Error("committing round " + std::to_string(r.round));
  if (!PutSites(db_, r)) return Error("committing the sites of round " + std::to_string(r.round));
  Stmt u(db_, "UPDATE campaign SET committed_round = ?1, updated_at = ?2");
  if (!u.ok() || !u.Int(1, r.round).Real(2, Now()).Done()) return Error("advancing the committed round");
  if (!tx.Commit()) return Error("committing round " + std::to_string(r.round));
  return Status::Ok();
}


Status StateStore::RecordRound(const RoundRecord& r, const std::vector<LedgerRow>& ledger) {
  Transaction tx(db_);
  if (!tx.ok()) return Error("beginning the record of round " + std::to_string(r.round));
  Stmt q(db_,
         "UPDATE rounds SET recorded = 1, val_loss = ?2, evaluated = ?3, late_uploads = ?4, digest_mismatches = ?5, "
         "wall_s = ?6 WHERE round = ?1");
  if (!q.ok() || !q.Int(1, r.round).Real(2, r.val_loss).Int(3, r.evaluated).Int(4, r.late_uploads)
                      .Int(5, r.digest_mismatches).Real(6, r.wall_s).Done()) {
    return Error("recording round " + std::to_string(r.round));
  }
  if (!PutSites(db_, r)) return Error("recording the sites of round " + std::to_string(r.round));
  if (!PutLedger(db_, ledger)) return Error("recording the ledger of round " + std::to_string(r.round));
  if (!tx.Commit()) return Error("recording round " + std::to_string(r.round));
  return Status::Ok();
}

Status StateStore::SaveLedger(const std::vector<LedgerRow>& ledger) {
  Transaction tx(db_);
  if (!tx.ok() || !PutLedger(db_, ledger) || !tx.Commit()) return Error("saving the ledger");
  return Status::Ok();
}

Status StateStore::RecordMember(const std::string& site, const std::string& state, const std::string& device,
                                uint32_t round, const std::string& event) {
  Transaction tx(db_);
  if (!tx.ok()) return Error("recording member " + site);
  const double now = Now();
  Stmt m(db_,
         "INSERT INTO members(site, state, device, joins, last_round, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
         "ON CONFLICT(site) DO UPDATE SET state = excluded.state, device = excluded.device, "
         "joins = joins + excluded.joins, last_round = excluded.last_round, updated_at = excluded.updated_at");
  const bool joined = event == "joined" || event == "rejoined";
  if (!m.ok() || !m.Text(1, site).Text(2, state).Text(3, device).Int(4, joined).Int(5, round).Real(6, now).Done()) {
    return Error("recording member " + site);
  }
  Stmt e(db_, "INSERT INTO member_events(at, site, event, round) VALUES (?1, ?2, ?3, ?4)");
  if (!e.ok() || !e.Real(1, now).Text(2, site).Text(3, event).Int(4, round).Done()) {
    return Error("recording an event of member " + site);
  }
  if (!tx.Commit()) return Error("recording member " + site);
  return Status::Ok();
}

Status StateStore::RecordCheckpoint(const CheckpointRow& row) {
  Stmt q(db_, "INSERT OR REPLACE INTO checkpoints(round, path, digest, written_at) VALUES (?1, ?2, ?3, ?4)");
  if (!q.ok() || !q.Int(1, row.round).Text(2, row.path).U64(3, row.digest).Real(4, Now()).Done()) {
    return Error("recording the checkpoint of round " + std::to_string(row.round));
  }
  return Status::Ok();
}

StatusOr<std::vector<CheckpointRow>> StateStore::Checkpoints() {
  Stmt q(db_, "SELECT round, path, digest FROM checkpoints ORDER BY round");
  if (!q.ok()) return Error("listing checkpoints");
  std::vector<CheckpointRow> rows;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) {
    rows.push_back({static_cast<uint32_t>(q.ColInt(0)), q.ColText(1), q.ColU64(2)});
  }
  if (rc != SQLITE_DONE) return Error("listing checkpoints");
  return rows;
}

Status StateStore::Prune(uint32_t oldest_kept) {
  Transaction tx(db_);
  if (!tx.ok()) return Error("pruning");
  Stmt c(db_, "DELETE FROM checkpoints WHERE round < ?1");
  Stmt g(db_,
         "UPDATE rounds SET gradient = NULL, gradient_codec = NULL, gradient_topk = NULL, gradient_checksum = NULL "
         "WHERE round <= ?1 AND gradient IS NOT NULL");
  if (!c.ok() || !g.ok() || !c.Int(1, oldest_kept).Done() || !g.Int(1, oldest_kept).Done() || !tx.Commit()) {
    return Error("pruning below round " + std::to_string(oldest_kept));
  }
  return Status::Ok();
}

StatusOr<std::vector<StoredRound>> StateStore::Rounds(bool with_gradients, uint32_t after) {
  Stmt q(db_,
         "SELECT round, digest, train_loss, tokens, contributors, down_codec, aggregate_nnz, recorded, val_loss, "
         "evaluated, late_uploads, digest_mismatches, wall_s, gradient_codec, gradient_topk, gradient_checksum, "
         "CASE WHEN ?1 AND round > ?2 THEN gradient END FROM rounds ORDER BY round");
  if (!q.ok()) return Error("reading rounds");
  q.Int(1, with_gradients).Int(2, after);
  std::vector<StoredRound> rounds;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) {
    StoredRound s;
    RoundRecord& r = s.record;
    r.round = static_cast<uint32_t>(q.ColInt(0));
    r.digest = q.ColU64(1);
    r.train_loss = q.ColReal(2);
    r.tokens = q.ColU64(3);
    r.contributors = static_cast<int>(q.ColInt(4));
    const int64_t down = q.ColInt(5);
    r.down_codec = down >= 0 && down <= static_cast<int>(CodecKind::kSparse2Bit) ? static_cast<CodecKind>(down)
                                                                                 : CodecKind::kDenseFp32;
    r.aggregate_nnz = q.ColU64(6);
    s.recorded = q.ColInt(7) != 0;
    r.val_loss = q.ColReal(8);
    r.evaluated = static_cast<int>(q.ColInt(9));
    r.late_uploads = static_cast<int>(q.ColInt(10));
    r.digest_mismatches = static_cast<int>(q.ColInt(11));
    r.wall_s = q.ColReal(12);
    if (!q.ColNull(16)) {
      Encoded e;
      const int64_t codec = q.ColInt(13);
      e.header.codec = codec >= 0 && codec <= static_cast<int>(CodecKind::kSparseFp32) ? static_cast<CodecKind>(codec)
                                                                                       : CodecKind::kDenseFp32;
      e.header.topk = static_cast<uint32_t>(q.ColInt(14));
      e.header.checksum = q.ColU64(15);
      e.bulk = q.ColBlob(16);
      e.header.byte_length = e.bulk.size();
      s.gradient = std::move(e);
    }
    rounds.push_back(std::move(s));
  }
  if (rc != SQLITE_DONE) return Error("reading rounds");
  std::map<uint32_t, size_t> index;
  for (size_t i = 0; i < rounds.size(); ++i) index[rounds[i].record.round] = i;
  Stmt s(db_, "SELECT round, site, train_loss, val_loss, tokens, uploaded, digest_ok FROM round_sites");
  if (!s.ok()) return Error("reading round sites");
  while ((rc = s.Step()) == SQLITE_ROW) {
    auto it = index.find(static_cast<uint32_t>(s.ColInt(0)));
    if (it == index.end()) continue;
    SiteRoundStats& st = rounds[it->second].record.sites[s.ColText(1)];
    st.train_loss = s.ColReal(2);
    st.val_loss = s.ColReal(3);
    st.tokens = s.ColU64(4);
    st.uploaded = s.ColInt(5) != 0;
    st.digest_ok = s.ColInt(6) != 0;
  }
  if (rc != SQLITE_DONE) return Error("reading round sites");
  return rounds;
}

StatusOr<std::vector<LedgerRow>> StateStore::Ledger() {
  Stmt q(db_, "SELECT round, site, direction, kind, bytes, messages FROM ledger");
  if (!q.ok()) return Error("reading the ledger");
  std::vector<LedgerRow> rows;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) {
    LedgerRow l;
    l.round = static_cast<uint32_t>(q.ColInt(0));
    l.site = q.ColText(1);
    const std::string dir = q.ColText(2);
    l.dir = dir == "up" ? Direction::kUp : dir == "peer" ? Direction::kPeer : Direction::kDown;
    l.kind = q.ColText(3);
    l.entry.bytes = q.ColU64(4);
    l.entry.messages = q.ColU64(5);
    rows.push_back(std::move(l));
  }
  if (rc != SQLITE_DONE) return Error("reading the ledger");
  return rows;
}

}  // namespace lowband
