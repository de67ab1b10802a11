// The checks in front of the dashboard's round controls
// (POST /api/control?command=...): method, operator token and command, a
// pure function of the request, the configured token and the query's
// decoded `command` and `site` parameters. What passes becomes the
// ControlRequest the service runs on the core (coordinator/http_api.h);
// ControlAnswer is the JSON reply shape every /api/control answer has.
//
// Thread: any (no state); the service calls it on the coordinator loop.
// Errors are the HTTP answers: 405 (not POST), 403 (no token configured:
// read-only dashboard), 401 (token missing or wrong; compared in constant
// time, logged), 400 (unknown command).
#pragma once

#include <optional>
#include <string>

#include "ops/metrics_http.h"  // HttpRequest, HttpResponse (plain structs)
#include "protocol/messages.h"

namespace lowband {

// {"ok":...,"message":...} as application/json with `status`.
HttpResponse ControlAnswer(unsigned status, bool ok, const std::string& message);

struct DashboardControl {
  std::optional<HttpResponse> refused;  // set: answer this, run nothing
  ControlRequest request;               // otherwise: run this
};

// `token`: the operator token ("" = none configured); `command`, `site`:
// the query parameters (QueryParam), "" when absent.
DashboardControl CheckDashboardControl(const HttpRequest& req, const std::string& token, const std::string& command,
                                       const std::string& site);

}  // namespace lowband
