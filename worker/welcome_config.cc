#include "worker/welcome_config.h"

namespace lowband {

ModelConfig ToConfig(const ModelSpec& model) {
  ModelConfig c = ModelShape(model.layers, model.d_model, model.heads, model.context, model.vocab);
  if (model.arch == ModelArch::kLlama) {
    c.arch = model.arch;
    c.kv_heads = model.kv_heads;
    c.ffn_hidden = model.ffn_hidden;
    c.rope_theta = model.rope_theta;
    c.norm_eps = model.norm_eps;
  }
  return c;
}

InnerOptimizerConfig ToConfig(const InnerOptimizerSpec& inner) {
  InnerOptimizerConfig c;
  c.lr = inner.lr;
  c.beta1 = inner.beta1;
  c.beta2 = inner.beta2;
  c.eps = inner.eps;
  c.weight_decay = inner.weight_decay;
  c.grad_clip = inner.grad_clip;
  c.warmup_steps = inner.warmup_steps;
  return c;
}

TrainingConfig ToConfig(const TrainingSpec& training) {
  TrainingConfig c;
  c.rounds = training.rounds;
  c.inner_steps = training.inner_steps;
  c.batch_size = training.batch_size;
  c.eval_batches = training.eval_batches;
  c.seed = training.seed;
  c.inner = ToConfig(training.inner);
  c.overlap = training.overlap;
  c.precision = training.precision;
  c.eval_every = training.eval_every;
  return c;
}

CodecConfig ToConfig(const CodecSpec& codec) { return CodecConfig{codec.kind, codec.topk, codec.error_feedback}; }

PipelineConfig ToConfig(const PipelineSpec& pipeline) {
  PipelineConfig c;
  c.stages = pipeline.stages;
  c.replicas = pipeline.replicas;
  c.ratio = pipeline.ratio;
  c.wire_dtype = pipeline.wire_dtype;
  c.split = pipeline.split;
  c.micro_batches = pipeline.micro_batches;
  c.schedule = pipeline.schedule;
  c.link_mbit = pipeline.link_mbit;
  c.peer_timeout_ms = pipeline.peer_timeout_ms;
  return c;
}

ModelSpec OwnModelSpec(const SiteConfig& site) {
  const ModelConfig& m = site.model;
  return ModelSpecShape(m.layers, m.d_model, m.heads, m.context, m.vocab);
}

}  // namespace lowband
