// libFuzzer target: DecodeMessage (protocol/wire.h) on hostile frames.
// Input format: tests/fuzz/fuzz_inputs.h. Besides "no crash, no UB, no
// leak", it checks two properties of every accepted message:
//   * both overloads (const& and &&) agree on accepting it;
//   * EncodeMessage of it decodes again, and re-encodes to the same frames
//     (the encoder's output is a fixed point of decode + encode).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "protocol/wire.h"
#include "tests/fuzz/fuzz_inputs.h"

namespace lowband::fuzz {
namespace {

[[noreturn]] void Fail(const char* what, const Status& st) {
  std::fprintf(stderr, "fuzz_message: %s: %s\n", what, st.ToString().c_str());
  std::abort();
}

// LOWBAND_FUZZ_VERBOSE=1 prints each input's verdict (to check what seeds reach).
bool Verbose() {
  static const bool verbose = std::getenv("LOWBAND_FUZZ_VERBOSE") != nullptr;
  return verbose;
}

Frames SplitFrames(const uint8_t* data, size_t size, uint8_t flags) {
  const int shape = flags & kMessageFramesMask;
  Frames frames;
  if (shape == 3) return frames;
  if (shape == 0) {
    frames.emplace_back(data, data + size);
    return frames;
  }
  size_t header_len = 0;
  if (size >= 4) {
    header_len = GetU32(data);
    data += 4;
    size -= 4;
  }
  if (header_len > size) header_len = size;
  frames.emplace_back(data, data + header_len);
  frames.emplace_back(data + header_len, data + size);
  if (shape == 2) frames.emplace_back();
  return frames;
}

}  // namespace
}  // namespace lowband::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowband;
  using namespace lowband::fuzz;
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  Frames frames = SplitFrames(data + 1, size - 1, flags);
  WireLimits limits;
  if (flags & kMessageTightLimits) limits = WireLimits{kTightLimit, kTightLimit};

  StatusOr<Message> msg = DecodeMessage(frames, limits);
  StatusOr<Message> moved = DecodeMessage(Frames(frames), limits);
  if (Verbose())
    std::fprintf(stderr, "fuzz_message: %s\n", msg.ok() ? BodyName(msg->body) : msg.status().ToString().c_str());
  if (msg.ok() != moved.ok()) Fail("const& and && overloads disagree", msg.ok() ? moved.status() : msg.status());
  if (!msg.ok()) return 0;

  // Re-encode with default limits: the tight ones may reject a re-encoding
  // that differs in size from the input (a different, valid, field order).
  const Frames once = EncodeMessage(*msg);
  StatusOr<Message> again = DecodeMessage(once, WireLimits{});
  if (!again.ok()) Fail("re-encoded message does not decode", again.status());
  const Frames twice = EncodeMessage(std::move(*again));
  if (twice != once) Fail("decode + encode is not a fixed point of the encoder", Status::Ok());
  return 0;
}
