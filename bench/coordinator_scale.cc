// The coordinator at scale (issue 20 item 6): one round of 64 sites'
// SparseLoCo uploads through the coordinator's own code on a GPT layout of
// 85M or ~1B parameters, against the memory-bandwidth bound of the same
// machine, and the coordinator's peak RSS against the model's fp32 size.
//
//   build/bin/coordinator_scale --layout 85m,1b --sites 64 --rounds 3
//
// What runs is the daemon's path, not a copy of it: a CoordinatorCore
// (async close, as the service runs it) takes every site's hello and round-0
// evaluation, then each round the 64 DeltaUpload messages (header + bulk, a
// buffer of its own per site, as ZeroMQ hands them over); the last one
// closes the round and the CloseJob runs Aggregation::Close on a pool of
// the ComputeThread's size (decode + sum, outer step, logged gradient,
// downlink encoding, apply, digest); HandleClosed commits it (the round
// record, the Aggregate to every site). Then every site's evaluation opens
// the next round (not timed: nothing of the aggregation's).
//
// The uploads are the host SparseLoCo encoder's output (codec/
// sparseloco_host.h; the worker's CPU encoder makes the same format) for
// --distinct random deltas (about N(0, 1e-3)), encoded tensor by tensor.
// Encoding 64 x 1B values for every round would take minutes on a small
// machine, so each site's upload of each round is one of those payloads
// with every chunk's kept entries rotated by a (site, round, chunk) offset:
// what the encoder gives for that chunk-wise rotation of the delta (up to
// the last bit of a table entry), so the 64 uploads choose independent
// coordinates, as independent sites' deltas would. Sites of a real
// campaign agree on many coordinates, so the aggregate is sparser than this
// worst case (at topk 64 the union of 64 sites holds ~63% of the model).
//
// Bytes touched per round (the bound's numerator; reads and writes): every
// upload read once, the parameters read and written once (the apply) and
// read once more (the digest), the logged gradient written once (the
// payload down is the same buffer with an SGD lr 1 outer step), and with
// --downlink sparseloco the error-feedback buffer read and written (v = u +
// e), read by the selection and written again (e = v - t). Copy bandwidth:
// memcpy of --copy-mb MiB on the pool's threads, best of 3, counting the
// bytes read and written. Peak RSS: VmHWM, reset (/proc/self/clear_refs)
// once the uploads' source payloads are built, so it holds the
// coordinator's state, the process's baseline and those few payloads.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "base/log.h"
#include "base/thread_pool.h"
#include "codec/codec.h"
#include "codec/sparseloco_host.h"
#include "coordinator/core.h"

