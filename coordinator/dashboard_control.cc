#include "coordinator/dashboard_control.h"

#include "base/json.h"
#include "base/log.h"

namespace lowband {

HttpResponse ControlAnswer(unsigned status, bool ok, const std::string& message) {
  JsonObject o;
  o.Add("ok", ok).Add("message", message);
  return HttpResponse{status, "application/json", o.str()};
}

DashboardControl CheckDashboardControl(const HttpRequest& req, const std::string& token, const std::string& command,
                                       const std::string& site) {
  DashboardControl d;
  if (req.method != "POST") {
    d.refused = ControlAnswer(405, false, "round controls are POST requests");
    return d;
  }
  if (token.empty()) {
    d.refused = ControlAnswer(403, false, "read-only dashboard: no network.dashboard_token configured");
    return d;
  }
  const std::string given = req.authorization.rfind("Bearer ", 0) == 0 ? req.authorization.substr(7) : "";
  // Compare in constant time: the token is a secret.
  unsigned diff = given.size() != token.size();
  for (size_t i = 0; i < token.size(); ++i) {
    diff |= static_cast<unsigned char>(i < given.size() ? given[i] : 0) ^ static_cast<unsigned char>(token[i]);
  }
  if (diff != 0) {
    LOG_WARN("dashboard control refused: bad or missing operator token");
    d.refused = ControlAnswer(401, false, "the operator token is missing or wrong");
    return d;
  }
  if (command == "pause" || command == "resume" || command == "close") {
    d.request.command = "round " + command;
  } else if (command == "evict") {
    d.request.command = "worker evict";
    d.request.args = {site};
  } else {
    d.refused = ControlAnswer(400, false,
                              "unknown command '" + command + "' (allowed: pause, resume, close, evict&site=SITE)");
  }
  return d;
}

}  // namespace lowband
