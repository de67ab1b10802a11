// Wire format: round trips of every body kind, and hostile input. Decode must
// reject (never crash on) random bytes, truncations, flipped bytes, bad
// versions/identifiers, size and frame-count violations and blob mismatches.
#include "protocol/pipeline_wire.h"
#include "protocol/wire.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <catch2/catch.hpp>
#include <functional>
// Hand-built envelopes for cases the encoder cannot produce (no body, unknown
// union or enum values, missing sub-tables). Only the raw builder is used,
// not the generated headers, which stay private to protocol/wire.cc.
#include <flatbuffers/flatbuffers.h>

#include "codec/params.h"

namespace lowband {
namespace {

// ---------------------------------------------------------------- fixtures

Bytes MakeBulk(size_t n, uint8_t salt) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 131 + salt);
  return b;
}

BlobHeader BlobFor(const Bytes& bulk) {
  BlobHeader h;
  h.codec = CodecKind::kDenseFp32;
  h.num_elements = bulk.size() / 4;
  h.layout_digest = 0x1234'5678'9abc'def0ull;
  h.byte_length = bulk.size();
  h.checksum = BulkChecksum(bulk.data(), bulk.size());
  return h;
}

Message Wrap(Body body, Bytes bulk = {}) {
  Message m;
  m.campaign_id = "camp-7";
  m.sender_id = "worker-3";
  m.seq = 0xfeed'beef'0000'0042ull;
  m.body = std::move(body);
  m.bulk = std::move(bulk);
  return m;
}

Message SampleHello() {
  Hello h;
  h.site = "site-berlin";
  h.device = "cuda:1";
  h.free_memory_bytes = 80ull << 30;
  h.step_time_ms = 12.5;
  h.train_tokens = 1'000'000;
  h.val_tokens = 100'000;
  h.own_model = ModelSpecShape(2, 96, 4, 128, 256);
  h.ranks = 4;
  h.held_round = 17;
  h.held_digest = 0x5eed5eedull;
  return Wrap(h);
}

Message SampleWelcome() {
  Welcome w;
  w.worker_id = "w-0001";
  w.model = ModelSpecShape(6, 256, 8, 128, 256);
  w.training.rounds = 42;
  w.training.inner_steps = 25;
  w.training.batch_size = 32;
  w.training.eval_batches = 4;
  w.training.seed = 0xdead'beef'cafe'f00dull;
  w.training.inner = InnerOptimizerSpec{1e-3, 0.85, 0.97, 1e-9, 0.05, 0.5, 17};
  w.codec.kind = CodecKind::kSparseLoCo;
  w.codec.topk = 63;
  w.codec.error_feedback = 0.9;
  w.data_seed = 99;
  w.worker_index = 3;
  w.heartbeat_interval_ms = 250;
  w.heartbeat_timeout_ms = 5000;
  w.layer_blocks = {0, 0, 1, 1, 1, 2};
  w.fpld.enabled = true;
  w.fpld.bits = 4;
  w.fpld.clip = 6.5f;
  w.fpld.topk = 32;
  w.fpld.positions = 8;
  w.fpld.contexts = 3;
  w.fpld.exact_reference = true;
  for (int i = 0; i < 3 * 128; ++i) w.fpld.probe_tokens.push_back(static_cast<uint8_t>(i * 7));
  return Wrap(w);
}

Message SampleModelSync() {  // an offer: the blob describes a payload it does not carry
  ModelSync m;
  m.round = 7;
  m.digest = 0xabcdefull;
  m.blob = BlobFor(MakeBulk(256, 1));
  return Wrap(m);
}
Message SampleSyncPull() { return Wrap(SyncPull{7, 0xabcdefull, 1u << 20, 65536}); }
Message SampleSyncChunk() {
  Bytes bulk = MakeBulk(96, 4);
  const SyncChunk chunk{7, 0xabcdefull, 4096, static_cast<uint32_t>(bulk.size()), BulkChecksum(bulk.data(), bulk.size())};
  return Wrap(chunk, std::move(bulk));
}

Message SampleHeartbeat() { return Wrap(Heartbeat{12, "training"}); }
Message SampleCampaignEnd() { return Wrap(CampaignEnd{"all rounds done", 41}); }
Message SampleRoundStart() { return Wrap(RoundStart{5, 0x77ull, 30, 60000, 2}); }

Message SampleDeltaUpload() {
  Bytes bulk = MakeBulk(400, 2);
  DeltaUpload d;
  d.round = 9;
  d.base_digest = 0x1111ull;
  d.train_loss = 2.375;
  d.tokens = 123456;
  d.step_time_ms = 33.25;
  d.blob = BlobFor(bulk);
  d.block = 1;
  d.wait_ms = 125.5;
  d.peer_traffic = {PeerTraffic{0, 1, PeerTraffic::kForward, 20, 14080, 10240},
                    PeerTraffic{0, 1, PeerTraffic::kLabels, 5, 2000, 1280}};
  return Wrap(d, std::move(bulk));
}

Message SampleAggregate() {
  Bytes bulk = MakeBulk(128, 3);
  Aggregate a;
  a.round = 9;
  a.digest = 0x2222ull;
  a.contributors = 4;
  a.blob = BlobFor(bulk);
  return Wrap(a, std::move(bulk));
}

Message SampleEvalReport() {
  return Wrap(EvalReport{9, 1.875, 4096, 0x3333ull, {PeerTraffic{1, 0, PeerTraffic::kBackward, 3, 900, 600}},
                         {0x3333ull, 0x3333ull, 0xFFFFFFFFFFFFFFFFull}});
}
Message SampleError() { return Wrap(Error{ErrorCode::kWrongRound, "round 3 is stale", 3}); }
Message SampleControlRequest() { return Wrap(ControlRequest{"workers", {"--json", "", "x y"}}); }
Message SampleControlResponse() { return Wrap(ControlResponse{true, "2 workers", "{\"workers\":2}"}); }

