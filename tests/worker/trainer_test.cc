#include "worker/trainer.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <string>

#include "codec/blocks.h"
#include "ml/model_init.h"
#include "tests/fakes/tiny_model.h"

namespace lowband {
namespace {

using testing::TinyModel;

TrainingConfig TinyTraining() {
  TrainingConfig t;
  t.batch_size = 8;
  t.eval_batches = 4;
  t.seed = 99;
  t.inner.lr = 3e-3;
  t.inner.warmup_steps = 5;
  return t;
}

// Repetitive English-like text: a tiny model learns it within a few steps.
std::string Text(int repeats) {
  std::string s;
  for (int i = 0; i < repeats; ++i) {
    s += "the quick brown fox jumps over the lazy dog " + std::to_string(i % 10) + ".\n";
  }
  return s;
}

std::unique_ptr<Trainer> MakeTrainer(const Corpus* corpus, uint64_t data_seed = 5) {
  auto trainer = Trainer::Create(TinyModel(), TinyTraining(), "cpu", 1, corpus, data_seed);
  REQUIRE(trainer.ok());
  return std::move(trainer).value();
}

}  // namespace

TEST_CASE("Trainer starts from the campaign's initial parameters", "[unit]") {
  Corpus corpus = Corpus::FromText(Text(200), Text(40));
  auto trainer = MakeTrainer(&corpus);
  auto init = InitialParameters(TinyModel(), TinyTraining().seed);
  REQUIRE(init.ok());
  CHECK(trainer->layout() == init->layout);
  CHECK(trainer->global().Digest() == init->Digest());
}

// The pseudo-gradient a round sent, decoded the way the coordinator does.
std::vector<float> SentDelta(const Trainer& trainer, const TrainResult& result) {
  auto u = ParseUpdate(trainer.layout(), trainer.plan(), result.upload.header, result.upload.bulk);
  REQUIRE(u.ok());
  return Densify(trainer.plan(), *u);
}

TEST_CASE("TrainRound returns a finite delta of the layout's size, and loss falls over rounds", "[unit]") {
  Corpus corpus = Corpus::FromText(Text(200), Text(40));
  auto trainer = MakeTrainer(&corpus);
  const size_t numel = static_cast<size_t>(trainer->layout().numel());
  auto eval0 = trainer->Evaluate();
  REQUIRE(eval0.ok());

  std::vector<double> losses;
  for (int round = 0; round < 6; ++round) {
    auto result = trainer->TrainRound(5);
    REQUIRE(result.ok());
    const std::vector<float> delta = SentDelta(*trainer, *result);
    CHECK(result->upload.header.codec == CodecKind::kDenseFp32);
    CHECK(delta.size() == numel);
    CHECK(AllFinite(delta));
    CHECK(result->steps == 5);
    CHECK(result->tokens == 5u * 8u * 16u);
    CHECK(result->step_time_ms > 0);
    bool nonzero = false;
    for (float v : delta) nonzero = nonzero || v != 0.0f;
    CHECK(nonzero);
    losses.push_back(result->mean_loss);
    REQUIRE(trainer->ApplyUpdate(delta).ok());
  }
  INFO("first round loss " << losses.front() << ", last " << losses.back());
  CHECK(losses.back() < losses.front() - 0.5);
  auto eval1 = trainer->Evaluate();
  REQUIRE(eval1.ok());
  CHECK(eval1->loss < eval0->loss - 0.5);
}

TEST_CASE("ApplyUpdate is plain fp32 arithmetic on the global copy", "[unit]") {
  Corpus corpus = Corpus::FromText(Text(200), Text(40));
  auto trainer = MakeTrainer(&corpus);
  auto result = trainer->TrainRound(3);
  REQUIRE(result.ok());

  // An outer step like the coordinator's: a scaled update, computed by hand.
  const std::vector<float> delta = SentDelta(*trainer, *result);
  std::vector<float> update(delta.size());
  for (size_t i = 0; i < update.size(); ++i) update[i] = 0.7f * delta[i];
  ParamSet expected = trainer->global();
  for (size_t i = 0; i < update.size(); ++i) expected.values[i] = expected.values[i] - update[i];

  REQUIRE(trainer->ApplyUpdate(update).ok());
  CHECK(trainer->global().Digest() == expected.Digest());
  CHECK(trainer->global().values == expected.values);

  CHECK(trainer->ApplyUpdate(std::vector<float>(3, 0.0f)).code() == StatusCode::kInvalidArgument);
  CHECK(trainer->global().Digest() == expected.Digest());
}

TEST_CASE("Evaluate is deterministic and measures the global parameters", "[unit]") {
  Corpus corpus = Corpus::FromText(Text(200), Text(40));
  auto trainer = MakeTrainer(&corpus);
  auto a = trainer->Evaluate();
  auto b = trainer->Evaluate();
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->loss == b->loss);
  CHECK(a->tokens == b->tokens);
  CHECK(a->tokens > 0);
  CHECK(std::isfinite(a->loss));

