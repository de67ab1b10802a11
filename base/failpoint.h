// Fault injection for the crash tests: LOWBAND_FAILPOINT="NAME@ROUND[,...]"
// in a daemon's environment makes it SIGKILL itself when it reaches point
// NAME during round ROUND (the points are listed in docs/operations.md).
// ROUND may be `*` (every round), and `NAME@ROUND:sleep=MS` makes the
// thread that reaches the point sleep MS milliseconds instead (a slow disk,
// a slow peer). Unset, every check is one comparison against an empty list.
// Any thread.
#pragma once

#include <cstdint>

namespace lowband {

// Kills the process with SIGKILL (or sleeps) if LOWBAND_FAILPOINT names
// (name, round).
void FailPoint(const char* name, uint32_t round);

}  // namespace lowband