// A bf16 boundary tensor [2, 3, 4] for stage 1's micro-batch 2.
Message SampleActivation() {
  Activation a;
  a.round = 7;
  a.step = 3;
  a.micro_batch = 2;
  a.stage = 1;
  a.backward = true;
  a.batch = 2;
  a.tokens = 3;
  a.width = 4;
  a.dtype = WireDtype::kBf16;
  Bytes bulk(2 * 3 * 4 * 2);
  for (size_t i = 0; i < bulk.size(); i += 2) bulk[i + 1] = 0x3f;  // bf16 values near 0.5..1
  a.blob = BlobFor(bulk);
  a.blob.num_elements = 24;
  Message m = Wrap(a);
  m.bulk = bulk;
  return m;
}

Message SampleLogitUpload() {
  Bytes bulk = MakeBulk(96, 4);
  LogitUpload u;
  u.round = 4;
  u.train_loss = 2.5;
  u.tokens = 5120;
  u.step_time_ms = 41.5;
  u.rows = 12;
  u.vocab = 256;
  u.bits = 2;
  u.clip = 8;
  u.topk = 0;
  u.exact_bytes = 16;
  u.wait_ms = 3.25;
  u.blob = BlobFor(bulk);
  return Wrap(u, std::move(bulk));
}

Message SampleFcragRequest() {
  Bytes bulk = PackTextList({"what is a monad", "", "wisdom of the ages"});
  FcragRequest r;
  r.id = 17;
  r.kind = FcragKind::kScore;
  r.bits = 6;
  r.seed = 0x1234ull;
  r.score_max = 12.5;
  r.count = 3;
  r.calibration_fraction = 0.4;
  r.qq_k = 5;
  r.threshold = 2.25;
  r.threshold_qq = std::numeric_limits<double>::infinity();
  r.blob = BlobFor(bulk);
  return Wrap(r, std::move(bulk));
}

Message SampleFcragReply() {
  Bytes bulk = MakeBulk(12, 6);
  FcragReply r;
  r.id = 17;
  r.kind = FcragKind::kTest;
  r.count = 40;
  r.covered = 37;
  r.set_size = 91;
  r.covered_qq = 38;
  r.set_size_qq = 99;
  r.local_qq = 3.5;
  r.blob = BlobFor(bulk);
  return Wrap(r, std::move(bulk));
}

std::vector<Message> AllSamples() {
  return {SampleHello(),     SampleWelcome(),    SampleModelSync(),  SampleHeartbeat(),
          SampleCampaignEnd(), SampleRoundStart(), SampleDeltaUpload(), SampleAggregate(),
          SampleEvalReport(), SampleError(),      SampleControlRequest(), SampleControlResponse(),
          SampleActivation(), SampleLogitUpload(), SampleFcragRequest(), SampleFcragReply(),
          SampleSyncPull(),   SampleSyncChunk()};
}

// ---------------------------------------------------------------- equality

