// Checkpoint file I/O.
//
// Layout, all integers little-endian, version 4 (version 1 lacks the
// momentum section, versions 1 to 3 the downlink section; versions 1 and 2
// use FNV-1a 64 for the checksum and the values digest, versions 3 and 4
// XXH64, ten times faster on a large model):
//   "LBCK"                        4 bytes magic
//   u32 version                   = 4
//   u32 round
//   u32 campaign_len, bytes       campaign name
//   u64 values_digest             ParamSet::Digest() of the values
//   u64 layout_digest             ParamLayout::Digest()
//   u32 tensor_count
//     per tensor: u32 name_len, name bytes, u32 ndim, i64 dims[ndim]
//   u64 numel                     == layout.numel()
//   f32 values[numel]             IEEE-754 bits, little-endian
//   u64 momentum_count            0 or numel (version 2 on)
//   f32 momentum[momentum_count]  outer optimizer momentum (version 2 on)
//   u64 downlink_count            0 or numel (version 4)
//   f32 downlink[downlink_count]  the downlink's error feedback (version 4)
//   u64 checksum                  Xxh64 of every byte before it
//
// The reader treats the file as untrusted: every length is bounded by the
// bytes that remain before it is used, so a corrupt or hostile file yields
// Corruption and never a huge allocation or an out-of-bounds read. The
// digests are redundant with the checksum on purpose: they are what the rest
// of the system compares (replica digests), so a reader can trust them.
#include "coordinator/checkpoint.h"

#include <cstring>
#include <limits>

#include "base/file.h"

namespace lowband {
namespace {

constexpr char kMagic[4] = {'L', 'B', 'C', 'K'};
constexpr uint32_t kVersion = kCheckpointVersion;

// Versions 1 and 2 hashed with FNV-1a 64 (the checksum, and the values
// digest as ParamSet::Digest then computed it).
uint64_t FileChecksum(uint32_t version, const void* data, size_t size) {
  return version >= 3 ? Xxh64(data, size) : Fnv1a64(data, size);
}
uint64_t FileValuesDigest(uint32_t version, const std::vector<float>& values) {
  return version >= 3 ? ValuesDigest(values.data(), values.size())
                      : Fnv1a64(values.data(), values.size() * sizeof(float));
}
// Bounds on header fields that have no legitimate reason to be large.
constexpr uint32_t kMaxNameBytes = 4096;
constexpr uint32_t kMaxDims = 16;


class Writer {
 public:
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) buf_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) buf_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void Bytes(const void* p, size_t n) { buf_.append(static_cast<const char*>(p), n); }
  void String(const std::string& s) {
    U32(static_cast<uint32_t>(s.size()));
    Bytes(s.data(), s.size());
  }
  void Floats(const std::vector<float>& values) {
    size_t start = buf_.size();
    buf_.resize(start + values.size() * 4);
    char* out = &buf_[start];
    for (float f : values) {
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      for (int i = 0; i < 4; ++i) *out++ = static_cast<char>((bits >> (8 * i)) & 0xff);
    }
  }
  std::string& buffer() { return buf_; }

 private:
  std::string buf_;
};

// A bounds-checked cursor over an immutable byte buffer. Each read fails
// (returns false) instead of running past the end.
class Reader {
 public:
  Reader(const unsigned char* data, size_t size) : p_(data), left_(size) {}

  size_t left() const { return left_; }

  bool U32(uint32_t* v) {
    if (left_ < 4) return false;
    *v = 0;
    for (int i = 0; i < 4; ++i) *v |= static_cast<uint32_t>(p_[i]) << (8 * i);
    Skip(4);
    return true;
  }
  bool U64(uint64_t* v) {
    if (left_ < 8) return false;
    *v = 0;
    for (int i = 0; i < 8; ++i) *v |= static_cast<uint64_t>(p_[i]) << (8 * i);
    Skip(8);
    return true;
  }
  bool Bytes(size_t n, std::string* out) {
    if (left_ < n) return false;
    out->assign(reinterpret_cast<const char*>(p_), n);
    Skip(n);
    return true;
  }
  bool Floats(uint64_t n, std::vector<float>* out) {
    if (n > left_ / 4) return false;
    out->resize(static_cast<size_t>(n));
    for (uint64_t k = 0; k < n; ++k) {
      uint32_t bits = 0;
      for (int i = 0; i < 4; ++i) bits |= static_cast<uint32_t>(p_[4 * k + i]) << (8 * i);
      std::memcpy(&(*out)[k], &bits, 4);
    }
    Skip(static_cast<size_t>(n) * 4);
    return true;
  }

