// ParaBlock blocks and schedules (codec/blocks.h, config/config.h).
#include "codec/blocks.h"

#include <catch2/catch.hpp>
#include <map>

#include "config/config.h"

namespace lowband {
namespace {

// The GPT layout's names for a 3-layer model (tensor shapes made up).
ParamLayout GptLikeLayout() {
  ParamLayout l;
  l.tensors = {{"tok_emb.weight", {8, 4}}, {"pos_emb.weight", {4, 4}}, {"blocks.0.attn.weight", {4, 4}},
               {"blocks.0.mlp.weight", {4, 8}}, {"blocks.1.attn.weight", {4, 4}}, {"blocks.2.attn.weight", {4, 4}},
               {"blocks.2.mlp.weight", {4, 8}}, {"ln_f.weight", {4}}, {"ln_f.bias", {4}}};
  return l;
}

TEST_CASE("blocks: embeddings go with the first block, the final norm with the last", "[unit]") {
  const ParamLayout layout = GptLikeLayout();
  auto r = BlockTensorRanges(layout, {0, 1, 1});
  REQUIRE(r.ok());
  REQUIRE(r->size() == 2);
  CHECK((*r)[0].first == 0);
  CHECK((*r)[0].count == 4);  // tok_emb, pos_emb, blocks.0.*
  CHECK((*r)[0].offset == 0);
  CHECK((*r)[0].numel == 32 + 16 + 16 + 32);
  CHECK((*r)[1].first == 4);
  CHECK((*r)[1].count == 5);  // blocks.1, blocks.2.*, ln_f.*
  CHECK((*r)[1].offset == 96);
  CHECK((*r)[0].numel + (*r)[1].numel == layout.numel());
  const ParamLayout slice = SliceLayout(layout, (*r)[1]);
  REQUIRE(slice.tensors.size() == 5);
  CHECK(slice.tensors.front().name == "blocks.1.attn.weight");
  CHECK(slice.tensors.back().name == "ln_f.bias");

  auto three = BlockTensorRanges(layout, {0, 1, 2});
  REQUIRE(three.ok());
  CHECK((*three)[1].count == 1);
  CHECK((*three)[2].count == 4);
}

TEST_CASE("blocks: layouts that do not partition are refused", "[unit]") {
  ParamLayout layout = GptLikeLayout();
  CHECK_FALSE(BlockTensorRanges(layout, {}).ok());
  // A layer beyond the list.
  CHECK(BlockTensorRanges(layout, {0, 1}).status().message().find("layer 2") != std::string::npos);
  // Layers out of order in the layout: block 1 would come back after block 0 resumed.
  ParamLayout shuffled = layout;
  std::swap(shuffled.tensors[2], shuffled.tensors[4]);  // blocks.1 before blocks.0
  CHECK_FALSE(BlockTensorRanges(shuffled, {0, 1, 1}).ok());
  // A block with no tensor.
  ParamLayout two_layers;
  two_layers.tensors = {{"blocks.0.w", {2}}, {"blocks.1.w", {2}}};
  CHECK_FALSE(BlockTensorRanges(two_layers, {0, 0, 2}).ok());
}

TEST_CASE("blocks: layer partition and the block schedules", "[unit]") {
  ParaBlockConfig pb;
  CHECK(LayerBlocks(4, pb).empty());  // blocks 1: off
  pb.blocks = 3;
  CHECK(LayerBlocks(4, pb) == std::vector<int>{0, 0, 1, 2});
  pb.split = {1, 1, 2};
  CHECK(LayerBlocks(4, pb) == std::vector<int>{0, 1, 2, 2});

  // Cyclic per worker: worker i trains (r - 1 + i) mod B.
  pb.random = false;
  pb.per_worker = true;
  for (uint32_t r = 1; r <= 6; ++r) {
    for (int i = 0; i < 3; ++i) CHECK(BlockForRound(pb, 1, r, i, "x") == static_cast<int>((r - 1 + i) % 3));
  }
  // Cyclic shared: everyone the same block.
  pb.per_worker = false;
  for (uint32_t r = 1; r <= 6; ++r) CHECK(BlockForRound(pb, 1, r, 2, "x") == static_cast<int>((r - 1) % 3));
  // Random shared: a function of (seed, round) alone, in range, covering every block.
  pb.random = true;
  std::map<int, int> seen;
  for (uint32_t r = 1; r <= 300; ++r) {
    const int b = BlockForRound(pb, 42, r, 0, "a");
    CHECK(b == BlockForRound(pb, 42, r, 5, "b"));
    REQUIRE(b >= 0);
    REQUIRE(b < 3);
    ++seen[b];
  }
  CHECK(seen.size() == 3);
  for (const auto& [b, n] : seen) CHECK(n > 60);  // roughly uniform (100 expected)
  // Random per worker: sites differ; the same inputs give the same block.
  pb.per_worker = true;
  int differ = 0;
  for (uint32_t r = 1; r <= 50; ++r) {
    CHECK(BlockForRound(pb, 42, r, 0, "site-a") == BlockForRound(pb, 42, r, 0, "site-a"));
    differ += BlockForRound(pb, 42, r, 0, "site-a") != BlockForRound(pb, 42, r, 0, "site-b");
  }
  CHECK(differ > 10);
  int seed_differs = 0;  // another campaign seed, another schedule
  for (uint32_t r = 1; r <= 20; ++r) seed_differs += BlockForRound(pb, 42, r, 0, "a") != BlockForRound(pb, 43, r, 0, "a");
  CHECK(seed_differs > 3);
}

}  // namespace
}  // namespace lowband
