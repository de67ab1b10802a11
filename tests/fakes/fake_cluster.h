// Test helpers for the cores: a tiny campaign config and parameter set, a
// fake executor that "trains" deterministically on flat floats, and a
// harness that runs a coordinator core and worker cores over an
// InprocNetwork through the real wire encoding. Single-threaded.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "net/inproc.h"
#include "net/transport.h"
#include "protocol/wire.h"
#include "coordinator/core.h"
#include "worker/core.h"

namespace lowband::testing {

inline CampaignConfig TinyCampaign(int workers = 3, int rounds = 3) {
  CampaignConfig c;
  c.name = "tiny";
  c.training.rounds = rounds;
  c.training.inner_steps = 2;
  c.quorum.expected_workers = workers;
  c.quorum.min_workers = workers;
  c.quorum.round_deadline_s = 30;
  c.quorum.start_timeout_s = 60;
  c.network.heartbeat_interval_ms = 100;
  c.network.heartbeat_timeout_ms = 1000;
  return c;
}

inline ParamSet TinyParams() {
  ParamSet p;
  p.layout.tensors = {{"w", {4, 4}}, {"b", {8}}};
  p.values.resize(24);
  for (size_t i = 0; i < p.values.size(); ++i) p.values[i] = 0.01f * static_cast<float>(i) - 0.1f;
  return p;
}

inline Message Wrap(Body body, const std::string& campaign = "tiny", const std::string& sender = "") {
  Message m;
  m.campaign_id = campaign;
  m.sender_id = sender;
  m.body = std::move(body);
  return m;
}

inline Hello HelloFrom(const std::string& site) {
  Hello h;
  h.site = site;
  h.device = "cpu";
  h.step_time_ms = 1;
  h.train_tokens = 1000;
  h.val_tokens = 100;
  return h;
}

// Stands in for the LibTorch executor: a site's "local training" moves each
// parameter towards a site-specific target, so deltas differ per site and the
// loss (distance to the target) falls. Arithmetic mirrors the real one
// (global - update in fp32) so digests must match the coordinator's.
// With the sparseloco codec it sends, per chunk, the k_c entries with the
// largest |delta| (no error feedback) with 2-bit codes over a per-tensor
// table {-2m, -m, m, 2m}/2 built from the tensor's peak m: enough for the
// coordinator's sparse path, not the device encoder's maths.
class FakeExecutor {
 public:
  explicit FakeExecutor(std::string site) : site_(std::move(site)) {}

  JobResult Run(const Job& job) {
    if (auto* c = std::get_if<ConfigureJob>(&job)) {
      codec_ = c->welcome.codec;
      plan_ = PlanLayout(TinyParams().layout, codec_.topk);
      return ConfigureDone{};
    }
    if (auto* s = std::get_if<SyncJob>(&job)) {
      if (s->bulk.empty()) {  // an offer: held already, or pulled
        if (global_.values.empty() || global_.Digest() != s->sync.digest) return SyncNeeded{s->offer};
        JobResult r = Eval(s->sync.round, s->sync.digest);
        std::get<EvalDone>(r).offer = s->offer;
        return r;
      }
      ++loads_;
      auto v = ParseUpdate(TinyParams().layout, plan_, s->sync.blob, s->bulk);
      if (!v.ok()) return JobFailed{false, ErrorCode::kBadPayload, s->sync.round, v.status().ToString()};
      global_ = ParamSet{TinyParams().layout, v->values};
      return Eval(s->sync.round, s->sync.digest);
    }
    if (auto* t = std::get_if<TrainJob>(&job)) {
      std::vector<float> delta(global_.values.size());
      const float target = site_ == "site-a" ? 1.0f : (site_ == "site-b" ? -1.0f : 0.5f);
      for (size_t i = 0; i < delta.size(); ++i) {
        const float local = global_.values[i] + 0.5f * (target - global_.values[i]);
        delta[i] = global_.values[i] - local;
      }
      auto enc = codec_.kind == CodecKind::kSparseLoCo ? SparseTopK(delta) : PackDenseFp32(global_.layout, delta);
      if (!enc.ok()) return JobFailed{false, ErrorCode::kInternal, t->round, enc.status().ToString()};
      TrainDone d;
      d.upload.round = t->round;
      d.upload.base_digest = global_.Digest();
      d.upload.train_loss = Loss();
      d.upload.tokens = 64;
      d.upload.step_time_ms = 1;
      d.upload.blob = enc->header;
      d.bulk = enc->bulk;
      return d;
    }
    const auto& a = std::get<ApplyJob>(job);
    auto u = ParseUpdate(global_.layout, plan_, a.aggregate.blob, a.bulk);
    if (!u.ok()) return JobFailed{false, ErrorCode::kBadPayload, a.aggregate.round, u.status().ToString()};
    last_aggregate_codec_ = a.aggregate.blob.codec;
    Status st = ApplyUpdate(plan_, *u, &global_.values);
    if (!st.ok()) return JobFailed{false, ErrorCode::kBadPayload, a.aggregate.round, st.ToString()};
    return Eval(a.aggregate.round, a.aggregate.digest);
  }

