// Jobs between the ranks of one site (worker/job_wire.h): each replicated
// job kind survives the round trip, FC-RAG jobs stay with rank 0, empty
// bytes mean "stop", and malformed bytes are refused, never crash.
#include "worker/job_wire.h"

#include <cstring>
#include <limits>

#include <catch2/catch.hpp>

#include "codec/params.h"
#include "protocol/wire.h"

namespace lowband {
namespace {

Bytes MakeBulk(size_t n, uint8_t salt) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 37 + salt);
  return b;
}

BlobHeader BlobFor(const Bytes& bulk) {
  BlobHeader h;
  h.codec = CodecKind::kDenseFp32;
  h.num_elements = bulk.size() / 4;
  h.layout_digest = 0x0102'0304'0506'0708ull;
  h.byte_length = bulk.size();
  h.checksum = BulkChecksum(bulk.data(), bulk.size());
  return h;
}

void PutU64(Bytes* out, uint64_t v) {
  uint8_t b[8];
  std::memcpy(b, &v, sizeof(v));
  out->insert(out->end(), b, b + 8);
}

// The job framing by hand: [u64 frame count][u64 len][bytes]...
Bytes Framed(const Frames& frames) {
  Bytes out;
  PutU64(&out, frames.size());
  for (const Bytes& f : frames) {
    PutU64(&out, f.size());
    out.insert(out.end(), f.begin(), f.end());
  }
  return out;
}

// Encodes then decodes `job`; the decoded job must be present.
Job RoundTrip(const Job& job) {
  REQUIRE(ReplicatedJob(job));
  const Bytes bytes = EncodeJob(job);
  REQUIRE_FALSE(bytes.empty());
  auto decoded = DecodeJob(bytes);
  INFO(decoded.status().ToString());
  REQUIRE(decoded.ok());
  REQUIRE(decoded->has_value());
  return **decoded;
}

Welcome SampleWelcome() {
  Welcome w;
  w.worker_id = "site-a";
  w.model = ModelSpecShape(3, 96, 4, 32, 256);
  w.training.rounds = 12;
  w.training.inner_steps = 7;
  w.training.batch_size = 8;
  w.training.seed = 0xfeedull;
  w.codec.kind = CodecKind::kSparseLoCo;
  w.codec.topk = 32;
  w.data_seed = 99;
  w.worker_index = 2;
  w.heartbeat_interval_ms = 250;
  w.heartbeat_timeout_ms = 5000;
  w.layer_blocks = {0, 1, 1};
  return w;
}

TEST_CASE("job wire: a configure job round trips as its welcome", "[unit][worker]") {
  Job out = RoundTrip(ConfigureJob{SampleWelcome()});
  REQUIRE(std::holds_alternative<ConfigureJob>(out));
  const Welcome& w = std::get<ConfigureJob>(out).welcome;
  CHECK(w.worker_id == "site-a");
  CHECK(w.model.layers == 3);
  CHECK(w.model.d_model == 96);
  CHECK(w.model.heads == 4);
  CHECK(w.model.context == 32);
  CHECK(w.model.vocab == 256);
  CHECK(w.training.rounds == 12);
  CHECK(w.training.inner_steps == 7);
  CHECK(w.training.batch_size == 8);
  CHECK(w.training.seed == 0xfeedull);
  CHECK(w.codec.kind == CodecKind::kSparseLoCo);
  CHECK(w.codec.topk == 32);
  CHECK(w.data_seed == 99);
  CHECK(w.worker_index == 2);
  CHECK(w.heartbeat_interval_ms == 250);
  CHECK(w.heartbeat_timeout_ms == 5000);
  CHECK(w.layer_blocks == std::vector<int>{0, 1, 1});
}

TEST_CASE("job wire: a sync job round trips with its parameters and bulk bytes", "[unit][worker]") {
  const Bytes bulk = MakeBulk(96, 5);
  ModelSync s;
  s.round = 4;
  s.digest = 0xabcdef01ull;
  s.blob = BlobFor(bulk);
  Job out = RoundTrip(SyncJob{s, bulk});
  REQUIRE(std::holds_alternative<SyncJob>(out));
  const SyncJob& j = std::get<SyncJob>(out);
  CHECK(j.sync.round == 4);
  CHECK(j.sync.digest == 0xabcdef01ull);
  CHECK(j.sync.blob.byte_length == bulk.size());
  CHECK(j.sync.blob.checksum == s.blob.checksum);
  CHECK(j.sync.blob.num_elements == s.blob.num_elements);
  CHECK(j.sync.blob.layout_digest == s.blob.layout_digest);
  CHECK(j.bulk == bulk);

  SECTION("an empty bulk frame stays empty") {
    ModelSync e;
    e.round = 1;
    e.blob = BlobFor(Bytes{});
    Job empty = RoundTrip(SyncJob{e, Bytes{}});
    REQUIRE(std::holds_alternative<SyncJob>(empty));
    CHECK(std::get<SyncJob>(empty).bulk.empty());
    CHECK(std::get<SyncJob>(empty).sync.round == 1);
  }
}

