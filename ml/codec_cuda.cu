// The device encoders on a CUDA device: see codec_cuda.h for the steps.
// The wire formats are the host packers' (codec.cc): sparseloco per tensor a
// 16-byte table, then its kept indices 12-bit packed in pairs (a lone last
// index in 2 bytes), then its codes 4 to a byte, first in the low bits;
// int8 per tensor its chunks' fp32 scales, then its q bytes in plan order;
// dense_bf16 the bf16 bits in layout order.
#include "ml/codec_cuda.h"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace lowband::cuda_codec {

const char* const kSparseLoCoPhaseNames[kSparseLoCoPhases] = {"select", "sum",   "shift", "spread",
                                                              "scale",  "codes", "table", "pack"};

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPer = 16;                // elements per thread: 256 * 16 = 4096, the largest chunk
constexpr int kSlots = kPer * kWarps;   // 32-element runs of a chunk, in index order
constexpr unsigned kFull = 0xffffffffu;

using Scan = cub::BlockScan<int, kThreads>;
using Reduce = cub::BlockReduce<double, kThreads>;

// Order-preserving key of |x|: the bits without the sign (NaN above inf, as
// in the host kernel and torch::topk).
__device__ __forceinline__ uint32_t Key(float x) { return __float_as_uint(x) & 0x7fffffffu; }

__device__ __forceinline__ uint32_t LanesBelow(int lane) { return (1u << lane) - 1u; }

// Offset of local element l of chunk d from the chunk's (0, 0).
__device__ __forceinline__ int64_t Offset(const ChunkDesc& d, int l) {
  if (d.rows == 1) return l;
  const int r = l / d.cols;
  return static_cast<int64_t>(r) * d.stride + (l - r * d.cols);
}

// Exclusive prefix sums of counts[0..kSlots) in place (kSlots <= kThreads).
__device__ void ScanSlots(int* counts, typename Scan::TempStorage& temp) {
  const int tid = threadIdx.x;
  const int c = tid < kSlots ? counts[tid] : 0;
  int before = 0;
  Scan(temp).ExclusiveSum(c, before);
  __syncthreads();
  if (tid < kSlots) counts[tid] = before;
  __syncthreads();
}

// Loads element j * 256 + tid of chunk d for j < kPer (0 past the end):
// x = delta + beta * e, written back to e when the encoder keeps it.
__device__ __forceinline__ void LoadChunk(const ChunkDesc& d, const float* const* deltas, float* error, float beta,
                                          bool keeps_error, bool write_back, float (&v)[kPer]) {
  const int n = d.rows * d.cols;
  const float* delta = deltas[d.tensor] + d.d_base;
  float* e = error + d.e_base;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int l = j * kThreads + static_cast<int>(threadIdx.x);
    v[j] = 0;
    if (l < n) {
      const int64_t o = Offset(d, l);
      float x = delta[o];
      if (keeps_error) {
        x = x + beta * e[o];
        if (write_back) e[o] = x;
      }
      v[j] = x;
    }
  }
}

