#include "worker/pipeline_runner.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <sstream>

#include "base/log.h"
#include "codec/params.h"

// Bulk bytes are little-endian tensor bytes, copied as they are.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "pipeline bulk bytes assume a little-endian host");

namespace lowband {
namespace {

using Clock = std::chrono::steady_clock;

const char* KindName(bool labels, bool backward) {
  if (labels) return "labels";
  return backward ? "gradient" : "input";
}

std::string ShapeString(const torch::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  s << "]";
  return s.str();
}

torch::Dtype WireScalar(WireDtype dtype) {
  switch (dtype) {
    case WireDtype::kFp32:
      return torch::kFloat32;
    case WireDtype::kBf16:
      return torch::kBFloat16;
    case WireDtype::kFp16:
      return torch::kFloat16;
  }
  return torch::kFloat32;
}

// A tensor of `dtype` and `shape` holding a copy of `bulk`, whose size
// CheckActivation already matched to the shape.
torch::Tensor TensorFromBytes(const Bytes& bulk, torch::Dtype dtype, std::vector<int64_t> shape) {
  torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
  LOWBAND_CHECK(static_cast<size_t>(t.numel()) * t.element_size() == bulk.size());
  if (!bulk.empty()) std::memcpy(t.data_ptr(), bulk.data(), bulk.size());
  return t;
}

Bytes BytesFromTensor(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kCPU).contiguous();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  return Bytes(p, p + static_cast<size_t>(c.numel()) * c.element_size());
}

std::string TorchError(const std::string& what, const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return what + ": " + c->what_without_backtrace();
  return what + ": " + e.what();
}

}  // namespace

StatusOr<std::unique_ptr<PipelineRunner>> PipelineRunner::Create(StageTrainer* trainer, PeerChannel* channel,
                                                                 const PipelineRunnerOptions& options) {
  std::vector<std::string> errors;
  if (trainer == nullptr) errors.push_back("trainer is null");
  if (channel == nullptr) errors.push_back("channel is null");
  if (options.tokens < 1) errors.push_back("tokens " + std::to_string(options.tokens) + " must be >= 1");
  if (options.peer_timeout.count() <= 0) {
    errors.push_back("peer_timeout " + std::to_string(options.peer_timeout.count()) + " ms must be positive");
  }
  std::optional<StageSchedule> schedule;
  if (trainer != nullptr) {
    const int m = trainer->micro_batches();
    if (options.batch_size < 1 || options.batch_size % m != 0) {
      errors.push_back("batch_size " + std::to_string(options.batch_size) + " must be a positive multiple of " +
                       std::to_string(m) + " micro-batches");
    }
    // The wire carries 32-bit counts.
    if (options.batch_size > std::numeric_limits<uint32_t>::max() ||
        options.tokens > std::numeric_limits<uint32_t>::max()) {
      errors.push_back("batch_size and tokens must fit in 32 bits");
    }
    auto s = StageSchedule::Create(options.schedule, trainer->spec().stages, trainer->spec().stage, m);
    if (s.ok()) {
      schedule = std::move(s).value();
    } else {
      errors.push_back(s.status().message());
    }
  }
  if (!errors.empty()) {
    std::string msg = "PipelineRunner:";
    for (const auto& e : errors) msg += " " + e + ";";
    msg.pop_back();
    return InvalidArgument(msg);
  }
  return std::unique_ptr<PipelineRunner>(new PipelineRunner(trainer, channel, options, std::move(*schedule)));
}

PipelineRunner::PipelineRunner(StageTrainer* trainer, PeerChannel* channel, const PipelineRunnerOptions& options,
                               StageSchedule schedule)
    : trainer_(trainer),
      channel_(channel),
      options_(options),
      schedule_(std::move(schedule)),
      stages_(trainer->spec().stages),
      stage_(trainer->spec().stage),
      micro_batches_(trainer->micro_batches()),
      width_(trainer->boundary_width()) {}

std::string PipelineRunner::Where() const {
  return "stage " + std::to_string(stage_) + " round " + std::to_string(key_.first) +
         (eval_ ? " eval batch " : " step ") + std::to_string(key_.second);
}

