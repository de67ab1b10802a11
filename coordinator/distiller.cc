#include "coordinator/distiller.h"

#include <torch/torch.h>

#include <random>

#include "ml/model.h"

namespace lowband {

struct Distiller::Impl {
  CampaignConfig config;
  std::vector<int64_t> probes;  // contexts x context
  const Corpus* corpus = nullptr;
  Lm model{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::mt19937_64 rng;

  int contexts() const { return config.fpld.contexts; }
  int context() const { return config.model.context; }
  int positions() const { return config.fpld.positions; }

  // Student logits at the probe positions of contexts `idx`: [n * positions, vocab].
  torch::Tensor ProbeLogits(const std::vector<int64_t>& idx) {
    std::vector<int64_t> rows;
    rows.reserve(idx.size() * static_cast<size_t>(context()));
    for (int64_t i : idx) rows.insert(rows.end(), probes.begin() + i * context(), probes.begin() + (i + 1) * context());
    auto x = torch::from_blob(rows.data(), {static_cast<int64_t>(idx.size()), context()}, torch::kInt64).clone();
    auto logits = model->forward(x).slice(1, context() - positions(), context());
    return logits.reshape({-1, config.model.vocab});
  }

  // Teacher rows of contexts `idx`, as a [n * positions, vocab] tensor.
  torch::Tensor TeacherRows(const std::vector<float>& teacher, const std::vector<int64_t>& idx) const {
    const int64_t row = static_cast<int64_t>(positions()) * config.model.vocab;
    auto all = torch::from_blob(const_cast<float*>(teacher.data()),
                                {static_cast<int64_t>(contexts()), row}, torch::kFloat32);
    auto index = torch::tensor(idx, torch::kInt64);
    return all.index_select(0, index).reshape({-1, config.model.vocab});
  }

  static torch::Tensor Kl(const torch::Tensor& teacher_logits, const torch::Tensor& student_logits) {
    auto log_p = torch::log_softmax(teacher_logits, -1);
    auto log_q = torch::log_softmax(student_logits, -1);
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean();
  }
};

Distiller::Distiller(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Distiller::~Distiller() = default;

StatusOr<std::unique_ptr<Distiller>> Distiller::Create(const CampaignConfig& config, std::vector<uint8_t> probes,
                                                       const Corpus* public_corpus) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  if (probes.size() != static_cast<size_t>(config.fpld.contexts) * static_cast<size_t>(config.model.context)) {
    return InvalidArgument("Distiller: " + std::to_string(probes.size()) + " probe tokens, expected contexts x context");
  }
  impl->probes.assign(probes.begin(), probes.end());
  impl->corpus = public_corpus;
  impl->rng.seed(config.training.seed ^ 0x2545f4914f6cdd1dull);
  torch::set_num_threads(1);  // the coordinator shares the machine with its loop (and, on loopback, the sites)
  try {
    impl->model = MakeLm(config.model, config.training.seed);
    impl->optimizer = std::make_unique<torch::optim::AdamW>(
        impl->model->parameters(), torch::optim::AdamWOptions(config.fpld.student_lr).weight_decay(0.0));
  } catch (const c10::Error& e) {
    return Internal(std::string("Distiller: ") + e.what_without_backtrace());
  }
  return std::unique_ptr<Distiller>(new Distiller(std::move(impl)));
}

StatusOr<DistilOutcome> Distiller::Distil(uint32_t round, const ParamSet& start, const std::vector<float>& teacher,
                                          const std::vector<float>* exact) {
  Impl& s = *impl_;
  const size_t rows = static_cast<size_t>(s.contexts()) * s.positions() * s.config.model.vocab;
  if (teacher.size() != rows || (exact && exact->size() != rows)) {
    return InvalidArgument("Distil: teacher logits of " + std::to_string(teacher.size()) + " values, expected " +
                           std::to_string(rows));
  }
  try {
    LOWBAND_RETURN_IF_ERROR(ImportParams(s.model, start));
    s.model->train();
    DistilOutcome out;
    std::uniform_int_distribution<int64_t> pick(0, s.contexts() - 1);
    for (int step = 0; step < s.config.fpld.student_steps; ++step) {
      std::vector<int64_t> idx(static_cast<size_t>(std::min(s.config.fpld.student_batch, s.contexts())));
      for (auto& i : idx) i = pick(s.rng);
      auto loss = Impl::Kl(s.TeacherRows(teacher, idx), s.ProbeLogits(idx));
      s.optimizer->zero_grad();
      loss.backward();
      torch::nn::utils::clip_grad_norm_(s.model->parameters(), 1.0);
      s.optimizer->step();
      out.distill_loss = loss.item<double>();
    }
    torch::NoGradGuard no_grad;
    s.model->eval();
    if (exact) {
      std::vector<int64_t> all(static_cast<size_t>(s.contexts()));
      for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
      out.student_kl = Impl::Kl(s.TeacherRows(*exact, all), s.ProbeLogits(all)).item<double>();
    }
    ParamSet student = ExportParams(s.model);
    out.student = std::move(student.values);
    auto val = PublicLoss(ParamSet{start.layout, out.student});
    if (!val.ok()) return val.status();
    out.public_val_loss = *val;
    (void)round;
    return out;
  } catch (const c10::Error& e) {
    return Internal(std::string("Distil: ") + e.what_without_backtrace());
  }
}

StatusOr<double> Distiller::PublicLoss(const ParamSet& params) {
  Impl& s = *impl_;
  try {
    LOWBAND_RETURN_IF_ERROR(ImportParams(s.model, params));
    torch::NoGradGuard no_grad;
    s.model->eval();
    double sum = 0;
    uint64_t tokens = 0;
    for (int i = 0; i < s.config.fpld.student_eval_batches; ++i) {
      TokenBatch b = s.corpus->ValidationBatch(i, s.config.fpld.student_batch, s.context());
      if (b.batch == 0) break;
      auto x = torch::from_blob(b.inputs.data(), {b.batch, b.length}, torch::kInt64).clone();
      auto y = torch::from_blob(b.targets.data(), {b.batch, b.length}, torch::kInt64).clone();
      const uint64_t n = static_cast<uint64_t>(b.batch) * b.length;
      sum += s.model->Loss(x, y).item<double>() * static_cast<double>(n);
      tokens += n;
    }
    s.model->train();
    if (tokens == 0) return FailedPrecondition("the probe text's validation split has no full window");
    return sum / static_cast<double>(tokens);
  } catch (const c10::Error& e) {
    return Internal(std::string("public validation: ") + e.what_without_backtrace());
  }
}

}  // namespace lowband
