// Bytes and Frames: the unit transports move (a multipart message) and the
// wire format encodes into. The one header both net/ and protocol/ need, so
// neither depends on the other. Value types, any thread.
#pragma once

#include <cstdint>
#include <vector>

namespace lowband {

using Bytes = std::vector<uint8_t>;
using Frames = std::vector<Bytes>;

}  // namespace lowband
