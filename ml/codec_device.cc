#include "ml/codec_device.h"

#include "base/thread_pool.h"

#include <ATen/Parallel.h>
#ifdef LOWBAND_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>

#include "ml/codec_cuda.h"
#endif

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <utility>

namespace lowband {
namespace {

std::string TorchMessage(const char* what, const c10::Error& e) {
  return std::string(what) + ": " + e.what_without_backtrace();
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// One group of equally sized chunks of a tensor (full tiles, right edge,
// bottom edge, corner; or full 1-D chunks, tail) as a strided view of the
// tensor's flat storage: leading dims enumerate the chunks in plan order,
// the last two (or one, for 1-D chunks) are rows x cols.
struct Group {
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
  int64_t offset = 0;  // tensor-relative storage offset of the view
  int64_t count = 0;   // chunks
  int32_t rows = 1;
  int32_t cols = 0;
  std::vector<int64_t> origins;  // tensor-relative flat index of each chunk's (0, 0)
};

// The chunk groups of a tensor, exactly as the chunk plan of codec.h orders
// them; checked against PlanLayout at Create.
std::vector<Group> TensorGroups(const std::vector<int64_t>& shape, int64_t numel) {
  std::vector<Group> groups;
  if (numel == 0) return groups;
  if (shape.size() == 2) {
    const int64_t r = shape[0], c = shape[1], t = kTileSide;
    const int64_t rf = r / t, cf = c / t, rr = r % t, rc = c % t;
    if (rf > 0 && cf > 0) {
      Group g{{rf, cf, t, t}, {t * c, t, c, 1}, 0, rf * cf, static_cast<int32_t>(t), static_cast<int32_t>(t), {}};
      for (int64_t i = 0; i < rf; ++i)
        for (int64_t j = 0; j < cf; ++j) g.origins.push_back(i * t * c + j * t);
      groups.push_back(std::move(g));
    }
    if (rf > 0 && rc > 0) {
      Group g{{rf, t, rc}, {t * c, c, 1}, cf * t, rf, static_cast<int32_t>(t), static_cast<int32_t>(rc), {}};
      for (int64_t i = 0; i < rf; ++i) g.origins.push_back(i * t * c + cf * t);
      groups.push_back(std::move(g));
    }
    if (rr > 0 && cf > 0) {
      Group g{{cf, rr, t}, {t, c, 1}, rf * t * c, cf, static_cast<int32_t>(rr), static_cast<int32_t>(t), {}};
      for (int64_t j = 0; j < cf; ++j) g.origins.push_back(rf * t * c + j * t);
      groups.push_back(std::move(g));
    }
    if (rr > 0 && rc > 0) {
      const int64_t o = rf * t * c + cf * t;
      groups.push_back(
          Group{{1, rr, rc}, {rr * c, c, 1}, o, 1, static_cast<int32_t>(rr), static_cast<int32_t>(rc), {o}});
    }
    return groups;
  }
  const int64_t nf = numel / kChunkElems, tail = numel % kChunkElems;
  if (nf > 0) {
    Group g{{nf, kChunkElems}, {kChunkElems, 1}, 0, nf, 1, static_cast<int32_t>(kChunkElems), {}};
    for (int64_t i = 0; i < nf; ++i) g.origins.push_back(i * kChunkElems);
    groups.push_back(std::move(g));
  }
  if (tail > 0) {
    const int64_t o = nf * kChunkElems;
    groups.push_back(Group{{1, tail}, {tail, 1}, o, 1, 1, static_cast<int32_t>(tail), {o}});
  }
  return groups;
}

// A group placed in a bucket: `src` views the flat error buffer, `dst` the
// bucket's rows of the workspace, both shaped like the group.
struct Piece {
  Group group;
  int64_t flat_offset = 0;  // tensor offset in the flat buffer
  int64_t row0 = 0;         // first bucket row
  torch::Tensor src;
  torch::Tensor dst;
};

// All chunks of the layout with the same rows x cols and k, gathered into one
// [count, rows * cols] workspace matrix so one topk / reduction serves them
// all (the 52 tensors of the quickstart model make about 10 buckets).
struct Bucket {
  int32_t rows = 1, cols = 0, k = 0;
  int64_t count = 0;         // chunks (rows of the matrix)
  int64_t ws_offset = 0;     // first workspace element
  int64_t chunk_offset = 0;  // first chunk in bucket order over all buckets
  std::vector<Piece> pieces;
  std::vector<int64_t> plan_chunk;  // plan chunk index of each row
  torch::Tensor matrix;             // [count, rows * cols] view of the workspace
  // sparseloco, on the device
  torch::Tensor origin;  // [count, 1] int64: flat buffer index of each chunk's (0, 0)
  torch::Tensor extra;   // [count, 1] int64: row stride - cols (a chunk row skips this much)
  torch::Tensor dest;    // [count * k] int64: position of each kept value in plan order
  int64_t numel() const { return static_cast<int64_t>(rows) * cols; }
};

// Geometry of a plan chunk for the CPU select kernel.
struct ChunkGeom {
  int64_t base = 0;    // flat buffer index of (0, 0)
  int64_t stride = 0;  // between chunk rows
  int32_t rows = 1, cols = 0, k = 0;
  int64_t kept_offset = 0;  // first kept value in plan order
};

// Order-preserving key of |x|: the bits without the sign. NaN sorts above
// infinity, as in torch::topk.
inline uint32_t MagnitudeKey(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b & 0x7fffffffu;
}

// Candidate of the selection: magnitude key above, inverted local index
// below, so a larger value is a larger |x|, then a lower index; all distinct.
inline uint64_t Candidate(uint32_t key, uint32_t l) { return (static_cast<uint64_t>(key) << 32) | (~l); }

// Appends Candidate(key, l0 + c) for every row[c] (c < cols) whose key is
// >= threshold; returns the new count. Most elements fail the test, so the
// SSE2 path tests 8 at a time and only walks the set bits.
inline int64_t AppendCandidates(const float* row, int64_t cols, uint32_t l0, uint32_t threshold, uint64_t* cand,
                                int64_t m) {
  int64_t c = 0;
#if defined(__SSE2__)
  // keys are < 2^31, so a signed compare against threshold - 1 is key >= threshold
  const __m128i below = _mm_set1_epi32(static_cast<int32_t>(threshold) - 1);
  const __m128i abs_mask = _mm_set1_epi32(0x7fffffff);
  for (; c + 8 <= cols; c += 8) {
    const __m128i a = _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)), abs_mask);
    const __m128i b = _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c + 4)), abs_mask);
    int bits = _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(a, below))) |
               (_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(b, below))) << 4);
    while (bits != 0) {
      const int j = __builtin_ctz(bits);
      bits &= bits - 1;
      cand[m++] = Candidate(MagnitudeKey(row[c + j]), l0 + static_cast<uint32_t>(c + j));
    }
  }
#endif
  for (; c < cols; ++c) {
    const uint32_t key = MagnitudeKey(row[c]);
    cand[m] = Candidate(key, l0 + static_cast<uint32_t>(c));
    m += key >= threshold;
  }
  return m;
}

// row[c] <- d[c] + beta * row[c], c < cols: a multiply, then an add.
inline void AccumulateRow(float* row, const float* d, float beta, int64_t cols) {
  int64_t c = 0;
#if defined(__SSE2__)
  // Spelled out: GCC's -O2 cost model leaves this loop scalar.
  const __m128 b = _mm_set1_ps(beta);
  for (; c + 8 <= cols; c += 8) {
    const __m128 r0 = _mm_add_ps(_mm_loadu_ps(d + c), _mm_mul_ps(b, _mm_loadu_ps(row + c)));
    const __m128 r1 = _mm_add_ps(_mm_loadu_ps(d + c + 4), _mm_mul_ps(b, _mm_loadu_ps(row + c + 4)));
    _mm_storeu_ps(row + c, r0);
    _mm_storeu_ps(row + c + 4, r1);
  }
#endif
  for (; c < cols; ++c) row[c] = d[c] + beta * row[c];
}

constexpr int64_t kSamples = 256;

// The rank-th largest of keys[0..n) (1 <= rank <= n); keys may be reordered.
// For a small rank, a sorted run of the rank largest so far: after the first
// few keys most fail one well-predicted compare, cheaper than nth_element's
// partitioning.
template <typename Key>
Key RankedKey(Key* keys, int64_t n, int64_t rank) {
  constexpr int64_t kMaxRun = 32;
  if (rank > kMaxRun || rank * 2 > n) {
    std::nth_element(keys, keys + rank - 1, keys + n, std::greater<Key>());
    return keys[rank - 1];
  }
  Key top[kMaxRun];
  std::copy(keys, keys + rank, top);
  std::sort(top, top + rank, std::greater<Key>());
  for (int64_t i = rank; i < n; ++i) {
    const Key key = keys[i];
    if (key <= top[rank - 1]) continue;
    int64_t j = rank - 1;
    for (; j > 0 && top[j - 1] < key; --j) top[j] = top[j - 1];
    top[j] = key;
  }
  return top[rank - 1];
}

