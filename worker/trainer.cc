#include "worker/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <thread>

#include "codec/blocks.h"
#include "ml/codec_device.h"
#include "ml/inner_optimizer.h"
#include "ml/model.h"
#include "ml/precision.h"
#include "worker/site_group.h"

namespace lowband {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// "cpu", "cuda" or "cuda:N". Unavailable when CUDA is asked for but absent.
StatusOr<torch::Device> ParseDevice(const std::string& device) {
  if (device == "cpu") return torch::Device(torch::kCPU);
  int index = -1;
  if (device == "cuda") {
    index = 0;
  } else if (device.rfind("cuda:", 0) == 0 && device.size() > 5 && device.size() <= 8 &&
             std::all_of(device.begin() + 5, device.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    index = std::atoi(device.c_str() + 5);
  } else {
    return InvalidArgument("device \"" + device + "\" is not one of cpu, cuda, cuda:N");
  }
  if (!torch::cuda::is_available()) {
    return Unavailable("device \"" + device +
                       "\" requested but CUDA is not available (LibTorch built without CUDA, or no GPU/driver)");
  }
  const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
  if (index >= count) {
    return Unavailable("device \"" + device + "\" requested but only " + std::to_string(count) +
                       " CUDA device(s) are visible");
  }
  return torch::Device(torch::kCUDA, static_cast<torch::DeviceIndex>(index));
}

std::string TorchMessage(const char* what, const c10::Error& e) {
  return std::string(what) + ": " + e.what_without_backtrace();
}

}  // namespace

struct Trainer::Impl {
  Impl(const ModelConfig& m, const TrainingConfig& t, torch::Device d, const Corpus* c, uint64_t data_seed)
      : model_config(m),
        training(t),
        device(d),
        precision(ResolvePrecision(t.precision, d)),
        corpus(c),
        data_seed(data_seed),
        rng(data_seed) {}

  ModelConfig model_config;
  TrainingConfig training;
  torch::Device device;
  Precision precision;  // training.precision resolved for the device
  const Corpus* corpus;
  uint64_t data_seed;
  std::mt19937_64 rng;  // batch sampling; state persists across rounds
  double slowdown = 1.0;  // site.slowdown
  SiteGroup* group = nullptr;  // several ranks: the site's process group
  int ranks() const { return group ? group->size() : 1; }
  bool leader() const { return !group || group->rank() == 0; }

  Lm model{nullptr};
  std::unique_ptr<InnerAdamW> optimizer;  // state persists across rounds
  ParamLayout layout;
  LayoutPlan plan;
  ParamSet global;             // CPU fp32 copy of the committed global parameters
  std::optional<uint64_t> global_digest;  // of `global`; reset when it changes
  torch::Tensor global_flat;              // the same values on the device, flat, layout order
  std::vector<torch::Tensor> global_dev;  // views of global_flat, one per parameter
  std::unique_ptr<DeviceEncoder> encoder;
  CodecConfig codec;
  // ParaBlock: tensor range and encoder (own error feedback) of each block.
  std::vector<TensorRange> blocks;
  std::vector<std::unique_ptr<DeviceEncoder>> block_encoders;
  bool model_is_global = false;  // false after TrainRound left local weights in the model
  // Overlap: the model holds local progress to continue from; the
  // parameters at the start of the last round trained; whether a round was
  // trained since the last ApplyUpdate.
  bool overlap = false;
  bool local_valid = false;
  std::vector<torch::Tensor> round_start;
  bool trained_since_apply = false;
  int64_t inner_steps_done = 0;  // across the campaign, for the warm-up schedule

  // The whole CPU copy to the device (start-up, join, re-sync), then into
  // the model.
  Status LoadGlobal() try {
    torch::NoGradGuard no_grad;
    MirrorToDevice(global, device, &global_flat, &global_dev);
    RestoreGlobal();
    return Status::Ok();
  } catch (const c10::Error& e) {
    return Internal(TorchMessage("loading the global parameters", e));
  }

  // After TrainRound left local weights in the model: back to the global
  // ones with a device-to-device copy.
  void RestoreGlobal() {
    torch::NoGradGuard no_grad;
    auto params = model->parameters();
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(global_dev[i]);
    model_is_global = true;
  }

