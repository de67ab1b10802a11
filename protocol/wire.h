// FlatBuffers wire format: a header frame (Envelope) optionally followed by
// one bulk frame of tensor bytes. The only module that includes generated
// FlatBuffers headers. Pure functions, any thread.
//
// Decode treats its input as hostile: frame count and sizes are bounded,
// the header passes the FlatBuffers Verifier and file identifier, the
// protocol version must match, exactly one body must be present, required
// strings must be set, and for bodies with a BlobHeader the bulk frame must
// exist with exactly byte_length bytes and a matching checksum. Any failure
// is a Status (InvalidArgument or Corruption) naming what was wrong; Decode
// never aborts on bad bytes. Semantic checks (round, layout) belong to cores.
#pragma once

#include <cstddef>
#include <vector>

#include "protocol/messages.h"

namespace lowband {

struct WireLimits {
  size_t max_header_bytes = 1 << 20;
  size_t max_bulk_bytes = 256u << 20;
};

// Header frame, plus the bulk frame when msg.bulk is non-empty or the body
// carries a BlobHeader. The BlobHeader is written as given (the codec fills
// byte_length and checksum). The rvalue overload moves msg.bulk into the
// bulk frame instead of copying it.
Frames EncodeMessage(const Message& msg);
Frames EncodeMessage(Message&& msg);

// The rvalue overload moves the bulk frame into Message.bulk instead of
// copying it (on failure `frames` is left unspecified).
StatusOr<Message> DecodeMessage(const Frames& frames, const WireLimits& limits);
StatusOr<Message> DecodeMessage(Frames&& frames, const WireLimits& limits);

}  // namespace lowband
