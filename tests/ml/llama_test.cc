// The Llama-style architecture (model.arch: llama): its layout, causality,
// determinism, and its forward pass against a reference written here with
// plain tensor ops and explicit loops (RMSNorm, rotary positions in Hugging
// Face's half-split convention, grouped-query heads, SwiGLU, untied head).
#include <cmath>

#include <catch2/catch.hpp>

#include "ml/model.h"
#include "ml/model_init.h"
#include "tests/fakes/tiny_model.h"

namespace lowband {
namespace {

ModelConfig TinyLlama(int kv_heads = 2) {
  ModelConfig c = testing::TinyModel(2, 32, 4, 16, 256);
  c.arch = ModelArch::kLlama;
  c.kv_heads = kv_heads;
  c.ffn_hidden = 48;
  c.rope_theta = 500.0;  // small, so that positions 0..15 rotate visibly
  c.norm_eps = 1e-5;
  return c;
}

torch::Tensor Tokens(int64_t b, int64_t t, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(0, 256, {b, t}, torch::kInt64);
}

torch::Tensor P(Lm& model, const std::string& name) { return model->named_parameters()[name].detach(); }

// x @ w^T for a [out, in] weight.
torch::Tensor Lin(const torch::Tensor& x, const torch::Tensor& w) { return torch::matmul(x, w.t()); }

torch::Tensor RefRms(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return x / torch::sqrt(x.pow(2).mean(-1, true) + eps) * w;
}

// Rotates the pairs (i, i + hd/2) of every head by pos * theta^(-2i/hd).
torch::Tensor RefRope(const torch::Tensor& x, double theta) {  // [T, heads, hd]
  auto out = x.clone();
  const int64_t t = x.size(0), heads = x.size(1), hd = x.size(2), half = hd / 2;
  auto a = x.accessor<float, 3>();
  auto o = out.accessor<float, 3>();
  for (int64_t p = 0; p < t; ++p) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(p) * std::pow(theta, -2.0 * static_cast<double>(i) / hd);
        const double x1 = a[p][h][i], x2 = a[p][h][i + half];
        o[p][h][i] = static_cast<float>(x1 * std::cos(angle) - x2 * std::sin(angle));
        o[p][h][i + half] = static_cast<float>(x2 * std::cos(angle) + x1 * std::sin(angle));
      }
    }
  }
  return out;
}

// One sequence's logits [T, vocab], from the parameters by name.
torch::Tensor RefForward(Lm& model, const ModelConfig& c, const torch::Tensor& tokens) {  // tokens [T]
  const int64_t t = tokens.size(0), hd = c.d_model / c.heads, kvh = KvHeads(c), rep = c.heads / kvh;
  auto x = P(model, "tok_emb.weight").index_select(0, tokens);
  for (int l = 0; l < c.layers; ++l) {
    const std::string b = "blocks." + std::to_string(l) + ".";
    auto h = RefRms(x, P(model, b + "attn_norm.weight"), c.norm_eps);
    auto q = RefRope(Lin(h, P(model, b + "attn.q.weight")).view({t, c.heads, hd}), c.rope_theta);
    auto k = RefRope(Lin(h, P(model, b + "attn.k.weight")).view({t, kvh, hd}), c.rope_theta);
    auto v = Lin(h, P(model, b + "attn.v.weight")).view({t, kvh, hd});
    std::vector<torch::Tensor> heads;
    for (int64_t j = 0; j < c.heads; ++j) {
      auto qj = q.select(1, j), kj = k.select(1, j / rep), vj = v.select(1, j / rep);  // [T, hd]
      auto s = torch::matmul(qj, kj.t()) / std::sqrt(static_cast<double>(hd));
      s = s.masked_fill(torch::ones({t, t}, torch::kBool).triu(1), -INFINITY);
      heads.push_back(torch::matmul(torch::softmax(s, -1), vj));
    }
    x = x + Lin(torch::cat(heads, -1), P(model, b + "attn.o.weight"));
    auto m = RefRms(x, P(model, b + "mlp_norm.weight"), c.norm_eps);
    auto gate = Lin(m, P(model, b + "mlp.gate.weight"));
    x = x + Lin(gate * torch::sigmoid(gate) * Lin(m, P(model, b + "mlp.up.weight")), P(model, b + "mlp.down.weight"));
  }
  return Lin(RefRms(x, P(model, "norm.weight"), c.norm_eps), P(model, "head.weight"));
}

}  // namespace

TEST_CASE("llama: the layout has no biases, grouped key/value heads and an untied head", "[unit]") {
  const ModelConfig c = TinyLlama();
  Lm model = MakeLm(c, 1);
  auto layout = ModelLayout(c);
  REQUIRE(layout.ok());
  CHECK(*layout == LayoutOf(model));
  for (const auto& t : layout->tensors) {
    INFO(t.name);
    CHECK(t.name.find("bias") == std::string::npos);
    CHECK(t.name.find("pos_emb") == std::string::npos);
  }
  CHECK(P(model, "blocks.0.attn.k.weight").sizes() == torch::IntArrayRef({2 * 8, 32}));  // kv_heads 2 x head size 8
  CHECK(P(model, "blocks.0.mlp.gate.weight").sizes() == torch::IntArrayRef({48, 32}));
  CHECK(P(model, "head.weight").sizes() == torch::IntArrayRef({256, 32}));
  CHECK_FALSE(torch::equal(P(model, "head.weight"), P(model, "tok_emb.weight")));
  CHECK(P(model, "norm.weight").eq(1).all().item<bool>());
  // The 8/3 d_model default, rounded up to a multiple of 64.
  ModelConfig derived = TinyLlama();
  derived.ffn_hidden = 0;
  derived.d_model = 96;
  CHECK(FfnHidden(derived) == 256);
  CHECK(KvHeads(TinyLlama(0)) == 4);
}