// Top-k of one chunk by |x|, ties to the lower local index, written in
// ascending local index order (local index, flat buffer index, value).
// A threshold from a strided sample keeps a few times k candidates (one pass
// over the chunk), an nth_element over the candidates finds the k-th; if the
// sample overshoots (fewer than k candidates) every element becomes a
// candidate, so the result is exact whatever the data.
void SelectChunk(const float* e, const ChunkGeom& g, uint64_t* cand, uint64_t* scratch, uint16_t* local_out,
                 int64_t* flat_out, float* value_out) {
  const int64_t n = static_cast<int64_t>(g.rows) * g.cols;
  const int64_t k = g.k;
  const float* base = e + g.base;
  auto emit = [&](int64_t j, uint32_t l) {
    const int64_t r = g.rows == 1 ? 0 : l / static_cast<uint32_t>(g.cols);
    const int64_t offset = r * g.stride + (l - r * g.cols);
    local_out[j] = static_cast<uint16_t>(l);
    flat_out[j] = g.base + offset;
    value_out[j] = base[offset];
  };
  if (k >= n) {
    for (int64_t l = 0; l < n; ++l) emit(l, static_cast<uint32_t>(l));
    return;
  }
  // Candidates: every element whose key reaches a threshold taken from a
  // strided sample; lower thresholds if that leaves fewer than k.
  uint32_t sample[kSamples];
  const bool sampled = n >= 4 * kSamples;
  int64_t x = 0;  // expected sample rank of the k-th element
  if (sampled) {
    // Every step-th element in local order, walking (r, c) without divisions.
    const int64_t step = n / kSamples;
    int64_t r = 0, c = 0;
    for (int64_t i = 0; i < kSamples; ++i) {
      sample[i] = MagnitudeKey(base[r * g.stride + c]);
      c += step;
      while (c >= g.cols) {
        c -= g.cols;
        ++r;
      }
    }
    x = (k * kSamples + n - 1) / n;
  }
  int64_t m = 0;
  for (int attempt = sampled ? 0 : 2; attempt < 3; ++attempt) {
    // Rank 2x + 3 leaves fewer than k candidates in about 0.3 % of chunks
    // (k = 64 of 4096), 8x + 8 almost never; threshold 0 takes everything.
    uint32_t threshold = 0;
    if (attempt < 2) {
      threshold = RankedKey(sample, kSamples, std::min<int64_t>(kSamples, attempt == 0 ? 2 * x + 3 : 8 * x + 8));
    }
    m = 0;
    for (int64_t r = 0; r < g.rows; ++r) {
      m = AppendCandidates(base + r * g.stride, g.cols, static_cast<uint32_t>(r * g.cols), threshold, cand, m);
    }
    if (m >= k) break;
  }
  std::copy(cand, cand + m, scratch);
  const uint64_t kth = RankedKey(scratch, m, k);
  int64_t j = 0;
  for (int64_t i = 0; i < m; ++i) {
    if (cand[i] >= kth) emit(j++, ~static_cast<uint32_t>(cand[i]));
  }
}

// A run of elements [begin, end) of one tensor: the CPU error-feedback
// pass's unit of work.
struct Span {
  size_t tensor = 0;
  int64_t begin = 0, end = 0;
};
constexpr int64_t kSpanElems = 1 << 20;

// A run of kept values (plan order) inside one tensor: the host quantiser's
// unit of work.
struct KeptBlock {
  size_t tensor = 0;
  int64_t begin = 0, end = 0;
};
constexpr int64_t kKeptBlock = 1 << 15;

bool AllFiniteFloats(const float* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

}  // namespace

struct DeviceEncoder::Impl {
  ParamLayout layout;
  CodecConfig config;
  torch::Device device{torch::kCPU};
  LayoutPlan plan;
  double beta = 0;
  bool keeps_error = false;  // a persistent error-feedback buffer
  bool cpu_kernel = false;   // sparseloco on a CPU: SelectChunk and the host quantiser

  torch::Tensor e_flat;                    // [P] fp32; scratch when !keeps_error
  std::vector<torch::Tensor> e_views;      // layout shapes, views into e_flat
  std::vector<torch::Tensor> error_views;  // e_views when keeps_error, else empty
  std::vector<int64_t> tensor_of_chunk;    // per plan chunk

  // CPU sparseloco: select kernel and host quantiser, on `pool` (one set of
  // threads for the encoder's life, at::get_num_threads() with the caller).
  // Not at::parallel_for: with LibTorch's OpenMP backend its parallel body is
  // a header template that runs serially in a file built without -fopenmp,
  // and linking our own OpenMP runtime next to the one LibTorch bundles
  // would give two thread pools.
  std::unique_ptr<ThreadPool> pool;
  std::vector<ChunkGeom> geom;         // per plan chunk
  std::vector<KeptBlock> blocks;       // kept values in blocks inside one tensor
  std::vector<int64_t> tensor_blocks;  // T + 1: first block of each tensor
  std::vector<Span> spans;             // the layout in runs for the error-feedback pass
  SparseLoCoParts cpu_parts;           // reused buffers
  std::vector<int64_t> cpu_flat;
  std::vector<float> cpu_values;

  // buckets (int8; sparseloco without the CPU kernel)
  std::vector<Bucket> buckets;
  torch::Tensor ws;                         // [P] fp32 workspace, bucket after bucket
  std::vector<int64_t> chunk_ws_pos;        // per plan chunk: first workspace element
  std::vector<int64_t> chunk_bucket_index;  // per plan chunk: index in bucket order
  std::vector<int64_t> chunk_plan_pos;      // per plan chunk: first element in plan order
  // int8
  torch::Tensor int8_out;  // [P rounded up to 4, then 4 * chunks] int8: q, then the scales' bytes
  int64_t int8_scale_offset = 0;
  torch::Tensor int8_scratch;  // [P] fp32, bucket order
  // 127 as a one-element tensor on the device: dividing by a host scalar
  // makes CUDA multiply by the reciprocal, an ulp away from the CPU's true
  // division, and the scales must agree bit for bit across devices.
  torch::Tensor int8_127;
  Int8Parts int8_parts;        // reused host buffers
  // dense_bf16
  torch::Tensor bf16_out;           // [P] bf16
  std::vector<uint16_t> bf16_bits;  // reused host buffer
  // every codec on CUDA
  torch::Tensor staging;  // pinned host buffer for the device->host copy

  // sparseloco per-tensor segments of the kept values (plan order), on the device
  torch::Tensor seg;         // [K] int64 tensor index of each kept value
  torch::Tensor seg4;        // [K] int64 4 * seg
  torch::Tensor kstart;      // [T] int64 first kept value of each tensor
  torch::Tensor kend;        // [T] int64 one past its last
  torch::Tensor kept_count;  // [T] fp64, at least 1
  torch::Tensor bins;        // [4] int64 0..3

#ifdef LOWBAND_CUDA_KERNELS
  // sparseloco, int8 and dense_bf16 as CUDA kernels that pack the bulk on
  // the device (codec_cuda.h)
  bool cuda_kernel = false;
  torch::Tensor cu_chunks, cu_blocks, cu_tensors;  // descriptor arrays, as bytes on the device
  torch::Tensor cu_local, cu_value, cu_flat, cu_code, cu_decoded;  // [K] (sparseloco)
  torch::Tensor cu_block_stats, cu_tensor_stats;
  torch::Tensor cu_bulk;  // the bulk; int8 and bf16: then the bad-tensor flag, 4-aligned
  int64_t cu_bad_offset = 0;
  torch::Tensor cu_delta_ptrs;               // [T] int64 device pointers of the last deltas
  std::vector<int64_t> cu_delta_ptrs_host;   // what cu_delta_ptrs holds
  std::vector<int64_t> cu_table_offsets;     // per tensor: its table's first byte in the bulk
  int64_t cu_groups = 0;
  std::vector<std::pair<std::string, double>>* phases = nullptr;  // DeviceEncoderOptions::cuda_phases
  Status BuildCuda(const std::vector<int64_t>& kept_offset);
  const float* const* CudaDeltas(const std::vector<torch::Tensor>& deltas, std::vector<torch::Tensor>* keep);
  StatusOr<Encoded> EncodeSparseLoCoCuda(const std::vector<torch::Tensor>& deltas, std::vector<torch::Tensor>* sent);
  StatusOr<Encoded> EncodeDenseCuda(const std::vector<torch::Tensor>& deltas, std::vector<torch::Tensor>* sent);
  StatusOr<Encoded> SealCudaBulk(int64_t bytes);
  // Host bulks handed out in Encoded frames and reused once no frame holds
  // one: fresh memory costs a page fault per 4 KiB, which was most of a
  // large int8 or bf16 encode. Each is page-locked once, so the
  // device->host copy lands in it directly. At most kHostBulks; past that
  // (the caller keeps them all) a fresh buffer through the staging copy.
  struct HostBulk {
    std::shared_ptr<Bytes> bytes;
    bool pinned = false;
  };
  static constexpr size_t kHostBulks = 3;
  std::vector<HostBulk> host_bulks;
  torch::Tensor cu_flag_host;  // pinned: the int8/bf16 bad-tensor flag
  std::shared_ptr<Bytes> FreeHostBulk(int64_t bytes);
  ~Impl() {
    for (HostBulk& b : host_bulks) {
      if (b.pinned) cuda_codec::UnpinHost(b.bytes->data());
    }
  }
#endif

