// PipelineRunner over an in-process network of fake channels: S runners,
// each on its own thread, train exactly like the StageTrainer chain run
// sequentially; a bottlenecked bf16 pipeline learns; silent, gone, lying
// and stale neighbours give clear Statuses and leave the trainer clean;
// EvalBatch equals Evaluate chained by hand.
#include "worker/pipeline_runner.h"

#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ml/model.h"
#include "codec/params.h"
#include "tests/fakes/tiny_model.h"

namespace lowband {
namespace {

using std::chrono::milliseconds;
using Message = std::pair<Activation, Bytes>;
using Trainers = std::vector<std::unique_ptr<StageTrainer>>;

// One thread-safe mailbox per stage of one replica.
class FakeNetwork {
 public:
  explicit FakeNetwork(int stages) {
    for (int s = 0; s < stages; ++s) boxes_.push_back(std::make_unique<Box>());
  }

  Status Deliver(int to, Message msg) {
    if (to < 0 || to >= static_cast<int>(boxes_.size())) return Unavailable("no stage " + std::to_string(to));
    Box& box = *boxes_[static_cast<size_t>(to)];
    {
      std::lock_guard<std::mutex> lock(box.mu);
      if (box.gone) return Unavailable("stage " + std::to_string(to) + " is gone");
      box.queue.push_back(std::move(msg));
    }
    box.cv.notify_all();
    return Status::Ok();
  }

  StatusOr<Message> Take(int stage, milliseconds timeout) {
    Box& box = *boxes_[static_cast<size_t>(stage)];
    std::unique_lock<std::mutex> lock(box.mu);
    if (!box.cv.wait_for(lock, timeout, [&] { return !box.queue.empty(); })) {
      return DeadlineExceeded("nothing for stage " + std::to_string(stage));
    }
    Message msg = std::move(box.queue.front());
    box.queue.pop_front();
    return msg;
  }

  void MarkGone(int stage) {
    Box& box = *boxes_[static_cast<size_t>(stage)];
    std::lock_guard<std::mutex> lock(box.mu);
    box.gone = true;
  }

  size_t Pending(int stage) {
    Box& box = *boxes_[static_cast<size_t>(stage)];
    std::lock_guard<std::mutex> lock(box.mu);
    return box.queue.size();
  }

 private:
  struct Box {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Message> queue;
    bool gone = false;
  };
  std::vector<std::unique_ptr<Box>> boxes_;
};

class FakeChannel : public PeerChannel {
 public:
  FakeChannel(FakeNetwork* net, int stage) : net_(net), stage_(stage) {}
  Status Send(int to_stage, Activation header, Bytes bulk) override {
    return net_->Deliver(to_stage, Message(std::move(header), std::move(bulk)));
  }
  StatusOr<Message> Receive(milliseconds timeout) override { return net_->Take(stage_, timeout); }