// One block per chunk. Element l of the chunk (row-major local index) is
// held by thread l % 256 as its item l / 256, so a warp's loads are
// consecutive elements of a row, and slot (item * 8 + warp) covers local
// indices [32 * slot, 32 * slot + 32) in order: ballots give index order.
// Keys are recomputed from the values where needed: few registers, many
// blocks per SM, and the loads of the next block overlap this one's select.
__global__ void __launch_bounds__(kThreads) SelectKernel(SparseLoCoArgs a) {
  __shared__ typename Scan::TempStorage scan;
  __shared__ int hist[256];
  __shared__ int ties_before[kSlots];
  __shared__ int kept_before[kSlots];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining, s_whole;

  const ChunkDesc d = a.chunks[blockIdx.x];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n = d.rows * d.cols;
  float v[kPer];
  LoadChunk(d, a.deltas, a.error, a.beta, a.keeps_error, /*write_back=*/true, v);
  const int k = d.k < n ? d.k : n;
  if (k <= 0) return;  // uniform across the block

  // Radix select, 8 bits a pass from the top, over the keys masked to the
  // bits seen so far: the k-th largest masked key `prefix`, and `remaining`,
  // how many keys equal to it are kept. Once the k-th key's bucket is kept
  // whole (count == remaining), the lower bits cannot change the kept set.
  uint32_t prefix = 0, mask = 0;
  int remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    hist[tid] = 0;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const uint32_t key = Key(v[j]);
      const bool in = j * kThreads + tid < n && (key & mask) == prefix;
      const unsigned active = __ballot_sync(kFull, in);
      if (in) {  // one shared atomic per distinct digit of the warp
        const int digit = (key >> shift) & 255;
        const unsigned peers = __match_any_sync(active, digit);
        if (lane == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
      }
    }
    __syncthreads();
    // Thread t looks at digit 255 - t: an inclusive scan counts the keys
    // whose digit is >= it; the digit holding the remaining-th is where the
    // count first reaches `remaining`.
    const int digit = 255 - tid;
    const int count = hist[digit];
    int at_least = 0;
    Scan(scan).InclusiveSum(count, at_least);
    const int above = at_least - count;
    if (above < remaining && at_least >= remaining) {
      s_prefix = prefix | (static_cast<uint32_t>(digit) << shift);
      s_remaining = remaining - above;
      s_whole = count == remaining - above;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 255u << shift;
    const bool whole = s_whole;
    __syncthreads();
    if (whole) break;
  }
  // Keep every masked key above prefix and the first `remaining` equal to it.

#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const bool tie = j * kThreads + tid < n && (Key(v[j]) & mask) == prefix;
    const unsigned tie_mask = __ballot_sync(kFull, tie);
    if (lane == 0) ties_before[j * kWarps + warp] = __popc(tie_mask);
  }
  __syncthreads();
  ScanSlots(ties_before, scan);

  auto keeps = [&](int j, unsigned* keep_mask) {
    const bool valid = j * kThreads + tid < n;
    const uint32_t key = Key(v[j]) & mask;
    const bool tie = valid && key == prefix;
    const unsigned tie_mask = __ballot_sync(kFull, tie);
    const int tie_rank = ties_before[j * kWarps + warp] + __popc(tie_mask & LanesBelow(lane));
    const bool keep = valid && (key > prefix || (tie && tie_rank < remaining));
    *keep_mask = __ballot_sync(kFull, keep);
    return keep;
  };
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    unsigned keep_mask;
    keeps(j, &keep_mask);
    if (lane == 0) kept_before[j * kWarps + warp] = __popc(keep_mask);
  }
  __syncthreads();
  ScanSlots(kept_before, scan);

#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    unsigned keep_mask;
    if (!keeps(j, &keep_mask)) continue;
    const int l = j * kThreads + tid;
    const int64_t p = d.kept_offset + kept_before[j * kWarps + warp] + __popc(keep_mask & LanesBelow(lane));
    a.local[p] = static_cast<uint16_t>(l);
    a.value[p] = v[j];
    a.flat[p] = d.e_base + Offset(d, l);
  }
}

// One block per kept block: Stage 0 sums v, 1 sums |v - shift|; 2 writes
// codes and sums values and counts per bin.
template <int Stage>
__global__ void __launch_bounds__(kThreads) BlockKernel(SparseLoCoArgs a) {
  __shared__ typename Reduce::TempStorage temp;
  const BlockDesc b = a.blocks[blockIdx.x];
  const float* ts = a.tensor_stats + b.tensor * kTensorStats;
  double* out = a.block_stats + blockIdx.x * kBlockStats;
  if (Stage < 2) {
    const float shift = Stage == 1 ? ts[0] : 0.0f;
    double sum = 0;
    for (int64_t i = b.begin + threadIdx.x; i < b.end; i += kThreads) {
      const float x = a.value[i];
      sum += static_cast<double>(Stage == 1 ? fabsf(x - shift) : x);
    }
    const double total = Reduce(temp).Sum(sum);
    if (threadIdx.x == 0) out[Stage] = total;
  } else {
    const float shift = ts[0], scale = ts[1];
    const float lo = shift - scale, hi = shift + scale;
    double bin_sum[4] = {0, 0, 0, 0}, bin_count[4] = {0, 0, 0, 0};
    for (int64_t i = b.begin + threadIdx.x; i < b.end; i += kThreads) {
      const float x = a.value[i];
      const int c = (x >= lo) + (x >= shift) + (x >= hi);
      a.code[i] = static_cast<uint8_t>(c);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        bin_sum[j] += c == j ? static_cast<double>(x) : 0.0;
        bin_count[j] += c == j ? 1.0 : 0.0;
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const double s = Reduce(temp).Sum(bin_sum[j]);
      __syncthreads();
      const double c = Reduce(temp).Sum(bin_count[j]);
      __syncthreads();
      if (threadIdx.x == 0) {
        out[2 + j] = s;
        out[6 + j] = c;
      }
    }
  }
}

