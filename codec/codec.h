// Update codecs, host side (torch-free): the wire formats, their validating
// parsers, the packers the device encoder (ml/codec_device.h) feeds, the
// sparse Update every core works with, and the aggregation rules.
//
// The maths that needs the whole dense delta (error feedback, top-k,
// quantisation) runs on the tensor's device in codec_device.cc; what reaches
// this file is already small (kept indices, 2-bit codes, tables, quantised
// values), so packing here is not a host round trip for the dense work.
//
// ---------------------------------------------------------------------------
// Chunk plan (shared by sparseloco, int8 and sparse_fp32)
//   A 2-D tensor [R, C] is cut into 64x64 tiles; other tensors are flattened
//   and cut into chunks of 4096. Chunk order ("plan order") of a 2-D tensor,
//   with Rf = R/64, Cf = C/64, rr = R%64, rc = C%64:
//     1. full 64x64 tiles, row-major over (tile row i < Rf, tile col j < Cf)
//     2. right-edge tiles 64 x rc, i < Rf              (when rc > 0)
//     3. bottom-edge tiles rr x 64, j < Cf             (when rr > 0)
//     4. the corner tile rr x rc                       (when both > 0)
//   Non-2-D tensors (n elements): n/4096 chunks of 4096, then one of n%4096.
//   Inside a chunk of `rows` x `cols` (1-D chunks: rows 1), the local index
//   l = r*cols + c maps to the tensor's flat (row-major) index
//     origin + (l / cols) * C + (l % cols),  origin = row0 * C + col0.
//   SparseLoCo keeps k_c = min(n_c, ceil(topk * n_c / 4096)) values of a
//   chunk of n_c elements (>= 1 for n_c >= 1).
//
// Bulk formats (little-endian; every length is fixed by layout + header, and
// the parsers require the exact length):
//   dense_fp32   P x float32 in layout order.
//   dense_bf16   P x uint16 bfloat16 bits (round to nearest even), layout order.
//   int8         per tensor: n_chunks x float32 scale (finite, >= 0), then
//                numel x int8 q in plan order (chunk after chunk, local index
//                order), q in [-127, 127]; value = q * scale.
//   sparseloco   per tensor: float32 table[4] (finite bin means), then the
//                tensor's K = sum k_c local indices, chunk after chunk,
//                strictly increasing inside a chunk, packed 12 bits each
//                (pairs a,b -> a&0xff, (a>>8)|((b&0xf)<<4), b>>4; an odd
//                last index takes 2 bytes a&0xff, a>>8), then K 2-bit codes
//                in the same order, 4 per byte, first in the low bits;
//                value = table[code]. Unused pad bits must be zero.
//                Bytes per tensor: 16 + ceil(1.5 K) + ceil(K / 4).
//   sparse_fp32  one stream for the whole layout (not per tensor, so the
//                size depends on the total count only): n_chunks x uint16
//                count (<= n_c) for every chunk in plan order, then the
//                M = sum count local indices (12-bit packed as above,
//                strictly increasing inside a chunk), then M x float32
//                (finite). Bytes: 2 n_chunks + ceil(1.5 M) + 4 M.
//   sparse_2bit  the coordinator's compressed downlink (any subset of the
//                chunks' elements, 2-bit values): per tensor float32
//                table[4] (finite), for every tensor in layout order; then
//                n_chunks x uint16 count (<= n_c) in plan order; then the
//                M = sum count local indices, chunk after chunk, as
//                Rice-coded gaps: in a chunk of n elements holding m
//                entries l_0 < l_1 < ..., g_j = l_j - l_{j-1} - 1 (l_{-1} =
//                -1) with parameter b = floor(log2(q)) for q = (n - m) / m
//                (integer division) when q >= 1, else 0; each g is g >> b
//                one-bits, a zero bit, then g's low b bits, least
//                significant first; bits fill each byte from its lowest bit
//                and the stream is padded with zero bits to a byte; then M
//                2-bit codes, 4 per byte, first in the low bits (pad bits
//                zero); value = table[code] of the entry's tensor.
//                Bytes: 16 T + 2 n_chunks + ceil(index bits / 8) + ceil(M / 4).
// ---------------------------------------------------------------------------
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "base/thread_pool.h"
#include "codec/params.h"
#include "config/config.h"
#include "protocol/messages.h"

