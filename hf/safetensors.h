// The safetensors format (Hugging Face's weights files): an 8-byte
// little-endian header length N, N bytes of JSON header, then the tensors'
// bytes. The header maps each tensor name to {"dtype", "shape",
// "data_offsets": [begin, end]} (offsets into the bytes after the header)
// and may hold "__metadata__" (string to string). Parse checks everything a
// hostile file could get wrong before any value is read: the header length
// against the file, the JSON, every dtype, shape and offset pair, the byte
// count of each tensor against its shape, and that the tensors tile the data
// exactly (no gaps, no overlaps, nothing after the last). Value types,
// torch-free, any thread.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/status.h"

namespace lowband {

// The dtypes a file may hold; values read as fp32 from the float ones
// (IsFloat), the others (masks, indices) only skipped over.
enum class StDtype { kF32, kF16, kBf16, kF64, kBool, kU8, kI8, kI16, kI32, kI64 };
const char* StDtypeName(StDtype d);  // "F32", "F16", "BF16", "F64", "BOOL", "U8", ...
bool IsFloat(StDtype d);

struct StTensor {
  std::string name;
  StDtype dtype = StDtype::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets into the data after the header
  uint64_t end = 0;
  int64_t numel() const;
};

class Safetensors {
 public:
  // `bytes`: a whole file; `source` names it in errors. InvalidArgument with
  // what is wrong and where.
  static StatusOr<Safetensors> Parse(std::string bytes, const std::string& source);
  static StatusOr<Safetensors> Read(const std::string& path);

  const std::vector<StTensor>& tensors() const { return tensors_; }  // in file order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const StTensor* Find(const std::string& name) const;
  // The tensor's values as fp32 (F16 and BF16 widened exactly, F64
  // rounded); empty for a dtype that is not IsFloat.
  std::vector<float> Values(const StTensor& t) const;

 private:
  std::string bytes_;
  uint64_t data_start_ = 0;
  std::vector<StTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write: fp32 values in row-major order.
struct StWrite {
  std::string name;
  std::vector<int64_t> shape;
  const float* values = nullptr;
};

// The file's bytes: tensors in the given order, stored as `dtype` (bf16:
// rounded to nearest even), the header padded with spaces to a multiple of
// 8 bytes. InvalidArgument on duplicate or empty names.
StatusOr<std::string> EncodeSafetensors(const std::vector<StWrite>& tensors,
                                        const std::map<std::string, std::string>& metadata, StDtype dtype);

}  // namespace lowband