auto Tie(const BlobHeader& b) {
  return std::tie(b.codec, b.num_elements, b.layout_digest, b.byte_length, b.checksum, b.topk);
}
bool Same(const Hello& a, const Hello& b) {
  const auto& am = a.own_model;
  const auto& bm = b.own_model;
  return std::tie(a.site, a.device, a.free_memory_bytes, a.step_time_ms, a.train_tokens, a.val_tokens, a.ranks,
                  a.held_round, a.held_digest) == std::tie(b.site, b.device, b.free_memory_bytes, b.step_time_ms,
                                                          b.train_tokens, b.val_tokens, b.ranks, b.held_round,
                                                          b.held_digest) &&
         std::tie(am.layers, am.d_model, am.heads, am.context, am.vocab) ==
             std::tie(bm.layers, bm.d_model, bm.heads, bm.context, bm.vocab);
}
bool Same(const FpldWelcome& a, const FpldWelcome& b) {
  return std::tie(a.enabled, a.bits, a.clip, a.topk, a.positions, a.contexts, a.exact_reference, a.probe_tokens) ==
         std::tie(b.enabled, b.bits, b.clip, b.topk, b.positions, b.contexts, b.exact_reference, b.probe_tokens);
}
bool Same(const FcragRequest& a, const FcragRequest& b) {
  return std::tie(a.id, a.kind, a.bits, a.seed, a.score_max, a.count, a.calibration_fraction, a.qq_k, a.threshold,
                  a.threshold_qq) == std::tie(b.id, b.kind, b.bits, b.seed, b.score_max, b.count,
                                              b.calibration_fraction, b.qq_k, b.threshold, b.threshold_qq) &&
         Tie(a.blob) == Tie(b.blob);
}
bool Same(const FcragReply& a, const FcragReply& b) {
  return std::tie(a.id, a.kind, a.count, a.covered, a.set_size, a.covered_qq, a.set_size_qq, a.local_qq) ==
             std::tie(b.id, b.kind, b.count, b.covered, b.set_size, b.covered_qq, b.set_size_qq, b.local_qq) &&
         Tie(a.blob) == Tie(b.blob);
}
bool Same(const LogitUpload& a, const LogitUpload& b) {
  return std::tie(a.round, a.train_loss, a.tokens, a.step_time_ms, a.rows, a.vocab, a.bits, a.clip, a.topk,
                  a.exact_bytes, a.wait_ms) == std::tie(b.round, b.train_loss, b.tokens, b.step_time_ms, b.rows,
                                                        b.vocab, b.bits, b.clip, b.topk, b.exact_bytes, b.wait_ms) &&
         Tie(a.blob) == Tie(b.blob);
}
bool Same(const Welcome& a, const Welcome& b) {
  const auto& am = a.model;
  const auto& bm = b.model;
  const auto& at = a.training;
  const auto& bt = b.training;
  const auto& ai = at.inner;
  const auto& bi = bt.inner;
  return std::tie(a.worker_id, a.codec.kind, a.codec.topk, a.codec.error_feedback, a.data_seed, a.worker_index, a.heartbeat_interval_ms,
                  a.heartbeat_timeout_ms) == std::tie(b.worker_id, b.codec.kind, b.codec.topk, b.codec.error_feedback, b.data_seed, b.worker_index,
                                                      b.heartbeat_interval_ms, b.heartbeat_timeout_ms) &&
         std::tie(am.layers, am.d_model, am.heads, am.context, am.vocab, am.arch, am.kv_heads, am.ffn_hidden,
                  am.rope_theta, am.norm_eps) == std::tie(bm.layers, bm.d_model, bm.heads, bm.context, bm.vocab, bm.arch,
                                                          bm.kv_heads, bm.ffn_hidden, bm.rope_theta, bm.norm_eps) &&
         std::tie(at.rounds, at.inner_steps, at.batch_size, at.eval_batches, at.seed, at.overlap) ==
             std::tie(bt.rounds, bt.inner_steps, bt.batch_size, bt.eval_batches, bt.seed, bt.overlap) &&
         std::tie(ai.lr, ai.beta1, ai.beta2, ai.eps, ai.weight_decay, ai.grad_clip, ai.warmup_steps) ==
             std::tie(bi.lr, bi.beta1, bi.beta2, bi.eps, bi.weight_decay, bi.grad_clip, bi.warmup_steps) &&
         a.layer_blocks == b.layer_blocks && Same(a.fpld, b.fpld);
}
bool Same(const ModelSync& a, const ModelSync& b) {
  return std::tie(a.round, a.digest) == std::tie(b.round, b.digest) && Tie(a.blob) == Tie(b.blob);
}
bool Same(const SyncPull& a, const SyncPull& b) {
  return std::tie(a.round, a.digest, a.offset, a.length) == std::tie(b.round, b.digest, b.offset, b.length);
}
bool Same(const SyncChunk& a, const SyncChunk& b) {
  return std::tie(a.round, a.digest, a.offset, a.length, a.checksum) ==
         std::tie(b.round, b.digest, b.offset, b.length, b.checksum);
}
bool Same(const Heartbeat& a, const Heartbeat& b) { return std::tie(a.round, a.state) == std::tie(b.round, b.state); }
bool Same(const CampaignEnd& a, const CampaignEnd& b) {
  return std::tie(a.reason, a.final_round) == std::tie(b.reason, b.final_round);
}
bool Same(const RoundStart& a, const RoundStart& b) {
  return std::tie(a.round, a.model_version, a.inner_steps, a.deadline_ms, a.block) ==
         std::tie(b.round, b.model_version, b.inner_steps, b.deadline_ms, b.block);
}
bool Same(const std::vector<PeerTraffic>& a, const std::vector<PeerTraffic>& b) {
  auto tie = [](const PeerTraffic& t) {
    return std::tie(t.from_stage, t.to_stage, t.kind, t.messages, t.bytes, t.tensor_bytes);
  };
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (tie(a[i]) != tie(b[i])) return false;
  }
  return true;
}
bool Same(const DeltaUpload& a, const DeltaUpload& b) {
  return std::tie(a.round, a.base_digest, a.train_loss, a.tokens, a.step_time_ms, a.block, a.wait_ms) ==
             std::tie(b.round, b.base_digest, b.train_loss, b.tokens, b.step_time_ms, b.block, b.wait_ms) &&
         Tie(a.blob) == Tie(b.blob) && Same(a.peer_traffic, b.peer_traffic);
}
bool Same(const Aggregate& a, const Aggregate& b) {
  return std::tie(a.round, a.digest, a.contributors) == std::tie(b.round, b.digest, b.contributors) &&
         Tie(a.blob) == Tie(b.blob);
}
bool Same(const EvalReport& a, const EvalReport& b) {
  return std::tie(a.round, a.val_loss, a.val_tokens, a.digest, a.rank_digests) ==
             std::tie(b.round, b.val_loss, b.val_tokens, b.digest, b.rank_digests) &&
         Same(a.peer_traffic, b.peer_traffic);
}
bool Same(const Error& a, const Error& b) {
  return std::tie(a.code, a.message, a.round) == std::tie(b.code, b.message, b.round);
}
bool Same(const ControlRequest& a, const ControlRequest& b) {
  return std::tie(a.command, a.args) == std::tie(b.command, b.args);
}
bool Same(const ControlResponse& a, const ControlResponse& b) {
  return std::tie(a.ok, a.message, a.json) == std::tie(b.ok, b.message, b.json);
}

bool Same(const Activation& a, const Activation& b) {
  return std::tie(a.round, a.step, a.micro_batch, a.stage, a.backward, a.batch, a.tokens, a.width, a.dtype) ==
             std::tie(b.round, b.step, b.micro_batch, b.stage, b.backward, b.batch, b.tokens, b.width, b.dtype) &&
         Tie(a.blob) == Tie(b.blob);
}

bool SameMessage(const Message& a, const Message& b) {
  if (std::tie(a.protocol_version, a.campaign_id, a.sender_id, a.seq, a.bulk) !=
      std::tie(b.protocol_version, b.campaign_id, b.sender_id, b.seq, b.bulk)) {
    return false;
  }
  if (a.body.index() != b.body.index()) return false;
  return std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        return Same(x, std::get<T>(b.body));
      },
      a.body);
}

bool Contains(const Status& s, const std::string& needle) {
  return s.message().find(needle) != std::string::npos;
}

// Decodes and returns the status; crashes (the failure we hunt) abort the test.
Status DecodeStatus(const Frames& frames, const WireLimits& limits = WireLimits{}) {
  return DecodeMessage(frames, limits).status();
}

// ---------------------------------------------------------------- hand-built

constexpr flatbuffers::voffset_t Field(int index) { return static_cast<flatbuffers::voffset_t>(4 + 2 * index); }

// Body union type values, as in schemas/envelope.fbs.
constexpr uint8_t kTypeNone = 0;
constexpr uint8_t kTypeModelSync = 3;
constexpr uint8_t kTypeHeartbeat = 4;