 private:
  FakeNetwork* net_;
  int stage_;
};

ModelConfig TinyModel() { return testing::TinyModel(3, 32, 4, 8, 32); }

constexpr int kMicro = 4;
constexpr int64_t kBatch = 8;

InnerOptimizerConfig TestOptimizer() {
  InnerOptimizerConfig o;
  o.lr = 1e-2;
  o.eps = 1e-6;  // keeps Adam from turning float noise in near-zero gradients into full steps
  o.grad_clip = 1.0;
  return o;
}

// Stages of `m.layers` blocks split as evenly as possible, seeded alike, so
// two calls build identical pipelines.
Trainers MakeTrainers(const ModelConfig& m, int stages, int ratio, WireDtype wire, const InnerOptimizerConfig& opt) {
  Trainers out;
  int first = 0;
  for (int s = 0; s < stages; ++s) {
    const int blocks = m.layers / stages + (s < m.layers % stages ? 1 : 0);
    auto t = StageTrainer::Create(m, StageSpec{s, stages, first, blocks, ratio}, opt, wire, kMicro,
                                  torch::Device(torch::kCPU), 7);
    REQUIRE(t.ok());
    out.push_back(std::move(t).value());
    first += blocks;
  }
  return out;
}

struct Pipe {
  explicit Pipe(int stages) : net(stages) {}
  FakeNetwork net;
  Trainers trainers;
  std::vector<std::unique_ptr<FakeChannel>> channels;
  std::vector<std::unique_ptr<PipelineRunner>> runners;
};

std::unique_ptr<Pipe> MakePipe(const ModelConfig& m, int stages, int ratio, WireDtype wire, ScheduleKind kind,
                               milliseconds timeout = milliseconds(20000),
                               const InnerOptimizerConfig& opt = TestOptimizer()) {
  auto p = std::make_unique<Pipe>(stages);
  p->trainers = MakeTrainers(m, stages, ratio, wire, opt);
  PipelineRunnerOptions o;
  o.schedule = kind;
  o.wire = wire;
  o.batch_size = kBatch;
  o.tokens = m.context;
  o.peer_timeout = timeout;
  for (int s = 0; s < stages; ++s) {
    p->channels.push_back(std::make_unique<FakeChannel>(&p->net, s));
    auto r = PipelineRunner::Create(p->trainers[static_cast<size_t>(s)].get(), p->channels.back().get(), o);
    REQUIRE(r.ok());
    p->runners.push_back(std::move(r).value());
  }
  return p;
}

// fn(stage) on one thread per stage. Catch assertions stay on this thread.
void OnThreads(int stages, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int s = 0; s < stages; ++s) threads.emplace_back(fn, s);
  for (auto& t : threads) t.join();
}

// Every stage's TrainStep(round, step) at once; stage 0 gets the batch.
std::vector<StatusOr<PipelineStepResult>> TrainAll(Pipe& p, uint32_t round, uint32_t step, const torch::Tensor& x,
                                                   const torch::Tensor& y) {
  const int n = static_cast<int>(p.runners.size());
  std::vector<StatusOr<PipelineStepResult>> out(static_cast<size_t>(n), Internal("not run"));
  OnThreads(n, [&](int s) {
    auto& r = *p.runners[static_cast<size_t>(s)];
    out[static_cast<size_t>(s)] = s == 0 ? r.TrainStep(round, step, x, y) : r.TrainStep(round, step);
  });
  return out;
}

// The sequential reference: every micro-batch forward through every stage,
// then every backward in micro-batch order (the order in which both
// schedules accumulate each stage's gradients), then each stage's Step().
double SequentialStep(Trainers& pipe, const torch::Tensor& x, const torch::Tensor& y) {
  const int64_t mb = x.size(0) / kMicro;
  double loss_sum = 0;
  for (int m = 0; m < kMicro; ++m) {
    torch::Tensor h = x.narrow(0, m * mb, mb);
    for (auto& st : pipe) {
      auto out = st->Forward(m, st->first() ? h : FromWire(h), y.narrow(0, m * mb, mb));
      REQUIRE(out.ok());
      h = *out;
    }
    loss_sum += h.item<double>();
  }
  for (int m = 0; m < kMicro; ++m) {
    torch::Tensor g;
    for (size_t s = pipe.size(); s-- > 0;) {
      auto back = pipe[s]->Backward(m, g.defined() ? FromWire(g) : g);
      REQUIRE(back.ok());
      g = *back;
    }
  }
  for (auto& st : pipe) REQUIRE(st->Step().ok());
  return loss_sum / kMicro;
}

double EvaluateChain(Trainers& pipe, const torch::Tensor& x, const torch::Tensor& y) {
  torch::Tensor h = x;
  for (auto& st : pipe) {
    auto out = st->Evaluate(st->first() ? h : FromWire(h), y);
    REQUIRE(out.ok());
    h = *out;
  }
  return h.item<double>();
}

// Largest relative difference between matching parameters.
double MaxParamDiff(const Trainers& a, const Trainers& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t s = 0; s < a.size(); ++s) {
    const auto pa = a[s]->parameters(), pb = b[s]->parameters();
    REQUIRE(pa.size() == pb.size());
    for (size_t i = 0; i < pa.size(); ++i) {
      const double rel = ((pa[i] - pb[i]).norm() / (pb[i].norm() + 1e-12)).item<double>();
      worst = std::max(worst, rel);
    }
  }
  return worst;
}

// An Activation with its blob fields filled from `t`'s bytes.
Message Craft(Activation a, const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  Bytes bulk(p, p + c.numel() * c.element_size());
  a.blob.num_elements = static_cast<uint64_t>(c.numel());
  a.blob.byte_length = bulk.size();
  a.blob.checksum = BulkChecksum(bulk.data(), bulk.size());
  return Message(a, std::move(bulk));
}

