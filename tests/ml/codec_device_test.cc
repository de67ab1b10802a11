// Device encoder: selection against a brute-force per-chunk top-k, the 2-bit
// quantiser against its definition, error-feedback mass conservation, edge
// shapes, the payload decoding bit-exactly to what the encoder says it sent,
// the CPU kernel against the torch::topk path, and (when a GPU is present)
// CUDA against CPU.
#include "ml/codec_device.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>
#include "tests/fakes/layouts.h"
#include "tests/fakes/skip.h"

namespace lowband {
namespace {

using testing::MakeLayout;
using testing::Shape;

// Every shape the chunk plan distinguishes: full tiles with right, bottom and
// corner edges, a short matrix (no full tile row), a 1-D tensor one past a
// chunk, a short 1-D tensor, a scalar, a one-element matrix and an empty one.
ParamLayout EdgeLayout() {
  return MakeLayout({{"emb", {130, 70}},
                     {"w", {128, 192}},
                     {"short", {3, 100}},
                     {"vec", {4097}},
                     {"bias", {100}},
                     {"gain", {}},
                     {"one", {1, 1}},
                     {"none", {0, 5}}});
}

CodecConfig Config(CodecKind kind, int topk, double beta) {
  CodecConfig c;
  c.kind = kind;
  c.topk = topk;
  c.error_feedback = beta;
  return c;
}

std::unique_ptr<DeviceEncoder> MakeEncoder(const ParamLayout& layout, const CodecConfig& config,
                                           torch::Device device = torch::kCPU, bool cpu_kernel = true) {
  DeviceEncoderOptions options;
  options.cpu_select_kernel = cpu_kernel;  // false: the torch-op path on either device
  options.cuda_kernels = cpu_kernel;
  auto enc = DeviceEncoder::Create(layout, config, device, options);
  INFO(enc.status().ToString());
  REQUIRE(enc.ok());
  return std::move(enc).value();
}

// Random signs, magnitudes a permutation of 1..n (scaled): no ties in |x|
// inside a tensor, so the top-k of every chunk is unique.
std::vector<torch::Tensor> DistinctDeltas(const ParamLayout& layout, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> out;
  for (const TensorSpec& spec : layout.tensors) {
    const int64_t n = spec.numel();
    torch::Tensor mag = (torch::randperm(n, torch::kInt64).to(torch::kFloat32) + 1) * (1.0f / 1024);
    torch::Tensor sign = torch::randint(0, 2, {n}, torch::kInt64).to(torch::kFloat32) * 2 - 1;
    out.push_back((mag * sign).view(spec.shape));
  }
  return out;
}

std::vector<torch::Tensor> RandnDeltas(const ParamLayout& layout, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> out;
  for (const TensorSpec& spec : layout.tensors) out.push_back(torch::randn(spec.shape) * 0.01);
  return out;
}

std::vector<torch::Tensor> To(const std::vector<torch::Tensor>& ts, torch::Device device) {
  std::vector<torch::Tensor> out;
  for (const auto& t : ts) out.push_back(t.to(device));
  return out;
}

// Concatenation in layout order, on the host.
std::vector<float> Flat(const std::vector<torch::Tensor>& ts) {
  std::vector<float> out;
  for (const auto& t : ts) {
    torch::Tensor c = t.to(torch::kCPU).contiguous().to(torch::kFloat32);
    out.insert(out.end(), c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  }
  return out;
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

Update Decode(const DeviceEncoder& enc, const ParamLayout& layout, const Encoded& e) {
  auto u = ParseUpdate(layout, enc.plan(), e.header, e.bulk);
  INFO(u.status().ToString());
  REQUIRE(u.ok());
  return std::move(u).value();
}

// Payload decodes bit-exactly to `sent`.
void CheckSentMatchesPayload(const DeviceEncoder& enc, const ParamLayout& layout, const Encoded& e,
                             const std::vector<torch::Tensor>& sent) {
  REQUIRE(sent.size() == layout.tensors.size());
  for (size_t t = 0; t < sent.size(); ++t) CHECK(sent[t].sizes().vec() == layout.tensors[t].shape);
  const std::vector<float> dense = Densify(enc.plan(), Decode(enc, layout, e));
  const std::vector<float> s = Flat(sent);
  REQUIRE(dense.size() == s.size());
  size_t mismatches = 0;
  for (size_t i = 0; i < s.size(); ++i) mismatches += Bits(dense[i]) != Bits(s[i]);
  CHECK(mismatches == 0);
}

// Brute force: per chunk, the k largest |x| (ties to the lower index), ascending.
std::vector<uint16_t> TopKIndices(const LayoutPlan& plan, const std::vector<float>& x, size_t t, size_t c) {
  const Chunk& ch = plan.chunks[c];
  std::vector<int64_t> order(ch.numel());
  for (int64_t l = 0; l < ch.numel(); ++l) order[l] = l;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return std::fabs(x[plan.FlatIndex(t, c, a)]) > std::fabs(x[plan.FlatIndex(t, c, b)]);
  });
  std::vector<uint16_t> keep(order.begin(), order.begin() + ch.k);
  std::sort(keep.begin(), keep.end());
  return keep;
}

// The kept positions of every chunk are exactly the brute-force top-k of x
// (exact == true), or at least a valid top-k: no dropped |x| above a kept one.
void CheckSelection(const LayoutPlan& plan, const Update& u, const std::vector<float>& x, bool exact) {
  REQUIRE_FALSE(u.dense);
  REQUIRE(u.begin.size() == plan.chunks.size() + 1);
  size_t bad = 0;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      std::vector<uint16_t> got(u.index.begin() + u.begin[c], u.index.begin() + u.begin[c + 1]);
      REQUIRE(static_cast<int64_t>(got.size()) == plan.chunks[c].k);
      if (exact) {
        bad += got != TopKIndices(plan, x, t, c);
      } else {
        float min_kept = INFINITY, max_dropped = 0;
        std::vector<bool> kept(plan.chunks[c].numel(), false);
        for (uint16_t l : got) kept[l] = true;
        for (int64_t l = 0; l < plan.chunks[c].numel(); ++l) {
          const float a = std::fabs(x[plan.FlatIndex(t, c, l)]);
          if (kept[l])
            min_kept = std::min(min_kept, a);
          else
            max_dropped = std::max(max_dropped, a);
        }
        bad += max_dropped > min_kept;
      }
    }
  }
  CHECK(bad == 0);
}

