// WorkerCore driven directly with a fake clock.
#include "worker/core.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <functional>

#include "base/hash.h"
#include "tests/fakes/fake_cluster.h"

namespace lowband {
namespace {

using testing::HelloFrom;
using testing::Wrap;

template <typename T>
int Count(const WorkerOutput& out) {
  int n = 0;
  for (const auto& m : out.messages) n += std::holds_alternative<T>(m.body);
  return n;
}

template <typename T>
int CountJobs(const WorkerOutput& out) {
  int n = 0;
  for (const auto& j : out.jobs) n += std::holds_alternative<T>(j);
  return n;
}

Welcome TinyWelcome() {
  Welcome w;
  w.worker_id = "site-a";
  w.heartbeat_interval_ms = 100;
  w.heartbeat_timeout_ms = 1000;
  return w;
}

// A model payload of `bytes` bytes and the offer of it.
Bytes Payload(size_t bytes) {
  Bytes b(bytes);
  for (size_t i = 0; i < bytes; ++i) b[i] = static_cast<uint8_t>(i * 131 + 7);
  return b;
}
ModelSync Offer(uint32_t round, uint64_t digest, const Bytes& payload) {
  ModelSync s;
  s.round = round;
  s.digest = digest;
  s.blob.codec = CodecKind::kDenseFp32;
  s.blob.num_elements = payload.size() / 4;
  s.blob.byte_length = payload.size();
  s.blob.checksum = BulkChecksum(payload.data(), payload.size());
  return s;
}

// The offer number of the last offer check queued in `out` (0: none).
uint64_t LastOfferCheck(const WorkerOutput& out) {
  uint64_t id = 0;
  for (const Job& j : out.jobs) {
    if (const auto* s = std::get_if<SyncJob>(&j); s && s->bulk.empty()) id = s->offer;
  }
  return id;
}

struct Fixture {
  WorkerTime now = WorkerTime{} + std::chrono::hours(1);
  WorkerCore core{HelloFrom("site-a"), "", now};
  WorkerOutput out;

