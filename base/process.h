// Child processes for `lowband run` and the multi-process tests.
// A Subprocess is owned by one thread. Children get PR_SET_PDEATHSIG=SIGTERM
// so they never outlive a parent that dies without cleaning up.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"

namespace lowband {

struct SpawnOptions {
  std::vector<std::string> argv;            // argv[0] is the executable path
  std::vector<std::string> extra_env;       // "KEY=VALUE" added to the parent's environment
  std::string stdout_path;                  // empty: inherit
  std::string stderr_path;                  // empty: inherit; "stdout": same as stdout
  bool new_process_group = true;            // keep terminal Ctrl-C for the parent
};

class Subprocess {
 public:
  static StatusOr<Subprocess> Spawn(const SpawnOptions& options);

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }
  // Non-blocking reap: returns the exit status once the child has ended
  // (exit code, or 128+signal if killed by a signal).
  std::optional<int> Poll();
  // Blocks up to `timeout`; nullopt if still running.
  std::optional<int> WaitFor(std::chrono::milliseconds timeout);
  void Signal(int sig);
  bool running() const { return !exit_code_.has_value(); }
  std::optional<int> exit_code() const { return exit_code_; }

 private:
  pid_t pid_ = -1;
  std::string name_;
  std::optional<int> exit_code_;
};

// Directory of the running executable (for finding sibling binaries).
std::string SelfExeDir();
// Path of the running executable.
std::string SelfExePath();

}  // namespace lowband
