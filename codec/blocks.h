// ParaBlock blocks (docs/design.md 3.4): which tensors of the GPT layout each
// block holds. Block b holds the transformer layers l with layer_blocks[l]
// == b ("blocks.<l>." tensors); tensors before the first layer (token and
// position embeddings) belong to block 0, tensors after the last layer (the
// final LayerNorm; the head is tied to the embedding) to the last block.
// Blocks are contiguous runs of the layout. Torch-free; used by the
// coordinator (aggregation per block) and the worker (freezing, encoding).
#pragma once

#include <cstddef>
#include <vector>

#include "codec/params.h"
#include "base/status.h"

namespace lowband {

struct TensorRange {
  size_t first = 0;  // index of the first tensor in the layout
  size_t count = 0;
  int64_t offset = 0;  // flat offset of its first element
  int64_t numel = 0;
};

// One range per block, in block order. InvalidArgument if a tensor names a
// layer outside layer_blocks, or a block's tensors are not contiguous or
// empty.
StatusOr<std::vector<TensorRange>> BlockTensorRanges(const ParamLayout& layout, const std::vector<int>& layer_blocks);

// The layout of the tensors of one range (same names and shapes).
ParamLayout SliceLayout(const ParamLayout& layout, const TensorRange& range);

}  // namespace lowband
