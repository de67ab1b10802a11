// Frame: copies share one buffer, writes copy it first when it is shared,
// moving out into Bytes takes the buffer itself when nobody else holds it.
#include "base/frames.h"

#include <catch2/catch.hpp>

namespace lowband {
namespace {

TEST_CASE("frame: copies share the buffer, a write copies it first", "[unit]") {
  Frame a(Bytes(1 << 20, 7));
  Frame b = a;
  CHECK(a.data() == b.data());  // no bytes copied (reading never copies)
  CHECK(a.shared());
  b.Mutable()[0] = 9;  // copy on write
  CHECK(a.data() != b.data());
  CHECK(a[0] == 7);
  CHECK(b[0] == 9);
  CHECK_FALSE(a.shared());
  const Bytes& view = a;
  CHECK(view.size() == (1u << 20));
  CHECK(a == Bytes(1 << 20, 7));
}

TEST_CASE("frame: moving out takes the buffer when nobody else holds it", "[unit]") {
  Frame a(Bytes(1000, 1));
  const uint8_t* p = a.data();
  Bytes out = std::move(a);
  CHECK(out.data() == p);  // the same allocation
  Frame c(Bytes(1000, 2));
  Frame d = c;
  Bytes copy = std::move(d);  // c still holds it: copied
  CHECK(copy.data() != c.data());
  CHECK(c.size() == 1000);
}

TEST_CASE("frame: empty, shared views, comparisons", "[unit]") {
  Frame empty;
  CHECK(empty.empty());
  CHECK(empty.bytes().empty());
  CHECK(empty.Share()->empty());
  Frame x{1, 2, 3};
  auto held = x.Share();
  CHECK(x.shared());
  x.push_back(4);  // held keeps the old bytes
  CHECK(*held == Bytes{1, 2, 3});
  CHECK(x == Bytes{1, 2, 3, 4});
  CHECK(x != Frame{1, 2, 3});
}

}  // namespace
}  // namespace lowband
