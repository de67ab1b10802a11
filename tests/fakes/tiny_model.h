// A GPT small enough for unit tests (byte vocabulary by default).
#pragma once

#include "config/config.h"

namespace lowband::testing {

inline ModelConfig TinyModel(int layers = 2, int d_model = 32, int heads = 2, int context = 16, int vocab = 256) {
  ModelConfig c;
  c.layers = layers;
  c.d_model = d_model;
  c.heads = heads;
  c.context = context;
  c.vocab = vocab;
  return c;
}

}  // namespace lowband::testing
