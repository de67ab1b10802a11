#include "worker/service.h"

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <optional>
#include <limits>
#include <thread>

#include "net/throttle.h"
#include "net/zmq/event_loop.h"
#include "net/zmq/curve.h"
#include "base/failpoint.h"
#include "base/log.h"
#include "ops/metrics_http.h"
#include "ops/systemd.h"
#include "net/zmq/zmq_transport.h"
#include "protocol/wire.h"
#include "worker/core.h"
#include "worker/executor.h"
#include "worker/peer_links.h"
#include "worker/site_group.h"
#include "worker/trainer.h"
#include "worker/welcome_config.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>

namespace lowband {
namespace {

// FIFO of jobs for the training thread. Bounded: the core queues a handful
// (configure, sync, train, apply), or after a model transfer or a catch-up
// the messages that waited for it (at most WorkerCore::kMaxHeld), so
// hitting the bound is a bug.
class JobQueue {
 public:
  void Push(Job job) {
    std::lock_guard<std::mutex> lock(mu_);
    LOWBAND_CHECK(jobs_.size() < WorkerCore::kMaxHeld + 64);
    jobs_.push_back(std::move(job));
    cv_.notify_one();
  }
  // Blocks; nullopt once closed.
  std::optional<Job> Pop() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return closed_ || !jobs_.empty(); });
    if (jobs_.empty()) return std::nullopt;
    Job j = std::move(jobs_.front());
    jobs_.pop_front();
    return j;
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    jobs_.clear();
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool closed_ = false;
};

// The ranks of this site that this process joins, with the local ones it
// started; the FileStore file it made (rank 0 on one host), removed at the end.
struct FormedSite {
  std::unique_ptr<SiteGroup> group;
  LocalRanks children;
  std::string own_file;
  ~FormedSite() {
    children.StopAll(std::chrono::milliseconds(3000));
    group.reset();
    if (!own_file.empty()) ::unlink(own_file.c_str());
  }
};