// Envelope {protocol_version, body_type, body}; `make_body` builds the body
// table (or returns 0 for none).
template <typename MakeBody>
Bytes HandBuiltEnvelope(uint16_t version, uint8_t body_type, MakeBody make_body) {
  flatbuffers::FlatBufferBuilder fbb;
  const flatbuffers::uoffset_t body = make_body(fbb);
  const auto start = fbb.StartTable();
  fbb.AddElement<uint16_t>(Field(0), version, 0);
  fbb.AddElement<uint8_t>(Field(4), body_type, 0);
  if (body != 0) fbb.AddOffset(Field(5), flatbuffers::Offset<void>(body));
  const auto root = fbb.EndTable(start);
  fbb.Finish(flatbuffers::Offset<void>(root), "LBND");
  return Bytes(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
}

flatbuffers::uoffset_t HeartbeatTable(flatbuffers::FlatBufferBuilder& fbb) {
  auto state = fbb.CreateString("idle");
  const auto start = fbb.StartTable();
  fbb.AddElement<uint32_t>(Field(0), 4, 0);
  fbb.AddOffset(Field(1), state);
  return fbb.EndTable(start);
}

// ModelSync {round, blob{codec, byte_length, checksum}}; no blob if !with_blob.
flatbuffers::uoffset_t ModelSyncTable(flatbuffers::FlatBufferBuilder& fbb, bool with_blob, uint8_t codec,
                                      const Bytes& bulk) {
  flatbuffers::uoffset_t blob = 0;
  if (with_blob) {
    const auto b = fbb.StartTable();
    fbb.AddElement<uint8_t>(Field(0), codec, 0);
    fbb.AddElement<uint64_t>(Field(3), bulk.size(), 0);
    fbb.AddElement<uint64_t>(Field(4), BulkChecksum(bulk.data(), bulk.size()), 0);
    blob = fbb.EndTable(b);
  }
  const auto start = fbb.StartTable();
  fbb.AddElement<uint32_t>(Field(0), 1, 0);
  if (blob != 0) fbb.AddOffset(Field(2), flatbuffers::Offset<void>(blob));
  return fbb.EndTable(start);
}

// ---------------------------------------------------------------- tests

TEST_CASE("wire: every body kind round-trips", "[unit]") {
  for (const Message& original : AllSamples()) {
    INFO("body: " << BodyName(original.body));
    Frames frames = EncodeMessage(original);
    const bool blob = std::holds_alternative<SyncChunk>(original.body) ||
                      std::holds_alternative<DeltaUpload>(original.body) ||
                      std::holds_alternative<Aggregate>(original.body) ||
                      std::holds_alternative<Activation>(original.body) ||
                      std::holds_alternative<LogitUpload>(original.body) ||
                      std::holds_alternative<FcragRequest>(original.body) ||
                      std::holds_alternative<FcragReply>(original.body);
    REQUIRE(frames.size() == (blob ? 2u : 1u));
    if (blob) CHECK(frames[1] == original.bulk);

    auto decoded = DecodeMessage(frames, WireLimits{});
    REQUIRE(decoded.ok());
    CHECK(SameMessage(*decoded, original));
    // Deterministic encoding: decoded -> encoded gives the same bytes.
    CHECK(EncodeMessage(*decoded) == frames);

    // Move overloads: same result, bulk moved rather than copied.
    Message copy = original;
    Frames moved_frames = EncodeMessage(std::move(copy));
    CHECK(moved_frames == frames);
    auto moved = DecodeMessage(std::move(moved_frames), WireLimits{});
    REQUIRE(moved.ok());
    CHECK(SameMessage(*moved, original));
  }
}

TEST_CASE("wire: a llama Welcome round-trips, and impossible llama shapes are refused", "[unit]") {
  Message m = SampleWelcome();
  auto& w = std::get<Welcome>(m.body);
  w.model.arch = ModelArch::kLlama;
  w.model.kv_heads = 2;
  w.model.ffn_hidden = 688;
  w.model.rope_theta = 500000.0;
  w.model.norm_eps = 1e-6;
  auto decoded = DecodeMessage(EncodeMessage(m), WireLimits{});
  REQUIRE(decoded.ok());
  CHECK(SameMessage(*decoded, m));

  auto refused = [&](auto mutate, const std::string& why) {
    Message bad = m;
    mutate(std::get<Welcome>(bad.body).model);
    auto r = DecodeMessage(EncodeMessage(bad), WireLimits{});
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.status().message(), Catch::Matchers::Contains(why));
  };
  refused([](ModelSpec& s) { s.arch = static_cast<ModelArch>(7); }, "Welcome.model.arch has unknown value 7");
  refused([](ModelSpec& s) { s.kv_heads = 3; }, "not a valid llama shape");
  refused([](ModelSpec& s) { s.kv_heads = 0; }, "Welcome.model.kv_heads");
  refused([](ModelSpec& s) { s.ffn_hidden = -1; }, "Welcome.model.ffn_hidden");
  refused([](ModelSpec& s) { s.norm_eps = 0; }, "norm_eps out of range");
  refused([](ModelSpec& s) { s.rope_theta = std::nan(""); }, "rope_theta");
}

TEST_CASE("wire: default-constructed bodies round-trip where valid", "[unit]") {
  // Cores build messages field by field; defaults must not trip the sanity
  // checks (bodies with required strings excepted).
  for (Body body : std::vector<Body>{ModelSync{}, Heartbeat{}, CampaignEnd{}, RoundStart{}, DeltaUpload{},
                                     Aggregate{}, EvalReport{}, Error{}, ControlResponse{}}) {
    INFO("body: " << BodyName(body));
    // An empty payload still has a checksum.
    if (auto* x = std::get_if<DeltaUpload>(&body)) x->blob = BlobFor(Bytes{});
    if (auto* x = std::get_if<Aggregate>(&body)) x->blob = BlobFor(Bytes{});
    Message m = Wrap(body);
    auto decoded = DecodeMessage(EncodeMessage(m), WireLimits{});
    REQUIRE(decoded.ok());
    CHECK(SameMessage(*decoded, m));
  }
}

TEST_CASE("wire: FC-RAG text lists round-trip - malformed ones are refused", "[unit]") {
  const std::vector<std::string> texts{"a", "", std::string(300, 'x')};
  const Bytes packed = PackTextList(texts);
  auto back = UnpackTextList(packed, 3);
  REQUIRE(back.ok());
  CHECK(*back == texts);
  CHECK_FALSE(UnpackTextList(packed, 4).ok());  // a count beyond the frame
  CHECK_FALSE(UnpackTextList(packed, 2).ok());  // bytes left over
  Bytes lying = packed;
  lying[0] = 0xff;  // the first length claims more than there is
  CHECK_FALSE(UnpackTextList(lying, 3).ok());
  CHECK(UnpackTextList(Bytes{}, 0).ok());
}

