// SparseLoCo on the host: top-k selection and 2-bit quantisation of a dense
// fp32 vector, torch-free, for the coordinator's compressed downlink
// (coordinator/downlink.h). The rules are the device encoder's
// (ml/codec_device.cc EncodeSparseLoCo, docs/codecs.md) without its error
// feedback, which the caller keeps:
//
//   per chunk of the plan: the k_c entries of largest |v| (equal magnitudes:
//     the lower local index first), listed in increasing index order;
//   per tensor, over its K kept values x (chunk after chunk):
//     shift = mean(x), scale = mean(|x - shift|) (fp64 sums, rounded to fp32);
//     thresholds shift - scale, shift, shift + scale (fp32);
//     code = number of thresholds <= x;
//     table[b] = mean of the x with code b (fp64 sum), or, for an empty bin,
//     shift + (b - 1.5) * scale; a tensor with nothing kept has table 0.
//
// Not bit-identical to the device encoder (its fp64 sums run in another
// order, and torch::topk breaks ties its own way), but every payload it
// makes passes ParseUpdate, and it is deterministic: the same plan and v
// give the same bytes on any machine, with or without a pool.
//
// Pure functions, any thread. `pool` may be null (the calling thread does
// everything); with a pool the chunks are split over its threads, which
// changes nothing in the result.
#pragma once

#include <vector>

#include "base/status.h"
#include "base/thread_pool.h"
#include "codec/codec.h"
#include "codec/params.h"

namespace lowband {

// One tensor's kept values x[0, K) (K >= 0) -> its 4 table entries and K
// codes, by the rules above (also the sparse_2bit downlink's quantiser).
void QuantiseSparseLoCo(const float* x, int64_t K, float* table, uint8_t* codes);

// The unpacked result for `plan` (tables, kept indices, codes as
// PackSparseLoCo takes them). CHECKs that v has plan.numel values.
SparseLoCoParts SelectSparseLoCo(const LayoutPlan& plan, const std::vector<float>& v, ThreadPool* pool);

// SelectSparseLoCo, packed. InvalidArgument when v holds a NaN or an
// infinity (such a value is always kept and makes its tensor's table
// non-finite, which PackSparseLoCo refuses), or when the plan was not made
// for the layout.
StatusOr<Encoded> EncodeSparseLoCoHost(const ParamLayout& layout, const LayoutPlan& plan, const std::vector<float>& v,
                                       ThreadPool* pool);

}  // namespace lowband