// Opens the store (rank 0 on one host: a new private file), starts the
// other local ranks and joins every rank. While it waits, a watchdog ends
// the process if a local rank dies or `stop` says so: nothing is running
// yet that could be lost, and a join cannot be interrupted.
StatusOr<std::unique_ptr<FormedSite>> FormSite(const SiteConfig& site, const WorkerRanks& ranks,
                                                const std::function<bool()>& stop) {
  const RankPlan& plan = ranks.plan;
  const std::string unsupported = SiteGroupUnsupported(site.device);
  if (!unsupported.empty()) return FailedPrecondition("site.ranks " + std::to_string(plan.ranks) + " on " + site.device + ": " + unsupported);
  if (site.device.rfind("cuda", 0) == 0) {
    // Local rank i takes cuda:i: this host needs a GPU per local rank.
    const int gpus = VisibleCudaDevices();
    if (static_cast<int>(plan.local.size()) > gpus) {
      return FailedPrecondition("site.ranks: this host runs " + std::to_string(plan.local.size()) +
                                " ranks on device cuda, one GPU each, but sees " + std::to_string(gpus) +
                                " CUDA device(s)");
    }
  }
  auto formed = std::make_unique<FormedSite>();
  std::string where = plan.rendezvous;
  if (where.empty()) {
    // Every rank on this host: a private file (mode 0600), nothing listening.
    const char* tmp = std::getenv("TMPDIR");
    std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/lowband-" + site.name + "-XXXXXX";
    std::vector<char> buf(path.begin(), path.end());
    buf.push_back('\0');
    const int fd = ::mkstemp(buf.data());
    if (fd < 0) return Unavailable("cannot create the ranks' store file " + path + ": " + std::strerror(errno));
    ::close(fd);
    formed->own_file = buf.data();
    where = "file:" + formed->own_file;
  }
  LOWBAND_ASSIGN_OR_RETURN(Rendezvous rv, ParseRendezvous(where));
  SiteGroupOptions o;
  o.rank = plan.own_rank();
  o.size = plan.ranks;
  o.file = rv.file;
  o.host = rv.host;
  o.port = rv.port;
  o.device = site.device;
  o.timeout = plan.timeout;
  LOWBAND_ASSIGN_OR_RETURN(formed->group, SiteGroup::OpenStore(o));
  LOWBAND_ASSIGN_OR_RETURN(formed->children, LocalRanks::Spawn(ranks.worker_argv, plan, where));
  LOG_INFO("waiting for the site's ranks", {"rank", o.rank}, {"ranks", plan.ranks},
           {"local", static_cast<uint64_t>(plan.local.size())}, {"backend", formed->group->backend()},
           {"rendezvous", where});
  std::atomic<bool> joined{false};
  LocalRanks* children = &formed->children;
  const std::string own_file = formed->own_file;
  std::thread watchdog([&joined, children, &stop, own_file] {
    while (!joined.load()) {
      const std::string why = children->Reap();
      const bool stopping = stop && stop();
      if (!why.empty() || stopping) {
        if (!why.empty()) LOG_ERROR("a rank ended before the site formed", {"reason", why});
        children->StopAll(std::chrono::milliseconds(2000));
        if (!own_file.empty()) ::unlink(own_file.c_str());
        std::fflush(nullptr);
        std::_Exit(stopping ? 0 : kExitSiteDown);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  const auto start = std::chrono::steady_clock::now();
  Status st = formed->group->Join();
  joined = true;
  watchdog.join();
  if (!st.ok()) return st;
  LOG_INFO("site ranks joined", {"rank", o.rank}, {"ranks", plan.ranks}, {"backend", formed->group->backend()},
           {"join_ms", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count()});
  return formed;
}

}  // namespace

int RunFollowerRank(SiteConfig site, Corpus corpus, const WorkerRanks& ranks, SignalWatcher& signals) {
  // No event loop here: SIGTERM and SIGINT end the process (their default),
  // and so does rank 0's death (the parent-death signal of a started rank).
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  auto formed = FormSite(site, ranks, nullptr);
  if (!formed.ok()) {
    LOG_ERROR("cannot join the site's ranks", {"rank", ranks.plan.own_rank()}, {"reason", formed.status().ToString()});
    return formed.status().code() == StatusCode::kFailedPrecondition ? kExitConfig : kExitSiteDown;
  }
  Executor executor(site, &corpus);
  executor.SetGroup((*formed)->group.get());
  LocalRanks& children = (*formed)->children;
  // Liveness for systemd's watchdog, whatever a job takes.
  std::atomic<bool> done{false};
  std::thread pinger;
  if (ranks.notify_systemd) {
    pinger = std::thread([&done, &ranks, &site] {
      SystemdNotifier systemd;
      systemd.Ready("site " + site.name + ": rank " + std::to_string(ranks.plan.own_rank()) + " of " +
                    std::to_string(ranks.plan.ranks) + " joined");
      while (!done.load()) {
        systemd.Tick(std::chrono::steady_clock::now());
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    });
  }
  std::string why;
  const int code = executor.RunFollower([&] {
    why = children.Reap();
    return !why.empty();
  });
  done = true;
  if (pinger.joinable()) pinger.join();
  if (!why.empty()) {
    LOG_ERROR("a rank of this host ended", {"reason", why});
    return kExitSiteDown;
  }
  LOG_INFO("rank stopping", {"rank", ranks.plan.own_rank()}, {"exit", code});
  return code;
}

struct WorkerService::Impl {
  Impl(SiteConfig s, std::string campaign, Corpus c, WorkerRanks r)
      : site(std::move(s)), corpus(std::move(c)), ranks(std::move(r)) {
    Hello h;
    h.site = site.name;
    h.device = site.device;
    h.free_memory_bytes = FreeMemoryBytes(site.device);
    h.step_time_ms = MeasureReferenceStepMs(site.device) * site.slowdown;  // site.slowdown emulates slower hardware
    h.train_tokens = corpus.train_tokens();
    h.val_tokens = corpus.val_tokens();
    h.peer_endpoint = site.peer;
    h.own_model = OwnModelSpec(site);  // FPLD: a model of its own (layers 0: the campaign's)
    h.ranks = static_cast<uint32_t>(ranks.plan.ranks);
    core = std::make_unique<WorkerCore>(h, std::move(campaign), WorkerClock::now());
  }

  SiteConfig site;
  Corpus corpus;
  WorkerRanks ranks;
  std::unique_ptr<FormedSite> formed;  // a multi-rank site: its group and local ranks
  std::atomic<bool> site_down{false};
  std::unique_ptr<WorkerCore> core;
  zmq::context_t ctx{1};
  std::unique_ptr<Transport> link;   // the coordinator link, throttled when site.link_mbit > 0
  zmq::socket_t* link_socket = nullptr;  // its ZeroMQ socket, for the loop
  ThrottledTransport* link_throttle = nullptr;
  WireLimits limits;
  JobQueue jobs;
  std::unique_ptr<Mailbox<JobResult>> results;
  // Pipeline campaigns (site.peer set): activations between stages.
  // Activations between stages, bounded in count and in bytes both ways.
  static constexpr size_t kPeerQueueMessages = 4096;
  static constexpr size_t kPeerQueueBytes = size_t{1} << 30;
  PeerInbox peer_inbox{kPeerQueueMessages, kPeerQueueBytes};
  std::unique_ptr<Mailbox<PeerSend>> peer_out;  // training thread -> loop
  std::unique_ptr<PeerLinks> peers;
  std::unique_ptr<ZmqPeerChannel> peer_channel;
  bool exit = false;
  int exit_code = 0;

  // What GET /metrics reports (loop thread).
  struct Figures {
    uint64_t bytes_up = 0, bytes_down = 0, messages_up = 0, messages_down = 0;
    uint64_t uploads = 0, upload_bytes = 0, malformed = 0;
    double train_loss = std::numeric_limits<double>::quiet_NaN();
    double val_loss = std::numeric_limits<double>::quiet_NaN();
    double step_time_ms = std::numeric_limits<double>::quiet_NaN();
    uint32_t last_round = 0;
  } figures;
  std::unique_ptr<MetricsHttpServer> metrics_http;
  SystemdNotifier systemd;

  std::string RenderMetrics() const {
    PromText t;
    const Figures& f = figures;
    t.Add("lowband_worker_registered", "gauge", "1 while the coordinator knows this site.", core->registered());
    t.Add("lowband_worker_round", "gauge", "Round of the parameters this replica holds (after queued jobs).",
          core->synced_round().value_or(0));
    t.Add("lowband_worker_model_transfer_bytes", "gauge",
          "Model transfer in progress: bytes received and checked so far (0: none).",
          static_cast<double>(core->pull_verified()), {{"part", "verified"}});
    t.Add("lowband_worker_model_transfer_bytes", "gauge", "", static_cast<double>(core->pull_total()),
          {{"part", "total"}});
    t.Add("lowband_worker_ranks", "gauge", "Ranks (processes) training as this site's replica.", ranks.plan.ranks);
    t.Add("lowband_worker_uploads_total", "counter", "Delta uploads sent.", static_cast<double>(f.uploads));
    t.Add("lowband_worker_upload_bytes_total", "counter", "Bytes of the delta uploads sent, headers included.",
          static_cast<double>(f.upload_bytes));
    t.Add("lowband_worker_train_loss", "gauge", "Mean training loss of the last round trained.", f.train_loss);
    t.Add("lowband_worker_val_loss", "gauge", "Validation loss of the last evaluation.", f.val_loss);
    t.Add("lowband_worker_step_time_ms", "gauge", "Mean inner step time of the last round trained.", f.step_time_ms);
    t.Add("lowband_bytes_total", "counter", "Bytes of every message sent (up) or received (down).",
          static_cast<double>(f.bytes_up), {{"direction", "up"}});
    t.Add("lowband_bytes_total", "counter", "", static_cast<double>(f.bytes_down), {{"direction", "down"}});
    t.Add("lowband_messages_total", "counter", "Messages sent (up) or received (down).",
          static_cast<double>(f.messages_up), {{"direction", "up"}});
    t.Add("lowband_messages_total", "counter", "", static_cast<double>(f.messages_down), {{"direction", "down"}});
    t.Add("lowband_rejected_messages_total", "counter", "Messages from the coordinator this worker refused.",
          static_cast<double>(core->rejected_messages()));
    t.Add("lowband_malformed_messages_total", "counter", "Inbound messages that failed decoding.",
          static_cast<double>(f.malformed));
    if (peers) {
      bool first = true;
      for (const auto& [stage, b] : peers->boundaries()) {
        const std::string st = std::to_string(stage);
        t.Add("lowband_peer_bytes_total", "counter",
              first ? "Bytes of pipeline activations sent to / received from another stage." : "",
              static_cast<double>(b.bytes_sent), {{"peer_stage", st}, {"direction", "sent"}});
        t.Add("lowband_peer_bytes_total", "counter", "", static_cast<double>(b.bytes_received),
              {{"peer_stage", st}, {"direction", "received"}});
        t.Add("lowband_peer_messages_total", "counter",
              first ? "Pipeline activations sent to / received from another stage." : "",
              static_cast<double>(b.messages_sent), {{"peer_stage", st}, {"direction", "sent"}});
        t.Add("lowband_peer_messages_total", "counter", "", static_cast<double>(b.messages_received),
              {{"peer_stage", st}, {"direction", "received"}});
        first = false;
      }
      t.Add("lowband_peer_rejected_messages_total", "counter", "Messages from other stages refused.",
            static_cast<double>(peers->rejected()));
    }
    return t.str();
  }

  // Pipeline: what this stage sent to the others since its last report rides
  // with its upload or evaluation (the coordinator's ledger per boundary).
  void AttachPeerTraffic(Message& m) {
    if (!peers) return;
    auto* up = std::get_if<DeltaUpload>(&m.body);
    auto* ev = std::get_if<EvalReport>(&m.body);
    if (!up && !ev) return;
    OnPeerSends();  // the step's last sends may still be queued for the loop
    (up ? up->peer_traffic : ev->peer_traffic) = peers->TakeTraffic();
  }

  void Dispatch(WorkerOutput& out) {
    for (Message& m : out.messages) {
      if (const auto* up = std::get_if<DeltaUpload>(&m.body)) FailPoint("worker_upload", up->round);
      AttachPeerTraffic(m);
      Frames frames = EncodeMessage(m);
      uint64_t bytes = 0;
      for (const auto& fr : frames) bytes += fr.size();
      Status st = link->Send("", std::move(frames));
      if (!st.ok()) {
        LOG_WARN("send failed", {"kind", BodyName(m.body)}, {"reason", st.ToString()});
        continue;
      }
      figures.bytes_up += bytes;
      ++figures.messages_up;
      if (const auto* up = std::get_if<DeltaUpload>(&m.body)) {
        ++figures.uploads;
        figures.upload_bytes += bytes;
        figures.train_loss = up->train_loss;
        figures.step_time_ms = up->step_time_ms;
        figures.last_round = up->round;
        char status[160];
        std::snprintf(status, sizeof(status), "site %s: round %u uploaded (%llu bytes), train loss %.4f",
                      site.name.c_str(), up->round, static_cast<unsigned long long>(bytes), up->train_loss);
        systemd.Status(status);
      } else if (const auto* ev = std::get_if<EvalReport>(&m.body)) {
        figures.val_loss = ev->val_loss;
      }
    }
    for (Job& j : out.jobs) {
      if (const auto* c = std::get_if<ConfigureJob>(&j); c && c->welcome.pipeline.stages > 1) OnPipelineWelcome(c->welcome);
      jobs.Push(std::move(j));
    }
    if (out.exit) {
      exit = true;
      exit_code = out.exit_code;
    }
    out = WorkerOutput{};
  }

  // A (re-)welcome into a pipeline campaign: a step blocked waiting for a
  // neighbour belongs to the old configuration, so it is abandoned now; the
  // links follow the Welcome's stage endpoints.
  void OnPipelineWelcome(const Welcome& w) {
    peer_inbox.Cancel();
    if (!peers) {
      LOG_ERROR("pipeline campaign but site.peer is not set; stage traffic impossible");
      return;
    }
    Status st = peers->Configure(w, core->campaign());
    if (!st.ok()) LOG_ERROR("cannot set up the peer links", {"stage", w.stage}, {"reason", st.ToString()});
  }

  void OnPeerSends() {
    for (PeerSend& s : peer_out->Drain()) peers->Send(std::move(s));
  }

  void OnLink() {
    Inbound in;
    for (int i = 0; i < 256 && link->TryReceive(&in); ++i) {
      WorkerOutput out;
      for (const auto& fr : in.frames) figures.bytes_down += fr.size();
      ++figures.messages_down;
      auto msg = DecodeMessage(std::move(in.frames), limits);
      if (!msg.ok()) {
        ++figures.malformed;
        core->HandleMalformed(msg.status(), &out);
      } else {
        core->HandleMessage(*msg, WorkerClock::now(), &out);
      }
      Dispatch(out);
    }
  }

  void OnResults() {
    for (JobResult& r : results->Drain()) {
      if (auto* f = std::get_if<JobFailed>(&r); f && f->code == ErrorCode::kSiteDown && formed) {
        // A collective failed: most likely a local rank ended; name it.
        site_down = true;
        for (int i = 0; i < 10; ++i) {
          const std::string why = formed->children.Reap();
          if (!why.empty()) {
            f->what = why + " (" + f->what + ")";
            break;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
      }
      WorkerOutput out;
      core->OnJobResult(std::move(r), WorkerClock::now(), &out);
      Dispatch(out);
    }
  }

  int Run(SignalWatcher& signals) {
    limits.max_bulk_bytes = 1u << 30;
    std::optional<CurveClientOptions> curve;
    if (!site.key.empty()) {
      auto key = ReadCurveKeyFile(site.key, /*secret_required=*/true);
      auto server = key.ok() ? ReadCurveKeyFile(site.server_key, /*secret_required=*/false) : key.status();
      if (!server.ok()) {
        std::fprintf(stderr, "lowband-worker: CurveZMQ keys: %s\n", server.status().ToString().c_str());
        LOG_ERROR("cannot load CurveZMQ keys", {"reason", server.status().ToString()});
        return kExitConfig;
      }
      curve = CurveClientOptions{server->public_key, key->public_key, key->secret_key};
    }
    auto l = ZmqClientTransport::Connect(ctx, site.coordinator, "",
                                         static_cast<int64_t>(limits.max_bulk_bytes + limits.max_header_bytes),
                                         curve ? &*curve : nullptr);
    if (!l.ok()) {
      LOG_ERROR("cannot connect", {"endpoint", site.coordinator}, {"reason", l.status().ToString()});
      return 69;
    }
    link_socket = &(*l)->socket();
    if (site.link_mbit > 0) {
      // An emulated thin link to the coordinator, both directions (benchmarks).
      auto t = ThrottledTransport::Create(std::move(l).value(), site.link_mbit * 1e6, std::chrono::microseconds(0));
      if (!t.ok()) {
        LOG_ERROR("cannot throttle the coordinator link", {"reason", t.status().ToString()});
        return kExitConfig;
      }
      (*t)->ThrottleReceive();
      link_throttle = t->get();
      link = std::move(t).value();
      LOG_INFO("coordinator link throttled", {"mbit_per_s", site.link_mbit});
    } else {
      link = std::move(l).value();
    }
    auto mailbox = Mailbox<JobResult>::Create(64);
    if (!mailbox.ok()) {
      LOG_ERROR("cannot create result mailbox", {"reason", mailbox.status().ToString()});
      return 1;
    }
    results = std::move(mailbox).value();
    if (!site.peer.empty()) {
      WireLimits peer_limits;  // activations: default bulk bound
      auto p = PeerLinks::Bind(ctx, site.peer, &peer_inbox, peer_limits);
      if (!p.ok()) {
        LOG_ERROR("cannot bind the peer endpoint", {"endpoint", site.peer}, {"reason", p.status().ToString()});
        return 69;
      }
      peers = std::move(p).value();
      auto out_box = Mailbox<PeerSend>::Create(kPeerQueueMessages, kPeerQueueBytes,
                                               [](const PeerSend& s) { return s.bulk.size(); });
      if (!out_box.ok()) {
        LOG_ERROR("cannot create peer mailbox", {"reason", out_box.status().ToString()});
        return 1;
      }
      peer_out = std::move(out_box).value();
      peer_channel = std::make_unique<ZmqPeerChannel>(&peer_inbox, peer_out.get());
    }
    if (ranks.plan.ranks > 1) {
      auto f = FormSite(site, ranks, [&signals] {
        signals.OnReadable();
        return signals.stop_requested();
      });
      if (!f.ok()) {
        LOG_ERROR("cannot form the site's ranks", {"reason", f.status().ToString()});
        if (f.status().code() == StatusCode::kFailedPrecondition) {
          std::fprintf(stderr, "lowband-worker: %s\n", f.status().message().c_str());
          return kExitConfig;  // no restart can fix it
        }
        return kExitSiteDown;
      }
      formed = std::move(f).value();
    }
    // The training thread: owns the executor; results come back by mailbox.
    std::atomic<bool> trainer_done{false};
    std::thread trainer([this, &trainer_done] {
      Executor executor(site, &corpus, peer_channel.get());
      if (formed) executor.SetGroup(formed->group.get());
      auto idle_since = std::chrono::steady_clock::now();
      while (auto job = jobs.Pop()) {
        executor.AddIdle(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - idle_since).count());
        if (!results->Post(executor.Run(std::move(*job)))) {
          LOG_ERROR("result mailbox full; dropping a job result");
        }
        idle_since = std::chrono::steady_clock::now();
      }
      if (formed && !site_down) executor.StopFollowers();
      trainer_done = true;
    });
    EventLoop loop;
    if (!site.metrics.empty()) {
      auto m = MetricsHttpServer::Listen(site.metrics, [this] { return RenderMetrics(); });
      if (!m.ok()) {
        LOG_ERROR("cannot serve metrics", {"address", site.metrics}, {"reason", m.status().ToString()});
        peer_inbox.Close();
        jobs.Close();
        trainer.join();
        return 69;
      }
      metrics_http = std::move(m).value();
      metrics_http->AddTo(loop);
      LOG_INFO("metrics endpoint", {"url", "http://" + site.metrics + "/metrics"}, {"port", metrics_http->port()});
    }
    loop.AddSocket(*link_socket, [this] { OnLink(); });
    loop.AddFd(results->fd(), [this] { OnResults(); });
    if (peers) {
      loop.AddSocket(peers->socket(), [this] { peers->OnReadable(); });
      loop.AddFd(peer_out->fd(), [this] { OnPeerSends(); });
    }
    signals.AddTo(loop);
    LOG_INFO("worker started", {"site", site.name}, {"coordinator", site.coordinator}, {"device", site.device},
             {"train_tokens", static_cast<unsigned long>(corpus.train_tokens())},
             {"val_tokens", static_cast<unsigned long>(corpus.val_tokens())});
    WorkerOutput out;
    core->Start(WorkerClock::now(), &out);
    Dispatch(out);
    systemd.Ready("site " + site.name + ": joining the coordinator at " + site.coordinator);
    const auto tick = std::chrono::milliseconds(50);
    auto next_tick = WorkerClock::now() + tick;
    while (!exit && !signals.stop_requested()) {
      const auto now = WorkerClock::now();
      if (now >= next_tick) {
        WorkerOutput o;
        core->OnTick(now, &o);
        Dispatch(o);
        if (metrics_http) metrics_http->OnTick();
        systemd.Tick(now);
        if (formed && !site_down) {
          const std::string why = formed->children.Reap();
          if (!why.empty()) {
            site_down = true;
            WorkerOutput down;
            core->SiteDown(why, &down);
            Dispatch(down);
          }
        }
        next_tick = now + tick;
      }
      auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - WorkerClock::now()) +
                  std::chrono::milliseconds(1);
      if (link_throttle) {
        // Held messages are released (sends) and delivered (receives) only
        // when pumped and polled.
        OnLink();
        if (auto due = link_throttle->Pump()) {
          wait = std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(
                                    *due + std::chrono::microseconds(999)));
        }
      }
      if (peers) {
        // Throttled peer links release due messages only when pumped.
        if (auto due = peers->Pump()) {
          wait = std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(
                                    *due + std::chrono::microseconds(999)));
        }
      }
      Status st = loop.RunOnce(wait);
      if (!st.ok()) {
        LOG_ERROR("event loop failed", {"reason", st.ToString()});
        exit_code = 1;
        break;
      }
    }
    if (signals.stop_requested()) LOG_INFO("stopping on signal");
    systemd.Stopping("site " + site.name + ": stopping");
    // A training step in flight finishes before the thread sees the close;
    // one waiting for a neighbour stage gives up at once.
    peer_inbox.Close();
    jobs.Close();
    if (formed && (site_down || exit_code != 0)) {
      // The other ranks go first: a collective waiting on them then fails at once.
      formed->children.StopAll(std::chrono::milliseconds(2000));
    }
    // A collective that cannot fail fast (NCCL waiting on a lost rank) must
    // not keep the process: the site is down, nothing durable is lost.
    for (int i = 0; formed && !trainer_done.load() && i < 200; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (formed && !trainer_done.load()) {
      LOG_ERROR("training thread stuck in a collective; exiting");
      std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the link sends what it holds
      std::fflush(nullptr);
      std::_Exit(exit_code != 0 ? exit_code : kExitSiteDown);
    }
    trainer.join();
    formed.reset();  // the other ranks stop on the marker rank 0 posted, or are stopped
    metrics_http.reset();  // before the loop it is registered with goes
    link.reset();
    if (peers) peers->LogTotals();
    peers.reset();
    return exit_code;
  }
};

WorkerService::WorkerService(SiteConfig site, std::string campaign, Corpus corpus, WorkerRanks ranks)
    : impl_(std::make_unique<Impl>(std::move(site), std::move(campaign), std::move(corpus), std::move(ranks))) {}
WorkerService::~WorkerService() = default;
int WorkerService::Run(SignalWatcher& signals) { return impl_->Run(signals); }

}  // namespace lowband
