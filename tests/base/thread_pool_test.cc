// ThreadPool: every index once, the range bounds, errors as Status (a
// throwing range does not terminate the process), one pool reused across
// calls and callers.
#include "base/thread_pool.h"

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

namespace lowband {
namespace {

TEST_CASE("thread pool: every index is visited once, in ranges no shorter than the grain", "[unit]") {
  ThreadPool pool(4);
  CHECK(pool.size() == 4);
  for (int64_t n : {0, 1, 3, 64, 1000, 100003}) {
    for (int64_t grain : {1, 7, 64, 1 << 20}) {
      std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
      std::atomic<int> ranges{0};
      std::atomic<bool> short_range{false};
      REQUIRE(pool.ParallelFor(n, grain,
                               [&](int64_t b, int64_t e) {
                                 ++ranges;
                                 if (e - b < grain && e != n) short_range = true;
                                 for (int64_t i = b; i < e; ++i) ++seen[static_cast<size_t>(i)];
                               })
                  .ok());
      INFO("n " << n << " grain " << grain);
      for (const auto& s : seen) CHECK(s == 1);
      CHECK(ranges <= pool.size());
      CHECK_FALSE(short_range);
    }
  }
}

TEST_CASE("thread pool: a throwing range becomes a status, the others still run", "[unit]") {
  ThreadPool pool(3);
  std::atomic<int64_t> done{0};
  Status st = pool.ParallelFor(3000, 1, [&](int64_t b, int64_t e) {
    if (b > 0) throw std::runtime_error("range " + std::to_string(b) + " failed");
    done += e - b;
  });
  CHECK(st.code() == StatusCode::kInternal);
  CHECK(st.message().find("failed") != std::string::npos);
  CHECK(done == 1000);
  // The pool still works afterwards.
  std::atomic<int64_t> sum{0};
  REQUIRE(pool.ParallelFor(3000, 1, [&](int64_t b, int64_t e) { sum += e - b; }).ok());
  CHECK(sum == 3000);
  // And on the caller's own range (a one-thread pool).
  ThreadPool one(1);
  CHECK(one.ParallelFor(10, 1, [](int64_t, int64_t) { throw std::logic_error("no"); }).code() == StatusCode::kInternal);
}

TEST_CASE("thread pool: callers on several threads take turns", "[unit]") {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int round = 0; round < 50; ++round) {
        (void)pool.ParallelFor(100, 1, [&](int64_t b, int64_t e) { total += e - b; });
      }
    });
  }
  for (auto& t : callers) t.join();
  CHECK(total == 4 * 50 * 100);
}

}  // namespace
}  // namespace lowband
