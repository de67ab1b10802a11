#include "worker/stage_replica.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <optional>
#include <random>

#include "ml/codec_device.h"
#include "base/log.h"
#include "worker/pipeline_runner.h"
#include "worker/pipeline_schedule.h"
#include "worker/stage_trainer.h"
#include "worker/welcome_config.h"

namespace lowband {
namespace {

using Clock = std::chrono::steady_clock;

StatusOr<torch::Device> StageDevice(const std::string& device) {
  if (device == "cpu") return torch::Device(torch::kCPU);
  if (device != "cuda" && device.rfind("cuda:", 0) != 0) {
    return InvalidArgument("device \"" + device + "\" is not one of cpu, cuda, cuda:N");
  }
  if (!torch::cuda::is_available()) {
    return Unavailable("device \"" + device + "\" requested but CUDA is not available");
  }
  try {
    torch::Device d(device);
    if (d.has_index() && d.index() >= static_cast<int>(torch::cuda::device_count())) {
      return Unavailable("device \"" + device + "\" requested but only " +
                         std::to_string(torch::cuda::device_count()) + " CUDA device(s) are visible");
    }
    return d;
  } catch (const c10::Error& e) {
    return InvalidArgument("device \"" + device + "\": " + e.what_without_backtrace());
  }
}

torch::Tensor ToTensor(const std::vector<int64_t>& v, int batch, int length) {
  auto opts = torch::TensorOptions().dtype(torch::kInt64);
  return torch::from_blob(const_cast<int64_t*>(v.data()), {batch, length}, opts).clone();
}

}  // namespace

struct StageReplica::Impl {
  Welcome welcome;
  const Corpus* corpus = nullptr;
  torch::Device device{torch::kCPU};
  std::mt19937_64 rng;  // stage 0's batch sampling; state persists across rounds
  std::unique_ptr<StageTrainer> trainer;
  std::unique_ptr<PipelineRunner> runner;
  std::unique_ptr<DeviceEncoder> encoder;
  LayoutPlan plan;
  ParamSet global;                        // CPU fp32 committed parameters of the stage
  std::optional<uint64_t> global_digest;  // of `global`; reset when it changes
  torch::Tensor global_flat;              // the same on the device
  std::vector<torch::Tensor> global_dev;  // views of global_flat, layout order
  bool model_is_global = false;
  std::map<uint32_t, uint32_t> train_attempts;  // round -> training attempts begun
  std::map<uint32_t, uint32_t> eval_attempts;   // round -> evaluations begun
  uint32_t epoch = 0;                           // Welcome.pipeline_epoch

  int batch() const { return welcome.training.batch_size; }
  int context() const { return welcome.model.context; }

  Status LoadGlobal() try {
    torch::NoGradGuard no_grad;
    MirrorToDevice(global, device, &global_flat, &global_dev);
    RestoreGlobal();
    return Status::Ok();
  } catch (const c10::Error& e) {
    return Internal(std::string("stage: loading the global parameters: ") + e.what_without_backtrace());
  }

  void RestoreGlobal() {
    torch::NoGradGuard no_grad;
    auto params = trainer->parameters();
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(global_dev[i]);
    model_is_global = true;
  }

