// Skipping a test whose subject is missing (no CUDA device, no fortune
// files, no systemd-analyze): LOWBAND_SKIP prints a marker and returns from
// the test case; ctest matches the marker (SKIP_REGULAR_EXPRESSION, set in
// tests/CMakeLists.txt) and reports the test as skipped, not passed. Use it
// only in a test case of its own, so that nothing else is skipped with it.
#pragma once

#include <iostream>

#define LOWBAND_SKIP(why)                                      \
  do {                                                         \
    std::cout << "LOWBAND_SKIPPED: " << why << std::endl;      \
    return;                                                    \
  } while (0)