  // Welcomed and offered parameters its replica already holds.
  void Welcomed(uint32_t round = 0, uint64_t digest = 42) {
    core.Start(now, &out);
    core.HandleMessage(Wrap(TinyWelcome(), "tiny"), now, &out);
    Offered(round, digest, /*held=*/true);
    out = WorkerOutput{};
  }
  // An offer of (round, digest), answered by the executor's check.
  void Offered(uint32_t round, uint64_t digest, bool held) {
    core.HandleMessage(Wrap(Offer(round, digest, Payload(16)), "tiny"), now, &out);
    const uint64_t id = LastOfferCheck(out);
    REQUIRE(id != 0);
    if (held) {
      core.OnJobResult(EvalDone{round, 2.5, 100, digest, true, {}, id}, now, &out);
    } else {
      core.OnJobResult(SyncNeeded{id}, now, &out);
    }
  }
};

TEST_CASE("hello is repeated until a welcome arrives", "[unit][worker]") {
  Fixture f;
  f.core.Start(f.now, &f.out);
  CHECK(Count<Hello>(f.out) == 1);
  f.core.OnTick(f.now + std::chrono::milliseconds(500), &f.out);
  CHECK(Count<Hello>(f.out) == 1);
  f.core.OnTick(f.now + std::chrono::milliseconds(1100), &f.out);
  CHECK(Count<Hello>(f.out) == 2);
  f.core.HandleMessage(Wrap(TinyWelcome(), "tiny"), f.now, &f.out);
  CHECK(f.core.registered());
  CHECK(f.core.campaign() == "tiny");
  CHECK(CountJobs<ConfigureJob>(f.out) == 1);
}

TEST_CASE("round start from the held parameters queues training, and a wrong base is refused", "[unit][worker]") {
  Fixture f;
  f.Welcomed(0, 42);
  RoundStart rs{1, 43, 5, 1000};
  f.core.HandleMessage(Wrap(rs, "tiny"), f.now, &f.out);
  CHECK(CountJobs<TrainJob>(f.out) == 0);
  REQUIRE(Count<Error>(f.out) == 1);
  CHECK(std::get<Error>(f.out.messages[0].body).code == ErrorCode::kDigestMismatch);
  f.out = WorkerOutput{};
  rs.model_version = 42;
  rs.round = 3;
  f.core.HandleMessage(Wrap(rs, "tiny"), f.now, &f.out);
  CHECK(Count<Error>(f.out) == 1);  // round 3 does not follow round 0
  f.out = WorkerOutput{};
  rs.round = 1;
  f.core.HandleMessage(Wrap(rs, "tiny"), f.now, &f.out);
  CHECK(CountJobs<TrainJob>(f.out) == 1);
  f.core.HandleMessage(Wrap(rs, "tiny"), f.now, &f.out);  // repeated start: ignored
  CHECK(CountJobs<TrainJob>(f.out) == 1);
  CHECK(f.core.training_round() == 1u);
}

TEST_CASE("training result becomes an upload, and a stale one is dropped", "[unit][worker]") {
  Fixture f;
  f.Welcomed(0, 42);
  f.core.HandleMessage(Wrap(RoundStart{1, 42, 5, 1000}, "tiny"), f.now, &f.out);
  f.out = WorkerOutput{};
  TrainDone done;
  done.upload.round = 1;
  done.bulk = {1, 2, 3};
  f.core.OnJobResult(done, f.now, &f.out);
  REQUIRE(Count<DeltaUpload>(f.out) == 1);
  CHECK(f.out.messages[0].bulk.size() == 3);
  f.out = WorkerOutput{};
  f.core.OnJobResult(done, f.now, &f.out);  // no round in training any more
  CHECK(Count<DeltaUpload>(f.out) == 0);
}

TEST_CASE("aggregate queues apply, and evaluation results are reported", "[unit][worker]") {
  Fixture f;
  f.Welcomed(0, 42);
  f.core.HandleMessage(Wrap(Aggregate{2, 7, 3, {}}, "tiny"), f.now, &f.out);
  CHECK(CountJobs<ApplyJob>(f.out) == 0);  // round 2 does not follow round 0
  CHECK(Count<Error>(f.out) == 1);
  f.out = WorkerOutput{};
  f.core.HandleMessage(Wrap(Aggregate{1, 7, 3, {}}, "tiny"), f.now, &f.out);
  CHECK(CountJobs<ApplyJob>(f.out) == 1);
  CHECK(f.core.synced_round() == 1u);
  f.core.OnJobResult(EvalDone{1, 2.5, 100, 7, true, {}}, f.now, &f.out);
  REQUIRE(Count<EvalReport>(f.out) == 1);
}

TEST_CASE("messages before welcome, for another campaign, or of the wrong kind are refused", "[unit][worker]") {
  Fixture f;
  f.core.Start(f.now, &f.out);
  f.core.HandleMessage(Wrap(RoundStart{1, 42, 5, 1000}, "tiny"), f.now, &f.out);
  CHECK(Count<Error>(f.out) == 1);
  f.core.HandleMessage(Wrap(TinyWelcome(), "tiny"), f.now, &f.out);
  f.core.HandleMessage(Wrap(Heartbeat{}, "other"), f.now, &f.out);
  CHECK(Count<Error>(f.out) == 2);
  f.core.HandleMessage(Wrap(HelloFrom("x"), "tiny"), f.now, &f.out);
  CHECK(Count<Error>(f.out) == 3);
  f.core.HandleMalformed(InvalidArgument("junk"), &f.out);
  CHECK(Count<Error>(f.out) == 4);
  CHECK(f.core.rejected_messages() == 4);
  CHECK(CountJobs<TrainJob>(f.out) == 0);
}

TEST_CASE("an unwelcomed worker takes its coordinator's CampaignEnd and refusals, whatever campaign they name",
          "[unit][worker]") {
  // A worker started from a site file alone knows no campaign until its
  // first Welcome; a finished campaign answers its hello with CampaignEnd.
  // Before the fix it refused that as "wrong campaign", the coordinator
  // refused the refusal, and the two exchanged errors forever.
  Fixture f;
  f.core.Start(f.now, &f.out);
  f.out = WorkerOutput{};
  f.core.HandleMessage(Wrap(Error{ErrorCode::kMalformed, "hello needs a site name", 0}, "finished-campaign"), f.now,
                       &f.out);
  CHECK(Count<Error>(f.out) == 0);
  f.core.HandleMessage(Wrap(CampaignEnd{"campaign already finished", 12}, "finished-campaign"), f.now, &f.out);
  CHECK(Count<Error>(f.out) == 0);
  CHECK(f.out.exit);
  CHECK(f.out.exit_code == 0);
}

TEST_CASE("errors are never answered with errors", "[unit][worker]") {
  Fixture f;
  f.Welcomed();
  f.core.HandleMessage(Wrap(Error{ErrorCode::kWrongCampaign, "not mine", 0}, "other"), f.now, &f.out);
  Message old_version = Wrap(Error{ErrorCode::kInternal, "old", 0}, "tiny");
  old_version.protocol_version = kProtocolVersion + 1;
  f.core.HandleMessage(old_version, f.now, &f.out);
  CHECK(Count<Error>(f.out) == 0);
  CHECK_FALSE(f.out.exit);
  // Any other message for another campaign is still refused.
  f.core.HandleMessage(Wrap(Heartbeat{}, "other"), f.now, &f.out);
  CHECK(Count<Error>(f.out) == 1);
}

TEST_CASE("coordinator silence sends the worker back to hello", "[unit][worker]") {
  Fixture f;
  f.Welcomed();
  f.core.OnTick(f.now + std::chrono::milliseconds(500), &f.out);
  CHECK(Count<Heartbeat>(f.out) == 1);
  f.core.OnTick(f.now + std::chrono::milliseconds(1500), &f.out);
  CHECK_FALSE(f.core.registered());
  CHECK(Count<Hello>(f.out) == 1);
}

TEST_CASE("campaign end and fatal job failures exit", "[unit][worker]") {
  Fixture f;
  f.Welcomed();
  f.core.OnJobResult(JobFailed{true, ErrorCode::kInternal, 0, "no CUDA"}, f.now, &f.out);
  CHECK(f.out.exit);
  CHECK(f.out.exit_code == 1);
  Fixture g;
  g.Welcomed();
  g.core.HandleMessage(Wrap(CampaignEnd{"done", 3}, "tiny"), g.now, &g.out);
  CHECK(g.out.exit);
  CHECK(g.out.exit_code == 0);
}

TEST_CASE("a restarted coordinator's not-registered errors bring one hello, not one per error", "[unit][worker]") {
  Fixture f;
  f.Welcomed();
  // Heartbeats queued while the coordinator was down each get an error.
  for (int i = 0; i < 5; ++i) {
    f.core.HandleMessage(Wrap(Error{ErrorCode::kNotRegistered, "heartbeat from a peer that has not said hello", 0},
                              "tiny"),
                         f.now, &f.out);
  }
  CHECK(Count<Hello>(f.out) == 1);
  CHECK_FALSE(f.core.registered());
  // Still unanswered a retry interval later: hello again.
  f.core.HandleMessage(Wrap(Error{ErrorCode::kNotRegistered, "again", 0}, "tiny"),
                       f.now + std::chrono::milliseconds(1500), &f.out);
  CHECK(Count<Hello>(f.out) == 2);
}

}  // namespace
}  // namespace lowband