// A well-formed fp32 boundary input from stage 0 to stage 1 (ratio 1).
Activation InputHeader(uint32_t round, uint32_t step, uint32_t mb, const ModelConfig& m) {
  Activation a;
  a.round = round;
  a.step = step;
  a.micro_batch = mb;
  a.stage = 0;
  a.batch = kBatch / kMicro;
  a.tokens = static_cast<uint32_t>(m.context);
  a.width = static_cast<uint32_t>(m.d_model);
  a.dtype = WireDtype::kFp32;
  return a;
}

torch::Tensor Boundary(const ModelConfig& m, int64_t width) {
  return torch::randn({kBatch / kMicro, m.context, width});
}

struct Batch {
  torch::Tensor x, y;
};

Batch RandomBatch(const ModelConfig& m, uint64_t seed) {
  torch::manual_seed(seed);
  return {torch::randint(m.vocab, {kBatch, m.context}, torch::kInt64),
          torch::randint(m.vocab, {kBatch, m.context}, torch::kInt64)};
}

TEST_CASE("pipeline runner: a threaded step equals the sequential stage chain", "[unit][pipeline_runner]") {
  const ModelConfig m = TinyModel();
  const Batch b = RandomBatch(m, 11);
  for (const int stages : {2, 3}) {
    for (const ScheduleKind kind : {ScheduleKind::kGPipe, ScheduleKind::k1F1B}) {
      INFO(stages << " stages, " << ScheduleKindName(kind));
      auto p = MakePipe(m, stages, /*ratio=*/1, WireDtype::kFp32, kind);
      Trainers ref = MakeTrainers(m, stages, 1, WireDtype::kFp32, TestOptimizer());
      REQUIRE(MaxParamDiff(p->trainers, ref) == 0);

      const auto results = TrainAll(*p, 0, 0, b.x, b.y);
      const double ref_loss = SequentialStep(ref, b.x, b.y);
      for (int s = 0; s < stages; ++s) {
        INFO("stage " << s);
        const auto& r = results[static_cast<size_t>(s)];
        REQUIRE(r.ok());
        CHECK(r->tokens == kBatch * m.context);
        CHECK(r->stale_dropped == 0);
        const int want_peak = kind == ScheduleKind::kGPipe ? kMicro : std::min(stages - s, kMicro);
        CHECK(r->peak_stashed == want_peak);
        if (s == stages - 1) {
          CHECK(r->loss == Approx(ref_loss).epsilon(1e-6));
        } else {
          CHECK(std::isnan(r->loss));
        }
        CHECK(p->trainers[static_cast<size_t>(s)]->step_count() == 1);
        CHECK(p->runners[static_cast<size_t>(s)]->held() == 0);
        CHECK(p->net.Pending(s) == 0);
      }
      // Bulk bytes: fp32 boundaries of d_model, one-byte labels (vocab 32).
      const uint64_t boundary = kBatch * m.context * m.d_model * 4;
      const uint64_t labels = kBatch * m.context * 1;
      CHECK(results[0]->bytes_sent == boundary + labels);
      CHECK(results[0]->bytes_received == boundary);
      CHECK(results.back()->bytes_received == boundary + labels);
      CHECK(results.back()->bytes_sent == boundary);
      CHECK(MaxParamDiff(p->trainers, ref) < 1e-5);
    }
  }
}

TEST_CASE("pipeline runner: a ratio-16 bf16 pipeline learns a fixed batch", "[unit][pipeline_runner]") {
  ModelConfig m = TinyModel();
  m.layers = 2;
  m.d_model = 64;  // b = 4 at ratio 16
  InnerOptimizerConfig opt = TestOptimizer();
  opt.warmup_steps = 5;
  auto p = MakePipe(m, 2, /*ratio=*/16, WireDtype::kBf16, ScheduleKind::k1F1B, milliseconds(20000), opt);
  REQUIRE(p->trainers[0]->boundary_width() == 4);
  const Batch b = RandomBatch(m, 8);
  constexpr int kSteps = 20;
  std::vector<double> losses(kSteps, 0);
  std::vector<Status> status(2);
  OnThreads(2, [&](int s) {
    auto& r = *p->runners[static_cast<size_t>(s)];
    for (uint32_t step = 0; step < kSteps; ++step) {
      auto res = s == 0 ? r.TrainStep(0, step, b.x, b.y) : r.TrainStep(0, step);
      if (!res.ok()) {
        status[static_cast<size_t>(s)] = res.status();
        return;
      }
      if (s == 1) losses[step] = res->loss;
    }
  });
  for (const auto& st : status) REQUIRE(st.ok());
  INFO("loss " << losses.front() << " -> " << losses.back());
  CHECK(std::isfinite(losses.back()));
  CHECK(losses.back() < 0.5 * losses.front());
}

