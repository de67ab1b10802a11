#include "common/codec.h"

#include <cmath>
#include <cstring>

namespace lowband {

Status CheckBlob(const ParamLayout& layout, CodecKind expected_codec, const BlobHeader& header,
                 const Bytes& bulk) {
  if (header.codec != expected_codec) {
    return InvalidArgument(std::string("codec is ") + CodecName(header.codec) + ", expected " +
                           CodecName(expected_codec));
  }
  if (header.num_elements != static_cast<uint64_t>(layout.numel())) {
    return InvalidArgument("payload has " + std::to_string(header.num_elements) + " elements, layout has " +
                           std::to_string(layout.numel()));
  }
  if (header.layout_digest != layout.Digest()) {
    return InvalidArgument("payload layout digest " + DigestHex(header.layout_digest) +
                           " does not match the model layout " + DigestHex(layout.Digest()));
  }
  if (header.byte_length != bulk.size()) {
    return Corruption("bulk frame is " + std::to_string(bulk.size()) + " bytes, header says " +
                      std::to_string(header.byte_length));
  }
  if (Fnv1a64(bulk.data(), bulk.size()) != header.checksum) {
    return Corruption("bulk frame checksum mismatch");
  }
  return Status::Ok();
}

namespace {

class DenseFp32Codec : public UpdateCodec {
 public:
  CodecKind kind() const override { return CodecKind::kDenseFp32; }

  StatusOr<Encoded> Encode(const ParamLayout& layout, const std::vector<float>& update) override {
    if (update.size() != static_cast<size_t>(layout.numel())) {
      return InvalidArgument("update has " + std::to_string(update.size()) + " values, layout has " +
                             std::to_string(layout.numel()));
    }
    Encoded out;
    out.bulk.resize(update.size() * sizeof(float));
    std::memcpy(out.bulk.data(), update.data(), out.bulk.size());
    out.header.codec = kind();
    out.header.num_elements = update.size();
    out.header.layout_digest = layout.Digest();
    out.header.byte_length = out.bulk.size();
    out.header.checksum = Fnv1a64(out.bulk.data(), out.bulk.size());
    return out;
  }

  StatusOr<std::vector<float>> Decode(const ParamLayout& layout, const BlobHeader& header,
                                      const Bytes& bulk) const override {
    LOWBAND_RETURN_IF_ERROR(CheckBlob(layout, kind(), header, bulk));
    if (bulk.size() != static_cast<size_t>(layout.numel()) * sizeof(float)) {
      return InvalidArgument("dense fp32 payload must be 4 bytes per element");
    }
    std::vector<float> values(layout.numel());
    std::memcpy(values.data(), bulk.data(), bulk.size());
    for (size_t i = 0; i < values.size(); ++i) {
      if (!std::isfinite(values[i])) {
        return InvalidArgument("non-finite value at element " + std::to_string(i));
      }
    }
    return values;
  }
};

}  // namespace

std::unique_ptr<UpdateCodec> MakeCodec(CodecKind kind) {
  switch (kind) {
    case CodecKind::kDenseFp32: return std::make_unique<DenseFp32Codec>();
  }
  return nullptr;
}

}  // namespace lowband
