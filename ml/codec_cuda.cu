// The sparseloco encoder on a CUDA device: see codec_cuda.h for the steps.
// The wire format is the host packer's (codec.cc, PackSparseLoCo): per
// tensor a 16-byte table, then its kept indices 12-bit packed in pairs
// (a lone last index in 2 bytes), then its codes 4 to a byte, first in the
// low bits.
#include "ml/codec_cuda.h"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

namespace lowband::cuda_codec {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPer = 16;                // elements per thread: 256 * 16 = 4096, the largest chunk
constexpr int kSlots = kPer * kWarps;   // 32-element runs of a chunk, in index order

using Scan = cub::BlockScan<int, kThreads>;
using Reduce = cub::BlockReduce<double, kThreads>;

// Order-preserving key of |x|: the bits without the sign (NaN above inf, as
// in the host kernel and torch::topk).
__device__ __forceinline__ uint32_t Key(float x) { return __float_as_uint(x) & 0x7fffffffu; }

__device__ __forceinline__ uint32_t LanesBelow(int lane) { return (1u << lane) - 1u; }

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

// One block per chunk. Element l of the chunk (row-major local index) is
// held by thread l % 256 as its item l / 256, so a warp's loads are
// consecutive elements of a row, and slot (item * 8 + warp) covers local
// indices [32 * slot, 32 * slot + 32) in order: ballots give index order.
__global__ void __launch_bounds__(kThreads) SelectKernel(SparseLoCoArgs a) {
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } temp;
  __shared__ int hist[256];
  __shared__ int ties_before[kSlots];
  __shared__ int kept_before[kSlots];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining;

  const ChunkDesc d = a.chunks[blockIdx.x];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n = d.rows * d.cols;
  const float* delta = a.deltas[d.tensor] + d.d_base;
  float* e = a.error + d.e_base;

  float v[kPer];
  uint32_t key[kPer];
  int64_t off[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int l = j * kThreads + tid;
    key[j] = 0;
    v[j] = 0;
    off[j] = 0;
    if (l < n) {
      const int r = l / d.cols;
      const int64_t o = static_cast<int64_t>(r) * d.stride + (l - r * d.cols);
      float x = delta[o];
      if (a.keeps_error) {
        x = x + a.beta * e[o];
        e[o] = x;
      }
      v[j] = x;
      key[j] = Key(x);
      off[j] = o;
    }
  }
  const int k = d.k < n ? d.k : n;
  if (k <= 0) {  // uniform across the block
    if (tid == 0) a.chunk_stats[blockIdx.x * kChunkStats + 0] = 0;
    return;
  }

  // Radix select, 8 bits a pass from the top: the k-th largest key.
  uint32_t prefix = 0, mask = 0;
  int remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    hist[tid] = 0;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      if (j * kThreads + tid < n && (key[j] & mask) == prefix) atomicAdd(&hist[(key[j] >> shift) & 255], 1);
    }
    __syncthreads();
    // Thread t looks at digit 255 - t: an inclusive scan counts the keys
    // whose digit is >= it; the digit holding the remaining-th is where the
    // count first reaches `remaining`.
    const int digit = 255 - tid;
    const int count = hist[digit];
    int at_least = 0;
    Scan(temp.scan).InclusiveSum(count, at_least);
    const int above = at_least - count;
    if (above < remaining && at_least >= remaining) {
      s_prefix = prefix | (static_cast<uint32_t>(digit) << shift);
      s_remaining = remaining - above;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 255u << shift;
    __syncthreads();
  }
  const uint32_t threshold = prefix;  // keep every key above it and the first `remaining` equal to it

  uint32_t tie_mask[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const bool tie = j * kThreads + tid < n && key[j] == threshold;
    tie_mask[j] = __ballot_sync(0xffffffffu, tie);
    if (lane == 0) ties_before[j * kWarps + warp] = __popc(tie_mask[j]);
  }
  __syncthreads();
  ScanSlots(ties_before, temp.scan);

  uint32_t keep_mask[kPer];
  bool keep[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const bool valid = j * kThreads + tid < n;
    const int slot = j * kWarps + warp;
    const bool tie = (tie_mask[j] >> lane) & 1u;
    const int tie_rank = ties_before[slot] + __popc(tie_mask[j] & LanesBelow(lane));
    keep[j] = valid && (key[j] > threshold || (tie && tie_rank < remaining));
    keep_mask[j] = __ballot_sync(0xffffffffu, keep[j]);
    if (lane == 0) kept_before[slot] = __popc(keep_mask[j]);
  }
  __syncthreads();
  ScanSlots(kept_before, temp.scan);

  double sum = 0;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    if (!keep[j]) continue;
    const int slot = j * kWarps + warp;
    const int64_t p = d.kept_offset + kept_before[slot] + __popc(keep_mask[j] & LanesBelow(lane));
    a.local[p] = static_cast<uint16_t>(j * kThreads + tid);
    a.value[p] = v[j];
    a.flat[p] = d.e_base + off[j];
    sum += static_cast<double>(v[j]);
  }
  const double total = Reduce(temp.reduce).Sum(sum);
  if (tid == 0) a.chunk_stats[blockIdx.x * kChunkStats + 0] = total;
}