  // Stage 0's validation batch `index`: full batches only (every stage
  // checks [B, T]), cycling if the split has fewer than asked for.
  StatusOr<TokenBatch> ValidationBatch(int index) const {
    const size_t window = static_cast<size_t>(context()) + 1;
    const size_t full = corpus->val_tokens() / window / static_cast<size_t>(batch());
    if (full == 0) {
      return FailedPrecondition("stage 0: validation text holds no full batch of " + std::to_string(batch()) +
                                " windows of " + std::to_string(window) + " tokens");
    }
    return corpus->ValidationBatch(static_cast<int>(static_cast<size_t>(index) % full), batch(), context());
  }
};

StageReplica::StageReplica(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
StageReplica::~StageReplica() = default;

StatusOr<std::unique_ptr<StageReplica>> StageReplica::Create(const Welcome& w, const std::string& device,
                                                             int threads, const Corpus* corpus,
                                                             PeerChannel* channel) {
  const ModelConfig model = ToConfig(w.model);
  const TrainingConfig training = ToConfig(w.training);
  const PipelineConfig pc = ToConfig(w.pipeline);
  if (pc.stages < 2 || w.stage < 0 || w.stage >= pc.stages) {
    return InvalidArgument("stage " + std::to_string(w.stage) + " of " + std::to_string(pc.stages) +
                           " is not a pipeline stage");
  }
  if (corpus == nullptr || channel == nullptr) return InvalidArgument("stage replica: no corpus or no peer channel");
  const std::vector<int> blocks = StageBlocks(model.layers, pc);
  if (static_cast<int>(blocks.size()) != pc.stages) {
    return InvalidArgument("pipeline split has " + std::to_string(blocks.size()) + " entries for " +
                           std::to_string(pc.stages) + " stages");
  }
  StageSpec spec{w.stage, pc.stages, 0, blocks[static_cast<size_t>(w.stage)], pc.ratio};
  for (int s = 0; s < w.stage; ++s) spec.first_block += blocks[static_cast<size_t>(s)];
  LOWBAND_ASSIGN_OR_RETURN(ScheduleKind schedule, ParseScheduleKind(pc.schedule));
  LOWBAND_ASSIGN_OR_RETURN(torch::Device dev, StageDevice(device));
  try {
    if (threads > 0) torch::set_num_threads(threads);
    auto impl = std::make_unique<Impl>();
    impl->welcome = w;
    impl->corpus = corpus;
    impl->device = dev;
    impl->rng.seed(w.data_seed);
    LOWBAND_ASSIGN_OR_RETURN(impl->trainer, StageTrainer::Create(model, spec, training.inner, pc.wire_dtype,
                                                                 pc.micro_batches, dev, training.seed));
    PipelineRunnerOptions options;
    options.schedule = schedule;
    options.wire = pc.wire_dtype;
    options.batch_size = training.batch_size;
    options.tokens = model.context;
    options.peer_timeout = std::chrono::milliseconds(pc.peer_timeout_ms);
    LOWBAND_ASSIGN_OR_RETURN(impl->runner, PipelineRunner::Create(impl->trainer.get(), channel, options));
    const ParamLayout& layout = impl->trainer->layout();
    impl->plan = PlanLayout(layout, w.codec.topk);
    LOWBAND_ASSIGN_OR_RETURN(impl->encoder, DeviceEncoder::Create(layout, ToConfig(w.codec), dev));
    // The stage's own initial values until the coordinator's sync replaces them.
    impl->global.layout = layout;
    for (const auto& p : impl->trainer->parameters()) {
      torch::Tensor v = p.detach().to(torch::kCPU).contiguous();
      const float* f = v.data_ptr<float>();
      impl->global.values.insert(impl->global.values.end(), f, f + v.numel());
    }
    LOWBAND_RETURN_IF_ERROR(impl->LoadGlobal());
    return std::unique_ptr<StageReplica>(new StageReplica(std::move(impl)));
  } catch (const c10::Error& e) {
    return Internal(std::string("stage replica: create: ") + e.what_without_backtrace());
  }
}

const ParamLayout& StageReplica::layout() const { return impl_->trainer->layout(); }
const LayoutPlan& StageReplica::plan() const { return impl_->plan; }
const ParamSet& StageReplica::global() const { return impl_->global; }

uint64_t StageReplica::GlobalDigest() {
  if (!impl_->global_digest) impl_->global_digest = impl_->global.Digest();
  return *impl_->global_digest;
}
int StageReplica::stage() const { return impl_->trainer->spec().stage; }
bool StageReplica::last() const { return impl_->trainer->last(); }

Status StageReplica::SetGlobal(ParamSet params) {
  if (!(params.layout == layout())) {
    return InvalidArgument("stage SetGlobal: layout " + DigestHex(params.layout.Digest()) +
                           " does not match the stage's " + DigestHex(layout().Digest()));
  }
  if (static_cast<int64_t>(params.values.size()) != layout().numel()) {
    return InvalidArgument("stage SetGlobal: " + std::to_string(params.values.size()) + " values, layout needs " +
                           std::to_string(layout().numel()));
  }
  impl_->global = std::move(params);
  impl_->global_digest.reset();
  return impl_->LoadGlobal();
}

Status StageReplica::RestartFromGlobal() { return impl_->LoadGlobal(); }

void StageReplica::SetEpoch(uint32_t epoch) {
  impl_->epoch = epoch;
  impl_->train_attempts.clear();
  impl_->eval_attempts.clear();
}

StatusOr<TrainResult> StageReplica::TrainRound(uint32_t round, int inner_steps) {
  if (inner_steps < 1) return InvalidArgument("stage TrainRound: inner_steps must be >= 1");
  Impl& s = *impl_;
  const uint32_t attempt = s.train_attempts[round]++;
  const uint32_t base_step = (s.epoch << 20) + attempt * static_cast<uint32_t>(inner_steps);
  try {
    if (!s.model_is_global) s.RestoreGlobal();
    s.model_is_global = false;
    TrainResult result;
    double loss_sum = 0;
    double time_ms = 0;
    for (int i = 0; i < inner_steps; ++i) {
      const auto start = Clock::now();
      torch::Tensor x, y;
      if (s.trainer->first()) {
        TokenBatch b = s.corpus->SampleTrain(s.batch(), s.context(), &s.rng);
        x = ToTensor(b.inputs, b.batch, b.length);
        y = ToTensor(b.targets, b.batch, b.length);
      }
      auto step = s.runner->TrainStep(round, base_step + static_cast<uint32_t>(i), x, y);
      if (!step.ok()) return step.status();
      if (s.trainer->last()) loss_sum += step->loss;
      time_ms += std::chrono::duration<double, std::milli>(Clock::now() - start).count();
      result.tokens += static_cast<uint64_t>(step->tokens);
    }
    result.steps = inner_steps;
    result.mean_loss = s.trainer->last() ? loss_sum / inner_steps : 0.0;
    result.step_time_ms = time_ms / inner_steps;

    std::vector<torch::Tensor> delta;
    std::vector<torch::Tensor> peaks;
    {
      torch::NoGradGuard no_grad;
      auto params = s.trainer->parameters();
      for (size_t i = 0; i < params.size(); ++i) {
        delta.push_back(s.global_dev[i] - params[i].detach());
        peaks.push_back(delta.back().abs().max());
      }
    }
    const double peak = torch::stack(peaks).max().item<double>();
    if (!std::isfinite(peak)) {
      return Internal("stage TrainRound: non-finite parameters after " + std::to_string(inner_steps) +
                      " steps; training diverged");
    }
    LOWBAND_ASSIGN_OR_RETURN(result.upload, s.encoder->Encode(delta));
    return result;
  } catch (const c10::Error& e) {
    return Internal(std::string("stage TrainRound: ") + e.what_without_backtrace());
  }
}

Status StageReplica::ApplyUpdate(const Update& update) {
  impl_->global_digest.reset();
  LOWBAND_RETURN_IF_ERROR(lowband::ApplyUpdate(impl_->plan, update, &impl_->global.values));
  return impl_->LoadGlobal();
}

StatusOr<EvalResult> StageReplica::Evaluate(uint32_t round) {
  Impl& s = *impl_;
  const int batches = std::max(s.welcome.training.eval_batches, 1);
  const uint32_t attempt = s.eval_attempts[round]++;
  const uint32_t base = (s.epoch << 20) + attempt * static_cast<uint32_t>(batches);
  try {
    if (!s.model_is_global) s.RestoreGlobal();
    EvalResult result;
    double loss_sum = 0;
    for (int i = 0; i < batches; ++i) {
      torch::Tensor x, y;
      if (s.trainer->first()) {
        LOWBAND_ASSIGN_OR_RETURN(TokenBatch b, s.ValidationBatch(i));
        x = ToTensor(b.inputs, b.batch, b.length);
        y = ToTensor(b.targets, b.batch, b.length);
      }
      LOWBAND_ASSIGN_OR_RETURN(double loss, s.runner->EvalBatch(round, base + static_cast<uint32_t>(i), x, y));
      if (s.trainer->last()) {
        loss_sum += loss;
        result.tokens += static_cast<uint64_t>(s.batch()) * static_cast<uint64_t>(s.context());
      }
    }
    if (s.trainer->last()) result.loss = loss_sum / batches;
    return result;
  } catch (const c10::Error& e) {
    return Internal(std::string("stage Evaluate: ") + e.what_without_backtrace());
  }
}

}  // namespace lowband
