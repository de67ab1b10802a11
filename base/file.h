// Whole-file reads and atomic, durable writes. Any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "base/status.h"

namespace lowband {

// Writes `data` to `path` so that a crash leaves either the old file or the
// new one, never a mix: PATH.tmp, fsync, rename, fsync of the directory
// (created if missing). `before_rename`, if set, runs once the temporary
// file is complete and synced (fault-injection tests kill the process
// there). One writer per path at a time.
Status WriteFileAtomically(const std::string& path, const std::string& data,
                           const std::function<void()>& before_rename = nullptr);

// The whole file; InvalidArgument when it is larger than `max_bytes`,
// NotFound when it does not exist.
StatusOr<std::string> ReadWholeFile(const std::string& path, uint64_t max_bytes);

}  // namespace lowband
