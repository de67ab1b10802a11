#include "ops/systemd.h"

#include <systemd/sd-daemon.h>

#include "base/log.h"

namespace lowband {

SystemdNotifier::SystemdNotifier() {
  uint64_t usec = 0;
  // > 0: WATCHDOG_USEC is set (and WATCHDOG_PID, if set, is this process).
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    interval_ = std::chrono::microseconds(usec);
    LOG_INFO("systemd watchdog enabled", {"interval_ms", static_cast<uint64_t>(usec / 1000)});
  }
}

void SystemdNotifier::Ready(const std::string& status) {
  sd_notifyf(0, "READY=1\nSTATUS=%s", status.c_str());
}

void SystemdNotifier::Status(const std::string& status) { sd_notifyf(0, "STATUS=%s", status.c_str()); }

void SystemdNotifier::Stopping(const std::string& status) {
  sd_notifyf(0, "STOPPING=1\nSTATUS=%s", status.c_str());
}

void SystemdNotifier::Tick(std::chrono::steady_clock::time_point now) {
  if (!watchdog_enabled() || now - last_ping_ < interval_ / 2) return;
  last_ping_ = now;
  sd_notify(0, "WATCHDOG=1");
}

}  // namespace lowband