  // Several ranks: the mean of every rank's gradients, through one flat
  // all-reduce (the same on every rank, so the AdamW steps stay identical).
  Status AverageGradients(const std::vector<torch::Tensor>& params, size_t first, size_t last) {
    std::vector<torch::Tensor> grads;
    for (size_t i = first; i < last; ++i) {
      if (params[i].grad().defined()) grads.push_back(params[i].grad().view({-1}));
    }
    if (grads.empty()) return Status::Ok();
    torch::Tensor flat = torch::cat(grads);
    LOWBAND_RETURN_IF_ERROR(group->AllreduceSum(flat));
    flat.div_(static_cast<double>(ranks()));
    int64_t offset = 0;
    for (auto& g : grads) {
      g.copy_(flat.narrow(0, offset, g.numel()));
      offset += g.numel();
    }
    return Status::Ok();
  }

  double LearningRate() const {
    const auto& inner = training.inner;
    if (inner.warmup_steps > 0 && inner_steps_done < inner.warmup_steps) {
      return inner.lr * static_cast<double>(inner_steps_done + 1) / static_cast<double>(inner.warmup_steps);
    }
    return inner.lr;
  }

  // A batch on the device. To CUDA through pinned host memory and an
  // asynchronous copy: a copy from pageable memory would wait for the GPU
  // to finish the previous step first. LibTorch's pinned allocator keeps a
  // block until the copy that reads it has run.
  std::pair<torch::Tensor, torch::Tensor> ToTensors(const TokenBatch& b) const {
    const bool cuda = device.is_cuda();
    auto opts = torch::TensorOptions().dtype(torch::kInt64).pinned_memory(cuda);
    auto host = torch::empty({2, b.batch, b.length}, opts);
    const size_t bytes = static_cast<size_t>(b.batch) * static_cast<size_t>(b.length) * sizeof(int64_t);
    std::memcpy(host[0].data_ptr<int64_t>(), b.inputs.data(), bytes);
    std::memcpy(host[1].data_ptr<int64_t>(), b.targets.data(), bytes);
    auto both = host.to(device, /*non_blocking=*/cuda);
    return {both[0], both[1]};
  }

  // Forward pass and loss in the campaign's precision.
  torch::Tensor Loss(const torch::Tensor& x, const torch::Tensor& y) {
    AutocastScope autocast(precision, device);
    return model->Loss(x, y);
  }
};

Trainer::Trainer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Trainer::~Trainer() = default;

StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const ModelConfig& model, const TrainingConfig& training,
                                                   const std::string& device, int threads,
                                                   const Corpus* corpus, uint64_t data_seed,
                                                   const CodecConfig& codec) {
  if (corpus == nullptr) return InvalidArgument("trainer: no corpus");
  if (training.batch_size < 1) return InvalidArgument("trainer: batch_size must be >= 1");
  const size_t window = static_cast<size_t>(model.context) + 1;
  if (model.context < 1 || corpus->train_tokens() < 2 * window) {
    return InvalidArgument("trainer: training text has " + std::to_string(corpus->train_tokens()) +
                           " tokens; need at least " + std::to_string(2 * window) + " (two windows of context+1)");
  }
  if (corpus->val_tokens() < window) {
    return InvalidArgument("trainer: validation text has " + std::to_string(corpus->val_tokens()) +
                           " tokens; need at least " + std::to_string(window) + " (one window of context+1)");
  }
  try {
    if (threads > 0) torch::set_num_threads(threads);
    LOWBAND_ASSIGN_OR_RETURN(torch::Device dev, ParseDevice(device));
    auto impl = std::make_unique<Impl>(model, training, dev, corpus, data_seed);
    impl->model = MakeLm(model, training.seed);
    impl->global = ExportParams(impl->model);
    impl->layout = impl->global.layout;
    impl->plan = PlanLayout(impl->layout, codec.topk);
    impl->model->to(dev);
    if (impl->model->parameters().size() != impl->layout.tensors.size()) {
      return Internal("trainer: model has " + std::to_string(impl->model->parameters().size()) +
                      " parameter tensors, layout " + std::to_string(impl->layout.tensors.size()));
    }
    LOWBAND_RETURN_IF_ERROR(impl->LoadGlobal());
    LOWBAND_ASSIGN_OR_RETURN(impl->encoder, DeviceEncoder::Create(impl->layout, codec, dev));
    impl->codec = codec;

    impl->optimizer = std::make_unique<InnerAdamW>(impl->model->parameters(), training.inner);
    return std::unique_ptr<Trainer>(new Trainer(std::move(impl)));
  } catch (const c10::Error& e) {
    return Internal(TorchMessage("trainer: create", e));
  } catch (const std::exception& e) {
    return Internal(std::string("trainer: create: ") + e.what());
  }
}