  torch::TensorOptions F32() const { return torch::TensorOptions().dtype(torch::kFloat32).device(device); }
  torch::TensorOptions I64() const { return torch::TensorOptions().dtype(torch::kInt64).device(device); }

  Status Build();
  Status CheckDeltas(const std::vector<torch::Tensor>& deltas) const;
  void AccumulateError(const std::vector<torch::Tensor>& deltas);
  void GatherBuckets(bool magnitude);
  StatusOr<Encoded> EncodeSparseLoCo(std::vector<torch::Tensor>* sent);
  StatusOr<Encoded> EncodeSparseLoCoCpu(const std::vector<torch::Tensor>& deltas, std::vector<torch::Tensor>* sent);
  StatusOr<Encoded> EncodeInt8(std::vector<torch::Tensor>* sent);
  StatusOr<Encoded> EncodeBf16(std::vector<torch::Tensor>* sent);
  StatusOr<Encoded> EncodeFp32(const std::vector<torch::Tensor>& deltas, std::vector<torch::Tensor>* sent);
  std::vector<torch::Tensor> LayoutViews(const torch::Tensor& flat) const;
  torch::Tensor ToHost(const torch::Tensor& t);
  Status NonFinite(const char* what, size_t tensor);
};

std::vector<torch::Tensor> DeviceEncoder::Impl::LayoutViews(const torch::Tensor& flat) const {
  std::vector<torch::Tensor> views;
  views.reserve(layout.tensors.size());
  for (size_t t = 0; t < layout.tensors.size(); ++t) {
    views.push_back(flat.narrow(0, plan.tensors[t].offset, plan.tensors[t].numel).view(layout.tensors[t].shape));
  }
  return views;
}

// A contiguous host copy of t: t itself on a CPU; on CUDA through a pinned
// staging buffer kept across calls (the payload size is fixed per codec), a
// faster copy than into pageable memory.
torch::Tensor DeviceEncoder::Impl::ToHost(const torch::Tensor& t) {
  if (t.device().is_cpu()) return t.contiguous();
  if (!staging.defined() || staging.scalar_type() != t.scalar_type() || staging.sizes() != t.sizes()) {
    staging = torch::empty(t.sizes(), torch::TensorOptions().dtype(t.scalar_type()).pinned_memory(true));
  }
  staging.copy_(t);  // synchronous: waits for the kernels that produced t
  return staging;
}

Status DeviceEncoder::Impl::NonFinite(const char* what, size_t tensor) {
  if (e_flat.defined()) e_flat.zero_();
  return InvalidArgument(std::string("encode: non-finite ") + what + " in tensor " + std::to_string(tensor) + " (" +
                         layout.tensors[tensor].name + "); error feedback reset");
}

Status DeviceEncoder::Impl::Build() {
  const size_t num_tensors = layout.tensors.size();
  if (plan.tensors.size() != num_tensors || plan.numel != layout.numel()) {
    return Internal("encoder: chunk plan does not match the layout");
  }
  tensor_of_chunk.assign(plan.chunks.size(), 0);
  chunk_plan_pos.assign(plan.chunks.size(), 0);
  std::vector<int64_t> kept_offset(plan.chunks.size(), 0);
  {
    int64_t pos = 0, kept = 0;
    for (size_t t = 0; t < num_tensors; ++t) {
      const TensorPlan& tp = plan.tensors[t];
      for (size_t i = 0; i < tp.num_chunks; ++i) {
        const size_t c = tp.first_chunk + i;
        if (c >= plan.chunks.size()) return Internal("encoder: chunk plan out of range");
        tensor_of_chunk[c] = static_cast<int64_t>(t);
        chunk_plan_pos[c] = pos;
        kept_offset[c] = kept;
        pos += plan.chunks[c].numel();
        kept += plan.chunks[c].k;
      }
    }
    if (pos != plan.numel || kept != plan.kept) return Internal("encoder: chunk plan sizes do not add up");
  }

  // Check the plan against the groups this file views the tensors as.
  std::vector<std::vector<Group>> groups(num_tensors);
  for (size_t t = 0; t < num_tensors; ++t) {
    const TensorPlan& tp = plan.tensors[t];
    groups[t] = TensorGroups(layout.tensors[t].shape, tp.numel);
    size_t c = tp.first_chunk;
    for (const Group& g : groups[t]) {
      const size_t first = c;
      for (int64_t o : g.origins) {
        if (c >= tp.first_chunk + tp.num_chunks) return Internal("encoder: chunk plan has too few chunks");
        const Chunk& ch = plan.chunks[c];
        // Equal chunks of a group share k: a bucket serves them with one topk.
        if (ch.origin != o || ch.rows != g.rows || ch.cols != g.cols || ch.k != plan.chunks[first].k) {
          return Internal("encoder: chunk plan differs from the tile order at tensor " + std::to_string(t) + " chunk " +
                          std::to_string(c - tp.first_chunk));
        }
        if (ch.k < 1 || ch.k > ch.numel()) return Internal("encoder: chunk plan has a bad k");
        ++c;
      }
    }
    if (c != tp.first_chunk + tp.num_chunks) return Internal("encoder: chunk plan has extra chunks");
  }

  const int64_t P = plan.numel;
  if (config.kind != CodecKind::kDenseFp32) {
    e_flat = torch::zeros({P}, F32());
    e_views = LayoutViews(e_flat);
    if (keeps_error) error_views = e_views;
  }

  if (config.kind == CodecKind::kSparseLoCo && cpu_kernel) {
    int64_t pos = 0;
    for (size_t t = 0; t < num_tensors; ++t) {
      tensor_blocks.push_back(static_cast<int64_t>(blocks.size()));
      const int64_t end = pos + plan.tensors[t].kept;
      for (int64_t b = pos; b < end; b += kKeptBlock) blocks.push_back(KeptBlock{t, b, std::min(end, b + kKeptBlock)});
      pos = end;
    }
    tensor_blocks.push_back(static_cast<int64_t>(blocks.size()));
    for (size_t t = 0; t < num_tensors; ++t) {
      for (int64_t b = 0; b < plan.tensors[t].numel; b += kSpanElems) {
        spans.push_back(Span{t, b, std::min(plan.tensors[t].numel, b + kSpanElems)});
      }
    }
    geom.resize(plan.chunks.size());
    for (size_t c = 0; c < plan.chunks.size(); ++c) {
      const Chunk& ch = plan.chunks[c];
      const TensorPlan& tp = plan.tensors[tensor_of_chunk[c]];
      geom[c] = ChunkGeom{tp.offset + ch.origin, ch.rows > 1 ? tp.row_stride : ch.cols, ch.rows, ch.cols, ch.k,
                          kept_offset[c]};
    }
  }

#ifdef LOWBAND_CUDA_KERNELS
  if (cuda_kernel) return BuildCuda(kept_offset);
#endif
  const bool need_buckets = config.kind == CodecKind::kInt8 || (config.kind == CodecKind::kSparseLoCo && !cpu_kernel);
  if (need_buckets) {
    std::map<std::tuple<int32_t, int32_t, int32_t>, size_t> index;
    for (size_t t = 0; t < num_tensors; ++t) {
      size_t c = plan.tensors[t].first_chunk;
      for (Group& g : groups[t]) {
        const int32_t k = config.kind == CodecKind::kSparseLoCo ? plan.chunks[c].k : 0;
        auto key = std::make_tuple(g.rows, g.cols, k);
        auto it = index.find(key);
        if (it == index.end()) {
          it = index.emplace(key, buckets.size()).first;
          Bucket b;
          b.rows = g.rows;
          b.cols = g.cols;
          b.k = k;
          buckets.push_back(std::move(b));
        }
        Bucket& b = buckets[it->second];
        Piece p;
        p.flat_offset = plan.tensors[t].offset;
        p.row0 = b.count;
        for (int64_t i = 0; i < g.count; ++i) b.plan_chunk.push_back(static_cast<int64_t>(c + i));
        b.count += g.count;
        c += g.count;
        p.group = std::move(g);
        b.pieces.push_back(std::move(p));
      }
    }
    ws = torch::empty({P}, F32());
    chunk_ws_pos.assign(plan.chunks.size(), 0);
    chunk_bucket_index.assign(plan.chunks.size(), 0);
    int64_t ws_offset = 0, chunk_offset = 0;
    for (Bucket& b : buckets) {
      b.ws_offset = ws_offset;
      b.chunk_offset = chunk_offset;
      b.matrix = ws.narrow(0, ws_offset, b.count * b.numel()).view({b.count, b.numel()});
      for (int64_t r = 0; r < b.count; ++r) {
        chunk_ws_pos[b.plan_chunk[r]] = ws_offset + r * b.numel();
        chunk_bucket_index[b.plan_chunk[r]] = chunk_offset + r;
      }
      for (Piece& p : b.pieces) {
        p.src = e_flat.as_strided(p.group.sizes, p.group.strides, p.flat_offset + p.group.offset);
        p.dst = b.matrix.narrow(0, p.row0, p.group.count).view(p.group.sizes);
      }
      if (config.kind == CodecKind::kSparseLoCo) {
        std::vector<int64_t> origin, extra, dest;
        origin.reserve(b.count);
        extra.reserve(b.count);
        dest.reserve(b.count * b.k);
        for (int64_t r = 0; r < b.count; ++r) {
          const int64_t c = b.plan_chunk[r];
          const TensorPlan& tp = plan.tensors[tensor_of_chunk[c]];
          origin.push_back(tp.offset + plan.chunks[c].origin);
          extra.push_back(b.rows > 1 ? tp.row_stride - b.cols : 0);
          for (int32_t j = 0; j < b.k; ++j) dest.push_back(kept_offset[c] + j);
        }
        auto host = torch::TensorOptions().dtype(torch::kInt64);
        b.origin = torch::tensor(origin, host).view({b.count, 1}).to(device);
        b.extra = torch::tensor(extra, host).view({b.count, 1}).to(device);
        b.dest = torch::tensor(dest, host).to(device);
      }
      ws_offset += b.count * b.numel();
      chunk_offset += b.count;
    }
  }

  if (config.kind == CodecKind::kDenseBf16) {
    bf16_out = torch::empty({P}, torch::TensorOptions().dtype(torch::kBFloat16).device(device));
  }
  if (config.kind == CodecKind::kInt8) {
    int8_scale_offset = (P + 3) / 4 * 4;
    int8_out = torch::empty({int8_scale_offset + 4 * static_cast<int64_t>(plan.chunks.size())},
                            torch::TensorOptions().dtype(torch::kInt8).device(device));
    int8_scratch = torch::empty({P}, F32());
    int8_127 = torch::full({1}, 127.0f, F32());
  }

  if (config.kind == CodecKind::kSparseLoCo && !cpu_kernel) {
    std::vector<int64_t> seg_host, start_host, end_host;
    std::vector<double> count_host;
    seg_host.reserve(plan.kept);
    int64_t pos = 0;
    for (size_t t = 0; t < num_tensors; ++t) {
      const int64_t kept = plan.tensors[t].kept;
      start_host.push_back(pos);
      pos += kept;
      end_host.push_back(pos);
      count_host.push_back(static_cast<double>(std::max<int64_t>(kept, 1)));
      seg_host.insert(seg_host.end(), kept, static_cast<int64_t>(t));
    }
    auto host = torch::TensorOptions().dtype(torch::kInt64);
    seg = torch::tensor(seg_host, host).to(device);
    seg4 = seg * 4;
    kstart = torch::tensor(start_host, host).to(device);
    kend = torch::tensor(end_host, host).to(device);
    kept_count = torch::tensor(count_host, torch::TensorOptions().dtype(torch::kFloat64)).to(device);
    bins = torch::arange(4, I64());
  }
  return Status::Ok();
}