TEST_CASE("job wire: a train job round trips as its round start", "[unit][worker]") {
  Job out = RoundTrip(TrainJob{9, 25, 0x1234'5678'9abc'def0ull, 2});
  REQUIRE(std::holds_alternative<TrainJob>(out));
  const TrainJob& t = std::get<TrainJob>(out);
  CHECK(t.round == 9);
  CHECK(t.inner_steps == 25);
  CHECK(t.base_digest == 0x1234'5678'9abc'def0ull);
  CHECK(t.block == 2);

  Job whole = RoundTrip(TrainJob{1, 3, 42, -1});
  REQUIRE(std::holds_alternative<TrainJob>(whole));
  CHECK(std::get<TrainJob>(whole).block == -1);
  CHECK(std::get<TrainJob>(whole).round == 1);
  CHECK(std::get<TrainJob>(whole).inner_steps == 3);
  CHECK(std::get<TrainJob>(whole).base_digest == 42);
}

TEST_CASE("job wire: an apply job round trips with its aggregate and bulk bytes", "[unit][worker]") {
  const Bytes bulk = MakeBulk(64, 11);
  Aggregate a;
  a.round = 6;
  a.digest = 0x7777ull;
  a.contributors = 3;
  a.blob = BlobFor(bulk);
  Job out = RoundTrip(ApplyJob{a, bulk});
  REQUIRE(std::holds_alternative<ApplyJob>(out));
  const ApplyJob& j = std::get<ApplyJob>(out);
  CHECK(j.aggregate.round == 6);
  CHECK(j.aggregate.digest == 0x7777ull);
  CHECK(j.aggregate.contributors == 3);
  CHECK(j.aggregate.blob.byte_length == bulk.size());
  CHECK(j.aggregate.blob.checksum == a.blob.checksum);
  CHECK(j.bulk == bulk);
}

TEST_CASE("job wire: FC-RAG jobs stay with rank 0, the other kinds are replicated", "[unit][worker]") {
  CHECK_FALSE(ReplicatedJob(FcragJob{FcragRequest{}, Bytes{1, 2, 3}}));
  CHECK(ReplicatedJob(ConfigureJob{SampleWelcome()}));
  CHECK(ReplicatedJob(SyncJob{ModelSync{}, Bytes{}}));
  CHECK(ReplicatedJob(TrainJob{1, 2, 3, -1}));
  CHECK(ReplicatedJob(ApplyJob{Aggregate{}, Bytes{}}));
}

TEST_CASE("job wire: a job that is not replicated never encodes as the stop marker", "[unit][worker]") {
  const Bytes bytes = EncodeJob(FcragJob{FcragRequest{}, Bytes{}});
  CHECK_FALSE(bytes.empty());
  CHECK_FALSE(DecodeJob(bytes).ok());
}

TEST_CASE("job wire: empty bytes are the stop marker", "[unit][worker]") {
  auto decoded = DecodeJob(Bytes{});
  REQUIRE(decoded.ok());
  CHECK_FALSE(decoded->has_value());
}

TEST_CASE("job wire: malformed bytes are refused", "[unit][worker]") {
  const Bytes bulk = MakeBulk(40, 3);
  ModelSync s;
  s.round = 2;
  s.digest = 5;
  s.blob = BlobFor(bulk);
  const Bytes good = EncodeJob(SyncJob{s, bulk});
  REQUIRE(DecodeJob(good).ok());

  auto refused = [](const Bytes& b) { CHECK_FALSE(DecodeJob(b).ok()); };
  SECTION("truncated") {
    refused(Bytes(good.begin(), good.begin() + 4));    // in the frame count
    refused(Bytes(good.begin(), good.begin() + 8));    // frame count only
    refused(Bytes(good.begin(), good.begin() + 12));   // in the first length
    refused(Bytes(good.begin(), good.end() - 1));      // bulk one byte short
    refused(Bytes(good.begin(), good.begin() + 40));   // in the header frame
  }
  SECTION("bad frame count") {
    Message m;
    m.body = Heartbeat{1, "idle"};
    Frames frames = EncodeMessage(m);
    Frames none;
    refused(Framed(none));
    Frames three = frames;
    three.push_back(Bytes{1});
    three.push_back(Bytes{2});
    refused(Framed(three));
    Bytes huge;
    PutU64(&huge, std::numeric_limits<uint64_t>::max());
    refused(huge);
  }
  SECTION("a frame length past the end") {
    Bytes b;
    PutU64(&b, 1);
    PutU64(&b, std::numeric_limits<uint64_t>::max());
    b.push_back(0);
    refused(b);
  }
  SECTION("trailing bytes") {
    Bytes b = good;
    b.push_back(0);
    refused(b);
  }
  SECTION("a bulk frame that does not match its header") {
    Bytes b = good;
    b.back() ^= 0xff;
    refused(b);
  }
  SECTION("random bytes") {
    Bytes junk = MakeBulk(64, 1);
    refused(junk);
  }
  SECTION("a message that is not a job") {
    Message hb;
    hb.campaign_id = "tiny";
    hb.body = Heartbeat{3, "training"};
    auto d = DecodeJob(Framed(EncodeMessage(hb)));
    REQUIRE_FALSE(d.ok());
    CHECK(d.status().message().find("not a job") != std::string::npos);
    Message end;
    end.body = CampaignEnd{"done", 3};
    refused(Framed(EncodeMessage(end)));
    Message up;
    DeltaUpload du;
    du.round = 1;
    du.blob = BlobFor(bulk);
    up.body = du;
    up.bulk = bulk;
    refused(Framed(EncodeMessage(up)));
  }
}

}  // namespace
}  // namespace lowband