namespace lowband {
namespace {

// A re-welcome (a pipeline stage replaced) while round 3 trains queues a
// second TrainJob for round 3; the first job's failure must not close the
// round, and only the second job's upload goes out.
TEST_CASE("a superseded training job's result is dropped, the newer one answers", "[unit][worker]") {
  Fixture f;
  f.Welcomed(2, 42);
  RoundStart rs;
  rs.round = 3;
  rs.model_version = 42;
  rs.inner_steps = 2;
  f.core.HandleMessage(Wrap(rs, "tiny"), f.now, &f.out);
  CHECK(CountJobs<TrainJob>(f.out) == 1);
  // Welcomed again mid-round: configure, sync, and round 3 once more.
  f.core.HandleMessage(Wrap(TinyWelcome(), "tiny"), f.now, &f.out);
  f.Offered(2, 42, /*held=*/true);
  f.core.HandleMessage(Wrap(rs, "tiny"), f.now, &f.out);
  CHECK(CountJobs<TrainJob>(f.out) == 2);
  f.out = WorkerOutput{};
  JobFailed old{false, ErrorCode::kInternal, 3, "step abandoned: the worker was welcomed again"};
  old.train = true;
  f.core.OnJobResult(old, f.now, &f.out);
  CHECK(Count<Error>(f.out) == 0);
  CHECK(f.core.training_round() == std::optional<uint32_t>(3));
  TrainDone done;
  done.upload.round = 3;
  done.upload.base_digest = 42;
  f.core.OnJobResult(done, f.now, &f.out);
  CHECK(Count<DeltaUpload>(f.out) == 1);
  CHECK(!f.core.training_round().has_value());
}

// Feeds the coordinator's side of a pull: every SyncPull in `out` answered
// from `payload` (dropped ones: `drop` says which), in order. The messages
// it answered are removed from `out`.
int Answer(Fixture& f, const Bytes& payload, const std::function<bool(const SyncPull&)>& drop = {}) {
  std::vector<SyncPull> pulls;
  std::vector<Message> rest;
  for (Message& m : f.out.messages) {
    if (const auto* p = std::get_if<SyncPull>(&m.body)) {
      pulls.push_back(*p);
    } else {
      rest.push_back(std::move(m));
    }
  }
  f.out.messages = std::move(rest);
  int answered = 0;
  for (const SyncPull& p : pulls) {
    if (drop && drop(p)) continue;
    const size_t len = std::min<size_t>(p.length, payload.size() - p.offset);
    Message m = Wrap(SyncChunk{p.round, p.digest, p.offset, static_cast<uint32_t>(len),
                               BulkChecksum(payload.data() + p.offset, len)},
                     "tiny");
    m.bulk = Frame(payload.begin() + static_cast<std::ptrdiff_t>(p.offset),
                   payload.begin() + static_cast<std::ptrdiff_t>(p.offset + len));
    f.now += std::chrono::milliseconds(1);
    f.core.HandleMessage(m, f.now, &f.out);
    ++answered;
  }
  return answered;
}

// The payload of the one loading SyncJob in `out` (empty if none).
Frame Loaded(const WorkerOutput& out) {
  Frame got;
  for (const Job& j : out.jobs) {
    if (const auto* s = std::get_if<SyncJob>(&j); s && !s->bulk.empty()) got = s->bulk;
  }
  return got;
}

TEST_CASE("an offered model the replica holds is checked, not transferred", "[unit][worker]") {
  Fixture f;
  f.core.Start(f.now, &f.out);
  f.core.HandleMessage(Wrap(TinyWelcome(), "tiny"), f.now, &f.out);
  f.out = WorkerOutput{};
  f.core.HandleMessage(Wrap(Offer(0, 42, Payload(4096)), "tiny"), f.now, &f.out);
  const uint64_t id = LastOfferCheck(f.out);
  REQUIRE(id != 0);
  // A round start that comes while the check runs waits for its answer.
  f.core.HandleMessage(Wrap(RoundStart{1, 42, 5, 1000}, "tiny"), f.now, &f.out);
  CHECK(CountJobs<TrainJob>(f.out) == 0);
  f.core.OnJobResult(EvalDone{0, 2.5, 100, 42, true, {}, id}, f.now, &f.out);
  CHECK(Count<SyncPull>(f.out) == 0);
  CHECK(Count<EvalReport>(f.out) == 1);
  CHECK(CountJobs<TrainJob>(f.out) == 1);
  CHECK(f.core.synced_round() == 0u);
}

TEST_CASE("a model the replica lacks is pulled in checked chunks, and what came meanwhile follows it",
          "[unit][worker]") {
  Fixture f;
  f.core.Start(f.now, &f.out);
  f.core.HandleMessage(Wrap(TinyWelcome(), "tiny"), f.now, &f.out);
  const Bytes payload = Payload(3 * WorkerCore::kMaxChunkBytes + 12345);
  f.core.HandleMessage(Wrap(Offer(4, 42, payload), "tiny"), f.now, &f.out);
  f.core.OnJobResult(SyncNeeded{LastOfferCheck(f.out)}, f.now, &f.out);
  REQUIRE(Count<SyncPull>(f.out) >= 1);
  CHECK(f.core.pull_total() == payload.size());
  // The round after it and its aggregate arrive during the transfer.
  f.core.HandleMessage(Wrap(RoundStart{5, 42, 5, 1000}, "tiny"), f.now, &f.out);
  f.core.HandleMessage(Wrap(Aggregate{5, 43, 3, {}}, "tiny"), f.now, &f.out);
  CHECK(CountJobs<TrainJob>(f.out) == 0);
  CHECK(CountJobs<ApplyJob>(f.out) == 0);
  CHECK(Count<Error>(f.out) == 0);
  int rounds = 0;
  while (Loaded(f.out).empty() && rounds++ < 10000) REQUIRE(Answer(f, payload) > 0);
  const Frame got = Loaded(f.out);
  REQUIRE(got.size() == payload.size());
  CHECK(got.bytes() == payload);
  CHECK(f.core.pull_total() == 0);
  // The load first, then the round and the aggregate, in the order they came.
  std::vector<size_t> kinds;
  for (const Job& j : f.out.jobs) kinds.push_back(j.index());
  const size_t sync = Job(SyncJob{}).index(), train = Job(TrainJob{}).index(), apply = Job(ApplyJob{}).index();
  const auto at = [&](size_t kind) { return std::find(kinds.rbegin(), kinds.rend(), kind) - kinds.rbegin(); };
  CHECK(at(sync) > at(train));
  CHECK(at(train) > at(apply));
  CHECK(Count<Error>(f.out) == 0);
}

TEST_CASE("a pull keeps a bounded window in flight and grows it with the measured rate", "[unit][worker]") {
  Fixture f;
  f.core.Start(f.now, &f.out);
  f.core.HandleMessage(Wrap(TinyWelcome(), "tiny"), f.now, &f.out);
  const Bytes payload = Payload(64u << 20);
  f.core.HandleMessage(Wrap(Offer(0, 42, payload), "tiny"), f.now, &f.out);
  f.out = WorkerOutput{};
  f.core.OnJobResult(SyncNeeded{1}, f.now, &f.out);
  uint64_t first_window = 0;
  for (const auto& m : f.out.messages) {
    if (const auto* p = std::get_if<SyncPull>(&m.body)) first_window += p->length;
  }
  CHECK(first_window <= 4 * WorkerCore::kMinChunkBytes);  // unknown link: a small start
  // The link delivers 1 MB/s (each answered batch takes its bytes' time).
  uint64_t most_in_flight = 0;
  for (int i = 0; i < 200 && f.core.pull_total() > 0; ++i) {
    uint64_t asked = 0;
    for (const auto& m : f.out.messages) {
      if (const auto* p = std::get_if<SyncPull>(&m.body)) asked += p->length;
    }
    f.now += std::chrono::microseconds(asked);  // 1 byte per microsecond
    Answer(f, payload);
    most_in_flight = std::max(most_in_flight, f.core.pull_total() ? asked : 0);
  }
  // About kPullSeconds of 1 MB/s in flight, never much more.
  CHECK(most_in_flight <= 2 * WorkerCore::kPullSeconds * 1e6 + WorkerCore::kMaxChunkBytes);
}

TEST_CASE("a stale or corrupt chunk is dropped, and an offer repeated resumes at the last verified byte",
          "[unit][worker]") {
  Fixture f;
  f.core.Start(f.now, &f.out);
  f.core.HandleMessage(Wrap(TinyWelcome(), "tiny"), f.now, &f.out);
  const Bytes payload = Payload(2u << 20);
  const ModelSync offer = Offer(3, 42, payload);
  f.core.HandleMessage(Wrap(offer, "tiny"), f.now, &f.out);
  f.core.OnJobResult(SyncNeeded{LastOfferCheck(f.out)}, f.now, &f.out);
  Answer(f, payload);  // the first window
  const uint64_t verified = f.core.pull_verified();
  REQUIRE(verified > 0);
  REQUIRE(verified < payload.size());

  // A chunk from the wrong place, or of another model: nothing changes.
  Message wrong = Wrap(SyncChunk{3, 42, verified + 1, 4, BulkChecksum(payload.data() + verified + 1, 4)}, "tiny");
  wrong.bulk = Frame(payload.begin() + static_cast<std::ptrdiff_t>(verified + 1),
                     payload.begin() + static_cast<std::ptrdiff_t>(verified + 5));
  f.core.HandleMessage(wrong, f.now, &f.out);
  Message other = Wrap(SyncChunk{2, 41, verified, 4, BulkChecksum(payload.data() + verified, 4)}, "tiny");
  other.bulk = Frame(payload.begin() + static_cast<std::ptrdiff_t>(verified),
                     payload.begin() + static_cast<std::ptrdiff_t>(verified + 4));
  f.core.HandleMessage(other, f.now, &f.out);
  CHECK(f.core.pull_verified() == verified);

  // The coordinator seems silent; the site says hello again and is welcomed
  // and offered the same model: it asks from where it was.
  f.out = WorkerOutput{};
  f.now += std::chrono::milliseconds(1100);
  f.core.OnTick(f.now, &f.out);
  CHECK(Count<Hello>(f.out) == 1);
  f.out = WorkerOutput{};
  f.core.HandleMessage(Wrap(TinyWelcome(), "tiny"), f.now, &f.out);
  CHECK(CountJobs<ConfigureJob>(f.out) == 0);  // the same setup: nothing to redo
  f.core.HandleMessage(Wrap(offer, "tiny"), f.now, &f.out);
  CHECK(CountJobs<SyncJob>(f.out) == 0);  // no check again, no restart
  REQUIRE(Count<SyncPull>(f.out) >= 1);
  for (const auto& m : f.out.messages) {
    if (const auto* p = std::get_if<SyncPull>(&m.body)) {
      CHECK(p->offset >= verified);
    }
  }
  CHECK(std::get<SyncPull>(f.out.messages[0].body).offset == verified);
  int rounds = 0;
  while (Loaded(f.out).empty() && rounds++ < 1000) REQUIRE(Answer(f, payload) > 0);
  CHECK(Loaded(f.out).bytes() == payload);
}

TEST_CASE("lost chunk requests are asked again once overdue", "[unit][worker]") {
  Fixture f;
  f.core.Start(f.now, &f.out);
  f.core.HandleMessage(Wrap(TinyWelcome(), "tiny"), f.now, &f.out);
  const Bytes payload = Payload(1u << 20);
  f.core.HandleMessage(Wrap(Offer(0, 42, payload), "tiny"), f.now, &f.out);
  f.core.OnJobResult(SyncNeeded{LastOfferCheck(f.out)}, f.now, &f.out);
  Answer(f, payload, [](const SyncPull&) { return true; });  // all lost
  f.out = WorkerOutput{};
  f.core.HandleMessage(Wrap(Heartbeat{}, "tiny"), f.now + std::chrono::milliseconds(400), &f.out);
  f.core.OnTick(f.now + std::chrono::milliseconds(400), &f.out);
  CHECK(Count<SyncPull>(f.out) == 0);  // not overdue yet (half the 1000 ms timeout)
  f.core.HandleMessage(Wrap(Heartbeat{}, "tiny"), f.now + std::chrono::milliseconds(600), &f.out);
  f.core.OnTick(f.now + std::chrono::milliseconds(600), &f.out);
  REQUIRE(Count<SyncPull>(f.out) >= 1);
  for (const auto& m : f.out.messages) {
    if (const auto* p = std::get_if<SyncPull>(&m.body)) {
      CHECK(p->offset == 0);
      break;
    }
  }
}

TEST_CASE("a payload whose whole checksum differs from the offer is refused, and a newer offer replaces a pull",
          "[unit][worker]") {
  Fixture f;
  f.core.Start(f.now, &f.out);
  f.core.HandleMessage(Wrap(TinyWelcome(), "tiny"), f.now, &f.out);
  const Bytes payload = Payload(100000);
  ModelSync offer = Offer(1, 42, payload);
  SECTION("checksum") {
    offer.blob.checksum ^= 1;
    f.core.HandleMessage(Wrap(offer, "tiny"), f.now, &f.out);
    f.core.OnJobResult(SyncNeeded{LastOfferCheck(f.out)}, f.now, &f.out);
    int rounds = 0;
    while (f.core.pull_total() > 0 && rounds++ < 100) Answer(f, payload);
    CHECK(Loaded(f.out).empty());
    REQUIRE(Count<Error>(f.out) == 1);
  }
  SECTION("newer offer") {
    f.core.HandleMessage(Wrap(offer, "tiny"), f.now, &f.out);
    f.core.OnJobResult(SyncNeeded{LastOfferCheck(f.out)}, f.now, &f.out);
    Answer(f, payload);
    f.core.HandleMessage(Wrap(RoundStart{2, 42, 5, 1000}, "tiny"), f.now, &f.out);  // waits for the model
    const ModelSync newer = Offer(2, 43, payload);
    f.out = WorkerOutput{};
    f.core.HandleMessage(Wrap(newer, "tiny"), f.now, &f.out);
    CHECK(f.core.pull_total() == 0);
    CHECK(f.core.synced_round() == 2u);
    // Its check answered "held": the old round start does not come back.
    f.core.OnJobResult(EvalDone{2, 2.5, 100, 43, true, {}, LastOfferCheck(f.out)}, f.now, &f.out);
    CHECK(CountJobs<TrainJob>(f.out) == 0);
    CHECK(Count<SyncPull>(f.out) == 0);
  }
  SECTION("an offer that is not dense fp32 is refused") {
    offer.blob.codec = CodecKind::kInt8;
    f.core.HandleMessage(Wrap(offer, "tiny"), f.now, &f.out);
    CHECK(CountJobs<SyncJob>(f.out) == 0);
    CHECK(Count<Error>(f.out) == 1);
  }
}

}  // namespace
}  // namespace lowband