Status DeviceEncoder::Impl::CheckDeltas(const std::vector<torch::Tensor>& deltas) const {
  if (deltas.size() != layout.tensors.size()) {
    return InvalidArgument("encode: " + std::to_string(deltas.size()) + " tensors, layout has " +
                           std::to_string(layout.tensors.size()));
  }
  for (size_t t = 0; t < deltas.size(); ++t) {
    const torch::Tensor& d = deltas[t];
    const std::string where = "encode: tensor " + std::to_string(t) + " (" + layout.tensors[t].name + ")";
    if (!d.defined()) return InvalidArgument(where + " is undefined");
    if (d.scalar_type() != torch::kFloat32) return InvalidArgument(where + " is not float32");
    if (d.device() != device)
      return InvalidArgument(where + " is on " + d.device().str() + ", encoder on " + device.str());
    if (d.sizes().vec() != layout.tensors[t].shape) {
      return InvalidArgument(where + " has shape " + ShapeString(d.sizes().vec()) + ", layout says " +
                             ShapeString(layout.tensors[t].shape));
    }
  }
  return Status::Ok();
}

void DeviceEncoder::Impl::AccumulateError(const std::vector<torch::Tensor>& deltas) {
  for (size_t t = 0; t < deltas.size(); ++t) {
    torch::Tensor& e = e_views[t];
    if (keeps_error) {
      torch::add_out(e, deltas[t], e, beta);  // e = delta + beta * e, one pass
    } else {
      e.copy_(deltas[t]);
    }
  }
}

// Workspace <- the error buffer (or its magnitude) in bucket order.
void DeviceEncoder::Impl::GatherBuckets(bool magnitude) {
  for (Bucket& b : buckets) {
    for (Piece& p : b.pieces) {
      if (magnitude) {
        torch::abs_out(p.dst, p.src);
      } else {
        p.dst.copy_(p.src);
      }
    }
  }
}

StatusOr<Encoded> DeviceEncoder::Impl::EncodeSparseLoCo(std::vector<torch::Tensor>* sent) {
  const int64_t K = plan.kept;
  const int64_t T = static_cast<int64_t>(layout.tensors.size());
  SparseLoCoParts parts;
  if (K == 0) {  // nothing to keep (empty tensors only): every table is the empty-bin default 0
    parts.tables.assign(4 * T, 0.0f);
    if (sent) *sent = LayoutViews(torch::zeros({plan.numel}, F32()));
    return PackSparseLoCo(layout, plan, parts);
  }

  // 1. Kept positions in plan order: local index, flat buffer index, value.
  GatherBuckets(/*magnitude=*/true);
  torch::Tensor local = torch::empty({K}, I64());
  torch::Tensor flat = torch::empty({K}, I64());
  for (Bucket& b : buckets) {
    torch::Tensor idx = std::get<1>(torch::topk(b.matrix, b.k, /*dim=*/1, /*largest=*/true, /*sorted=*/false));
    idx = std::get<0>(idx.sort(/*dim=*/1));
    torch::Tensor f = idx + b.origin;
    if (b.rows > 1) f.add_(idx.div(b.cols, "trunc").mul_(b.extra));
    local.index_copy_(0, b.dest, idx.view({-1}));
    flat.index_copy_(0, b.dest, f.view({-1}));
  }
  torch::Tensor v = e_flat.take(flat);

  // 2. Per-tensor shift and scale. Segment sums as differences of an fp64
  //    running sum: a fixed order (deterministic on CUDA, unlike
  //    index_add_'s atomics) and far more precision than fp32 needs.
  auto segment_sums = [&](const torch::Tensor& x) {  // x [w, K] fp64 -> [w, T]
    torch::Tensor cs = torch::zeros({x.size(0), K + 1}, x.options());
    torch::Tensor body = cs.narrow(1, 1, K);
    torch::cumsum_out(body, x, 1);
    return cs.index_select(1, kend) - cs.index_select(1, kstart);
  };
  torch::Tensor vd = v.to(torch::kFloat64).unsqueeze(0);                                 // [1, K]
  torch::Tensor shift = (segment_sums(vd).squeeze(0) / kept_count).to(torch::kFloat32);  // [T]
  torch::Tensor dev = (v - shift.index_select(0, seg)).abs_().to(torch::kFloat64).unsqueeze(0);
  torch::Tensor scale = (segment_sums(dev).squeeze(0) / kept_count).to(torch::kFloat32);  // [T]

  // 3. Codes and the table of bin means.
  torch::Tensor thresholds = torch::stack({shift - scale, shift, shift + scale}, 1);   // [T, 3]
  torch::Tensor code = v.unsqueeze(1).ge(thresholds.index_select(0, seg)).sum(1);      // [K] int64 0..3
  torch::Tensor onehot = code.unsqueeze(0).eq(bins.unsqueeze(1)).to(torch::kFloat64);  // [4, K]
  torch::Tensor sums = segment_sums(torch::cat({onehot * vd, onehot}, 0)).t();         // [T, 8]
  torch::Tensor bin_sum = sums.narrow(1, 0, 4), bin_count = sums.narrow(1, 4, 4);
  torch::Tensor empty_bin = shift.to(torch::kFloat64).unsqueeze(1) +
                            (bins.to(torch::kFloat64) - 1.5) * scale.to(torch::kFloat64).unsqueeze(1);
  torch::Tensor table =
      torch::where(bin_count > 0, bin_sum / bin_count.clamp_min(1), empty_bin).to(torch::kFloat32).contiguous();
  torch::Tensor decoded = table.view({-1}).index_select(0, seg4 + code);  // [K]

  // 4. Error feedback: e[kept] -= decoded (the rest of e is untouched).
  if (keeps_error) e_flat.scatter_(0, flat, v - decoded);
  if (sent) *sent = LayoutViews(torch::zeros({plan.numel}, F32()).scatter_(0, flat, decoded));

  // 5. One device->host copy of K int16 indices, K uint8 codes and the
  //    tables' bytes; the host only copies them out.
  torch::Tensor host = ToHost(torch::cat(
      {local.to(torch::kInt16).view(torch::kUInt8), code.to(torch::kUInt8), table.view({-1}).view(torch::kUInt8)}));
  const uint8_t* h = host.data_ptr<uint8_t>();
  parts.indices.resize(K);
  parts.codes.resize(K);
  parts.tables.resize(4 * T);
  std::memcpy(parts.indices.data(), h, K * sizeof(uint16_t));
  std::memcpy(parts.codes.data(), h + 2 * K, K);
  std::memcpy(parts.tables.data(), h + 3 * K, parts.tables.size() * sizeof(float));
  for (int64_t t = 0; t < T; ++t) {
    if (!AllFiniteFloats(parts.tables.data() + 4 * t, 4)) return NonFinite("value", t);
  }
  return PackSparseLoCo(layout, plan, parts);
}

