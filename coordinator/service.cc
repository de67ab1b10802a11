#include "coordinator/service.h"

#include <sys/stat.h>

#include <chrono>
#include <cinttypes>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>

#include "common/checkpoint.h"
#include "common/event_loop.h"
#include "common/json.h"
#include "common/log.h"
#include "common/transport_zmq.h"
#include "common/wire.h"

namespace lowband {
namespace {

constexpr int kExitUnavailable = 69;  // EX_UNAVAILABLE

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) {
    b /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

}  // namespace

struct CoordinatorService::Impl {
  Impl(CampaignConfig c, ParamSet initial, CoordinatorOptions o)
      : config(std::move(c)), options(std::move(o)), core(config, std::move(initial), Clock::now()) {
    limits.max_bulk_bytes = static_cast<size_t>(config.network.max_message_bytes);
  }

  CampaignConfig config;
  CoordinatorOptions options;
  CoordinatorCore core;
  WireLimits limits;
  zmq::context_t ctx{1};
  std::unique_ptr<ZmqServerTransport> workers;
  std::unique_ptr<ZmqServerTransport> control;
  BandwidthLedger ledger;
  FILE* metrics = nullptr;
  bool done = false;
  int exit_code = 0;

  int Run(SignalWatcher& signals);
  void OnWorkers();
  void OnControl();
  ControlResponse WriteCheckpointNow();
  void Dispatch(CoreOutput& out);
  void OnCommitted(const RoundRecord& r);
  void OnFinished(const CoreOutput& out);
  void PrintSummary();
  void WriteSummary(const CoreOutput& out);
  double Ratio(const LedgerEntry& e) const;
  Clock::time_point started = Clock::now();
};

CoordinatorService::CoordinatorService(CampaignConfig config, ParamSet initial, CoordinatorOptions options)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(initial), std::move(options))) {}
CoordinatorService::~CoordinatorService() = default;
int CoordinatorService::Run(SignalWatcher& signals) { return impl_->Run(signals); }

void CoordinatorService::Impl::Dispatch(CoreOutput& out) {
  for (Outgoing& o : out.messages) {
    const char* kind = BodyName(o.msg.body);
    Frames frames = EncodeMessage(o.msg);
    uint64_t bytes = 0;
    for (const auto& f : frames) bytes += f.size();
    const std::string site = core.SiteOfPeer(o.peer);
    Status st = workers->Send(o.peer, std::move(frames));
    if (!st.ok()) {
      LOG_WARN("send failed", {"peer", site}, {"kind", kind}, {"reason", st.ToString()});
      continue;
    }
    if (!site.empty()) ledger.Record(site, Direction::kDown, core.ledger_round(), kind, bytes);
  }
  for (const RoundRecord& r : out.committed) OnCommitted(r);
  if (out.finished) OnFinished(out);
  out = CoreOutput{};
}

void CoordinatorService::Impl::OnWorkers() {
  Inbound in;
  // Bounded drain so a flood on one socket cannot starve timers and signals.
  for (int i = 0; i < 256 && workers->TryReceive(&in); ++i) {
    uint64_t bytes = 0;
    for (const auto& f : in.frames) bytes += f.size();
    const uint32_t round = core.ledger_round();
    CoreOutput out;
    auto msg = DecodeMessage(std::move(in.frames), limits);
    std::string kind = "malformed";
    if (!msg.ok()) {
      core.HandleMalformed(in.peer, msg.status(), &out);
    } else {
      kind = BodyName(msg->body);
      core.HandleMessage(in.peer, *msg, Clock::now(), &out);
    }
    const std::string site = core.SiteOfPeer(in.peer);
    ledger.Record(site.empty() ? "(unregistered)" : site, Direction::kUp, round, kind, bytes);
    Dispatch(out);
  }
}

void CoordinatorService::Impl::OnControl() {
  Inbound in;
  for (int i = 0; i < 64 && control->TryReceive(&in); ++i) {
    ControlResponse resp;
    CoreOutput out;
    auto msg = DecodeMessage(in.frames, limits);
    if (!msg.ok()) {
      resp = {false, "malformed control request: " + msg.status().ToString(), ""};
    } else if (const auto* req = std::get_if<ControlRequest>(&msg->body)) {
      // The checkpoint needs the disk, which the core does not touch.
      resp = req->command == "checkpoint" && req->args.empty() ? WriteCheckpointNow()
                                                               : core.HandleControl(*req, Clock::now(), &out);
      LOG_INFO("control request", {"command", req->command}, {"ok", resp.ok}, {"reply", resp.message});
    } else {
      resp = {false, std::string("control endpoint expects control_request, got ") + BodyName(msg->body), ""};
    }
    Message reply;
    reply.campaign_id = config.name;
    reply.sender_id = "coordinator";
    reply.body = resp;
    Status st = control->Send(in.peer, EncodeMessage(reply));
    if (!st.ok()) LOG_WARN("control reply failed", {"reason", st.ToString()});
    // After the reply, so that an aborting operator hears back before the
    // coordinator exits.
    Dispatch(out);
    if (done) return;
  }
}