TEST_CASE("wire: BodyName names every kind", "[unit]") {
  std::vector<std::string> names;
  for (const Message& m : AllSamples()) names.push_back(BodyName(m.body));
  CHECK(names == std::vector<std::string>{"hello", "welcome", "model_sync", "heartbeat", "campaign_end",
                                          "round_start", "delta_upload", "aggregate", "eval_report", "error",
                                          "control_request", "control_response", "activation", "logit_upload",
                                          "fcrag_request", "fcrag_reply", "sync_pull", "sync_chunk"});
}

TEST_CASE("wire: random bytes are rejected without crashing", "[unit]") {
  std::mt19937_64 rng(20240611);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<size_t> len(0, 600);
  int rejected = 0;
  for (int i = 0; i < 3000; ++i) {
    Bytes buf(len(rng));
    for (auto& b : buf) b = static_cast<uint8_t>(byte(rng));
    // Half of them carry the right identifier so they reach the Verifier.
    if (i % 2 == 1 && buf.size() >= 8) std::memcpy(buf.data() + 4, "LBND", 4);
    Frames frames{buf};
    if (i % 3 == 0) frames.push_back(MakeBulk(buf.size() % 64, static_cast<uint8_t>(i)));
    Status s = DecodeStatus(frames);
    if (!s.ok()) {
      ++rejected;
      CHECK_FALSE(s.message().empty());
    }
  }
  CHECK(rejected == 3000);
}

TEST_CASE("wire: a truncated header is rejected at every length", "[unit]") {
  for (const Message& m : {SampleWelcome(), SampleDeltaUpload(), SampleControlRequest()}) {
    const Frames full = EncodeMessage(m);
    INFO("body: " << BodyName(m.body) << ", header " << full[0].size() << " bytes");
    for (size_t n = 0; n < full[0].size(); ++n) {
      Frames frames = full;
      frames[0].resize(n);
      auto decoded = DecodeMessage(frames, WireLimits{});
      if (decoded.ok()) {
        // Cutting only the builder's trailing alignment padding leaves a valid
        // buffer; it must then carry exactly the original message.
        INFO("length " << n << " decoded");
        CHECK(SameMessage(*decoded, m));
      } else {
        CHECK_FALSE(decoded.status().message().empty());
      }
    }
  }
}

TEST_CASE("wire: a flipped byte anywhere decodes validly or is rejected", "[unit]") {
  for (const Message& m : AllSamples()) {
    const Frames full = EncodeMessage(m);
    INFO("body: " << BodyName(m.body));
    for (uint8_t mask : {uint8_t{0x01}, uint8_t{0x80}, uint8_t{0xff}}) {
      for (size_t pos = 0; pos < full[0].size(); ++pos) {
        Frames frames = full;
        frames[0].Mutable()[pos] ^= mask;
        auto decoded = DecodeMessage(frames, WireLimits{});
        if (!decoded.ok()) CHECK_FALSE(decoded.status().message().empty());
      }
      if (full.size() == 2) {
        for (size_t pos = 0; pos < full[1].size(); ++pos) {
          Frames frames = full;
          frames[1].Mutable()[pos] ^= mask;
          Status s = DecodeStatus(frames);
          INFO("bulk byte " << pos);
          REQUIRE(s.code() == StatusCode::kCorruption);
          CHECK(Contains(s, "checksum"));
        }
      }
    }
  }
}

TEST_CASE("wire: frame count and size limits", "[unit]") {
  const Frames good = EncodeMessage(SampleDeltaUpload());

  SECTION("no frames") {
    Status s = DecodeStatus(Frames{});
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, "0 frames"));
  }
  SECTION("three frames") {
    Frames frames = good;
    frames.push_back(Bytes{1, 2, 3});
    Status s = DecodeStatus(frames);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, "3 frames"));
  }
  SECTION("oversized header") {
    WireLimits limits;
    limits.max_header_bytes = good[0].size() - 1;
    Status s = DecodeStatus(good, limits);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, "header frame"));
    CHECK(Contains(s, "limit"));
    limits.max_header_bytes = good[0].size();
    CHECK(DecodeStatus(good, limits).ok());
  }
  SECTION("oversized bulk") {
    WireLimits limits;
    limits.max_bulk_bytes = good[1].size() - 1;
    Status s = DecodeStatus(good, limits);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, "bulk frame"));
    limits.max_bulk_bytes = good[1].size();
    CHECK(DecodeStatus(good, limits).ok());
  }
  SECTION("header shorter than the identifier") {
    Status s = DecodeStatus(Frames{Bytes{0, 0, 0}});
    CHECK(s.code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("wire: envelope checks", "[unit]") {
  SECTION("wrong protocol version") {
    Message m = SampleHeartbeat();
    m.protocol_version = kProtocolVersion + 1;
    Status s = DecodeStatus(EncodeMessage(m));
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, "protocol_version"));
    CHECK(Contains(s, "got " + std::to_string(kProtocolVersion + 1)));
    CHECK(Contains(s, "expected " + std::to_string(kProtocolVersion)));
  }
  SECTION("wrong file identifier") {
    Frames frames = EncodeMessage(SampleHeartbeat());
    std::memcpy(frames[0].Mutable().data() + 4, "XBND", 4);
    Status s = DecodeStatus(frames);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, "identifier"));
    CHECK(Contains(s, "XBND"));
  }
  SECTION("hand-built valid envelope decodes (sanity check of the helpers)") {
    Bytes header = HandBuiltEnvelope(kProtocolVersion, kTypeHeartbeat, HeartbeatTable);
    auto decoded = DecodeMessage(Frames{header}, WireLimits{});
    REQUIRE(decoded.ok());
    CHECK(std::get<Heartbeat>(decoded->body).state == "idle");
  }
  SECTION("no body") {
    Bytes header = HandBuiltEnvelope(kProtocolVersion, kTypeNone, [](auto&) { return 0u; });
    Status s = DecodeStatus(Frames{header});
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, "NONE"));
  }
  SECTION("unknown body type") {
    Bytes header = HandBuiltEnvelope(kProtocolVersion, 200, HeartbeatTable);
    Status s = DecodeStatus(Frames{header});
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, "body_type"));
    CHECK(Contains(s, "200"));
  }
  SECTION("body type without a body") {
    Bytes header = HandBuiltEnvelope(kProtocolVersion, kTypeHeartbeat, [](auto&) { return 0u; });
    Status s = DecodeStatus(Frames{header});
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, "body"));
  }
}

