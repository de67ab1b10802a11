#include "coordinator/aggregation.h"

#include <atomic>
#include <chrono>
#include <optional>
#include <utility>

#include "base/hash.h"
#include "codec/logit_codec.h"

namespace lowband {

std::shared_ptr<Bytes> PayloadBuffers::Take() {
  std::shared_ptr<Bytes> taken;
  std::vector<std::shared_ptr<Bytes>> in_use;
  for (std::shared_ptr<Bytes>& b : held_) {
    if (b.use_count() > 1) {
      in_use.push_back(std::move(b));
      continue;
    }
    // The last other holder let go (maybe on another thread): see its
    // reads before this thread writes.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (!taken || b->capacity() > taken->capacity()) taken = std::move(b);  // the other one is freed
  }
  if (!taken) taken = std::make_shared<Bytes>();
  in_use.push_back(taken);
  held_ = std::move(in_use);  // the free ones not taken are freed
  return taken;
}

std::vector<float> Aggregation::ViewValues(const ParamSet& params, int cluster) const {
  std::vector<float> v;
  v.reserve(static_cast<size_t>(s_.model_layout.numel()));
  for (size_t j : s_.views[static_cast<size_t>(cluster)]) {
    const TensorPlan& tp = s_.plan.tensors[j];
    v.insert(v.end(), params.values.begin() + tp.offset, params.values.begin() + tp.offset + tp.numel);
  }
  return v;
}

Update Aggregation::ViewOf(const Update& u, int cluster) const {
  Update out;
  out.dense = u.dense;
  if (!u.dense) out.begin.push_back(0);
  for (size_t j : s_.views[static_cast<size_t>(cluster)]) {
    const TensorPlan& tp = s_.plan.tensors[j];
    if (u.dense) {
      out.values.insert(out.values.end(), u.values.begin() + tp.offset, u.values.begin() + tp.offset + tp.numel);
      continue;
    }
    for (size_t ch = tp.first_chunk; ch < tp.first_chunk + tp.num_chunks; ++ch) {
      out.index.insert(out.index.end(), u.index.begin() + u.begin[ch], u.index.begin() + u.begin[ch + 1]);
      out.value.insert(out.value.end(), u.value.begin() + u.begin[ch], u.value.begin() + u.begin[ch + 1]);
      out.begin.push_back(static_cast<uint32_t>(out.index.size()));
    }
  }
  return out;
}

Update Aggregation::SliceUpdate(const Update& u, const ParamPart& part) const {
  Update out;
  out.dense = u.dense;
  if (u.dense) {
    out.values.assign(u.values.begin() + part.offset, u.values.begin() + part.offset + part.numel);
    return out;
  }
  const uint32_t first = u.begin[part.first_chunk];
  const uint32_t last = u.begin[part.first_chunk + part.num_chunks];
  for (size_t c = 0; c <= part.num_chunks; ++c) out.begin.push_back(u.begin[part.first_chunk + c] - first);
  out.index.assign(u.index.begin() + first, u.index.begin() + last);
  out.value.assign(u.value.begin() + first, u.value.begin() + last);
  return out;
}

void Aggregation::Digests(const ParamSet& params, uint64_t* whole, std::vector<uint64_t>* parts,
                          std::vector<uint64_t>* views) const {
  if (whole) *whole = params.Digest();
  views->clear();
  if (s_.kind == Kind::kClusters) {
    for (size_t k = 0; k < s_.views.size(); ++k) {
      views->push_back(ParamSet{s_.model_layout, ViewValues(params, static_cast<int>(k))}.Digest());
    }
  }
  parts->clear();
  if (s_.kind == Kind::kStages) {
    for (const ParamPart& part : s_.parts) {
      parts->push_back(ValuesDigest(params.values.data() + part.offset, static_cast<size_t>(part.numel)));
    }
  }
}

// Per-part means of the uploads (RoundUpload.part), joined into one update
// of the whole layout; a part nobody uploaded stays where it is.
Update Aggregation::MeanOfParts(const std::map<std::string, RoundUpload>& uploads) const {
  const bool sparse = s_.sparse_codec;
  Update g;
  g.dense = !sparse;
  if (sparse) g.begin.push_back(0);
  for (size_t s = 0; s < s_.parts.size(); ++s) {
    const ParamPart& part = s_.parts[s];
    std::vector<const Update*> deltas;
    std::vector<double> weights;
    for (const auto& [site, up] : uploads) {
      if (up.part != static_cast<int>(s)) continue;
      deltas.push_back(&up.delta);
      weights.push_back(static_cast<double>(up.tokens));
    }
    if (s_.uniform) weights.clear();
    Update mean;
    if (!deltas.empty()) {
      mean = AggregateMean(part.plan, deltas, s_.rule, weights);
    } else if (sparse) {  // nobody trained this stage or block: it stays where it is
      mean.dense = false;
      mean.begin.assign(part.num_chunks + 1, 0);
    } else {
      mean.values.assign(static_cast<size_t>(part.numel), 0.0f);
    }
    if (!sparse) {
      if (!mean.dense) mean.values = Densify(part.plan, mean);
      g.values.insert(g.values.end(), mean.values.begin(), mean.values.end());
      continue;
    }
    LOWBAND_CHECK(!mean.dense);
    const uint32_t base = static_cast<uint32_t>(g.value.size());
    for (size_t c = 1; c < mean.begin.size(); ++c) g.begin.push_back(base + mean.begin[c]);
    g.index.insert(g.index.end(), mean.index.begin(), mean.index.end());
    g.value.insert(g.value.end(), mean.value.begin(), mean.value.end());
  }
  return g;
}

// Shared tensors: the mean over every upload; personalised tensors of
// cluster k: the mean over cluster k's uploads (cluster 0's for the model's
// own copies); a group without uploads stays where it is.
Update Aggregation::MeanOfClusters(const std::map<std::string, RoundUpload>& uploads) const {
  auto mean_of = [&](int cluster) -> std::optional<Update> {
    std::vector<const Update*> deltas;
    std::vector<double> weights;
    for (const auto& [site, up] : uploads) {
      if (cluster >= 0 && up.part != cluster) continue;
      deltas.push_back(&up.delta);
      weights.push_back(static_cast<double>(up.tokens));
    }
    if (deltas.empty()) return std::nullopt;
    if (s_.uniform) weights.clear();
    return AggregateMean(s_.model_plan, deltas, s_.rule, weights);
  };
  std::vector<std::optional<Update>> groups;  // [0] all, [1 + k] cluster k
  groups.push_back(mean_of(-1));
  for (size_t k = 0; k < s_.views.size(); ++k) groups.push_back(mean_of(static_cast<int>(k)));
  bool dense = false;
  for (const auto& g : groups) dense = dense || (g && g->dense);
  if (dense) {
    for (auto& g : groups) {
      if (g && !g->dense) {
        Update d;
        d.values = Densify(s_.model_plan, *g);
        g = std::move(d);
      }
    }
  }
  // The group each extended tensor takes its mean from, and which model tensor.
  const std::vector<bool>& personal = s_.personal_tensor;
  std::vector<std::pair<int, size_t>> source(s_.plan.tensors.size());
  for (size_t i = 0; i < personal.size(); ++i) source[i] = {personal[i] ? 1 : 0, i};
  for (size_t k = 1; k < s_.views.size(); ++k) {
    for (size_t i = 0; i < personal.size(); ++i) {
      if (personal[i]) source[s_.views[k][i]] = {static_cast<int>(1 + k), i};
    }
  }
  Update g;
  g.dense = dense;
  if (!dense) g.begin.push_back(0);
  for (size_t j = 0; j < s_.plan.tensors.size(); ++j) {
    const auto& [group, i] = source[j];
    const std::optional<Update>& src = groups[static_cast<size_t>(group)];
    const TensorPlan& mp = s_.model_plan.tensors[i];
    if (dense) {
      if (src) {
        g.values.insert(g.values.end(), src->values.begin() + mp.offset, src->values.begin() + mp.offset + mp.numel);
      } else {
        g.values.insert(g.values.end(), static_cast<size_t>(mp.numel), 0.0f);
      }
      continue;
    }
    for (size_t ch = mp.first_chunk; ch < mp.first_chunk + mp.num_chunks; ++ch) {
      if (src) {
        g.index.insert(g.index.end(), src->index.begin() + src->begin[ch], src->index.begin() + src->begin[ch + 1]);
        g.value.insert(g.value.end(), src->value.begin() + src->begin[ch], src->value.begin() + src->begin[ch + 1]);
      }
      g.begin.push_back(static_cast<uint32_t>(g.index.size()));
    }
  }
  return g;
}

// The mean teacher of the round's uploads, distilled: g = theta - student.
StatusOr<Update> Aggregation::Distil(uint32_t round, const ParamSet& params,
                                     const std::map<std::string, RoundUpload>& uploads, CloseResult* result) const {
  if (!s_.distil) return FailedPrecondition("no distiller configured");
  const size_t n = uploads.begin()->second.logits.size();
  std::vector<float> teacher(n, 0.0f), exact;
  bool have_exact = true;
  for (const auto& [site, up] : uploads) {
    for (size_t i = 0; i < n; ++i) teacher[i] += up.logits[i];
    have_exact = have_exact && up.exact.size() == n;
  }
  const float inv = 1.0f / static_cast<float>(uploads.size());
  for (float& v : teacher) v *= inv;
  for (const auto& [site, up] : uploads) {
    result->logit_payload_bytes += up.logit_bytes;
    result->logit_fp32_bytes += n * sizeof(float);
  }
  if (have_exact) {
    exact.assign(n, 0.0f);
    for (const auto& [site, up] : uploads) {
      for (size_t i = 0; i < n; ++i) exact[i] += up.exact[i];
    }
    for (float& v : exact) v *= inv;
    result->teacher_kl = MeanKl(exact.data(), teacher.data(), static_cast<int>(n / s_.vocab), s_.vocab);
  }
  auto outcome = s_.distil(round, params, teacher, have_exact ? &exact : nullptr);
  if (!outcome.ok()) return outcome.status();
  if (outcome->student.size() != params.values.size()) return Internal("the student has another layout");
  result->student_kl = outcome->student_kl;
  result->distill_loss = outcome->distill_loss;
  result->public_val_loss = outcome->public_val_loss;
  Update g;
  g.dense = true;
  g.values.resize(params.values.size());
  for (size_t i = 0; i < g.values.size(); ++i) g.values[i] = params.values[i] - outcome->student[i];
  return g;
}

CloseResult Aggregation::Close(CloseJob job, ThreadPool* pool) const {
  CloseResult r;
  r.round = job.round;
  auto lap_start = std::chrono::steady_clock::now();
  auto lap = [&](double* phase_s) {
    const auto t = std::chrono::steady_clock::now();
    *phase_s += std::chrono::duration<double>(t - lap_start).count();
    lap_start = t;
  };
  auto fail = [&](const std::string& what, const Status& st) {
    r.status = Status(st.code(), "round " + std::to_string(job.round) + ": " + what + ": " + st.message());
    r.params = std::move(job.params);
    r.outer = std::move(job.outer);
    r.downlink = std::move(job.downlink);
    r.payloads = std::move(job.payloads);
    return std::move(r);
  };
  // Mean over the R workers that uploaded (or over those that chose each
  // coordinate); sites in name order so the float sum is the same on every
  // run. Sparse uploads stay sparse through aggregation and a stateless
  // outer step.
  Update g;
  bool packed = false;  // g went straight into r.logged and theta (PackAggregateMean)
  switch (s_.kind) {
    case Kind::kDistil: {
      auto d = Distil(job.round, job.params, job.uploads, &r);
      if (!d.ok()) return fail("distillation failed", d.status());
      g = std::move(d).value();
      break;
    }
    case Kind::kStages:
    case Kind::kBlocks:
      g = MeanOfParts(job.uploads);
      break;
    case Kind::kClusters:
      g = MeanOfClusters(job.uploads);
      break;
    case Kind::kMean: {
      std::vector<AggregateInput> deltas;
      std::vector<double> weights;
      for (const auto& [site, up] : job.uploads) {
        deltas.push_back(up.sparseloco.empty() ? AggregateInput{&up.delta, nullptr}
                                               : AggregateInput{nullptr, &up.sparseloco.bytes()});
        weights.push_back(static_cast<double>(up.tokens));
      }
      if (s_.uniform) weights.clear();
      bool any_dense = false;
      for (const auto& [site, up] : job.uploads) any_dense = any_dense || (up.sparseloco.empty() && up.delta.dense);
      if (!any_dense && job.outer.identity() && job.downlink.kind() == CodecKind::kSparseFp32) {
        // u = g (sgd lr 1, sparse_fp32 down): the mean is written straight
        // into the payload that is logged and sent, in a buffer of an
        // earlier round, and applied as it is written; no Update is built.
        PackMeanTimes times;
        auto p = PackAggregateMean(s_.layout, s_.plan, deltas, s_.rule, weights, pool, job.payloads.Take(),
                                   &job.params.values, &r.nnz, &r.digest, &times);
        if (p.ok()) {
          r.phases.count_s = times.count_s;
          r.phases.apply_s = times.sum_s;
          r.phases.digest_s = times.hash_s;
          lap_start += std::chrono::duration_cast<std::chrono::steady_clock::duration>(
              std::chrono::duration<double>(times.count_s + times.sum_s + times.hash_s));
          r.logged = std::move(p).value();
          packed = true;
          break;
        }
        // Inputs too large to rule out an overflow: the checked path below.
        LOWBAND_CHECK(p.status().code() == StatusCode::kFailedPrecondition);
      }
      g = AggregateMean(s_.plan, deltas, s_.rule, weights, pool);
      break;
    }
  }
  job.uploads.clear();  // the deltas' memory goes before the encodings'
  lap(&r.phases.aggregate_s);
  if (packed) {
    r.down = r.logged;  // shared, as below
    LOWBAND_CHECK(s_.kind == Kind::kMean);  // r.digest is the only one
    r.part_digests.clear();
    r.view_digests.clear();
    r.params = std::move(job.params);
    r.outer = std::move(job.outer);
    r.downlink = std::move(job.downlink);
    r.payloads = std::move(job.payloads);
    return r;
  }
  // Bounded uploads keep these finite; should one ever not be, the campaign
  // fails with the parameters of the last committed round intact.
  auto logged = PackAggregate(s_.layout, s_.plan, g);
  if (!logged.ok()) return fail("aggregate rejected", logged.status());
  lap(&r.phases.pack_s);
  // The update everyone applies: u, or what its compressed payload decodes
  // to (the config allows compression only where every site gets r.down).
  LOWBAND_CHECK(!job.downlink.compressed() || s_.kind == Kind::kMean);
  StatusOr<Update> update = Update();
  if (job.outer.identity() && job.downlink.kind() == CodecKind::kSparseFp32) {
    // u = g, so its payload is the logged one (PackAggregate both): shared,
    // not packed a second time (a second model-sized buffer at 64 sites).
    update = std::move(g);
    r.down = *logged;
  } else {
    update = job.downlink.Encode(s_.layout, s_.plan, job.outer.Step(s_.plan, std::move(g)), pool, &r.down);
  }
  if (!update.ok()) return fail("outer update rejected", update.status());
  lap(&r.phases.update_s);
  LOWBAND_CHECK(ApplyUpdate(s_.plan, *update, &job.params.values).ok());
  r.logged = std::move(logged).value();
  r.nnz = update->nnz();
  // Pipeline: each stage's workers get their stage's slice of the update;
  // personalisation: each cluster its view, encoded once.
  if (s_.kind == Kind::kStages) {
    for (const ParamPart& part : s_.parts) {
      auto e = PackAggregate(part.slice_layout_only.layout, part.plan, SliceUpdate(*update, part));
      LOWBAND_CHECK(e.ok());  // a slice of an update that packed whole
      r.stage_down.push_back(std::move(e).value());
    }
  }
  if (s_.kind == Kind::kClusters) {
    for (size_t k = 0; k < s_.views.size(); ++k) {
      auto e = PackAggregate(s_.model_layout, s_.model_plan, ViewOf(*update, static_cast<int>(k)));
      LOWBAND_CHECK(e.ok());  // a view of an update that packed whole
      r.cluster_down.push_back(std::move(e).value());
    }
  }
  lap(&r.phases.apply_s);
  Digests(job.params, &r.digest, &r.part_digests, &r.view_digests);
  lap(&r.phases.digest_s);
  r.params = std::move(job.params);
  r.outer = std::move(job.outer);
  r.downlink = std::move(job.downlink);
  r.payloads = std::move(job.payloads);
  return r;
}

}  // namespace lowband
