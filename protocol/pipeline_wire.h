// Pipeline boundary messages (ResBM, issue 6): what a stage expects from its
// neighbour for one micro-batch, and the check every inbound Activation
// passes before its bytes become a tensor. Torch-free; any thread.
#pragma once

#include <cstddef>
#include <cstdint>

#include "protocol/messages.h"
#include "base/status.h"

namespace lowband {

size_t WireDtypeBytes(WireDtype dtype);
// Bytes per target id in a labels message: the narrowest integer that holds
// every id of the vocabulary (1: uint8 up to 256, 2: int16 up to 32768, 4:
// int32). Both stages know the vocabulary from the Welcome.
uint32_t LabelBytes(int64_t vocab);

struct ActivationExpect {
  uint32_t round = 0;
  uint32_t step = 0;
  uint32_t micro_batches = 1;  // valid micro-batch ids: 0 .. micro_batches-1
  uint32_t from_stage = 0;
  bool backward = false;
  uint32_t batch = 0;   // micro-batch size
  uint32_t tokens = 0;  // sequence length
  uint32_t width = 0;   // b = d_model / ratio (d_model with ratio 1)
  WireDtype dtype = WireDtype::kBf16;
  bool labels = false;  // target ids, width 1, label_bytes each; dtype not checked
  bool eval = false;
  uint32_t label_bytes = 4;  // LabelBytes(vocab)
};

// InvalidArgument naming the first field that differs from `want` (round,
// step, micro-batch id, stage, direction, labels/eval kind, shape, dtype,
// byte length), or a non-finite value in `bulk` (labels: values are ids,
// their range is the trainer's check). Nothing is allocated from the message's own
// numbers before they are checked.
Status CheckActivation(const Activation& a, const Bytes& bulk, const ActivationExpect& want);

}  // namespace lowband