 private:
  void Skip(size_t n) {
    p_ += n;
    left_ -= n;
  }
  const unsigned char* p_;
  size_t left_;
};

Status Encode(const Checkpoint& ckpt, std::string* out) {
  const ParamSet& params = ckpt.params;
  if (static_cast<int64_t>(params.values.size()) != params.layout.numel()) {
    return InvalidArgument("checkpoint: " + std::to_string(params.values.size()) + " values for a layout of " +
                           std::to_string(params.layout.numel()));
  }
  if (ckpt.campaign.size() > kMaxNameBytes) return InvalidArgument("checkpoint: campaign name too long");
  Writer w;
  w.Bytes(kMagic, 4);
  w.U32(kVersion);
  w.U32(ckpt.round);
  w.String(ckpt.campaign);
  w.U64(params.Digest());
  w.U64(params.layout.Digest());
  w.U32(static_cast<uint32_t>(params.layout.tensors.size()));
  for (const TensorSpec& t : params.layout.tensors) {
    if (t.name.size() > kMaxNameBytes || t.shape.size() > kMaxDims) {
      return InvalidArgument("checkpoint: tensor '" + t.name.substr(0, 64) + "' has too long a name or too many dims");
    }
    w.String(t.name);
    w.U32(static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape) w.U64(static_cast<uint64_t>(d));
  }
  w.U64(static_cast<uint64_t>(params.values.size()));
  w.Floats(params.values);
  if (!ckpt.outer_momentum.empty() && ckpt.outer_momentum.size() != params.values.size()) {
    return InvalidArgument("checkpoint: " + std::to_string(ckpt.outer_momentum.size()) +
                           " momentum values for " + std::to_string(params.values.size()) + " parameters");
  }
  w.U64(static_cast<uint64_t>(ckpt.outer_momentum.size()));
  w.Floats(ckpt.outer_momentum);
  if (!ckpt.downlink_error.empty() && ckpt.downlink_error.size() != params.values.size()) {
    return InvalidArgument("checkpoint: " + std::to_string(ckpt.downlink_error.size()) +
                           " downlink error-feedback values for " + std::to_string(params.values.size()) +
                           " parameters");
  }
  w.U64(static_cast<uint64_t>(ckpt.downlink_error.size()));
  w.Floats(ckpt.downlink_error);
  w.U64(FileChecksum(kVersion, w.buffer().data(), w.buffer().size()));
  *out = std::move(w.buffer());
  return Status::Ok();
}