void PipelineRunner::Begin(bool eval, uint32_t round, uint32_t step) {
  eval_ = eval;
  key_ = Key{round, step};
  (eval ? last_eval_ : last_train_) = key_;
  slots_ = eval ? 1 : micro_batches_;
  rows_ = eval ? options_.batch_size : options_.batch_size / micro_batches_;
  const size_t n = static_cast<size_t>(slots_);
  inputs_.assign(n, torch::Tensor());
  labels_.assign(n, torch::Tensor());
  grads_.assign(n, torch::Tensor());
  got_input_.assign(n, false);
  got_labels_.assign(n, false);
  got_grad_.assign(n, false);
  inputs_got_ = labels_got_ = grads_got_ = 0;
  loss_sum_ = 0;
  result_ = PipelineStepResult{};
  schedule_.Reset();
}

void PipelineRunner::End(bool failed) {
  if (failed && !eval_) trainer_->Abort();
  schedule_.Reset();
  // Release the tensors now rather than at the next call.
  inputs_.clear();
  labels_.clear();
  grads_.clear();
}

Status PipelineRunner::CheckBatch(const torch::Tensor& inputs, const torch::Tensor& targets) const {
  const int64_t b = options_.batch_size, t = options_.tokens;
  for (const auto& [name, x] : {std::make_pair("inputs", inputs), std::make_pair("targets", targets)}) {
    if (!x.defined() || x.scalar_type() != torch::kInt64 || x.dim() != 2 || x.size(0) != b || x.size(1) != t) {
      return InvalidArgument(Where() + ": " + name + " must be int64 [" + std::to_string(b) + ", " +
                             std::to_string(t) + "], got " + ShapeString(x) +
                             (x.defined() ? std::string(" ") + c10::toString(x.scalar_type()) : ""));
    }
  }
  // Targets cross as int32: out-of-range ids must not wrap into valid ones.
  if (stages_ > 1 && (targets.min().item<int64_t>() < 0 ||
                      targets.max().item<int64_t>() > std::numeric_limits<int32_t>::max())) {
    return InvalidArgument(Where() + ": targets hold ids outside [0, 2^31)");
  }
  return Status::Ok();
}

Status PipelineRunner::SendTensor(int to_stage, Kind kind, int micro_batch, const torch::Tensor& t) {
  Activation a;
  a.round = key_.first;
  a.step = key_.second;
  a.micro_batch = static_cast<uint32_t>(micro_batch);
  a.stage = static_cast<uint32_t>(stage_);
  a.backward = kind == Kind::kGradient;
  a.labels = kind == Kind::kLabels;
  a.eval = eval_;
  a.batch = static_cast<uint32_t>(rows_);
  a.tokens = static_cast<uint32_t>(options_.tokens);
  a.width = kind == Kind::kLabels ? 1 : static_cast<uint32_t>(width_);
  a.dtype = options_.wire;
  const torch::Dtype want = kind == Kind::kLabels ? LabelScalar() : WireScalar(options_.wire);
  if (t.scalar_type() != want || t.numel() != static_cast<int64_t>(a.batch) * a.tokens * a.width) {
    // The trainer's output disagrees with the configuration: a bug, but the
    // trainer's, so a Status rather than an abort.
    return Internal(Where() + ": " + KindName(a.labels, a.backward) + " for stage " + std::to_string(to_stage) +
                    " is " + ShapeString(t) + " " + c10::toString(t.scalar_type()) + ", expected " +
                    std::to_string(uint64_t{a.batch} * a.tokens * a.width) + " values of " +
                    c10::toString(want));
  }
  Bytes bulk = BytesFromTensor(t);
  a.blob.num_elements = static_cast<uint64_t>(t.numel());
  a.blob.byte_length = bulk.size();
  a.blob.checksum = BulkChecksum(bulk.data(), bulk.size());
  const uint64_t n = bulk.size();
  Status st = channel_->Send(to_stage, a, std::move(bulk));
  if (!st.ok()) {
    return Status(st.code(), Where() + ": send " + KindName(a.labels, a.backward) + " of micro-batch " +
                                 std::to_string(micro_batch) + " to stage " + std::to_string(to_stage) + ": " +
                                 st.message());
  }
  result_.bytes_sent += n;
  return Status::Ok();
}

// Target ids cross as the narrowest integer type for the vocabulary.
torch::Dtype PipelineRunner::LabelScalar() const {
  switch (LabelBytes(trainer_->model_config().vocab)) {
    case 1: return torch::kUInt8;
    case 2: return torch::kInt16;
    default: return torch::kInt32;
  }
}