TEST_CASE("wire: blob and bulk frame agreement", "[unit]") {
  SECTION("missing bulk frame") {
    for (const Message& m : {SampleDeltaUpload(), SampleAggregate()}) {
      Frames frames = EncodeMessage(m);
      frames.pop_back();
      Status s = DecodeStatus(frames);
      CHECK(s.code() == StatusCode::kInvalidArgument);
      CHECK(Contains(s, "missing its bulk frame"));
    }
  }
  SECTION("blob body with an empty payload still needs its (empty) bulk frame") {
    Aggregate empty;
    empty.blob = BlobFor(Bytes{});
    Message m = Wrap(empty);
    Frames frames = EncodeMessage(m);
    REQUIRE(frames.size() == 2);
    CHECK(frames[1].empty());
    CHECK(DecodeStatus(frames).ok());
    frames.pop_back();
    CHECK_FALSE(DecodeStatus(frames).ok());
  }
  SECTION("extra bulk frame on a body without a blob") {
    Message m = SampleHeartbeat();
    m.bulk = Bytes{1, 2, 3, 4};
    Frames frames = EncodeMessage(m);
    REQUIRE(frames.size() == 2);
    Status s = DecodeStatus(frames);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, "heartbeat"));
    CHECK(Contains(s, "carries no blob"));
  }
  SECTION("byte_length mismatch") {
    Message m = SampleDeltaUpload();
    std::get<DeltaUpload>(m.body).blob.byte_length += 1;
    Status s = DecodeStatus(EncodeMessage(m));
    CHECK(s.code() == StatusCode::kCorruption);
    CHECK(Contains(s, "byte_length"));
  }
  SECTION("bulk frame shorter than byte_length") {
    Frames frames = EncodeMessage(SampleAggregate());
    frames[1].pop_back();
    Status s = DecodeStatus(frames);
    CHECK(s.code() == StatusCode::kCorruption);
    CHECK(Contains(s, "byte_length"));
  }
  SECTION("checksum mismatch") {
    Message m = SampleDeltaUpload();
    std::get<DeltaUpload>(m.body).blob.checksum ^= 1;
    Status s = DecodeStatus(EncodeMessage(m));
    CHECK(s.code() == StatusCode::kCorruption);
    CHECK(Contains(s, "checksum"));
  }
  SECTION("a model sync is an offer: no bulk frame") {
    Frames frames = EncodeMessage(SampleModelSync());
    REQUIRE(frames.size() == 1);
    CHECK(DecodeStatus(frames).ok());
    frames.push_back(MakeBulk(256, 1));
    Status s = DecodeStatus(frames);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, "carries no blob"));
  }
  SECTION("a sync chunk's bulk frame must be its length and hash to its checksum") {
    Frames frames = EncodeMessage(SampleSyncChunk());
    REQUIRE(frames.size() == 2);
    CHECK(DecodeStatus(frames).ok());
    Frames flipped = frames;
    flipped[1].Mutable()[5] ^= 1;
    Status s = DecodeStatus(flipped);
    CHECK(s.code() == StatusCode::kCorruption);
    CHECK(Contains(s, "SyncChunk.checksum"));
    Frames short_frame = frames;
    short_frame[1].pop_back();
    CHECK(DecodeStatus(short_frame).code() == StatusCode::kCorruption);
    Frames none = frames;
    none.pop_back();
    CHECK(DecodeStatus(none).code() == StatusCode::kCorruption);
  }
  SECTION("sync pulls and chunks of no bytes or more than kMaxSyncChunkBytes are refused") {
    for (uint32_t length : {0u, kMaxSyncChunkBytes + 1}) {
      Message pull = Wrap(SyncPull{1, 2, 0, length});
      Status s = DecodeStatus(EncodeMessage(pull));
      CHECK(s.code() == StatusCode::kInvalidArgument);
      CHECK(Contains(s, "SyncPull.length"));
    }
    Message far = Wrap(SyncPull{1, 2, uint64_t{1} << 50, 16});
    CHECK(Contains(DecodeStatus(EncodeMessage(far)), "SyncPull.offset"));
  }
  SECTION("blob header missing") {
    Bytes bulk = MakeBulk(16, 9);
    Bytes header = HandBuiltEnvelope(kProtocolVersion, kTypeModelSync,
                                     [&](auto& fbb) { return ModelSyncTable(fbb, false, 0, bulk); });
    Status s = DecodeStatus(Frames{header});
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, "ModelSync.blob is missing"));
  }
  SECTION("unknown codec value") {
    Bytes bulk = MakeBulk(16, 9);
    Bytes ok_header = HandBuiltEnvelope(kProtocolVersion, kTypeModelSync,
                                        [&](auto& fbb) { return ModelSyncTable(fbb, true, 0, bulk); });
    CHECK(DecodeStatus(Frames{ok_header}).ok());
    Bytes header = HandBuiltEnvelope(kProtocolVersion, kTypeModelSync,
                                     [&](auto& fbb) { return ModelSyncTable(fbb, true, 7, bulk); });
    Status s = DecodeStatus(Frames{header});
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, "ModelSync.blob.codec"));
  }
}