const ParamLayout& Trainer::layout() const { return impl_->layout; }
Precision Trainer::precision() const { return impl_->precision; }
bool Trainer::fused_optimizer() const { return impl_->optimizer->fused(); }
const ParamSet& Trainer::global() const { return impl_->global; }

uint64_t Trainer::GlobalDigest() {
  if (!impl_->global_digest) impl_->global_digest = impl_->global.Digest();
  return *impl_->global_digest;
}
const LayoutPlan& Trainer::plan() const { return impl_->plan; }

Status Trainer::SetGlobal(ParamSet params) {
  if (!(params.layout == impl_->layout)) {
    return InvalidArgument("SetGlobal: layout " + DigestHex(params.layout.Digest()) + " does not match model " +
                           DigestHex(impl_->layout.Digest()));
  }
  if (static_cast<int64_t>(params.values.size()) != impl_->layout.numel()) {
    return InvalidArgument("SetGlobal: " + std::to_string(params.values.size()) + " values, layout needs " +
                           std::to_string(impl_->layout.numel()));
  }
  impl_->global = std::move(params);
  impl_->global_digest.reset();
  impl_->model_is_global = false;
  impl_->local_valid = false;  // a (re)sync: the next round starts from these parameters
  impl_->trained_since_apply = false;
  return impl_->LoadGlobal();
}

Status Trainer::RestartFromGlobal() {
  impl_->model_is_global = false;
  impl_->local_valid = false;
  impl_->trained_since_apply = false;
  return impl_->LoadGlobal();
}

void Trainer::SetSlowdown(double factor) { impl_->slowdown = factor; }

void Trainer::SetGroup(SiteGroup* group) {
  impl_->group = group;
  if (group && group->rank() > 0) {
    // Its own batches: a stream of the site's seed apart from every other rank's.
    impl_->rng.seed(impl_->data_seed ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(group->rank())));
  }
}

void Trainer::SetOverlap(bool overlap) {
  impl_->overlap = overlap;
  impl_->local_valid = false;
  impl_->trained_since_apply = false;
}

bool Trainer::has_blocks() const { return !impl_->blocks.empty(); }

Status Trainer::SetBlocks(const std::vector<int>& layer_blocks) {
  Impl& s = *impl_;
  if (static_cast<int>(layer_blocks.size()) != s.model_config.layers) {
    return InvalidArgument("SetBlocks: " + std::to_string(layer_blocks.size()) + " layer entries for a model of " +
                           std::to_string(s.model_config.layers) + " layers");
  }
  LOWBAND_ASSIGN_OR_RETURN(auto ranges, BlockTensorRanges(s.layout, layer_blocks));
  std::vector<std::unique_ptr<DeviceEncoder>> encoders;
  for (const TensorRange& r : ranges) {
    LOWBAND_ASSIGN_OR_RETURN(auto enc, DeviceEncoder::Create(SliceLayout(s.layout, r), s.codec, s.device));
    encoders.push_back(std::move(enc));
  }
  s.blocks = std::move(ranges);
  s.block_encoders = std::move(encoders);
  s.encoder.reset();  // the blocks' encoders hold the error feedback now
  return Status::Ok();
}

ParamSet Trainer::LocalParams() const {
  ParamSet out;
  out.layout = impl_->layout;
  torch::NoGradGuard no_grad;
  for (const auto& p : impl_->model->parameters()) {
    auto cpu = p.detach().to(torch::kCPU).contiguous().view({-1});
    out.values.insert(out.values.end(), cpu.data_ptr<float>(), cpu.data_ptr<float>() + cpu.numel());
  }
  return out;
}