// RUN_DIR/checkpoint-round-N.lbck of the last committed round; written
// atomically by WriteCheckpoint. Runs on the loop: a checkpoint of the small
// models run here takes milliseconds.
ControlResponse CoordinatorService::Impl::WriteCheckpointNow() {
  if (options.run_dir.empty()) return {false, "the coordinator has no run directory (--run-dir)", ""};
  const uint32_t round = core.committed_round();
  const std::string path = options.run_dir + "/checkpoint-round-" + std::to_string(round) + ".lbck";
  std::error_code ec;
  std::filesystem::create_directories(options.run_dir, ec);
  Status st = WriteCheckpoint(path, Checkpoint{round, config.name, core.params()});
  if (!st.ok()) {
    LOG_ERROR("checkpoint failed", {"path", path}, {"reason", st.ToString()});
    return {false, "checkpoint of round " + std::to_string(round) + " failed: " + st.ToString(), ""};
  }
  LOG_INFO("checkpoint written", {"path", path}, {"round", round});
  JsonObject o;
  o.Add("path", path).Add("round", round).Add("digest", DigestHex(core.digest()));
  return {true, path, o.str()};
}

// Compression of one message kind against dense fp32: the fp32 payload bytes
// the same messages would carry (4 bytes per parameter each) over the bytes
// they took (header frames included). 0 when none were sent.
double CoordinatorService::Impl::Ratio(const LedgerEntry& e) const {
  if (e.bytes == 0 || e.messages == 0) return 0.0;
  const double dense = static_cast<double>(e.messages) * static_cast<double>(core.params().values.size()) * 4.0;
  return dense / static_cast<double>(e.bytes);
}

void CoordinatorService::Impl::OnCommitted(const RoundRecord& r) {
  const uint64_t up = ledger.RoundTotal(r.round, Direction::kUp);
  const uint64_t down = ledger.RoundTotal(r.round, Direction::kDown);
  const LedgerEntry uploads = ledger.KindTotal(Direction::kUp, "delta_upload", r.round);
  const LedgerEntry aggregates = ledger.KindTotal(Direction::kDown, "aggregate", r.round);
  const double ratio_up = Ratio(uploads);
  const double ratio_down = Ratio(aggregates);
  LOG_INFO("round committed", {"round", r.round}, {"train_loss", r.train_loss}, {"val_loss", r.val_loss},
           {"bytes_up", up}, {"bytes_down", down}, {"ratio_up", ratio_up}, {"ratio_down", ratio_down},
           {"contributors", r.contributors}, {"digest", DigestHex(r.digest)}, {"wall_s", r.wall_s});
  if (options.progress) {
    char train[16];
    if (std::isfinite(r.train_loss)) {
      std::snprintf(train, sizeof(train), "%.4f", r.train_loss);
    } else {
      std::snprintf(train, sizeof(train), "   -  ");
    }
    std::printf("round %3u/%-3d train %s  val %.4f  up %10s (x%6.1f)  down %10s (x%5.1f %s)  %6.2f s  sites %d%s\n",
                r.round, config.training.rounds, train, r.val_loss, HumanBytes(up).c_str(), ratio_up,
                HumanBytes(down).c_str(), ratio_down, r.round == 0 ? "-" : CodecName(r.down_codec), r.wall_s,
                r.evaluated, r.digest_mismatches ? "  DIGEST MISMATCH" : "");
    std::fflush(stdout);
  }
  if (metrics) {
    std::string sites = "{";
    for (const auto& [name, s] : r.sites) {
      if (sites.size() > 1) sites += ',';
      JsonObject o;
      o.Add("train_loss", s.train_loss)
          .Add("val_loss", s.val_loss)
          .Add("tokens", s.tokens)
          .Add("uploaded", s.uploaded)
          .Add("digest_ok", s.digest_ok)
          .Add("bytes_up", ledger.SiteRoundTotal(name, r.round, Direction::kUp))
          .Add("bytes_down", ledger.SiteRoundTotal(name, r.round, Direction::kDown))
          .Add("upload_bytes", ledger.KindTotal(Direction::kUp, "delta_upload", r.round, name).bytes);
      sites += JsonString(name) + ":" + o.str();
    }
    sites += "}";
    JsonObject o;
    o.Add("round", r.round)
        .Add("train_loss", r.train_loss)
        .Add("val_loss", r.val_loss)
        .Add("bytes_up", up)
        .Add("bytes_down", down)
        .Add("upload_bytes", uploads.bytes)
        .Add("aggregate_bytes", aggregates.bytes)
        .Add("compression_ratio", ratio_up)
        .Add("compression_ratio_down", ratio_down)
        .Add("codec", CodecName(config.codec.kind))
        .Add("down_codec", CodecName(r.down_codec))
        .Add("aggregate_nnz", r.aggregate_nnz)
        .Add("wall_s", r.wall_s)
        .Add("tokens", r.tokens)
        .Add("contributors", r.contributors)
        .Add("evaluated", r.evaluated)
        .Add("late_uploads", r.late_uploads)
        .Add("digest", DigestHex(r.digest))
        .Add("digests_match", r.digest_mismatches == 0)
        .AddRaw("sites", sites);
    const std::string line = o.str() + "\n";
    std::fwrite(line.data(), 1, line.size(), metrics);
    std::fflush(metrics);
  }
}

