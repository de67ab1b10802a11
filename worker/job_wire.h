// Jobs between the ranks of one site (docs/ranks.md): rank 0 posts each
// job it runs for the coordinator and the other ranks run the same one.
// A job travels as the coordinator message it came from (Welcome,
// ModelSync, RoundStart, Aggregate, with the bulk frame), in the wire
// format, so it is checked like any message; the empty byte string means
// "stop". Torch-free.
#pragma once

#include <optional>

#include "base/status.h"
#include "protocol/wire.h"
#include "worker/core.h"

namespace lowband {

// Whether the other ranks run `job` too (FC-RAG requests stay with rank 0).
bool ReplicatedJob(const Job& job);
// The bytes of a replicated job (any other decodes as an error, never as stop).
Bytes EncodeJob(const Job& job);
// nullopt for the stop marker (empty bytes).
StatusOr<std::optional<Job>> DecodeJob(const Bytes& bytes);

}  // namespace lowband
