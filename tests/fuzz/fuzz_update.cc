// libFuzzer target: ParseUpdate (codec/codec.h) for every codec kind on a
// fixed layout (FuzzLayout: full, edge and corner 64x64 tiles, full and short
// 4096-element chunks) at a topk taken from the input. Input format:
// tests/fuzz/fuzz_inputs.h; the header is made consistent with the bulk
// (length, checksum) unless a flag breaks one field, so the parsers' content
// checks see mutated bulk bytes rather than stopping at the checksum.
//
// CheckBlob runs on every input too. An accepted update then goes through
// what the coordinator does with one: ApplyUpdate (and its size check),
// AggregateMean with a partner update, Densify, PackAggregate. Checked:
//   * CheckBlob accepts what ParseUpdate accepts, for its codec only;
//   * a parsed update passes ApplyUpdate;
//   * PackAggregate of an aggregate with finite values parses again at the
//     same plan, to the same values bit for bit.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "codec/codec.h"
#include "tests/fuzz/fuzz_inputs.h"

namespace lowband::fuzz {
namespace {

[[noreturn]] void Fail(const char* what, const Status& st) {
  std::fprintf(stderr, "fuzz_update: %s: %s\n", what, st.ToString().c_str());
  std::abort();
}

// LOWBAND_FUZZ_VERBOSE=1 prints each input's verdict (to check what seeds reach).
bool Verbose() {
  static const bool verbose = std::getenv("LOWBAND_FUZZ_VERBOSE") != nullptr;
  return verbose;
}

const ParamLayout& Layout() {
  static const ParamLayout layout = FuzzLayout();
  return layout;
}

// A well-formed dense update for any plan of the layout.
Update DenseOnes(const LayoutPlan& plan) {
  Update u;
  u.dense = true;
  u.values.assign(static_cast<size_t>(plan.numel), 0.5f);
  return u;
}

// A well-formed sparse update for any plan of the layout: each chunk's first
// and last local index (the chunks do not depend on topk).
Update SparseEnds(const LayoutPlan& plan) {
  Update u;
  u.dense = false;
  u.begin.push_back(0);
  for (const Chunk& ch : plan.chunks) {
    const int64_t n = ch.numel();
    u.index.push_back(0);
    u.value.push_back(-0.25f);
    if (n > 1) {
      u.index.push_back(static_cast<uint16_t>(n - 1));
      u.value.push_back(3.0f);
    }
    u.begin.push_back(static_cast<uint32_t>(u.index.size()));
  }
  return u;
}

// perturb as a signed 32-bit offset, added modulo 2^64.
uint64_t SignExtend(uint32_t v) { return static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(v))); }

bool AllFiniteUpdate(const Update& u) { return AllFinite(u.dense ? u.values : u.value); }

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

void Exercise(const LayoutPlan& plan, const Update& u, uint8_t flags) {
  const ParamLayout& layout = Layout();
  std::vector<float> theta(static_cast<size_t>(plan.numel), 1.0f);
  Status st = ApplyUpdate(plan, u, &theta);
  if (!st.ok()) Fail("ApplyUpdate rejected a parsed update", st);
  std::vector<float> short_theta(1, 0.0f);
  if (ApplyUpdate(plan, u, &short_theta).ok()) Fail("ApplyUpdate took parameters of the wrong size", Status::Ok());

  const AggregationRule rule =
      (flags & kUpdateMeanChoosers) ? AggregationRule::kMeanChoosers : AggregationRule::kMeanAll;
  const Update dense = DenseOnes(plan);
  const Update sparse = SparseEnds(plan);
  std::vector<const Update*> inputs{&u};
  switch (static_cast<Partner>(flags >> kUpdatePartnerShift)) {
    case Partner::kNone:
      break;
    case Partner::kSelf:
      inputs.push_back(&u);
      break;
    case Partner::kDense:
      inputs.push_back(&dense);
      break;
    case Partner::kSparse:
      inputs.insert(inputs.begin(), &sparse);
      break;
  }
  const Update agg = AggregateMean(plan, inputs, rule);
  const std::vector<float> agg_dense = Densify(plan, agg);

  // The downlink: what the coordinator packs, a worker parses.
  StatusOr<Encoded> packed = PackAggregate(layout, plan, agg);
  if (!packed.ok()) {
    // Only a non-finite mean (two large finite values can overflow) may fail.
    if (AllFiniteUpdate(agg)) Fail("PackAggregate rejected a finite aggregate", packed.status());
    return;
  }
  StatusOr<Update> back = ParseUpdate(layout, plan, packed->header, packed->bulk);
  if (!back.ok()) Fail("the packed aggregate does not parse", back.status());
  if (!BitEqual(Densify(plan, *back), agg_dense)) Fail("the packed aggregate parses to other values", Status::Ok());
}

}  // namespace
}  // namespace lowband::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowband;
  using namespace lowband::fuzz;
  if (size < kUpdatePrefixBytes) return 0;
  const auto codec = static_cast<CodecKind>(data[0] % 8);
  const uint8_t flags = data[1];
  const int topk = static_cast<int16_t>(GetU16(data + 2));
  const uint32_t perturb = GetU32(data + 4);
  const Bytes bulk(data + kUpdatePrefixBytes, data + size);

  const ParamLayout& layout = Layout();
  const LayoutPlan plan = PlanLayout(layout, topk);
  BlobHeader header;
  header.codec = codec;
  header.num_elements = static_cast<uint64_t>(layout.numel());
  header.layout_digest = layout.Digest();
  header.byte_length = bulk.size();
  header.checksum = BulkChecksum(bulk.data(), bulk.size());
  header.topk = codec == CodecKind::kSparseLoCo ? static_cast<uint32_t>(plan.topk) : 0;
  if (flags & kUpdateBadChecksum) header.checksum ^= perturb | 1;
  if (flags & kUpdateBadLength) header.byte_length += SignExtend(perturb);
  if (flags & kUpdateBadElements) header.num_elements += SignExtend(perturb);
  if (flags & kUpdateBadDigest) header.layout_digest ^= perturb | 1;
  if (flags & kUpdateRawTopk) header.topk = perturb;

  // CheckBlob is the cheaper check a receiver may run first; it must accept
  // whatever ParseUpdate accepts, and only for the payload's own codec.
  const Status blob = CheckBlob(layout, codec, header, bulk);
  const auto other = static_cast<CodecKind>((static_cast<int>(codec) + 1) % 6);
  if (CheckBlob(layout, other, header, bulk).ok()) Fail("CheckBlob accepted a payload of another codec", Status::Ok());
  StatusOr<Update> u = ParseUpdate(layout, plan, header, bulk);
  if (Verbose()) {
    std::fprintf(stderr, "fuzz_update: %s topk %d: %s\n", CodecName(codec), plan.topk,
                 u.ok() ? (u->dense ? "dense update" : "sparse update") : u.status().ToString().c_str());
  }
  if (!u.ok()) return 0;
  if (!blob.ok()) Fail("CheckBlob rejected a payload ParseUpdate accepted", blob);
  Exercise(plan, *u, flags);
  return 0;
}
