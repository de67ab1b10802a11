// Checkpoint files: a ParamSet plus the round it belongs to, written
// atomically (temp file, fsync, rename, fsync of the directory).
// Format: "LBCK" magic, version, round, digest, layout, fp32 values,
// trailing Fnv1a64 of everything before it. Any thread.
#pragma once

#include <string>

#include "common/params.h"

namespace lowband {

struct Checkpoint {
  uint32_t round = 0;
  std::string campaign;
  ParamSet params;
};

Status WriteCheckpoint(const std::string& path, const Checkpoint& ckpt);
// Corruption on a bad magic, truncated file or checksum mismatch.
StatusOr<Checkpoint> ReadCheckpoint(const std::string& path);

}  // namespace lowband