namespace lowband {

// A packed payload: the header (checksum included) and the bulk frame.
struct Encoded {
  BlobHeader header;
  Frame bulk;  // shared by reference: one payload sent to many sites is one buffer
};

constexpr int64_t kChunkElems = 4096;
constexpr int64_t kTileSide = 64;

struct Chunk {
  int64_t origin = 0;  // flat tensor index of the chunk's (0, 0) element
  int32_t rows = 1;
  int32_t cols = 0;    // elements per chunk row; numel = rows * cols
  int32_t k = 0;       // sparseloco: values kept in this chunk
  int64_t numel() const { return static_cast<int64_t>(rows) * cols; }
};

struct TensorPlan {
  int64_t offset = 0;     // first element of the tensor in the flat layout
  int64_t numel = 0;
  int64_t row_stride = 0; // C for a 2-D tensor [R, C], else unused (chunks have rows 1)
  size_t first_chunk = 0; // index of its first chunk in LayoutPlan::chunks
  size_t num_chunks = 0;
  int64_t kept = 0;       // sum of k over its chunks
};

// Chunks of every tensor of a layout, in layout order then plan order.
struct LayoutPlan {
  std::vector<TensorPlan> tensors;
  std::vector<Chunk> chunks;
  int64_t numel = 0;
  int topk = 0;
  int64_t kept = 0;  // total kept values at this topk

