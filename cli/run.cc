#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>

#include "cli/commands.h"
#include "common/config.h"
#include "common/process.h"

namespace lowband::cli {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

// Stops every running child: SIGTERM, then SIGKILL after `grace`.
void StopAll(std::vector<Subprocess>& procs, milliseconds grace) {
  for (auto& p : procs) p.Signal(SIGTERM);
  const auto end = SteadyClock::now() + grace;
  for (auto& p : procs) {
    const auto left = std::chrono::duration_cast<milliseconds>(end - SteadyClock::now());
    if (!p.WaitFor(std::max(left, milliseconds(0)))) {
      p.Signal(SIGKILL);
      p.WaitFor(milliseconds(2000));
    }
  }
}

}  // namespace

int Run(const RunOptions& options) {
  auto config = LoadCampaignFile(options.campaign_file);
  if (!config.ok()) {
    std::fprintf(stderr, "lowband run: invalid campaign:\n%s\n", config.status().message().c_str());
    return kExitConfig;
  }
  if (config->sites.empty()) {
    std::fprintf(stderr,
                 "lowband run: %s lists no sites to start here (add a `sites:` list, or start "
                 "lowband-coordinator and lowband-worker separately)\n",
                 options.campaign_file.c_str());
    return kExitConfig;
  }
  const std::string run_dir = options.run_dir.empty() ? config->output.run_dir : options.run_dir;
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) {
    std::fprintf(stderr, "lowband run: cannot create run directory %s: %s\n", run_dir.c_str(),
                 ec.message().c_str());
    return 1;
  }
  const std::string metrics = options.metrics_out.empty() ? run_dir + "/metrics.jsonl" : options.metrics_out;
  const std::string bin = SelfExeDir();

  // Keep terminal signals for ourselves; children run in their own process
  // groups and are stopped in order by us.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGCHLD);
  sigprocmask(SIG_BLOCK, &sigs, nullptr);

  const std::vector<std::string> one_thread = {"OPENBLAS_NUM_THREADS=1", "OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1"};
  std::printf("lowband: campaign %s, %zu sites, %d rounds; logs in %s/\n", config->name.c_str(),
              config->sites.size(), config->training.rounds, run_dir.c_str());
  std::fflush(stdout);

  SpawnOptions co;
  co.argv = {bin + "/lowband-coordinator", "--campaign", options.campaign_file, "--metrics-out", metrics,
             "--run-dir", run_dir, "--progress"};
  co.extra_env = one_thread;
  if (!options.verbose) co.stderr_path = run_dir + "/coordinator.log";
  auto coordinator = Subprocess::Spawn(co);
  if (!coordinator.ok()) {
    std::fprintf(stderr, "lowband run: %s\n", coordinator.status().ToString().c_str());
    return 1;
  }
  std::vector<Subprocess> workers;
  for (const SiteConfig& site : config->sites) {
    SpawnOptions wo;
    wo.argv = {bin + "/lowband-worker", "--campaign", options.campaign_file, "--site", site.name};
    wo.extra_env = one_thread;
    if (!options.verbose) {
      wo.stdout_path = run_dir + "/" + site.name + ".log";
      wo.stderr_path = "stdout";
    }
    auto w = Subprocess::Spawn(wo);
    if (!w.ok()) {
      std::fprintf(stderr, "lowband run: %s\n", w.status().ToString().c_str());
      std::vector<Subprocess> all = std::move(workers);
      all.push_back(std::move(coordinator).value());
      StopAll(all, milliseconds(5000));
      return 1;
    }
    workers.push_back(std::move(w).value());
  }

  int exit_code = 0;
  bool interrupted = false;
  std::map<pid_t, bool> reported;
  while (true) {
    timespec ts{0, 200 * 1000 * 1000};
    const int sig = sigtimedwait(&sigs, nullptr, &ts);
    if (sig == SIGINT || sig == SIGTERM) {
      std::fprintf(stderr, "\nlowband run: %s received, stopping all processes\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
      interrupted = true;
      break;
    }
    if (auto code = coordinator->Poll()) {
      exit_code = *code;
      break;
    }
    int alive = 0;
    for (auto& w : workers) {
      if (auto code = w.Poll()) {
        if (!reported[w.pid()]) {
          reported[w.pid()] = true;
          if (*code != 0) std::fprintf(stderr, "lowband run: worker pid %d exited with %d (see its log in %s/)\n",
                                       static_cast<int>(w.pid()), *code, run_dir.c_str());
        }
      } else {
        ++alive;
      }
    }
    if (alive == 0) {
      // Workers leave as soon as they hear the campaign ended, a moment
      // before the coordinator (checkpoint, summary): wait for it first.
      if (auto code = coordinator->WaitFor(milliseconds(15000))) {
        exit_code = *code;
        break;
      }
      std::fprintf(stderr, "lowband run: every worker has exited before the campaign finished; stopping\n");
      exit_code = 1;
      break;
    }
  }

  std::vector<Subprocess> all = std::move(workers);
  if (interrupted || coordinator->running()) all.push_back(std::move(coordinator).value());
  // After a normal finish the workers have been told the campaign ended;
  // give them a moment to leave on their own before signalling.
  if (!interrupted) {
    const auto end = SteadyClock::now() + milliseconds(5000);
    for (auto& p : all) {
      const auto left = std::chrono::duration_cast<milliseconds>(end - SteadyClock::now());
      p.WaitFor(std::max(left, milliseconds(0)));
    }
  }
  StopAll(all, milliseconds(10000));
  if (interrupted) return 130;
  if (exit_code == 0) {
    std::printf("lowband: done. metrics: %s  checkpoint: %s/checkpoint-final.lbck\n", metrics.c_str(),
                run_dir.c_str());
  } else {
    std::fprintf(stderr, "lowband run: coordinator exited with %d (see %s/coordinator.log)\n", exit_code,
                 run_dir.c_str());
  }
  return exit_code;
}

}  // namespace lowband::cli