#ifdef LOWBAND_CUDA_KERNELS
namespace {
template <typename T>
torch::Tensor BytesOnDevice(const std::vector<T>& v, const torch::Device& device) {
  torch::Tensor host = torch::empty({static_cast<int64_t>(v.size() * sizeof(T))}, torch::kUInt8);
  if (!v.empty()) std::memcpy(host.data_ptr<uint8_t>(), v.data(), v.size() * sizeof(T));
  return host.to(device);
}
}  // namespace

Status DeviceEncoder::Impl::BuildCuda(const std::vector<int64_t>& kept_offset) {
  namespace cc = cuda_codec;
  const size_t T = layout.tensors.size(), C = plan.chunks.size();
  const CodecKind kind = config.kind;
  std::vector<cc::ChunkDesc> chunks(C);
  int64_t bytes = 0;  // int8: bulk bytes of the tensors so far
  for (size_t t = 0; t < T; ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      const Chunk& ch = plan.chunks[c];
      if (ch.numel() > kChunkElems) return Internal("encoder: chunk larger than the CUDA kernel's 4096 elements");
      const int64_t out = bytes + 4 * static_cast<int64_t>(tp.num_chunks) + (chunk_plan_pos[c] - tp.offset);
      const int64_t scale_at = bytes + 4 * static_cast<int64_t>(c - tp.first_chunk);
      chunks[c] = cc::ChunkDesc{tp.offset + ch.origin, ch.origin, ch.rows > 1 ? tp.row_stride : ch.cols,
                                kept_offset[c], out, scale_at, ch.rows, ch.cols, ch.k, static_cast<int32_t>(t)};
    }
    bytes += 4 * static_cast<int64_t>(tp.num_chunks) + tp.numel;
  }
  cu_chunks = BytesOnDevice(chunks, device);
  cu_delta_ptrs = torch::zeros({std::max<int64_t>(static_cast<int64_t>(T), 1)}, I64());
  cu_delta_ptrs_host.assign(T, 0);
  auto u8 = torch::TensorOptions().dtype(torch::kUInt8).device(device);
  if (kind != CodecKind::kSparseLoCo) {
    if (kind == CodecKind::kDenseBf16) bytes = 2 * plan.numel;
    if (static_cast<uint64_t>(bytes) != BulkBytes(plan, kind)) {
      return Internal("encoder: CUDA bulk layout differs from the codec's");
    }
    cu_bad_offset = (bytes + 3) / 4 * 4;
    cu_bulk = torch::zeros({cu_bad_offset + 4}, u8);
    return Status::Ok();
  }

  std::vector<cc::BlockDesc> blocks;
  std::vector<cc::TensorDesc> tensors(T);
  int64_t kept = 0;
  bytes = 0;
  cu_groups = 0;
  cu_table_offsets.assign(T, 0);
  for (size_t t = 0; t < T; ++t) {
    const TensorPlan& tp = plan.tensors[t];
    const int64_t first_block = static_cast<int64_t>(blocks.size());
    for (int64_t b = kept; b < kept + tp.kept; b += cc::kKeptBlock) {
      blocks.push_back(cc::BlockDesc{b, std::min(kept + tp.kept, b + cc::kKeptBlock), static_cast<int32_t>(t), 0});
    }
    tensors[t] = cc::TensorDesc{kept, tp.kept, first_block, static_cast<int64_t>(blocks.size()) - first_block, bytes,
                                cu_groups};
    cu_table_offsets[t] = bytes;
    kept += tp.kept;
    bytes += 16 + (3 * tp.kept + 1) / 2 + (tp.kept + 3) / 4;
    cu_groups += (tp.kept + 3) / 4;
  }
  if (static_cast<uint64_t>(bytes) != BulkBytes(plan, CodecKind::kSparseLoCo)) {
    return Internal("encoder: CUDA bulk layout differs from the codec's");
  }
  cu_blocks = BytesOnDevice(blocks, device);
  cu_tensors = BytesOnDevice(tensors, device);
  const int64_t K = std::max<int64_t>(plan.kept, 1);
  cu_local = torch::empty({K}, torch::TensorOptions().dtype(torch::kInt16).device(device));
  cu_value = torch::empty({K}, F32());
  cu_flat = torch::empty({K}, I64());
  cu_code = torch::empty({K}, u8);
  cu_block_stats = torch::zeros({std::max<int64_t>(static_cast<int64_t>(blocks.size()), 1) * cc::kBlockStats},
                                torch::TensorOptions().dtype(torch::kFloat64).device(device));
  cu_tensor_stats = torch::zeros({std::max<int64_t>(static_cast<int64_t>(T), 1) * cc::kTensorStats}, F32());
  cu_bulk = torch::zeros({std::max<int64_t>(bytes, 1)}, u8);
  return Status::Ok();
}

// The device array of the deltas' data pointers (contiguous copies of any
// strided one are kept alive in `keep`, until the kernels are done).
const float* const* DeviceEncoder::Impl::CudaDeltas(const std::vector<torch::Tensor>& deltas,
                                                    std::vector<torch::Tensor>* keep) {
  const size_t T = deltas.size();
  keep->assign(T, torch::Tensor());
  std::vector<int64_t> ptrs(T);
  for (size_t t = 0; t < T; ++t) {
    (*keep)[t] = deltas[t].contiguous();
    ptrs[t] = reinterpret_cast<int64_t>((*keep)[t].data_ptr<float>());
  }
  if (ptrs != cu_delta_ptrs_host) {  // training reuses its buffers: usually no upload at all
    cu_delta_ptrs.narrow(0, 0, static_cast<int64_t>(T)).copy_(torch::tensor(ptrs, torch::kInt64));
    cu_delta_ptrs_host = ptrs;
  }
  return reinterpret_cast<const float* const*>(cu_delta_ptrs.data_ptr<int64_t>());
}

