// CUDA kernels of the sparseloco encoder (ml/codec_cuda.cu), built only
// when LibTorch has CUDA and nvcc is found (LOWBAND_CUDA_KERNELS). Plain
// types only: the .cu file includes neither LibTorch nor FlatBuffers, so
// nvcc compiles it in seconds.
//
// One call runs the whole encode on the device, on the caller's stream, in
// seven kernels, none of which reads the error buffer more than once:
//   select   one block per chunk: e <- delta + beta * e (written back),
//            top-k of |e| by a 4-pass radix select in shared memory, kept
//            (local index, value, flat index) written in index order, and
//            the chunk's fp64 sum of kept values;
//   shift    one block per tensor: mean of the kept values;
//   spread   one block per chunk: fp64 sum of |v - shift|;
//   scale    one block per tensor: mean absolute deviation;
//   codes    one block per chunk: the 2-bit code of each kept value, fp64
//            per-bin sums and counts;
//   table    one block per tensor: bin means (empty bin: shift + (j - 1.5)
//            scale), written into the bulk;
//   pack     one thread per 4 kept values: decoded value, e[kept] <- v -
//            decoded, 12-bit indices and 2-bit codes straight into the bulk.
// Sums go through fixed block reductions, so results do not depend on
// scheduling: the same input gives the same bytes on every run.
//
// Thread: the caller's (the worker's training thread); no state is kept.
#pragma once

#include <cstdint>
#include <string>

namespace lowband::cuda_codec {

struct ChunkDesc {
  int64_t e_base;       // flat error-buffer index of the chunk's (0, 0) element
  int64_t d_base;       // index of that element in its delta tensor
  int64_t stride;       // elements between chunk rows
  int64_t kept_offset;  // first kept value of the chunk, plan order
  int32_t rows, cols, k, tensor;
};

struct TensorDesc {
  int64_t kept_start;   // first kept value, plan order
  int64_t kept;         // kept values of the tensor
  int64_t first_chunk;  // its chunks: [first_chunk, first_chunk + num_chunks)
  int64_t num_chunks;
  int64_t bulk_offset;  // first byte of its table in the bulk
  int64_t group_start;  // first pack group (4 kept values each)
};

struct SparseLoCoArgs {
  const ChunkDesc* chunks = nullptr;  // device arrays
  int64_t num_chunks = 0;
  const TensorDesc* tensors = nullptr;
  int64_t num_tensors = 0;
  int64_t num_groups = 0;                // sum over tensors of ceil(kept / 4)
  const float* const* deltas = nullptr;  // device array of num_tensors contiguous delta pointers
  float* error = nullptr;                // [P] error buffer (scratch without error feedback)
  float beta = 0;
  bool keeps_error = false;
  // workspace, device: kept-sized arrays, num_chunks * kChunkStats, num_tensors * kTensorStats
  uint16_t* local = nullptr;
  float* value = nullptr;
  int64_t* flat = nullptr;
  uint8_t* code = nullptr;
  double* chunk_stats = nullptr;
  float* tensor_stats = nullptr;
  // outputs, device
  uint8_t* bulk = nullptr;     // BulkBytes(plan, sparseloco) bytes
  float* decoded = nullptr;    // optional [kept]: the value each kept position decodes to
  void* stream = nullptr;      // cudaStream_t
};

constexpr int kChunkStats = 10;   // sum v, sum |v - shift|, 4 bin sums, 4 bin counts
constexpr int kTensorStats = 6;   // shift, scale, 4 table entries

// Launches the kernels; "" on success, else the CUDA error text. Does not
// synchronise: the caller's next copy on the stream waits for them.
std::string EncodeSparseLoCo(const SparseLoCoArgs& args);

}  // namespace lowband::cuda_codec
