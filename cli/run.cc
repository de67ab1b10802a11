#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "cli/commands.h"
#include "config/config.h"
#include "base/process.h"
#include "coordinator/state_store.h"

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

// The header of RUN_DIR/campaign.yaml: where it came from. One comment line
// per set, newlines flattened so that a value cannot end the comment.
std::string CampaignHeader(const RunOptions& options) {
  auto flat = [](std::string s) {
    for (char& c : s) {
      if (c == '\n' || c == '\r') c = ' ';
    }
    return s;
  };
  std::string text = "# Written by `lowband run` from " + flat(options.campaign_file);
  text += options.sets.empty() ? "" : " with";
  for (const std::string& set : options.sets) text += "\n#   --set " + flat(set);
  text += "\n# The coordinator and workers of this run read this file; comments of the original are dropped.\n";
  return text;
}

// Writes `text` to `path` through a temporary file and a rename, so that a
// reader never sees half a file.
Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.close();
    if (!out) return Unavailable("cannot write " + tmp);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return Unavailable("cannot rename " + tmp + " to " + path + ": " + ec.message());
  return Status::Ok();
}

// RUN_DIR's durable campaign state: kept with --resume, removed with
// --fresh or when its campaign has ended; an unfinished campaign without
// either flag is an error rather than silently lost. Returns an exit code
// to stop with, or -1.
int PrepareState(const std::string& run_dir, const RunOptions& options) {
  const std::string db = run_dir + "/state.db";
  std::error_code ec;
  if (!fs::exists(db, ec)) {
    if (options.resume) {
      std::fprintf(stderr, "lowband run: --resume: %s holds no campaign state (no state.db)\n", run_dir.c_str());
      return 64;
    }
    return -1;
  }
  if (options.resume) return -1;
  if (!options.fresh) {
    auto store = StateStore::Open(db);
    if (!store.ok()) {
      std::fprintf(stderr, "lowband run: %s\n  (pass --fresh to discard it)\n", store.status().ToString().c_str());
      return 1;
    }
    auto row = (*store)->Campaign();
    if (row.ok() && row->has_value() && (*row)->status == "running") {
      std::fprintf(stderr,
                   "lowband run: %s holds campaign '%s', stopped at round %u before it finished; pass --resume to "
                   "continue it or --fresh to discard it\n",
                   run_dir.c_str(), (*row)->name.c_str(), (*row)->committed_round);
      return 64;
    }
  }
  for (const char* name : {"/state.db", "/state.db-wal", "/state.db-shm"}) fs::remove(run_dir + name, ec);
  fs::remove_all(run_dir + "/checkpoints", ec);
  return -1;
}

}  // namespace

int Run(const RunOptions& options) {
  auto merged = LoadCampaignWithOverrides(options.campaign_file, options.sets);
  if (!merged.ok()) {
    std::fprintf(stderr, "lowband run: invalid campaign:\n%s\n", merged.status().message().c_str());
    return kExitConfig;
  }
  if (merged->config.sites.empty()) {
    std::fprintf(stderr,
                 "lowband run: %s lists no sites to start here (add a `sites:` list, or start "
                 "lowband-coordinator and lowband-worker separately)\n",
                 options.campaign_file.c_str());
    return kExitConfig;
  }
  const std::string run_dir = options.run_dir.empty() ? merged->config.output.run_dir : options.run_dir;
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) {
    std::fprintf(stderr, "lowband run: cannot create run directory %s: %s\n", run_dir.c_str(),
                 ec.message().c_str());
    return 1;
  }
  if (int code = PrepareState(run_dir, options); code >= 0) return code;
  // Every process of the run reads the merged campaign from the run
  // directory, which also records exactly what this run was.
  const std::string campaign_file = run_dir + "/campaign.yaml";
  if (fs::equivalent(options.campaign_file, campaign_file, ec)) {
    // The campaign already lives in the run directory: without sets it is
    // what the processes should read; with sets, writing would destroy it.
    if (!options.sets.empty()) {
      std::fprintf(stderr,
                   "lowband run: --set would overwrite the campaign file itself (%s); copy it elsewhere or pass "
                   "another --run-dir\n",
                   campaign_file.c_str());
      return 64;  // EX_USAGE
    }
  } else if (Status st = WriteFileAtomically(campaign_file, CampaignHeader(options) + merged->yaml); !st.ok()) {
    std::fprintf(stderr, "lowband run: %s\n", st.ToString().c_str());
    return 1;
  }
  // Load what the children will load. It was validated above, so an error
  // here is a bug in writing it out; its lines point into the written file.
  auto config = LoadCampaignFile(campaign_file);
  if (!config.ok()) {
    std::fprintf(stderr, "lowband run: the merged campaign %s does not load:\n%s\n", campaign_file.c_str(),
                 config.status().message().c_str());
    return kExitConfig;
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
  co.argv = {bin + "/lowband-coordinator", "--campaign", campaign_file, "--metrics-out", metrics,
             "--run-dir", run_dir, "--progress"};
  if (!options.log_level.empty()) co.argv.insert(co.argv.end(), {"--log-level", options.log_level});
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
    wo.argv = {bin + "/lowband-worker", "--campaign", campaign_file, "--site", site.name};
    if (!options.log_level.empty()) wo.argv.insert(wo.argv.end(), {"--log-level", options.log_level});
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