namespace lowband {
namespace {

using Seconds = std::chrono::duration<double>;

// The parameters of ml/model.h's Lm (names as torch lists them; the output
// head is tied to tok_emb).
ParamLayout GptLayout(int layers, int64_t d, int64_t vocab, int64_t context) {
  ParamLayout l;
  auto add = [&](std::string name, std::vector<int64_t> shape) { l.tensors.push_back({std::move(name), shape}); };
  add("tok_emb.weight", {vocab, d});
  add("pos_emb.weight", {context, d});
  for (int i = 0; i < layers; ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    add(p + "ln_1.weight", {d});
    add(p + "ln_1.bias", {d});
    add(p + "attn.qkv.weight", {3 * d, d});
    add(p + "attn.qkv.bias", {3 * d});
    add(p + "attn.proj.weight", {d, d});
    add(p + "attn.proj.bias", {d});
    add(p + "ln_2.weight", {d});
    add(p + "ln_2.bias", {d});
    add(p + "mlp_fc.weight", {4 * d, d});
    add(p + "mlp_fc.bias", {4 * d});
    add(p + "mlp_proj.weight", {d, 4 * d});
    add(p + "mlp_proj.bias", {d});
  }
  add("ln_f.weight", {d});
  add("ln_f.bias", {d});
  return l;
}

uint64_t Mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// About N(0, sigma): four 16-bit uniforms summed (Irwin-Hall), fast enough
// for a billion values.
void FillNoise(uint64_t seed, float sigma, float* out, int64_t n) {
  uint64_t s = Mix(seed);
  const float scale = sigma * std::sqrt(12.0f / 4.0f) / 65536.0f;
  for (int64_t i = 0; i < n; ++i) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    const float u = static_cast<float>((s & 0xffff) + ((s >> 16) & 0xffff) + ((s >> 32) & 0xffff) + (s >> 48));
    out[i] = (u - 2.0f * 65536.0f) * scale;
  }
}

uint64_t Ceil12(uint64_t n) { return (3 * n + 1) / 2; }
uint64_t Ceil2(uint64_t n) { return (n + 3) / 4; }

// A sparseloco payload of `layout` for a random delta, encoded tensor by
// tensor (a tensor's bytes do not depend on the others').
Bytes EncodeBase(const ParamLayout& layout, int topk, uint64_t seed, ThreadPool* pool) {
  Bytes bulk;
  std::vector<float> v;
  for (size_t t = 0; t < layout.tensors.size(); ++t) {
    ParamLayout one;
    one.tensors.push_back(layout.tensors[t]);
    const LayoutPlan plan = PlanLayout(one, topk);
    v.resize(static_cast<size_t>(plan.numel));
    FillNoise(seed * 1000003 + t, 1e-3f, v.data(), plan.numel);
    auto enc = EncodeSparseLoCoHost(one, plan, v, pool);
    LOWBAND_CHECK(enc.ok());
    bulk.insert(bulk.end(), enc->bulk.begin(), enc->bulk.end());
  }
  return bulk;
}

// Site `site`'s upload of round `round`: `base` with each chunk's entries
// rotated by an offset of (site, round, chunk), packed (and checked) by
// PackSparseLoCo.
Encoded SiteUpload(const ParamLayout& layout, const LayoutPlan& plan, const Bytes& base, uint64_t site, uint32_t round,
                   ThreadPool* pool) {
  SparseLoCoParts parts;
  parts.tables.resize(4 * plan.tensors.size());
  parts.indices.resize(static_cast<size_t>(plan.kept));
  parts.codes.resize(static_cast<size_t>(plan.kept));
  std::vector<uint64_t> at(plan.tensors.size()), first(plan.tensors.size());
  uint64_t bytes = 0, kept = 0;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    at[t] = bytes;
    first[t] = kept;
    const uint64_t k = static_cast<uint64_t>(plan.tensors[t].kept);
    bytes += 16 + Ceil12(k) + Ceil2(k);
    kept += k;
  }
  LOWBAND_CHECK(bytes == base.size());
  auto run = [&](int64_t tb, int64_t te) {
    std::vector<std::pair<uint16_t, uint8_t>> entries;
    for (int64_t ti = tb; ti < te; ++ti) {
      const size_t t = static_cast<size_t>(ti);
      const TensorPlan& tp = plan.tensors[t];
      const uint8_t* p = base.data() + at[t];
      std::memcpy(&parts.tables[4 * t], p, 16);
      const uint8_t* idx = p + 16;
      const uint8_t* codes = idx + Ceil12(static_cast<uint64_t>(tp.kept));
      uint64_t i = 0;
      uint64_t e = first[t];
      for (size_t c = tp.first_chunk; c < tp.first_chunk + tp.num_chunks; ++c) {
        const Chunk& ch = plan.chunks[c];
        const uint32_t n = static_cast<uint32_t>(ch.numel());
        const uint32_t rot = static_cast<uint32_t>(Mix((site << 40) ^ (uint64_t{round} << 32) ^ c) % n);
        entries.clear();
        for (int32_t j = 0; j < ch.k; ++j, ++i) {
          const uint64_t q = (i >> 1) * 3;
          const uint32_t l = (i & 1)
                                 ? (static_cast<uint32_t>(idx[q + 1]) >> 4) | (static_cast<uint32_t>(idx[q + 2]) << 4)
                                 : static_cast<uint32_t>(idx[q]) | (static_cast<uint32_t>(idx[q + 1] & 0x0f) << 8);
          entries.emplace_back(static_cast<uint16_t>((l + rot) % n), (codes[i >> 2] >> (2 * (i & 3))) & 3);
        }
        // Sorted but for the wrapped ones, which come first.
        auto wrap = std::min_element(entries.begin(), entries.end());
        std::rotate(entries.begin(), wrap, entries.end());
        for (const auto& [l, code] : entries) {
          parts.indices[e] = l;
          parts.codes[e] = code;
          ++e;
        }
      }
    }
  };
  LOWBAND_CHECK(pool->ParallelFor(static_cast<int64_t>(plan.tensors.size()), 1, run).ok());
  auto enc = PackSparseLoCo(layout, plan, parts);
  LOWBAND_CHECK(enc.ok());
  return std::move(enc).value();
}

