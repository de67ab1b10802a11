// Pipeline topology: S stages x R replicas per stage, and which site holds
// which (stage, replica) slot. Torch-free and transport-free; owned by the
// coordinator core (loop thread).
//
// Assignment fills slots replica by replica (replica 0's stages 0..S-1
// first), so the first S workers to join form one whole pipeline. A site
// that leaves (lost, evicted) frees its slot for a replacement; a site that
// comes back gets its old slot again if nobody took it, else the first free
// one.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"

namespace lowband {

struct StageSlot {
  int stage = 0;
  int replica = 0;
  bool operator==(const StageSlot& o) const { return stage == o.stage && replica == o.replica; }
};

class Topology {
 public:
  Topology(int stages, int replicas);

  // The slot `site` holds after joining, or nullopt when every slot is taken.
  std::optional<StageSlot> Assign(const std::string& site);
  // The site no longer holds a slot (it stays remembered for a comeback).
  void Release(const std::string& site);
  std::optional<StageSlot> SlotOf(const std::string& site) const;
  // The site holding `slot`, "" if none.
  std::string SiteAt(const StageSlot& slot) const;
  // The sites of the previous and next stage of the same replica ("" at the
  // ends of the pipeline or where the slot is empty).
  std::pair<std::string, std::string> Neighbours(const std::string& site) const;
  // Every slot of replica `replica` is held: that pipeline can run a step.
  bool ReplicaComplete(int replica) const;
  int stages() const { return stages_; }
  int replicas() const { return replicas_; }

 private:
  int Index(const StageSlot& s) const { return s.replica * stages_ + s.stage; }
  StageSlot SlotAt(int index) const { return {index % stages_, index / stages_}; }

  int stages_;
  int replicas_;
  std::vector<std::string> holder_;              // slot index -> site ("" = free)
  std::map<std::string, int> home_;              // site -> last slot index it held
};

}  // namespace lowband