Status PipelineRunner::SendLabels(const torch::Tensor& targets) {
  for (int m = 0; m < slots_; ++m) {
    LOWBAND_RETURN_IF_ERROR(
        SendTensor(stages_ - 1, Kind::kLabels, m, targets.narrow(0, m * rows_, rows_).to(LabelScalar())));
  }
  return Status::Ok();
}

ActivationExpect PipelineRunner::Expect(Kind kind) const {
  ActivationExpect e;
  e.round = key_.first;
  e.step = key_.second;
  e.micro_batches = static_cast<uint32_t>(slots_);
  e.backward = kind == Kind::kGradient;
  e.labels = kind == Kind::kLabels;
  e.label_bytes = LabelBytes(trainer_->model_config().vocab);
  e.eval = eval_;
  e.from_stage = static_cast<uint32_t>(kind == Kind::kLabels ? 0 : kind == Kind::kInput ? stage_ - 1 : stage_ + 1);
  e.batch = static_cast<uint32_t>(rows_);
  e.tokens = static_cast<uint32_t>(options_.tokens);
  e.width = kind == Kind::kLabels ? 1 : static_cast<uint32_t>(width_);
  e.dtype = options_.wire;
  return e;
}

Status PipelineRunner::Accept(const Activation& a, const Bytes& bulk) {
  const std::string what = Where() + ": " + KindName(a.labels, a.backward) + " from stage " +
                           std::to_string(a.stage) + " micro-batch " + std::to_string(a.micro_batch);
  Kind kind;
  if (a.labels) {
    if (!last() || first()) return InvalidArgument(what + ": labels go to the last stage only, not here");
    kind = Kind::kLabels;
  } else if (a.backward) {
    if (last() || eval_) {
      return InvalidArgument(what + ": no gradient is expected " +
                             (eval_ ? std::string("in an eval pass") : std::string("by the last stage")));
    }
    kind = Kind::kGradient;
  } else {
    if (first()) return InvalidArgument(what + ": stage 0 takes no input from a neighbour");
    kind = Kind::kInput;
  }
  Status check = CheckActivation(a, bulk, Expect(kind));
  if (!check.ok()) return InvalidArgument(what + ": " + check.message());
  if (a.blob.byte_length != bulk.size()) {
    return InvalidArgument(what + ": header byte_length " + std::to_string(a.blob.byte_length) +
                           " but the bulk has " + std::to_string(bulk.size()) + " bytes");
  }
  if (BulkChecksum(bulk.data(), bulk.size()) != a.blob.checksum) return Corruption(what + ": bulk checksum mismatch");

  // CheckActivation bounded the id by the call's micro-batch count.
  const int m = static_cast<int>(a.micro_batch);
  const size_t i = static_cast<size_t>(m);
  std::vector<bool>& got = kind == Kind::kInput ? got_input_ : kind == Kind::kLabels ? got_labels_ : got_grad_;
  if (got[i]) return InvalidArgument(what + ": duplicate, already received in this " + (eval_ ? "pass" : "step"));
  try {
    if (kind == Kind::kLabels) {
      labels_[i] = TensorFromBytes(bulk, LabelScalar(), {rows_, options_.tokens}).to(torch::kInt64);
    } else {
      torch::Tensor t = TensorFromBytes(bulk, WireScalar(options_.wire), {rows_, options_.tokens, width_});
      (kind == Kind::kInput ? inputs_ : grads_)[i] = std::move(t);
    }
  } catch (const std::exception& e) {
    return Internal(TorchError(what, e));
  }
  got[i] = true;
  (kind == Kind::kInput ? inputs_got_ : kind == Kind::kLabels ? labels_got_ : grads_got_) += 1;
  result_.bytes_received += bulk.size();
  if (eval_) return Status::Ok();
  // The schedule's "input" of the last stage is the pair (boundary, labels).
  if (kind == Kind::kGradient) return schedule_.OnGradient(m);
  if (!last() || (got_input_[i] && got_labels_[i])) return schedule_.OnInput(m);
  return Status::Ok();
}

