#include "worker/job_wire.h"

#include <cstring>

#include "base/hash.h"

namespace lowband {
namespace {

void PutU64(Bytes* out, uint64_t v) {
  uint8_t b[8];
  std::memcpy(b, &v, sizeof(v));
  out->insert(out->end(), b, b + 8);
}

}  // namespace

bool ReplicatedJob(const Job& job) { return !std::holds_alternative<FcragJob>(job); }

Bytes EncodeJob(const Job& job) {
  Message m;
  if (const auto* c = std::get_if<ConfigureJob>(&job)) {
    m.body = c->welcome;
  } else if (const auto* s = std::get_if<SyncJob>(&job)) {
    m.body = s->sync;  // a ModelSync carries no bulk on the wire: the payload follows as a frame of its own
  } else if (const auto* t = std::get_if<TrainJob>(&job)) {
    RoundStart rs;
    rs.round = t->round;
    rs.inner_steps = t->inner_steps;
    rs.model_version = t->base_digest;
    rs.block = t->block;
    m.body = rs;
  } else if (const auto* a = std::get_if<ApplyJob>(&job)) {
    m.body = a->aggregate;
    m.bulk = a->bulk;
  } else {
    // Not replicated: encoded as its request, which DecodeJob refuses
    // (never as the empty stop marker).
    const auto& f = std::get<FcragJob>(job);
    m.body = f.request;
    m.bulk = f.bulk;
  }
  // [frame count][length, bytes]...
  Frames frames = EncodeMessage(std::move(m));
  if (const auto* s = std::get_if<SyncJob>(&job); s && !s->bulk.empty()) frames.push_back(s->bulk);
  Bytes out;
  PutU64(&out, frames.size());
  for (const Bytes& f : frames) {
    PutU64(&out, f.size());
    out.insert(out.end(), f.begin(), f.end());
  }
  return out;
}

StatusOr<std::optional<Job>> DecodeJob(const Bytes& bytes) {
  if (bytes.empty()) return std::optional<Job>();
  size_t pos = 0;
  auto get = [&](uint64_t* v) {
    if (bytes.size() - pos < 8) return false;
    std::memcpy(v, bytes.data() + pos, 8);
    pos += 8;
    return true;
  };
  uint64_t count = 0;
  if (!get(&count) || count < 1 || count > 2) return InvalidArgument("site job: bad frame count");
  Frames frames;
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t len = 0;
    if (!get(&len) || len > bytes.size() - pos) return InvalidArgument("site job: truncated frame");
    frames.emplace_back(bytes.begin() + static_cast<std::ptrdiff_t>(pos),
                        bytes.begin() + static_cast<std::ptrdiff_t>(pos + len));
    pos += len;
  }
  if (pos != bytes.size()) return InvalidArgument("site job: trailing bytes");
  WireLimits limits;
  limits.max_bulk_bytes = 1u << 30;
  // A sync job: its ModelSync header, then the payload if it loads one.
  Frame payload;
  if (frames.size() == 2) {
    auto header = DecodeMessage(Frames{frames[0]}, limits);
    if (header.ok() && std::holds_alternative<ModelSync>(header->body)) {
      const BlobHeader& blob = std::get<ModelSync>(header->body).blob;
      if (frames[1].size() != blob.byte_length || BulkChecksum(frames[1].data(), frames[1].size()) != blob.checksum) {
        return InvalidArgument("site job: model payload does not match its header");
      }
      payload = std::move(frames[1]);
      frames.pop_back();
    }
  }
  LOWBAND_ASSIGN_OR_RETURN(Message m, DecodeMessage(std::move(frames), limits));
  if (const auto* w = std::get_if<Welcome>(&m.body)) return std::optional<Job>(ConfigureJob{*w});
  if (const auto* s = std::get_if<ModelSync>(&m.body)) return std::optional<Job>(SyncJob{*s, std::move(payload)});
  if (const auto* rs = std::get_if<RoundStart>(&m.body)) {
    return std::optional<Job>(TrainJob{rs->round, static_cast<int>(rs->inner_steps), rs->model_version, rs->block});
  }
  if (const auto* a = std::get_if<Aggregate>(&m.body)) return std::optional<Job>(ApplyJob{*a, std::move(m.bulk)});
  return InvalidArgument(std::string("site job: a ") + BodyName(m.body) + " is not a job");
}

}  // namespace lowband
