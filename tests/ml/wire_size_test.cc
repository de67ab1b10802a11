// The measured size of a real SparseLoCo delta upload (the device encoder on
// a GPT's pseudo-gradient, wrapped in a DeltaUpload and encoded to ZeroMQ
// frames) against the formula documented in docs/codecs.md:
//   bytes ~= 1.75 * d * P + 16 * T + header frame (~250 bytes),
// and the ratio to the same upload in dense fp32.
#include <catch2/catch.hpp>
#include <cmath>

#include "ml/codec_device.h"
#include "ml/model_init.h"
#include "protocol/wire.h"

namespace lowband {
namespace {

struct UploadSize {
  uint64_t sparse = 0;  // header frame + bulk frame
  uint64_t dense = 0;
  double formula = 0;
  int64_t params = 0;
};

uint64_t FrameBytes(const Encoded& enc) {
  Message m;
  m.campaign_id = "quickstart";
  m.sender_id = "site-a";
  m.seq = 123456;
  DeltaUpload up;
  up.round = 17;
  up.base_digest = 0x0123456789abcdefull;
  up.train_loss = 2.71828;
  up.tokens = 5 * 16 * 64;
  up.step_time_ms = 91.5;
  up.blob = enc.header;
  m.body = up;
  m.bulk = enc.bulk;
  uint64_t n = 0;
  for (const auto& f : EncodeMessage(m)) n += f.size();
  return n;
}

UploadSize Measure(const ModelConfig& model, int topk) {
  auto layout = ModelLayout(model);
  REQUIRE(layout.ok());
  CodecConfig sparse{CodecKind::kSparseLoCo, topk, 0.95};
  auto enc = DeviceEncoder::Create(*layout, sparse, torch::kCPU);
  REQUIRE(enc.ok());
  torch::manual_seed(7);
  std::vector<torch::Tensor> delta;
  for (const auto& t : layout->tensors) delta.push_back(1e-3 * torch::randn(t.shape));
  auto payload = (*enc)->Encode(delta);
  REQUIRE(payload.ok());

  std::vector<float> zeros(static_cast<size_t>(layout->numel()), 0.0f);
  auto dense = PackDenseFp32(*layout, zeros);
  REQUIRE(dense.ok());

  UploadSize s;
  s.params = layout->numel();
  s.sparse = FrameBytes(*payload);
  s.dense = FrameBytes(*dense);
  const double d = topk / 4096.0;
  s.formula = 1.75 * d * static_cast<double>(s.params) + 16.0 * static_cast<double>(layout->tensors.size()) + 250.0;
  return s;
}

TEST_CASE("a SparseLoCo upload measures within 2% of the documented formula", "[codec][wire_size]") {
  ModelConfig quickstart;  // 4 layers, d_model 128, context 64: the quickstart model
  for (int topk : {64, 32, 128}) {
    const UploadSize s = Measure(quickstart, topk);
    INFO("topk " << topk << ": " << s.sparse << " bytes measured, formula " << s.formula);
    CHECK(std::fabs(static_cast<double>(s.sparse) - s.formula) <= 0.02 * s.formula);
  }
  const UploadSize q = Measure(quickstart, 64);
  const double ratio = static_cast<double>(q.dense) / static_cast<double>(q.sparse);
  INFO("quickstart model: " << q.params << " parameters, dense " << q.dense << " bytes, sparse " << q.sparse
                            << ", ratio " << ratio);
  // 52 tensors of 0.83M parameters: the per-tensor tables and the header
  // frame are ~4% of the payload here.
  CHECK(ratio > 135.0);
}

TEST_CASE("at d = 1/64 a SparseLoCo upload is at least 140x smaller than dense fp32", "[codec][wire_size]") {
  ModelConfig model;
  model.layers = 6;
  model.d_model = 256;
  model.heads = 8;
  model.context = 128;
  const UploadSize s = Measure(model, 64);
  const double ratio = static_cast<double>(s.dense) / static_cast<double>(s.sparse);
  INFO(s.params << " parameters: dense " << s.dense << " bytes, sparse " << s.sparse << ", ratio " << ratio);
  CHECK(s.params > 4'000'000);
  CHECK(ratio >= 140.0);
  CHECK(std::fabs(static_cast<double>(s.sparse) - s.formula) <= 0.02 * s.formula);
}

}  // namespace
}  // namespace lowband