TEST_CASE("wire: required fields and numeric sanity", "[unit]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();

  auto rejects = [](Message m, const std::string& field) {
    Status s = DecodeStatus(EncodeMessage(m));
    INFO(s.ToString());
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(s, field));
  };

  Message hello = SampleHello();
  std::get<Hello>(hello.body).site.clear();
  rejects(hello, "Hello.site");

  Message welcome = SampleWelcome();
  std::get<Welcome>(welcome.body).worker_id.clear();
  rejects(welcome, "Welcome.worker_id");

  welcome = SampleWelcome();
  std::get<Welcome>(welcome.body).model.layers = 0;
  rejects(welcome, "Welcome.model.layers");

  welcome = SampleWelcome();
  std::get<Welcome>(welcome.body).training.inner.lr = nan;
  rejects(welcome, "Welcome.training.inner.lr");

  Message control = SampleControlRequest();
  std::get<ControlRequest>(control.body).command.clear();
  rejects(control, "ControlRequest.command");

  Message delta = SampleDeltaUpload();
  std::get<DeltaUpload>(delta.body).train_loss = nan;
  rejects(delta, "DeltaUpload.train_loss");
  std::get<DeltaUpload>(delta.body).train_loss = inf;
  rejects(delta, "DeltaUpload.train_loss");

  Message eval = SampleEvalReport();
  std::get<EvalReport>(eval.body).val_loss = -inf;
  rejects(eval, "EvalReport.val_loss");

  // ParaBlock fields: block ids in range, layer blocks contiguous from 0.
  Message rs = SampleRoundStart();
  std::get<RoundStart>(rs.body).block = 64;
  rejects(rs, "RoundStart.block is 64");
  std::get<RoundStart>(rs.body).block = -2;
  rejects(rs, "RoundStart.block is -2");
  Message up_block = SampleDeltaUpload();
  std::get<DeltaUpload>(up_block.body).block = 99;
  rejects(up_block, "DeltaUpload.block is 99");
  Message up_wait = SampleDeltaUpload();
  std::get<DeltaUpload>(up_wait.body).wait_ms = -1;
  rejects(up_wait, "DeltaUpload.wait_ms");
  auto layer_blocks = [&](std::vector<int> blocks, const std::string& needle) {
    Message w = SampleWelcome();
    std::get<Welcome>(w.body).layer_blocks = std::move(blocks);
    rejects(w, needle);
  };
  layer_blocks({0, 0, 1}, "Welcome.layer_blocks has 3 entries for 6 layers");
  layer_blocks({1, 1, 1, 2, 2, 2}, "Welcome.layer_blocks[0] is 1");
  layer_blocks({0, 0, 2, 2, 2, 2}, "Welcome.layer_blocks[2] is 2");
  layer_blocks({0, 1, 0, 1, 1, 1}, "Welcome.layer_blocks[2] is 0");
  layer_blocks({0, 0, 0, 0, 0, 0}, "a single block");

  // Pipeline traffic reports: stages, kind and byte counts are checked.
  auto traffic = [](auto mutate) {
    Message m = SampleDeltaUpload();
    mutate(std::get<DeltaUpload>(m.body).peer_traffic[1]);
    return m;
  };
  rejects(traffic([](PeerTraffic& t) { t.to_stage = t.from_stage; }), "DeltaUpload.peer_traffic[1]: stages 0 -> 0");
  rejects(traffic([](PeerTraffic& t) { t.from_stage = 64; }), "DeltaUpload.peer_traffic[1]: stages 64 -> 1");
  rejects(traffic([](PeerTraffic& t) { t.kind = 4; }), "DeltaUpload.peer_traffic[1].kind is 4");
  rejects(traffic([](PeerTraffic& t) { t.tensor_bytes = t.bytes + 1; }), "tensor_bytes exceed bytes");
  Message flood = SampleEvalReport();
  std::get<EvalReport>(flood.body).peer_traffic.assign(257, PeerTraffic{0, 1, PeerTraffic::kEval, 1, 10, 5});
  CHECK_FALSE(DecodeStatus(EncodeMessage(flood)).ok());  // the verifier's table budget or the entry bound

  Message hello_time = SampleHello();
  std::get<Hello>(hello_time.body).step_time_ms = nan;
  rejects(hello_time, "Hello.step_time_ms");

  Message error = SampleError();
  std::get<Error>(error.body).code = static_cast<ErrorCode>(99);
  rejects(error, "Error.code");
  std::get<Error>(error.body).code = static_cast<ErrorCode>(0);
  rejects(error, "Error.code");
  std::get<Error>(error.body).code = static_cast<ErrorCode>(12);
  rejects(error, "Error.code");
  std::get<Error>(error.body).code = ErrorCode::kSiteDown;  // the last code there is
  CHECK(DecodeMessage(EncodeMessage(error), WireLimits{}).ok());

  Message hello_ranks = SampleHello();
  std::get<Hello>(hello_ranks.body).ranks = 70000;
  rejects(hello_ranks, "Hello.ranks");
  std::get<Hello>(hello_ranks.body).ranks = 0;  // an older worker: one rank
  auto one = DecodeMessage(EncodeMessage(hello_ranks), WireLimits{});
  REQUIRE(one.ok());
  CHECK(std::get<Hello>(one->body).ranks == 1);
}

TEST_CASE("wire: strings keep embedded zero bytes and non-ASCII", "[unit]") {
  Message m = SampleControlRequest();
  std::get<ControlRequest>(m.body).args = {std::string("a\0b", 3), "über"};
  auto decoded = DecodeMessage(EncodeMessage(m), WireLimits{});
  REQUIRE(decoded.ok());
  CHECK(std::get<ControlRequest>(decoded->body).args == std::get<ControlRequest>(m.body).args);
}

