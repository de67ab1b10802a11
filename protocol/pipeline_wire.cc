#include "protocol/pipeline_wire.h"

#include <string>

namespace lowband {
namespace {

std::string Field(const char* name, uint64_t got, uint64_t want) {
  return std::string("activation ") + name + " is " + std::to_string(got) + ", expected " + std::to_string(want);
}

// Index of the first NaN/Inf (exponent bits all ones), or -1.
int64_t FirstNonFinite(const Bytes& bulk, WireDtype dtype) {
  const size_t n = WireDtypeBytes(dtype);
  for (size_t i = 0; i + n <= bulk.size(); i += n) {
    bool bad = false;
    switch (dtype) {
      case WireDtype::kFp32:
        bad = (bulk[i + 3] & 0x7f) == 0x7f && (bulk[i + 2] & 0x80) == 0x80;
        break;
      case WireDtype::kBf16:
        bad = (bulk[i + 1] & 0x7f) == 0x7f && (bulk[i] & 0x80) == 0x80;
        break;
      case WireDtype::kFp16:
        bad = (bulk[i + 1] & 0x7c) == 0x7c;
        break;
    }
    if (bad) return static_cast<int64_t>(i / n);
  }
  return -1;
}

}  // namespace

size_t WireDtypeBytes(WireDtype dtype) { return dtype == WireDtype::kFp32 ? 4 : 2; }

uint32_t LabelBytes(int64_t vocab) { return vocab <= 256 ? 1 : vocab <= 32768 ? 2 : 4; }

Status CheckActivation(const Activation& a, const Bytes& bulk, const ActivationExpect& want) {
  if (a.round != want.round) return InvalidArgument(Field("round", a.round, want.round));
  if (a.step != want.step) return InvalidArgument(Field("step", a.step, want.step));
  if (a.micro_batch >= want.micro_batches) {
    return InvalidArgument("activation micro_batch " + std::to_string(a.micro_batch) + " is not below " +
                           std::to_string(want.micro_batches));
  }
  if (a.stage != want.from_stage) return InvalidArgument(Field("stage", a.stage, want.from_stage));
  if (a.backward != want.backward) {
    return InvalidArgument(std::string("activation goes ") + (a.backward ? "backward" : "forward") + ", expected " +
                           (want.backward ? "backward" : "forward"));
  }
  if (a.labels != want.labels) {
    return InvalidArgument(std::string("activation ") + (a.labels ? "carries labels" : "carries values") +
                           ", expected " + (want.labels ? "labels" : "values"));
  }
  if (a.eval != want.eval) {
    return InvalidArgument(std::string("activation is ") + (a.eval ? "an evaluation pass" : "a training pass") +
                           ", expected " + (want.eval ? "an evaluation pass" : "a training pass"));
  }
  if (a.batch != want.batch) return InvalidArgument(Field("batch", a.batch, want.batch));
  if (a.tokens != want.tokens) return InvalidArgument(Field("tokens", a.tokens, want.tokens));
  if (a.width != want.width) return InvalidArgument(Field("width", a.width, want.width));
  if (!want.labels && a.dtype != want.dtype) {
    return InvalidArgument(std::string("activation dtype is ") + WireDtypeName(a.dtype) + ", expected " +
                           WireDtypeName(want.dtype));
  }
  // All factors are checked against the expectation, so this cannot overflow.
  const uint64_t numel = static_cast<uint64_t>(want.batch) * want.tokens * want.width;
  if (a.blob.num_elements != numel) return InvalidArgument(Field("num_elements", a.blob.num_elements, numel));
  const uint64_t bytes = numel * (want.labels ? want.label_bytes : WireDtypeBytes(want.dtype));
  if (bulk.size() != bytes) return InvalidArgument(Field("payload bytes", bulk.size(), bytes));
  if (want.labels) return Status::Ok();
  if (const int64_t at = FirstNonFinite(bulk, want.dtype); at >= 0) {
    return InvalidArgument("activation value " + std::to_string(at) + " is not finite");
  }
  return Status::Ok();
}

}  // namespace lowband
