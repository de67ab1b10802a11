// A site of two CPU ranks (c10d Gloo), each rank a thread of this test
// with its own process group, meeting at a FileStore.
#include "worker/site_group.h"

#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "tests/fakes/temp_dir.h"
#include "tests/fakes/tiny_model.h"
#include "worker/trainer.h"
#include "tests/fakes/wait.h"

namespace lowband {
namespace {

SiteGroupOptions Options(int rank, const std::string& file, int seconds = 20) {
  SiteGroupOptions o;
  o.rank = rank;
  o.size = 2;
  o.file = file;
  o.device = "cpu";
  o.timeout = std::chrono::seconds(seconds);
  return o;
}

// Runs fn(rank, group) for ranks 0 and 1 on two threads; a rank whose
// group cannot form reports it in `failures`.
// `left[rank]`, when given, is set once that rank's group is gone.
void OnTwoRanks(const std::string& file, const std::function<void(int, SiteGroup&)>& fn,
                std::vector<std::string>* failures, int seconds = 20, std::atomic<bool>* left = nullptr) {
  failures->assign(2, "");
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      {
        auto g = SiteGroup::OpenStore(Options(rank, file, seconds));
        if (!g.ok()) {
          (*failures)[rank] = g.status().ToString();
        } else if (Status st = (*g)->Join(); !st.ok()) {
          (*failures)[rank] = st.ToString();
        } else {
          fn(rank, **g);
        }
      }
      if (left) left[rank] = true;
    });
  }
  for (auto& t : threads) t.join();
}

using testing::TinyModel;

TrainingConfig TinyTraining() {
  TrainingConfig t;
  t.batch_size = 8;
  t.eval_batches = 5;  // odd: the ranks evaluate 3 and 2 batches
  t.seed = 99;
  t.inner.lr = 3e-3;
  t.inner.warmup_steps = 2;
  return t;
}

std::string Text(int repeats, int salt) {
  std::string s;
  for (int i = 0; i < repeats; ++i) {
    s += "rank " + std::to_string((i * 7 + salt) % 13) + " trains on its own batches of the same site.\n";
  }
  return s;
}

}  // namespace

TEST_CASE("site group: two Gloo ranks add, gather and pass jobs", "[torch]") {
  REQUIRE(SiteGroupUnsupported("cpu") == "");
  testing::TempDir dir;
  std::vector<double> sums[2];
  std::vector<uint64_t> gathered[2];
  std::vector<std::optional<std::vector<uint8_t>>> fetched;
  std::vector<uint8_t> big(300000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 31 + 7);
  Status statuses[2][3];
  std::vector<std::string> failures;
  OnTwoRanks(dir.Path("store"), [&](int rank, SiteGroup& g) {
    sums[rank] = {rank + 1.0, 0.25};
    statuses[rank][0] = g.AllreduceSum(&sums[rank]);
    auto all = g.AllGather(0xF000000000000000ull + static_cast<uint64_t>(rank));
    if (all.ok()) gathered[rank] = *all;
    statuses[rank][1] = all.status();
    if (rank == 0) {
      Status st = g.Post(0, {1, 2, 3});
      if (st.ok()) st = g.Post(1, big);
      if (st.ok()) st = g.Post(2, {});  // the stop marker
      statuses[0][2] = st;
    } else {
      for (uint64_t seq = 0; seq < 3; ++seq) {
        auto job = g.Fetch(seq, nullptr);
        if (!job.ok()) {
          statuses[1][2] = job.status();
          break;
        }
        fetched.push_back(*job);
      }
    }
  }, &failures);
  REQUIRE(failures[0].empty());
  REQUIRE(failures[1].empty());
  for (int r = 0; r < 2; ++r) {
    for (const Status& st : statuses[r]) CHECK(st.ok());
    CHECK(sums[r] == std::vector<double>{3.0, 0.5});
    CHECK(gathered[r] == std::vector<uint64_t>{0xF000000000000000ull, 0xF000000000000001ull});
  }
  REQUIRE(fetched.size() == 3);
  CHECK(fetched[0] == std::optional<std::vector<uint8_t>>(std::vector<uint8_t>{1, 2, 3}));
  CHECK(fetched[1] == std::optional<std::vector<uint8_t>>(big));
  CHECK(fetched[2] == std::optional<std::vector<uint8_t>>(std::vector<uint8_t>{}));
}

TEST_CASE("site group: a follower waiting for a job stops when asked", "[torch]") {
  REQUIRE(SiteGroupUnsupported("cpu") == "");
  testing::TempDir dir;
  bool stopped = false;
  std::vector<std::string> failures;
  OnTwoRanks(dir.Path("store"), [&](int rank, SiteGroup& g) {
    if (rank == 0) return;
    int polls = 0;
    auto job = g.Fetch(0, [&] { return ++polls > 5; });
    stopped = job.ok() && !job->has_value();
  }, &failures);
  REQUIRE(failures[0].empty());
  CHECK(stopped);
}

