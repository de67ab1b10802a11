#include "coordinator/resume.h"

#include <string>

#include "base/hash.h"

namespace lowband {

Status CheckRestore(const ParamSet& campaign, const OuterOptimizer& outer, const DownlinkEncoder& downlink,
                    uint32_t round, const ParamSet& params, const std::vector<float>& momentum,
                    const std::vector<float>& downlink_error) {
  if (!(params.layout == campaign.layout) || params.values.size() != campaign.values.size()) {
    return InvalidArgument("restore: the checkpoint's layout " + DigestHex(params.layout.Digest()) +
                           " is not the campaign model's " + DigestHex(campaign.layout.Digest()));
  }
  if (!momentum.empty() && momentum.size() != outer.momentum().size()) {
    return InvalidArgument("restore: the checkpoint holds " + std::to_string(momentum.size()) +
                           " outer-optimizer values, the campaign's optimizer keeps " +
                           std::to_string(outer.momentum().size()));
  }
  if (momentum.empty() && !outer.stateless() && round > 0) {
    return InvalidArgument("restore: the checkpoint of round " + std::to_string(round) +
                           " lacks the outer optimizer's momentum");
  }
  if (!downlink_error.empty() && downlink_error.size() != downlink.error().size()) {
    return InvalidArgument("restore: the checkpoint holds " + std::to_string(downlink_error.size()) +
                           " downlink error-feedback values, the campaign's downlink (" + CodecName(downlink.kind()) +
                           ") keeps " + std::to_string(downlink.error().size()));
  }
  if (downlink_error.empty() && downlink.compressed() && round > 0) {
    return InvalidArgument("restore: the checkpoint of round " + std::to_string(round) +
                           " lacks the downlink's error feedback");
  }
  return Status::Ok();
}

Status ReplayGradient(uint32_t round, const Encoded& gradient, const LayoutPlan& plan, OuterOptimizer* outer,
                      DownlinkEncoder* downlink, ParamSet* params) {
  BlobHeader h = gradient.header;
  h.num_elements = static_cast<uint64_t>(params->layout.numel());
  h.layout_digest = params->layout.Digest();
  h.byte_length = gradient.bulk.size();
  if (h.codec != CodecKind::kDenseFp32 && h.codec != CodecKind::kSparseFp32) {
    return Corruption("replay: round " + std::to_string(round) + "'s logged gradient uses codec " + CodecName(h.codec));
  }
  auto g = ParseUpdate(params->layout, plan, h, gradient.bulk);
  if (!g.ok()) return Corruption("replay: round " + std::to_string(round) + "'s logged gradient: " + g.status().ToString());
  Encoded down;  // what the sites got; only its effect on the downlink's state matters here
  auto update = downlink->Encode(params->layout, plan, outer->Step(plan, std::move(g).value()), nullptr, &down);
  if (!update.ok()) {
    return Corruption("replay: round " + std::to_string(round) + "'s update: " + update.status().ToString());
  }
  return ApplyUpdate(plan, *update, &params->values);
}

}  // namespace lowband
