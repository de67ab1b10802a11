// systemd integration through libsystemd's sd_notify: readiness, status
// text, stopping, and the watchdog. Every call is a no-op when the daemon
// does not run under systemd (no NOTIFY_SOCKET), so the daemons behave the
// same from a terminal. The watchdog is fed from the event loop's tick, so
// it stops being fed exactly when the loop stops turning. Loop thread.
#pragma once

#include <chrono>
#include <string>

namespace lowband {

class SystemdNotifier {
 public:
  SystemdNotifier();
  // READY=1 with a STATUS= line.
  void Ready(const std::string& status);
  void Status(const std::string& status);
  void Stopping(const std::string& status);
  // Sends WATCHDOG=1 when half the watchdog interval has passed since the
  // last one; call on every loop tick.
  void Tick(std::chrono::steady_clock::time_point now);
  bool watchdog_enabled() const { return interval_.count() > 0; }
  std::chrono::microseconds watchdog_interval() const { return interval_; }

 private:
  std::chrono::microseconds interval_{0};
  std::chrono::steady_clock::time_point last_ping_;
};

}  // namespace lowband