StatusOr<TrainResult> Trainer::TrainRound(int inner_steps, int block) {
  if (inner_steps < 1) return InvalidArgument("TrainRound: inner_steps must be >= 1");
  Impl& s = *impl_;
  if (block >= static_cast<int>(s.blocks.size()) || block < -1 || (block >= 0 && s.blocks.empty()) ||
      (block < 0 && !s.blocks.empty())) {
    return InvalidArgument("TrainRound: block " + std::to_string(block) + " (this model has " +
                           std::to_string(s.blocks.size()) + " blocks)");
  }
  // The tensors that train this round: [first, last).
  const size_t first = block >= 0 ? s.blocks[static_cast<size_t>(block)].first : 0;
  const size_t last = block >= 0 ? first + s.blocks[static_cast<size_t>(block)].count : s.layout.tensors.size();
  auto params = s.model->parameters();
  // Frozen tensors: no gradient at all, so AdamW skips them (no step, no
  // weight decay, moments untouched) and gradient clipping ignores them.
  auto freeze = [&](bool frozen) {
    for (size_t i = 0; i < params.size(); ++i) {
      if (i >= first && i < last) continue;
      params[i].set_requires_grad(!frozen);
      if (frozen) params[i].mutable_grad() = torch::Tensor();
    }
  };
  struct Unfreeze {  // every parameter trainable again, however the round ends
    std::function<void()> fn;
    ~Unfreeze() { fn(); }
  } unfreeze{[&] { if (block >= 0) freeze(false); }};
  try {
    // Overlap: continue from the local model (docs/overlap.md).
    const bool continue_local = s.overlap && s.local_valid;
    if (!s.model_is_global && !continue_local) s.RestoreGlobal();
    {
      torch::NoGradGuard no_grad;
      s.round_start.clear();
      if (continue_local) {
        for (const auto& p : params) s.round_start.push_back(p.detach().clone());
      }
    }
    s.model->train();
    s.model_is_global = false;
    if (block >= 0) freeze(true);
    TrainResult result;
    const int batch = s.training.batch_size;
    const int context = s.model_config.context;
    MatmulScope matmul(s.precision, s.device);
    // The host only queues work: the losses stay on the device until the
    // round ends (one synchronisation per round, not per step), unless
    // site.slowdown needs each step's duration.
    std::vector<torch::Tensor> losses;
    losses.reserve(static_cast<size_t>(inner_steps));
    const auto steps_start = Clock::now();
    for (int step = 0; step < inner_steps; ++step) {
      const auto start = Clock::now();
      TokenBatch b = s.corpus->SampleTrain(batch, context, &s.rng);
      auto [x, y] = s.ToTensors(b);
      s.optimizer->ZeroGrad();  // frozen tensors too: they keep no gradient
      auto loss = s.Loss(x, y);
      loss.backward();
      if (s.ranks() > 1) LOWBAND_RETURN_IF_ERROR(s.AverageGradients(params, first, last));
      s.optimizer->Step(s.LearningRate(), s.training.inner.grad_clip);
      losses.push_back(loss.detach());
      if (s.slowdown > 1) {
        losses.back().item<double>();  // the step's end on the device
        std::this_thread::sleep_for(std::chrono::duration<double, std::milli>((s.slowdown - 1) * MsSince(start)));
      }
      ++s.inner_steps_done;
      result.tokens += static_cast<uint64_t>(batch) * context;
    }
    double loss_sum = 0;
    for (const auto& l : losses) loss_sum += l.item<double>();  // the first waits for the last step
    const double time_ms = MsSince(steps_start);
    result.steps = inner_steps;
    if (s.ranks() > 1) {
      std::vector<double> sum{loss_sum};
      LOWBAND_RETURN_IF_ERROR(s.group->AllreduceSum(&sum));
      loss_sum = sum[0] / s.ranks();
      result.tokens *= static_cast<uint64_t>(s.ranks());
    }
    result.mean_loss = loss_sum / inner_steps;
    result.step_time_ms = time_ms / inner_steps;

    // Pseudo-gradient on the device: theta_global - theta_local; the
    // encoder compresses it there and hands back only the payload.
    std::vector<torch::Tensor> delta;
    std::vector<torch::Tensor> peaks;
    {
      torch::NoGradGuard no_grad;
      // Start minus end: the global parameters, or (overlap) the model as
      // this round found it.
      const std::vector<torch::Tensor>& start = continue_local ? s.round_start : s.global_dev;
      for (size_t i = first; i < last; ++i) {
        delta.push_back(start[i] - params[i].detach());
        peaks.push_back(delta.back().abs().max());
      }
      if (s.overlap && !continue_local) {
        for (size_t i = 0; i < s.global_dev.size(); ++i) s.round_start.push_back(s.global_dev[i].clone());
      }
    }
    if (s.overlap) {
      s.local_valid = true;
      s.trained_since_apply = true;
    }
    const double peak = torch::stack(peaks).max().item<double>();  // one sync for the whole model
    if (!std::isfinite(peak)) {
      return Internal("TrainRound: non-finite parameters after " + std::to_string(inner_steps) +
                      " inner steps (mean loss " + std::to_string(result.mean_loss) + "); training diverged");
    }
    // Only rank 0 uploads; the other ranks keep no error feedback.
    if (!s.leader()) return result;
    DeviceEncoder& encoder = block >= 0 ? *s.block_encoders[static_cast<size_t>(block)] : *s.encoder;
    LOWBAND_ASSIGN_OR_RETURN(result.upload, encoder.Encode(delta));
    return result;
  } catch (const c10::Error& e) {
    return Internal(TorchMessage("TrainRound", e));
  } catch (const std::exception& e) {
    return Internal(std::string("TrainRound: ") + e.what());
  }
}

