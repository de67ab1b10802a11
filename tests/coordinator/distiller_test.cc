// The FPLD student on the coordinator: distilling towards a fixed teacher
// lowers the KL to it, the result is the model's layout, and the public
// validation loss is the model's own.
#include "coordinator/distiller.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <string>

#include "data/probe_set.h"
#include "ml/model_init.h"

namespace lowband {
namespace {

CampaignConfig TinyFpld() {
  CampaignConfig c;
  c.model = ModelShape(1, 32, 2, 16, 256);
  c.training.seed = 21;
  c.fpld.enabled = true;
  c.fpld.contexts = 8;
  c.fpld.positions = 4;
  c.fpld.student_steps = 40;
  c.fpld.student_lr = 1e-2;
  c.fpld.student_batch = 8;
  c.fpld.student_eval_batches = 2;
  return c;
}

TEST_CASE("distiller: steps on KL lower it towards a fixed teacher - bad teachers are refused", "[unit]") {
  const CampaignConfig c = TinyFpld();
  std::string text;
  for (int i = 0; i < 200; ++i) text += "the quick brown fox jumps over the lazy dog " + std::to_string(i) + "\n";
  const Corpus corpus = Corpus::FromText(text, text);
  auto probes = BuildProbeSet(corpus, c.fpld.contexts, c.model.context, 1);
  REQUIRE(probes.ok());
  auto d = Distiller::Create(c, *probes, &corpus);
  REQUIRE(d.ok());
  auto start = InitialParameters(c.model, c.training.seed);
  REQUIRE(start.ok());
  // A teacher that is sure of one token per row.
  const size_t rows = static_cast<size_t>(c.fpld.contexts) * c.fpld.positions;
  std::vector<float> teacher(rows * 256, -4.0f);
  for (size_t r = 0; r < rows; ++r) teacher[r * 256 + 'e'] = 6.0f;

  auto first = (*d)->Distil(1, *start, teacher, &teacher);
  REQUIRE(first.ok());
  CHECK(first->student.size() == start->values.size());
  CHECK(std::isfinite(first->distill_loss));
  CHECK(std::isfinite(first->public_val_loss));
  ParamSet next{start->layout, first->student};
  auto second = (*d)->Distil(2, next, teacher, &teacher);
  REQUIRE(second.ok());
  INFO("KL to the teacher " << first->student_kl << " -> " << second->student_kl);
  CHECK(second->student_kl < first->student_kl);
  auto own = (*d)->PublicLoss(next);
  REQUIRE(own.ok());
  CHECK(*own == Approx(first->public_val_loss));

  CHECK_FALSE((*d)->Distil(3, next, std::vector<float>(10, 0.0f), nullptr).ok());
  CHECK_FALSE(Distiller::Create(c, std::vector<uint8_t>(5, 'a'), &corpus).ok());
}

}  // namespace
}  // namespace lowband
