// training.precision and the inner optimizer: autocast engages and is
// undone, bf16 losses track fp32 ones, and the fused CUDA AdamW (with its
// clipping) follows torch::optim::AdamW step for step.
#include <catch2/catch.hpp>

#include "ml/inner_optimizer.h"
#include "ml/model.h"
#include "ml/precision.h"
#include "tests/fakes/skip.h"
#include "tests/fakes/tiny_model.h"

namespace lowband {
namespace {

ModelConfig TinyConfig() { return testing::TinyModel(2, 32, 4, 16, 256); }

std::pair<torch::Tensor, torch::Tensor> Batch(uint64_t seed, const torch::Device& device) {
  torch::manual_seed(seed);
  auto data = torch::randint(0, 256, {4, 17}, torch::kInt64).to(device);
  using torch::indexing::Slice;
  return {data.index({Slice(), Slice(0, 16)}), data.index({Slice(), Slice(1, 17)})};
}

// Runs `steps` InnerAdamW steps on a fresh tiny model on `device` with
// clipping at `max_norm`; tensors listed in `frozen` get no gradient.
// Returns the parameters on the CPU.
std::vector<torch::Tensor> Train(const torch::Device& device, int steps, double max_norm,
                                 const std::vector<size_t>& frozen) {
  Lm model = MakeLm(TinyConfig(), 3);
  model->to(device);
  InnerOptimizerConfig config;
  config.weight_decay = 0.1;
  InnerAdamW opt(model->parameters(), config);
  auto params = model->parameters();
  for (int step = 0; step < steps; ++step) {
    auto [x, y] = Batch(100 + static_cast<uint64_t>(step), device);
    opt.ZeroGrad();
    model->Loss(x, y).backward();
    for (size_t i : frozen) params[i].mutable_grad() = torch::Tensor();
    opt.Step(1e-2 * (step + 1) / steps, max_norm);
  }
  std::vector<torch::Tensor> out;
  for (const auto& p : params) out.push_back(p.detach().to(torch::kCPU));
  return out;
}

}  // namespace

TEST_CASE("ResolvePrecision: auto is fp32 on the CPU and bf16 on CUDA, explicit values stay", "[unit][precision]") {
  const torch::Device cpu(torch::kCPU);
  CHECK(ResolvePrecision(Precision::kAuto, cpu) == Precision::kFp32);
  CHECK(ResolvePrecision(Precision::kBf16, cpu) == Precision::kBf16);
  CHECK(ResolvePrecision(Precision::kTf32, cpu) == Precision::kTf32);
  CHECK(ResolvePrecision(Precision::kAuto, torch::Device(torch::kCUDA, 0)) == Precision::kBf16);
}

TEST_CASE("AutocastScope runs bf16 matmuls with an fp32 loss, and only inside the scope", "[unit][precision]") {
  const torch::Device cpu(torch::kCPU);
  Lm model = MakeLm(TinyConfig(), 5);
  auto [x, y] = Batch(7, cpu);
  torch::NoGradGuard no_grad;
  const auto fp32_logits = model->forward(x);
  const double fp32_loss = model->Loss(x, y).item<double>();
  {
    AutocastScope fp32(Precision::kFp32, cpu);
    CHECK(model->forward(x).scalar_type() == torch::kFloat32);
  }
  {
    AutocastScope bf16(Precision::kBf16, cpu);
    CHECK(model->forward(x).scalar_type() == torch::kBFloat16);
    const auto loss = model->Loss(x, y);
    CHECK(loss.scalar_type() == torch::kFloat32);
    CHECK(loss.item<double>() == Approx(fp32_loss).epsilon(0.02));
  }
  // Undone on exit: fp32 again, and the same values as before the scope.
  const auto after = model->forward(x);
  CHECK(after.scalar_type() == torch::kFloat32);
  CHECK(torch::equal(after, fp32_logits));
  for (const auto& p : model->parameters()) CHECK(p.scalar_type() == torch::kFloat32);
}

TEST_CASE("InnerAdamW trains, decays only matrices and leaves gradient-less tensors alone",
          "[unit][precision]") {
  const torch::Device cpu(torch::kCPU);
  const auto start = Train(cpu, 0, 1.0, {});
  const std::vector<size_t> frozen = {0, 3};  // the token embedding and a LayerNorm bias
  const auto trained = Train(cpu, 5, 1.0, frozen);
  REQUIRE(trained.size() == start.size());
  for (size_t i = 0; i < start.size(); ++i) {
    const bool is_frozen = i == 0 || i == 3;
    INFO("tensor " << i);
    CHECK(torch::equal(trained[i], start[i]) == is_frozen);
  }
}

TEST_CASE("CUDA: the fused AdamW and its clipping follow torch::optim::AdamW", "[unit][precision][cuda]") {
  if (!torch::cuda::is_available()) LOWBAND_SKIP("no CUDA device");
  const auto cuda = torch::TensorOptions().device(torch::kCUDA, 0);
  InnerOptimizerConfig config;
  config.weight_decay = 0.1;
  for (double max_norm : {0.0, 0.05}) {
    // The same tensors twice (a matrix, a vector, and a matrix that gets
    // no gradient), stepped with the same gradients by both optimizers.
    torch::manual_seed(11);
    std::vector<torch::Tensor> ours = {torch::randn({64, 32}, cuda), torch::randn({32}, cuda),
                                       torch::randn({16, 8}, cuda)};
    std::vector<torch::Tensor> theirs;
    for (auto& t : ours) {
      t.set_requires_grad(true);
      theirs.push_back(t.detach().clone().set_requires_grad(true));
    }
    InnerAdamW fused(ours, config);
    INFO("LibTorch >= 2.1 has at::_fused_adamw_");
    REQUIRE(fused.fused());
    auto options = [&](double wd) {
      return torch::optim::AdamWOptions(config.lr)
          .betas(std::make_tuple(config.beta1, config.beta2))
          .eps(config.eps)
          .weight_decay(wd);
    };
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>{theirs[0], theirs[2]},
                        std::make_unique<torch::optim::AdamWOptions>(options(config.weight_decay)));
    groups.emplace_back(std::vector<torch::Tensor>{theirs[1]}, std::make_unique<torch::optim::AdamWOptions>(options(0)));
    torch::optim::AdamW reference(std::move(groups), options(config.weight_decay));
    for (int step = 0; step < 6; ++step) {
      const double lr = 1e-2 * (step + 1) / 6;
      fused.ZeroGrad();
      for (size_t i = 0; i < 2; ++i) {
        auto g = torch::randn(ours[i].sizes(), cuda);
        ours[i].mutable_grad() = g.clone();
        theirs[i].mutable_grad() = g.clone();
      }
      theirs[2].mutable_grad() = torch::Tensor();
      fused.Step(lr, max_norm);
      if (max_norm > 0) torch::nn::utils::clip_grad_norm_(theirs, max_norm);
      for (auto& group : reference.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
      reference.step();
    }
    for (size_t i = 0; i < ours.size(); ++i) {
      INFO("max_norm " << max_norm << " tensor " << i);
      CHECK(torch::allclose(ours[i], theirs[i], /*rtol=*/1e-5, /*atol=*/1e-6));
    }
  }
}

}  // namespace lowband
