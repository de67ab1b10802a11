// StageTrainer: a pipeline of stage trainers driven in one process (as the
// wire would carry the boundaries) takes the same optimizer step as the
// unsplit model on the whole batch; ops out of sequence and bad inputs are
// clear Statuses; a bottlenecked bf16 pipeline learns.
#include "worker/stage_trainer.h"

#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "ml/model.h"
#include "tests/fakes/tiny_model.h"

namespace lowband {
namespace {

using Pipeline = std::vector<std::unique_ptr<StageTrainer>>;

ModelConfig TinyModel() { return testing::TinyModel(4, 32, 4, 8, 32); }

Pipeline MakePipeline(const ModelConfig& m, const std::vector<int>& blocks, int ratio,
                      const InnerOptimizerConfig& opt, WireDtype wire, int micro) {
  Pipeline out;
  int first = 0;
  const int n = static_cast<int>(blocks.size());
  for (int s = 0; s < n; ++s) {
    const StageSpec spec{s, n, first, blocks[static_cast<size_t>(s)], ratio};
    auto t = StageTrainer::Create(m, spec, opt, wire, micro, torch::Device(torch::kCPU), 7);
    REQUIRE(t.ok());
    out.push_back(std::move(t).value());
    first += spec.blocks;
  }
  return out;
}

// A stage's local parameter name in the unsplit model ("blocks.i." shifts
// by the stage's first block).
std::string GlobalName(const std::string& local, int first_block) {
  const std::string prefix = "blocks.";
  if (local.rfind(prefix, 0) != 0) return local;
  const size_t dot = local.find('.', prefix.size());
  const int i = std::stoi(local.substr(prefix.size(), dot - prefix.size()));
  return prefix + std::to_string(i + first_block) + local.substr(dot);
}

// Loads the unsplit model's parameters into the pipeline's stages; every
// parameter of the unsplit model lands in exactly one stage.
void LoadFrom(GptStage& full, Pipeline& pipe) {
  std::map<std::string, torch::Tensor> by_name;
  for (const auto& item : full->named_parameters()) by_name[item.key()] = item.value();
  torch::NoGradGuard no_grad;
  size_t copied = 0;
  for (auto& st : pipe) {
    const auto params = st->parameters();
    const auto& layout = st->layout();
    REQUIRE(params.size() == layout.tensors.size());
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string name = GlobalName(layout.tensors[i].name, st->spec().first_block);
      INFO(name);
      REQUIRE(by_name.count(name) == 1);
      params[i].copy_(by_name[name]);
      ++copied;
    }
  }
  REQUIRE(copied == by_name.size());
}

// GPipe fill-drain through ToWire/FromWire: every micro-batch forward
// through every stage, then every backward in reverse. Returns the mean of
// the micro-batch losses.
double PipelineForwardBackward(Pipeline& pipe, const torch::Tensor& x, const torch::Tensor& y, int micro) {
  const int64_t mb = x.size(0) / micro;
  double loss_sum = 0;
  for (int m = 0; m < micro; ++m) {
    torch::Tensor h = x.narrow(0, m * mb, mb);
    for (auto& st : pipe) {
      auto out = st->Forward(m, st->first() ? h : FromWire(h), y.narrow(0, m * mb, mb));
      REQUIRE(out.ok());
      h = *out;
    }
    CHECK(h.dim() == 0);
    loss_sum += h.item<double>();
  }
  for (int m = micro - 1; m >= 0; --m) {
    torch::Tensor g;  // undefined into the last stage
    for (size_t s = pipe.size(); s-- > 0;) {
      auto back = pipe[s]->Backward(m, g.defined() ? FromWire(g) : g);
      REQUIRE(back.ok());
      g = *back;
    }
    CHECK(!g.defined());  // stage 0 sends nothing upstream
  }
  return loss_sum / micro;
}

// Clip by the norm over all stages, as the unsplit model does.
void StepAll(Pipeline& pipe) {
  double sq = 0;
  for (auto& st : pipe) {
    auto s = st->GradSquaredNorm();
    REQUIRE(s.ok());
    sq += *s;
  }
  for (auto& st : pipe) REQUIRE(st->Step(std::sqrt(sq)).ok());
}

double EvaluatePipeline(Pipeline& pipe, const torch::Tensor& x, const torch::Tensor& y) {
  torch::Tensor h = x;
  for (auto& st : pipe) {
    auto out = st->Evaluate(st->first() ? h : FromWire(h), y);
    REQUIRE(out.ok());
    h = *out;
  }
  return h.item<double>();
}

torch::Tensor CrossEntropy(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

// The reference: the unsplit model, one AdamW (Trainer's parameter groups)
// step on the whole batch with clip_grad_norm_.
double ReferenceStep(GptStage& full, const InnerOptimizerConfig& o, const torch::Tensor& x, const torch::Tensor& y) {
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& p : full->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  auto options = [&](double wd) {
    return torch::optim::AdamWOptions(o.lr).betas(std::make_tuple(o.beta1, o.beta2)).eps(o.eps).weight_decay(wd);
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(options(o.weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(options(0.0)));
  torch::optim::AdamW opt(std::move(groups), options(o.weight_decay));
  opt.zero_grad();
  auto loss = CrossEntropy(full->forward(x), y);
  loss.backward();
  if (o.grad_clip > 0) torch::nn::utils::clip_grad_norm_(full->parameters(), o.grad_clip);
  opt.step();
  return loss.item<double>();
}

TEST_CASE("stage trainer: a pipeline step equals the unsplit model's step on the whole batch",
          "[unit][stage_trainer]") {
  const ModelConfig m = TinyModel();
  constexpr int kMicro = 4;
  torch::manual_seed(21);
  const auto x = torch::randint(m.vocab, {8, m.context}, torch::kInt64);
  const auto y = torch::randint(m.vocab, {8, m.context}, torch::kInt64);
  // Adam's first step is invariant to a constant gradient scale, and so is
  // clipping once it binds: the second configuration (no clip, eps near the
  // gradients' size) makes the 1/M loss scaling visible in the parameters.
  InnerOptimizerConfig clipped;
  clipped.lr = 1e-2;
  clipped.grad_clip = 0.05;
  clipped.eps = 1e-6;  // Adam turns a near-zero gradient's float noise into a full +-lr step
  InnerOptimizerConfig scale_sensitive;
  scale_sensitive.lr = 1e-2;
  scale_sensitive.grad_clip = 0;
  scale_sensitive.eps = 1e-3;
  for (const auto& opt : {clipped, scale_sensitive}) {
    for (const auto& blocks : {std::vector<int>{1, 3}, std::vector<int>{2, 1, 1}}) {
      INFO(blocks.size() << " stages, grad_clip " << opt.grad_clip << ", eps " << opt.eps);
      GptStage full = MakeGptStage(m, StageSpec{0, 1, 0, m.layers, 1}, 3);
      Pipeline pipe = MakePipeline(m, blocks, /*ratio=*/1, opt, WireDtype::kFp32, kMicro);
      LoadFrom(full, pipe);

      double ref_eval = 0;
      {
        torch::NoGradGuard no_grad;
        ref_eval = CrossEntropy(full->forward(x), y).item<double>();
      }
      CHECK(EvaluatePipeline(pipe, x, y) == Approx(ref_eval).epsilon(1e-5));

      const double loss = PipelineForwardBackward(pipe, x, y, kMicro);
      for (auto& st : pipe) CHECK(st->StepComplete());
      StepAll(pipe);
      const double ref_loss = ReferenceStep(full, opt, x, y);
      CHECK(loss == Approx(ref_loss).epsilon(1e-5));

      std::map<std::string, torch::Tensor> want;
      for (const auto& item : full->named_parameters()) want[item.key()] = item.value();
      for (auto& st : pipe) {
        CHECK(st->step_count() == 1);
        const auto params = st->parameters();
        for (size_t i = 0; i < params.size(); ++i) {
          const std::string name = GlobalName(st->layout().tensors[i].name, st->spec().first_block);
          INFO(name);
          const double rel = ((params[i] - want[name]).norm() / want[name].norm()).item<double>();
          CHECK(rel < 1e-5);
          CHECK(!params[i].grad().defined());  // Step dropped the gradients
        }
      }
    }
  }
}

TEST_CASE("stage trainer: ops out of sequence and bad inputs are clear errors - Abort starts clean",
          "[unit][stage_trainer]") {
  const ModelConfig m = TinyModel();
  InnerOptimizerConfig opt;
  Pipeline pipe = MakePipeline(m, {2, 2}, /*ratio=*/4, opt, WireDtype::kBf16, /*micro=*/2);
  StageTrainer& s0 = *pipe[0];
  StageTrainer& s1 = *pipe[1];
  REQUIRE(s0.boundary_width() == 8);
  torch::manual_seed(4);
  const auto x = torch::randint(m.vocab, {4, m.context}, torch::kInt64);
  const auto y = torch::randint(m.vocab, {4, m.context}, torch::kInt64);
  const auto x0 = x.narrow(0, 0, 2), x1 = x.narrow(0, 2, 2);
  const auto y0 = y.narrow(0, 0, 2), y1 = y.narrow(0, 2, 2);

  SECTION("bad arguments to Create are listed together") {
    InnerOptimizerConfig bad;
    bad.lr = 0;
    auto t = StageTrainer::Create(m, StageSpec{2, 2, 0, 5, 3}, bad, WireDtype::kFp32, 0, torch::Device(torch::kCPU), 1);
    REQUIRE_FALSE(t.ok());
    CHECK(t.status().code() == StatusCode::kInvalidArgument);
    const std::string msg = t.status().message();
    CHECK(msg.find("stage 2") != std::string::npos);
    CHECK(msg.find("ratio 3") != std::string::npos);
    CHECK(msg.find("micro_batches 0") != std::string::npos);
    CHECK(msg.find("lr") != std::string::npos);
  }

  SECTION("errors, then Abort, then a clean step") {
    // Wrong input shape / dtype / index.
    auto r = s0.Forward(0, x0.unsqueeze(2));
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find("micro-batch 0") != std::string::npos);
    CHECK(r.status().message().find("[2, 8, 1]") != std::string::npos);
    r = s0.Forward(0, x0.to(torch::kInt32));
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    r = s0.Forward(0, x0 + m.vocab);
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    r = s0.Forward(2, x0);
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find("not in [0, 2)") != std::string::npos);

    // Duplicate forward; a second micro-batch of another shape.
    auto z0 = s0.Forward(0, x0);
    REQUIRE(z0.ok());
    CHECK(z0->scalar_type() == torch::kBFloat16);
    CHECK(z0->sizes() == torch::IntArrayRef({2, m.context, 8}));
    r = s0.Forward(0, x0);
    CHECK(r.status().code() == StatusCode::kFailedPrecondition);
    CHECK(r.status().message().find("already forwarded") != std::string::npos);
    r = s0.Forward(1, x.narrow(0, 0, 3));
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find("expected [2, 8]") != std::string::npos);

    // The receiving stage: wrong width, wrong dtype, missing targets.
    r = s1.Forward(0, torch::zeros({2, m.context, 16}));
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find("expected [mb, T, 8]") != std::string::npos);
    r = s1.Forward(0, torch::zeros({2, m.context, 8}, torch::kFloat64), y0);
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    r = s1.Forward(0, *z0);
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find("targets") != std::string::npos);

