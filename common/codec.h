// Update codecs: turn a flat fp32 update into bulk bytes and back.
// Dense fp32 only for now; SparseLoCo (top-k + 2-bit with error feedback)
// plugs in behind the same interface. A codec instance may keep state
// (error feedback) and belongs to one thread.
#pragma once

#include <memory>
#include <vector>

#include "common/messages.h"
#include "common/params.h"

namespace lowband {

struct Encoded {
  BlobHeader header;  // filled completely, checksum included
  Bytes bulk;
};

class UpdateCodec {
 public:
  virtual ~UpdateCodec() = default;
  virtual CodecKind kind() const = 0;
  // Encodes `update` (layout.numel() values in layout order).
  virtual StatusOr<Encoded> Encode(const ParamLayout& layout, const std::vector<float>& update) = 0;
  // Decodes a received payload for `layout`. Rejects (InvalidArgument or
  // Corruption, never aborts) a wrong codec, element count, layout digest,
  // length, checksum or non-finite values.
  virtual StatusOr<std::vector<float>> Decode(const ParamLayout& layout, const BlobHeader& header,
                                              const Bytes& bulk) const = 0;
};

std::unique_ptr<UpdateCodec> MakeCodec(CodecKind kind);

// Checks that header and bulk agree (length, checksum) and that the header
// matches `layout` and `expected_codec`. Shared by every codec.
Status CheckBlob(const ParamLayout& layout, CodecKind expected_codec, const BlobHeader& header,
                 const Bytes& bulk);

}  // namespace lowband