TEST_CASE("pipeline runner: faults fail the step cleanly", "[unit][pipeline_runner]") {
  const ModelConfig m = TinyModel();
  const Batch b = RandomBatch(m, 5);
  const milliseconds timeout(300);
  auto p = MakePipe(m, 2, /*ratio=*/1, WireDtype::kFp32, ScheduleKind::k1F1B, timeout);
  Trainers ref = MakeTrainers(m, 2, 1, WireDtype::kFp32, TestOptimizer());
  auto& s0 = *p->runners[0];
  auto& s1 = *p->runners[1];
  // Whatever went wrong before, a step with both stages live then matches
  // one sequential step: the failed one left no trace in the trainers.
  uint32_t next_step = 1;
  auto recovers = [&] {
    const auto results = TrainAll(*p, 0, next_step, b.x, b.y);
    for (const auto& r : results) REQUIRE(r.ok());
    SequentialStep(ref, b.x, b.y);
    CHECK(MaxParamDiff(p->trainers, ref) < 1e-5);
    for (auto& t : p->trainers) CHECK(t->step_count() == 1);
    return results;
  };

  SECTION("a silent next stage: DeadlineExceeded within the timeout") {
    const auto start = std::chrono::steady_clock::now();
    auto r = s0.TrainStep(0, 0, b.x, b.y);
    const auto took = std::chrono::steady_clock::now() - start;
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kDeadlineExceeded);
    CHECK(r.status().message().find("stage 0 round 0 step 0") != std::string::npos);
    CHECK(r.status().message().find("gradients 0/4") != std::string::npos);
    CHECK(took >= timeout);
    CHECK(took < timeout + milliseconds(5000));
    // Every label, then F0 and F1 (F1 waits for nothing; B0 waits for stage 1).
    CHECK(p->net.Pending(1) == kMicro + 2);
    const auto results = recovers();
    CHECK(results[1]->stale_dropped == kMicro + 2);  // the failed step's labels and inputs
  }

  SECTION("a silent previous stage: DeadlineExceeded naming what is missing") {
    auto r = s1.TrainStep(0, 0);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kDeadlineExceeded);
    CHECK(r.status().message().find("inputs 0/4 received, labels 0/4 received") != std::string::npos);
    recovers();
  }

  SECTION("a gone neighbour: Unavailable") {
    p->net.MarkGone(1);
    auto r = s0.TrainStep(0, 0, b.x, b.y);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kUnavailable);
    CHECK(r.status().message().find("gone") != std::string::npos);
    CHECK(p->trainers[0]->step_count() == 0);
    for (const auto& t : p->trainers[0]->parameters()) CHECK(!t.grad().defined());
  }

  SECTION("bad batch on stage 0: InvalidArgument before anything is sent") {
    auto r = s0.TrainStep(0, 0, b.x.narrow(0, 0, 4), b.y);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find("inputs must be int64 [8, 8]") != std::string::npos);
    r = s0.TrainStep(0, 1, b.x, b.y.to(torch::kInt32));
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(p->net.Pending(1) == 0);
    next_step = 2;
    recovers();
    // A step key that does not increase is refused before anything runs.
    r = s0.TrainStep(0, 2, b.x, b.y);
    CHECK(r.status().code() == StatusCode::kFailedPrecondition);
    CHECK(r.status().message().find("not after the last one begun, round 0 step 2") != std::string::npos);
    CHECK(p->trainers[0]->step_count() == 1);
    // Eval keys are separate: this one fails only for lack of a batch.
    CHECK(s0.EvalBatch(0, 0).status().code() == StatusCode::kInvalidArgument);
  }

  SECTION("bad messages: InvalidArgument naming the problem, no crash") {
    struct Case {
      const char* name;
      std::function<Message()> make;
      StatusCode code;
      const char* says;
    };
    const auto good = [&](uint32_t mb) { return Craft(InputHeader(0, 0, mb, m), Boundary(m, m.d_model)); };
    const std::vector<Case> cases = {
        {"wrong width", [&] { auto a = InputHeader(0, 0, 0, m); a.width = 16;
                              return Craft(a, Boundary(m, 16)); },
         StatusCode::kInvalidArgument, "width is 16, expected 32"},
        {"wrong tokens", [&] { auto a = InputHeader(0, 0, 0, m); a.tokens = 4;
                               return Craft(a, torch::randn({2, 4, m.d_model})); },
         StatusCode::kInvalidArgument, "tokens is 4, expected 8"},
        {"micro-batch out of range", [&] { return good(kMicro); },
         StatusCode::kInvalidArgument, "micro_batch 4 is not below 4"},
        {"wrong dtype", [&] { auto a = InputHeader(0, 0, 0, m); a.dtype = WireDtype::kBf16;
                              return Craft(a, Boundary(m, m.d_model).to(torch::kBFloat16)); },
         StatusCode::kInvalidArgument, "dtype"},
        {"non-finite", [&] { auto t = Boundary(m, m.d_model); t[1][2][3].fill_(NAN);
                             return Craft(InputHeader(0, 0, 0, m), t); },
         StatusCode::kInvalidArgument, "not finite"},
        {"short bulk", [&] { auto msg = good(0); msg.second.resize(msg.second.size() - 4); return msg; },
         StatusCode::kInvalidArgument, "payload bytes"},
        {"checksum", [&] { auto msg = good(0); msg.first.blob.checksum ^= 1; return msg; },
         StatusCode::kCorruption, "checksum"},
        {"gradient to the last stage", [&] { auto a = InputHeader(0, 0, 0, m); a.backward = true; a.stage = 2;
                                             return Craft(a, Boundary(m, m.d_model)); },
         StatusCode::kInvalidArgument, "no gradient is expected by the last stage"},
        {"wrong sender", [&] { auto a = InputHeader(0, 0, 0, m); a.stage = 3;
                               return Craft(a, Boundary(m, m.d_model)); },
         StatusCode::kInvalidArgument, "stage is 3, expected 0"},
    };
    // Each under the step the last stage is on, so it is checked, not dropped.
    for (const auto& c : cases) {
      INFO(c.name);
      Message msg = c.make();
      msg.first.step = next_step;
      REQUIRE(p->net.Deliver(1, std::move(msg)).ok());
      auto r = s1.TrainStep(0, next_step++);
      REQUIRE_FALSE(r.ok());
      CHECK(r.status().code() == c.code);
      CHECK(r.status().message().find(c.says) != std::string::npos);
      CHECK(r.status().message().find("stage 1 round 0 step") != std::string::npos);
    }
    SECTION("a duplicate") {
      for (int i = 0; i < 2; ++i) {
        Message msg = good(1);
        msg.first.step = next_step;
        REQUIRE(p->net.Deliver(1, std::move(msg)).ok());
      }
      auto r = s1.TrainStep(0, next_step++);
      REQUIRE_FALSE(r.ok());
      CHECK(r.status().code() == StatusCode::kInvalidArgument);
      CHECK(r.status().message().find("micro-batch 1: duplicate") != std::string::npos);
    }
    SECTION("a bad gradient into stage 0") {
      Activation a = InputHeader(0, next_step, 0, m);
      a.backward = true;
      a.stage = 1;
      a.batch = 3;
      REQUIRE(p->net.Deliver(0, Craft(a, torch::randn({3, m.context, m.d_model}))).ok());
      auto r = s0.TrainStep(0, next_step++, b.x, b.y);
      REQUIRE_FALSE(r.ok());
      CHECK(r.status().code() == StatusCode::kInvalidArgument);
      CHECK(r.status().message().find("gradient from stage 1 micro-batch 0") != std::string::npos);
      CHECK(r.status().message().find("batch is 3, expected 2") != std::string::npos);
    }
    for (auto& t : p->trainers) CHECK(t->step_count() == 0);
    recovers();
  }

  SECTION("stale messages are dropped and the step succeeds; early ones are held") {
    REQUIRE(p->net.Deliver(1, Craft(InputHeader(0, 0, 2, m), Boundary(m, m.d_model))).ok());
    Activation g = InputHeader(0, 0, 1, m);
    g.backward = true;
    g.stage = 1;
    REQUIRE(p->net.Deliver(0, Craft(g, Boundary(m, m.d_model))).ok());
    // For a step not begun yet: kept, not fatal.
    REQUIRE(p->net.Deliver(1, Craft(InputHeader(0, 9, 0, m), Boundary(m, m.d_model))).ok());
    const auto results = recovers();
    CHECK(results[0]->stale_dropped == 1);
    CHECK(results[1]->stale_dropped == 1);
    CHECK(s1.held() == 1);
    CHECK(s0.held() == 0);
  }
}