// kB fields of /proc/self/status, in bytes.
uint64_t StatusBytes(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string key = std::string(field) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::stoull(line.substr(key.size())) * 1024;
  }
  return 0;
}

// The peak RSS starts again from the current one (Linux >= 4.0).
bool ResetPeakRss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

// memcpy GB/s (bytes read + written) of `mb` MiB on the pool's threads.
double CopyGBs(size_t mb, ThreadPool* pool) {
  const size_t n = mb << 20;
  std::vector<uint8_t> src(n, 1), dst(n, 0);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    LOWBAND_CHECK(pool->ParallelFor(static_cast<int64_t>(n >> 20), 1,
                                    [&](int64_t b, int64_t e) {
                                      std::memcpy(dst.data() + (b << 20), src.data() + (b << 20),
                                                  static_cast<size_t>(e - b) << 20);
                                    })
                      .ok());
    const double s = Seconds(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * static_cast<double>(n) / s / 1e9);
  }
  return best;
}

// GB/s of writing `mb` MiB of memory the process never touched (a page
// fault per 4 KiB page: on some VMs far slower than the copy).
double FirstTouchGBs(size_t mb) {
  const size_t n = mb << 20;
  std::unique_ptr<uint8_t[]> fresh(new uint8_t[n]);  // not value-initialised: untouched
  const auto t0 = std::chrono::steady_clock::now();
  std::memset(fresh.get(), 1, n);
  const double s = Seconds(std::chrono::steady_clock::now() - t0).count();
  volatile uint8_t sink = fresh[n / 2];
  (void)sink;
  return static_cast<double>(n) / s / 1e9;
}

// CPU seconds (user + system) of the process so far.
double CpuSeconds() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

struct Figures {
  double arrive_s = 0, close_s = 0, commit_s = 0, close_cpu_s = 0;
  CloseResult::Phases phases;
  uint64_t upload_bytes = 0, logged_bytes = 0, nnz = 0;
};

struct Layout {
  std::string name;
  int layers;
  int64_t d_model;
};