    // Backward without forward; the last stage takes no gradient.
    auto b = s1.Backward(1);
    CHECK(b.status().code() == StatusCode::kFailedPrecondition);
    CHECK(b.status().message().find("not forwarded") != std::string::npos);
    auto loss0 = s1.Forward(0, *z0, y0);  // bf16 straight off the wire is accepted
    REQUIRE(loss0.ok());
    CHECK(loss0->dim() == 0);
    b = s1.Backward(0, torch::zeros({2, m.context, 32}));
    CHECK(b.status().code() == StatusCode::kInvalidArgument);
    auto g0 = s1.Backward(0);
    REQUIRE(g0.ok());
    CHECK(g0->scalar_type() == torch::kBFloat16);
    CHECK(g0->sizes() == z0->sizes());
    b = s1.Backward(0);
    CHECK(b.status().code() == StatusCode::kFailedPrecondition);
    b = s0.Backward(0, torch::zeros({2, m.context, 4}));
    CHECK(b.status().code() == StatusCode::kInvalidArgument);
    CHECK(b.status().message().find("expected [2, 8, 8]") != std::string::npos);
    b = s0.Backward(0, *g0);
    REQUIRE(b.ok());
    CHECK(!b->defined());

    // Step with micro-batch 1 missing: first never forwarded, then not backward.
    auto st = s0.Step();
    CHECK(st.code() == StatusCode::kFailedPrecondition);
    CHECK(st.message().find("no forward for 1") != std::string::npos);
    CHECK(s0.GradSquaredNorm().status().code() == StatusCode::kFailedPrecondition);
    REQUIRE(s0.Forward(1, x1).ok());
    st = s0.Step();
    CHECK(st.code() == StatusCode::kFailedPrecondition);
    CHECK(st.message().find("no backward for 1") != std::string::npos);
    CHECK(s0.step_count() == 0);