TEST_CASE("pipeline runner: EvalBatch equals Evaluate chained by hand", "[unit][pipeline_runner]") {
  const ModelConfig m = TinyModel();
  for (const int ratio : {1, 4}) {
    const WireDtype wire = ratio == 1 ? WireDtype::kFp32 : WireDtype::kBf16;
    INFO("ratio " << ratio);
    constexpr int kStages = 3;
    auto p = MakePipe(m, kStages, ratio, wire, ScheduleKind::k1F1B);
    Trainers ref = MakeTrainers(m, kStages, ratio, wire, TestOptimizer());
    std::vector<Batch> evals = {RandomBatch(m, 1), RandomBatch(m, 2), RandomBatch(m, 3)};
    const Batch train = RandomBatch(m, 4);

    // Stage 0 runs ahead through the eval batches and into the training
    // step; the later stages hold what comes early.
    std::vector<std::vector<double>> got(kStages);
    std::vector<Status> status(kStages);
    OnThreads(kStages, [&](int s) {
      auto& r = *p->runners[static_cast<size_t>(s)];
      auto eval = [&](uint32_t round, uint32_t i, const Batch& e) {
        auto l = s == 0 ? r.EvalBatch(round, i, e.x, e.y) : r.EvalBatch(round, i);
        if (!l.ok()) return l.status();
        got[static_cast<size_t>(s)].push_back(*l);
        return Status::Ok();
      };
      Status st;
      for (uint32_t i = 0; i < evals.size() && st.ok(); ++i) st = eval(0, i, evals[i]);
      if (st.ok()) {
        auto t = s == 0 ? r.TrainStep(0, 0, train.x, train.y) : r.TrainStep(0, 0);
        if (!t.ok()) st = t.status();
      }
      if (st.ok()) st = eval(1, 0, evals[0]);
      status[static_cast<size_t>(s)] = st;
    });
    for (const auto& st : status) REQUIRE(st.ok());

    std::vector<double> want;
    for (const auto& e : evals) want.push_back(EvaluateChain(ref, e.x, e.y));
    SequentialStep(ref, train.x, train.y);
    want.push_back(EvaluateChain(ref, evals[0].x, evals[0].y));

    REQUIRE(got[kStages - 1].size() == want.size());
    for (size_t i = 0; i < want.size(); ++i) CHECK(got[kStages - 1][i] == Approx(want[i]).epsilon(1e-6));
    CHECK(std::abs(want.back() - want.front()) > 1e-6);  // the step in between changed the model
    for (int s = 0; s + 1 < kStages; ++s) {
      for (double l : got[static_cast<size_t>(s)]) CHECK(std::isnan(l));
    }
    for (int s = 0; s < kStages; ++s) {
      CHECK(p->runners[static_cast<size_t>(s)]->held() == 0);
      CHECK(p->net.Pending(s) == 0);
    }
  }
}

TEST_CASE("pipeline runner: bad options are listed together", "[unit][pipeline_runner]") {
  const ModelConfig m = TinyModel();
  Trainers t = MakeTrainers(m, 2, 1, WireDtype::kFp32, TestOptimizer());
  FakeNetwork net(2);
  FakeChannel ch(&net, 0);
  PipelineRunnerOptions o;
  o.batch_size = 6;  // not a multiple of 4 micro-batches
  o.tokens = 0;
  o.peer_timeout = milliseconds(0);
  auto r = PipelineRunner::Create(t[0].get(), &ch, o);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  const std::string msg = r.status().message();
  CHECK(msg.find("batch_size 6") != std::string::npos);
  CHECK(msg.find("tokens 0") != std::string::npos);
  CHECK(msg.find("peer_timeout") != std::string::npos);
  CHECK(PipelineRunner::Create(nullptr, &ch, o).status().code() == StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lowband
