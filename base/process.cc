#include "base/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

namespace lowband {

StatusOr<Subprocess> Subprocess::Spawn(const SpawnOptions& options) {
  if (options.argv.empty()) return InvalidArgument("spawn: empty argv");
  if (access(options.argv[0].c_str(), X_OK) != 0) {
    return NotFound("spawn: " + options.argv[0] + " is not an executable: " + std::strerror(errno));
  }
  // Everything the child needs is prepared before fork: after fork only
  // async-signal-safe calls are allowed.
  std::vector<char*> argv;
  for (const auto& a : options.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_store;
  for (char** e = environ; *e != nullptr; ++e) env_store.emplace_back(*e);
  for (const auto& kv : options.extra_env) {
    const std::string key = kv.substr(0, kv.find('='));
    for (auto& e : env_store) {
      if (e.compare(0, key.size() + 1, key + "=") == 0) e.clear();
    }
    env_store.push_back(kv);
  }
  std::vector<char*> envp;
  for (auto& e : env_store) {
    if (!e.empty()) envp.push_back(const_cast<char*>(e.c_str()));
  }
  envp.push_back(nullptr);
  int out_fd = -1, err_fd = -1;
  if (!options.stdout_path.empty()) {
    out_fd = open(options.stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out_fd < 0) return Unavailable("cannot open " + options.stdout_path + ": " + std::strerror(errno));
  }
  if (!options.stderr_path.empty() && options.stderr_path != "stdout") {
    err_fd = open(options.stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (err_fd < 0) {
      if (out_fd >= 0) close(out_fd);
      return Unavailable("cannot open " + options.stderr_path + ": " + std::strerror(errno));
    }
  }
  const bool err_to_out = options.stderr_path == "stdout";
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return Unavailable(std::string("fork failed: ") + std::strerror(errno));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);  // parent already gone
    if (options.new_process_group) setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);  // the parent may block signals
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (out_fd >= 0) dup2(out_fd, 1);
    if (err_fd >= 0) dup2(err_fd, 2);
    if (err_to_out) dup2(1, 2);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  if (out_fd >= 0) close(out_fd);
  if (err_fd >= 0) close(err_fd);
  Subprocess p;
  p.pid_ = pid;
  p.name_ = options.argv[0];
  return p;
}

std::optional<int> Subprocess::Poll() {
  if (exit_code_) return exit_code_;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  } else if (r < 0 && errno == ECHILD) {
    exit_code_ = 255;  // reaped elsewhere
  }
  return exit_code_;
}

std::optional<int> Subprocess::WaitFor(std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!Poll()) {
    if (std::chrono::steady_clock::now() >= end) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return exit_code_;
}

void Subprocess::Signal(int sig) {
  if (running()) kill(pid_, sig);
}

std::string SelfExePath() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n <= 0 ? "" : std::string(buf, static_cast<size_t>(n));
}

std::string SelfExeDir() {
  const std::string path = SelfExePath();
  if (path.empty()) return ".";
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace lowband
