#include "codec/blocks.h"

#include <cstdlib>
#include <string>

namespace lowband {

namespace {

// The layer of a "blocks.<l>." tensor, or -1.
int LayerOf(const std::string& name) {
  static const std::string kPrefix = "blocks.";
  if (name.rfind(kPrefix, 0) != 0) return -1;
  size_t i = kPrefix.size();
  int layer = 0;
  bool digits = false;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9' && layer < 1000000; ++i) {
    layer = layer * 10 + (name[i] - '0');
    digits = true;
  }
  return digits && i < name.size() && name[i] == '.' ? layer : -1;
}

}  // namespace

StatusOr<std::vector<TensorRange>> BlockTensorRanges(const ParamLayout& layout,
                                                     const std::vector<int>& layer_blocks) {
  if (layer_blocks.empty()) return InvalidArgument("blocks: no layers");
  const int blocks = layer_blocks.back() + 1;
  std::vector<TensorRange> ranges(static_cast<size_t>(blocks));
  int current = 0;     // block of the tensors seen so far
  bool seen_layer = false;
  int64_t offset = 0;
  for (size_t t = 0; t < layout.tensors.size(); ++t) {
    const TensorSpec& spec = layout.tensors[t];
    const int layer = LayerOf(spec.name);
    int block = current;
    if (layer >= 0) {
      if (layer >= static_cast<int>(layer_blocks.size())) {
        return InvalidArgument("blocks: tensor " + spec.name + " belongs to layer " + std::to_string(layer) +
                               " of a model with " + std::to_string(layer_blocks.size()) + " layers");
      }
      block = layer_blocks[static_cast<size_t>(layer)];
      seen_layer = true;
    } else if (seen_layer) {
      block = blocks - 1;  // after the layers: the final LayerNorm
    }
    if (block < current) {
      return InvalidArgument("blocks: tensor " + spec.name + " of block " + std::to_string(block) +
                             " comes after block " + std::to_string(current) + " (blocks must be contiguous)");
    }
    TensorRange& r = ranges[static_cast<size_t>(block)];
    if (r.count == 0) {
      r.first = t;
      r.offset = offset;
    } else if (r.first + r.count != t) {
      return InvalidArgument("blocks: block " + std::to_string(block) + " is not contiguous at tensor " + spec.name);
    }
    ++r.count;
    r.numel += spec.numel();
    offset += spec.numel();
    current = block;
  }
  for (int b = 0; b < blocks; ++b) {
    if (ranges[static_cast<size_t>(b)].count == 0) {
      return InvalidArgument("blocks: block " + std::to_string(b) + " holds no tensor");
    }
  }
  return ranges;
}

ParamLayout SliceLayout(const ParamLayout& layout, const TensorRange& range) {
  ParamLayout out;
  out.tensors.assign(layout.tensors.begin() + static_cast<std::ptrdiff_t>(range.first),
                     layout.tensors.begin() + static_cast<std::ptrdiff_t>(range.first + range.count));
  return out;
}

}  // namespace lowband
