#include "worker/stage_trainer.h"

#include <cmath>
#include <exception>
#include <sstream>
#include <utility>

namespace lowband {
namespace {

std::string ShapeString(const torch::Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  s << "]";
  return s.str();
}

std::string DtypeString(const torch::Tensor& t) { return std::string(c10::toString(t.scalar_type())); }

std::string TorchError(const std::string& what, const c10::Error& e) {
  return what + ": " + e.what_without_backtrace();
}

// What a neighbour may send: the wire dtypes, or fp32 after FromWire.
bool IsWireFloat(const torch::Tensor& t) {
  const auto d = t.scalar_type();
  return d == torch::kFloat32 || d == torch::kBFloat16 || d == torch::kFloat16;
}

// ids must be int64 [rows, tokens] in [0, vocab); rows/tokens < 0: any.
Status CheckIds(const std::string& what, const char* name, const torch::Tensor& ids, int64_t rows, int64_t tokens,
                int64_t vocab) {
  if (!ids.defined()) return InvalidArgument(what + ": " + name + " undefined, expected int64 [mb, T]");
  if (ids.scalar_type() != torch::kInt64) {
    return InvalidArgument(what + ": " + name + " dtype " + DtypeString(ids) + ", expected Long (int64)");
  }
  if (ids.dim() != 2 || (rows >= 0 && ids.size(0) != rows) || (tokens >= 0 && ids.size(1) != tokens)) {
    const std::string want = "[" + (rows >= 0 ? std::to_string(rows) : std::string("mb")) + ", " +
                             (tokens >= 0 ? std::to_string(tokens) : std::string("T")) + "]";
    return InvalidArgument(what + ": " + name + " shape " + ShapeString(ids) + ", expected " + want);
  }
  if (ids.numel() == 0) return InvalidArgument(what + ": " + name + " shape " + ShapeString(ids) + " is empty");
  // One sync; out-of-range ids would throw on the CPU and trap the device on CUDA.
  if ((ids < 0).logical_or(ids >= vocab).any().item<bool>()) {
    return InvalidArgument(what + ": " + name + " has ids outside [0, " + std::to_string(vocab) + ")");
  }
  return Status::Ok();
}

Status ValidateArgs(const ModelConfig& m, const StageSpec& s, const InnerOptimizerConfig& o, int micro_batches) {
  std::vector<std::string> errors;
  if (m.layers < 1 || m.d_model < 1 || m.heads < 1 || m.context < 1 || m.vocab < 1) {
    errors.push_back("model: layers, d_model, heads, context and vocab must be positive");
  } else if (m.d_model % m.heads != 0) {
    errors.push_back("model: d_model " + std::to_string(m.d_model) + " not divisible by heads " +
                     std::to_string(m.heads));
  }
  if (s.stages < 1 || s.stage < 0 || s.stage >= s.stages) {
    errors.push_back("stage " + std::to_string(s.stage) + " not in [0, stages " + std::to_string(s.stages) + ")");
  }
  if (s.first_block < 0 || s.blocks < 0 || s.first_block + s.blocks > m.layers) {
    errors.push_back("blocks [" + std::to_string(s.first_block) + ", " + std::to_string(s.first_block + s.blocks) +
                     ") not within the model's " + std::to_string(m.layers) + " layers");
  }
  if (s.ratio < 1 || (m.d_model > 0 && m.d_model % s.ratio != 0)) {
    errors.push_back("ratio " + std::to_string(s.ratio) + " must be >= 1 and divide d_model " +
                     std::to_string(m.d_model));
  }
  if (micro_batches < 1) errors.push_back("micro_batches " + std::to_string(micro_batches) + " must be >= 1");
  if (!(o.lr > 0)) errors.push_back("lr must be > 0");
  if (!(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1)) errors.push_back("betas must be in [0, 1)");
  if (!(o.eps > 0)) errors.push_back("eps must be > 0");
  if (!(o.weight_decay >= 0)) errors.push_back("weight_decay must be >= 0");
  if (!(o.grad_clip >= 0)) errors.push_back("grad_clip must be >= 0 (0 = off)");
  if (o.warmup_steps < 0) errors.push_back("warmup_steps must be >= 0");
  if (errors.empty()) return Status::Ok();
  std::string msg = "StageTrainer:";
  for (const auto& e : errors) msg += " " + e + ";";
  msg.pop_back();
  return InvalidArgument(msg);
}

// A tensor to hand out: `dtype`, CPU, contiguous, never sharing storage with
// `t` (which may live on in the graph or the stash).
torch::Tensor Detached(const torch::Tensor& t, torch::Dtype dtype) {
  torch::Tensor out = t.detach().to(torch::kCPU, dtype).contiguous();
  if (out.data_ptr() == t.data_ptr()) out = out.clone();
  return out;
}

}  // namespace

StageTrainer::StageTrainer(const ModelConfig& model, const StageSpec& spec, const InnerOptimizerConfig& optimizer,
                           WireDtype wire, int micro_batches, torch::Device device)
    : model_config_(model),
      spec_(spec),
      optimizer_config_(optimizer),
      wire_(wire),
      device_(device),
      slots_(static_cast<size_t>(micro_batches)) {}

StageTrainer::~StageTrainer() = default;

StatusOr<std::unique_ptr<StageTrainer>> StageTrainer::Create(const ModelConfig& model, const StageSpec& spec,
                                                             const InnerOptimizerConfig& optimizer, WireDtype wire,
                                                             int micro_batches, torch::Device device,
                                                             uint64_t seed) {
  LOWBAND_RETURN_IF_ERROR(ValidateArgs(model, spec, optimizer, micro_batches));
  try {
    std::unique_ptr<StageTrainer> t(new StageTrainer(model, spec, optimizer, wire, micro_batches, device));
    t->module_ = MakeGptStage(model, spec, seed);
    t->module_->to(device);
    t->module_->train();
    // ToWire's dtype mapping, so one conversion goes straight to the CPU.
    t->wire_scalar_ = ToWire(torch::zeros({0}), wire).scalar_type();
    for (const auto& item : t->module_->named_parameters(/*recurse=*/true)) {
      t->layout_.tensors.push_back(TensorSpec{item.key(), item.value().sizes().vec()});
    }
    // Trainer's conventions: decoupled weight decay on matrices (linear
    // weights, embeddings) only; biases and LayerNorm parameters undecayed.
    std::vector<torch::Tensor> decay, no_decay;
    for (auto& p : t->module_->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
    auto options = [&](double wd) {
      return torch::optim::AdamWOptions(optimizer.lr)
          .betas(std::make_tuple(optimizer.beta1, optimizer.beta2))
          .eps(optimizer.eps)
          .weight_decay(wd);
    };
    std::vector<torch::optim::OptimizerParamGroup> groups;
    if (!decay.empty()) {
      groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(options(optimizer.weight_decay)));
    }
    if (!no_decay.empty()) groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(options(0.0)));
    if (!groups.empty()) {
      t->optimizer_ = std::make_unique<torch::optim::AdamW>(std::move(groups), options(optimizer.weight_decay));
    }
    return t;
  } catch (const c10::Error& e) {
    return Internal(TorchError("StageTrainer: create stage " + std::to_string(spec.stage), e));
  } catch (const std::exception& e) {
    return Internal("StageTrainer: create stage " + std::to_string(spec.stage) + ": " + e.what());
  }
}

