#include "hf/safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "base/file.h"

namespace lowband {
namespace {

// Hugging Face's reader refuses headers past 100 MB; so do we.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
constexpr size_t kMaxDims = 8;

struct DtypeInfo {
  StDtype dtype;
  const char* name;
  size_t bytes;
};
constexpr DtypeInfo kDtypes[] = {
    {StDtype::kF32, "F32", 4}, {StDtype::kF16, "F16", 2}, {StDtype::kBf16, "BF16", 2}, {StDtype::kF64, "F64", 8},
    {StDtype::kBool, "BOOL", 1}, {StDtype::kU8, "U8", 1}, {StDtype::kI8, "I8", 1},     {StDtype::kI16, "I16", 2},
    {StDtype::kI32, "I32", 4},   {StDtype::kI64, "I64", 8},
};

size_t DtypeBytes(StDtype d) {
  for (const auto& i : kDtypes) {
    if (i.dtype == d) return i.bytes;
  }
  return 1;
}

bool ParseDtype(const std::string& s, StDtype* out) {
  for (const auto& i : kDtypes) {
    if (s == i.name) {
      *out = i.dtype;
      return true;
    }
  }
  return false;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  float f;
  if (exp == 0) {
    f = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal
  } else if (exp == 31) {
    f = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    f = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits |= sign;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN stays NaN
  bits += 0x7fff + ((bits >> 16) & 1);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

Status Bad(const std::string& source, const std::string& what) {
  return InvalidArgument(source + ": not a valid safetensors file: " + what);
}

}  // namespace

const char* StDtypeName(StDtype d) {
  for (const auto& i : kDtypes) {
    if (i.dtype == d) return i.name;
  }
  return "?";
}

bool IsFloat(StDtype d) { return d == StDtype::kF32 || d == StDtype::kF16 || d == StDtype::kBf16 || d == StDtype::kF64; }

int64_t StTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

StatusOr<Safetensors> Safetensors::Read(const std::string& path) {
  LOWBAND_ASSIGN_OR_RETURN(std::string bytes, ReadWholeFile(path, std::numeric_limits<uint64_t>::max()));
  return Parse(std::move(bytes), path);
}

StatusOr<Safetensors> Safetensors::Parse(std::string bytes, const std::string& source) {
  if (bytes.size() < 8) return Bad(source, std::to_string(bytes.size()) + " bytes, shorter than the header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  if (n > kMaxHeaderBytes) return Bad(source, "header length " + std::to_string(n) + " exceeds 100 MB");
  if (n > bytes.size() - 8) {
    return Bad(source, "header length " + std::to_string(n) + " runs past the end of the file (" +
                           std::to_string(bytes.size()) + " bytes)");
  }
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  } catch (const nlohmann::json::exception& e) {
    return Bad(source, std::string("header is not JSON: ") + e.what());
  }
  if (!header.is_object()) return Bad(source, "header is not a JSON object");

  Safetensors out;
  out.data_start_ = 8 + n;
  const uint64_t data_bytes = bytes.size() - out.data_start_;
  for (const auto& [name, v] : header.items()) {
    const std::string where = "tensor '" + name + "'";
    if (name == "__metadata__") {
      if (!v.is_object()) return Bad(source, "__metadata__ is not an object");
      for (const auto& [k, mv] : v.items()) {
        if (!mv.is_string()) return Bad(source, "__metadata__." + k + " is not a string");
        out.metadata_[k] = mv.get<std::string>();
      }
      continue;
    }
    if (name.empty()) return Bad(source, "a tensor has an empty name");
    if (!v.is_object()) return Bad(source, where + " is not an object");
    StTensor t;
    t.name = name;
    const auto dtype = v.find("dtype");
    if (dtype == v.end() || !dtype->is_string()) return Bad(source, where + ": dtype missing or not a string");
    if (!ParseDtype(dtype->get<std::string>(), &t.dtype)) {
      return Bad(source, where + ": unknown dtype " + dtype->get<std::string>());
    }
    const auto shape = v.find("shape");
    if (shape == v.end() || !shape->is_array() || shape->size() > kMaxDims) {
      return Bad(source, where + ": shape missing, not an array or more than 8 dimensions");
    }
    uint64_t numel = 1;
    for (const auto& d : *shape) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0)) {
        return Bad(source, where + ": shape holds something other than a non-negative integer");
      }
      const uint64_t dim = d.get<uint64_t>();
      if (dim > (uint64_t{1} << 40) || (dim != 0 && numel > (uint64_t{1} << 40) / dim)) {
        return Bad(source, where + ": shape too large");
      }
      numel *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto offsets = v.find("data_offsets");
    if (offsets == v.end() || !offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
        !(*offsets)[1].is_number_unsigned()) {
      return Bad(source, where + ": data_offsets is not two non-negative integers");
    }
    t.begin = (*offsets)[0].get<uint64_t>();
    t.end = (*offsets)[1].get<uint64_t>();
    if (t.begin > t.end || t.end > data_bytes) {
      return Bad(source, where + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                             "] outside the " + std::to_string(data_bytes) + " bytes of data");
    }
    if (t.end - t.begin != numel * DtypeBytes(t.dtype)) {
      return Bad(source, where + ": " + std::to_string(t.end - t.begin) + " bytes for " + std::to_string(numel) +
                             " " + StDtypeName(t.dtype) + " values");
    }
    out.tensors_.push_back(std::move(t));
  }
  // The tensors tile the data: sorted by offset, each starts where the last
  // ended, and the last ends at the end of the file.
  std::vector<const StTensor*> by_offset;
  for (const auto& t : out.tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const StTensor* a, const StTensor* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t at = 0;
  for (const StTensor* t : by_offset) {
    if (t->begin != at) {
      return Bad(source, "tensor '" + t->name + "' starts at byte " + std::to_string(t->begin) + ", expected " +
                             std::to_string(at) + " (tensors overlap or leave a gap)");
    }
    at = t->end;
  }
  if (at != data_bytes) {
    return Bad(source, std::to_string(data_bytes - at) + " bytes after the last tensor");
  }
  // File order = offset order (what writers produce).
  std::sort(out.tensors_.begin(), out.tensors_.end(),
            [](const StTensor& a, const StTensor& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  out.bytes_ = std::move(bytes);
  return out;
}

const StTensor* Safetensors::Find(const std::string& name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::vector<float> Safetensors::Values(const StTensor& t) const {
  if (!IsFloat(t.dtype)) return {};
  const size_t n = static_cast<size_t>(t.numel());
  std::vector<float> out(n);
  const char* p = bytes_.data() + data_start_ + t.begin;
  switch (t.dtype) {
    case StDtype::kF32: std::memcpy(out.data(), p, n * 4); break;
    case StDtype::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = HalfToFloat(h);
      }
      break;
    case StDtype::kBf16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(&out[i], &bits, 4);
      }
      break;
    case StDtype::kF64:
      for (size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        out[i] = static_cast<float>(d);
      }
      break;
    default: break;
  }
  return out;
}

StatusOr<std::string> EncodeSafetensors(const std::vector<StWrite>& tensors,
                                        const std::map<std::string, std::string>& metadata, StDtype dtype) {
  if (dtype != StDtype::kF32 && dtype != StDtype::kBf16) return InvalidArgument("safetensors: lowband writes F32 or BF16");
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t at = 0;
  for (const StWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" || !names.insert(t.name).second) {
      return InvalidArgument("safetensors: tensor name '" + t.name + "' is empty, reserved or repeated");
    }
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    const uint64_t bytes = numel * DtypeBytes(dtype);
    header[t.name] = {{"dtype", StDtypeName(dtype)}, {"shape", t.shape}, {"data_offsets", {at, at + bytes}}};
    at += bytes;
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  out.reserve(8 + json.size() + at);
  out += json;
  for (const StWrite& t : tensors) {
    size_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<size_t>(d);
    if (dtype == StDtype::kF32) {
      out.append(reinterpret_cast<const char*>(t.values), numel * 4);
    } else {
      for (size_t i = 0; i < numel; ++i) {
        const uint16_t b = FloatToBf16(t.values[i]);
        out.push_back(static_cast<char>(b & 0xff));
        out.push_back(static_cast<char>(b >> 8));
      }
    }
  }
  return out;
}

}  // namespace lowband