Status PipelineRunner::Handle(Inbound msg, bool* accepted) {
  *accepted = false;
  const Activation& a = msg.header;
  const Key key{a.round, a.step};
  if (a.eval == eval_ && key == key_) {
    *accepted = true;
    return Accept(a, msg.bulk);
  }
  const std::optional<Key>& last = a.eval ? last_eval_ : last_train_;
  if (last.has_value() && key <= *last) {
    ++result_.stale_dropped;
    LOG_WARN("pipeline: stale activation dropped", {"stage", stage_}, {"round", key_.first},
             {eval_ ? "eval_batch" : "step", key_.second}, {"from_stage", a.stage}, {"msg_round", a.round},
             {a.eval ? "msg_eval_batch" : "msg_step", a.step}, {"kind", KindName(a.labels, a.backward)},
             {"micro_batch", a.micro_batch});
    return Status::Ok();
  }
  // For a step or batch this stage has not begun yet.
  if (held_.size() >= kMaxHeldMessages) {
    const Activation& old = held_.front().header;
    LOG_WARN("pipeline: held activation dropped, too many held", {"stage", stage_}, {"from_stage", old.stage},
             {"msg_round", old.round}, {"msg_step", old.step}, {"eval", old.eval});
    held_.pop_front();
  }
  held_.push_back(std::move(msg));
  return Status::Ok();
}

Status PipelineRunner::ReplayHeld() {
  std::deque<Inbound> keep;
  std::vector<Inbound> mine;
  for (auto& msg : held_) {
    const Activation& a = msg.header;
    const std::optional<Key>& last = a.eval ? last_eval_ : last_train_;
    if (a.eval == eval_ && Key{a.round, a.step} == key_) {
      mine.push_back(std::move(msg));
    } else if (last.has_value() && Key{a.round, a.step} <= *last) {
      // Held for a step or batch the caller then skipped.
      ++result_.stale_dropped;
      LOG_WARN("pipeline: stale held activation dropped", {"stage", stage_}, {"from_stage", a.stage},
               {"msg_round", a.round}, {a.eval ? "msg_eval_batch" : "msg_step", a.step});
    } else {
      keep.push_back(std::move(msg));
    }
  }
  held_ = std::move(keep);
  for (auto& msg : mine) LOWBAND_RETURN_IF_ERROR(Accept(msg.header, msg.bulk));
  return Status::Ok();
}

std::string PipelineRunner::Missing() const {
  std::string s;
  if (!first()) s += "inputs " + std::to_string(inputs_got_) + "/" + std::to_string(slots_) + " received";
  if (last() && !first()) s += ", labels " + std::to_string(labels_got_) + "/" + std::to_string(slots_) + " received";
  if (!last() && !eval_) {
    s += std::string(s.empty() ? "" : ", ") + "gradients " + std::to_string(grads_got_) + "/" +
         std::to_string(slots_) + " received";
  }
  return s;
}

Status PipelineRunner::ReceiveOne() {
  const auto deadline = Clock::now() + options_.peer_timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) break;
    auto got = channel_->Receive(left);
    if (!got.ok()) {
      if (got.status().code() == StatusCode::kDeadlineExceeded) break;
      return Status(got.status().code(), Where() + ": receive: " + got.status().message());
    }
    bool accepted = false;
    LOWBAND_RETURN_IF_ERROR(Handle(Inbound{std::move(got->first), std::move(got->second)}, &accepted));
    if (accepted) return Status::Ok();
  }
  return DeadlineExceeded(Where() + ": no message from a neighbour within " +
                          std::to_string(options_.peer_timeout.count()) + " ms (" + Missing() + ")");
}

Status PipelineRunner::RunOp(const PipeOp& op) {
  const size_t i = static_cast<size_t>(op.micro_batch);
  if (op.kind == PipeOp::kForward) {
    LOWBAND_ASSIGN_OR_RETURN(torch::Tensor out, trainer_->Forward(op.micro_batch, inputs_[i], labels_[i]));
    inputs_[i] = torch::Tensor();  // the trainer stashed what it needs
    labels_[i] = torch::Tensor();
    if (last()) {
      loss_sum_ += out.item<double>();
      return Status::Ok();
    }
    return SendTensor(stage_ + 1, Kind::kInput, op.micro_batch, out);
  }
  LOWBAND_ASSIGN_OR_RETURN(torch::Tensor grad, trainer_->Backward(op.micro_batch, grads_[i]));
  grads_[i] = torch::Tensor();
  if (first()) return Status::Ok();
  return SendTensor(stage_ - 1, Kind::kGradient, op.micro_batch, grad);
}

