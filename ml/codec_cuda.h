// CUDA kernels of the device encoders (ml/codec_cuda.cu), built only when
// LibTorch has CUDA and nvcc is found (LOWBAND_CUDA_KERNELS). Plain types
// only: the .cu file includes neither LibTorch nor FlatBuffers, so nvcc
// compiles it in seconds. Each encoder writes the exact bulk bytes of its
// format (codec/codec.h) in device memory: the host copies them out once.
//
// sparseloco runs on the caller's stream in eight kernels, none of which
// reads the error buffer more than once:
//   select   one block per chunk: e <- delta + beta * e (written back),
//            top-k of |e| by a radix select in shared memory (8 bits a
//            pass from the top, stopping once the k-th key's bucket is kept
//            whole), kept (local index, value, flat index) written in index
//            order;
//   sums     one block per kKeptBlock kept values of a tensor, three times:
//            fp64 sum of v; of |v - shift|; the 2-bit codes with fp64 bin
//            sums and counts;
//   tensor   one block per tensor after each of them: shift = mean v; scale
//            = mean |v - shift|; the table of bin means (empty bin: shift +
//            (j - 1.5) scale), written into the bulk;
//   pack     one thread per 4 kept values: decoded value, e[kept] <- v -
//            decoded, 12-bit indices and 2-bit codes straight into the bulk.
// int8 and dense_bf16 run one kernel, one block per chunk: e <- delta +
// beta * e, the quantised bytes and (int8) the chunk's scale into the bulk,
// e <- e - decoded, and a flag for a non-finite value.
// Sums go through fixed block reductions, so results do not depend on
// scheduling: the same input gives the same bytes on every run.
//
// Thread: the caller's (the worker's training thread); no state is kept.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace lowband::cuda_codec {

struct ChunkDesc {
  int64_t e_base;       // flat error-buffer index of the chunk's (0, 0) element
  int64_t d_base;       // index of that element in its delta tensor
  int64_t stride;       // elements between chunk rows
  int64_t kept_offset;  // sparseloco: first kept value of the chunk, plan order
  int64_t out;          // int8: bulk byte of the chunk's first q
  int64_t scale_at;     // int8: bulk byte of the chunk's scale
  int32_t rows, cols, k, tensor;
};

// A run of kept values of one tensor (plan order): the sums' unit of work.
struct BlockDesc {
  int64_t begin, end;
  int32_t tensor, pad;
};
constexpr int kKeptBlock = 4096;

struct TensorDesc {
  int64_t kept_start;   // first kept value, plan order
  int64_t kept;         // kept values of the tensor
  int64_t first_block;  // its blocks: [first_block, first_block + num_blocks)
  int64_t num_blocks;
  int64_t bulk_offset;  // first byte of its table in the bulk
  int64_t group_start;  // first pack group (4 kept values each)
};

struct SparseLoCoArgs {
  const ChunkDesc* chunks = nullptr;  // device arrays
  int64_t num_chunks = 0;
  const BlockDesc* blocks = nullptr;
  int64_t num_blocks = 0;
  const TensorDesc* tensors = nullptr;
  int64_t num_tensors = 0;
  int64_t num_groups = 0;                // sum over tensors of ceil(kept / 4)
  const float* const* deltas = nullptr;  // device array of num_tensors contiguous delta pointers
  float* error = nullptr;                // [P] error buffer (scratch without error feedback)
  float beta = 0;
  bool keeps_error = false;
  // workspace, device: kept-sized arrays, num_blocks * kBlockStats, num_tensors * kTensorStats
  uint16_t* local = nullptr;
  float* value = nullptr;
  int64_t* flat = nullptr;
  uint8_t* code = nullptr;
  double* block_stats = nullptr;
  float* tensor_stats = nullptr;
  // outputs, device
  uint8_t* bulk = nullptr;     // BulkBytes(plan, sparseloco) bytes
  float* decoded = nullptr;    // optional [kept]: the value each kept position decodes to
  void* stream = nullptr;      // cudaStream_t
};

constexpr int kBlockStats = 10;   // sum v, sum |v - shift|, 4 bin sums, 4 bin counts
constexpr int kTensorStats = 6;   // shift, scale, 4 table entries

// int8 and dense_bf16.
struct DenseArgs {
  const ChunkDesc* chunks = nullptr;  // device array
  int64_t num_chunks = 0;
  const float* const* deltas = nullptr;
  float* error = nullptr;  // [P]; untouched without error feedback
  float beta = 0;
  bool keeps_error = false;
  uint8_t* bulk = nullptr;     // BulkBytes(plan, kind) bytes
  float* decoded = nullptr;    // optional [P], layout order: what the payload decodes to
  int32_t* bad = nullptr;      // one int: the lowest tensor with a non-finite value, else kNoBadTensor
  void* stream = nullptr;
};
constexpr int32_t kNoBadTensor = 0x7f7f7f7f;

// Phases of a timed launch (the kernels above in order); `ms`, when not
// null, receives kSparseLoCoPhases (or 1) times, and the launch then waits
// for the kernels (benchmarks only).
constexpr int kSparseLoCoPhases = 8;
extern const char* const kSparseLoCoPhaseNames[kSparseLoCoPhases];

// Launch the kernels; "" on success, else the CUDA error text. Without `ms`
// they do not synchronise: the caller's next copy on the stream waits.
std::string EncodeSparseLoCo(const SparseLoCoArgs& args, float* ms = nullptr);
std::string EncodeInt8(const DenseArgs& args, float* ms = nullptr);
std::string EncodeDenseBf16(const DenseArgs& args, float* ms = nullptr);

// Page-locks host memory [p, p + n) for direct device->host copies
// (cudaHostRegister), and releases it; "" on success, else the error text.
std::string PinHost(void* p, size_t n);
void UnpinHost(void* p);

}  // namespace lowband::cuda_codec