namespace lowband {
namespace {

// Multi-rank sites (docs/ranks.md): a site that lost a rank leaves the
// campaign at once and exits with 75 (EX_TEMPFAIL) for a restart.
const Error* OnlyError(const WorkerOutput& out) {
  const Error* e = nullptr;
  int n = 0;
  for (const auto& m : out.messages) {
    if (const auto* x = std::get_if<Error>(&m.body)) {
      e = x;
      ++n;
    }
  }
  return n == 1 ? e : nullptr;
}

JobFailed Failed(bool fatal, ErrorCode code, uint32_t round, const std::string& what) {
  JobFailed f;
  f.fatal = fatal;
  f.code = code;
  f.round = round;
  f.what = what;
  f.train = false;
  return f;
}

TEST_CASE("ranks: site down tells the coordinator and exits with 75", "[unit][worker]") {
  Fixture f;
  f.Welcomed(2, 42);
  f.core.SiteDown("rank 1 (pid 123) was killed by signal 9", &f.out);
  const Error* e = OnlyError(f.out);
  REQUIRE(e != nullptr);
  CHECK(e->code == ErrorCode::kSiteDown);
  CHECK(e->message == "rank 1 (pid 123) was killed by signal 9");
  CHECK(e->round == 2);  // the round its replica holds
  REQUIRE(f.out.messages.size() == 1);
  CHECK(f.out.messages[0].campaign_id == "tiny");
  CHECK(f.out.messages[0].sender_id == "site-a");
  CHECK(f.out.exit);
  CHECK(f.out.exit_code == 75);
  CHECK(f.out.exit_reason == "rank 1 (pid 123) was killed by signal 9");

  SECTION("while training, the error names the round in training") {
    Fixture g;
    g.Welcomed(2, 42);
    RoundStart rs;
    rs.round = 3;
    rs.model_version = 42;
    rs.inner_steps = 2;
    g.core.HandleMessage(Wrap(rs, "tiny"), g.now, &g.out);
    REQUIRE(CountJobs<TrainJob>(g.out) == 1);
    g.out = WorkerOutput{};
    g.core.SiteDown("rank 1 exited with status 1", &g.out);
    REQUIRE(OnlyError(g.out) != nullptr);
    CHECK(OnlyError(g.out)->round == 3);
    CHECK(g.out.exit_code == 75);
  }
}

TEST_CASE("ranks: a fatal site-down job failure exits with 75, other fatal failures with 1", "[unit][worker]") {
  Fixture f;
  f.Welcomed(0, 42);
  f.core.OnJobResult(Failed(true, ErrorCode::kSiteDown, 0, "rank 1: collective timed out"), f.now, &f.out);
  const Error* e = OnlyError(f.out);
  REQUIRE(e != nullptr);
  CHECK(e->code == ErrorCode::kSiteDown);
  CHECK(e->message == "rank 1: collective timed out");
  CHECK(f.out.exit);
  CHECK(f.out.exit_code == 75);
  CHECK(f.out.exit_reason == "rank 1: collective timed out");

  Fixture g;
  g.Welcomed(0, 42);
  g.core.OnJobResult(Failed(true, ErrorCode::kInternal, 0, "no CUDA"), g.now, &g.out);
  REQUIRE(OnlyError(g.out) != nullptr);
  CHECK(OnlyError(g.out)->code == ErrorCode::kInternal);
  CHECK(g.out.exit);
  CHECK(g.out.exit_code == 1);

  Fixture h;  // not fatal: reported, the worker goes on
  h.Welcomed(0, 42);
  h.core.OnJobResult(Failed(false, ErrorCode::kSiteDown, 0, "odd"), h.now, &h.out);
  REQUIRE(OnlyError(h.out) != nullptr);
  CHECK_FALSE(h.out.exit);
}

TEST_CASE("ranks: every rank's digest goes into the evaluation report", "[unit][worker]") {
  Fixture f;
  f.Welcomed(0, 42);
  EvalDone ev;
  ev.round = 0;
  ev.val_loss = 2.25;
  ev.val_tokens = 100;
  ev.digest = 42;
  ev.digest_ok = true;
  ev.rank_digests = {42, 42, 43};
  f.core.OnJobResult(ev, f.now, &f.out);
  REQUIRE(Count<EvalReport>(f.out) == 1);
  const auto& report = std::get<EvalReport>(f.out.messages[0].body);
  CHECK(report.round == 0);
  CHECK(report.val_loss == 2.25);
  CHECK(report.val_tokens == 100);
  CHECK(report.digest == 42);
  CHECK(report.rank_digests == std::vector<uint64_t>{42, 42, 43});

  f.out = WorkerOutput{};
  ev.rank_digests.clear();  // a site of one rank: none
  f.core.OnJobResult(ev, f.now, &f.out);
  REQUIRE(Count<EvalReport>(f.out) == 1);
  CHECK(std::get<EvalReport>(f.out.messages[0].body).rank_digests.empty());
}

}  // namespace
}  // namespace lowband
