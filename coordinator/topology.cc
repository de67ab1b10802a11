#include "coordinator/topology.h"

#include "base/status.h"

namespace lowband {

Topology::Topology(int stages, int replicas)
    : stages_(std::max(stages, 1)), replicas_(std::max(replicas, 1)),
      holder_(static_cast<size_t>(stages_ * replicas_)) {}

std::optional<StageSlot> Topology::Assign(const std::string& site) {
  if (auto held = SlotOf(site)) return held;
  if (auto home = home_.find(site); home != home_.end() && holder_[static_cast<size_t>(home->second)].empty()) {
    holder_[static_cast<size_t>(home->second)] = site;
    return SlotAt(home->second);
  }
  for (size_t i = 0; i < holder_.size(); ++i) {
    if (holder_[i].empty()) {
      holder_[i] = site;
      home_[site] = static_cast<int>(i);
      return SlotAt(static_cast<int>(i));
    }
  }
  return std::nullopt;
}

void Topology::Release(const std::string& site) {
  for (auto& h : holder_) {
    if (h == site) h.clear();
  }
}

std::optional<StageSlot> Topology::SlotOf(const std::string& site) const {
  for (size_t i = 0; i < holder_.size(); ++i) {
    if (holder_[i] == site && !site.empty()) return SlotAt(static_cast<int>(i));
  }
  return std::nullopt;
}

std::string Topology::SiteAt(const StageSlot& slot) const {
  if (slot.stage < 0 || slot.stage >= stages_ || slot.replica < 0 || slot.replica >= replicas_) return "";
  return holder_[static_cast<size_t>(Index(slot))];
}

std::pair<std::string, std::string> Topology::Neighbours(const std::string& site) const {
  auto slot = SlotOf(site);
  if (!slot) return {"", ""};
  return {SiteAt({slot->stage - 1, slot->replica}), SiteAt({slot->stage + 1, slot->replica})};
}

bool Topology::ReplicaComplete(int replica) const {
  for (int s = 0; s < stages_; ++s) {
    if (SiteAt({s, replica}).empty()) return false;
  }
  return replica >= 0 && replica < replicas_;
}

}  // namespace lowband
