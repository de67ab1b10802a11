// Pipeline topology: stage blocks and slot assignment.
#include "coordinator/topology.h"

#include <catch2/catch.hpp>

namespace lowband {
namespace {

TEST_CASE("topology: blocks per stage follow the split or are as even as possible", "[unit][coordinator]") {
  PipelineConfig p;
  p.stages = 3;
  CHECK(StageBlocks(8, p) == std::vector<int>{3, 3, 2});
  CHECK(StageBlocks(6, p) == std::vector<int>{2, 2, 2});
  p.split = {1, 5, 2};
  CHECK(StageBlocks(8, p) == std::vector<int>{1, 5, 2});
  p.split.clear();
  p.stages = 1;
  CHECK(StageBlocks(4, p) == std::vector<int>{4});
}

TEST_CASE("topology: the first S joiners form a whole pipeline - a lost slot goes to its replacement",
          "[unit][coordinator]") {
  Topology t(2, 2);
  CHECK(t.Assign("a") == std::optional<StageSlot>(StageSlot{0, 0}));
  CHECK(t.Assign("b") == std::optional<StageSlot>(StageSlot{1, 0}));
  CHECK(t.ReplicaComplete(0));
  CHECK_FALSE(t.ReplicaComplete(1));
  CHECK(t.Assign("c") == std::optional<StageSlot>(StageSlot{0, 1}));
  CHECK(t.Assign("d") == std::optional<StageSlot>(StageSlot{1, 1}));
  CHECK_FALSE(t.Assign("e").has_value());  // full
  CHECK(t.Assign("a") == std::optional<StageSlot>(StageSlot{0, 0}));  // idempotent
  CHECK(t.Neighbours("a") == std::make_pair(std::string(), std::string("b")));
  CHECK(t.Neighbours("b") == std::make_pair(std::string("a"), std::string()));

  t.Release("b");  // lost
  CHECK_FALSE(t.ReplicaComplete(0));
  CHECK(t.Neighbours("a").second.empty());
  CHECK(t.Assign("e") == std::optional<StageSlot>(StageSlot{1, 0}));  // the replacement takes stage 1
  CHECK(t.Neighbours("a").second == "e");
  CHECK_FALSE(t.Assign("b").has_value());  // back, but its slot is taken and none is free
  t.Release("c");
  CHECK(t.Assign("b") == std::optional<StageSlot>(StageSlot{0, 1}));  // first free slot
  t.Release("b");
  CHECK(t.Assign("b") == std::optional<StageSlot>(StageSlot{0, 1}));  // its own slot again
}

}  // namespace
}  // namespace lowband
