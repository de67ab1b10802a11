#include "ml/model.h"

#include <catch2/catch.hpp>

#include "ml/model_init.h"
#include "tests/fakes/tiny_model.h"

namespace lowband {
namespace {

ModelConfig TinyConfig() { return testing::TinyModel(2, 32, 4, 16, 256); }

torch::Tensor RandomTokens(int64_t b, int64_t t, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(0, 256, {b, t}, torch::kInt64);
}

}  // namespace

TEST_CASE("Gpt forward returns [B, T, vocab] logits and a scalar loss", "[unit]") {
  Lm model = MakeLm(TinyConfig(), 1);
  auto tokens = RandomTokens(3, 10, 7);
  auto logits = model->forward(tokens);
  CHECK(logits.sizes().vec() == std::vector<int64_t>{3, 10, 256});
  auto full = model->forward(RandomTokens(2, 16, 8));
  CHECK(full.sizes().vec() == std::vector<int64_t>{2, 16, 256});
  auto loss = model->Loss(tokens, RandomTokens(3, 10, 9));
  CHECK(loss.dim() == 0);
  // Near log(256) = 5.55 at init: small init gives near-uniform predictions.
  CHECK(loss.item<double>() == Approx(5.55).margin(0.3));
  CHECK_THROWS(model->forward(RandomTokens(1, 17, 10)));  // longer than context
}

TEST_CASE("Gpt attention is causal: future tokens do not change past logits", "[unit]") {
  Lm model = MakeLm(TinyConfig(), 2);
  model->eval();
  torch::NoGradGuard no_grad;
  auto a = RandomTokens(2, 16, 11);
  for (int64_t t : {0, 5, 14}) {
    auto b = a.clone();
    using torch::indexing::Slice;
    b.index_put_({Slice(), Slice(t + 1, torch::indexing::None)},
                 (b.index({Slice(), Slice(t + 1, torch::indexing::None)}) + 17) % 256);
    auto la = model->forward(a).index({Slice(), Slice(0, t + 1)});
    auto lb = model->forward(b).index({Slice(), Slice(0, t + 1)});
    CHECK((la - lb).abs().max().item<double>() <= 1e-6);
    // ...while the changed positions do change.
    auto ra = model->forward(a).index({Slice(), t + 1});
    auto rb = model->forward(b).index({Slice(), t + 1});
    CHECK((ra - rb).abs().max().item<double>() > 1e-4);
  }
}

TEST_CASE("Gpt init is deterministic for a seed", "[unit]") {
  auto p1 = InitialParameters(TinyConfig(), 42);
  auto p2 = InitialParameters(TinyConfig(), 42);
  auto p3 = InitialParameters(TinyConfig(), 43);
  REQUIRE(p1.ok());
  REQUIRE(p2.ok());
  REQUIRE(p3.ok());
  CHECK(p1->Digest() == p2->Digest());
  CHECK(p1->Digest() != p3->Digest());
  CHECK(p1->layout == p3->layout);
  CHECK(AllFinite(p1->values));
}

TEST_CASE("Gpt init follows GPT-2: zero biases, unit LayerNorm, small weights", "[unit]") {
  const ModelConfig config = TinyConfig();
  Lm model = MakeLm(config, 3);
  for (const auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    const auto& p = item.value();
    INFO(name);
    if (name.find("ln_") != std::string::npos && name.find("weight") != std::string::npos) {
      CHECK(p.eq(1).all().item<bool>());
    } else if (p.dim() == 1) {
      CHECK(p.eq(0).all().item<bool>());
    } else {
      const double std = p.std().item<double>();
      const bool residual = name.find("attn.proj.weight") != std::string::npos ||
                            name.find("mlp_proj.weight") != std::string::npos;
      const double want = residual ? 0.02 / std::sqrt(2.0 * config.layers) : 0.02;
      CHECK(std == Approx(want).epsilon(0.15));
    }
  }
}

TEST_CASE("Gpt output head is tied to the token embedding", "[unit]") {
  const ModelConfig config = TinyConfig();
  Lm model = MakeLm(config, 4);
  ParamLayout layout = LayoutOf(model);
  int vocab_tensors = 0;
  for (const auto& t : layout.tensors) {
    if (!t.shape.empty() && t.shape[0] == config.vocab) ++vocab_tensors;
  }
  CHECK(vocab_tensors == 1);
  CHECK(layout.tensors.front().name == "tok_emb.weight");
  const int64_t d = config.d_model;
  const int64_t per_block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d);
  CHECK(layout.numel() == config.vocab * d + config.context * d + config.layers * per_block + 2 * d);

  // Changing the embedding moves the logits through the head as well.
  torch::NoGradGuard no_grad;
  auto tokens = RandomTokens(1, 4, 12);
  auto before = model->forward(tokens);
  model->named_parameters()["tok_emb.weight"].index_put_({5}, 1.0);
  auto after = model->forward(tokens);
  CHECK((after.index({0, 0, 5}) - before.index({0, 0, 5})).abs().item<double>() > 1e-3);
}

TEST_CASE("ModelLayout matches the layout of a built model", "[unit]") {
  for (ModelConfig config : {TinyConfig(), ModelConfig{}}) {
    auto layout = ModelLayout(config);
    REQUIRE(layout.ok());
    Lm model = MakeLm(config, 5);
    CHECK(*layout == LayoutOf(model));
    CHECK(layout->Digest() == LayoutOf(model).Digest());
  }
  ModelConfig bad = TinyConfig();
  bad.heads = 3;
  CHECK(ModelLayout(bad).status().code() == StatusCode::kInvalidArgument);
  CHECK(InitialParameters(bad, 1).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("Gpt loss falls when trained on one fixed batch", "[unit]") {
  Lm model = MakeLm(TinyConfig(), 6);
  auto data = RandomTokens(4, 17, 13);
  using torch::indexing::Slice;
  auto x = data.index({Slice(), Slice(0, 16)});
  auto y = data.index({Slice(), Slice(1, 17)});
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-2).weight_decay(0.0));
  double first = 0, last = 0;
  for (int step = 0; step < 50; ++step) {
    opt.zero_grad();
    auto loss = model->Loss(x, y);
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  INFO("first " << first << " last " << last);
  CHECK(last < 0.5 * first);
}

TEST_CASE("ExportParams / ImportParams round trip", "[unit]") {
  Lm a = MakeLm(TinyConfig(), 7);
  Lm b = MakeLm(TinyConfig(), 8);
  ParamSet pa = ExportParams(a);
  REQUIRE(pa.values.size() == static_cast<size_t>(pa.layout.numel()));
  CHECK(pa.Digest() != ExportParams(b).Digest());
  REQUIRE(ImportParams(b, pa).ok());
  CHECK(ExportParams(b).Digest() == pa.Digest());

  torch::NoGradGuard no_grad;
  auto tokens = RandomTokens(2, 8, 14);
  CHECK(torch::equal(a->forward(tokens), b->forward(tokens)));

  ParamSet wrong = pa;
  wrong.layout.tensors.pop_back();
  CHECK(ImportParams(b, wrong).code() == StatusCode::kInvalidArgument);
  ParamSet short_values = pa;
  short_values.values.pop_back();
  CHECK(ImportParams(b, short_values).code() == StatusCode::kInvalidArgument);
  auto other = InitialParameters(ModelConfig{}, 1);
  REQUIRE(other.ok());
  CHECK(ImportParams(b, *other).code() == StatusCode::kInvalidArgument);
}

}  // namespace lowband