// The quantiser's definition, on the host, for the kept values of each
// tensor (x before the encode, u the decoded update). `slack`: relative
// tolerance for x being a few ulps off the device's values (0: x is exact).
void CheckQuantiser(const LayoutPlan& plan, const Update& u, const std::vector<float>& x, float slack = 0) {
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorPlan& tp = plan.tensors[t];
    std::vector<float> v, dec;
    for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
      for (uint32_t i = u.begin[c]; i < u.begin[c + 1]; ++i) {
        v.push_back(x[plan.FlatIndex(t, c, u.index[i])]);
        dec.push_back(u.value[i]);
      }
    }
    if (v.empty()) continue;
    INFO("tensor " << t);
    // Bins of equal decoded value: each decoded value is inside its bin's range.
    std::map<uint32_t, std::pair<float, float>> range;  // bits -> (min, max)
    for (size_t i = 0; i < v.size(); ++i) {
      auto it = range.emplace(Bits(dec[i]), std::make_pair(v[i], v[i])).first;
      it->second.first = std::min(it->second.first, v[i]);
      it->second.second = std::max(it->second.second, v[i]);
    }
    CHECK(range.size() <= 4);
    size_t outside = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      const auto [lo, hi] = range[Bits(dec[i])];
      const float tol = slack * (std::fabs(lo) + std::fabs(hi));
      outside += !(lo - tol <= dec[i] && dec[i] <= hi + tol && std::fabs(v[i] - dec[i]) <= hi - lo + tol);
    }
    CHECK(outside == 0);
    // shift, scale, codes and bin means as docs/design.md 3.2 / codec_device.h define them.
    double sum = 0;
    for (float a : v) sum += a;
    const float shift = static_cast<float>(sum / v.size());
    double dev = 0;
    for (float a : v) dev += std::fabs(a - shift);
    const float scale = static_cast<float>(dev / v.size());
    const float thr[3] = {shift - scale, shift, shift + scale};
    std::vector<int> code(v.size());
    double bin_sum[4] = {0, 0, 0, 0};
    int bin_count[4] = {0, 0, 0, 0};
    bool near_threshold = false;
    for (size_t i = 0; i < v.size(); ++i) {
      code[i] = (v[i] >= thr[0]) + (v[i] >= thr[1]) + (v[i] >= thr[2]);
      for (float th : thr) near_threshold |= std::fabs(v[i] - th) <= 1e-6f * (std::fabs(th) + scale);
      bin_sum[code[i]] += v[i];
      ++bin_count[code[i]];
    }
    if (near_threshold) continue;  // an ulp of rounding in shift could move that value; no exact claim
    for (size_t i = 0; i < v.size(); ++i) {
      const float want = static_cast<float>(bin_sum[code[i]] / bin_count[code[i]]);
      CHECK(dec[i] == Approx(want).epsilon(1e-6 + slack).margin(1e-30));
    }
  }
}