namespace {
using Clock = std::chrono::steady_clock;
double MsSince(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// Bytes holding src[0, n), and BulkChecksum of them, computed on a second
// thread while this one copies when the bulk is large (both are a pass over
// the bytes; the checksum is the serial part).
Bytes CopyOut(const uint8_t* src, size_t n, uint64_t* checksum) {
  if (n < (size_t{8} << 20)) {
    *checksum = BulkChecksum(src, n);
    return Bytes(src, src + n);
  }
  std::thread hasher([src, n, checksum] { *checksum = BulkChecksum(src, n); });
  try {
    Bytes out(src, src + n);
    hasher.join();
    return out;
  } catch (...) {
    hasher.join();
    throw;
  }
}
}  // namespace

// A host bulk of `bytes` that no frame holds, or null when all kHostBulks
// are out.
std::shared_ptr<Bytes> DeviceEncoder::Impl::FreeHostBulk(int64_t bytes) {
  for (HostBulk& b : host_bulks) {
    if (b.bytes.use_count() == 1 && static_cast<int64_t>(b.bytes->size()) == bytes) {
      // The last other owner let go (maybe on another thread): see its reads before writing.
      std::atomic_thread_fence(std::memory_order_acquire);
      return b.bytes;
    }
  }
  if (host_bulks.size() >= kHostBulks || bytes == 0) return nullptr;
  HostBulk b;
  b.bytes = std::make_shared<Bytes>(static_cast<size_t>(bytes));
  b.pinned = cuda_codec::PinHost(b.bytes->data(), b.bytes->size()).empty();  // pageable still works, slower
  host_bulks.push_back(b);
  return b.bytes;
}

// The first `bytes` of cu_bulk to the host (waiting for the kernels),
// checked and sealed as this codec's blob: straight into a recycled host
// bulk, else through the pinned staging buffer into a fresh one.
StatusOr<Encoded> DeviceEncoder::Impl::SealCudaBulk(int64_t bytes) {
  const auto t0 = Clock::now();
  if (config.kind != CodecKind::kSparseLoCo) {
    if (!cu_flag_host.defined()) {
      cu_flag_host = torch::empty({4}, torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(true));
    }
    cu_flag_host.copy_(cu_bulk.narrow(0, cu_bad_offset, 4));
    int32_t bad;
    std::memcpy(&bad, cu_flag_host.data_ptr<uint8_t>(), sizeof bad);
    if (bad != cuda_codec::kNoBadTensor) {
      if (bad < 0 || static_cast<size_t>(bad) >= layout.tensors.size()) return Internal("encode: bad CUDA flag");
      return NonFinite("value", static_cast<size_t>(bad));
    }
  }
  std::shared_ptr<Bytes> recycled = FreeHostBulk(bytes);
  const uint8_t* h = nullptr;
  torch::Tensor host;
  if (recycled) {
    torch::from_blob(recycled->data(), {bytes}, torch::kUInt8).copy_(cu_bulk.narrow(0, 0, bytes));
    h = recycled->data();
  } else {
    host = ToHost(cu_bulk.narrow(0, 0, bytes));
    h = host.data_ptr<uint8_t>();
  }
  const auto t1 = Clock::now();
  if (config.kind == CodecKind::kSparseLoCo) {
    for (size_t t = 0; t < layout.tensors.size(); ++t) {
      float table[4];
      std::memcpy(table, h + cu_table_offsets[t], sizeof(table));
      if (!AllFiniteFloats(table, 4)) return NonFinite("value", t);
    }
  }
  uint64_t checksum = 0;
  Frame frame;
  if (recycled) {
    checksum = BulkChecksum(h, static_cast<size_t>(bytes));
    frame = Frame(std::move(recycled));
  } else {
    frame = Frame(CopyOut(h, static_cast<size_t>(bytes), &checksum));
  }
  auto sealed = SealPackedBulk(layout, plan, config.kind, std::move(frame), checksum);
  if (phases) {
    phases->emplace_back("d2h", std::chrono::duration<double, std::milli>(t1 - t0).count());
    phases->emplace_back("host", MsSince(t1));
  }
  return sealed;
}

StatusOr<Encoded> DeviceEncoder::Impl::EncodeSparseLoCoCuda(const std::vector<torch::Tensor>& deltas,
                                                            std::vector<torch::Tensor>* sent) {
  namespace cc = cuda_codec;
  const size_t T = layout.tensors.size();
  std::vector<torch::Tensor> contiguous;  // alive until the kernels are done (the copy below waits)
  cc::SparseLoCoArgs a;
  a.chunks = reinterpret_cast<const cc::ChunkDesc*>(cu_chunks.data_ptr<uint8_t>());
  a.num_chunks = static_cast<int64_t>(plan.chunks.size());
  a.blocks = reinterpret_cast<const cc::BlockDesc*>(cu_blocks.data_ptr<uint8_t>());
  a.num_blocks = cu_blocks.numel() / static_cast<int64_t>(sizeof(cc::BlockDesc));
  a.tensors = reinterpret_cast<const cc::TensorDesc*>(cu_tensors.data_ptr<uint8_t>());
  a.num_tensors = static_cast<int64_t>(T);
  a.num_groups = cu_groups;
  a.deltas = CudaDeltas(deltas, &contiguous);
  a.error = e_flat.data_ptr<float>();
  a.beta = static_cast<float>(beta);  // as torch's add casts alpha
  a.keeps_error = keeps_error;
  a.local = reinterpret_cast<uint16_t*>(cu_local.data_ptr<int16_t>());
  a.value = cu_value.data_ptr<float>();
  a.flat = cu_flat.data_ptr<int64_t>();
  a.code = cu_code.data_ptr<uint8_t>();
  a.block_stats = cu_block_stats.data_ptr<double>();
  a.tensor_stats = cu_tensor_stats.data_ptr<float>();
  a.bulk = cu_bulk.data_ptr<uint8_t>();
  if (sent) {
    if (!cu_decoded.defined()) cu_decoded = torch::empty_like(cu_value);
    a.decoded = cu_decoded.data_ptr<float>();
  }
  a.stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  float ms[cc::kSparseLoCoPhases] = {};
  const std::string err = cc::EncodeSparseLoCo(a, phases ? ms : nullptr);
  if (!err.empty()) return Internal("encode: CUDA kernels failed: " + err);
  if (phases) {
    phases->clear();
    for (int i = 0; i < cc::kSparseLoCoPhases; ++i) phases->emplace_back(cc::kSparseLoCoPhaseNames[i], ms[i]);
  }
  if (sent) {
    torch::Tensor flat_sent = torch::zeros({plan.numel}, F32());
    if (plan.kept > 0) flat_sent.scatter_(0, cu_flat.narrow(0, 0, plan.kept), cu_decoded.narrow(0, 0, plan.kept));
    *sent = LayoutViews(flat_sent);
  }
  return SealCudaBulk(static_cast<int64_t>(BulkBytes(plan, CodecKind::kSparseLoCo)));
}

StatusOr<Encoded> DeviceEncoder::Impl::EncodeDenseCuda(const std::vector<torch::Tensor>& deltas,
                                                       std::vector<torch::Tensor>* sent) {
  namespace cc = cuda_codec;
  std::vector<torch::Tensor> contiguous;
  cc::DenseArgs a;
  a.chunks = reinterpret_cast<const cc::ChunkDesc*>(cu_chunks.data_ptr<uint8_t>());
  a.num_chunks = static_cast<int64_t>(plan.chunks.size());
  a.deltas = CudaDeltas(deltas, &contiguous);
  a.error = e_flat.data_ptr<float>();
  a.beta = static_cast<float>(beta);
  a.keeps_error = keeps_error;
  a.bulk = cu_bulk.data_ptr<uint8_t>();
  a.bad = reinterpret_cast<int32_t*>(a.bulk + cu_bad_offset);
  torch::Tensor sent_flat;
  if (sent) {
    sent_flat = torch::empty({plan.numel}, F32());
    a.decoded = sent_flat.data_ptr<float>();
  }
  a.stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  float ms = 0;
  const bool int8 = config.kind == CodecKind::kInt8;
  float* timed = phases ? &ms : nullptr;
  const std::string err = int8 ? cc::EncodeInt8(a, timed) : cc::EncodeDenseBf16(a, timed);
  if (!err.empty()) return Internal("encode: CUDA kernels failed: " + err);
  if (phases) {
    phases->clear();
    phases->emplace_back(int8 ? "int8" : "bf16", ms);
  }
  if (sent) *sent = LayoutViews(sent_flat);
  return SealCudaBulk(static_cast<int64_t>(BulkBytes(plan, config.kind)));
}
#endif  // LOWBAND_CUDA_KERNELS

// The same steps on the host's own memory, for a CPU encoder: SelectChunk
// per chunk, then the quantiser as plain loops over blocks of kept values
// (fp64 partial sums per block, combined in block order: the result does not
// depend on the thread count). No tensor temporaries: on a CPU the torch ops
// of the device path cost more than the selection itself.
StatusOr<Encoded> DeviceEncoder::Impl::EncodeSparseLoCoCpu(const std::vector<torch::Tensor>& deltas,
                                                           std::vector<torch::Tensor>* sent) {
  const int64_t K = plan.kept;
  const size_t T = layout.tensors.size();
  SparseLoCoParts& parts = cpu_parts;
  parts.indices.resize(K);
  parts.codes.resize(K);
  parts.tables.resize(4 * T);
  cpu_flat.resize(K);
  cpu_values.resize(K);
  float* e = e_flat.data_ptr<float>();
  // e <- delta + beta * e (or delta), streaming through memory in layout
  // order on this file's threads: torch's add would leave its OpenMP workers
  // spinning on the cores the selection below wants.
  {
    std::vector<torch::Tensor> contiguous(deltas.size());  // the odd strided delta is copied first
    std::vector<const float*> delta(deltas.size());
    for (size_t t = 0; t < deltas.size(); ++t) {
      contiguous[t] = deltas[t].contiguous();
      delta[t] = contiguous[t].data_ptr<float>();
    }
    const float beta_f = static_cast<float>(beta);  // as torch's add casts alpha
    const int64_t num_spans = static_cast<int64_t>(spans.size());
    Status st = pool->ParallelFor(num_spans, plan.numel >= 2 * kSpanElems ? 1 : num_spans, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const Span& sp = spans[i];
        float* dst = e + plan.tensors[sp.tensor].offset + sp.begin;
        const float* src = delta[sp.tensor] + sp.begin;
        if (keeps_error) {
          AccumulateRow(dst, src, beta_f, sp.end - sp.begin);
        } else {
          std::copy(src, src + (sp.end - sp.begin), dst);
        }
      }
    });
    LOWBAND_RETURN_IF_ERROR(st);
  }
  uint16_t* local = parts.indices.data();
  uint8_t* codes = parts.codes.data();
  int64_t* flat = cpu_flat.data();
  float* v = cpu_values.data();
  Status selected = pool->ParallelFor(static_cast<int64_t>(geom.size()), /*grain=*/64, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> cand(kChunkElems), scratch(kChunkElems);
    for (int64_t c = begin; c < end; ++c) {
      const ChunkGeom& g = geom[c];
      SelectChunk(e, g, cand.data(), scratch.data(), local + g.kept_offset, flat + g.kept_offset, v + g.kept_offset);
    }
  });
  LOWBAND_RETURN_IF_ERROR(selected);

  const int64_t num_blocks = static_cast<int64_t>(blocks.size());
  std::vector<double> partial(num_blocks * 8);
  auto per_block = [&](auto&& fn) {
    return pool->ParallelFor(num_blocks, /*grain=*/4, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) fn(blocks[b], &partial[b * 8]);
    });
  };
  auto per_tensor = [&](size_t t, int i) {  // sum of partial[.][i] over the tensor's blocks, in order
    double sum = 0;
    for (int64_t b = tensor_blocks[t]; b < tensor_blocks[t + 1]; ++b) sum += partial[b * 8 + i];
    return sum;
  };
  std::vector<float> shift(T), scale(T);
  if (Status st = per_block([&](const KeptBlock& blk, double* out) {
    double sum = 0;
    for (int64_t i = blk.begin; i < blk.end; ++i) sum += v[i];
    out[0] = sum;
  }); !st.ok()) {
    return st;
  }
  for (size_t t = 0; t < T; ++t) {
    shift[t] = static_cast<float>(per_tensor(t, 0) / std::max<int64_t>(plan.tensors[t].kept, 1));
  }
  if (Status st = per_block([&](const KeptBlock& blk, double* out) {
    const float sh = shift[blk.tensor];
    double sum = 0;
    for (int64_t i = blk.begin; i < blk.end; ++i) sum += std::fabs(v[i] - sh);
    out[0] = sum;
  }); !st.ok()) {
    return st;
  }
  for (size_t t = 0; t < T; ++t) {
    scale[t] = static_cast<float>(per_tensor(t, 0) / std::max<int64_t>(plan.tensors[t].kept, 1));
  }
  if (Status st = per_block([&](const KeptBlock& blk, double* out) {
    const float sh = shift[blk.tensor], sc = scale[blk.tensor];
    const float lo = sh - sc, hi = sh + sc;
    double sum[4] = {0, 0, 0, 0};
    int64_t count[4] = {0, 0, 0, 0};
    for (int64_t i = blk.begin; i < blk.end; ++i) {
      const uint8_t code = static_cast<uint8_t>((v[i] >= lo) + (v[i] >= sh) + (v[i] >= hi));
      codes[i] = code;
      sum[code] += v[i];
      ++count[code];
    }
    for (int b = 0; b < 4; ++b) {
      out[b] = sum[b];
      out[4 + b] = static_cast<double>(count[b]);
    }
  }); !st.ok()) {
    return st;
  }
  float* table = parts.tables.data();
  for (size_t t = 0; t < T; ++t) {
    for (int b = 0; b < 4; ++b) {
      const double count = per_tensor(t, 4 + b);
      table[4 * t + b] =
          count > 0 ? static_cast<float>(per_tensor(t, b) / count)
                    : static_cast<float>(static_cast<double>(shift[t]) + (b - 1.5) * static_cast<double>(scale[t]));
    }
    if (!AllFiniteFloats(table + 4 * t, 4)) return NonFinite("value", t);
  }

  float* sent_ptr = nullptr;
  torch::Tensor sent_flat;
  if (sent) {
    sent_flat = torch::zeros({plan.numel}, F32());
    sent_ptr = sent_flat.data_ptr<float>();
  }
  if (keeps_error || sent_ptr) {
    if (Status st = per_block([&](const KeptBlock& blk, double*) {
      const float* tab = table + 4 * blk.tensor;
      for (int64_t i = blk.begin; i < blk.end; ++i) {
        const float decoded = tab[codes[i]];
        if (keeps_error) e[flat[i]] = v[i] - decoded;
        if (sent_ptr) sent_ptr[flat[i]] = decoded;
      }
    }); !st.ok()) {
      return st;
    }
  }
  if (sent) *sent = LayoutViews(sent_flat);
  return PackSparseLoCo(layout, plan, parts);
}