int64_t StageTrainer::boundary_width() const { return module_->boundary_width(); }

std::vector<torch::Tensor> StageTrainer::parameters() const { return module_->parameters(/*recurse=*/true); }

Status StageTrainer::CheckIndex(const char* op, int micro_batch) const {
  if (micro_batch < 0 || micro_batch >= micro_batches()) {
    return InvalidArgument(std::string(op) + ": stage " + std::to_string(spec_.stage) + " micro-batch " +
                           std::to_string(micro_batch) + " not in [0, " + std::to_string(micro_batches()) + ")");
  }
  return Status::Ok();
}

StatusOr<std::pair<torch::Tensor, torch::Tensor>> StageTrainer::PrepareInputs(const std::string& what,
                                                                              const torch::Tensor& input,
                                                                              const torch::Tensor& targets,
                                                                              int64_t rows, int64_t tokens) const {
  torch::Tensor x, y;
  if (first()) {
    LOWBAND_RETURN_IF_ERROR(CheckIds(what, "input tokens", input, rows, tokens, model_config_.vocab));
    if (input.size(1) > model_config_.context) {
      return InvalidArgument(what + ": input tokens shape " + ShapeString(input) + ": T exceeds context " +
                             std::to_string(model_config_.context));
    }
    x = input.to(device_);
  } else {
    const int64_t width = boundary_width();
    if (!input.defined()) return InvalidArgument(what + ": input undefined, expected a boundary tensor");
    if (!IsWireFloat(input)) {
      return InvalidArgument(what + ": input dtype " + DtypeString(input) + ", expected Float, BFloat16 or Half");
    }
    if (input.dim() != 3 || input.size(2) != width || (rows >= 0 && input.size(0) != rows) ||
        (tokens >= 0 && input.size(1) != tokens) || input.size(0) < 1 || input.size(1) < 1 ||
        input.size(1) > model_config_.context) {
      const std::string want = "[" + (rows >= 0 ? std::to_string(rows) : std::string("mb")) + ", " +
                               (tokens >= 0 ? std::to_string(tokens) : std::string("T")) + ", " +
                               std::to_string(width) + "]";
      return InvalidArgument(what + ": input shape " + ShapeString(input) + ", expected " + want +
                             " (T <= context " + std::to_string(model_config_.context) + ")");
    }
    // A copy, so the leaf we mark requires_grad is ours, not the caller's.
    x = FromWire(input).to(device_).detach().clone();
  }
  if (last()) {
    LOWBAND_RETURN_IF_ERROR(CheckIds(what, "targets", targets, x.size(0), x.size(1), model_config_.vocab));
    y = targets.to(device_);
  }
  return std::make_pair(std::move(x), std::move(y));
}

