#include "coordinator/http_api.h"

#include "base/json.h"
#include "coordinator/dashboard.h"
#include "coordinator/dashboard_control.h"

namespace lowband {

// The dashboard's routes: the page, its state, its round controls, and the
// Prometheus text.
HttpResponse HttpApi::Handle(const HttpRequest& req) {
  const bool read = req.method == "GET" || req.method == "HEAD";
  if (req.path == "/metrics" && read) {
    return {200, "text/plain; version=0.0.4; charset=utf-8", backend_->PrometheusText()};
  }
  if ((req.path == "/" || req.path == "/index.html") && read) return {200, "text/html; charset=utf-8", DashboardPage()};
  if (req.path == "/api/state" && read) return {200, "application/json", backend_->StateJson()};
  if (req.path == "/api/control") {
    const DashboardControl d =
        CheckDashboardControl(req, token_, QueryParam(req.query, "command"), QueryParam(req.query, "site"));
    if (d.refused) return *d.refused;
    const ControlResponse resp = backend_->RunDashboardControl(d.request);
    return ControlAnswer(resp.ok ? 200 : 409, resp.ok, resp.message);
  }
  if (req.path == "/metrics" || req.path == "/" || req.path == "/index.html" || req.path == "/api/state") {
    return {405, "text/plain", "only GET or HEAD here\n"};
  }
  return {404, "text/plain", "not found: the dashboard is at /, its state at /api/state, metrics at /metrics\n"};
}

std::string DashboardStateJson(CoordinatorCore& core, const RecordLines& records, bool control,
                               const std::string& fcrag_result) {
  CoreOutput none;
  const ControlResponse status = core.HandleControl(ControlRequest{"status", {}}, Clock::now(), &none);
  const ControlResponse workers = core.HandleControl(ControlRequest{"workers", {}}, Clock::now(), &none);
  JsonObject o;
  o.AddRaw("status", status.json).AddRaw("workers", workers.json).AddRaw("records", records.JsonArray())
      .Add("control", control).AddRaw("fcrag", fcrag_result.empty() ? "null" : fcrag_result);
  return o.str();
}

}  // namespace lowband
