// libFuzzer target: Safetensors::Parse (hf/safetensors.h) on hostile bytes.
// The input is the whole file. Checked property of every accepted file:
// every float tensor's values can be read, and re-encoding those as F32
// parses back to the same names, shapes and values.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "hf/safetensors.h"

namespace {

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "fuzz_safetensors: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed = lowband::Safetensors::Parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!parsed.ok()) return 0;
  std::vector<const lowband::StTensor*> floats;
  std::vector<std::vector<float>> values;
  std::vector<lowband::StWrite> writes;
  for (const auto& t : parsed->tensors()) {
    if (!lowband::IsFloat(t.dtype)) continue;
    floats.push_back(&t);
    values.push_back(parsed->Values(t));
    if (values.back().size() != static_cast<size_t>(t.numel())) Fail("value count differs from the shape");
  }
  for (size_t i = 0; i < values.size(); ++i) writes.push_back({floats[i]->name, floats[i]->shape, values[i].data()});
  auto encoded = lowband::EncodeSafetensors(writes, parsed->metadata(), lowband::StDtype::kF32);
  if (!encoded.ok()) Fail("an accepted file does not re-encode");
  auto again = lowband::Safetensors::Parse(std::move(encoded).value(), "re-encoded");
  if (!again.ok()) Fail("a re-encoded file does not parse");
  if (again->tensors().size() != values.size()) Fail("tensor count changed");
  for (size_t i = 0; i < values.size(); ++i) {
    const auto& t = again->tensors()[i];
    if (t.name != floats[i]->name || t.shape != floats[i]->shape) Fail("name or shape changed");
    const std::vector<float> v = again->Values(t);
    if (v.size() != values[i].size() ||
        (!v.empty() && std::memcmp(v.data(), values[i].data(), v.size() * sizeof(float)) != 0)) {
      Fail("values changed");
    }
  }
  return 0;
}