  const ParamSet& global() const { return global_; }
  int loads() const { return loads_; }  // models received whole
  CodecKind last_aggregate_codec() const { return last_aggregate_codec_; }

 private:
  StatusOr<Encoded> SparseTopK(const std::vector<float>& delta) const {
    SparseLoCoParts parts;
    for (const TensorPlan& t : plan_.tensors) {
      float peak = 0;
      for (int64_t i = 0; i < t.numel; ++i) peak = std::max(peak, std::abs(delta[t.offset + i]));
      parts.tables.insert(parts.tables.end(), {-peak, -peak / 2, peak / 2, peak});
      for (size_t c = t.first_chunk; c < t.first_chunk + t.num_chunks; ++c) {
        const Chunk& ch = plan_.chunks[c];
        std::vector<int64_t> order(ch.numel());
        for (int64_t l = 0; l < ch.numel(); ++l) order[l] = l;
        auto mag = [&](int64_t l) { return std::abs(delta[plan_.FlatIndex(&t - plan_.tensors.data(), c, l)]); };
        std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return mag(x) > mag(y); });
        order.resize(ch.k);
        std::sort(order.begin(), order.end());
        for (int64_t l : order) {
          const float v = delta[plan_.FlatIndex(&t - plan_.tensors.data(), c, l)];
          parts.indices.push_back(static_cast<uint16_t>(l));
          parts.codes.push_back(v < -peak * 0.75f ? 0 : v < 0 ? 1 : v < peak * 0.75f ? 2 : 3);
        }
      }
    }
    return PackSparseLoCo(global_.layout, plan_, parts);
  }

  double Loss() const {
    double s = 0;
    for (float v : global_.values) s += std::abs(v - 1.0f / 6.0f);  // mean of the site targets
    return s / static_cast<double>(global_.values.size()) + 0.1;
  }
  JobResult Eval(uint32_t round, uint64_t announced) {
    return EvalDone{round, Loss(), 100, global_.Digest(), global_.Digest() == announced, {}};
  }

  std::string site_;
  ParamSet global_;
  int loads_ = 0;
  CodecSpec codec_;
  LayoutPlan plan_;
  CodecKind last_aggregate_codec_ = CodecKind::kDenseFp32;
};

// A coordinator core and N worker cores over an InprocNetwork, every message
// through EncodeMessage/DecodeMessage. Time is a fake clock advanced by Step.
// Rounds close asynchronously, as in the daemon: the core's CloseJob runs at
// the next Step, after the messages of this one (so messages meet a round
// that is being aggregated).
class Cluster {
 public:
  // `prepare` runs on the coordinator before any worker exists (a restarted
  // coordinator restoring its state).
  explicit Cluster(CampaignConfig config, std::vector<std::string> sites,
                   const std::function<void(CoordinatorCore&)>& prepare = nullptr)
      : now_(TimePoint{} + std::chrono::hours(1)),
        coordinator_(config, CoordinatorCore::ClusterLayout(config, TinyParams()).value(), now_),
        coord_link_(net_.CreateEndpoint("coordinator")) {
    coordinator_.SetAsyncClose(true);
    if (prepare) prepare(coordinator_);
    for (const auto& s : sites) AddWorker(s);
  }

  void AddWorker(const std::string& site) {
    auto w = std::make_unique<Site>();
    w->name = site;
    w->link = net_.CreateEndpoint(site);
    w->core = std::make_unique<WorkerCore>(HelloFrom(site), "", WorkerTime{} + (now_ - TimePoint{}));
    w->exec = std::make_unique<FakeExecutor>(site);
    WorkerOutput out;
    w->core->Start(WorkerNow(), &out);
    Apply(*w, out);
    sites_[site] = std::move(w);
  }