TEST_CASE("llama: the forward pass matches a reference computed by hand", "[unit]") {
  for (int kv_heads : {4, 2, 1}) {
    INFO("kv_heads " << kv_heads);
    const ModelConfig c = TinyLlama(kv_heads);
    Lm model = MakeLm(c, 2);
    torch::NoGradGuard no_grad;
    auto tokens = Tokens(2, 11, 3);
    auto logits = model->forward(tokens);
    REQUIRE(logits.sizes() == torch::IntArrayRef({2, 11, 256}));
    for (int64_t s = 0; s < 2; ++s) {
      auto ref = RefForward(model, c, tokens[s]);
      CHECK((logits[s] - ref).abs().max().item<double>() < 1e-4);
    }
  }
}

TEST_CASE("llama: attention is causal and positions matter", "[unit]") {
  const ModelConfig c = TinyLlama();
  Lm model = MakeLm(c, 3);
  torch::NoGradGuard no_grad;
  auto a = Tokens(1, 12, 4);
  auto b = a.clone();
  b.index_put_({0, 11}, (a.index({0, 11}) + 1) % 256);
  auto la = model->forward(a), lb = model->forward(b);
  using torch::indexing::Slice;
  CHECK(torch::allclose(la.index({0, Slice(0, 11)}), lb.index({0, Slice(0, 11)})));
  CHECK_FALSE(torch::allclose(la.index({0, 11}), lb.index({0, 11})));
  // Without positions causal attention only sees the set of earlier tokens:
  // swapping two of them would leave the last position's logits unchanged.
  // Rotary positions make the order count.
  auto order = torch::tensor({{5, 9, 200, 17}}, torch::kInt64);
  auto swapped = torch::tensor({{9, 5, 200, 17}}, torch::kInt64);
  auto lo = model->forward(order), lw = model->forward(swapped);
  CHECK((lo.index({0, 3}) - lw.index({0, 3})).abs().max().item<double>() > 1e-4);
}

TEST_CASE("llama: init is deterministic for a seed and trains", "[unit]") {
  const ModelConfig c = TinyLlama();
  auto p1 = InitialParameters(c, 9), p2 = InitialParameters(c, 9), p3 = InitialParameters(c, 10);
  REQUIRE(p1.ok());
  REQUIRE(p3.ok());
  CHECK(p1->values == p2->values);
  CHECK(p1->values != p3->values);
  CHECK(p1->layout == *ModelLayout(c));

  Lm model = MakeLm(c, 5);
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(3e-3));
  auto x = Tokens(4, 16, 6);
  auto y = Tokens(4, 16, 7);
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    opt.zero_grad();
    auto loss = model->Loss(x, y);
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  CHECK(last < first * 0.5);
}

TEST_CASE("generation: decoding with the key/value cache gives the full forward's logits", "[unit]") {
  for (ModelConfig c : {TinyLlama(2), testing::TinyModel(2, 32, 4, 16, 256)}) {
    INFO(ModelArchName(c.arch));
    Lm model = MakeLm(c, 11);
    torch::NoGradGuard no_grad;
    auto tokens = Tokens(2, 16, 12);
    auto full = model->forward(tokens);
    KvCache cache;
    using torch::indexing::Slice;
    // A 5-token prompt, then one token at a time up to the context.
    std::vector<torch::Tensor> parts = {model->Forward(tokens.index({Slice(), Slice(0, 5)}), &cache)};
    for (int64_t i = 5; i < 16; ++i) parts.push_back(model->Forward(tokens.index({Slice(), Slice(i, i + 1)}), &cache));
    CHECK(cache.length == 16);
    auto stepped = torch::cat(parts, 1);
    CHECK((stepped - full).abs().max().item<double>() < 1e-4);
    // Past the context: refused.
    CHECK_THROWS(model->Forward(tokens.index({Slice(), Slice(0, 1)}), &cache));
  }
}

TEST_CASE("llama: shapes the model cannot take are refused", "[unit]") {
  ModelConfig c = TinyLlama(3);  // 3 does not divide 4 heads
  CHECK(ModelLayout(c).status().code() == StatusCode::kInvalidArgument);
  CHECK(InitialParameters(c, 1).status().code() == StatusCode::kInvalidArgument);
  c = TinyLlama();
  c.d_model = 36;  // head size 9: odd
  c.heads = 4;
  CHECK(ModelLayout(c).status().code() == StatusCode::kInvalidArgument);
}

}  // namespace lowband