__device__ void StoreFloat(uint8_t* dst, float x) {
  const uint32_t bits = __float_as_uint(x);
  dst[0] = static_cast<uint8_t>(bits);
  dst[1] = static_cast<uint8_t>(bits >> 8);
  dst[2] = static_cast<uint8_t>(bits >> 16);
  dst[3] = static_cast<uint8_t>(bits >> 24);
}

// One block per tensor: its blocks' statistics summed in a fixed order.
// Stage 0: shift; 1: scale; 2: the table (into tensor_stats and the bulk).
template <int Stage>
__global__ void __launch_bounds__(kThreads) TensorKernel(SparseLoCoArgs a) {
  __shared__ typename Reduce::TempStorage temp;
  const TensorDesc t = a.tensors[blockIdx.x];
  float* ts = a.tensor_stats + blockIdx.x * kTensorStats;
  const double kept = t.kept > 0 ? static_cast<double>(t.kept) : 1.0;
  constexpr int kFields = Stage == 2 ? 8 : 1;
  constexpr int kFirst = Stage == 2 ? 2 : Stage;
  double totals[kFields];
  for (int f = 0; f < kFields; ++f) {
    double s = 0;
    for (int64_t c = threadIdx.x; c < t.num_blocks; c += kThreads) {
      s += a.block_stats[(t.first_block + c) * kBlockStats + kFirst + f];
    }
    totals[f] = Reduce(temp).Sum(s);
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  if (Stage == 0) ts[0] = static_cast<float>(totals[0] / kept);
  if (Stage == 1) ts[1] = static_cast<float>(totals[0] / kept);
  if (Stage == 2) {
    uint8_t* table = a.bulk + t.bulk_offset;
    for (int b = 0; b < 4; ++b) {
      const double count = totals[4 + b];
      const float entry = count > 0 ? static_cast<float>(totals[b] / count)
                                    : static_cast<float>(static_cast<double>(ts[0]) + (b - 1.5) * ts[1]);
      ts[2 + b] = entry;
      StoreFloat(table + 4 * b, entry);
    }
  }
}

// One thread per 4 kept values of a tensor (one code byte, two index pairs).
__global__ void __launch_bounds__(kThreads) PackKernel(SparseLoCoArgs a) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (g >= a.num_groups) return;
  // The last tensor whose first group is <= g (empty tensors share their
  // successor's start and are skipped by taking the last such one).
  int64_t lo = 0, hi = a.num_tensors;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (a.tensors[mid].group_start <= g) lo = mid; else hi = mid;
  }
  const TensorDesc t = a.tensors[lo];
  const float* table = a.tensor_stats + lo * kTensorStats + 2;
  const int64_t i0 = 4 * (g - t.group_start);
  const int64_t k = t.kept;
  uint8_t* indices = a.bulk + t.bulk_offset + 16;
  uint8_t* codes = indices + (3 * k + 1) / 2;
  uint8_t packed = 0;
  uint32_t idx[4] = {0, 0, 0, 0};
  for (int i = 0; i < 4 && i0 + i < k; ++i) {
    const int64_t p = t.kept_start + i0 + i;
    const uint8_t c = a.code[p];
    const float decoded = table[c];
    if (a.keeps_error) a.error[a.flat[p]] = a.value[p] - decoded;
    if (a.decoded) a.decoded[p] = decoded;
    packed = static_cast<uint8_t>(packed | (c << (2 * i)));
    idx[i] = a.local[p];
  }
  codes[i0 / 4] = packed;
  for (int pair = 0; pair < 2; ++pair) {
    const int64_t first = i0 + 2 * pair;
    uint8_t* dst = indices + 3 * (first / 2);
    const uint32_t x = idx[2 * pair], y = idx[2 * pair + 1];
    if (first + 1 < k) {
      dst[0] = static_cast<uint8_t>(x);
      dst[1] = static_cast<uint8_t>((x >> 8) | ((y & 0x0f) << 4));
      dst[2] = static_cast<uint8_t>(y >> 4);
    } else if (first < k) {
      dst[0] = static_cast<uint8_t>(x);
      dst[1] = static_cast<uint8_t>(x >> 8);
    }
  }
}