// e_new + sent == beta * e_old + delta, element by element, to a few ulps of
// the operands (`mag`: |beta * e_old| + |delta|; the device may fuse the
// multiply-add, the host does not).
void CheckConservation(const std::vector<float>& expected, const std::vector<float>& mag,
                       const std::vector<float>& e_new, const std::vector<float>& sent) {
  REQUIRE(expected.size() == e_new.size());
  REQUIRE(expected.size() == sent.size());
  size_t bad = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const float got = e_new[i] + sent[i];
    const float tol = 4e-7f * (mag[i] + std::fabs(sent[i])) + 1e-30f;
    bad += !(std::fabs(got - expected[i]) <= tol);
  }
  CHECK(bad == 0);
}

// Several rounds of encode: selection, quantiser, conservation and payload vs sent.
void RunRounds(const ParamLayout& layout, CodecKind kind, int topk, double beta, torch::Device device,
               bool cpu_kernel = true) {
  INFO("codec " << CodecName(kind) << " topk " << topk << " beta " << beta << " device " << device.str()
                << " cpu_kernel " << cpu_kernel);
  auto enc = MakeEncoder(layout, Config(kind, topk, beta), device, cpu_kernel);
  const bool keeps_error = kind != CodecKind::kDenseFp32 && beta > 0;
  CHECK(enc->error_buffers().size() == (keeps_error ? layout.tensors.size() : 0u));
  std::vector<float> e_old(layout.numel(), 0.0f);
  for (int round = 0; round < 4; ++round) {
    INFO("round " << round);
    auto deltas = To(round == 0 ? DistinctDeltas(layout, 11) : RandnDeltas(layout, 100 + round), device);
    const std::vector<float> d = Flat(deltas);
    std::vector<float> x(d.size()), mag(d.size());
    for (size_t i = 0; i < d.size(); ++i) {
      const float carried = keeps_error ? static_cast<float>(beta) * e_old[i] : 0.0f;
      x[i] = carried + d[i];
      mag[i] = std::fabs(carried) + std::fabs(d[i]);
    }
    std::vector<torch::Tensor> sent;
    auto e = enc->Encode(deltas, &sent);
    INFO(e.status().ToString());
    REQUIRE(e.ok());
    CHECK(Flat(deltas) == d);  // inputs untouched
    CheckSentMatchesPayload(*enc, layout, *e, sent);
    const std::vector<float> s = Flat(sent);
    if (kind == CodecKind::kSparseLoCo) {
      const Update u = Decode(*enc, layout, *e);
      CheckSelection(enc->plan(), u, x, /*exact=*/round == 0);
      CheckQuantiser(enc->plan(), u, x, round == 0 ? 0.0f : 1e-6f);
    }
    if (keeps_error) {
      const std::vector<float> e_new = Flat(enc->error_buffers());
      CheckConservation(x, mag, e_new, s);
      e_old = e_new;
    } else {
      if (kind == CodecKind::kDenseFp32) CHECK(s == x);
      // No memory: a second encode of the same input sends the same bytes.
      auto again = enc->Encode(deltas);
      REQUIRE(again.ok());
      CHECK(again->bulk == e->bulk);
    }
  }
}

}  // namespace

