// ResBM stages: boundary shapes and near-identity at init, and a GPipe
// fill-drain schedule over detached boundaries (as they cross a link) whose
// gradients equal those of the same stages run in one process.
#include <torch/torch.h>

#include <catch2/catch.hpp>

#include "ml/model.h"

namespace lowband {
namespace {

ModelConfig SmallModel() {
  ModelConfig m;
  m.layers = 4;
  m.d_model = 64;
  m.heads = 4;
  m.context = 16;
  m.vocab = 64;
  return m;
}

std::vector<GptStage> MakeStages(const ModelConfig& m, int stages, int ratio, std::vector<int> blocks) {
  std::vector<GptStage> out;
  int first = 0;
  for (int s = 0; s < stages; ++s) {
    out.push_back(MakeGptStage(m, StageSpec{s, stages, first, blocks[static_cast<size_t>(s)], ratio}, 99));
    first += blocks[static_cast<size_t>(s)];
  }
  return out;
}

torch::Tensor CrossEntropy(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

// Every parameter gradient of every stage, in order.
std::vector<torch::Tensor> Grads(std::vector<GptStage>& stages) {
  std::vector<torch::Tensor> g;
  for (auto& s : stages) {
    for (auto& p : s->parameters()) g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
  }
  return g;
}

void ZeroGrads(std::vector<GptStage>& stages) {
  for (auto& s : stages) s->zero_grad();
}

// GPipe fill-drain: every micro-batch forward through every stage, then
// every backward in reverse order. A boundary crosses as the wire would
// carry it: detached, converted to the wire dtype and back; the receiver's
// input gradient travels back the same way.
double PipelineStep(std::vector<GptStage>& stages, const torch::Tensor& x, const torch::Tensor& y, int micro,
                    WireDtype wire) {
  const int64_t mb = x.size(0) / micro;
  struct Hop {
    torch::Tensor sent;      // sender's output (in its graph)
    torch::Tensor received;  // receiver's leaf input
  };
  std::vector<std::vector<Hop>> hops(static_cast<size_t>(micro));
  std::vector<torch::Tensor> losses;
  double total = 0;
  for (int m = 0; m < micro; ++m) {
    auto input = x.narrow(0, m * mb, mb);
    torch::Tensor out;
    for (size_t s = 0; s < stages.size(); ++s) {
      out = stages[s]->forward(input);
      if (s + 1 < stages.size()) {
        auto received = FromWire(ToWire(out.detach(), wire)).requires_grad_(true);
        hops[static_cast<size_t>(m)].push_back({out, received});
        input = received;
      }
    }
    auto loss = CrossEntropy(out, y.narrow(0, m * mb, mb)) / micro;
    total += loss.item<double>();
    losses.push_back(loss);
  }
  for (int m = micro - 1; m >= 0; --m) {
    losses[static_cast<size_t>(m)].backward();
    auto& h = hops[static_cast<size_t>(m)];
    for (size_t k = h.size(); k-- > 0;) {
      h[k].sent.backward(FromWire(ToWire(h[k].received.grad(), wire)));
    }
  }
  return total;
}

TEST_CASE("resbm: boundary shapes, and a fresh boundary is a rank-b identity", "[torch]") {
  const ModelConfig m = SmallModel();
  for (int ratio : {1, 4, 64}) {
    INFO("ratio " << ratio);
    auto stages = MakeStages(m, 2, ratio, {2, 2});
    const int64_t b = m.d_model / ratio;
    CHECK(stages[0]->boundary_width() == b);
    torch::manual_seed(5);
    auto x = torch::randn({3, 8, m.d_model});
    auto z = stages[0]->Encode(x);
    REQUIRE(z.sizes() == torch::IntArrayRef({3, 8, b}));
    auto x_hat = stages[1]->Decode(z);
    REQUIRE(x_hat.sizes() == torch::IntArrayRef({3, 8, m.d_model}));
    using torch::indexing::Slice;
    auto kept = torch::zeros_like(x);
    kept.index_put_({"...", Slice(0, b)}, x.index({"...", Slice(0, b)}));
    const double err = (x_hat - kept).abs().max().item<double>();
    CHECK(err < 0.05);  // E, D start near zero: the first b coordinates pass, the rest are ~0
    auto tokens = torch::randint(m.vocab, {2, 8}, torch::kInt64);
    auto logits = stages[1]->forward(stages[0]->forward(tokens));
    CHECK(logits.sizes() == torch::IntArrayRef({2, 8, m.vocab}));
  }
}

TEST_CASE("resbm: a pipeline step's gradients equal those of the same stages in one process", "[torch]") {
  const ModelConfig m = SmallModel();
  torch::manual_seed(11);
  auto x = torch::randint(m.vocab, {8, 12}, torch::kInt64);
  auto y = torch::randint(m.vocab, {8, 12}, torch::kInt64);
  for (int ratio : {1, 16}) {
    for (int stages_n : {2, 3}) {
      INFO("ratio " << ratio << ", " << stages_n << " stages");
      auto stages = MakeStages(m, stages_n, ratio, stages_n == 2 ? std::vector<int>{1, 3} : std::vector<int>{2, 1, 1});
      // The reference: the whole batch through the composed stages, one graph.
      ZeroGrads(stages);
      torch::Tensor h = x;
      for (auto& s : stages) h = s->forward(h);
      auto ref_loss = CrossEntropy(h, y);
      ref_loss.backward();
      const auto ref = Grads(stages);
      ZeroGrads(stages);
      const double loss = PipelineStep(stages, x, y, /*micro=*/4, WireDtype::kFp32);
      const auto got = Grads(stages);
      CHECK(loss == Approx(ref_loss.item<double>()).epsilon(1e-5));
      REQUIRE(got.size() == ref.size());
      for (size_t i = 0; i < got.size(); ++i) {
        INFO("parameter " << i);
        CHECK(torch::allclose(got[i], ref[i], /*rtol=*/1e-4, /*atol=*/1e-6));
      }
    }
  }
}

TEST_CASE("resbm: bf16 on the wire keeps the step close to fp32", "[torch]") {
  const ModelConfig m = SmallModel();
  torch::manual_seed(12);
  auto x = torch::randint(m.vocab, {8, 12}, torch::kInt64);
  auto y = torch::randint(m.vocab, {8, 12}, torch::kInt64);
  auto stages = MakeStages(m, 2, 8, {2, 2});
  ZeroGrads(stages);
  const double fp32 = PipelineStep(stages, x, y, 2, WireDtype::kFp32);
  const auto g32 = Grads(stages);
  ZeroGrads(stages);
  const double bf16 = PipelineStep(stages, x, y, 2, WireDtype::kBf16);
  const auto g16 = Grads(stages);
  CHECK(bf16 == Approx(fp32).epsilon(1e-2));
  double num = 0, den = 0;
  for (size_t i = 0; i < g32.size(); ++i) {
    num += (g16[i] - g32[i]).pow(2).sum().item<double>();
    den += g32[i].pow(2).sum().item<double>();
  }
  CHECK(std::sqrt(num / den) < 0.05);  // relative gradient error of bf16 boundaries
  // Bytes per micro-batch per boundary: b values per token in the wire dtype.
  CHECK(ToWire(torch::zeros({4, 12, 8}), WireDtype::kBf16).element_size() == 2);
  CHECK(ToWire(torch::zeros({4, 12, 8}), WireDtype::kFp16).element_size() == 2);
}

}  // namespace
}  // namespace lowband