// int8, one block per chunk: scale = max|x| / 127 (a true division, as the
// host's), q = rint(x / scale) clamped to [-127, 127] (x / 1 where the scale
// is 0), decoded = float(q) * scale, e <- x - decoded; no contraction into
// FMAs, so the bytes match the CPU encoder's.
__global__ void __launch_bounds__(kThreads) Int8Kernel(DenseArgs a) {
  __shared__ uint32_t warp_max[kWarps];
  const ChunkDesc d = a.chunks[blockIdx.x];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n = d.rows * d.cols;
  float v[kPer];
  LoadChunk(d, a.deltas, a.error, a.beta, a.keeps_error, /*write_back=*/false, v);
  uint32_t m = 0;  // keys of NaN sort above inf: a NaN makes the scale NaN
#pragma unroll
  for (int j = 0; j < kPer; ++j) m = max(m, Key(v[j]));
#pragma unroll
  for (int s = 16; s > 0; s >>= 1) m = max(m, __shfl_xor_sync(kFull, m, s));
  if (lane == 0) warp_max[warp] = m;
  __syncthreads();
  m = warp_max[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) m = max(m, warp_max[w]);
  const float scale = __fdiv_rn(__uint_as_float(m), 127.0f);
  const float safe = scale > 0 ? scale : 1.0f;
  if (tid == 0) {
    StoreFloat(a.bulk + d.scale_at, scale);
    if (!(isfinite(scale) && isfinite(__fmul_rn(127.0f, scale)))) atomicMin(a.bad, d.tensor);
  }
  uint8_t* out = a.bulk + d.out;
  float* e = a.error + d.e_base;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int l = j * kThreads + tid;
    if (l >= n) continue;
    const float q = fminf(fmaxf(rintf(__fdiv_rn(v[j], safe)), -127.0f), 127.0f);
    const int qi = static_cast<int>(q);
    out[l] = static_cast<uint8_t>(static_cast<int8_t>(qi));
    const float decoded = __fmul_rn(static_cast<float>(qi), scale);
    const int64_t o = Offset(d, l);
    if (a.keeps_error) e[o] = __fsub_rn(v[j], decoded);
    if (a.decoded) a.decoded[d.e_base + o] = decoded;
  }
}

// dense_bf16, one block per chunk: b = bf16(x) rounded to nearest even,
// e <- x - b, the bits at the element's layout position.
__global__ void __launch_bounds__(kThreads) Bf16Kernel(DenseArgs a) {
  const ChunkDesc d = a.chunks[blockIdx.x];
  const int tid = threadIdx.x;
  const int n = d.rows * d.cols;
  float v[kPer];
  LoadChunk(d, a.deltas, a.error, a.beta, a.keeps_error, /*write_back=*/false, v);
  uint16_t* out = reinterpret_cast<uint16_t*>(a.bulk) + d.e_base;
  float* e = a.error + d.e_base;
  int bad = 0;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int l = j * kThreads + tid;
    if (l >= n) continue;
    const __nv_bfloat16 b = __float2bfloat16_rn(v[j]);
    const uint16_t bits = __bfloat16_as_ushort(b);
    const float back = __bfloat162float(b);
    const int64_t o = Offset(d, l);
    out[o] = bits;
    bad |= (bits & 0x7f80) == 0x7f80;
    if (a.keeps_error) e[o] = __fsub_rn(v[j], back);
    if (a.decoded) a.decoded[d.e_base + o] = back;
  }
  if (__syncthreads_or(bad) && tid == 0) atomicMin(a.bad, d.tensor);
}