TEST_CASE("site group: a rank that leaves fails the collective at once, not at the timeout", "[torch]") {
  REQUIRE(SiteGroupUnsupported("cpu") == "");
  testing::TempDir dir;
  Status after;
  double waited_s = 0;
  std::vector<std::string> failures;
  std::atomic<bool> left[2] = {false, false};
  bool saw_left = false;
  OnTwoRanks(dir.Path("store"), [&](int rank, SiteGroup& g) {
    if (rank == 1) return;  // its group goes with its thread
    saw_left = testing::WaitUntil([&] { return left[1].load(); }, std::chrono::milliseconds(10000));
    const auto start = std::chrono::steady_clock::now();
    std::vector<double> v{1.0};
    after = g.AllreduceSum(&v);
    waited_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }, &failures, /*seconds=*/60, left);
  REQUIRE(failures[0].empty());
  REQUIRE(saw_left);
  CHECK_FALSE(after.ok());
  CHECK(after.code() == StatusCode::kUnavailable);
  CHECK(after.message().find("rank") != std::string::npos);
  CHECK(waited_s < 30);  // the timeout is 60 s: the loss was seen, not waited out
}

TEST_CASE("site group: the store of rank 0 must be reachable", "[torch]") {
  SiteGroupOptions o;
  o.rank = 1;
  o.size = 2;
  o.host = "127.0.0.1";
  o.port = 0;
  auto g = SiteGroup::OpenStore(o);
  CHECK_FALSE(g.ok());
  o.rank = 2;
  CHECK_FALSE(SiteGroup::OpenStore(o).ok());
}

TEST_CASE("site group: two ranks train one replica, with twice the tokens", "[torch]") {
  REQUIRE(SiteGroupUnsupported("cpu") == "");
  testing::TempDir dir;
  Corpus corpus = Corpus::FromText(Text(400, 1), Text(80, 5));
  struct RankResult {
    Status status;
    TrainResult train;
    ParamSet local;
    EvalResult eval;
  } out[2];
  // Made here, one after the other: model initialisation draws from
  // LibTorch's global generator (each rank of a real site is a process).
  std::unique_ptr<Trainer> trainers[2];
  for (auto& t : trainers) {
    auto made = Trainer::Create(TinyModel(), TinyTraining(), "cpu", 1, &corpus, /*data_seed=*/5);
    REQUIRE(made.ok());
    t = std::move(made).value();
  }
  REQUIRE(trainers[0]->global().Digest() == trainers[1]->global().Digest());
  std::vector<std::string> failures;
  OnTwoRanks(dir.Path("store"), [&](int rank, SiteGroup& g) {
    RankResult& r = out[rank];
    auto& t = trainers[rank];
    t->SetGroup(&g);
    auto tr = t->TrainRound(4);
    if (!tr.ok()) {
      r.status = tr.status();
      return;
    }
    r.train = std::move(tr).value();
    r.local = t->LocalParams();
    auto ev = t->Evaluate();
    r.status = ev.status();
    if (ev.ok()) r.eval = *ev;
  }, &failures);
  REQUIRE(failures[0].empty());
  REQUIRE(failures[1].empty());
  REQUIRE(out[0].status.ok());
  REQUIRE(out[1].status.ok());
  // One replica: the same weights bit for bit, the same figures.
  CHECK(out[0].local.values == out[1].local.values);
  CHECK(out[0].local.Digest() == out[1].local.Digest());
  CHECK(out[0].train.mean_loss == out[1].train.mean_loss);
  CHECK(out[0].train.tokens == 2u * 4 * 8 * 16);
  CHECK(out[1].train.tokens == out[0].train.tokens);
  CHECK(out[0].eval.loss == out[1].eval.loss);
  CHECK(out[0].eval.tokens == 5u * 8 * 16);
  // Only rank 0 uploads.
  CHECK_FALSE(out[0].train.upload.bulk.empty());
  CHECK(out[1].train.upload.bulk.empty());

  // The ranks drew different batches: one rank alone on rank 0's batches
  // ends elsewhere.
  auto alone = Trainer::Create(TinyModel(), TinyTraining(), "cpu", 1, &corpus, /*data_seed=*/5);
  REQUIRE(alone.ok());
  auto tr = (*alone)->TrainRound(4);
  REQUIRE(tr.ok());
  CHECK(tr->tokens == 4u * 8 * 16);
  CHECK((*alone)->LocalParams().values != out[0].local.values);
  auto ev = (*alone)->Evaluate();
  REQUIRE(ev.ok());
  CHECK(ev->tokens == out[0].eval.tokens);
}

}  // namespace lowband