Status Trainer::ApplyUpdate(const Update& update) {
  Impl& s = *impl_;
  // The coordinator's own function on the CPU copy (the digest's source),
  // and the same fp32 subtraction on the device copy, moving only the
  // update's entries there, not the model.
  // Overlap: the progress of the round trained since the last apply, kept
  // across the update: model <- new global + (model - round start).
  std::vector<torch::Tensor> progress;
  if (s.overlap && s.local_valid && s.trained_since_apply) {
    torch::NoGradGuard no_grad;
    auto params = s.model->parameters();
    for (size_t i = 0; i < params.size(); ++i) progress.push_back(params[i].detach() - s.round_start[i]);
  }
  s.global_digest.reset();
  LOWBAND_RETURN_IF_ERROR(lowband::ApplyUpdate(s.plan, update, &s.global.values));
  s.model_is_global = false;
  Status st = ApplyUpdateOnDevice(s.plan, update, s.global_flat);
  if (!st.ok()) st = s.LoadGlobal();  // the device copy is unknown now: reload it whole
  if (!st.ok()) return st;
  s.trained_since_apply = false;
  if (progress.empty()) {
    s.local_valid = false;  // nothing trained since: the next round starts from the global parameters
    return st;
  }
  try {
    torch::NoGradGuard no_grad;
    auto params = s.model->parameters();
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(s.global_dev[i] + progress[i]);
  } catch (const c10::Error& e) {
    s.local_valid = false;
    return Internal(TorchMessage("ApplyUpdate: overlap correction", e));
  }
  return st;
}

Status Trainer::ApplyUpdate(const std::vector<float>& dense_update) {
  Update u;
  u.values = dense_update;
  return ApplyUpdate(u);
}

