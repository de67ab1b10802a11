// Waiting in tests: poll a condition until it holds or a deadline passes.
// The one way tests wait for something to happen (no bare sleeps): the
// condition says what is awaited, the deadline bounds a test that would
// otherwise hang. Any thread.
#pragma once

#include <chrono>
#include <thread>

namespace lowband {
namespace testing {

// Calls `done` until it returns true (then true) or `timeout` has passed
// (then false, after one last call). Sleeps `poll` between calls.
template <typename Pred>
bool WaitUntil(Pred&& done, std::chrono::milliseconds timeout,
               std::chrono::milliseconds poll = std::chrono::milliseconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(poll);
  }
  return done();
}

}  // namespace testing
}  // namespace lowband
