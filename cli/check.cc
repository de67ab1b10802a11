// `lowband check`: a campaign validated without starting anything, and the
// figures an operator plans with.
#include <algorithm>
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "codec/codec.h"
#include "config/config.h"
#include "ml/model_init.h"

namespace lowband::cli {
namespace {

std::string Bytes(double b) {
  char buf[32];
  if (b >= 1e9) std::snprintf(buf, sizeof(buf), "%.2f GB", b / 1e9);
  else if (b >= 1e6) std::snprintf(buf, sizeof(buf), "%.2f MB", b / 1e6);
  else if (b >= 1e3) std::snprintf(buf, sizeof(buf), "%.2f KB", b / 1e3);
  else std::snprintf(buf, sizeof(buf), "%.0f B", b);
  return buf;
}

std::string FormatBudget(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", x);
  return buf;
}

std::string Seconds(double bytes, double mbit) {
  char buf[32];
  const double s = bytes * 8 / (mbit * 1e6);
  if (s < 0.1) {
    std::snprintf(buf, sizeof(buf), "%.1f ms", s * 1e3);
  } else {
    std::snprintf(buf, sizeof(buf), "%.2f s", s);
  }
  return buf;
}

}  // namespace

int Check(const CheckOptions& o) {
  auto merged = LoadCampaignWithOverrides(o.campaign_file, o.sets);
  if (!merged.ok()) {
    std::fprintf(stderr, "%s\n", merged.status().message().c_str());
    std::fprintf(stderr, "lowband check: %s is not a valid campaign\n", o.campaign_file.c_str());
    return 78;
  }
  const CampaignConfig& c = merged->config;
  auto layout = ModelLayout(c.model);
  if (!layout.ok()) {
    std::fprintf(stderr, "lowband check: %s\n", layout.status().ToString().c_str());
    return 78;
  }
  const auto& m = c.model;
  const double params = static_cast<double>(layout->numel());
  const LayoutPlan plan = PlanLayout(*layout, c.codec.topk);
  const int sites = static_cast<int>(c.sites.size());
  std::printf("lowband check: %s is a valid campaign\n", o.campaign_file.c_str());
  std::printf("  model       %s, %d layers x d_model %d, %d heads", ModelArchName(m.arch), m.layers, m.d_model, m.heads);
  if (m.arch == ModelArch::kLlama) std::printf(" (%d key/value), SwiGLU %d", KvHeads(m), FfnHidden(m));
  std::printf(", context %d, vocab %d: %.0f parameters (%s fp32)%s\n", m.context, m.vocab, params,
              Bytes(4 * params).c_str(), m.init_from.empty() ? "" : (", from " + m.init_from).c_str());
  std::printf("  rounds      %d x H = %d inner steps of batch %d; %d sites listed, quorum %d of %d\n",
              c.training.rounds, c.training.inner_steps, c.training.batch_size, sites, c.quorum.min_workers,
              c.quorum.expected_workers);
  if (c.pipeline.stages > 1) {
    std::printf("  pipeline    %d stages (boundary ratio %d): per-stage bytes are not derived here\n",
                c.pipeline.stages, c.pipeline.ratio);
    return 0;
  }
  const double dense = 4 * params;
  const double up = static_cast<double>(BulkBytes(plan, c.codec.kind));
  double down = 0;
  std::string down_note;
  switch (c.codec.downlink) {
    case CodecKind::kSparseLoCo:
      down = static_cast<double>(BulkBytes(plan, CodecKind::kSparseLoCo));
      break;
    case CodecKind::kSparse2Bit:
      // The union of the uploads' indices, never more than the budget.
      down = c.codec.downlink_budget * static_cast<double>(BulkBytes(plan, CodecKind::kSparseLoCo));
      down_note = " at most (codec.downlink_budget " + FormatBudget(c.codec.downlink_budget) + " x an upload)";
      break;
    case CodecKind::kSparseFp32: {
      // The union of the sites' top-k: at most sites x k of each chunk.
      uint64_t nnz = 0;
      const int n = std::max(1, c.quorum.expected_workers);
      for (const auto& chunk : plan.chunks) {
        nnz += std::min<uint64_t>(static_cast<uint64_t>(chunk.k) * n, static_cast<uint64_t>(chunk.numel()));
      }
      down = std::min(static_cast<double>(BulkBytes(plan, CodecKind::kSparseFp32, nnz)), dense);
      down_note = " at most (the union of " + std::to_string(n) + " sites' selections)";
      break;
    }
    default: down = dense;
  }
  if (c.codec.kind != CodecKind::kSparseLoCo && c.codec.downlink == CodecKind::kSparseFp32) down = dense;
  std::printf("  upload      %s: %s per site per round (%.1fx smaller than fp32)\n", CodecName(c.codec.kind),
              Bytes(up).c_str(), dense / up);
  std::printf("  downlink    %s: %s per site per round%s\n", CodecName(c.codec.downlink), Bytes(down).c_str(),
              down_note.c_str());
  std::printf("  per round   %s per site (up + down), %s across %d sites; %s per site over the campaign\n",
              Bytes(up + down).c_str(), Bytes((up + down) * sites).c_str(), sites,
              Bytes((up + down) * c.training.rounds).c_str());
  std::printf("  at %g Mbit/s each way: upload %s, download %s per round\n", o.link_mbit,
              Seconds(up, o.link_mbit).c_str(), Seconds(down, o.link_mbit).c_str());
  for (const SiteConfig& s : c.sites) {
    if (s.link_mbit > 0) {
      std::printf("  %-11s behind %g Mbit/s (site.link_mbit): upload %s, download %s per round\n", s.name.c_str(),
                  s.link_mbit, Seconds(up, s.link_mbit).c_str(), Seconds(down, s.link_mbit).c_str());
    }
  }
  std::printf("  (payload bytes; each message adds a few hundred bytes of header)\n");
  return 0;
}

}  // namespace lowband::cli
