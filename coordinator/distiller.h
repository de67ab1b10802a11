// Distiller: the FPLD student on the coordinator (docs/fpld.md). Each round
// it loads the global parameters, takes AdamW steps on
// KL(softmax(teacher) || softmax(student)) over the public probe set's
// logit positions, and reports the student's loss on the public validation
// text. LibTorch on the coordinator's CPU; torch-free header (pimpl). Runs on
// the coordinator loop thread, between a round's last upload and its
// aggregate.
#pragma once

#include <limits>
#include <memory>
#include <vector>

#include "config/config.h"
#include "data/corpus.h"
#include "codec/params.h"

namespace lowband {

struct DistilOutcome {
  std::vector<float> student;  // parameters after distillation, layout order
  double distill_loss = std::numeric_limits<double>::quiet_NaN();     // KL over the round's last step
  double public_val_loss = std::numeric_limits<double>::quiet_NaN();  // on the public validation split
  // KL(softmax(exact teacher) || softmax(student)) over every probe row;
  // NaN without the sites' reference logits (fpld.exact_reference).
  double student_kl = std::numeric_limits<double>::quiet_NaN();
};

class Distiller {
 public:
  // `probes`: fpld.contexts x model.context tokens (BuildProbeSet); the
  // public corpus (validation split) must outlive the distiller.
  static StatusOr<std::unique_ptr<Distiller>> Create(const CampaignConfig& config, std::vector<uint8_t> probes,
                                                     const Corpus* public_corpus);
  ~Distiller();
  // teacher (and exact, if given): [contexts * positions, vocab] row-major.
  StatusOr<DistilOutcome> Distil(uint32_t round, const ParamSet& start, const std::vector<float>& teacher,
                                 const std::vector<float>* exact);
  // The student's loss on the public validation split at `params`.
  StatusOr<double> PublicLoss(const ParamSet& params);

 private:
  struct Impl;
  explicit Distiller(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowband
