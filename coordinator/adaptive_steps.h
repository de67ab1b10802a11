// Photon-style adaptive local steps (docs/design.md 3.5): how many inner steps
// H_i each worker runs in a round, from its measured step time, so that
// every site's training takes about the same wall time and nobody waits on
// a straggler. Pure functions; no clock, no I/O.
//
// Step times come in two units. A worker's own report (DeltaUpload's mean
// inner step time of the campaign's model) is what matters; before its
// first upload only its Hello's reference figure is known (a fixed matmul
// chain, comparable between sites but not with the campaign's step). The
// median ratio campaign/reference over the sites that have both converts
// the others; with no site measured yet, reference figures are compared
// among themselves.
#pragma once

#include <map>
#include <string>

#include "config/config.h"

namespace lowband {

struct StepTimes {
  double campaign_ms = 0;   // smoothed mean inner step time (0 = none yet)
  double reference_ms = 0;  // Hello.step_time_ms (0 = unknown)
};

// H_i for every site in `sites`. Disabled: training.inner_steps for all.
// Enabled: target time T = round_time_s, or (round_time_s = 0) the fastest
// site's time for training.inner_steps steps; H_i = floor(T / step_i)
// clamped to [min_inner_steps, max_inner_steps or inner_steps]. A site with
// no usable figure runs inner_steps (clamped).
std::map<std::string, int> AssignInnerSteps(const TrainingConfig& training, const std::map<std::string, StepTimes>& sites);

// The most steps any site may be given (uploads claiming more tokens than
// this many steps are refused).
int MaxInnerSteps(const TrainingConfig& training);

// Exponential smoothing of a site's reported step time (weight 1/2 on the
// newest report; the first report is taken as it is). Non-finite or
// non-positive reports leave the estimate unchanged.
double SmoothStepTime(double previous_ms, double reported_ms);

}  // namespace lowband