StatusOr<Encoded> DeviceEncoder::Impl::EncodeInt8(std::vector<torch::Tensor>* sent) {
  const int64_t P = plan.numel;
  const int64_t num_chunks = static_cast<int64_t>(plan.chunks.size());
  GatherBuckets(/*magnitude=*/false);
  // Persistent buffers (fresh P-sized temporaries would cost a page fault per
  // 4 KiB on a CPU): q then the scales' bytes, copied to the host at once.
  torch::Tensor q8 = int8_out.narrow(0, 0, P);
  torch::Tensor scales = int8_out.narrow(0, int8_scale_offset, 4 * num_chunks).view(torch::kFloat32);
  for (Bucket& b : buckets) {
    const torch::Tensor& x = b.matrix;
    torch::Tensor t = int8_scratch.narrow(0, b.ws_offset, x.numel()).view_as(x);
    auto minmax = torch::aminmax(x, /*dim=*/1, /*keepdim=*/true);
    torch::Tensor scale = torch::maximum(std::get<0>(minmax).abs(), std::get<1>(minmax)).div_(int8_127);  // [count, 1]
    torch::Tensor safe = torch::where(scale > 0, scale, torch::ones_like(scale));
    torch::div_out(t, x, safe).round_().clamp_(-127, 127);  // q; all zero where scale is 0
    torch::Tensor q8_b = q8.narrow(0, b.ws_offset, x.numel()).view_as(x);
    q8_b.copy_(t);
    // value = float(q) * scale, exactly as the host decodes it (from the int8,
    // so a rounded -0 becomes +0 here too).
    t.copy_(q8_b).mul_(scale);
    if (keeps_error) x.sub_(t);
    scales.narrow(0, b.chunk_offset, b.count).copy_(scale.view({-1}));
  }
  if (keeps_error) {
    for (Bucket& b : buckets)
      for (Piece& p : b.pieces) p.src.copy_(p.dst);  // residual back into e
  }
  if (sent) {
    torch::Tensor sent_flat = torch::empty({P}, F32());
    for (Bucket& b : buckets) {
      torch::Tensor dec = int8_scratch.narrow(0, b.ws_offset, b.matrix.numel()).view_as(b.matrix);
      for (Piece& p : b.pieces) {
        sent_flat.as_strided(p.group.sizes, p.group.strides, p.flat_offset + p.group.offset)
            .copy_(dec.narrow(0, p.row0, p.group.count).view(p.group.sizes));
      }
    }
    *sent = LayoutViews(sent_flat);
  }

  torch::Tensor host = ToHost(int8_out);
  const int8_t* h = host.data_ptr<int8_t>();
  std::vector<float> bucket_scales(num_chunks);  // bucket order
  std::memcpy(bucket_scales.data(), h + int8_scale_offset, num_chunks * sizeof(float));
  Int8Parts& parts = int8_parts;
  parts.q.resize(P);
  parts.scales.resize(num_chunks);
  for (int64_t c = 0; c < num_chunks; ++c) {
    std::memcpy(parts.q.data() + chunk_plan_pos[c], h + chunk_ws_pos[c], plan.chunks[c].numel());
    parts.scales[c] = bucket_scales[chunk_bucket_index[c]];
    if (!std::isfinite(parts.scales[c])) return NonFinite("value", tensor_of_chunk[c]);
  }
  return PackInt8(layout, plan, parts);
}

StatusOr<Encoded> DeviceEncoder::Impl::EncodeBf16(std::vector<torch::Tensor>* sent) {
  torch::Tensor& bf = bf16_out;
  bf.copy_(e_flat);  // round to nearest even
  if (keeps_error) e_flat.sub_(bf);
  if (sent) *sent = LayoutViews(bf.to(torch::kFloat32));
  torch::Tensor host = ToHost(bf.view(torch::kInt16));
  std::vector<uint16_t>& bits = bf16_bits;
  bits.resize(plan.numel);
  std::memcpy(bits.data(), host.data_ptr<int16_t>(), bits.size() * sizeof(uint16_t));
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (int64_t i = tp.offset; i < tp.offset + tp.numel; ++i) {
      if ((bits[i] & 0x7f80) == 0x7f80) return NonFinite("value", t);
    }
  }
  return PackDenseBf16(layout, bits);
}