StatusOr<Checkpoint> Decode(const unsigned char* data, size_t size, const std::string& path) {
  auto bad = [&](const std::string& why) { return Corruption(path + ": " + why); };
  // Magic and version first, so a foreign file gets a clear message rather
  // than "checksum mismatch".
  if (size < 8 || std::memcmp(data, kMagic, 4) != 0) return bad("not a checkpoint (bad magic)");
  Reader r(data, size);
  std::string magic;
  uint32_t version = 0;
  (void)r.Bytes(4, &magic);
  (void)r.U32(&version);
  if (version < 1 || version > kVersion) {
    return bad("unsupported version " + std::to_string(version) + " (expected 1 to " + std::to_string(kVersion) +
               ")");
  }
  if (size < 8 + 8) return bad("truncated");
  uint64_t stored_sum = 0;
  Reader tail(data + size - 8, 8);
  (void)tail.U64(&stored_sum);
  if (FileChecksum(version, data, size - 8) != stored_sum) return bad("checksum mismatch (truncated or corrupted)");

  // The body, bounded to exclude the trailing checksum.
  Reader b(data + 8, size - 16);
  Checkpoint ckpt;
  uint32_t campaign_len = 0, tensor_count = 0;
  uint64_t values_digest = 0, layout_digest = 0, numel = 0;
  if (!b.U32(&ckpt.round) || !b.U32(&campaign_len)) return bad("truncated header");
  if (campaign_len > kMaxNameBytes || !b.Bytes(campaign_len, &ckpt.campaign)) return bad("bad campaign name");
  if (!b.U64(&values_digest) || !b.U64(&layout_digest) || !b.U32(&tensor_count)) return bad("truncated header");
  // Each tensor takes at least 8 bytes (name length + ndim), which bounds
  // the reservation below by the file size.
  if (tensor_count > b.left() / 8) return bad("tensor count exceeds file size");
  ParamLayout& layout = ckpt.params.layout;
  layout.tensors.reserve(tensor_count);
  int64_t total = 0;
  for (uint32_t i = 0; i < tensor_count; ++i) {
    TensorSpec t;
    uint32_t name_len = 0, ndim = 0;
    if (!b.U32(&name_len) || name_len > kMaxNameBytes || !b.Bytes(name_len, &t.name)) {
      return bad("bad name of tensor " + std::to_string(i));
    }
    if (!b.U32(&ndim) || ndim > kMaxDims || ndim > b.left() / 8) return bad("bad rank of tensor " + t.name);
    int64_t n = 1;
    for (uint32_t k = 0; k < ndim; ++k) {
      uint64_t d = 0;
      (void)b.U64(&d);  // bounded by the ndim check above
      const int64_t dim = static_cast<int64_t>(d);
      if (dim < 0) return bad("negative dimension in tensor " + t.name);
      if (dim != 0 && n > std::numeric_limits<int64_t>::max() / dim) return bad("tensor " + t.name + " too large");
      n *= dim;
      t.shape.push_back(dim);
    }
    if (total > std::numeric_limits<int64_t>::max() - n) return bad("layout too large");
    total += n;
    layout.tensors.push_back(std::move(t));
  }
  if (!b.U64(&numel)) return bad("truncated before values");
  if (numel != static_cast<uint64_t>(total)) {
    return bad("value count " + std::to_string(numel) + " does not match layout (" + std::to_string(total) + ")");
  }
  if (!b.Floats(numel, &ckpt.params.values)) return bad("truncated values");
  if (version >= 2) {
    uint64_t momentum = 0;
    if (!b.U64(&momentum)) return bad("truncated before the optimizer state");
    if (momentum != 0 && momentum != numel) {
      return bad("optimizer state has " + std::to_string(momentum) + " values, expected 0 or " +
                 std::to_string(numel));
    }
    if (!b.Floats(momentum, &ckpt.outer_momentum)) return bad("truncated optimizer state");
  }
  if (version >= 4) {
    uint64_t downlink = 0;
    if (!b.U64(&downlink)) return bad("truncated before the downlink's error feedback");
    if (downlink != 0 && downlink != numel) {
      return bad("downlink error feedback has " + std::to_string(downlink) + " values, expected 0 or " +
                 std::to_string(numel));
    }
    if (!b.Floats(downlink, &ckpt.downlink_error)) return bad("truncated downlink error feedback");
  }
  if (b.left() != 0) return bad(std::to_string(b.left()) + " unexpected bytes before the checksum");
  if (layout.Digest() != layout_digest) return bad("layout digest mismatch");
  if (FileValuesDigest(version, ckpt.params.values) != values_digest) return bad("values digest mismatch");
  return ckpt;
}

}  // namespace

Status WriteCheckpoint(const std::string& path, const Checkpoint& ckpt,
                       const std::function<void()>& before_rename) {
  std::string data;
  LOWBAND_RETURN_IF_ERROR(Encode(ckpt, &data));
  return WriteFileAtomically(path, data, before_rename);
}

StatusOr<Checkpoint> ReadCheckpoint(const std::string& path) {
  LOWBAND_ASSIGN_OR_RETURN(std::string data, ReadWholeFile(path, std::numeric_limits<uint64_t>::max()));
  return Decode(reinterpret_cast<const unsigned char*>(data.data()), data.size(), path);
}

}  // namespace lowband
