#include "protocol/wire.h"

#include "base/log.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include <flatbuffers/flatbuffers.h>

#include "base/hash.h"
#include "schemas/envelope_generated.h"

namespace lowband {

namespace fb = flatbuffers;

const char* ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kMalformed: return "malformed";
    case ErrorCode::kWrongVersion: return "wrong_version";
    case ErrorCode::kWrongCampaign: return "wrong_campaign";
    case ErrorCode::kNotRegistered: return "not_registered";
    case ErrorCode::kWrongRound: return "wrong_round";
    case ErrorCode::kDuplicate: return "duplicate";
    case ErrorCode::kBadPayload: return "bad_payload";
    case ErrorCode::kDigestMismatch: return "digest_mismatch";
    case ErrorCode::kUnexpected: return "unexpected";
    case ErrorCode::kInternal: return "internal";
    case ErrorCode::kSiteDown: return "site_down";
  }
  return "unknown";
}

const char* PeerTrafficKindName(uint8_t kind) {
  switch (kind) {
    case PeerTraffic::kForward: return "forward";
    case PeerTraffic::kBackward: return "backward";
    case PeerTraffic::kLabels: return "labels";
    case PeerTraffic::kEval: return "eval";
    default: return "unknown";
  }
}

const char* FcragKindName(FcragKind kind) {
  switch (kind) {
    case FcragKind::kQueries: return "queries";
    case FcragKind::kScore: return "score";
    case FcragKind::kCalibrate: return "calibrate";
    case FcragKind::kTest: return "test";
  }
  return "unknown";
}

Bytes PackTextList(const std::vector<std::string>& texts) {
  Bytes out;
  for (const std::string& t : texts) {
    const uint32_t n = static_cast<uint32_t>(t.size());
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));
    out.insert(out.end(), t.begin(), t.end());
  }
  return out;
}

StatusOr<std::vector<std::string>> UnpackTextList(const Bytes& bulk, uint32_t count) {
  std::vector<std::string> texts;
  size_t at = 0;
  for (uint32_t i = 0; i < count; ++i) {
    if (bulk.size() - at < 4) return InvalidArgument("text list: entry " + std::to_string(i) + " of " + std::to_string(count) + " is cut short");
    uint32_t n = 0;
    for (int b = 0; b < 4; ++b) n |= static_cast<uint32_t>(bulk[at + b]) << (8 * b);
    at += 4;
    if (n > bulk.size() - at) return InvalidArgument("text list: entry " + std::to_string(i) + " claims " + std::to_string(n) + " bytes, " + std::to_string(bulk.size() - at) + " left");
    texts.emplace_back(reinterpret_cast<const char*>(bulk.data() + at), n);
    at += n;
  }
  if (at != bulk.size()) return InvalidArgument("text list: " + std::to_string(bulk.size() - at) + " bytes after the last of " + std::to_string(count) + " texts");
  return texts;
}

const char* BodyName(const Body& body) {
  struct Namer {
    const char* operator()(const Hello&) const { return "hello"; }
    const char* operator()(const Welcome&) const { return "welcome"; }
    const char* operator()(const ModelSync&) const { return "model_sync"; }
    const char* operator()(const Heartbeat&) const { return "heartbeat"; }
    const char* operator()(const CampaignEnd&) const { return "campaign_end"; }
    const char* operator()(const RoundStart&) const { return "round_start"; }
    const char* operator()(const DeltaUpload&) const { return "delta_upload"; }
    const char* operator()(const LogitUpload&) const { return "logit_upload"; }
    const char* operator()(const FcragRequest&) const { return "fcrag_request"; }
    const char* operator()(const FcragReply&) const { return "fcrag_reply"; }
    const char* operator()(const Aggregate&) const { return "aggregate"; }
    const char* operator()(const EvalReport&) const { return "eval_report"; }
    const char* operator()(const Activation&) const { return "activation"; }
    const char* operator()(const Error&) const { return "error"; }
    const char* operator()(const ControlRequest&) const { return "control_request"; }
    const char* operator()(const ControlResponse&) const { return "control_response"; }
    const char* operator()(const SyncPull&) const { return "sync_pull"; }
    const char* operator()(const SyncChunk&) const { return "sync_chunk"; }
  };
  return std::visit(Namer{}, body);
}

namespace {

// Bounds for the Verifier: the deepest legal path is
// Envelope -> Welcome -> TrainingSpec -> InnerOptimizerSpec (4 tables), and a
// message holds at most 6 tables. Generous margins, but a crafted buffer
// cannot make verification walk more than this.
constexpr fb::uoffset_t kMaxVerifierDepth = 16;
constexpr fb::uoffset_t kMaxVerifierTables = 64;
// The Verifier asserts on buffers of 2 GiB or more; never hand it one.
constexpr size_t kAbsoluteMaxHeaderBytes = FLATBUFFERS_MAX_BUFFER_SIZE - 1;
// Identifier (4 bytes) after the root offset (4 bytes).
constexpr size_t kMinHeaderBytes = 8;

// ---------------------------------------------------------------- encoding

wire::Codec CodecToWire(CodecKind kind) {
  switch (kind) {
    case CodecKind::kDenseFp32: return wire::Codec::DenseFp32;
    case CodecKind::kDenseBf16: return wire::Codec::DenseBf16;
    case CodecKind::kInt8: return wire::Codec::Int8;
    case CodecKind::kSparseLoCo: return wire::Codec::SparseLoCo;
    case CodecKind::kSparseFp32: return wire::Codec::SparseFp32;
    case CodecKind::kSparse2Bit: return wire::Codec::Sparse2Bit;
  }
  return wire::Codec::DenseFp32;  // unreachable for valid enum values
}

fb::Offset<wire::BlobHeader> EncodeBlob(fb::FlatBufferBuilder& fbb, const BlobHeader& b) {
  return wire::CreateBlobHeader(fbb, CodecToWire(b.codec), b.num_elements, b.layout_digest,
                                b.byte_length, b.checksum, b.topk);
}

struct EncodedBody {
  wire::Body type;
  fb::Offset<void> offset;
};

// Builds the body table; strings are created before the table that
// references them, as FlatBuffers requires.
class BodyEncoder {
 public:
  explicit BodyEncoder(fb::FlatBufferBuilder* fbb) : fbb_(*fbb) {}

  EncodedBody operator()(const Hello& m) {
    auto site = fbb_.CreateString(m.site);
    auto device = fbb_.CreateString(m.device);
    auto peer = m.peer_endpoint.empty() ? 0 : fbb_.CreateString(m.peer_endpoint);
    flatbuffers::Offset<wire::ModelSpec> own = 0;
    if (m.own_model.layers > 0) {
      own = wire::CreateModelSpec(fbb_, m.own_model.layers, m.own_model.d_model, m.own_model.heads,
                                  m.own_model.context, m.own_model.vocab);
    }
    return {wire::Body::Hello, wire::CreateHello(fbb_, site, device, m.free_memory_bytes, m.step_time_ms,
                                                 m.train_tokens, m.val_tokens, peer, own, m.ranks, m.held_round,
                                                 m.held_digest)
                                   .Union()};
  }