void CoordinatorService::Impl::PrintSummary() {
  std::printf("\n%-16s %12s %12s %12s %10s %12s %10s %7s\n", "site", "bytes up", "bytes down", "uploads",
              "up ratio", "aggregates", "dn ratio", "rounds");
  std::map<std::string, int> rounds;
  for (const auto& r : core.history()) {
    for (const auto& [name, s] : r.sites) rounds[name] += s.uploaded;
  }
  auto row = [&](const std::string& label, const std::string& site, int n) {
    const LedgerEntry up = ledger.KindTotal(Direction::kUp, "delta_upload", -1, site);
    const LedgerEntry dn = ledger.KindTotal(Direction::kDown, "aggregate", -1, site);
    const uint64_t total_up = site.empty() ? ledger.Total(Direction::kUp) : ledger.SiteTotal(site, Direction::kUp);
    const uint64_t total_dn =
        site.empty() ? ledger.Total(Direction::kDown) : ledger.SiteTotal(site, Direction::kDown);
    std::printf("%-16s %12s %12s %12s %9.1fx %12s %9.1fx %7d\n", label.c_str(), HumanBytes(total_up).c_str(),
                HumanBytes(total_dn).c_str(), HumanBytes(up.bytes).c_str(), Ratio(up), HumanBytes(dn.bytes).c_str(),
                Ratio(dn), n);
  };
  int all_rounds = 0;
  for (const auto& [name, w] : core.workers()) {
    row(name, name, rounds[name]);
    all_rounds += rounds[name];
  }
  row("total", "", all_rounds);
  std::printf("(bytes up/down: every message, headers included; uploads/aggregates: the delta_upload and\n"
              " aggregate messages alone; ratio: dense fp32 bytes of the same messages / bytes sent)\n");
  const auto& h = core.history();
  if (h.size() >= 2) {
    const double first = h.front().val_loss, last = h.back().val_loss;
    std::printf("validation loss %.4f -> %.4f (%.1f%% lower), final digest %s\n", first, last,
                100.0 * (first - last) / first, DigestHex(core.digest()).c_str());
  }
  std::fflush(stdout);
}

// RUN_DIR/summary.txt: one "key value" per line, for scripts (bench/).
void CoordinatorService::Impl::WriteSummary(const CoreOutput& out) {
  const std::string path = options.run_dir + "/summary.txt";
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) {
    LOG_WARN("cannot write summary", {"path", path});
    return;
  }
  const auto& h = core.history();
  uint64_t tokens = 0;
  for (const auto& r : h) tokens += r.tokens;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::fprintf(f, "campaign %s\n", config.name.c_str());
  std::fprintf(f, "status %s\n", out.failed ? "failed" : "completed");
  std::fprintf(f, "codec %s\n", CodecName(config.codec.kind));
  std::fprintf(f, "outer %s\n", OuterOptimizerName(config.outer.kind));
  std::fprintf(f, "rounds %u\n", core.committed_round());
  std::fprintf(f, "inner_steps %d\n", config.training.inner_steps);
  std::fprintf(f, "parameters %zu\n", core.params().values.size());
  std::fprintf(f, "tokens %" PRIu64 "\n", tokens);
  std::fprintf(f, "initial_val_loss %.6f\n", h.empty() ? nan : h.front().val_loss);
  std::fprintf(f, "final_val_loss %.6f\n", h.empty() ? nan : h.back().val_loss);
  std::fprintf(f, "bytes_up %" PRIu64 "\n", ledger.Total(Direction::kUp));
  std::fprintf(f, "bytes_down %" PRIu64 "\n", ledger.Total(Direction::kDown));
  const LedgerEntry up = ledger.KindTotal(Direction::kUp, "delta_upload");
  const LedgerEntry dn = ledger.KindTotal(Direction::kDown, "aggregate");
  std::fprintf(f, "upload_bytes %" PRIu64 "\n", up.bytes);
  std::fprintf(f, "aggregate_bytes %" PRIu64 "\n", dn.bytes);
  std::fprintf(f, "ratio_up %.2f\n", Ratio(up));
  std::fprintf(f, "ratio_down %.2f\n", Ratio(dn));
  std::fprintf(f, "wall_s %.2f\n", std::chrono::duration<double>(Clock::now() - started).count());
  std::fprintf(f, "final_digest %s\n", DigestHex(core.digest()).c_str());
  std::fclose(f);
}