    // A neighbour was lost: both stages drop the step and start clean.
    const auto before = s0.parameters()[0].clone();
    s0.Abort();
    s1.Abort();
    for (auto& p : s0.parameters()) CHECK(!p.grad().defined());
    CHECK(torch::equal(before, s0.parameters()[0]));
    auto z = s0.Forward(0, x.narrow(0, 0, 3));  // a new step may have a new shape
    REQUIRE(z.ok());
    s0.Abort();
    const double loss = PipelineForwardBackward(pipe, x, y, 2);
    CHECK(std::isfinite(loss));
    REQUIRE(s0.Step().ok());
    REQUIRE(s1.Step().ok());
    CHECK(s0.step_count() == 1);
    CHECK(s1.step_count() == 1);
    CHECK_FALSE(torch::equal(before, s0.parameters()[0]));
  }
}

TEST_CASE("stage trainer: layout names the parameters in order", "[unit][stage_trainer]") {
  const ModelConfig m = TinyModel();
  Pipeline pipe = MakePipeline(m, {2, 2}, /*ratio=*/16, InnerOptimizerConfig{}, WireDtype::kBf16, 1);
  for (auto& st : pipe) {
    const auto params = st->parameters();
    const auto& layout = st->layout();
    REQUIRE(params.size() == layout.tensors.size());
    int64_t numel = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      CHECK(params[i].sizes().vec() == layout.tensors[i].shape);
      numel += params[i].numel();
    }
    CHECK(numel == layout.numel());
  }
  CHECK(pipe[0]->layout().tensors.front().name == "tok_emb.weight");
  CHECK(pipe[0]->layout().tensors.back().name == "enc_fc2.bias");
  CHECK(pipe[1]->layout().tensors.front().name == "dec_fc1.weight");
  CHECK(pipe[1]->layout().tensors.back().name == "head.weight");
}

TEST_CASE("stage trainer: a ratio-16 bf16 pipeline learns a fixed batch", "[unit][stage_trainer]") {
  ModelConfig m = TinyModel();
  m.layers = 2;
  m.d_model = 64;  // b = 4 at ratio 16
  m.context = 16;
  InnerOptimizerConfig opt;
  opt.lr = 1e-2;
  opt.warmup_steps = 5;
  Pipeline pipe = MakePipeline(m, {1, 1}, /*ratio=*/16, opt, WireDtype::kBf16, /*micro=*/2);
  REQUIRE(pipe[0]->boundary_width() == 4);
  torch::manual_seed(8);
  const auto x = torch::randint(m.vocab, {8, m.context}, torch::kInt64);
  const auto y = torch::randint(m.vocab, {8, m.context}, torch::kInt64);
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    last = PipelineForwardBackward(pipe, x, y, 2);
    if (step == 0) first = last;
    StepAll(pipe);
  }
  INFO("loss " << first << " -> " << last);
  CHECK(std::isfinite(last));
  CHECK(last < 0.8 * first);
  CHECK(EvaluatePipeline(pipe, x, y) < 0.8 * first);
}

}  // namespace
}  // namespace lowband