// One block per chunk over its kept values: Stage 1 sums |v - shift|;
// stage 2 writes codes and sums values and counts per bin.
template <int Stage>
__global__ void __launch_bounds__(kThreads) ChunkKernel(SparseLoCoArgs a) {
  __shared__ typename Reduce::TempStorage temp;
  const ChunkDesc d = a.chunks[blockIdx.x];
  const float* ts = a.tensor_stats + d.tensor * kTensorStats;
  const float shift = ts[0];
  const int k = d.k < d.rows * d.cols ? d.k : d.rows * d.cols;
  if (Stage == 1) {
    double dev = 0;
    for (int i = threadIdx.x; i < k; i += kThreads) {
      dev += static_cast<double>(fabsf(a.value[d.kept_offset + i] - shift));
    }
    const double total = Reduce(temp).Sum(dev);
    if (threadIdx.x == 0) a.chunk_stats[blockIdx.x * kChunkStats + 1] = total;
  } else {
    const float scale = ts[1];
    const float lo = shift - scale, hi = shift + scale;
    double bin_sum[4] = {0, 0, 0, 0}, bin_count[4] = {0, 0, 0, 0};
    for (int i = threadIdx.x; i < k; i += kThreads) {
      const float x = a.value[d.kept_offset + i];
      const int c = (x >= lo) + (x >= shift) + (x >= hi);
      a.code[d.kept_offset + i] = static_cast<uint8_t>(c);
      bin_sum[c] += static_cast<double>(x);
      bin_count[c] += 1.0;
    }
    for (int b = 0; b < 4; ++b) {
      const double s = Reduce(temp).Sum(bin_sum[b]);
      __syncthreads();
      const double c = Reduce(temp).Sum(bin_count[b]);
      __syncthreads();
      if (threadIdx.x == 0) {
        a.chunk_stats[blockIdx.x * kChunkStats + 2 + b] = s;
        a.chunk_stats[blockIdx.x * kChunkStats + 6 + b] = c;
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

// One block per tensor: its chunks' statistics summed in a fixed order.
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
    for (int64_t c = threadIdx.x; c < t.num_chunks; c += kThreads) {
      s += a.chunk_stats[(t.first_chunk + c) * kChunkStats + kFirst + f];
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

}  // namespace

std::string EncodeSparseLoCo(const SparseLoCoArgs& a) {
  auto stream = static_cast<cudaStream_t>(a.stream);
  const auto chunks = static_cast<unsigned>(a.num_chunks), tensors = static_cast<unsigned>(a.num_tensors);
  if (chunks > 0) SelectKernel<<<chunks, kThreads, 0, stream>>>(a);
  if (tensors > 0) TensorKernel<0><<<tensors, kThreads, 0, stream>>>(a);
  if (chunks > 0) ChunkKernel<1><<<chunks, kThreads, 0, stream>>>(a);
  if (tensors > 0) TensorKernel<1><<<tensors, kThreads, 0, stream>>>(a);
  if (chunks > 0) ChunkKernel<2><<<chunks, kThreads, 0, stream>>>(a);
  if (tensors > 0) TensorKernel<2><<<tensors, kThreads, 0, stream>>>(a);
  if (a.num_groups > 0) {
    PackKernel<<<static_cast<unsigned>((a.num_groups + kThreads - 1) / kThreads), kThreads, 0, stream>>>(a);
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace lowband::cuda_codec
