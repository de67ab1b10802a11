// ParamLayouts for codec tests, built from (name, shape) pairs.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "codec/params.h"

namespace lowband::testing {

using Shape = std::vector<int64_t>;

inline ParamLayout MakeLayout(const std::vector<std::pair<std::string, Shape>>& specs) {
  ParamLayout layout;
  for (const auto& [name, shape] : specs) layout.tensors.push_back(TensorSpec{name, shape});
  return layout;
}

}  // namespace lowband::testing