StatusOr<Encoded> DeviceEncoder::Impl::EncodeFp32(const std::vector<torch::Tensor>& deltas,
                                                  std::vector<torch::Tensor>* sent) {
  std::vector<float> values(plan.numel);
  if (plan.numel > 0) {
    std::vector<torch::Tensor> flat;
    for (const auto& d : deltas) flat.push_back(d.reshape({-1}));
    torch::Tensor all = torch::cat(flat);
    if (sent) *sent = LayoutViews(all);  // cat made a copy
    torch::Tensor host = ToHost(all);
    std::memcpy(values.data(), host.data_ptr<float>(), values.size() * sizeof(float));
  } else if (sent) {
    *sent = LayoutViews(torch::zeros({0}, F32()));
  }
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    if (!AllFiniteFloats(values.data() + tp.offset, tp.numel)) return NonFinite("value", t);
  }
  return PackDenseFp32(layout, values);
}

// ---- DeviceEncoder -----------------------------------------------------------

DeviceEncoder::DeviceEncoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceEncoder::~DeviceEncoder() = default;

StatusOr<std::unique_ptr<DeviceEncoder>> DeviceEncoder::Create(const ParamLayout& layout, const CodecConfig& config,
                                                               torch::Device device, DeviceEncoderOptions options) {
  switch (config.kind) {
    case CodecKind::kDenseFp32:
    case CodecKind::kDenseBf16:
    case CodecKind::kInt8:
    case CodecKind::kSparseLoCo:
      break;
    default:
      return InvalidArgument(std::string("encoder: codec ") + CodecName(config.kind) + " is not an upload codec");
  }
  const bool topk_ok = config.topk >= 1 && config.topk <= kChunkElems;
  if (config.kind == CodecKind::kSparseLoCo && !topk_ok) {
    return InvalidArgument("encoder: topk " + std::to_string(config.topk) + " outside [1, 4096]");
  }
  if (!std::isfinite(config.error_feedback) || config.error_feedback < 0) {
    return InvalidArgument("encoder: error_feedback " + std::to_string(config.error_feedback) +
                           " must be finite and >= 0");
  }
  for (const TensorSpec& spec : layout.tensors) {
    for (int64_t d : spec.shape) {
      if (d < 0) return InvalidArgument("encoder: tensor " + spec.name + " has a negative dimension");
    }
  }
  auto impl = std::make_unique<Impl>();
  try {
    torch::NoGradGuard no_grad;
    impl->layout = layout;
    impl->config = config;
    // Normalise "cuda" to "cuda:N" so the device check in Encode compares equal.
    impl->device = torch::empty({0}, torch::TensorOptions().device(device)).device();
    impl->plan = PlanLayout(layout, topk_ok ? config.topk : 64);
    impl->beta = config.error_feedback;
    impl->keeps_error = config.kind != CodecKind::kDenseFp32 && impl->beta > 0;
    impl->cpu_kernel = impl->device.is_cpu() && options.cpu_select_kernel;
    if (impl->cpu_kernel) impl->pool = std::make_unique<ThreadPool>(at::get_num_threads());
#ifdef LOWBAND_CUDA_KERNELS
    impl->cuda_kernel = impl->device.is_cuda() && options.cuda_kernels && config.kind != CodecKind::kDenseFp32;
    impl->phases = options.cuda_phases;
#endif
    LOWBAND_RETURN_IF_ERROR(impl->Build());
  } catch (const c10::Error& e) {
    return Internal(TorchMessage("encoder", e));
  } catch (const std::exception& e) {
    return Internal(std::string("encoder: ") + e.what());
  }
  return std::unique_ptr<DeviceEncoder>(new DeviceEncoder(std::move(impl)));
}

StatusOr<Encoded> DeviceEncoder::Encode(const std::vector<torch::Tensor>& deltas, std::vector<torch::Tensor>* sent) {
  Impl& s = *impl_;
  LOWBAND_RETURN_IF_ERROR(s.CheckDeltas(deltas));
  try {
    torch::NoGradGuard no_grad;
    if (s.config.kind == CodecKind::kDenseFp32) return s.EncodeFp32(deltas, sent);
    if (s.config.kind == CodecKind::kSparseLoCo && s.cpu_kernel) return s.EncodeSparseLoCoCpu(deltas, sent);
#ifdef LOWBAND_CUDA_KERNELS
    if (s.cuda_kernel) {
      return s.config.kind == CodecKind::kSparseLoCo ? s.EncodeSparseLoCoCuda(deltas, sent)
                                                     : s.EncodeDenseCuda(deltas, sent);
    }
#endif
    s.AccumulateError(deltas);
    switch (s.config.kind) {
      case CodecKind::kSparseLoCo:
        return s.EncodeSparseLoCo(sent);
      case CodecKind::kInt8:
        return s.EncodeInt8(sent);
      case CodecKind::kDenseBf16:
        return s.EncodeBf16(sent);
      default:
        return Internal("encode: unexpected codec");
    }
  } catch (const c10::Error& e) {
    return Internal(TorchMessage("encode", e));
  } catch (const std::exception& e) {
    return Internal(std::string("encode: ") + e.what());
  }
}

const std::vector<torch::Tensor>& DeviceEncoder::error_buffers() const { return impl_->error_views; }

void DeviceEncoder::Reset() {
  if (impl_->e_flat.defined()) {
    torch::NoGradGuard no_grad;
    impl_->e_flat.zero_();
  }
}

const LayoutPlan& DeviceEncoder::plan() const { return impl_->plan; }
const CodecConfig& DeviceEncoder::config() const { return impl_->config; }
torch::Device DeviceEncoder::device() const { return impl_->device; }

// ---- applying an update on the device -----------------------------------------

void MirrorToDevice(const ParamSet& params, torch::Device device, torch::Tensor* flat,
                    std::vector<torch::Tensor>* views) {
  const int64_t n = static_cast<int64_t>(params.values.size());
  if (!flat->defined()) {
    *flat = torch::empty({n}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
    views->clear();
    int64_t offset = 0;
    for (const auto& t : params.layout.tensors) {
      views->push_back(flat->narrow(0, offset, t.numel()).view(t.shape));
      offset += t.numel();
    }
  }
  flat->copy_(torch::from_blob(const_cast<float*>(params.values.data()), {n}, torch::kFloat32));
}

Status ApplyUpdateOnDevice(const LayoutPlan& plan, const Update& u, torch::Tensor& theta) {
  if (!theta.defined() || theta.scalar_type() != torch::kFloat32 || theta.dim() != 1 || !theta.is_contiguous() ||
      theta.numel() != plan.numel) {
    return InvalidArgument("apply: theta must be a contiguous 1-D float32 tensor of " + std::to_string(plan.numel) +
                           " elements");
  }
  try {
    torch::NoGradGuard no_grad;
    if (u.dense) {
      if (static_cast<int64_t>(u.values.size()) != plan.numel) {
        return InvalidArgument("apply: dense update has " + std::to_string(u.values.size()) + " values, plan has " +
                               std::to_string(plan.numel));
      }
      if (plan.numel == 0) return Status::Ok();
      torch::Tensor host = torch::from_blob(const_cast<float*>(u.values.data()), {plan.numel}, torch::kFloat32);
      theta.sub_(host.to(theta.device()));
      return Status::Ok();
    }
    if (u.begin.size() != plan.chunks.size() + 1 || u.index.size() != u.value.size() ||
        u.begin.back() != u.value.size()) {
      return InvalidArgument("apply: sparse update does not match the chunk plan");
    }
    const int64_t nnz = static_cast<int64_t>(u.value.size());
    if (nnz == 0) return Status::Ok();
    // One host buffer: nnz int64 flat indices, then the values' bits.
    torch::Tensor host = torch::empty({nnz + (nnz + 1) / 2}, torch::kInt64);
    int64_t* flat = host.data_ptr<int64_t>();
    for (size_t t = 0; t < plan.tensors.size(); ++t) {
      const TensorPlan& tp = plan.tensors[t];
      for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
        const Chunk& ch = plan.chunks[c];
        const int64_t base = tp.offset + ch.origin, stride = ch.rows > 1 ? tp.row_stride : ch.cols;
        if (u.begin[c] > u.begin[c + 1] || u.begin[c + 1] > u.value.size()) {
          return InvalidArgument("apply: sparse update begin offsets are not increasing");
        }
        for (uint32_t i = u.begin[c]; i < u.begin[c + 1]; ++i) {
          const int64_t l = u.index[i];
          if (l >= ch.numel()) return InvalidArgument("apply: index outside its chunk");
          flat[i] = base + (l / ch.cols) * stride + l % ch.cols;
        }
      }
    }
    std::memcpy(flat + nnz, u.value.data(), nnz * sizeof(float));
    torch::Tensor dev = host.to(theta.device());
    torch::Tensor index = dev.narrow(0, 0, nnz);
    torch::Tensor values = dev.narrow(0, nnz, (nnz + 1) / 2).view(torch::kFloat32).narrow(0, 0, nnz);
    // theta[i] + (-1 * v) is exactly theta[i] - v; indices are distinct.
    theta.index_add_(0, index, values, -1);
    return Status::Ok();
  } catch (const c10::Error& e) {
    return Internal(TorchMessage("apply", e));
  } catch (const std::exception& e) {
    return Internal(std::string("apply: ") + e.what());
  }
}

}  // namespace lowband