TEST_CASE("sparseloco keeps each chunk's top-k and quantises to bin means", "[unit][codec_device]") {
  const ParamLayout layout = EdgeLayout();
  for (int topk : {64, 63, 1, 200}) {
    for (double beta : {0.95, 0.0}) RunRounds(layout, CodecKind::kSparseLoCo, topk, beta, torch::kCPU);
  }
}

TEST_CASE("sparseloco torch::topk path matches the CPU kernel", "[unit][codec_device]") {
  const ParamLayout layout = EdgeLayout();
  for (int topk : {64, 63, 4096}) RunRounds(layout, CodecKind::kSparseLoCo, topk, 0.9, torch::kCPU, false);
  // Same payload and residual from the same e. Reset each round: the kernel
  // does e = delta + beta * e in plain fp32, torch's add may fuse it (FMA),
  // so carried buffers can differ in the last bit.
  auto a = MakeEncoder(layout, Config(CodecKind::kSparseLoCo, 63, 0.95), torch::kCPU, true);
  auto b = MakeEncoder(layout, Config(CodecKind::kSparseLoCo, 63, 0.95), torch::kCPU, false);
  for (int round = 0; round < 3; ++round) {
    a->Reset();
    b->Reset();
    auto deltas = DistinctDeltas(layout, 50 + round);
    auto ea = a->Encode(deltas);
    auto eb = b->Encode(deltas);
    REQUIRE(ea.ok());
    REQUIRE(eb.ok());
    CHECK(ea->bulk == eb->bulk);
    CHECK(Flat(a->error_buffers()) == Flat(b->error_buffers()));
  }
}

TEST_CASE("sparseloco CPU encode does not depend on the thread count", "[unit][codec_device]") {
  // Big enough that both the selection (chunks) and the quantiser (kept
  // values) are split across threads.
  const ParamLayout layout = MakeLayout({{"w", {512, 1024}}, {"v", {20 << 20}}, {"b", {77}}});
  const std::vector<torch::Tensor> deltas[2] = {RandnDeltas(layout, 30), RandnDeltas(layout, 31)};
  const int saved = torch::get_num_threads();
  std::vector<Bytes> bulks;
  for (int threads : {1, 2, 3}) {
    torch::set_num_threads(threads);
    auto enc = MakeEncoder(layout, Config(CodecKind::kSparseLoCo, 64, 0.95));
    Bytes last;
    for (int round = 0; round < 2; ++round) {
      auto e = enc->Encode(deltas[round]);
      REQUIRE(e.ok());
      last = e->bulk;
    }
    bulks.push_back(last);
  }
  torch::set_num_threads(saved);
  CHECK(bulks[1] == bulks[0]);
  CHECK(bulks[2] == bulks[0]);
}

TEST_CASE("error feedback conserves mass for every codec and beta", "[unit][codec_device]") {
  const ParamLayout layout = EdgeLayout();
  for (CodecKind kind : {CodecKind::kSparseLoCo, CodecKind::kInt8, CodecKind::kDenseBf16, CodecKind::kDenseFp32}) {
    for (double beta : {0.0, 0.5, 0.95, 1.0}) RunRounds(layout, kind, 64, beta, torch::kCPU);
  }
}