void CoordinatorService::Impl::OnFinished(const CoreOutput& out) {
  done = true;
  exit_code = out.failed ? 1 : 0;
  if (!options.run_dir.empty()) {
    Checkpoint ckpt{core.committed_round(), config.name, core.params()};
    const std::string path = options.run_dir + "/checkpoint-final.lbck";
    Status st = WriteCheckpoint(path, ckpt);
    if (!st.ok()) {
      LOG_ERROR("final checkpoint failed", {"path", path}, {"reason", st.ToString()});
      exit_code = 1;
    } else {
      LOG_INFO("final checkpoint written", {"path", path}, {"round", core.committed_round()});
    }
    WriteSummary(out);
  }
  if (options.progress) {
    if (out.failed) {
      std::printf("campaign failed: %s\n", out.finish_reason.c_str());
    } else {
      std::printf("campaign %s finished: %s\n", config.name.c_str(), out.finish_reason.c_str());
    }
    PrintSummary();
  }
}

int CoordinatorService::Impl::Run(SignalWatcher& signals) {
  if (!options.metrics_out.empty()) {
    std::error_code ec;
    const auto parent = std::filesystem::path(options.metrics_out).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    metrics = std::fopen(options.metrics_out.c_str(), "w");
    if (!metrics) {
      LOG_ERROR("cannot open metrics file", {"path", options.metrics_out});
      return 1;
    }
  }
  auto w = ZmqServerTransport::Bind(ctx, config.network.bind,
                                    config.network.max_message_bytes + static_cast<int64_t>(limits.max_header_bytes));
  if (!w.ok()) {
    LOG_ERROR("cannot bind worker endpoint", {"endpoint", config.network.bind}, {"reason", w.status().ToString()});
    return kExitUnavailable;
  }
  workers = std::move(w).value();
  auto c = ZmqServerTransport::Bind(ctx, config.network.control, 1 << 20);
  if (!c.ok()) {
    LOG_ERROR("cannot bind control endpoint", {"endpoint", config.network.control},
              {"reason", c.status().ToString()});
    return kExitUnavailable;
  }
  control = std::move(c).value();
  EventLoop loop;
  loop.AddSocket(workers->socket(), [this] { OnWorkers(); });
  loop.AddSocket(control->socket(), [this] { OnControl(); });
  signals.AddTo(loop);
  LOG_INFO("coordinator listening", {"campaign", config.name}, {"bind", config.network.bind},
           {"control", config.network.control}, {"parameters", static_cast<unsigned long>(core.params().values.size())},
           {"expected_workers", config.quorum.expected_workers}, {"rounds", config.training.rounds});
  if (options.progress) {
    std::printf("coordinator: %zu parameters, waiting for %d workers on %s\n", core.params().values.size(),
                config.quorum.expected_workers, config.network.bind.c_str());
    std::fflush(stdout);
  }
  const auto tick = std::chrono::milliseconds(std::max(10, std::min(100, config.network.heartbeat_interval_ms / 2)));
  auto next_tick = Clock::now();
  while (!done && !signals.stop_requested()) {
    const auto now = Clock::now();
    if (now >= next_tick) {
      CoreOutput out;
      core.OnTick(now, &out);
      Dispatch(out);
      next_tick = now + tick;
    }
    Status st = loop.RunOnce(std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - Clock::now()) +
                             std::chrono::milliseconds(1));
    if (!st.ok()) {
      LOG_ERROR("event loop failed", {"reason", st.ToString()});
      exit_code = 1;
      break;
    }
  }
  if (signals.stop_requested() && !done) {
    LOG_INFO("stopping on signal", {"round", core.committed_round()});
  }
  if (metrics) std::fclose(metrics);
  // Closing the sockets lingers briefly so CampaignEnd reaches the workers.
  workers.reset();
  control.reset();
  return exit_code;
}

}  // namespace lowband