  // Flat layout index of local index `l` in chunk `c` (an index into
  // `chunks`, between tensors[t].first_chunk and + num_chunks) of tensor `t`.
  int64_t FlatIndex(size_t t, size_t c, int64_t l) const;
};

// topk in [1, 4096] (values outside are clamped: the dense codecs build a
// plan too and do not use k). Deterministic for a layout. Shapes must be
// non-negative (the loaders check it; CHECK here).
LayoutPlan PlanLayout(const ParamLayout& layout, int topk);

// A decoded update u (length P = layout numel). Either dense (values has P
// entries) or sparse: for chunk c of the plan, its entries are
// [begin[c], begin[c+1]) of (index, value), index local to the chunk and
// strictly increasing. begin has chunks + 1 entries.
struct Update {
  bool dense = true;
  std::vector<float> values;     // dense
  std::vector<uint32_t> begin;   // sparse
  std::vector<uint16_t> index;   // sparse
  std::vector<float> value;      // sparse
  size_t nnz() const { return dense ? values.size() : value.size(); }
};

// Dense copy of u in layout order: zeros plus u's entries. u must be well
// formed for the plan (as ParseUpdate and AggregateMean make it; CHECK).
std::vector<float> Densify(const LayoutPlan& plan, const Update& u);

// theta <- theta - u, element by element in fp32 (the one place replicas and
// the coordinator do this, so they stay bit-identical); a sparse u touches
// only its entries. InvalidArgument (theta untouched) on a size mismatch or a
// malformed u.
Status ApplyUpdate(const LayoutPlan& plan, const Update& u, std::vector<float>* theta);

// ---- sizes ----------------------------------------------------------------
// Exact bulk bytes of each format for the plan (sparse_fp32: for `nnz`
// values in total; per-chunk counts do not change the size). 0 for an
// unknown kind and for sparse_2bit, whose size depends on where its entries
// are (Sparse2BitBytes).
uint64_t BulkBytes(const LayoutPlan& plan, CodecKind kind, uint64_t nnz = 0);

// sparse_2bit: the Rice parameter of a chunk of n elements holding m
// entries, and the bits of its m strictly increasing local indices (< n).
int Sparse2BitRiceParam(int64_t n, int64_t m);
uint64_t Sparse2BitIndexBits(int64_t n, const uint16_t* indices, size_t m);

// ---- packing (device encoder -> bulk) --------------------------------------
// Unpacked sparseloco result for one layout: per tensor 4 table entries,
// then for all tensors in order the kept (local index, 2-bit code) pairs,
// chunk after chunk, indices strictly increasing within a chunk.
struct SparseLoCoParts {
  std::vector<float> tables;      // 4 per tensor
  std::vector<uint16_t> indices;  // plan.kept entries
  std::vector<uint8_t> codes;     // plan.kept entries, each 0..3
};
// Unpacked sparse_2bit payload: per tensor 4 table entries; for chunk c of
// the plan its entries [begin[c], begin[c+1]) of (local index, code),
// indices strictly increasing within a chunk.
struct Sparse2BitParts {
  std::vector<float> tables;      // 4 per tensor
  std::vector<uint32_t> begin;    // chunks + 1
  std::vector<uint16_t> indices;  // begin.back() entries
  std::vector<uint8_t> codes;     // begin.back() entries, each 0..3
};
// Its exact bulk size (parts well formed for the plan; CHECK).
uint64_t Sparse2BitBytes(const LayoutPlan& plan, const Sparse2BitParts& parts);
struct Int8Parts {
  std::vector<float> scales;  // one per chunk, plan order
  std::vector<int8_t> q;      // P entries, plan order
};

// Fill header (codec, num_elements, layout_digest, topk = plan.topk for
// sparseloco else 0, byte_length, checksum) and bulk. InvalidArgument on
// inconsistent parts: sizes, a plan not made for the layout, indices not
// < chunk size and strictly increasing per chunk, codes > 3, non-finite
// tables/values, int8 q == -128 or a scale not finite and >= 0, bf16 NaN/Inf
// bit patterns. Everything a packer accepts, ParseUpdate accepts.
StatusOr<Encoded> PackSparseLoCo(const ParamLayout& layout, const LayoutPlan& plan, const SparseLoCoParts& parts);
// The header for a bulk already packed in `kind`'s format (the CUDA encoder
// packs on the device): fills codec, element count, layout digest, topk,
// length and checksum. InvalidArgument unless the size is BulkBytes(plan,
// kind); the content is the packer's responsibility.
StatusOr<Encoded> SealPackedBulk(const ParamLayout& layout, const LayoutPlan& plan, CodecKind kind, Bytes bulk);
// The same for a bulk in a Frame (a recycled buffer, shared) with its
// checksum already computed by the caller (BulkChecksum of exactly these
// bytes).
StatusOr<Encoded> SealPackedBulk(const ParamLayout& layout, const LayoutPlan& plan, CodecKind kind, Frame bulk,
                                 uint64_t checksum);
// sparse_2bit: InvalidArgument on sizes, begin not starting at 0 and
// non-decreasing, a count above its chunk's size, indices not < chunk size
// and strictly increasing, codes > 3, non-finite tables, a plan not made for
// the layout. Everything it accepts, ParseUpdate accepts.
StatusOr<Encoded> PackSparse2Bit(const ParamLayout& layout, const LayoutPlan& plan, const Sparse2BitParts& parts);
StatusOr<Encoded> PackInt8(const ParamLayout& layout, const LayoutPlan& plan, const Int8Parts& parts);
StatusOr<Encoded> PackDenseFp32(const ParamLayout& layout, const std::vector<float>& values);
StatusOr<Encoded> PackDenseBf16(const ParamLayout& layout, const std::vector<uint16_t>& bits);
// The aggregate for the downlink: sparse_fp32 when u is sparse and
// BulkBytes(sparse_fp32, nnz) < BulkBytes(dense_fp32), else dense_fp32 (a
// sparse u densified). InvalidArgument on a malformed or non-finite u.
StatusOr<Encoded> PackAggregate(const ParamLayout& layout, const LayoutPlan& plan, const Update& u);

// ---- parsing (bulk -> Update) -----------------------------------------------
// Accepts any of the six codecs and parses by header.codec; whether that
// codec is right for the direction (an uplink: the campaign codec; a
// downlink: dense_fp32, sparse_fp32, sparseloco, sparse_2bit) is the
// caller's check. Checks the header against the layout (element count,
// digest; topk == plan.topk for sparseloco, 0 otherwise), byte_length ==
// bulk size == the exact size the plan gives (sparse_fp32: for its counts;
// sparse_2bit: at least what its counts need before allocating, then
// exactly what its decoded index stream and codes take) before allocating
// anything, the checksum, then every index (< chunk size, strictly
// increasing; a sparse_2bit gap that runs past its chunk or past the index
// stream is an error), pad bits,
// counts (<= chunk size), that every table entry, scale and value is finite,
// scales >= 0, int8 q != -128, no bf16 NaN/Inf. Errors (InvalidArgument for
// content, Corruption for length/checksum) say what and where
// ("sparseloco tensor 3 (blocks.0.w) chunk 7: index 4100 >= chunk size
// 4096"; chunks numbered within their tensor). Never aborts on any input.
// Dense codecs (dense_fp32, dense_bf16, int8) give a dense Update, sparse
// ones a sparse Update.
StatusOr<Update> ParseUpdate(const ParamLayout& layout, const LayoutPlan& plan, const BlobHeader& header,
                             const Bytes& bulk);

// ParseUpdate's checks of a sparseloco payload (the same errors) without
// building the Update: OK iff ParseUpdate accepts it. `stats` gets the
// largest |value| (the same as over ParseUpdate's value vector) and the sum
// of the squared values in fp64, per tensor from how often each of its 4
// table entries is used (deterministic, and as close to the exact sum as a
// sum in entry order, but not bit-equal to one). Reads the indices a pair
// at a time, without a branch per entry: an upload of a 1B-parameter
// model checks in tens of ms on the event loop.
struct PayloadStats {
  float max_abs = 0;
  double sum_sq = 0;
};
Status CheckSparseLoCoPayload(const ParamLayout& layout, const LayoutPlan& plan, const BlobHeader& header,
                              const Bytes& bulk, PayloadStats* stats);

// Checks that header and bulk agree (length, checksum) and that the header
// matches `layout` and `expected_codec`, with topk 0 for every codec but
// sparseloco (1..4096 there; ParseUpdate also needs it equal to plan.topk).
// Does not check the length against the codec's format (ParseUpdate does).
Status CheckBlob(const ParamLayout& layout, CodecKind expected_codec, const BlobHeader& header,
                 const Bytes& bulk);

// ---- aggregation ------------------------------------------------------------
// Mean of R >= 1 updates, summed in the given order in fp32, then scaled by
// 1/R (kMeanAll) or 1/(number of updates with an entry there)
// (kMeanChoosers; dense updates have an entry everywhere). All sparse ->
// sparse result on the union of indices, built chunk by chunk with a
// chunk-sized scratch (never a dense P-sized buffer), indices increasing;
// any dense -> dense. Each coordinate's sum starts at 0.0f and adds the
// entries in update order, then is multiplied by the fp32 1.0f / R (or
// 1.0f / n): bit-identical to the same sum done densely in the same order.
// Inputs must be well formed for the plan (CHECK).
// Weighted (`weights` not empty, one positive finite weight per update,
// e.g. tokens processed): update i counts w_i times; each coordinate's sum
// adds w_i * entry and is divided by the sum of the weights (kMeanAll) or of
// the weights of the updates with an entry there (kMeanChoosers). Weights
// are normalised to mean 1 first, so equal weights give exactly the
// unweighted result.
Update AggregateMean(const LayoutPlan& plan, const std::vector<const Update*>& updates, AggregationRule rule,
                     const std::vector<double>& weights = {});

// An input of AggregateMean: a parsed Update, or the bulk of a sparseloco
// payload that ParseUpdate accepted for the plan, read in place chunk by
// chunk as it is summed (the entries ParseUpdate would give, so the mean is
// bit-identical to the parsed one's). The coordinator holds a round's
// sparseloco uploads this way: 1.75 bytes per kept value instead of the
// parsed Update's 6. Exactly one of the two is set; the bulk's size must be
// BulkBytes(plan, sparseloco) (CHECK), its contents are trusted.
struct AggregateInput {
  const Update* update = nullptr;
  const Bytes* sparseloco = nullptr;
};
// The same mean over such inputs. `pool` (may be null: the calling thread)
// spreads the chunks over its threads; the result does not depend on it.
Update AggregateMean(const LayoutPlan& plan, const std::vector<AggregateInput>& inputs, AggregationRule rule,
                     const std::vector<double>& weights, ThreadPool* pool);

// The same mean of sparse inputs (no dense Update among them), packed as
// PackAggregate packs it (sparse_fp32, or dense_fp32 when that is smaller:
// the same bytes) straight into `buffer`, and, when `theta` is not null,
// applied as ApplyUpdate applies it (theta <- theta - mean, the same
// bits), with no Update built: two passes over the inputs, the first
// counting each chunk's entries (which fixes where every entry of the
// payload goes), the second summing and writing them. `buffer` is resized
// to the payload and overwritten, never read: a buffer the caller keeps
// from round to round is written without a page fault per 4 KiB (a fresh
// one faults every page in; on a VM at a few hundred MB/s). `nnz` gets the
// mean's entry count; `theta_digest` (may be null) ValuesDigest(theta)
// after the apply, hashed beside the payload's checksum. `pool` as
// AggregateMean's; nothing depends on it.
// FailedPrecondition, with nothing written anywhere, unless the inputs'
// largest magnitudes and the weights bound every sum and mean far from
// fp32 overflow (so it can never be non-finite; PackAggregate would refuse
// it): the caller falls back to AggregateMean + PackAggregate. Inputs must
// be well formed for the plan (CHECK), as for AggregateMean.
// Wall seconds of PackAggregateMean's parts (informational): the count,
// the sums (written, applied), the checksum and digest.
struct PackMeanTimes {
  double count_s = 0, sum_s = 0, hash_s = 0;
};
StatusOr<Encoded> PackAggregateMean(const ParamLayout& layout, const LayoutPlan& plan,
                                    const std::vector<AggregateInput>& inputs, AggregationRule rule,
                                    const std::vector<double>& weights, ThreadPool* pool, std::shared_ptr<Bytes> buffer,
                                    std::vector<float>* theta, uint64_t* nnz, uint64_t* theta_digest = nullptr,
                                    PackMeanTimes* times = nullptr);

}  // namespace lowband