TEST_CASE("edge chunks: full chunk at topk 4096, 1-D tails, scalars", "[unit][codec_device]") {
  SECTION("topk 4096 keeps every element") {
    const ParamLayout layout = MakeLayout({{"tile", {64, 64}}, {"vec", {4096}}, {"odd", {65, 3}}});
    auto enc = MakeEncoder(layout, Config(CodecKind::kSparseLoCo, 4096, 0.95));
    auto deltas = DistinctDeltas(layout, 3);
    auto e = enc->Encode(deltas);
    REQUIRE(e.ok());
    const Update u = Decode(*enc, layout, *e);
    CHECK(u.nnz() == static_cast<size_t>(layout.numel()));
    CheckSelection(enc->plan(), u, Flat(deltas), true);
    CheckQuantiser(enc->plan(), u, Flat(deltas));
  }
  SECTION("odd topk 63 on 1-D, [130, 70], [3, 100]") {
    const ParamLayout layout = MakeLayout({{"a", {4097}}, {"b", {130, 70}}, {"c", {3, 100}}, {"s", {}}});
    RunRounds(layout, CodecKind::kSparseLoCo, 63, 0.95, torch::kCPU);
    RunRounds(layout, CodecKind::kSparseLoCo, 63, 0.95, torch::kCPU, false);
    RunRounds(layout, CodecKind::kInt8, 63, 0.95, torch::kCPU);
  }
  SECTION("only scalars and one-element tensors") {
    const ParamLayout layout = MakeLayout({{"s", {}}, {"t", {1}}, {"u", {1, 1}}});
    for (CodecKind kind : {CodecKind::kSparseLoCo, CodecKind::kInt8, CodecKind::kDenseBf16}) {
      RunRounds(layout, kind, 64, 0.95, torch::kCPU);
    }
  }
  SECTION("equal values in a chunk (ties, zero scale, zero chunks)") {
    const ParamLayout layout = MakeLayout({{"w", {64, 128}}, {"z", {5000}}});
    for (CodecKind kind : {CodecKind::kSparseLoCo, CodecKind::kInt8, CodecKind::kDenseBf16}) {
      for (bool kernel : {true, false}) {
        auto enc = MakeEncoder(layout, Config(kind, 64, 0.95), torch::kCPU, kernel);
        std::vector<torch::Tensor> deltas = {torch::full({64, 128}, 0.25f), torch::zeros({5000})};
        std::vector<torch::Tensor> sent;
        auto e = enc->Encode(deltas, &sent);
        INFO(e.status().ToString());
        REQUIRE(e.ok());
        CheckSentMatchesPayload(*enc, layout, *e, sent);
        const std::vector<float> x = Flat(deltas);
        std::vector<float> mag(x.size());
        for (size_t i = 0; i < x.size(); ++i) mag[i] = std::fabs(x[i]);
        CheckConservation(x, mag, Flat(enc->error_buffers()), Flat(sent));
        if (kind == CodecKind::kSparseLoCo) CheckSelection(enc->plan(), Decode(*enc, layout, *e), Flat(deltas), false);
      }
    }
  }
}

