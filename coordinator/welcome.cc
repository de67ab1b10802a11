#include "coordinator/welcome.h"

namespace lowband {

ModelSpec ToSpec(const ModelConfig& model) {
  ModelSpec s = ModelSpecShape(model.layers, model.d_model, model.heads, model.context, model.vocab);
  if (model.arch == ModelArch::kLlama) {
    s.arch = model.arch;
    s.kv_heads = KvHeads(model);
    s.ffn_hidden = FfnHidden(model);
    s.rope_theta = model.rope_theta;
    s.norm_eps = model.norm_eps;
  }
  return s;
}

InnerOptimizerSpec ToSpec(const InnerOptimizerConfig& inner) {
  InnerOptimizerSpec s;
  s.lr = inner.lr;
  s.beta1 = inner.beta1;
  s.beta2 = inner.beta2;
  s.eps = inner.eps;
  s.weight_decay = inner.weight_decay;
  s.grad_clip = inner.grad_clip;
  s.warmup_steps = inner.warmup_steps;
  return s;
}

TrainingSpec ToSpec(const TrainingConfig& training) {
  TrainingSpec s;
  s.rounds = training.rounds;
  s.inner_steps = training.inner_steps;
  s.batch_size = training.batch_size;
  s.eval_batches = training.eval_batches;
  s.seed = training.seed;
  s.inner = ToSpec(training.inner);
  s.overlap = training.overlap;
  s.precision = training.precision;
  s.eval_every = training.eval_every;
  return s;
}

CodecSpec ToSpec(const CodecConfig& codec) { return CodecSpec{codec.kind, codec.topk, codec.error_feedback}; }

PipelineSpec ToSpec(const PipelineConfig& pipeline) {
  PipelineSpec s;
  s.stages = pipeline.stages;
  s.replicas = pipeline.replicas;
  s.ratio = pipeline.ratio;
  s.wire_dtype = pipeline.wire_dtype;
  s.split = pipeline.split;
  s.micro_batches = pipeline.micro_batches;
  s.schedule = pipeline.schedule;
  s.link_mbit = pipeline.link_mbit;
  s.peer_timeout_ms = pipeline.peer_timeout_ms;
  return s;
}

FpldWelcome ToSpec(const FpldConfig& fpld) {
  FpldWelcome s;
  s.enabled = fpld.enabled;
  s.bits = fpld.bits;
  s.clip = static_cast<float>(fpld.clip);
  s.topk = fpld.topk;
  s.positions = fpld.positions;
  s.contexts = fpld.contexts;
  s.exact_reference = fpld.exact_reference;
  return s;
}

FcragWelcome ToSpec(const FcragConfig& fcrag) {
  FcragWelcome s;
  s.enabled = fcrag.enabled;
  s.labels = fcrag.labels;
  s.retrieve_k = fcrag.retrieve_k;
  s.smoothing = fcrag.smoothing;
  s.min_chars = fcrag.min_chars;
  s.max_chars = fcrag.max_chars;
  return s;
}

}  // namespace lowband
