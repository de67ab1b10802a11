// Time of the coordinator's compressed downlink per round on a GPT layout
// (torch-free): the host SparseLoCo encoder alone (selection, quantisation,
// packing) and DownlinkEncoder::Encode as Aggregation::Close runs it (v = u +
// e, encode, decode, e = v - t) for a sparse u (the union of three sites'
// top-k, as a stateless outer step leaves it) and a dense u (Nesterov), with
// codec.downlink sparseloco and sparse_2bit (budget 1.5: its ranking and the
// bisection for the cap included).
//
//   build/bin/downlink_speed --layers 12 --d-model 768 --threads 1,2,4 --reps 3
//
// The default is GPT-2 small's shape with the byte-level vocabulary (85M
// parameters, configs/gpt2-small.yaml). Each figure is the median of --reps
// runs after one warm-up run.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "base/thread_pool.h"
#include "codec/codec.h"
#include "codec/sparseloco_host.h"
#include "coordinator/downlink.h"

namespace lowband {
namespace {

ParamLayout GptLayout(int layers, int64_t d, int64_t vocab, int64_t context) {
  ParamLayout l;
  auto add = [&](std::string name, std::vector<int64_t> shape) { l.tensors.push_back({std::move(name), shape}); };
  add("tok_emb", {vocab, d});
  add("pos_emb", {context, d});
  for (int i = 0; i < layers; ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    add(p + "ln1.w", {d});
    add(p + "ln1.b", {d});
    add(p + "attn.qkv.w", {3 * d, d});
    add(p + "attn.qkv.b", {3 * d});
    add(p + "attn.proj.w", {d, d});
    add(p + "attn.proj.b", {d});
    add(p + "ln2.w", {d});
    add(p + "ln2.b", {d});
    add(p + "mlp.fc.w", {4 * d, d});
    add(p + "mlp.fc.b", {4 * d});
    add(p + "mlp.proj.w", {d, 4 * d});
    add(p + "mlp.proj.b", {d});
  }
  add("ln_f.w", {d});
  add("ln_f.b", {d});
  return l;
}

// `setup` runs untimed before each run (copying the update Encode consumes).
template <typename Setup, typename Fn>
double MedianSeconds(int reps, Setup setup, Fn fn) {
  setup();
  fn();
  std::vector<double> s;
  for (int i = 0; i < reps; ++i) {
    setup();
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

int Main(int argc, char** argv) {
  CLI::App app{"coordinator downlink encoding time on a GPT layout"};
  int layers = 12, reps = 3, topk = 64;
  int64_t d_model = 768, vocab = 256, context = 256;
  std::string threads_list = "1,2";
  app.add_option("--layers", layers);
  app.add_option("--d-model", d_model);
  app.add_option("--vocab", vocab);
  app.add_option("--context", context);
  app.add_option("--topk", topk);
  app.add_option("--threads", threads_list, "comma-separated pool sizes (1: no pool)");
  app.add_option("--reps", reps);
  CLI11_PARSE(app, argc, argv);

  const ParamLayout layout = GptLayout(layers, d_model, vocab, context);
  const LayoutPlan plan = PlanLayout(layout, topk);
  const size_t n = static_cast<size_t>(plan.numel);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal(0.0f, 1e-3f);
  std::vector<float> dense(n);
  for (float& x : dense) x = normal(rng);
  // A sparse u: the union of three sites' top-k (three disjoint-ish picks).
  Update sparse;
  {
    std::vector<float> shifted(n);
    std::vector<float> sum(n, 0.0f);
    for (int site = 0; site < 3; ++site) {
      for (float& x : shifted) x = normal(rng);
      auto enc = EncodeSparseLoCoHost(layout, plan, shifted, nullptr);
      auto u = ParseUpdate(layout, plan, enc->header, enc->bulk);
      const std::vector<float> d = Densify(plan, *u);
      for (size_t i = 0; i < n; ++i) sum[i] += d[i] / 3;
    }
    // Back to a sparse Update of the nonzeros, chunk by chunk.
    sparse.dense = false;
    sparse.begin.push_back(0);
    for (size_t t = 0; t < plan.tensors.size(); ++t) {
      const TensorPlan& tp = plan.tensors[t];
      for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
        for (int64_t l = 0; l < plan.chunks[c].numel(); ++l) {
          const float x = sum[plan.FlatIndex(t, c, l)];
          if (x != 0.0f) {
            sparse.index.push_back(static_cast<uint16_t>(l));
            sparse.value.push_back(x);
          }
        }
        sparse.begin.push_back(static_cast<uint32_t>(sparse.index.size()));
      }
    }
  }
  Update dense_u;
  dense_u.values = dense;

  std::printf("layout: %zu tensors, %.1fM parameters, topk %d: %lld kept, payload %llu bytes (dense fp32 %llu)\n",
              layout.tensors.size(), n / 1e6, topk, static_cast<long long>(plan.kept),
              static_cast<unsigned long long>(BulkBytes(plan, CodecKind::kSparseLoCo)),
              static_cast<unsigned long long>(BulkBytes(plan, CodecKind::kDenseFp32)));
  std::printf("sparse u: %zu entries (%.2f%%)\n", sparse.nnz(), 100.0 * sparse.nnz() / n);
  std::printf(
      "| threads | encode (select+pack) s | Encode, sparse u s | Encode, dense u s | sparse_2bit, sparse u s | "
      "sparse_2bit, dense u s |\n|---:|---:|---:|---:|---:|---:|\n");
  std::stringstream list(threads_list);
  for (std::string item; std::getline(list, item, ',');) {
    const int threads = std::stoi(item);
    std::unique_ptr<ThreadPool> pool;
    if (threads > 1) pool = std::make_unique<ThreadPool>(threads);
    const double encode = MedianSeconds(
        reps, [] {}, [&] { (void)EncodeSparseLoCoHost(layout, plan, dense, pool.get()); });
    DownlinkEncoder down(CodecKind::kSparseLoCo, n);
    Encoded payload;
    Update u;
    const double with_sparse = MedianSeconds(
        reps, [&] { u = sparse; }, [&] { (void)down.Encode(layout, plan, std::move(u), pool.get(), &payload); });
    const double with_dense = MedianSeconds(
        reps, [&] { u = dense_u; }, [&] { (void)down.Encode(layout, plan, std::move(u), pool.get(), &payload); });
    DownlinkEncoder down2(CodecKind::kSparse2Bit, n);
    const double union_sparse = MedianSeconds(
        reps, [&] { u = sparse; }, [&] { (void)down2.Encode(layout, plan, std::move(u), pool.get(), &payload); });
    const double union_dense = MedianSeconds(
        reps, [&] { u = dense_u; }, [&] { (void)down2.Encode(layout, plan, std::move(u), pool.get(), &payload); });
    std::printf("| %d | %.3f | %.3f | %.3f | %.3f | %.3f |\n", threads, encode, with_sparse, with_dense, union_sparse,
                union_dense);
  }
  return 0;
}

}  // namespace
}  // namespace lowband

int main(int argc, char** argv) { return lowband::Main(argc, argv); }