TEST_CASE("encoder rejects bad input and recovers from non-finite deltas", "[unit][codec_device]") {
  const ParamLayout layout = MakeLayout({{"w", {64, 64}}, {"b", {10}}});
  CHECK(DeviceEncoder::Create(layout, Config(CodecKind::kSparseFp32, 64, 0.9), torch::kCPU).status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(DeviceEncoder::Create(layout, Config(CodecKind::kSparseLoCo, 0, 0.9), torch::kCPU).status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(DeviceEncoder::Create(layout, Config(CodecKind::kSparseLoCo, 64, -1), torch::kCPU).status().code() ==
        StatusCode::kInvalidArgument);
  for (CodecKind kind : {CodecKind::kSparseLoCo, CodecKind::kInt8, CodecKind::kDenseBf16, CodecKind::kDenseFp32}) {
    INFO(CodecName(kind));
    auto enc = MakeEncoder(layout, Config(kind, 64, 0.9));
    CHECK(enc->Encode({torch::zeros({64, 64})}).status().code() == StatusCode::kInvalidArgument);
    CHECK(enc->Encode({torch::zeros({64, 64}), torch::zeros({11})}).status().code() == StatusCode::kInvalidArgument);
    CHECK(enc->Encode({torch::zeros({64, 64}), torch::zeros({10}, torch::kFloat64)}).status().code() ==
          StatusCode::kInvalidArgument);
    CHECK(enc->Encode({torch::zeros({64, 64}), torch::Tensor()}).status().code() == StatusCode::kInvalidArgument);
    auto good = RandnDeltas(layout, 1);
    REQUIRE(enc->Encode(good).ok());
    auto bad = RandnDeltas(layout, 2);
    bad[0][3][5].fill_(std::numeric_limits<float>::quiet_NaN());
    auto e = enc->Encode(bad);
    CHECK(e.status().code() == StatusCode::kInvalidArgument);
    for (const auto& b : enc->error_buffers()) CHECK(b.abs().sum().item<float>() == 0.0f);
    bad[0][3][5].fill_(std::numeric_limits<float>::infinity());
    CHECK(enc->Encode(bad).status().code() == StatusCode::kInvalidArgument);
    REQUIRE(enc->Encode(good).ok());
  }
}

TEST_CASE("Reset zeroes the error buffers, and encodes are deterministic", "[unit][codec_device]") {
  const ParamLayout layout = EdgeLayout();
  auto a = MakeEncoder(layout, Config(CodecKind::kSparseLoCo, 64, 0.95));
  auto b = MakeEncoder(layout, Config(CodecKind::kSparseLoCo, 64, 0.95));
  auto d1 = RandnDeltas(layout, 1), d2 = RandnDeltas(layout, 2);
  REQUIRE(a->Encode(d1).ok());
  a->Reset();
  for (const auto& t : a->error_buffers()) CHECK(t.abs().sum().item<float>() == 0.0f);
  auto ea = a->Encode(d2);
  auto eb = b->Encode(d2);
  REQUIRE(ea.ok());
  REQUIRE(eb.ok());
  CHECK(ea->bulk == eb->bulk);
  CHECK(ea->header.checksum == eb->header.checksum);
}

TEST_CASE("ApplyUpdateOnDevice is bit-identical to ApplyUpdate", "[unit][codec_device]") {
  const ParamLayout layout = EdgeLayout();
  for (CodecKind kind : {CodecKind::kSparseLoCo, CodecKind::kInt8}) {
    auto enc = MakeEncoder(layout, Config(kind, 63, 0.95));
    auto e = enc->Encode(RandnDeltas(layout, 9));
    REQUIRE(e.ok());
    const Update u = Decode(*enc, layout, *e);
    std::vector<float> theta = Flat(RandnDeltas(layout, 10));
    torch::Tensor dev = torch::from_blob(theta.data(), {static_cast<int64_t>(theta.size())}, torch::kFloat32).clone();
    REQUIRE(ApplyUpdate(enc->plan(), u, &theta).ok());
    REQUIRE(ApplyUpdateOnDevice(enc->plan(), u, dev).ok());
    const std::vector<float> got = Flat({dev});
    size_t mismatches = 0;
    for (size_t i = 0; i < theta.size(); ++i) mismatches += Bits(got[i]) != Bits(theta[i]);
    CHECK(mismatches == 0);
  }
  torch::Tensor wrong = torch::zeros({5});
  Update u;
  CHECK(ApplyUpdateOnDevice(PlanLayout(layout, 64), u, wrong).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("CUDA encoder matches the CPU one", "[unit][codec_device][cuda]") {
  if (!torch::cuda::is_available()) LOWBAND_SKIP("no CUDA device");
  const torch::Device cuda(torch::kCUDA, 0);
  const ParamLayout layout = EdgeLayout();
  for (int topk : {64, 63, 4096}) {
    for (double beta : {0.95, 0.0}) {
      RunRounds(layout, CodecKind::kSparseLoCo, topk, beta, cuda);         // fused kernels (when built)
      RunRounds(layout, CodecKind::kSparseLoCo, topk, beta, cuda, false);  // torch ops
    }
  }
  for (CodecKind kind : {CodecKind::kInt8, CodecKind::kDenseBf16, CodecKind::kDenseFp32}) {
    for (double beta : {0.0, 0.95}) {
      RunRounds(layout, kind, 64, beta, cuda);                                        // kernels (when built)
      if (kind != CodecKind::kDenseFp32) RunRounds(layout, kind, 64, beta, cuda, false);  // torch ops
    }
  }
  // Same input, same kept indices; int8 and bf16 payloads are bit-identical.
  // Reset each round: the error-feedback multiply-add may be fused on one
  // device and not the other, which moves e by an ulp.
  const ParamLayout big = MakeLayout({{"w", {1000, 700}}, {"v", {50000}}, {"b", {300}}});
  for (const auto& [kind, kernel] : std::vector<std::pair<CodecKind, bool>>{{CodecKind::kSparseLoCo, true},
                                                                             {CodecKind::kSparseLoCo, false},
                                                                             {CodecKind::kInt8, true},
                                                                             {CodecKind::kInt8, false},
                                                                             {CodecKind::kDenseBf16, true},
                                                                             {CodecKind::kDenseBf16, false}}) {
    INFO(CodecName(kind) << (kernel ? "" : " (torch ops)"));
    auto c = MakeEncoder(big, Config(kind, 64, 0.95), torch::kCPU);
    auto g = MakeEncoder(big, Config(kind, 64, 0.95), cuda, kernel);
    for (int round = 0; round < 3; ++round) {
      c->Reset();
      g->Reset();
      auto deltas = DistinctDeltas(big, 70 + round);
      auto ec = c->Encode(deltas);
      auto eg = g->Encode(To(deltas, cuda));
      REQUIRE(ec.ok());
      REQUIRE(eg.ok());
      const Update uc = Decode(*c, big, *ec), ug = Decode(*g, big, *eg);
      if (kind == CodecKind::kSparseLoCo) {
        CHECK(uc.begin == ug.begin);
        CHECK(uc.index == ug.index);
        // Tables may differ in the last bit (fp64 sums in another order).
        REQUIRE(uc.value.size() == ug.value.size());
        for (size_t i = 0; i < uc.value.size(); i += 97) CHECK(uc.value[i] == Approx(ug.value[i]).epsilon(1e-6));
      } else {
        CHECK(ec->bulk == eg->bulk);
      }
    }
  }
  // The device path is deterministic: the same deltas give the same bytes.
  for (CodecKind kind : {CodecKind::kSparseLoCo, CodecKind::kInt8, CodecKind::kDenseBf16}) {
    INFO(CodecName(kind));
    auto g1 = MakeEncoder(big, Config(kind, 64, 0.95), cuda);
    auto g2 = MakeEncoder(big, Config(kind, 64, 0.95), cuda);
    for (int round = 0; round < 2; ++round) {
      auto deltas = To(RandnDeltas(big, 90 + round), cuda);
      auto e1 = g1->Encode(deltas);
      auto e2 = g2->Encode(deltas);
      REQUIRE(e1.ok());
      REQUIRE(e2.ok());
      CHECK(e1->bulk == e2->bulk);
      CHECK(e1->header.checksum == e2->header.checksum);
    }
  }
  // A non-finite value is reported with its tensor, resets the error
  // buffers, and the next finite encode goes through (the kernels' flag).
  for (CodecKind kind : {CodecKind::kSparseLoCo, CodecKind::kInt8, CodecKind::kDenseBf16}) {
    for (bool kernel : {true, false}) {
      INFO(CodecName(kind) << (kernel ? "" : " (torch ops)"));
      auto g = MakeEncoder(big, Config(kind, 64, 0.95), cuda, kernel);
      REQUIRE(g->Encode(To(RandnDeltas(big, 30), cuda)).ok());
      for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        auto deltas = RandnDeltas(big, 31);
        deltas[1][4097].fill_(bad);
        auto e = g->Encode(To(deltas, cuda));
        CHECK(e.status().code() == StatusCode::kInvalidArgument);
        CHECK(e.status().ToString().find("tensor 1 (v)") != std::string::npos);
        for (const auto& b : g->error_buffers()) CHECK(b.abs().sum().item<float>() == 0.0f);
      }
      REQUIRE(g->Encode(To(RandnDeltas(big, 32), cuda)).ok());
    }
  }
  // Applying on the GPU is bit-identical to the host.
  auto enc = MakeEncoder(big, Config(CodecKind::kSparseLoCo, 64, 0.95), cuda);
  auto e = enc->Encode(To(RandnDeltas(big, 5), cuda));
  REQUIRE(e.ok());
  const Update u = Decode(*enc, big, *e);
  std::vector<float> theta = Flat(RandnDeltas(big, 6));
  torch::Tensor dev = torch::from_blob(theta.data(), {static_cast<int64_t>(theta.size())}, torch::kFloat32).to(cuda);
  REQUIRE(ApplyUpdate(enc->plan(), u, &theta).ok());
  REQUIRE(ApplyUpdateOnDevice(enc->plan(), u, dev).ok());
  CHECK(Flat({dev}) == theta);
}

}  // namespace lowband