  EncodedBody operator()(const Welcome& m) {
    auto worker_id = fbb_.CreateString(m.worker_id);
    const ModelSpec& ms = m.model;
    auto model = wire::CreateModelSpec(fbb_, ms.layers, ms.d_model, ms.heads, ms.context, ms.vocab,
                                       static_cast<uint8_t>(ms.arch), ms.kv_heads, ms.ffn_hidden, ms.rope_theta,
                                       ms.norm_eps);
    const InnerOptimizerSpec& in = m.training.inner;
    auto inner = wire::CreateInnerOptimizerSpec(fbb_, in.lr, in.beta1, in.beta2, in.eps,
                                                in.weight_decay, in.grad_clip, in.warmup_steps);
    const TrainingSpec& t = m.training;
    auto training = wire::CreateTrainingSpec(fbb_, t.rounds, t.inner_steps, t.batch_size,
                                             t.eval_batches, t.seed, inner, CodecToWire(m.codec.kind),
                                             static_cast<uint32_t>(m.codec.topk), m.codec.error_feedback,
                                             t.overlap, static_cast<uint8_t>(t.precision), t.eval_every);
    flatbuffers::Offset<wire::PipelineSpec> pipeline = 0;
    flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>> endpoints = 0;
    if (m.pipeline.stages > 1) {
      const PipelineSpec& p = m.pipeline;
      auto split = fbb_.CreateVector(p.split);
      auto schedule = fbb_.CreateString(p.schedule);
      pipeline = wire::CreatePipelineSpec(fbb_, p.stages, p.replicas, p.ratio, static_cast<uint8_t>(p.wire_dtype), split,
                                          p.micro_batches, schedule, p.link_mbit, p.peer_timeout_ms);
      endpoints = fbb_.CreateVectorOfStrings(m.stage_endpoints);
    }
    flatbuffers::Offset<wire::FpldSpec> fpld = 0;
    if (m.fpld.enabled) {
      const FpldWelcome& f = m.fpld;
      auto probes = fbb_.CreateVector(f.probe_tokens);
      fpld = wire::CreateFpldSpec(fbb_, f.bits, f.clip, f.topk, f.positions, f.contexts, f.exact_reference, probes);
    }
    flatbuffers::Offset<wire::FcragSpec> fcrag = 0;
    if (m.fcrag.enabled) {
      const FcragWelcome& f = m.fcrag;
      auto labels = fbb_.CreateVectorOfStrings(f.labels);
      fcrag = wire::CreateFcragSpec(fbb_, labels, f.retrieve_k, f.smoothing, f.min_chars, f.max_chars);
    }
    return {wire::Body::Welcome,
            wire::CreateWelcome(fbb_, worker_id, model, training, m.data_seed, m.worker_index,
                                m.heartbeat_interval_ms, m.heartbeat_timeout_ms, pipeline, m.stage, m.replica,
                                endpoints, m.pipeline_epoch,
                                m.layer_blocks.empty() ? 0 : fbb_.CreateVector(m.layer_blocks), fpld, fcrag)
                .Union()};
  }

  EncodedBody operator()(const ModelSync& m) {
    auto blob = EncodeBlob(fbb_, m.blob);
    return {wire::Body::ModelSync, wire::CreateModelSync(fbb_, m.round, m.digest, blob).Union()};
  }

  EncodedBody operator()(const SyncPull& m) {
    return {wire::Body::SyncPull, wire::CreateSyncPull(fbb_, m.round, m.digest, m.offset, m.length).Union()};
  }

  EncodedBody operator()(const SyncChunk& m) {
    return {wire::Body::SyncChunk,
            wire::CreateSyncChunk(fbb_, m.round, m.digest, m.offset, m.length, m.checksum).Union()};
  }

  EncodedBody operator()(const Heartbeat& m) {
    auto state = fbb_.CreateString(m.state);
    return {wire::Body::Heartbeat, wire::CreateHeartbeat(fbb_, m.round, state).Union()};
  }

  EncodedBody operator()(const CampaignEnd& m) {
    auto reason = fbb_.CreateString(m.reason);
    return {wire::Body::CampaignEnd, wire::CreateCampaignEnd(fbb_, reason, m.final_round).Union()};
  }

  EncodedBody operator()(const RoundStart& m) {
    return {wire::Body::RoundStart,
            wire::CreateRoundStart(fbb_, m.round, m.model_version, m.inner_steps, m.deadline_ms, m.block)
                .Union()};
  }

  EncodedBody operator()(const DeltaUpload& m) {
    auto blob = EncodeBlob(fbb_, m.blob);
    auto traffic = EncodeTraffic(m.peer_traffic);
    return {wire::Body::DeltaUpload,
            wire::CreateDeltaUpload(fbb_, m.round, m.base_digest, m.train_loss, m.tokens,
                                    m.step_time_ms, blob, traffic, m.block, m.wait_ms, m.cycle_ms)
                .Union()};
  }

  EncodedBody operator()(const FcragRequest& m) {
    auto blob = EncodeBlob(fbb_, m.blob);
    return {wire::Body::FcragRequest,
            wire::CreateFcragRequest(fbb_, m.id, static_cast<uint8_t>(m.kind), m.bits, m.seed, m.score_max, m.count,
                                     m.calibration_fraction, m.qq_k, m.threshold, m.threshold_qq, blob)
                .Union()};
  }

  EncodedBody operator()(const FcragReply& m) {
    auto blob = EncodeBlob(fbb_, m.blob);
    return {wire::Body::FcragReply,
            wire::CreateFcragReply(fbb_, m.id, static_cast<uint8_t>(m.kind), m.count, m.covered, m.set_size,
                                   m.covered_qq, m.set_size_qq, m.local_qq, blob)
                .Union()};
  }

  EncodedBody operator()(const LogitUpload& m) {
    auto blob = EncodeBlob(fbb_, m.blob);
    return {wire::Body::LogitUpload,
            wire::CreateLogitUpload(fbb_, m.round, m.train_loss, m.tokens, m.step_time_ms, m.rows, m.vocab, m.bits,
                                    m.clip, m.topk, m.exact_bytes, blob, m.wait_ms, m.cycle_ms)
                .Union()};
  }

  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::PeerTraffic>>> EncodeTraffic(
      const std::vector<PeerTraffic>& traffic) {
    if (traffic.empty()) return 0;
    std::vector<flatbuffers::Offset<wire::PeerTraffic>> v;
    v.reserve(traffic.size());
    for (const PeerTraffic& p : traffic) {
      v.push_back(wire::CreatePeerTraffic(fbb_, p.from_stage, p.to_stage, p.kind, p.messages, p.bytes, p.tensor_bytes));
    }
    return fbb_.CreateVector(v);
  }

  EncodedBody operator()(const Aggregate& m) {
    auto blob = EncodeBlob(fbb_, m.blob);
    return {wire::Body::Aggregate,
            wire::CreateAggregate(fbb_, m.round, m.digest, m.contributors, blob).Union()};
  }

  EncodedBody operator()(const Activation& m) {
    auto blob = EncodeBlob(fbb_, m.blob);
    return {wire::Body::Activation,
            wire::CreateActivation(fbb_, m.round, m.step, m.micro_batch, m.stage, m.backward, m.batch, m.tokens,
                                   m.width, static_cast<wire::WireDtype>(m.dtype), blob, m.labels, m.eval)
                .Union()};
  }

  EncodedBody operator()(const EvalReport& m) {
    auto traffic = EncodeTraffic(m.peer_traffic);
    return {wire::Body::EvalReport,
            wire::CreateEvalReport(fbb_, m.round, m.val_loss, m.val_tokens, m.digest, traffic,
                                   m.rank_digests.empty() ? 0 : fbb_.CreateVector(m.rank_digests))
                .Union()};
  }

