// HttpApi: the coordinator's HTTP routes, served by ops/MetricsHttpServer
// on the loop:
//   GET|HEAD /, /index.html  the dashboard page (coordinator/dashboard.h)
//   GET|HEAD /api/state      the page's state (DashboardStateJson)
//   POST /api/control        round controls, behind the operator token
//                            (coordinator/dashboard_control.h)
//   GET|HEAD /metrics        Prometheus text (coordinator/prometheus.h)
// Other methods on those paths get 405, other paths 404.
//
// The routes read and act through a Backend the service implements, so
// this file holds no campaign state: the text of /metrics and
// /api/state, and running a checked control command (on the core, then
// dispatching what it emits).
//
// Thread: the coordinator loop (every handler runs there). Errors are HTTP
// status codes; nothing throws.
#pragma once

#include <string>

#include "coordinator/core.h"
#include "coordinator/reporting.h"
#include "ops/metrics_http.h"
#include "protocol/messages.h"

namespace lowband {

class HttpApi {
 public:
  class Backend {
   public:
    virtual ~Backend() = default;
    virtual std::string PrometheusText() = 0;  // GET /metrics
    virtual std::string StateJson() = 0;       // GET /api/state
    // A control request that passed the token and command checks: run on
    // the core (logged as "dashboard control"), its output dispatched.
    virtual ControlResponse RunDashboardControl(const ControlRequest& req) = 0;
  };

  // `token`: the operator token ("" = read-only dashboard).
  HttpApi(std::string token, Backend* backend) : token_(std::move(token)), backend_(backend) {}
  HttpResponse Handle(const HttpRequest& req);
  bool control_enabled() const { return !token_.empty(); }

 private:
  std::string token_;
  Backend* backend_;  // not owned; outlives this
};

// GET /api/state: the core's status and workers (as `lowband status` and
// `lowband workers` show them), the round records, whether the round
// controls are on, and the campaign's FC-RAG calibration ("" = null).
std::string DashboardStateJson(CoordinatorCore& core, const RecordLines& records, bool control,
                               const std::string& fcrag_result);

}  // namespace lowband
