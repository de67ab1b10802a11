// Throughput of the update codecs on a device, against a plain copy of the
// same tensor on that device.
//
//   build/bin/codec_speed --device all --sizes 1,4,16,64,100 --reps 5 --threads 1
//   build/bin/codec_speed --device cuda --sizes 16,100 --phases   # where the time goes
//
// For one fp32 tensor [n / 4096, 4096] (n = size * 2^20) per size: copy
// (dst.copy_(src), synchronised); encode (error feedback, selection and
// quantisation on the device, the device->host copy of the result, host
// packing) for sparseloco, int8 and dense_bf16; decode (host ParseUpdate of
// the payload, then theta -= u on the device, as a worker applies an
// aggregate). GB/s counts fp32 input bytes (4 n) per second; each figure is
// the median of --reps runs after one warm-up run.
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "codec/codec.h"
#include "ml/codec_device.h"
#include "config/config.h"

namespace {

using lowband::CodecKind;

void Sync(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

// Median seconds of `reps` runs of fn after one warm-up run; false if fn failed.
template <typename Fn>
bool MedianSeconds(int reps, const torch::Device& device, Fn fn, double* out) {
  if (!fn()) return false;
  std::vector<double> s;
  for (int i = 0; i < reps; ++i) {
    Sync(device);
    const auto t0 = std::chrono::steady_clock::now();
    if (!fn()) return false;
    Sync(device);
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(s.begin(), s.end());
  *out = s[s.size() / 2];
  return true;
}

struct Row {
  double encode_s = 0;
  double decode_s = 0;
  uint64_t bytes_out = 0;
  bool phases = false;  // in: also time the phases of a CUDA encode
  std::vector<std::pair<std::string, double>> phase_ms;
};

bool MeasureCodec(CodecKind kind, int topk, const torch::Device& device, const torch::Tensor& delta,
                  const lowband::ParamLayout& layout, int reps, Row* row) {
  lowband::CodecConfig config;
  config.kind = kind;
  config.topk = topk;
  config.error_feedback = 0.95;
  auto enc = lowband::DeviceEncoder::Create(layout, config, device);
  if (!enc.ok()) {
    std::fprintf(stderr, "%s: %s\n", lowband::CodecName(kind), enc.status().ToString().c_str());
    return false;
  }
  const std::vector<torch::Tensor> deltas = {delta};
  lowband::Encoded payload;
  bool ok = MedianSeconds(
      reps, device,
      [&] {
        auto e = (*enc)->Encode(deltas);
        if (!e.ok()) {
          std::fprintf(stderr, "encode %s: %s\n", lowband::CodecName(kind), e.status().ToString().c_str());
          return false;
        }
        payload = std::move(e).value();
        return true;
      },
      &row->encode_s);
  if (!ok) return false;
  row->bytes_out = payload.bulk.size();
  if (row->phases && device.is_cuda()) {  // a second encoder: the timed one synchronises after each phase
    lowband::DeviceEncoderOptions options;
    options.cuda_phases = &row->phase_ms;
    auto timed = lowband::DeviceEncoder::Create(layout, config, device, options);
    if (!timed.ok()) return false;
    for (int i = 0; i < 3; ++i) {
      if (!(*timed)->Encode(deltas).ok()) return false;
    }
  }
  const lowband::LayoutPlan& plan = (*enc)->plan();
  torch::Tensor theta = torch::zeros({plan.numel}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  return MedianSeconds(
      reps, device,
      [&] {
        auto u = lowband::ParseUpdate(layout, plan, payload.header, payload.bulk);
        if (!u.ok()) {
          std::fprintf(stderr, "parse %s: %s\n", lowband::CodecName(kind), u.status().ToString().c_str());
          return false;
        }
        lowband::Status st = lowband::ApplyUpdateOnDevice(plan, *u, theta);
        if (!st.ok()) {
          std::fprintf(stderr, "apply %s: %s\n", lowband::CodecName(kind), st.ToString().c_str());
          return false;
        }
        return true;
      },
      &row->decode_s);
}

std::vector<int> ParseSizes(const std::string& list) {
  std::vector<int> sizes;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) sizes.push_back(std::stoi(item));
  }
  return sizes;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"update codec throughput against a device copy"};
  std::string device_arg = "all", sizes_arg = "1,4,16,64,100";
  int reps = 5, threads = 1, topk = 64;
  app.add_option("--device", device_arg, "cpu, cuda or all (cpu, plus cuda when present)")
      ->check(CLI::IsMember({"cpu", "cuda", "all"}));
  app.add_option("--sizes", sizes_arg, "comma-separated sizes in Mi elements (2^20)");
  app.add_option("--reps", reps, "timed runs per figure (median)")->check(CLI::Range(1, 1000));
  app.add_option("--threads", threads, "CPU intra-op threads")->check(CLI::Range(1, 1024));
  app.add_option("--topk", topk, "sparseloco values kept per 4096")->check(CLI::Range(1, 4096));
  bool phases = false;
  app.add_flag("--phases", phases, "CUDA: also print each encode phase's time (a separate, synchronised encode)");
  CLI11_PARSE(app, argc, argv);

  std::vector<int> sizes;
  try {
    sizes = ParseSizes(sizes_arg);
  } catch (const std::exception&) {
    std::fprintf(stderr, "--sizes: expected a comma-separated list of integers, got \"%s\"\n", sizes_arg.c_str());
    return lowband::kExitConfig;
  }
  for (int s : sizes) {
    if (s < 1 || s > 4096) {
      std::fprintf(stderr, "--sizes: %d outside [1, 4096]\n", s);
      return lowband::kExitConfig;
    }
  }
  torch::set_num_threads(threads);
  std::vector<torch::Device> devices;
  if (device_arg != "cuda") devices.emplace_back(torch::kCPU);
  if (device_arg != "cpu") {
    if (torch::cuda::is_available()) {
      devices.emplace_back(torch::kCUDA, 0);
    } else if (device_arg == "cuda") {
      std::fprintf(stderr, "--device cuda: no CUDA device visible\n");
      return 1;
    }
  }

  std::printf(
      "codec_speed: tensor [n/4096, 4096] fp32, topk %d, error feedback 0.95, CPU threads %d, "
      "median of %d\n",
      topk, threads, reps);
  std::printf(
      "targets: GPU sparseloco encode time <= 3x copy time, int8 and dense_bf16 >= 100 GB/s; "
      "CPU sparseloco encode >= 0.5 GB/s per core\n");
  std::printf("GB/s = fp32 input bytes (4 n) per second; decode = host parse + theta -= u on the device\n\n");
  std::printf("%6s %-6s %9s %-10s %9s %9s %9s %12s %8s %12s\n", "Mi", "device", "copy GB/s", "codec", "enc GB/s",
              "enc/copy", "dec GB/s", "bytes out", "ratio", "enc GB/s/thr");
  const std::vector<CodecKind> kinds = {CodecKind::kSparseLoCo, CodecKind::kInt8, CodecKind::kDenseBf16};
  for (const torch::Device& device : devices) {
    for (int size : sizes) {
      const int64_t n = static_cast<int64_t>(size) << 20;
      const double gb = 4.0 * static_cast<double>(n) / 1e9;
      lowband::ParamLayout layout;
      layout.tensors.push_back(lowband::TensorSpec{"w", {n / 4096, 4096}});
      double copy_s = 0;
      torch::Tensor delta;
      try {
        torch::NoGradGuard no_grad;
        torch::manual_seed(1);
        delta = torch::randn({n / 4096, 4096}, torch::TensorOptions().device(device)) * 0.01;
        torch::Tensor dst = torch::empty_like(delta);
        if (!MedianSeconds(
                reps, device,
                [&] {
                  dst.copy_(delta);
                  return true;
                },
                &copy_s)) {
          return 1;
        }
      } catch (const c10::Error& e) {
        std::fprintf(stderr, "%s %d Mi: %s\n", device.str().c_str(), size, e.what_without_backtrace());
        return 1;
      }
      for (CodecKind kind : kinds) {
        Row row;
        row.phases = phases;
        if (!MeasureCodec(kind, topk, device, delta, layout, reps, &row)) return 1;
        const double enc_gbs = gb / row.encode_s;
        char per_thread[32] = "-";
        if (device.is_cpu()) std::snprintf(per_thread, sizeof per_thread, "%.3f", enc_gbs / threads);
        std::printf("%6d %-6s %9.2f %-10s %9.3f %8.1fx %9.3f %12llu %7.1fx %12s\n", size, device.str().c_str(),
                    gb / copy_s, lowband::CodecName(kind), enc_gbs, row.encode_s / copy_s, gb / row.decode_s,
                    static_cast<unsigned long long>(row.bytes_out), 4.0 * n / row.bytes_out, per_thread);
        if (!row.phase_ms.empty()) {
          std::printf("%6s phases ms:", "");
          for (const auto& [name, ms] : row.phase_ms) std::printf(" %s %.3f", name.c_str(), ms);
          std::printf("\n");
        }
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