unsigned Blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Events around each launch of a timed encode.
class Timer {
 public:
  Timer(float* ms, cudaStream_t stream) : ms_(ms), stream_(stream) {}
  ~Timer() {
    for (int i = 0; i < used_; ++i) cudaEventDestroy(events_[i]);
  }
  void Mark() {
    if (!ms_ || used_ == kMax) return;
    cudaEventCreate(&events_[used_]);
    cudaEventRecord(events_[used_++], stream_);
  }
  void Finish() {
    if (!ms_ || used_ == 0) return;
    cudaEventSynchronize(events_[used_ - 1]);
    for (int i = 0; i + 1 < used_; ++i) cudaEventElapsedTime(&ms_[i], events_[i], events_[i + 1]);
  }

 private:
  static constexpr int kMax = kSparseLoCoPhases + 1;
  float* ms_;
  cudaStream_t stream_;
  cudaEvent_t events_[kMax];
  int used_ = 0;
};

std::string LastError() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

std::string EncodeDense(const DenseArgs& a, bool int8, float* ms) {
  auto stream = static_cast<cudaStream_t>(a.stream);
  cudaMemsetAsync(a.bad, 0x7f, sizeof(int32_t), stream);
  Timer timer(ms, stream);
  timer.Mark();
  if (a.num_chunks > 0) {
    const auto chunks = static_cast<unsigned>(a.num_chunks);
    if (int8) {
      Int8Kernel<<<chunks, kThreads, 0, stream>>>(a);
    } else {
      Bf16Kernel<<<chunks, kThreads, 0, stream>>>(a);
    }
  }
  timer.Mark();
  timer.Finish();
  return LastError();
}

}  // namespace

std::string EncodeSparseLoCo(const SparseLoCoArgs& a, float* ms) {
  auto stream = static_cast<cudaStream_t>(a.stream);
  const auto chunks = static_cast<unsigned>(a.num_chunks), blocks = static_cast<unsigned>(a.num_blocks),
             tensors = static_cast<unsigned>(a.num_tensors);
  Timer timer(ms, stream);
  timer.Mark();
  if (chunks > 0) SelectKernel<<<chunks, kThreads, 0, stream>>>(a);
  timer.Mark();
  if (blocks > 0) BlockKernel<0><<<blocks, kThreads, 0, stream>>>(a);
  timer.Mark();
  if (tensors > 0) TensorKernel<0><<<tensors, kThreads, 0, stream>>>(a);
  timer.Mark();
  if (blocks > 0) BlockKernel<1><<<blocks, kThreads, 0, stream>>>(a);
  timer.Mark();
  if (tensors > 0) TensorKernel<1><<<tensors, kThreads, 0, stream>>>(a);
  timer.Mark();
  if (blocks > 0) BlockKernel<2><<<blocks, kThreads, 0, stream>>>(a);
  timer.Mark();
  if (tensors > 0) TensorKernel<2><<<tensors, kThreads, 0, stream>>>(a);
  timer.Mark();
  if (a.num_groups > 0) PackKernel<<<Blocks(a.num_groups), kThreads, 0, stream>>>(a);
  timer.Mark();
  timer.Finish();
  return LastError();
}

std::string PinHost(void* p, size_t n) {
  const cudaError_t err = cudaHostRegister(p, n, cudaHostRegisterDefault);
  if (err == cudaSuccess) return std::string();
  cudaGetLastError();  // clear it: the caller falls back to pageable memory
  return cudaGetErrorString(err);
}

void UnpinHost(void* p) {
  if (cudaHostUnregister(p) != cudaSuccess) cudaGetLastError();
}

std::string EncodeInt8(const DenseArgs& a, float* ms) { return EncodeDense(a, /*int8=*/true, ms); }
std::string EncodeDenseBf16(const DenseArgs& a, float* ms) { return EncodeDense(a, /*int8=*/false, ms); }

}  // namespace lowband::cuda_codec
