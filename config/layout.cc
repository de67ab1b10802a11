// How a campaign's transformer layers map onto pipeline stages and
// ParaBlock blocks, and which block a worker trains in a round: pure
// functions of the config that the coordinator and the workers must agree on.
#include "config/config.h"

#include <algorithm>
#include <string>
#include <vector>

#include "base/hash.h"

namespace lowband {

std::vector<int> StageBlocks(int layers, const PipelineConfig& pipeline) {
  if (!pipeline.split.empty()) return pipeline.split;
  const int s = std::max(pipeline.stages, 1);
  std::vector<int> blocks(static_cast<size_t>(s), layers / s);
  for (int i = 0; i < layers % s; ++i) ++blocks[static_cast<size_t>(i)];
  return blocks;
}

std::string StagePrefix(int stage) { return "stage" + std::to_string(stage) + "."; }

std::vector<int> LayerBlocks(int layers, const ParaBlockConfig& parablock) {
  if (parablock.blocks <= 1) return {};
  PipelineConfig even;  // the same split rule as pipeline stages
  even.stages = parablock.blocks;
  even.split = parablock.split;
  std::vector<int> of_layer;
  const std::vector<int> per_block = StageBlocks(layers, even);
  for (size_t b = 0; b < per_block.size(); ++b) of_layer.insert(of_layer.end(), per_block[b], static_cast<int>(b));
  return of_layer;
}

int BlockForRound(const ParaBlockConfig& parablock, uint64_t seed, uint32_t round, int worker_position,
                  const std::string& site) {
  const int b = std::max(parablock.blocks, 1);
  const uint64_t r = round >= 1 ? round - 1 : 0;
  if (!parablock.random) {
    const uint64_t offset = parablock.per_worker ? static_cast<uint64_t>(std::max(worker_position, 0)) : 0;
    return static_cast<int>((r + offset) % static_cast<uint64_t>(b));
  }
  // SplitMix64 over (seed, round[, site]): the same on every run.
  uint64_t x = seed ^ (0x9e3779b97f4a7c15ull * (r + 1));
  if (parablock.per_worker) x ^= Fnv1a64(site.data(), site.size(), 0xcbf29ce484222325ull);
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return static_cast<int>(x % static_cast<uint64_t>(b));
}

int KvHeads(const ModelConfig& m) { return m.arch == ModelArch::kLlama && m.kv_heads > 0 ? m.kv_heads : m.heads; }

int FfnHidden(const ModelConfig& m) {
  if (m.arch != ModelArch::kLlama) return 4 * m.d_model;
  if (m.ffn_hidden > 0) return m.ffn_hidden;
  const int64_t h = (8 * static_cast<int64_t>(m.d_model) + 2) / 3;  // 8/3 d_model, rounded up
  return static_cast<int>((h + 63) / 64 * 64);
}

}  // namespace lowband