StatusOr<PipelineStepResult> PipelineRunner::RunTrainStep(const torch::Tensor& inputs, const torch::Tensor& targets) {
  if (first()) {
    LOWBAND_RETURN_IF_ERROR(CheckBatch(inputs, targets));
    for (int m = 0; m < slots_; ++m) {
      inputs_[static_cast<size_t>(m)] = inputs.narrow(0, m * rows_, rows_);
      if (last()) labels_[static_cast<size_t>(m)] = targets.narrow(0, m * rows_, rows_);
    }
    // Labels first: they are small, and the last stage needs them with
    // its first input.
    if (!last()) LOWBAND_RETURN_IF_ERROR(SendLabels(targets));
  }
  LOWBAND_RETURN_IF_ERROR(ReplayHeld());
  for (;;) {
    while (auto op = schedule_.Next()) {
      LOWBAND_RETURN_IF_ERROR(RunOp(*op));
      LOWBAND_RETURN_IF_ERROR(schedule_.OnDone(*op));
    }
    if (schedule_.done()) break;
    LOWBAND_RETURN_IF_ERROR(ReceiveOne());
  }
  LOWBAND_RETURN_IF_ERROR(trainer_->Step());
  result_.peak_stashed = schedule_.peak_stashed();
  result_.tokens = options_.batch_size * options_.tokens;
  if (last()) result_.loss = loss_sum_ / slots_;
  return result_;
}

Status PipelineRunner::CheckKey(bool eval, uint32_t round, uint32_t step) const {
  const std::optional<Key>& last = eval ? last_eval_ : last_train_;
  if (!last.has_value() || Key{round, step} > *last) return Status::Ok();
  const char* what = eval ? " eval batch " : " step ";
  return FailedPrecondition("stage " + std::to_string(stage_) + ": round " + std::to_string(round) + what +
                            std::to_string(step) + " is not after the last one begun, round " +
                            std::to_string(last->first) + what + std::to_string(last->second) +
                            " (its messages would be taken for stale ones)");
}

StatusOr<PipelineStepResult> PipelineRunner::TrainStep(uint32_t round, uint32_t step, const torch::Tensor& inputs,
                                                       const torch::Tensor& targets) {
  LOWBAND_RETURN_IF_ERROR(CheckKey(/*eval=*/false, round, step));
  Begin(/*eval=*/false, round, step);
  StatusOr<PipelineStepResult> r = Internal("unset");
  try {
    r = RunTrainStep(inputs, targets);
  } catch (const std::exception& e) {  // LibTorch in this file's own tensor handling
    r = Internal(TorchError(Where(), e));
  }
  End(!r.ok());
  if (!r.ok()) {
    LOG_WARN("pipeline: step failed", {"stage", stage_}, {"round", round}, {"step", step},
             {"error", r.status().ToString()});
  }
  return r;
}

StatusOr<double> PipelineRunner::RunEvalBatch(const torch::Tensor& inputs, const torch::Tensor& targets) {
  torch::Tensor x, y;
  if (first()) {
    LOWBAND_RETURN_IF_ERROR(CheckBatch(inputs, targets));
    x = inputs;
    if (last()) {
      y = targets;
    } else {
      LOWBAND_RETURN_IF_ERROR(SendLabels(targets));
    }
  }
  LOWBAND_RETURN_IF_ERROR(ReplayHeld());
  auto ready = [&] { return (first() || got_input_[0]) && (!last() || first() || got_labels_[0]); };
  while (!ready()) LOWBAND_RETURN_IF_ERROR(ReceiveOne());
  if (!first()) x = std::move(inputs_[0]);
  if (last() && !first()) y = std::move(labels_[0]);
  LOWBAND_ASSIGN_OR_RETURN(torch::Tensor out, trainer_->Evaluate(x, y));
  if (last()) return out.item<double>();
  LOWBAND_RETURN_IF_ERROR(SendTensor(stage_ + 1, Kind::kInput, 0, out));
  return std::numeric_limits<double>::quiet_NaN();
}

StatusOr<double> PipelineRunner::EvalBatch(uint32_t round, uint32_t batch_index, const torch::Tensor& inputs,
                                           const torch::Tensor& targets) {
  LOWBAND_RETURN_IF_ERROR(CheckKey(/*eval=*/true, round, batch_index));
  Begin(/*eval=*/true, round, batch_index);
  StatusOr<double> r = Internal("unset");
  try {
    r = RunEvalBatch(inputs, targets);
  } catch (const std::exception& e) {
    r = Internal(TorchError(Where(), e));
  }
  End(!r.ok());
  if (!r.ok()) {
    LOG_WARN("pipeline: eval batch failed", {"stage", stage_}, {"round", round}, {"eval_batch", batch_index},
             {"error", r.status().ToString()});
  }
  return r;
}

}  // namespace lowband