TEST_CASE("wire: an activation is checked against what its receiver expects", "[unit]") {
  Message m = SampleActivation();
  auto decoded = DecodeMessage(EncodeMessage(m), WireLimits{});
  REQUIRE(decoded.ok());
  const auto& a = std::get<Activation>(decoded->body);
  ActivationExpect want{7, 3, 4, 1, true, 2, 3, 4, WireDtype::kBf16};
  CHECK(CheckActivation(a, decoded->bulk, want).ok());
  // One field of the expectation changed: refused, naming that field.
  auto refused = [&](const std::function<void(ActivationExpect&)>& change, const std::string& needle) {
    ActivationExpect w = want;
    change(w);
    Status st = CheckActivation(a, decoded->bulk, w);
    INFO(st.ToString());
    CHECK(st.code() == StatusCode::kInvalidArgument);
    CHECK(Contains(st, needle));
  };
  refused([](ActivationExpect& w) { w.round = 8; }, "round is 7, expected 8");
  refused([](ActivationExpect& w) { w.step = 0; }, "step is 3");
  refused([](ActivationExpect& w) { w.micro_batches = 2; }, "micro_batch 2 is not below 2");
  refused([](ActivationExpect& w) { w.from_stage = 0; }, "stage is 1");
  refused([](ActivationExpect& w) { w.backward = false; }, "goes backward, expected forward");
  refused([](ActivationExpect& w) { w.width = 8; }, "width is 4, expected 8");
  refused([](ActivationExpect& w) { w.tokens = 4; }, "tokens is 3");
  refused([](ActivationExpect& w) { w.dtype = WireDtype::kFp32; }, "dtype is bf16, expected fp32");
  refused([](ActivationExpect& w) { w.labels = true; }, "carries values, expected labels");
  refused([](ActivationExpect& w) { w.eval = true; }, "a training pass, expected an evaluation pass");
  // The payload: wrong length, and a NaN among the values.
  Bytes short_bulk(decoded->bulk.begin(), decoded->bulk.end() - 2);
  CHECK(Contains(CheckActivation(a, short_bulk, want), "payload bytes is 46, expected 48"));
  Bytes nan = decoded->bulk;
  nan[10] = 0xc1;  // bf16 0x7fc1: NaN (value 5)
  nan[11] = 0x7f;
  CHECK(Contains(CheckActivation(a, nan, want), "value 5 is not finite"));
  // Labels: int32 ids, 4 bytes each, width 1; both flags survive the wire.
  Activation labels = a;
  labels.labels = true;
  labels.eval = true;
  labels.backward = false;
  labels.width = 1;
  labels.blob.num_elements = 6;
  const Bytes ids(24, 0);
  labels.blob.byte_length = ids.size();
  labels.blob.checksum = BulkChecksum(ids.data(), ids.size());
  Message ml = Wrap(labels, ids);
  auto dl = DecodeMessage(EncodeMessage(ml), WireLimits{});
  REQUIRE(dl.ok());
  const auto& got = std::get<Activation>(dl->body);
  CHECK(got.labels);
  CHECK(got.eval);
  ActivationExpect wl{7, 3, 4, 1, false, 2, 3, 1, WireDtype::kFp32, true, true};
  CHECK(CheckActivation(got, dl->bulk, wl).ok());
  CHECK(Contains(CheckActivation(got, Bytes(12, 0), wl), "payload bytes is 12, expected 24"));
  // Narrow ids for small vocabularies: one byte each up to 256 ids.
  CHECK(LabelBytes(256) == 1);
  CHECK(LabelBytes(257) == 2);
  CHECK(LabelBytes(32768) == 2);
  CHECK(LabelBytes(50257) == 4);
  wl.label_bytes = 1;
  CHECK(Contains(CheckActivation(got, dl->bulk, wl), "payload bytes is 24, expected 6"));
  CHECK(CheckActivation(got, Bytes(6, 0), wl).ok());
  // An unknown dtype does not decode at all.
  Activation bad = a;
  bad.dtype = static_cast<WireDtype>(7);
  Message mb = Wrap(bad);
  mb.bulk = decoded->bulk;
  CHECK(Contains(DecodeMessage(EncodeMessage(mb), WireLimits{}).status(), "Activation.dtype has unknown value 7"));
}

}  // namespace
}  // namespace lowband

namespace lowband {
namespace {

TEST_CASE("wire: a pipeline welcome carries the stage slot and its neighbours", "[unit]") {
  Message m = SampleWelcome();
  Welcome& w = std::get<Welcome>(m.body);
  w.model.layers = 4;
  w.layer_blocks.clear();  // no block rounds in a pipeline
  w.model.d_model = 128;
  w.training.batch_size = 16;
  w.pipeline.stages = 2;
  w.pipeline.replicas = 1;
  w.pipeline.ratio = 128;
  w.pipeline.split = {1, 3};
  w.pipeline.micro_batches = 4;
  w.pipeline.schedule = "gpipe";
  w.pipeline.link_mbit = 80;
  w.stage = 1;
  w.stage_endpoints = {"tcp://127.0.0.1:5601", "tcp://127.0.0.1:5602"};
  auto d = DecodeMessage(EncodeMessage(m), WireLimits{});
  INFO(d.status().ToString());
  REQUIRE(d.ok());
  const Welcome& got = std::get<Welcome>(d->body);
  CHECK(got.pipeline.stages == 2);
  CHECK(got.pipeline.ratio == 128);
  CHECK(got.pipeline.split == std::vector<int>{1, 3});
  CHECK(got.pipeline.schedule == "gpipe");
  CHECK(got.pipeline.link_mbit == 80);
  CHECK(got.stage == 1);
  CHECK(got.stage_endpoints == w.stage_endpoints);
  // Inconsistent settings are refused by name.
  auto refused = [&](Welcome changed, const std::string& needle) {
    Message c = m;
    c.body = changed;
    auto r = DecodeMessage(EncodeMessage(c), WireLimits{});
    CHECK(Contains(r.status(), needle));
  };
  Welcome bad = w;
  bad.pipeline.ratio = 3;
  refused(bad, "Welcome.pipeline.ratio 3 does not divide d_model 128");
  bad = w;
  bad.stage = 2;
  refused(bad, "Welcome slot (stage 2, replica 0) is outside the pipeline");
  bad = w;
  bad.stage_endpoints = {"tcp://127.0.0.1:5601"};
  refused(bad, "Welcome.stage_endpoints needs one endpoint per stage");
  bad = w;
  bad.pipeline.split = {2, 3};
  refused(bad, "Welcome.pipeline.split does not give 2 stages summing to 4 blocks");
  // A hello's peer endpoint survives the wire.
  Message h = SampleHello();
  std::get<Hello>(h.body).peer_endpoint = "tcp://127.0.0.1:5601";
  auto dh = DecodeMessage(EncodeMessage(h), WireLimits{});
  REQUIRE(dh.ok());
  CHECK(std::get<Hello>(dh->body).peer_endpoint == "tcp://127.0.0.1:5601");
}

}  // namespace
}  // namespace lowband