torch::Tensor StageTrainer::CrossEntropy(const torch::Tensor& logits, const torch::Tensor& targets) const {
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

StatusOr<torch::Tensor> StageTrainer::Forward(int micro_batch, const torch::Tensor& input,
                                              const torch::Tensor& targets) {
  LOWBAND_RETURN_IF_ERROR(CheckIndex("Forward", micro_batch));
  const std::string what =
      "Forward stage " + std::to_string(spec_.stage) + " micro-batch " + std::to_string(micro_batch);
  Slot& slot = slots_[static_cast<size_t>(micro_batch)];
  if (slot.state != SlotState::kIdle) {
    return FailedPrecondition(what + ": already forwarded in this step" +
                              (slot.state == SlotState::kDone ? " (and backward)" : ""));
  }
  try {
    LOWBAND_ASSIGN_OR_RETURN(auto xy, PrepareInputs(what, input, targets, step_rows_, step_tokens_));
    torch::Tensor x = std::move(xy.first);
    if (!first()) x.requires_grad_(true);
    torch::Tensor out = module_->forward(x);
    torch::Tensor result;
    if (last()) {
      torch::Tensor loss = CrossEntropy(out, xy.second);
      slot.output = loss / static_cast<double>(micro_batches());
      result = Detached(loss, torch::kFloat32);
    } else {
      slot.output = out;
      result = Detached(out, wire_scalar_);
    }
    slot.input = first() ? torch::Tensor() : x;
    slot.state = SlotState::kForwarded;
    step_rows_ = x.size(0);
    step_tokens_ = x.size(1);
    return result;
  } catch (const c10::Error& e) {
    slot = Slot{};
    return Internal(TorchError(what, e));
  } catch (const std::exception& e) {
    slot = Slot{};
    return Internal(what + ": " + e.what());
  }
}

StatusOr<torch::Tensor> StageTrainer::Backward(int micro_batch, const torch::Tensor& grad_output) {
  LOWBAND_RETURN_IF_ERROR(CheckIndex("Backward", micro_batch));
  const std::string what =
      "Backward stage " + std::to_string(spec_.stage) + " micro-batch " + std::to_string(micro_batch);
  Slot& slot = slots_[static_cast<size_t>(micro_batch)];
  if (slot.state == SlotState::kIdle) return FailedPrecondition(what + ": not forwarded in this step");
  if (slot.state == SlotState::kDone) return FailedPrecondition(what + ": already backward in this step");
  if (last()) {
    if (grad_output.defined()) {
      return InvalidArgument(what + ": the last stage takes no grad_output (got " + ShapeString(grad_output) +
                             "); its gradient source is its own loss");
    }
  } else {
    if (!grad_output.defined()) return InvalidArgument(what + ": grad_output undefined");
    if (!IsWireFloat(grad_output)) {
      return InvalidArgument(what + ": grad_output dtype " + DtypeString(grad_output) +
                             ", expected Float, BFloat16 or Half");
    }
    if (grad_output.sizes() != slot.output.sizes()) {
      return InvalidArgument(what + ": grad_output shape " + ShapeString(grad_output) + ", expected " +
                             ShapeString(slot.output));
    }
  }
  try {
    if (last()) {
      slot.output.backward();
    } else {
      slot.output.backward(FromWire(grad_output).to(device_));
    }
    torch::Tensor result;
    if (!first()) {
      torch::Tensor g = slot.input.grad();
      if (!g.defined()) g = torch::zeros_like(slot.input);  // output independent of input: zero gradient
      result = Detached(g, wire_scalar_);
    }
    slot = Slot{};
    slot.state = SlotState::kDone;
    return result;
  } catch (const c10::Error& e) {
    slot = Slot{};
    broken_ = true;
    return Internal(TorchError(what, e));
  } catch (const std::exception& e) {
    slot = Slot{};
    broken_ = true;
    return Internal(what + ": " + e.what());
  }
}

bool StageTrainer::StepComplete() const {
  for (const auto& s : slots_) {
    if (s.state != SlotState::kDone) return false;
  }
  return !broken_;
}

StatusOr<double> StageTrainer::GradSquaredNorm() const {
  if (!StepComplete()) return FailedPrecondition("GradSquaredNorm: stage " + std::to_string(spec_.stage) +
                                                 ": step incomplete");
  try {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> sums;
    for (const auto& p : parameters()) {
      if (p.grad().defined()) sums.push_back(p.grad().pow(2).sum().to(torch::kFloat64));
    }
    if (sums.empty()) return 0.0;
    return torch::stack(sums).sum().item<double>();  // one sync
  } catch (const c10::Error& e) {
    return Internal(TorchError("GradSquaredNorm", e));
  }
}

double StageTrainer::LearningRate() const {
  const auto& o = optimizer_config_;
  if (o.warmup_steps > 0 && step_count_ < o.warmup_steps) {
    return o.lr * static_cast<double>(step_count_ + 1) / static_cast<double>(o.warmup_steps);
  }
  return o.lr;
}

Status StageTrainer::Step(std::optional<double> global_grad_norm) {
  const std::string what = "Step stage " + std::to_string(spec_.stage) + " (step " + std::to_string(step_count_) + ")";
  if (broken_) return FailedPrecondition(what + ": a Backward failed in this step; Abort() first");
  std::string no_forward, no_backward;
  for (size_t m = 0; m < slots_.size(); ++m) {
    if (slots_[m].state == SlotState::kIdle) no_forward += (no_forward.empty() ? "" : ", ") + std::to_string(m);
    if (slots_[m].state == SlotState::kForwarded) {
      no_backward += (no_backward.empty() ? "" : ", ") + std::to_string(m);
    }
  }
  if (!no_forward.empty() || !no_backward.empty()) {
    std::string msg = what + ": step incomplete (" + std::to_string(slots_.size()) + " micro-batches):";
    if (!no_forward.empty()) msg += " no forward for " + no_forward + ";";
    if (!no_backward.empty()) msg += " no backward for " + no_backward + ";";
    msg.pop_back();
    return FailedPrecondition(msg);
  }
  try {
    const auto params = parameters();
    const double clip = optimizer_config_.grad_clip;
    double norm = 0;
    if (global_grad_norm.has_value()) {
      norm = *global_grad_norm;
    } else {
      LOWBAND_ASSIGN_OR_RETURN(const double sq, GradSquaredNorm());
      norm = std::sqrt(sq);
    }
    if (!std::isfinite(norm)) {
      ClearStep();
      return Internal(what + ": non-finite gradient norm; step dropped, parameters unchanged");
    }
    if (clip > 0) {
      // As torch::nn::utils::clip_grad_norm_, but with a norm that may span
      // every stage of the pipeline.
      const double coef = clip / (norm + 1e-6);
      if (coef < 1) {
        torch::NoGradGuard no_grad;
        for (const auto& p : params) {
          if (p.grad().defined()) p.grad().mul_(coef);
        }
      }
    }
    if (optimizer_) {
      const double lr = LearningRate();
      for (auto& group : optimizer_->param_groups()) {
        static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
      }
      optimizer_->step();
    }
    ClearStep();
    ++step_count_;
    return Status::Ok();
  } catch (const c10::Error& e) {
    ClearStep();
    return Internal(TorchError(what, e));
  } catch (const std::exception& e) {
    ClearStep();
    return Internal(what + ": " + e.what());
  }
}

void StageTrainer::ClearStep() {
  for (auto& s : slots_) s = Slot{};
  // Drop (not zero) the gradients: the next backward starts them afresh,
  // and no memory is held between steps. Same on LibTorch 1.13 and 2.x.
  for (auto& p : parameters()) p.mutable_grad() = torch::Tensor();
  step_rows_ = -1;
  step_tokens_ = -1;
  broken_ = false;
}

void StageTrainer::Abort() { ClearStep(); }

StatusOr<torch::Tensor> StageTrainer::Evaluate(const torch::Tensor& input, const torch::Tensor& targets) {
  const std::string what = "Evaluate stage " + std::to_string(spec_.stage);
  try {
    torch::NoGradGuard no_grad;
    LOWBAND_ASSIGN_OR_RETURN(auto xy, PrepareInputs(what, input, targets, -1, -1));
    module_->eval();
    torch::Tensor out = module_->forward(xy.first);
    module_->train();
    if (last()) return Detached(CrossEntropy(out, xy.second), torch::kFloat32);
    return Detached(out, wire_scalar_);
  } catch (const c10::Error& e) {
    module_->train();
    return Internal(TorchError(what, e));
  } catch (const std::exception& e) {
    module_->train();
    return Internal(what + ": " + e.what());
  }
}

}  // namespace lowband