  // A round leaves local weights in the model; Evaluate still scores global.
  REQUIRE(trainer->TrainRound(3).ok());
  auto c = trainer->Evaluate();
  REQUIRE(c.ok());
  CHECK(c->loss == a->loss);
}

TEST_CASE("Trainers with the same seeds train identically", "[unit]") {
  Corpus corpus = Corpus::FromText(Text(200), Text(40));
  auto t1 = MakeTrainer(&corpus, 11);
  auto t2 = MakeTrainer(&corpus, 11);
  auto t3 = MakeTrainer(&corpus, 12);
  auto r1 = t1->TrainRound(2);
  auto r2 = t2->TrainRound(2);
  auto r3 = t3->TrainRound(2);
  REQUIRE(r1.ok());
  REQUIRE(r2.ok());
  REQUIRE(r3.ok());
  CHECK(r1->upload.bulk == r2->upload.bulk);
  CHECK(r1->upload.bulk != r3->upload.bulk);  // different data order
}

TEST_CASE("SetGlobal replaces the parameters and checks the layout", "[unit]") {
  Corpus corpus = Corpus::FromText(Text(200), Text(40));
  auto trainer = MakeTrainer(&corpus);
  auto other = InitialParameters(TinyModel(), 1);
  REQUIRE(other.ok());
  REQUIRE(trainer->SetGlobal(*other).ok());
  CHECK(trainer->global().Digest() == other->Digest());
  auto wrong = InitialParameters(ModelConfig{}, 1);
  REQUIRE(wrong.ok());
  CHECK(trainer->SetGlobal(*wrong).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("Trainer::Create rejects bad devices and tiny corpora", "[unit]") {
  Corpus corpus = Corpus::FromText(Text(200), Text(40));
  for (const char* device : {"gpu", "cuda:", "cuda:x", "CPU", ""}) {
    auto t = Trainer::Create(TinyModel(), TinyTraining(), device, 1, &corpus, 1);
    INFO(device);
    CHECK(t.status().code() == StatusCode::kInvalidArgument);
  }
  auto cuda = Trainer::Create(TinyModel(), TinyTraining(), "cuda:0", 1, &corpus, 1);
  if (!cuda.ok()) {  // a CPU-only LibTorch or no GPU: a clear Unavailable
    CHECK(cuda.status().code() == StatusCode::kUnavailable);
    CHECK(cuda.status().message().find("CUDA") != std::string::npos);
  }
  Corpus tiny = Corpus::FromText("abc", Text(40));
  CHECK(Trainer::Create(TinyModel(), TinyTraining(), "cpu", 1, &tiny, 1).status().code() ==
        StatusCode::kInvalidArgument);
  Corpus no_val = Corpus::FromText(Text(200), "x");
  CHECK(Trainer::Create(TinyModel(), TinyTraining(), "cpu", 1, &no_val, 1).status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(Trainer::Create(TinyModel(), TinyTraining(), "cpu", 1, nullptr, 1).status().code() ==
        StatusCode::kInvalidArgument);
}

TEST_CASE("Reference workload and free memory report plausible numbers", "[unit]") {
  const double ms = MeasureReferenceStepMs("cpu");
  CHECK(ms > 0);
  CHECK(ms < 60000);
  CHECK(FreeMemoryBytes("cpu") > (1ull << 20));
  CHECK(FreeMemoryBytes("bogus") == 0);
  CHECK(MeasureReferenceStepMs("bogus") == 0);
}

TEST_CASE("A SparseLoCo trainer sends a compressed delta and still learns from sparse aggregates", "[unit]") {
  Corpus corpus = Corpus::FromText(Text(200), Text(40));
  CodecConfig codec;
  codec.kind = CodecKind::kSparseLoCo;
  codec.topk = 64;
  auto made = Trainer::Create(TinyModel(), TinyTraining(), "cpu", 1, &corpus, 5, codec);
  REQUIRE(made.ok());
  auto& trainer = *made;
  auto eval0 = trainer->Evaluate();
  REQUIRE(eval0.ok());
  const uint64_t dense_bytes = static_cast<uint64_t>(trainer->layout().numel()) * 4;
  for (int round = 0; round < 8; ++round) {
    auto result = trainer->TrainRound(5);
    REQUIRE(result.ok());
    CHECK(result->upload.header.codec == CodecKind::kSparseLoCo);
    CHECK(result->upload.bulk.size() == BulkBytes(trainer->plan(), CodecKind::kSparseLoCo));
    CHECK(result->upload.bulk.size() * 20 < dense_bytes);
    auto u = ParseUpdate(trainer->layout(), trainer->plan(), result->upload.header, result->upload.bulk);
    REQUIRE(u.ok());
    CHECK_FALSE(u->dense);
    CHECK(u->nnz() == static_cast<size_t>(trainer->plan().kept));
    // The coordinator's path: aggregate of one, SGD lr 1, applied sparse.
    Update agg = AggregateMean(trainer->plan(), {&*u}, AggregationRule::kMeanAll);
    ParamSet expected = trainer->global();
    REQUIRE(ApplyUpdate(trainer->plan(), agg, &expected.values).ok());
    REQUIRE(trainer->ApplyUpdate(agg).ok());
    CHECK(trainer->global().Digest() == expected.Digest());
  }
  // The device copy the update was applied to in place scores exactly like
  // a trainer loaded with the host copy.
  auto fresh = Trainer::Create(TinyModel(), TinyTraining(), "cpu", 1, &corpus, 5, codec);
  REQUIRE(fresh.ok());
  REQUIRE((*fresh)->SetGlobal(trainer->global()).ok());
  auto a = trainer->Evaluate();
  auto b = (*fresh)->Evaluate();
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->loss == b->loss);
  auto eval1 = trainer->Evaluate();
  REQUIRE(eval1.ok());
  INFO("val loss " << eval0->loss << " -> " << eval1->loss);
  CHECK(eval1->loss < eval0->loss - 0.3);
}

}  // namespace lowband

namespace lowband {
namespace {

bool SameBits(const float* a, const float* b, int64_t n) { return std::memcmp(a, b, sizeof(float) * n) == 0; }

}  // namespace

TEST_CASE("ParaBlock: TrainRound(block) trains that block alone, the rest bit for bit frozen", "[unit]") {
  Corpus corpus = Corpus::FromText(Text(200), Text(40));
  auto trainer = MakeTrainer(&corpus);
  const std::vector<int> layer_blocks = {0, 1};
  REQUIRE(trainer->SetBlocks(layer_blocks).ok());
  CHECK(trainer->has_blocks());
  auto ranges = BlockTensorRanges(trainer->layout(), layer_blocks);
  REQUIRE(ranges.ok());
  REQUIRE(ranges->size() == 2);
  CHECK(trainer->TrainRound(3).status().code() == StatusCode::kInvalidArgument);     // a block is required
  CHECK(trainer->TrainRound(3, 2).status().code() == StatusCode::kInvalidArgument);  // no block 2

  // Block 1 first (its AdamW moments become non-zero), then block 0, then
  // block 1 again: each time the other block must not move at all, which
  // it would through momentum or weight decay if it were merely zero-graded.
  for (int block : {1, 0, 1}) {
    INFO("block " << block);
    const TensorRange& r = (*ranges)[static_cast<size_t>(block)];
    auto result = trainer->TrainRound(3, block);
    REQUIRE(result.ok());
    const ParamSet local = trainer->LocalParams();
    const ParamSet& global = trainer->global();
    REQUIRE(local.values.size() == global.values.size());
    const int64_t end = r.offset + r.numel;
    const int64_t total = static_cast<int64_t>(global.values.size());
    CHECK(SameBits(local.values.data(), global.values.data(), r.offset));
    CHECK(SameBits(local.values.data() + end, global.values.data() + end, total - end));
    CHECK_FALSE(SameBits(local.values.data() + r.offset, global.values.data() + r.offset, r.numel));
    // The upload covers the block's tensors alone.
    const ParamLayout slice = SliceLayout(trainer->layout(), r);
    const LayoutPlan plan = PlanLayout(slice, 64);
    auto u = ParseUpdate(slice, plan, result->upload.header, result->upload.bulk);
    REQUIRE(u.ok());
    const std::vector<float> delta = Densify(plan, *u);
    REQUIRE(static_cast<int64_t>(delta.size()) == r.numel);
    // Apply it to the block's slice of the global parameters, as the
    // coordinator's aggregate of this single upload would.
    std::vector<float> whole(global.values.size(), 0.0f);
    std::copy(delta.begin(), delta.end(), whole.begin() + r.offset);
    REQUIRE(trainer->ApplyUpdate(whole).ok());
  }
  // A layer partition that leaves a block empty is refused.
  auto other = MakeTrainer(&corpus);
  CHECK(other->SetBlocks({0, 1, 2}).code() == StatusCode::kInvalidArgument);
}

}  // namespace lowband

namespace lowband {

TEST_CASE("overlap: rounds continue from the model, and the late aggregate keeps the newest progress",
          "[unit]") {
  Corpus corpus = Corpus::FromText(Text(200), Text(40));
  auto trainer = MakeTrainer(&corpus);
  trainer->SetOverlap(true);
  const ParamSet g0 = trainer->global();

  // T1 starts from the global parameters.
  auto r1 = trainer->TrainRound(3);
  REQUIRE(r1.ok());
  const ParamSet end1 = trainer->LocalParams();
  const std::vector<float> d1 = SentDelta(*trainer, *r1);
  for (size_t i = 0; i < d1.size(); ++i) REQUIRE(d1[i] == g0.values[i] - end1.values[i]);

  // T2 continues from where T1 stopped (no aggregate has come yet); its
  // upload is its own progress.
  auto r2 = trainer->TrainRound(3);
  REQUIRE(r2.ok());
  const ParamSet end2 = trainer->LocalParams();
  const std::vector<float> d2 = SentDelta(*trainer, *r2);
  for (size_t i = 0; i < d2.size(); ++i) REQUIRE(d2[i] == end1.values[i] - end2.values[i]);

  // A1: the aggregate of round 1 (here: half the site's own delta) lands
  // one round late; the model becomes G1 + (end2 - end1).
  std::vector<float> u1(d1.size());
  for (size_t i = 0; i < u1.size(); ++i) u1[i] = 0.5f * d1[i];
  REQUIRE(trainer->ApplyUpdate(u1).ok());
  const ParamSet& g1 = trainer->global();
  for (size_t i = 0; i < u1.size(); ++i) REQUIRE(g1.values[i] == g0.values[i] - u1[i]);
  const ParamSet corrected = trainer->LocalParams();
  double worst = 0;
  for (size_t i = 0; i < u1.size(); ++i) {
    const float reference = g1.values[i] + (end2.values[i] - end1.values[i]);
    worst = std::max(worst, static_cast<double>(std::abs(corrected.values[i] - reference)));
  }
  CHECK(worst <= 1e-6);

  // Evaluate measures G1 and leaves the corrected model in place.
  auto eval = trainer->Evaluate();
  REQUIRE(eval.ok());
  const ParamSet after_eval = trainer->LocalParams();
  CHECK(std::memcmp(after_eval.values.data(), corrected.values.data(), sizeof(float) * corrected.values.size()) == 0);
  auto reference = MakeTrainer(&corpus);
  REQUIRE(reference->SetGlobal(g1).ok());
  auto ref_eval = reference->Evaluate();
  REQUIRE(ref_eval.ok());
  CHECK(eval->loss == ref_eval->loss);

  // T3 continues from the corrected model.
  auto r3 = trainer->TrainRound(2);
  REQUIRE(r3.ok());
  const ParamSet end3 = trainer->LocalParams();
  const std::vector<float> d3 = SentDelta(*trainer, *r3);
  for (size_t i = 0; i < d3.size(); ++i) REQUIRE(d3[i] == corrected.values[i] - end3.values[i]);

  // A re-sync drops the local progress: the next round starts from it.
  REQUIRE(trainer->SetGlobal(g0).ok());
  auto r4 = trainer->TrainRound(1);
  REQUIRE(r4.ok());
  const ParamSet end4 = trainer->LocalParams();
  const std::vector<float> d4 = SentDelta(*trainer, *r4);
  for (size_t i = 0; i < d4.size(); ++i) REQUIRE(d4[i] == g0.values[i] - end4.values[i]);
}

}  // namespace lowband