  EncodedBody operator()(const Error& m) {
    auto message = fbb_.CreateString(m.message);
    return {wire::Body::Error,
            wire::CreateError(fbb_, static_cast<int32_t>(m.code), message, m.round).Union()};
  }

  EncodedBody operator()(const ControlRequest& m) {
    auto command = fbb_.CreateString(m.command);
    std::vector<fb::Offset<fb::String>> args;
    args.reserve(m.args.size());
    for (const auto& a : m.args) args.push_back(fbb_.CreateString(a));
    auto args_vec = fbb_.CreateVector(args);
    return {wire::Body::ControlRequest, wire::CreateControlRequest(fbb_, command, args_vec).Union()};
  }

  EncodedBody operator()(const ControlResponse& m) {
    auto message = fbb_.CreateString(m.message);
    auto json = fbb_.CreateString(m.json);
    return {wire::Body::ControlResponse,
            wire::CreateControlResponse(fbb_, m.ok, message, json).Union()};
  }

 private:
  fb::FlatBufferBuilder& fbb_;
};

bool CarriesBlob(const Body& body) {
  return std::holds_alternative<DeltaUpload>(body) ||
         std::holds_alternative<Aggregate>(body) || std::holds_alternative<Activation>(body) ||
         std::holds_alternative<LogitUpload>(body) || std::holds_alternative<FcragRequest>(body) ||
         std::holds_alternative<FcragReply>(body);
}

const BlobHeader* BlobOf(const Body& body) {
  if (const auto* m = std::get_if<DeltaUpload>(&body)) return &m->blob;
  if (const auto* m = std::get_if<Aggregate>(&body)) return &m->blob;
  if (const auto* m = std::get_if<Activation>(&body)) return &m->blob;
  if (const auto* m = std::get_if<LogitUpload>(&body)) return &m->blob;
  if (const auto* m = std::get_if<FcragRequest>(&body)) return &m->blob;
  if (const auto* m = std::get_if<FcragReply>(&body)) return &m->blob;
  return nullptr;
}

Bytes EncodeHeader(const Message& msg) {
  fb::FlatBufferBuilder fbb(256);
  auto campaign_id = fbb.CreateString(msg.campaign_id);
  auto sender_id = fbb.CreateString(msg.sender_id);
  EncodedBody body = std::visit(BodyEncoder(&fbb), msg.body);
  auto root = wire::CreateEnvelope(fbb, msg.protocol_version, campaign_id, sender_id, msg.seq,
                                   body.type, body.offset);
  wire::FinishEnvelopeBuffer(fbb, root);
  return Bytes(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
}

// ---------------------------------------------------------------- decoding

std::string StrOrEmpty(const fb::String* s) {
  return s == nullptr ? std::string() : s->str();
}

Status RequireString(const fb::String* s, const char* field) {
  if (s == nullptr) return InvalidArgument(std::string(field) + " is missing");
  if (s->size() == 0) return InvalidArgument(std::string(field) + " is empty");
  return Status::Ok();
}

Status RequireFinite(double v, const char* field) {
  if (!std::isfinite(v)) return InvalidArgument(std::string(field) + " is not finite");
  return Status::Ok();
}

Status RequireFiniteNonNegative(double v, const char* field) {
  LOWBAND_RETURN_IF_ERROR(RequireFinite(v, field));
  if (v < 0) return InvalidArgument(std::string(field) + " is negative (" + std::to_string(v) + ")");
  return Status::Ok();
}

Status RequirePositive(int32_t v, const char* field) {
  if (v <= 0) return InvalidArgument(std::string(field) + " must be positive, got " + std::to_string(v));
  return Status::Ok();
}

Status RequireNonNegative(int32_t v, const char* field) {
  if (v < 0) return InvalidArgument(std::string(field) + " is negative (" + std::to_string(v) + ")");
  return Status::Ok();
}

Status CodecFromWire(wire::Codec codec, const char* field, CodecKind* out) {
  switch (codec) {
    case wire::Codec::DenseFp32: *out = CodecKind::kDenseFp32; return Status::Ok();
    case wire::Codec::DenseBf16: *out = CodecKind::kDenseBf16; return Status::Ok();
    case wire::Codec::Int8: *out = CodecKind::kInt8; return Status::Ok();
    case wire::Codec::SparseLoCo: *out = CodecKind::kSparseLoCo; return Status::Ok();
    case wire::Codec::SparseFp32: *out = CodecKind::kSparseFp32; return Status::Ok();
    case wire::Codec::Sparse2Bit:
      *out = CodecKind::kSparse2Bit;
      return Status::Ok();
  }
  return InvalidArgument(std::string(field) + " has unknown codec value " +
                         std::to_string(static_cast<unsigned>(codec)));
}

Status DecodeBlob(const wire::BlobHeader* b, const char* field, BlobHeader* out) {
  if (b == nullptr) return InvalidArgument(std::string(field) + " is missing");
  std::string codec_field = std::string(field) + ".codec";
  LOWBAND_RETURN_IF_ERROR(CodecFromWire(b->codec(), codec_field.c_str(), &out->codec));
  out->num_elements = b->num_elements();
  out->layout_digest = b->layout_digest();
  out->byte_length = b->byte_length();
  out->checksum = b->checksum();
  out->topk = b->topk();
  return Status::Ok();
}

Status DecodeHello(const wire::Hello& t, Hello* m) {
  LOWBAND_RETURN_IF_ERROR(RequireString(t.site(), "Hello.site"));
  LOWBAND_RETURN_IF_ERROR(RequireFiniteNonNegative(t.step_time_ms(), "Hello.step_time_ms"));
  m->site = t.site()->str();
  m->device = StrOrEmpty(t.device());
  m->free_memory_bytes = t.free_memory_bytes();
  m->step_time_ms = t.step_time_ms();
  m->train_tokens = t.train_tokens();
  m->val_tokens = t.val_tokens();
  m->peer_endpoint = StrOrEmpty(t.peer_endpoint());
  if (t.ranks() > 65536) return InvalidArgument("Hello.ranks is " + std::to_string(t.ranks()) + " (at most 65536)");
  m->ranks = std::max<uint32_t>(1, t.ranks());
  m->held_round = t.held_round();
  m->held_digest = t.held_digest();
  if (m->peer_endpoint.size() > 1024) return InvalidArgument("Hello.peer_endpoint is longer than 1024 bytes");
  if (const wire::ModelSpec* own = t.own_model()) {
    LOWBAND_RETURN_IF_ERROR(RequirePositive(own->layers(), "Hello.own_model.layers"));
    LOWBAND_RETURN_IF_ERROR(RequirePositive(own->d_model(), "Hello.own_model.d_model"));
    LOWBAND_RETURN_IF_ERROR(RequirePositive(own->heads(), "Hello.own_model.heads"));
    if (own->layers() > 1024 || own->d_model() > 65536 || own->d_model() % own->heads() != 0) {
      return InvalidArgument("Hello.own_model is not a valid architecture (layers <= 1024, d_model <= 65536, "
                             "d_model a multiple of heads)");
    }
    m->own_model = ModelSpecShape(own->layers(), own->d_model(), own->heads(), own->context(), own->vocab());
  }
  return Status::Ok();
}

// Welcome.pipeline and the slot: absent means a data-parallel campaign.
// Checked as the worker will use them (it builds its stage from these).
Status DecodePipeline(const wire::Welcome& t, Welcome* m) {
  const wire::PipelineSpec* p = t.pipeline();
  if (p == nullptr) return Status::Ok();
  auto bad = [](const std::string& what) { return InvalidArgument("Welcome.pipeline." + what); };
  PipelineSpec& pc = m->pipeline;
  if (p->stages() < 2 || p->stages() > 64) return bad("stages is " + std::to_string(p->stages()) + " (allowed: 2 to 64)");
  if (p->replicas() < 1 || p->replicas() > 64) return bad("replicas is " + std::to_string(p->replicas()) + " (allowed: 1 to 64)");
  if (p->ratio() < 1 || m->model.d_model % p->ratio() != 0) {
    return bad("ratio " + std::to_string(p->ratio()) + " does not divide d_model " + std::to_string(m->model.d_model));
  }
  if (p->wire_dtype() > static_cast<uint8_t>(WireDtype::kFp16)) return bad("wire_dtype has unknown value " + std::to_string(p->wire_dtype()));
  if (p->micro_batches() < 1 || m->training.batch_size % p->micro_batches() != 0) {
    return bad("micro_batches " + std::to_string(p->micro_batches()) + " does not divide batch_size " +
               std::to_string(m->training.batch_size));
  }
  const std::string schedule = StrOrEmpty(p->schedule());
  if (schedule != "gpipe" && schedule != "1f1b") return bad("schedule is '" + schedule + "' (allowed: gpipe, 1f1b)");
  if (!(p->link_mbit() >= 0 && p->link_mbit() <= 1e6)) return bad("link_mbit is out of range");
  if (p->peer_timeout_ms() < 1) return bad("peer_timeout_ms must be positive");
  pc.split.clear();
  if (p->split() != nullptr) {
    int64_t total = 0;
    for (int v : *p->split()) {
      if (v < 0) return bad("split has a negative entry");
      total += v;
      pc.split.push_back(v);
    }
    if (!pc.split.empty() && (static_cast<int>(pc.split.size()) != p->stages() || total != m->model.layers)) {
      return bad("split does not give " + std::to_string(p->stages()) + " stages summing to " +
                 std::to_string(m->model.layers) + " blocks");
    }
  }
  if (t.stage() < 0 || t.stage() >= p->stages() || t.replica() < 0 || t.replica() >= p->replicas()) {
    return InvalidArgument("Welcome slot (stage " + std::to_string(t.stage()) + ", replica " +
                           std::to_string(t.replica()) + ") is outside the pipeline");
  }
  if (t.stage_endpoints() == nullptr || static_cast<int>(t.stage_endpoints()->size()) != p->stages()) {
    return InvalidArgument("Welcome.stage_endpoints needs one endpoint per stage");
  }
  m->stage_endpoints.clear();
  for (const auto* e : *t.stage_endpoints()) {
    if (e == nullptr || e->size() == 0 || e->size() > 1024) return InvalidArgument("Welcome.stage_endpoints has an empty or oversized entry");
    m->stage_endpoints.push_back(e->str());
  }
  pc.stages = p->stages();
  pc.replicas = p->replicas();
  pc.ratio = p->ratio();
  pc.wire_dtype = static_cast<WireDtype>(p->wire_dtype());
  pc.micro_batches = p->micro_batches();
  pc.schedule = schedule;
  pc.link_mbit = p->link_mbit();
  pc.peer_timeout_ms = p->peer_timeout_ms();
  m->stage = t.stage();
  m->replica = t.replica();
  m->pipeline_epoch = t.pipeline_epoch();
  if (m->pipeline_epoch >= 4096) return InvalidArgument("Welcome.pipeline_epoch is " + std::to_string(m->pipeline_epoch) + " (allowed: below 4096)");
  return Status::Ok();
}

Status DecodeWelcome(const wire::Welcome& t, Welcome* m) {
  LOWBAND_RETURN_IF_ERROR(RequireString(t.worker_id(), "Welcome.worker_id"));
  const wire::ModelSpec* model = t.model();
  if (model == nullptr) return InvalidArgument("Welcome.model is missing");
  const wire::TrainingSpec* training = t.training();
  if (training == nullptr) return InvalidArgument("Welcome.training is missing");
  const wire::InnerOptimizerSpec* inner = training->inner();
  if (inner == nullptr) return InvalidArgument("Welcome.training.inner is missing");

  LOWBAND_RETURN_IF_ERROR(RequirePositive(model->layers(), "Welcome.model.layers"));
  LOWBAND_RETURN_IF_ERROR(RequirePositive(model->d_model(), "Welcome.model.d_model"));
  LOWBAND_RETURN_IF_ERROR(RequirePositive(model->heads(), "Welcome.model.heads"));
  LOWBAND_RETURN_IF_ERROR(RequirePositive(model->context(), "Welcome.model.context"));
  LOWBAND_RETURN_IF_ERROR(RequirePositive(model->vocab(), "Welcome.model.vocab"));
  if (model->arch() > static_cast<uint8_t>(ModelArch::kLlama)) {
    return InvalidArgument("Welcome.model.arch has unknown value " + std::to_string(model->arch()));
  }
  if (model->arch() == static_cast<uint8_t>(ModelArch::kLlama)) {
    LOWBAND_RETURN_IF_ERROR(RequirePositive(model->kv_heads(), "Welcome.model.kv_heads"));
    LOWBAND_RETURN_IF_ERROR(RequirePositive(model->ffn_hidden(), "Welcome.model.ffn_hidden"));
    if (model->heads() % model->kv_heads() != 0 || model->d_model() % model->heads() != 0 ||
        (model->d_model() / model->heads()) % 2 != 0) {
      return InvalidArgument("Welcome.model is not a valid llama shape (d_model a multiple of heads with an even "
                             "head size, kv_heads a divisor of heads)");
    }
    if (!(model->rope_theta() >= 1 && model->rope_theta() <= 1e9) ||
        !(model->norm_eps() > 0 && model->norm_eps() <= 0.1)) {
      return InvalidArgument("Welcome.model.rope_theta or norm_eps out of range (1 to 1e9; 0 < eps <= 0.1)");
    }
  }
  LOWBAND_RETURN_IF_ERROR(RequireNonNegative(training->rounds(), "Welcome.training.rounds"));
  LOWBAND_RETURN_IF_ERROR(RequireNonNegative(training->inner_steps(), "Welcome.training.inner_steps"));
  LOWBAND_RETURN_IF_ERROR(RequireNonNegative(training->batch_size(), "Welcome.training.batch_size"));
  LOWBAND_RETURN_IF_ERROR(RequireNonNegative(training->eval_batches(), "Welcome.training.eval_batches"));
  LOWBAND_RETURN_IF_ERROR(RequireNonNegative(training->eval_every(), "Welcome.training.eval_every"));
  if (training->precision() > static_cast<uint8_t>(Precision::kBf16)) {
    return InvalidArgument("Welcome.training.precision has unknown value " + std::to_string(training->precision()));
  }
  LOWBAND_RETURN_IF_ERROR(RequireFiniteNonNegative(inner->lr(), "Welcome.training.inner.lr"));
  LOWBAND_RETURN_IF_ERROR(RequireFinite(inner->beta1(), "Welcome.training.inner.beta1"));
  LOWBAND_RETURN_IF_ERROR(RequireFinite(inner->beta2(), "Welcome.training.inner.beta2"));
  LOWBAND_RETURN_IF_ERROR(RequireFiniteNonNegative(inner->eps(), "Welcome.training.inner.eps"));
  LOWBAND_RETURN_IF_ERROR(
      RequireFiniteNonNegative(inner->weight_decay(), "Welcome.training.inner.weight_decay"));
  LOWBAND_RETURN_IF_ERROR(RequireFiniteNonNegative(inner->grad_clip(), "Welcome.training.inner.grad_clip"));
  LOWBAND_RETURN_IF_ERROR(RequireNonNegative(inner->warmup_steps(), "Welcome.training.inner.warmup_steps"));
  LOWBAND_RETURN_IF_ERROR(RequireNonNegative(t.worker_index(), "Welcome.worker_index"));
  LOWBAND_RETURN_IF_ERROR(CodecFromWire(training->codec(), "Welcome.training.codec", &m->codec.kind));
  if (m->codec.kind == CodecKind::kSparseFp32 || m->codec.kind == CodecKind::kSparse2Bit) {
    return InvalidArgument(std::string("Welcome.training.codec ") + CodecName(m->codec.kind) +
                           " is a downlink format, not an upload codec");
  }
  if (m->codec.kind == CodecKind::kSparseLoCo && (training->codec_topk() < 1 || training->codec_topk() > 4096)) {
    return InvalidArgument("Welcome.training.codec_topk is " + std::to_string(training->codec_topk()) +
                           " (allowed: 1 to 4096)");
  }
  if (!(training->error_feedback() >= 0.0 && training->error_feedback() < 1.0)) {
    return InvalidArgument("Welcome.training.error_feedback is " + std::to_string(training->error_feedback()) +
                           " (allowed: 0 <= beta < 1)");
  }
  m->codec.topk = static_cast<int>(training->codec_topk());
  m->codec.error_feedback = training->error_feedback();

  m->worker_id = t.worker_id()->str();
  m->model.layers = model->layers();
  m->model.d_model = model->d_model();
  m->model.heads = model->heads();
  m->model.context = model->context();
  m->model.vocab = model->vocab();
  m->model.arch = static_cast<ModelArch>(model->arch());
  m->model.kv_heads = model->kv_heads();
  m->model.ffn_hidden = model->ffn_hidden();
  m->model.rope_theta = model->rope_theta();
  m->model.norm_eps = model->norm_eps();
  m->training.rounds = training->rounds();
  m->training.inner_steps = training->inner_steps();
  m->training.batch_size = training->batch_size();
  m->training.eval_batches = training->eval_batches();
  m->training.seed = training->seed();
  m->training.inner.lr = inner->lr();
  m->training.inner.beta1 = inner->beta1();
  m->training.inner.beta2 = inner->beta2();
  m->training.inner.eps = inner->eps();
  m->training.inner.weight_decay = inner->weight_decay();
  m->training.inner.grad_clip = inner->grad_clip();
  m->training.inner.warmup_steps = inner->warmup_steps();
  m->training.overlap = training->overlap();
  m->training.precision = static_cast<Precision>(training->precision());
  m->training.eval_every = std::max(1, training->eval_every());
  m->data_seed = t.data_seed();
  m->worker_index = t.worker_index();
  m->heartbeat_interval_ms = t.heartbeat_interval_ms();
  m->heartbeat_timeout_ms = t.heartbeat_timeout_ms();
  if (const auto* lb = t.layer_blocks(); lb && lb->size() > 0) {
    // Contiguous blocks 0, 1, ..., B-1, one entry per layer.
    if (static_cast<int>(lb->size()) != m->model.layers) {
      return InvalidArgument("Welcome.layer_blocks has " + std::to_string(lb->size()) + " entries for " +
                             std::to_string(m->model.layers) + " layers");
    }
    int prev = -1;
    for (flatbuffers::uoffset_t i = 0; i < lb->size(); ++i) {
      const int b = lb->Get(i);
      if (i == 0 ? b != 0 : (b != prev && b != prev + 1)) {
        return InvalidArgument("Welcome.layer_blocks[" + std::to_string(i) + "] is " + std::to_string(b) +
                               " (allowed: contiguous blocks numbered from 0)");
      }
      prev = b;
      m->layer_blocks.push_back(b);
    }
    if (prev < 1) return InvalidArgument("Welcome.layer_blocks names a single block (allowed: 2 or more)");
  }
  if (const wire::FpldSpec* f = t.fpld()) {
    FpldWelcome& w = m->fpld;
    w.enabled = true;
    w.bits = f->bits();
    w.clip = f->clip();
    w.topk = f->topk();
    w.positions = f->positions();
    w.contexts = f->contexts();
    w.exact_reference = f->exact_reference();
    if (w.bits < 0 || w.bits > 16 || !(w.clip > 0) || !std::isfinite(w.clip) || w.topk < 0 ||
        w.topk > m->model.vocab || w.positions < 1 || w.positions > m->model.context || w.contexts < 1) {
      return InvalidArgument("Welcome.fpld has out-of-range settings (bits 0..16, clip > 0, topk 0..vocab, "
                             "positions 1..context, contexts >= 1)");
    }
    const auto* probes = f->probe_tokens();
    const uint64_t want = static_cast<uint64_t>(w.contexts) * static_cast<uint64_t>(m->model.context);
    if (probes == nullptr || probes->size() != want) {
      return InvalidArgument("Welcome.fpld.probe_tokens has " + std::to_string(probes ? probes->size() : 0) +
                             " tokens, expected contexts x context = " + std::to_string(want));
    }
    w.probe_tokens.assign(probes->begin(), probes->end());
  }
  if (const wire::FcragSpec* f = t.fcrag()) {
    FcragWelcome& w = m->fcrag;
    w.enabled = true;
    if (f->labels() == nullptr || f->labels()->size() < 2 || f->labels()->size() > 4096) {
      return InvalidArgument("Welcome.fcrag.labels needs 2 to 4096 labels");
    }
    for (const auto* l : *f->labels()) {
      if (l == nullptr || l->size() == 0 || l->size() > 256) return InvalidArgument("Welcome.fcrag.labels has an empty or oversized label");
      w.labels.push_back(l->str());
    }
    w.retrieve_k = f->retrieve_k();
    w.smoothing = f->smoothing();
    w.min_chars = f->min_chars();
    w.max_chars = f->max_chars();
    if (w.retrieve_k < 1 || w.retrieve_k > 10000 || !(w.smoothing > 0) || !std::isfinite(w.smoothing) ||
        w.min_chars < 1 || w.max_chars < w.min_chars) {
      return InvalidArgument("Welcome.fcrag has out-of-range settings (retrieve_k 1..10000, smoothing > 0, "
                             "1 <= min_chars <= max_chars)");
    }
  }
  return DecodePipeline(t, m);
}

Status DecodeModelSync(const wire::ModelSync& t, ModelSync* m) {
  LOWBAND_RETURN_IF_ERROR(DecodeBlob(t.blob(), "ModelSync.blob", &m->blob));
  m->round = t.round();
  m->digest = t.digest();
  return Status::Ok();
}

// A SyncPull's or SyncChunk's byte range: 1..kMaxSyncChunkBytes bytes at an
// offset below 2^48.
Status CheckSyncRange(const char* name, uint64_t offset, uint32_t length) {
  if (length < 1 || length > kMaxSyncChunkBytes) {
    return InvalidArgument(std::string(name) + ".length is " + std::to_string(length) + ", expected 1.." +
                           std::to_string(kMaxSyncChunkBytes));
  }
  if (offset > (uint64_t{1} << 48)) {
    return InvalidArgument(std::string(name) + ".offset " + std::to_string(offset) + " is out of range");
  }
  return Status::Ok();
}

Status DecodeSyncPull(const wire::SyncPull& t, SyncPull* m) {
  *m = SyncPull{t.round(), t.digest(), t.offset(), t.length()};
  return CheckSyncRange("SyncPull", m->offset, m->length);
}

Status DecodeSyncChunk(const wire::SyncChunk& t, SyncChunk* m) {
  *m = SyncChunk{t.round(), t.digest(), t.offset(), t.length(), t.checksum()};
  return CheckSyncRange("SyncChunk", m->offset, m->length);
}

Status DecodeHeartbeat(const wire::Heartbeat& t, Heartbeat* m) {
  m->round = t.round();
  m->state = StrOrEmpty(t.state());
  return Status::Ok();
}

Status DecodeCampaignEnd(const wire::CampaignEnd& t, CampaignEnd* m) {
  m->reason = StrOrEmpty(t.reason());
  m->final_round = t.final_round();
  return Status::Ok();
}

Status DecodeRoundStart(const wire::RoundStart& t, RoundStart* m) {
  LOWBAND_RETURN_IF_ERROR(RequireNonNegative(t.inner_steps(), "RoundStart.inner_steps"));
  m->round = t.round();
  m->model_version = t.model_version();
  m->inner_steps = t.inner_steps();
  m->deadline_ms = t.deadline_ms();
  m->block = t.block();
  if (m->block < -1 || m->block >= 64) {
    return InvalidArgument("RoundStart.block is " + std::to_string(m->block) + " (allowed: -1 to 63)");
  }
  return Status::Ok();
}

Status DecodeActivation(const wire::Activation& t, Activation* m) {
  LOWBAND_RETURN_IF_ERROR(DecodeBlob(t.blob(), "Activation.blob", &m->blob));
  const auto dtype = static_cast<unsigned>(t.dtype());
  if (dtype > static_cast<unsigned>(WireDtype::kFp16)) {
    return InvalidArgument("Activation.dtype has unknown value " + std::to_string(dtype));
  }
  m->round = t.round();
  m->step = t.step();
  m->micro_batch = t.micro_batch();
  m->stage = t.stage();
  m->backward = t.backward();
  m->batch = t.batch();
  m->tokens = t.tokens();
  m->width = t.width();
  m->dtype = static_cast<WireDtype>(dtype);
  m->labels = t.labels();
  m->eval = t.eval();
  return Status::Ok();
}

// At most one entry per (to_stage, kind) of a 64-stage replica.
constexpr size_t kMaxPeerTraffic = 64 * PeerTraffic::kKinds;

Status DecodeTraffic(const flatbuffers::Vector<flatbuffers::Offset<wire::PeerTraffic>>* v, const char* field,
                     std::vector<PeerTraffic>* out) {
  if (!v) return Status::Ok();
  if (v->size() > kMaxPeerTraffic) {
    return InvalidArgument(std::string(field) + " has " + std::to_string(v->size()) + " entries (allowed: at most " +
                           std::to_string(kMaxPeerTraffic) + ")");
  }
  for (flatbuffers::uoffset_t i = 0; i < v->size(); ++i) {
    const wire::PeerTraffic* t = v->Get(i);
    const std::string at = std::string(field) + "[" + std::to_string(i) + "]";
    if (!t) return InvalidArgument(at + " is missing");
    if (t->from_stage() >= 64 || t->to_stage() >= 64 || t->from_stage() == t->to_stage()) {
      return InvalidArgument(at + ": stages " + std::to_string(t->from_stage()) + " -> " +
                             std::to_string(t->to_stage()) + " (allowed: two different stages below 64)");
    }
    if (t->kind() >= PeerTraffic::kKinds) {
      return InvalidArgument(at + ".kind is " + std::to_string(t->kind()) + " (allowed: 0 to 3)");
    }
    if (t->tensor_bytes() > t->bytes()) return InvalidArgument(at + ": tensor_bytes exceed bytes");
    out->push_back(PeerTraffic{t->from_stage(), t->to_stage(), t->kind(), t->messages(), t->bytes(), t->tensor_bytes()});
  }
  return Status::Ok();
}

Status DecodeDeltaUpload(const wire::DeltaUpload& t, DeltaUpload* m) {
  LOWBAND_RETURN_IF_ERROR(RequireFinite(t.train_loss(), "DeltaUpload.train_loss"));
  LOWBAND_RETURN_IF_ERROR(RequireFiniteNonNegative(t.step_time_ms(), "DeltaUpload.step_time_ms"));
  LOWBAND_RETURN_IF_ERROR(DecodeBlob(t.blob(), "DeltaUpload.blob", &m->blob));
  m->round = t.round();
  m->base_digest = t.base_digest();
  m->train_loss = t.train_loss();
  m->tokens = t.tokens();
  m->step_time_ms = t.step_time_ms();
  m->block = t.block();
  if (m->block < -1 || m->block >= 64) {
    return InvalidArgument("DeltaUpload.block is " + std::to_string(m->block) + " (allowed: -1 to 63)");
  }
  LOWBAND_RETURN_IF_ERROR(RequireFiniteNonNegative(t.wait_ms(), "DeltaUpload.wait_ms"));
  LOWBAND_RETURN_IF_ERROR(RequireFiniteNonNegative(t.cycle_ms(), "DeltaUpload.cycle_ms"));
  m->wait_ms = t.wait_ms();
  m->cycle_ms = t.cycle_ms();
  return DecodeTraffic(t.peer_traffic(), "DeltaUpload.peer_traffic", &m->peer_traffic);
}

Status DecodeFcragKind(uint8_t kind, const char* field, FcragKind* out) {
  if (kind > static_cast<uint8_t>(FcragKind::kTest)) {
    return InvalidArgument(std::string(field) + " has unknown value " + std::to_string(kind));
  }
  *out = static_cast<FcragKind>(kind);
  return Status::Ok();
}

Status DecodeFcragRequest(const wire::FcragRequest& t, FcragRequest* m) {
  LOWBAND_RETURN_IF_ERROR(DecodeBlob(t.blob(), "FcragRequest.blob", &m->blob));
  LOWBAND_RETURN_IF_ERROR(DecodeFcragKind(t.kind(), "FcragRequest.kind", &m->kind));
  if (t.bits() < 0 || t.bits() > 16) return InvalidArgument("FcragRequest.bits is " + std::to_string(t.bits()) + " (allowed: 0 to 16)");
  if (!std::isfinite(t.score_max()) || t.score_max() <= 0) return InvalidArgument("FcragRequest.score_max must be finite and > 0");
  if (!(t.calibration_fraction() > 0 && t.calibration_fraction() < 1)) {
    return InvalidArgument("FcragRequest.calibration_fraction must lie in (0, 1)");
  }
  if (std::isnan(t.threshold()) || std::isnan(t.threshold_qq())) return InvalidArgument("FcragRequest thresholds are NaN");
  m->id = t.id();
  m->bits = t.bits();
  m->seed = t.seed();
  m->score_max = t.score_max();
  m->count = t.count();
  m->calibration_fraction = t.calibration_fraction();
  m->qq_k = t.qq_k();
  m->threshold = t.threshold();
  m->threshold_qq = t.threshold_qq();
  return Status::Ok();
}

Status DecodeFcragReply(const wire::FcragReply& t, FcragReply* m) {
  LOWBAND_RETURN_IF_ERROR(DecodeBlob(t.blob(), "FcragReply.blob", &m->blob));
  LOWBAND_RETURN_IF_ERROR(DecodeFcragKind(t.kind(), "FcragReply.kind", &m->kind));
  if (std::isnan(t.local_qq())) return InvalidArgument("FcragReply.local_qq is NaN");
  m->id = t.id();
  m->count = t.count();
  m->covered = t.covered();
  m->set_size = t.set_size();
  m->covered_qq = t.covered_qq();
  m->set_size_qq = t.set_size_qq();
  m->local_qq = t.local_qq();
  return Status::Ok();
}

Status DecodeLogitUpload(const wire::LogitUpload& t, LogitUpload* m) {
  LOWBAND_RETURN_IF_ERROR(DecodeBlob(t.blob(), "LogitUpload.blob", &m->blob));
  LOWBAND_RETURN_IF_ERROR(RequireFinite(t.train_loss(), "LogitUpload.train_loss"));
  LOWBAND_RETURN_IF_ERROR(RequireFiniteNonNegative(t.step_time_ms(), "LogitUpload.step_time_ms"));
  LOWBAND_RETURN_IF_ERROR(RequireFiniteNonNegative(t.wait_ms(), "LogitUpload.wait_ms"));
  LOWBAND_RETURN_IF_ERROR(RequireFiniteNonNegative(t.cycle_ms(), "LogitUpload.cycle_ms"));
  if (!std::isfinite(t.clip()) || t.clip() <= 0) return InvalidArgument("LogitUpload.clip must be finite and > 0");
  if (t.bits() < 0 || t.bits() > 16) {
    return InvalidArgument("LogitUpload.bits is " + std::to_string(t.bits()) + " (allowed: 0 to 16)");
  }
  if (t.exact_bytes() > t.blob()->byte_length()) {
    return InvalidArgument("LogitUpload.exact_bytes exceeds the bulk frame");
  }
  m->round = t.round();
  m->train_loss = t.train_loss();
  m->tokens = t.tokens();
  m->step_time_ms = t.step_time_ms();
  m->rows = t.rows();
  m->vocab = t.vocab();
  m->bits = t.bits();
  m->clip = t.clip();
  m->topk = t.topk();
  m->exact_bytes = t.exact_bytes();
  m->wait_ms = t.wait_ms();
  m->cycle_ms = t.cycle_ms();
  return Status::Ok();
}

Status DecodeAggregate(const wire::Aggregate& t, Aggregate* m) {
  LOWBAND_RETURN_IF_ERROR(DecodeBlob(t.blob(), "Aggregate.blob", &m->blob));
  m->round = t.round();
  m->digest = t.digest();
  m->contributors = t.contributors();
  return Status::Ok();
}

Status DecodeEvalReport(const wire::EvalReport& t, EvalReport* m) {
  LOWBAND_RETURN_IF_ERROR(RequireFinite(t.val_loss(), "EvalReport.val_loss"));
  m->round = t.round();
  m->val_loss = t.val_loss();
  m->val_tokens = t.val_tokens();
  m->digest = t.digest();
  if (const auto* ranks = t.rank_digests()) {
    if (ranks->size() > 65536) {
      return InvalidArgument("EvalReport.rank_digests has " + std::to_string(ranks->size()) + " entries (at most 65536)");
    }
    m->rank_digests.assign(ranks->begin(), ranks->end());
  }
  return DecodeTraffic(t.peer_traffic(), "EvalReport.peer_traffic", &m->peer_traffic);
}

Status DecodeError(const wire::Error& t, Error* m) {
  const int32_t code = t.code();
  if (code < static_cast<int32_t>(ErrorCode::kMalformed) || code > static_cast<int32_t>(ErrorCode::kSiteDown)) {
    return InvalidArgument("Error.code has unknown value " + std::to_string(code));
  }
  m->code = static_cast<ErrorCode>(code);
  m->message = StrOrEmpty(t.message());
  m->round = t.round();
  return Status::Ok();
}

Status DecodeControlRequest(const wire::ControlRequest& t, ControlRequest* m) {
  LOWBAND_RETURN_IF_ERROR(RequireString(t.command(), "ControlRequest.command"));
  m->command = t.command()->str();
  if (const auto* args = t.args()) {
    m->args.reserve(args->size());
    for (fb::uoffset_t i = 0; i < args->size(); ++i) {
      // A null element cannot pass the Verifier, but stay defensive.
      const fb::String* a = args->Get(i);
      if (a == nullptr) return InvalidArgument("ControlRequest.args[" + std::to_string(i) + "] is missing");
      m->args.push_back(a->str());
    }
  }
  return Status::Ok();
}

Status DecodeControlResponse(const wire::ControlResponse& t, ControlResponse* m) {
  m->ok = t.ok();
  m->message = StrOrEmpty(t.message());
  m->json = StrOrEmpty(t.json());
  return Status::Ok();
}

// Converts body table `T` (already verified) into `M` and stores it in `out`.
template <typename M, typename T>
Status DecodeAs(const T* table, const char* name, Status (*fn)(const T&, M*), Body* out) {
  if (table == nullptr) return InvalidArgument(std::string("Envelope.body (") + name + ") is missing");
  M m;
  LOWBAND_RETURN_IF_ERROR(fn(*table, &m));
  *out = std::move(m);
  return Status::Ok();
}

Status DecodeBody(const wire::Envelope& env, Body* out) {
  const auto type = env.body_type();
  switch (type) {
    case wire::Body::NONE: return InvalidArgument("Envelope.body_type is NONE (no body)");
    case wire::Body::Hello: return DecodeAs(env.body_as_Hello(), "Hello", &DecodeHello, out);
    case wire::Body::Welcome: return DecodeAs(env.body_as_Welcome(), "Welcome", &DecodeWelcome, out);
    case wire::Body::ModelSync:
      return DecodeAs(env.body_as_ModelSync(), "ModelSync", &DecodeModelSync, out);
    case wire::Body::Heartbeat:
      return DecodeAs(env.body_as_Heartbeat(), "Heartbeat", &DecodeHeartbeat, out);
    case wire::Body::SyncPull:
      return DecodeAs(env.body_as_SyncPull(), "SyncPull", &DecodeSyncPull, out);
    case wire::Body::SyncChunk:
      return DecodeAs(env.body_as_SyncChunk(), "SyncChunk", &DecodeSyncChunk, out);
    case wire::Body::CampaignEnd:
      return DecodeAs(env.body_as_CampaignEnd(), "CampaignEnd", &DecodeCampaignEnd, out);
    case wire::Body::RoundStart:
      return DecodeAs(env.body_as_RoundStart(), "RoundStart", &DecodeRoundStart, out);
    case wire::Body::DeltaUpload:
      return DecodeAs(env.body_as_DeltaUpload(), "DeltaUpload", &DecodeDeltaUpload, out);
    case wire::Body::Aggregate:
      return DecodeAs(env.body_as_Aggregate(), "Aggregate", &DecodeAggregate, out);
    case wire::Body::EvalReport:
      return DecodeAs(env.body_as_EvalReport(), "EvalReport", &DecodeEvalReport, out);
    case wire::Body::Error: return DecodeAs(env.body_as_Error(), "Error", &DecodeError, out);
    case wire::Body::ControlRequest:
      return DecodeAs(env.body_as_ControlRequest(), "ControlRequest", &DecodeControlRequest, out);
    case wire::Body::ControlResponse:
      return DecodeAs(env.body_as_ControlResponse(), "ControlResponse", &DecodeControlResponse, out);
    case wire::Body::Activation:
      return DecodeAs(env.body_as_Activation(), "Activation", &DecodeActivation, out);
    case wire::Body::LogitUpload:
      return DecodeAs(env.body_as_LogitUpload(), "LogitUpload", &DecodeLogitUpload, out);
    case wire::Body::FcragRequest:
      return DecodeAs(env.body_as_FcragRequest(), "FcragRequest", &DecodeFcragRequest, out);
    case wire::Body::FcragReply:
      return DecodeAs(env.body_as_FcragReply(), "FcragReply", &DecodeFcragReply, out);
  }
  return InvalidArgument("Envelope.body_type has unknown value " +
                         std::to_string(static_cast<unsigned>(type)));
}

// Everything but the bulk bytes themselves: sizes, header, blob agreement.
// On success `out` holds the decoded header fields and body (bulk empty).
Status DecodeWithoutBulk(const Frames& frames, const WireLimits& limits, Message* out) {
  if (frames.size() != 1 && frames.size() != 2) {
    return InvalidArgument("message has " + std::to_string(frames.size()) +
                           " frames, expected 1 (header) or 2 (header and bulk)");
  }
  const Bytes& header = frames[0];
  const size_t max_header = std::min(limits.max_header_bytes, kAbsoluteMaxHeaderBytes);
  if (header.size() < kMinHeaderBytes) {
    return InvalidArgument("header frame is " + std::to_string(header.size()) + " bytes, shorter than " +
                           std::to_string(kMinHeaderBytes));
  }
  if (header.size() > max_header) {
    return InvalidArgument("header frame is " + std::to_string(header.size()) + " bytes, limit is " +
                           std::to_string(max_header));
  }
  const bool has_bulk_frame = frames.size() == 2;
  if (has_bulk_frame && frames[1].size() > limits.max_bulk_bytes) {
    return InvalidArgument("bulk frame is " + std::to_string(frames[1].size()) + " bytes, limit is " +
                           std::to_string(limits.max_bulk_bytes));
  }
  const uint8_t* data = header.data();
  if (!wire::EnvelopeBufferHasIdentifier(data)) {
    return InvalidArgument("header frame has file identifier '" + log::Printable(std::string(reinterpret_cast<const char*>(data + 4), 4)) +
                           "', expected '" + wire::EnvelopeIdentifier() + "'");
  }
  fb::Verifier::Options opts;
  opts.max_depth = kMaxVerifierDepth;
  opts.max_tables = kMaxVerifierTables;
  opts.check_alignment = true;
  opts.check_nested_flatbuffers = true;
  fb::Verifier verifier(data, header.size(), opts);
  if (!wire::VerifyEnvelopeBuffer(verifier)) {
    return Corruption("header frame failed FlatBuffers verification (" + std::to_string(header.size()) +
                      " bytes)");
  }
  const wire::Envelope* env = wire::GetEnvelope(data);
  if (env->protocol_version() != kProtocolVersion) {
    return InvalidArgument("Envelope.protocol_version: got " + std::to_string(env->protocol_version()) +
                           ", expected " + std::to_string(kProtocolVersion));
  }
  Message msg;
  msg.protocol_version = env->protocol_version();
  msg.campaign_id = StrOrEmpty(env->campaign_id());
  msg.sender_id = StrOrEmpty(env->sender_id());
  msg.seq = env->seq();
  LOWBAND_RETURN_IF_ERROR(DecodeBody(*env, &msg.body));

  const BlobHeader* blob = BlobOf(msg.body);
  const char* name = BodyName(msg.body);
  if (const auto* chunk = std::get_if<SyncChunk>(&msg.body)) {
    // Raw payload bytes, no codec blob: the chunk's own length and checksum.
    if (!has_bulk_frame || frames[1].size() != chunk->length) {
      return Corruption("SyncChunk.length is " + std::to_string(chunk->length) + " but the bulk frame is " +
                        std::to_string(has_bulk_frame ? frames[1].size() : 0) + " bytes");
    }
    const uint64_t checksum = BulkChecksum(frames[1].data(), frames[1].size());
    if (checksum != chunk->checksum) {
      return Corruption("SyncChunk.checksum mismatch at offset " + std::to_string(chunk->offset) + ": header says " +
                        DigestHex(chunk->checksum) + ", bulk frame hashes to " + DigestHex(checksum));
    }
  } else if (blob == nullptr) {
    if (has_bulk_frame) {
      return InvalidArgument(std::string("a bulk frame of ") + std::to_string(frames[1].size()) +
                             " bytes is attached to a " + name + " message, which carries no blob");
    }
  } else {
    if (!has_bulk_frame) {
      return InvalidArgument(std::string(name) + " message is missing its bulk frame (blob.byte_length " +
                             std::to_string(blob->byte_length) + ")");
    }
    const Bytes& bulk = frames[1];
    if (blob->byte_length != bulk.size()) {
      return Corruption(std::string(name) + ".blob.byte_length is " + std::to_string(blob->byte_length) +
                        " but the bulk frame is " + std::to_string(bulk.size()) + " bytes");
    }
    const uint64_t checksum = BulkChecksum(bulk.data(), bulk.size());
    if (checksum != blob->checksum) {
      return Corruption(std::string(name) + ".blob.checksum mismatch: header says " +
                        DigestHex(blob->checksum) + ", bulk frame hashes to " + DigestHex(checksum));
    }
  }
  *out = std::move(msg);
  return Status::Ok();
}

}  // namespace

Frames EncodeMessage(const Message& msg) {
  Frames frames;
  frames.reserve(2);
  frames.push_back(EncodeHeader(msg));
  if (!msg.bulk.empty() || CarriesBlob(msg.body) || std::holds_alternative<SyncChunk>(msg.body)) {
    frames.push_back(msg.bulk);
  }
  return frames;
}

Frames EncodeMessage(Message&& msg) {
  Frames frames;
  frames.reserve(2);
  frames.push_back(EncodeHeader(msg));
  if (!msg.bulk.empty() || CarriesBlob(msg.body) || std::holds_alternative<SyncChunk>(msg.body)) {
    frames.push_back(std::move(msg.bulk));
  }
  return frames;
}

StatusOr<Message> DecodeMessage(const Frames& frames, const WireLimits& limits) {
  Message msg;
  LOWBAND_RETURN_IF_ERROR(DecodeWithoutBulk(frames, limits, &msg));
  if (frames.size() == 2) msg.bulk = frames[1];
  return msg;
}

StatusOr<Message> DecodeMessage(Frames&& frames, const WireLimits& limits) {
  Message msg;
  LOWBAND_RETURN_IF_ERROR(DecodeWithoutBulk(frames, limits, &msg));
  if (frames.size() == 2) msg.bulk = std::move(frames[1]);
  return msg;
}

}  // namespace lowband
