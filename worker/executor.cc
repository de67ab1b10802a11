#include "worker/executor.h"

#include "base/failpoint.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "codec/dither.h"
#include "base/log.h"
#include "codec/logit_codec.h"
#include "worker/job_wire.h"
#include "worker/site_group.h"
#include "worker/welcome_config.h"

namespace lowband {
namespace {

bool SameModel(const ModelSpec& a, const ModelSpec& b) {
  return a.layers == b.layers && a.d_model == b.d_model && a.heads == b.heads && a.context == b.context &&
         a.vocab == b.vocab && a.arch == b.arch && a.kv_heads == b.kv_heads && a.ffn_hidden == b.ffn_hidden &&
         a.rope_theta == b.rope_theta && a.norm_eps == b.norm_eps;
}

bool SameCodec(const CodecSpec& a, const CodecSpec& b) {
  return a.kind == b.kind && a.topk == b.topk && a.error_feedback == b.error_feedback;
}

bool SamePipeline(const Welcome& a, const Welcome& b) {
  const PipelineSpec& x = a.pipeline;
  const PipelineSpec& y = b.pipeline;
  return x.stages == y.stages && x.ratio == y.ratio && x.wire_dtype == y.wire_dtype && x.split == y.split &&
         x.micro_batches == y.micro_batches && x.schedule == y.schedule && x.peer_timeout_ms == y.peer_timeout_ms &&
         a.stage == b.stage && a.training.batch_size == b.training.batch_size;
}

JobFailed Fail(ErrorCode code, uint32_t round, const Status& st, bool fatal = false) {
  return JobFailed{fatal, code, round, st.ToString()};
}

}  // namespace

Executor::Executor(SiteConfig site, const Corpus* corpus, PeerChannel* peers)
    : site_(std::move(site)), corpus_(corpus), peers_(peers) {}
Executor::~Executor() = default;

void Executor::SetGroup(SiteGroup* group) { group_ = group; }
bool Executor::leader() const { return !group_ || group_->rank() == 0; }

namespace {
// A failure that depends on this rank alone (a torch error, a collective
// that failed): the ranks no longer run in step.
bool RankLocalFailure(const JobResult& r) {
  const auto* f = std::get_if<JobFailed>(&r);
  return f && (f->code == ErrorCode::kInternal || f->code == ErrorCode::kSiteDown);
}
JobFailed SiteDown(uint32_t round, const std::string& what) {
  return JobFailed{/*fatal=*/true, ErrorCode::kSiteDown, round, what};
}
const char* JobName(const Job& job) {
  if (std::holds_alternative<ConfigureJob>(job)) return "configure";
  if (std::holds_alternative<SyncJob>(job)) return "sync";
  if (std::holds_alternative<TrainJob>(job)) return "train";
  if (std::holds_alternative<FcragJob>(job)) return "fcrag";
  return "apply";
}
uint32_t JobRound(const Job& job) {
  if (const auto* s = std::get_if<SyncJob>(&job)) return s->sync.round;
  if (const auto* t = std::get_if<TrainJob>(&job)) return t->round;
  if (const auto* a = std::get_if<ApplyJob>(&job)) return a->aggregate.round;
  return 0;
}
}  // namespace

JobResult Executor::Run(Job job) {
  if (!group_ || group_->size() < 2 || !ReplicatedJob(job)) return RunJob(job);
  const uint32_t round = JobRound(job);
  if (leader()) {
    Status st = group_->Post(job_seq_++, EncodeJob(job));
    if (!st.ok()) return SiteDown(round, st.ToString());
  }
  JobResult result = RunJob(job);
  if (RankLocalFailure(result)) {
    const auto& f = std::get<JobFailed>(result);
    return SiteDown(f.round, "rank " + std::to_string(group_->rank()) + ": " + f.what);
  }
  // Every rank ends the job here: the same outcome everywhere, or the
  // replicas have parted.
  std::vector<double> failed{std::holds_alternative<JobFailed>(result) ? 1.0 : 0.0};
  Status st = group_->AllreduceSum(&failed);
  if (!st.ok()) return SiteDown(round, st.ToString());
  if (failed[0] != 0 && failed[0] != group_->size()) {
    return SiteDown(round, "the ranks' outcomes differ (" + std::to_string(static_cast<int>(failed[0])) + " of " +
                               std::to_string(group_->size()) + " failed the job)");
  }
  return result;
}

void Executor::StopFollowers() {
  if (!group_ || !leader()) return;
  Status st = group_->Post(job_seq_++, {});
  if (!st.ok()) LOG_WARN("cannot stop the other ranks", {"reason", st.ToString()});
}

int Executor::RunFollower(const std::function<bool()>& stop) {
  for (;; ++job_seq_) {
    auto bytes = group_->Fetch(job_seq_, stop);
    if (!bytes.ok()) {
      LOG_ERROR("rank 0 is gone", {"rank", group_->rank()}, {"reason", bytes.status().ToString()});
      return kExitSiteDown;
    }
    if (!bytes->has_value()) return 0;
    auto job = DecodeJob(**bytes);
    if (!job.ok()) {
      LOG_ERROR("unreadable job from rank 0", {"rank", group_->rank()}, {"reason", job.status().ToString()});
      return kExitSiteDown;
    }
    if (!job->has_value()) {
      LOG_INFO("rank 0 stopped the site", {"rank", group_->rank()});
      return 0;
    }
    JobResult r = Run(std::move(**job));
    if (const auto* f = std::get_if<JobFailed>(&r)) {
      if (f->code == ErrorCode::kSiteDown) {
        LOG_ERROR("site down", {"rank", group_->rank()}, {"reason", f->what});
        return kExitSiteDown;
      }
      LOG_WARN("job failed on every rank", {"rank", group_->rank()}, {"round", f->round}, {"reason", f->what});
    }
  }
}

JobResult Executor::RunJob(Job& job) {
  const auto start = std::chrono::steady_clock::now();
  JobResult result = Dispatch(job);
  LOG_DEBUG("job done", {"job", JobName(job)}, {"round", JobRound(job)},
            {"ms", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count()});
  return result;
}

JobResult Executor::Dispatch(Job& job) {
  if (auto* c = std::get_if<ConfigureJob>(&job)) return Configure(c->welcome);
  if (!configured()) {
    JobFailed f{false, ErrorCode::kUnexpected, 0, "job before the worker was configured"};
    if (const auto* s = std::get_if<SyncJob>(&job)) f.offer = s->offer;
    return f;
  }
  if (auto* s = std::get_if<SyncJob>(&job)) return Sync(*s);
  if (auto* t = std::get_if<TrainJob>(&job)) return Train(*t);
  if (auto* f = std::get_if<FcragJob>(&job)) return Fcrag(*f);
  return Apply(std::get<ApplyJob>(job));
}

JobResult Executor::Configure(const Welcome& welcome) {
  // FPLD: a site may train a model of its own (same context and vocab).
  Welcome w = welcome;
  if (w.fpld.enabled && site_.model.layers > 0) {
    w.model.layers = site_.model.layers;
    w.model.d_model = site_.model.d_model;
    w.model.heads = site_.model.heads;
  }
  // A re-welcome with the same model (coordinator restart, re-registration)
  // keeps the trainer and with it the inner optimizer state.
  if (configured() && welcome_ && SameModel(welcome_->model, w.model) && welcome_->data_seed == w.data_seed &&
      SameCodec(welcome_->codec, w.codec) && SamePipeline(*welcome_, w) && welcome_->layer_blocks == w.layer_blocks) {
    if (stage_) stage_->SetEpoch(w.pipeline_epoch);
    welcome_ = std::make_unique<Welcome>(w);
    return ConfigureDone{};
  }
  if (w.pipeline.stages > 1) {
    if (group_ && group_->size() > 1) {
      return Fail(ErrorCode::kBadPayload, 0,
                  FailedPrecondition("a site of " + std::to_string(group_->size()) +
                                     " ranks cannot be a pipeline stage (set site.ranks: 1)"),
                  /*fatal=*/true);
    }
    if (peers_ == nullptr) {
      return Fail(ErrorCode::kInternal, 0, FailedPrecondition("pipeline campaign but this worker has no peer links"),
                  /*fatal=*/true);
    }
    auto stage = StageReplica::Create(w, site_.device, site_.threads, corpus_, peers_);
    if (!stage.ok()) return Fail(ErrorCode::kInternal, 0, stage.status(), /*fatal=*/true);
    trainer_.reset();
    stage_ = std::move(stage).value();
    stage_->SetEpoch(w.pipeline_epoch);
    last_train_.reset();
    last_trained_.reset();
    welcome_ = std::make_unique<Welcome>(w);
    LOG_INFO("pipeline stage ready", {"device", site_.device}, {"stage", w.stage}, {"stages", w.pipeline.stages},
             {"replica", w.replica}, {"parameters", static_cast<long long>(stage_->layout().numel())},
             {"codec", CodecName(w.codec.kind)}, {"schedule", w.pipeline.schedule});
    return ConfigureDone{};
  }
  if (w.fcrag.enabled && leader()) {
    // Labels are file names: a data file that is not a label is a config error.
    auto data = LoadFcragData(site_.data, w.fcrag.labels, w.fcrag.min_chars, w.fcrag.max_chars);
    if (!data.ok()) return Fail(ErrorCode::kBadPayload, 0, data.status(), /*fatal=*/true);
    fcrag_ = std::make_unique<FcragData>(std::move(data).value());
    bm25_ = std::make_unique<Bm25Index>(fcrag_->store);
    mass_scale_ = TypicalMass(*bm25_, fcrag_->queries, w.fcrag.retrieve_k);
    LOG_INFO("FC-RAG store ready", {"documents", static_cast<uint64_t>(fcrag_->store.size())},
             {"queries", static_cast<uint64_t>(fcrag_->queries.size())}, {"terms", static_cast<uint64_t>(bm25_->num_terms())});
  }
  auto trainer = Trainer::Create(ToConfig(w.model), ToConfig(w.training), site_.device, site_.threads, corpus_,
                                 w.data_seed, ToConfig(w.codec));
  if (!trainer.ok()) return Fail(ErrorCode::kInternal, 0, trainer.status(), /*fatal=*/true);
  trainer_ = std::move(trainer).value();
  trainer_->SetGroup(group_);
  trainer_->SetSlowdown(site_.slowdown);
  trainer_->SetOverlap(w.training.overlap);
  if (!w.layer_blocks.empty()) {
    Status st = trainer_->SetBlocks(w.layer_blocks);
    if (!st.ok()) return Fail(ErrorCode::kBadPayload, 0, st, /*fatal=*/true);
  }
  stage_.reset();
  last_train_.reset();
  last_trained_.reset();
  welcome_ = std::make_unique<Welcome>(w);
  LOG_INFO("trainer ready", {"device", site_.device}, {"parameters", static_cast<long long>(trainer_->layout().numel())},
           {"codec", CodecName(w.codec.kind)}, {"topk", w.codec.topk}, {"error_feedback", w.codec.error_feedback},
           {"precision", PrecisionName(trainer_->precision())}, {"fused_adamw", trainer_->fused_optimizer()});
  return ConfigureDone{};
}

JobResult Executor::EvaluateAt(uint32_t round, uint64_t announced_digest, bool loss) {
  FailPoint("worker_eval", round);  // on the training thread: a slow evaluation delays only the report
  EvalResult ev;  // no loss: 0 tokens, the report carries the digest alone
  if (loss) {
    auto measured = stage_ ? stage_->Evaluate(round) : trainer_->Evaluate();
    if (!measured.ok()) return Fail(ErrorCode::kInternal, round, measured.status());
    ev = *measured;
  }
  const uint64_t digest = GlobalDigest();
  EvalDone done{round, ev.loss, ev.tokens, digest, digest == announced_digest, {}};
  if (group_ && group_->size() > 1) {
    // The digest check covers every rank's replica.
    auto all = group_->AllGather(digest);
    if (!all.ok()) return Fail(ErrorCode::kSiteDown, round, all.status(), /*fatal=*/true);
    done.rank_digests = std::move(all).value();
    for (uint64_t d : done.rank_digests) done.digest_ok = done.digest_ok && d == announced_digest;
  }
  return done;
}

JobResult Executor::CheckOffer(const SyncJob& job) {
  bool held = GlobalDigest() == job.sync.digest;
  if (group_ && group_->size() > 1) {
    // Every rank takes the same branch (the evaluation is collective).
    std::vector<double> holders{held ? 1.0 : 0.0};
    Status st = group_->AllreduceSum(&holders);
    if (!st.ok()) return Fail(ErrorCode::kSiteDown, job.sync.round, st, /*fatal=*/true);
    held = holders[0] == group_->size();
  }
  if (!held) return SyncNeeded{job.offer};
  Status st = stage_ ? stage_->RestartFromGlobal() : trainer_->RestartFromGlobal();
  if (!st.ok()) return Fail(ErrorCode::kInternal, job.sync.round, st);
  LOG_INFO("offered parameters already held: digest checked, nothing transferred", {"round", job.sync.round},
           {"digest", DigestHex(job.sync.digest)});
  JobResult r = EvaluateAt(job.sync.round, job.sync.digest);
  if (auto* ev = std::get_if<EvalDone>(&r)) ev->offer = job.offer;
  return r;
}

JobResult Executor::Sync(const SyncJob& job) {
  if (job.bulk.empty()) return CheckOffer(job);
  // Full parameters travel with the dense fp32 codec whatever the update codec is.
  if (job.sync.blob.codec != CodecKind::kDenseFp32) {
    return JobFailed{false, ErrorCode::kBadPayload, job.sync.round,
                     std::string("model sync payload uses codec ") + CodecName(job.sync.blob.codec) +
                         ", expected dense_fp32"};
  }
  auto values = ParseUpdate(layout(), plan(), job.sync.blob, job.bulk);
  if (!values.ok()) return Fail(ErrorCode::kBadPayload, job.sync.round, values.status());
  ParamSet p{layout(), std::move(values->values)};
  if (p.Digest() != job.sync.digest) {
    return JobFailed{false, ErrorCode::kDigestMismatch, job.sync.round,
                     "model sync payload digest " + DigestHex(p.Digest()) + " differs from the announced " +
                         DigestHex(job.sync.digest)};
  }
  Status st = stage_ ? stage_->SetGlobal(std::move(p)) : trainer_->SetGlobal(std::move(p));
  if (!st.ok()) return Fail(ErrorCode::kBadPayload, job.sync.round, st);
  LOG_INFO("parameters synced", {"round", job.sync.round}, {"digest", DigestHex(job.sync.digest)});
  return EvaluateAt(job.sync.round, job.sync.digest);
}

JobResult Executor::Train(const TrainJob& job) {
  const uint64_t base = GlobalDigest();
  // FPLD sites with models of their own are told no digest (0).
  const bool own_model = welcome_->fpld.enabled && job.base_digest == 0;
  if (base != job.base_digest && !own_model) {
    return JobFailed{false, ErrorCode::kDigestMismatch, job.round,
                     "replica holds " + DigestHex(base) + ", round starts from " + DigestHex(job.base_digest), true};
  }
  if (last_train_ && last_train_->upload.round == job.round && last_train_->upload.base_digest == base &&
      last_train_->upload.block == job.block) {
    LOG_INFO("round already trained from these parameters; sending the same upload again", {"round", job.round},
             {"base", DigestHex(base)});
    return *last_train_;
  }
  // A failed pipeline step is not fatal: the coordinator's deadline and
  // quorum decide what happens to the round.
  if (job.block >= 0 && (stage_ || !trainer_->has_blocks())) {
    return JobFailed{false, ErrorCode::kBadPayload, job.round,
                     "round asks for block " + std::to_string(job.block) + " but the Welcome set up no blocks", true};
  }
  auto result = stage_ ? stage_->TrainRound(job.round, job.inner_steps)
                       : trainer_->TrainRound(job.inner_steps, job.block);
  if (!result.ok()) {
    JobFailed failed = Fail(ErrorCode::kInternal, job.round, result.status());
    failed.train = true;
    return failed;
  }
  TrainDone done;
  done.upload.round = job.round;
  done.upload.base_digest = base;
  done.upload.train_loss = result->mean_loss;
  done.upload.tokens = result->tokens;
  done.upload.step_time_ms = result->step_time_ms;
  done.upload.block = job.block;
  done.upload.wait_ms = idle_ms_;
  idle_ms_ = 0;
  const auto trained = std::chrono::steady_clock::now();
  if (last_trained_) done.upload.cycle_ms = std::chrono::duration<double, std::milli>(trained - *last_trained_).count();
  last_trained_ = trained;
  done.upload.blob = result->upload.header;
  done.bulk = std::move(result->upload.bulk);
  if (welcome_->fpld.enabled) {
    JobResult logits = ProbeLogits(job.round, own_model, &done);
    if (!std::holds_alternative<TrainDone>(logits)) return logits;
    done = std::get<TrainDone>(std::move(logits));
  }
  last_train_ = done;
  LOG_DEBUG("round trained", {"round", job.round}, {"train_loss", result->mean_loss},
            {"step_time_ms", result->step_time_ms});
  return done;
}

// FPLD: the trained model's logits on the probe set, encoded as the
// campaign says (codec/logit_codec.h), replace the delta. A site with a
// model of its own keeps training it: its trained weights become its
// starting point for the next round.
JobResult Executor::ProbeLogits(uint32_t round, bool own_model, TrainDone* done) {
  const FpldWelcome& f = welcome_->fpld;
  if (!leader()) {
    // Only rank 0 sends logits; a model of its own moves on everywhere.
    if (own_model) {
      Status st = trainer_->SetGlobal(trainer_->LocalParams());
      if (!st.ok()) return Fail(ErrorCode::kInternal, round, st);
    }
    return std::move(*done);
  }
  auto logits = trainer_->ProbeLogits(f.probe_tokens, f.contexts, f.positions);
  if (!logits.ok()) return Fail(ErrorCode::kInternal, round, logits.status());
  if (own_model) {
    Status st = trainer_->SetGlobal(trainer_->LocalParams());
    if (!st.ok()) return Fail(ErrorCode::kInternal, round, st);
  }
  const int vocab = welcome_->model.vocab;
  const int rows = f.contexts * f.positions;
  const LogitCodec codec{f.bits, f.clip, f.topk};
  Bytes bulk = EncodeLogits(codec, rows, vocab, logits->data(),
                            DitherSeedFor(welcome_->training.seed, round, site_.name));
  LogitUpload up;
  up.round = round;
  up.train_loss = done->upload.train_loss;
  up.tokens = done->upload.tokens;
  up.step_time_ms = done->upload.step_time_ms;
  up.wait_ms = done->upload.wait_ms;
  up.cycle_ms = done->upload.cycle_ms;
  up.rows = static_cast<uint32_t>(rows);
  up.vocab = static_cast<uint32_t>(vocab);
  up.bits = f.bits;
  up.clip = f.clip;
  up.topk = f.topk;
  if (f.exact_reference) {
    // Benchmarks only: the unquantized logits behind the payload.
    const auto* raw = reinterpret_cast<const uint8_t*>(logits->data());
    up.exact_bytes = logits->size() * sizeof(float);
    bulk.insert(bulk.end(), raw, raw + up.exact_bytes);
  }
  up.blob.codec = CodecKind::kDenseFp32;
  up.blob.byte_length = bulk.size();
  up.blob.checksum = BulkChecksum(bulk.data(), bulk.size());
  done->logits = up;
  done->bulk = std::move(bulk);
  return std::move(*done);
}

// FC-RAG (docs/fcrag.md): the site answers from its own store and queries;
// documents and labels never leave it.
JobResult Executor::Fcrag(const FcragJob& job) {
  const FcragRequest& rq = job.request;
  auto fail = [&](const std::string& what) {
    return JobFailed{false, ErrorCode::kBadPayload, 0, std::string("fcrag ") + FcragKindName(rq.kind) + ": " + what};
  };
  if (!fcrag_) return fail("this campaign set up no FC-RAG store");
  const size_t labels = welcome_->fcrag.labels.size();
  const ScoreRange range{0.0, rq.score_max};
  FcragDone done;
  done.reply.id = rq.id;
  done.reply.kind = rq.kind;
  switch (rq.kind) {
    case FcragKind::kQueries: {
      std::vector<std::string> texts;
      for (const LabeledText& q : fcrag_->queries) texts.push_back(q.text);
      done.bulk = PackTextList(texts);
      done.reply.count = static_cast<uint32_t>(texts.size());
      break;
    }
    case FcragKind::kScore: {
      auto texts = UnpackTextList(job.bulk, rq.count);
      if (!texts.ok()) return fail(texts.status().ToString());
      std::vector<double> scores;
      scores.reserve(texts->size() * labels);
      for (const std::string& t : *texts) {
        auto s = LabelScores(*bm25_, fcrag_->store, t, static_cast<int>(labels), welcome_->fcrag.retrieve_k,
                             welcome_->fcrag.smoothing, mass_scale_);
        scores.insert(scores.end(), s.begin(), s.end());
      }
      done.bulk = EncodeScores(scores, range, rq.bits, DitherSeedFor(rq.seed, static_cast<uint32_t>(rq.id), site_.name));
      done.reply.count = rq.count;
      break;
    }
    case FcragKind::kCalibrate: {
      const size_t n = fcrag_->queries.size();
      if (rq.count != n || job.bulk.size() != n * labels * sizeof(float)) {
        return fail("mean scores for " + std::to_string(rq.count) + " queries (" + std::to_string(job.bulk.size()) +
                    " bytes); this site holds " + std::to_string(n) + " queries of " + std::to_string(labels) + " labels");
      }
      mean_scores_.assign(n * labels, 0.0);
      for (size_t i = 0; i < mean_scores_.size(); ++i) {
        float v;
        std::memcpy(&v, job.bulk.data() + i * sizeof(float), sizeof(float));
        if (!std::isfinite(v)) return fail("a mean score is not finite");
        mean_scores_[i] = v;
      }
      std::vector<size_t> cal;
      SplitQueries(n, rq.calibration_fraction, rq.seed, &cal, &test_);
      std::vector<double> conformity;
      for (size_t j : cal) conformity.push_back(mean_scores_[j * labels + static_cast<size_t>(fcrag_->queries[j].label)]);
      done.bulk = PackSummary(SummarizeScores(conformity, range, rq.bits));
      done.reply.count = static_cast<uint32_t>(conformity.size());
      done.reply.local_qq = rq.qq_k == 0 || rq.qq_k > conformity.size()
                                ? std::numeric_limits<double>::infinity()
                                : LocalOrderStatistic(conformity, rq.qq_k);
      break;
    }
    case FcragKind::kTest: {
      if (mean_scores_.empty()) return fail("a test before any calibration");
      for (size_t j : test_) {
        const std::vector<double> row(mean_scores_.begin() + j * labels, mean_scores_.begin() + (j + 1) * labels);
        const int truth = fcrag_->queries[j].label;
        const auto set = PredictionSet(row, rq.threshold);
        const auto set_qq = PredictionSet(row, rq.threshold_qq);
        done.reply.covered += std::count(set.begin(), set.end(), truth) > 0;
        done.reply.set_size += set.size();
        done.reply.covered_qq += std::count(set_qq.begin(), set_qq.end(), truth) > 0;
        done.reply.set_size_qq += set_qq.size();
      }
      done.reply.count = static_cast<uint32_t>(test_.size());
      break;
    }
  }
  done.reply.blob.codec = CodecKind::kDenseFp32;
  done.reply.blob.byte_length = done.bulk.size();
  done.reply.blob.checksum = BulkChecksum(done.bulk.data(), done.bulk.size());
  return done;
}

JobResult Executor::Apply(const ApplyJob& job) {
  // The coordinator's downlink formats (codec.downlink): u as it is, or
  // compressed (sparseloco, sparse_2bit); either way exactly what the
  // coordinator applied itself.
  const CodecKind codec = job.aggregate.blob.codec;
  if (codec != CodecKind::kDenseFp32 && codec != CodecKind::kSparseFp32 && codec != CodecKind::kSparseLoCo &&
      codec != CodecKind::kSparse2Bit) {
    return JobFailed{false, ErrorCode::kBadPayload, job.aggregate.round,
                     std::string("aggregate uses codec ") + CodecName(codec) +
                         ", expected dense_fp32, sparse_fp32, sparseloco or sparse_2bit"};
  }
  auto update = ParseUpdate(layout(), plan(), job.aggregate.blob, job.bulk);
  if (!update.ok()) return Fail(ErrorCode::kBadPayload, job.aggregate.round, update.status());
  Status st = stage_ ? stage_->ApplyUpdate(*update) : trainer_->ApplyUpdate(*update);
  if (!st.ok()) return Fail(ErrorCode::kInternal, job.aggregate.round, st);
  // training.eval_every: the loss of every N-th round and of the last.
  const TrainingSpec& t = welcome_->training;
  const uint32_t round = job.aggregate.round;
  const bool loss = t.eval_every <= 1 || round % static_cast<uint32_t>(t.eval_every) == 0 ||
                    round >= static_cast<uint32_t>(t.rounds);
  return EvaluateAt(round, job.aggregate.digest, loss);
}

}  // namespace lowband