StatusOr<std::vector<float>> Trainer::ProbeLogits(const std::vector<uint8_t>& tokens, int contexts, int positions) {
  Impl& s = *impl_;
  const int context = s.model_config.context;
  if (contexts < 1 || positions < 1 || positions > context ||
      tokens.size() != static_cast<size_t>(contexts) * static_cast<size_t>(context)) {
    return InvalidArgument("ProbeLogits: " + std::to_string(tokens.size()) + " tokens for " + std::to_string(contexts) +
                           " contexts of " + std::to_string(context) + ", " + std::to_string(positions) + " positions");
  }
  try {
    torch::NoGradGuard no_grad;
    MatmulScope matmul(s.precision, s.device);
    AutocastScope autocast(s.precision, s.device);
    s.model->eval();
    std::vector<int64_t> ids(tokens.begin(), tokens.end());
    std::vector<float> out;
    out.reserve(static_cast<size_t>(contexts) * positions * s.model_config.vocab);
    const int chunk = std::max(1, s.training.batch_size);
    for (int first = 0; first < contexts; first += chunk) {
      const int n = std::min(chunk, contexts - first);
      auto x = torch::from_blob(ids.data() + static_cast<size_t>(first) * context, {n, context}, torch::kInt64)
                   .to(s.device);
      auto logits = s.model->forward(x).slice(1, context - positions, context).to(torch::kFloat32).to(torch::kCPU)
                        .contiguous();
      out.insert(out.end(), logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
    }
    s.model->train();
    return out;
  } catch (const c10::Error& e) {
    s.model->train();
    return Internal(TorchMessage("ProbeLogits", e));
  }
}

StatusOr<EvalResult> Trainer::Evaluate() {
  Impl& s = *impl_;
  try {
    // Overlap: the model holds local progress the next round continues from.
    std::vector<torch::Tensor> local;
    if (s.overlap && s.local_valid && !s.model_is_global) {
      torch::NoGradGuard no_grad;
      for (const auto& p : s.model->parameters()) local.push_back(p.detach().clone());
    }
    struct PutBack {
      Impl& s;
      std::vector<torch::Tensor>& local;
      ~PutBack() {
        if (local.empty()) return;
        torch::NoGradGuard no_grad;
        auto params = s.model->parameters();
        for (size_t i = 0; i < params.size(); ++i) params[i].copy_(local[i]);
        s.model_is_global = false;
      }
    } put_back{s, local};
    if (!s.model_is_global) s.RestoreGlobal();
    torch::NoGradGuard no_grad;
    MatmulScope matmul(s.precision, s.device);
    s.model->eval();
    std::vector<std::pair<torch::Tensor, uint64_t>> losses;  // read back after the last batch is queued
    EvalResult result;
    // Several ranks: batch i on rank i mod ranks, the sums added up after.
    const int ranks = s.ranks();
    const int rank = s.group ? s.group->rank() : 0;
    for (int index = rank; index < s.training.eval_batches; index += ranks) {
      TokenBatch b = s.corpus->ValidationBatch(index, s.training.batch_size, s.model_config.context);
      if (b.batch == 0) break;
      auto [x, y] = s.ToTensors(b);
      const uint64_t tokens = static_cast<uint64_t>(b.batch) * b.length;
      losses.emplace_back(s.Loss(x, y), tokens);
      result.tokens += tokens;
    }
    double loss_sum = 0;
    for (const auto& [loss, tokens] : losses) loss_sum += loss.item<double>() * static_cast<double>(tokens);
    s.model->train();
    if (ranks > 1) {
      std::vector<double> sums{loss_sum, static_cast<double>(result.tokens)};
      LOWBAND_RETURN_IF_ERROR(s.group->AllreduceSum(&sums));
      loss_sum = sums[0];
      result.tokens = static_cast<uint64_t>(sums[1]);
    }
    if (result.tokens == 0) return FailedPrecondition("Evaluate: no validation windows");
    result.loss = loss_sum / static_cast<double>(result.tokens);
    return result;
  } catch (const c10::Error& e) {
    s.model->train();
    return Internal(TorchMessage("Evaluate", e));
  } catch (const std::exception& e) {
    s.model->train();
    return Internal(std::string("Evaluate: ") + e.what());
  }
}

double MeasureReferenceStepMs(const std::string& device) {
  try {
    auto dev = ParseDevice(device);
    if (!dev.ok()) return 0;
    torch::NoGradGuard no_grad;
    // Constant inputs (no RNG use, so the global torch generator is left
    // alone); entries 1/512 keep the chain at ~1.0, away from denormals.
    auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(*dev);
    auto w = torch::full({512, 512}, 1.0f / 512.0f, opts);
    auto x0 = torch::ones({512, 512}, opts);
    auto chain = [&]() {
      auto x = x0;
      for (int i = 0; i < 8; ++i) x = torch::matmul(x, w);
      return x.sum().item<float>();  // forces completion on CUDA
    };
    chain();  // warm-up: allocations, BLAS/cuBLAS handles
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
      const auto start = Clock::now();
      chain();
      const double ms = MsSince(start);
      if (rep == 0 || ms < best) best = ms;
    }
    return best;
  } catch (const std::exception&) {
    return 0;
  }
}

uint64_t FreeMemoryBytes(const std::string& device) {
  if (device != "cpu") return 0;
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) == 0) {
      std::istringstream ss(line.substr(13));
      uint64_t kb = 0;
      ss >> kb;
      return kb * 1024;
    }
  }
  return 0;
}

}  // namespace lowband
