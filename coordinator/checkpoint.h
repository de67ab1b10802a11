// Checkpoint files: a ParamSet, the outer optimizer's state, the downlink's
// error feedback and the round they belong to, written atomically (temp
// file, fsync, rename, fsync of the directory). Format: "LBCK" magic,
// version, round, digest, layout, fp32 values, outer-optimizer momentum
// (version 2 on; empty when the optimizer keeps none), downlink error
// feedback (version 4; empty unless the downlink is compressed), trailing
// checksum of everything before it (checkpoint.cc has the byte layout).
// Versions 1 to 3 still read (without the sections they lack). Any thread.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "codec/params.h"

namespace lowband {

// The version WriteCheckpoint writes; ReadCheckpoint reads 1 to it. From 3
// on the checksum and the values digest are XXH64 (1 and 2: FNV-1a 64).
constexpr uint32_t kCheckpointVersion = 4;

struct Checkpoint {
  uint32_t round = 0;
  std::string campaign;
  ParamSet params;
  std::vector<float> outer_momentum;  // empty, or one value per parameter
  std::vector<float> downlink_error;  // empty, or one value per parameter
};

// `before_rename`, if set, runs after the temporary file is complete and
// synced but before it replaces `path` (fault-injection tests kill the
// process there).
Status WriteCheckpoint(const std::string& path, const Checkpoint& ckpt,
                       const std::function<void()>& before_rename = nullptr);
// Corruption on a bad magic, truncated file or checksum mismatch.
StatusOr<Checkpoint> ReadCheckpoint(const std::string& path);

}  // namespace lowband