int RunLayout(const Layout& spec, int sites, int rounds, int topk, int distinct, CodecKind downlink, size_t copy_mb,
              int threads) {
  const ParamLayout layout = GptLayout(spec.layers, spec.d_model, 256, 256);
  const LayoutPlan plan = PlanLayout(layout, topk);
  const int64_t p = plan.numel;
  const double fp32 = 4.0 * static_cast<double>(p);
  ThreadPool pool(threads);
  std::printf(
      "\n## %s: %d layers x d_model %lld, vocab 256, context 256: %zu tensors, %.1fM parameters (fp32 %.2f GB)\n",
      spec.name.c_str(), spec.layers, static_cast<long long>(spec.d_model), layout.tensors.size(), p / 1e6, fp32 / 1e9);
  std::printf("%d sites, sparseloco topk %d (%lld kept, %.2f MB per upload), downlink %s, outer sgd lr 1, pool of %d\n",
              sites, topk, static_cast<long long>(plan.kept), BulkBytes(plan, CodecKind::kSparseLoCo) / 1e6,
              CodecName(downlink), threads);
  std::fflush(stdout);

  auto t0 = std::chrono::steady_clock::now();
  std::vector<Bytes> bases;
  for (int b = 0; b < distinct; ++b) bases.push_back(EncodeBase(layout, topk, static_cast<uint64_t>(b + 1), &pool));
  std::printf(
      "encoded %d distinct deltas in %.1f s; each site's upload is one of them, chunk-wise rotated per site "
      "and round\n",
      distinct, Seconds(std::chrono::steady_clock::now() - t0).count());

  CampaignConfig config;
  config.name = "scale";
  config.model.layers = spec.layers;
  config.model.d_model = static_cast<int>(spec.d_model);
  config.model.context = 256;
  config.model.vocab = 256;
  config.training.rounds = rounds;
  config.training.inner_steps = 1;
  config.training.batch_size = 1;
  config.outer.kind = OuterOptimizerKind::kSgd;
  config.outer.lr = 1.0;
  config.outer.momentum = 0.0;
  config.codec.kind = CodecKind::kSparseLoCo;
  config.codec.topk = topk;
  config.codec.downlink = downlink;
  config.quorum.expected_workers = sites;
  config.quorum.min_workers = sites;
  config.quorum.round_deadline_s = 1e6;
  config.quorum.start_timeout_s = 1e6;
  config.network.heartbeat_timeout_ms = 60000;

  const uint64_t rss_before = StatusBytes("VmRSS");
  const bool reset = ResetPeakRss();
  ParamSet initial;
  initial.layout = layout;
  initial.values.resize(static_cast<size_t>(p));
  FillNoise(12345, 0.02f, initial.values.data(), p);
  TimePoint now = TimePoint{} + std::chrono::hours(1);
  CoordinatorCore core(config, std::move(initial), now);
  core.SetAsyncClose(true);
  auto wrap = [&](Body body) {
    Message m;
    m.campaign_id = config.name;
    m.body = std::move(body);
    return m;
  };
  std::vector<std::string> names;
  for (int s = 0; s < sites; ++s) {
    char name[16];
    std::snprintf(name, sizeof(name), "site-%03d", s);
    names.push_back(name);
  }
  {
    CoreOutput out;
    for (const std::string& site : names) {
      Hello h;
      h.site = site;
      h.device = "cpu";
      h.step_time_ms = 1;
      h.train_tokens = 1000;
      h.val_tokens = 100;
      core.HandleMessage(site, wrap(h), now, &out);
    }
    const uint64_t d0 = core.digest();
    for (const std::string& site : names)
      core.HandleMessage(site, wrap(EvalReport{0, 2.0, 100, d0, {}, {}}), now, &out);
    // A minute on, every site still heartbeating: the join's packed model
    // (offered, never pulled: the sites hold the seed) is dropped as idle,
    // as a running coordinator drops it.
    now += std::chrono::milliseconds(config.network.heartbeat_timeout_ms + 1000);
    for (const std::string& site : names) core.HandleMessage(site, wrap(Heartbeat{1, "training"}), now, &out);
    core.OnTick(now, &out);
  }
  LOWBAND_CHECK(core.phase() == CoordinatorCore::Phase::kTraining);
  LOWBAND_CHECK(core.membership().snapshots() == 0);
  for (const auto& [site, w] : core.workers()) LOWBAND_CHECK(w.state == WorkerState::kJoined);

  std::printf(
      "| round | arrival s (%d uploads) | close s (CPU s) | (count | aggregate | pack | update | apply | digest | "
      "rest) "
      "| commit s | round s | update nnz | logged MB | digest |\n",
      sites);
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
  std::vector<Figures> figs;
  for (uint32_t round = 1; round <= static_cast<uint32_t>(rounds); ++round) {
    Figures f;
    CoreOutput out;
    const uint64_t base_digest = core.digest();
    for (int s = 0; s < sites; ++s) {
      Encoded enc =
          SiteUpload(layout, plan, bases[static_cast<size_t>(s % distinct)], static_cast<uint64_t>(s), round, &pool);
      DeltaUpload up;
      up.round = round;
      up.base_digest = base_digest;
      up.train_loss = 1.0;
      up.tokens = 1;
      up.step_time_ms = 1;
      up.blob = enc.header;
      Message m = wrap(up);
      m.bulk = std::move(enc.bulk);
      f.upload_bytes += m.bulk.size();
      const auto a = std::chrono::steady_clock::now();
      core.HandleMessage(names[static_cast<size_t>(s)], m, now, &out);
      f.arrive_s += Seconds(std::chrono::steady_clock::now() - a).count();
    }
    LOWBAND_CHECK(out.close_jobs.size() == 1);
    CloseJob job = std::move(out.close_jobs[0]);
    out = CoreOutput{};
    auto c = std::chrono::steady_clock::now();
    const double cpu0 = CpuSeconds();
    CloseResult r = core.aggregation()->Close(std::move(job), &pool);
    f.close_s = Seconds(std::chrono::steady_clock::now() - c).count();
    f.close_cpu_s = CpuSeconds() - cpu0;
    LOWBAND_CHECK(r.status.ok());
    f.logged_bytes = r.logged.bulk.size();
    f.nnz = r.nnz;
    f.phases = r.phases;
    c = std::chrono::steady_clock::now();
    core.HandleClosed(std::move(r), now, &out);
    f.commit_s = Seconds(std::chrono::steady_clock::now() - c).count();
    LOWBAND_CHECK(core.committed_round() == round);
    out = CoreOutput{};  // sent: the service hands the shared payload to ZeroMQ
    for (const std::string& site : names) {
      core.HandleMessage(site, wrap(EvalReport{round, 2.0, 100, core.digest(), {}, {}}), now, &out);
    }
    out = CoreOutput{};
    const CloseResult::Phases& ph = f.phases;
    const double rest = f.close_s - ph.count_s - ph.aggregate_s - ph.pack_s - ph.update_s - ph.apply_s - ph.digest_s;
    std::printf(
        "| %u | %.3f | %.3f (%.3f) | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f "
        "| %.3f | %.3f | %llu (%.1f%%) | %.1f | %s |\n",
        round, f.arrive_s, f.close_s, f.close_cpu_s, ph.count_s, ph.aggregate_s, ph.pack_s, ph.update_s, ph.apply_s,
        ph.digest_s, rest, f.commit_s, f.arrive_s + f.close_s + f.commit_s, static_cast<unsigned long long>(f.nnz),
        100.0 * f.nnz / p, f.logged_bytes / 1e6, DigestHex(core.digest()).c_str());
    std::fflush(stdout);
    figs.push_back(f);
  }
  const uint64_t hwm = StatusBytes("VmHWM");
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);

  // The median round (the first one also carries the join's packed model).
  std::sort(figs.begin(), figs.end(), [](const Figures& a, const Figures& b) {
    return a.arrive_s + a.close_s + a.commit_s < b.arrive_s + b.close_s + b.commit_s;
  });
  const Figures& med = figs[figs.size() / 2];
  const double round_s = med.arrive_s + med.close_s + med.commit_s;
  double bytes = static_cast<double>(med.upload_bytes) + 3 * fp32 + static_cast<double>(med.logged_bytes);
  if (downlink == CodecKind::kSparseLoCo) bytes += 4 * fp32;
  const double gbs = CopyGBs(copy_mb, &pool);
  const double bound_s = bytes / (gbs * 1e9);
  const double touch_gbs = FirstTouchGBs(std::min<size_t>(copy_mb, 256));
  // New memory a round writes. With the sparse_fp32 downlink (sgd lr 1)
  // the mean goes straight into the logged payload, in a buffer of an
  // earlier round (PayloadBuffers): only round 1 faults one in. Otherwise
  // the aggregate as an Update (6 bytes an entry; its entries from the
  // logged sparse_fp32 size: 2 bytes a chunk, 5.5 an entry; a dense one is
  // 4 bytes a parameter) and the logged payload, every round.
  const bool packed = downlink == CodecKind::kSparseFp32;
  const double g_bytes = med.logged_bytes < static_cast<uint64_t>(fp32)
                             ? 6.0 * (static_cast<double>(med.logged_bytes) - 2.0 * plan.chunks.size()) / 5.5
                             : fp32;
  const double fresh = (packed ? 0.0 : g_bytes) + static_cast<double>(med.logged_bytes);
  std::printf(
      "copy bandwidth %.1f GB/s (memcpy of %zu MiB on %d threads, read + write); bytes touched per round %.2f "
      "GB (uploads %.2f, parameters 3 x %.2f, logged %.2f%s)\n",
      gbs, copy_mb, threads, bytes / 1e9, med.upload_bytes / 1e9, fp32 / 1e9, med.logged_bytes / 1e9,
      downlink == CodecKind::kSparseLoCo ? ", error feedback 4 x model" : "");
  std::printf(
      "%s %.2f GB (%s); first touch of fresh memory %.2f GB/s here: %.3f s for those alone\n",
      packed ? "memory faulted in once, in round 1 (later rounds reuse it):" : "of which memory every round allocates:",
      fresh / 1e9, packed ? "the logged payload's buffer" : "the aggregate, the logged payload", touch_gbs,
      fresh / (touch_gbs * 1e9));
  std::printf("peak RSS %.2f GB (VmHWM%s; ru_maxrss %.2f GB; RSS before the coordinator %.2f GB)\n", hwm / 1e9,
              reset ? " since the coordinator was built" : ", not reset", ru.ru_maxrss * 1024.0 / 1e9,
              rss_before / 1e9);
  std::printf("RESULT %s round %.3f s, bound %.3f s, ratio %.2fx (target <= 3x)\n", spec.name.c_str(), round_s, bound_s,
              round_s / bound_s);
  std::printf("RESULT %s peak RSS %.2f GB, model fp32 %.2f GB, ratio %.2fx (target <= 3x)\n", spec.name.c_str(),
              hwm / 1e9, fp32 / 1e9, hwm / fp32);
  std::fflush(stdout);
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{"the coordinator's round at 64 sites: time against the memory-bandwidth bound, peak RSS"};
  std::string layouts = "85m", downlink = "sparse_fp32";
  int sites = 64, rounds = 3, topk = 64, distinct = 8;
  size_t copy_mb = 1024;
  int threads = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u));  // ComputeThread's pool
  app.add_option("--layout", layouts, "comma-separated: 85m (12 x 768), 1b (16 x 2304)");
  app.add_option("--sites", sites);
  app.add_option("--rounds", rounds);
  app.add_option("--topk", topk);
  app.add_option("--distinct", distinct, "deltas encoded for real; the sites' uploads are rotations of them");
  app.add_option("--downlink", downlink, "sparse_fp32 (the default codec.downlink) or sparseloco");
  app.add_option("--copy-mb", copy_mb, "buffer of the copy-bandwidth measurement");
  app.add_option("--threads", threads, "the compute pool (default: the ComputeThread's)");
  CLI11_PARSE(app, argc, argv);
  log::SetLevel(log::Level::kWarn);  // not a line per site joining
  const CodecKind down = downlink == "sparseloco" ? CodecKind::kSparseLoCo : CodecKind::kSparseFp32;
  std::stringstream list(layouts);
  for (std::string item; std::getline(list, item, ',');) {
    if (item == "85m") {
      RunLayout({"85m", 12, 768}, sites, rounds, topk, distinct, down, copy_mb, threads);
    } else if (item == "1b") {
      RunLayout({"1b", 16, 2304}, sites, rounds, topk, distinct, down, copy_mb, threads);
    } else {
      std::fprintf(stderr, "unknown layout %s (85m, 1b)\n", item.c_str());
      return 2;
    }
  }
  return 0;
}

}  // namespace
}  // namespace lowband

int main(int argc, char** argv) { return lowband::Main(argc, argv); }