  void RemoveWorker(const std::string& site) { sites_.erase(site); }

  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // One wave: sites read their messages and run their jobs, then the
  // coordinator reads what is queued for it;
  // then advances the clock by `dt` and ticks everyone.
  void Step(std::chrono::milliseconds dt = std::chrono::milliseconds(50)) {
    {
      bool progressed = false;
      Inbound in;
      for (auto& [name, w] : sites_) {
        if (w->paused || w->exited) continue;  // an exited worker process is gone
        while (w->link->TryReceive(&in)) {
          progressed = true;
          WorkerOutput out;
          auto msg = DecodeMessage(in.frames, WireLimits{});
          if (msg.ok()) {
            w->core->HandleMessage(*msg, WorkerNow(), &out);
          } else {
            w->core->HandleMalformed(msg.status(), &out);
          }
          Apply(*w, out);
        }
        while (!w->jobs.empty() && !w->hold_jobs) {
          progressed = true;
          Job j = std::move(w->jobs.front());
          w->jobs.erase(w->jobs.begin());
          WorkerOutput out;
          w->core->OnJobResult(w->exec->Run(j), WorkerNow(), &out);
          Apply(*w, out);
        }
      }
      // The round aggregated "on the compute thread" since the last step.
      std::vector<CloseJob> jobs = std::move(close_jobs_);
      close_jobs_.clear();
      for (CloseJob& job : jobs) {
        progressed = true;
        CoreOutput out;
        coordinator_.HandleClosed(coordinator_.aggregation()->Close(std::move(job), nullptr), now_, &out);
        ApplyCoordinator(out);
      }
      while (coord_link_->TryReceive(&in)) {
        progressed = true;
        CoreOutput out;
        auto msg = DecodeMessage(in.frames, WireLimits{});
        if (msg.ok()) {
          coordinator_.HandleMessage(in.peer, *msg, now_, &out);
        } else {
          coordinator_.HandleMalformed(in.peer, msg.status(), &out);
        }
        ApplyCoordinator(out);
      }
      (void)progressed;
    }
    now_ += dt;
    CoreOutput out;
    coordinator_.OnTick(now_, &out);
    ApplyCoordinator(out);
    for (auto& [name, w] : sites_) {
      if (w->paused || w->exited) continue;
      WorkerOutput wo;
      w->core->OnTick(WorkerNow(), &wo);
      Apply(*w, wo);
    }
  }

  // Steps until `pred` holds or `max_steps` pass.
  template <typename Pred>
  bool RunUntil(Pred pred, int max_steps = 2000) {
    for (int i = 0; i < max_steps; ++i) {
      if (pred()) return true;
      Step();
    }
    return pred();
  }

  // An operator command; what it makes the coordinator send is sent.
  ControlResponse Control(const std::string& command, std::vector<std::string> args = {}) {
    CoreOutput out;
    ControlResponse r = coordinator_.HandleControl({command, std::move(args)}, now_, &out);
    ApplyCoordinator(out);
    return r;
  }

  CoordinatorCore& coordinator() { return coordinator_; }
  FakeExecutor& exec(const std::string& site) { return *sites_.at(site)->exec; }
  WorkerCore& worker(const std::string& site) { return *sites_.at(site)->core; }
  // A paused site neither reads messages nor ticks (a hung or cut-off site).
  void Pause(const std::string& site, bool paused) { sites_.at(site)->paused = paused; }
  // Held jobs stay queued (a site busy training).
  void HoldJobs(const std::string& site, bool hold) { sites_.at(site)->hold_jobs = hold; }
  InprocNetwork& net() { return net_; }
  const std::vector<RoundRecord>& records() const { return records_; }
  const std::vector<RoundCommit>& commits() const { return commits_; }
  const std::vector<Message>& errors_to(const std::string& site) { return sites_.at(site)->errors; }
  bool finished() const { return finished_; }
  bool exited(const std::string& site) const { return sites_.at(site)->exited; }
  TimePoint now() const { return now_; }

 private:
  struct Site {
    std::string name;
    std::unique_ptr<Transport> link;
    std::unique_ptr<WorkerCore> core;
    std::unique_ptr<FakeExecutor> exec;
    std::vector<Job> jobs;
    std::vector<Message> errors;
    bool paused = false;
    bool hold_jobs = false;
    bool exited = false;
  };

  WorkerTime WorkerNow() const { return WorkerTime{} + (now_ - TimePoint{}); }

  void Apply(Site& w, WorkerOutput& out) {
    for (auto& m : out.messages) (void)w.link->Send("coordinator", EncodeMessage(m));
    for (auto& j : out.jobs) w.jobs.push_back(std::move(j));
    if (out.exit) w.exited = true;
  }

  void ApplyCoordinator(CoreOutput& out) {
    for (auto& c : out.commits) commits_.push_back(c);
    for (auto& o : out.messages) {
      if (std::holds_alternative<Error>(o.msg.body) && sites_.count(o.peer)) sites_[o.peer]->errors.push_back(o.msg);
      (void)coord_link_->Send(o.peer, EncodeMessage(o.msg));
    }
    for (auto& r : out.committed) records_.push_back(r);
    for (auto& j : out.close_jobs) close_jobs_.push_back(std::move(j));
    if (out.finished) finished_ = true;
  }

  TimePoint now_;
  InprocNetwork net_;
  CoordinatorCore coordinator_;
  std::unique_ptr<Transport> coord_link_;
  std::map<std::string, std::unique_ptr<Site>> sites_;
  std::vector<RoundRecord> records_;
  std::vector<RoundCommit> commits_;
  std::vector<CloseJob> close_jobs_;
  bool finished_ = false;
};

}  // namespace lowband::testing
