// The names of the config enums, as campaign files spell them (and logs and
// metrics show them). The wire enums' names are protocol/kinds.cc's.
#include "config/config.h"

namespace lowband {

const char* OuterOptimizerName(OuterOptimizerKind kind) {
  switch (kind) {
    case OuterOptimizerKind::kNesterov: return "nesterov";
    case OuterOptimizerKind::kSgd: return "sgd";
    case OuterOptimizerKind::kFedAvg: return "fedavg";
  }
  return "unknown";
}

const char* WeightingName(AggregationWeighting w) {
  return w == AggregationWeighting::kTokens ? "tokens" : "uniform";
}

const char* AggregationName(AggregationRule rule) {
  switch (rule) {
    case AggregationRule::kMeanAll: return "mean";
    case AggregationRule::kMeanChoosers: return "mean_of_choosers";
  }
  return "unknown";
}

}  // namespace lowband
