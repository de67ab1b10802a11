// Fault injection for the crash tests: LOWBAND_FAILPOINT="NAME@ROUND[,...]"
// in a daemon's environment makes it SIGKILL itself when it reaches point
// NAME during round ROUND (the points are listed in docs/operations.md).
// Unset, every check is one comparison against an empty list. Any thread.
#pragma once

#include <cstdint>

namespace lowband {

// Kills the process with SIGKILL if LOWBAND_FAILPOINT names (name, round).
void FailPoint(const char* name, uint32_t round);

}  // namespace lowband
