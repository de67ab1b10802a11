// The operator dashboard (issue 9): one self-contained page (HTML, CSS and
// JavaScript inline; no external assets, no CDN) served by the coordinator
// at GET / next to /metrics. It polls GET /api/state once a second and draws
// the campaign's charts on canvases; its round controls POST
// /api/control?command=... with the operator token (network.dashboard_token).
#pragma once

#include <string>

#include "base/status.h"

namespace lowband {

const std::string& DashboardPage();

// `lowband report RUN_DIR`: the same page as a static file of a finished
// (or stopped) campaign: its state built from RUN_DIR/metrics.jsonl (every
// round record; required), summary.txt and fcrag.json (when present),
// embedded in the page, which then draws once and does not poll; no
// controls. NotFound / InvalidArgument name the file and line.
StatusOr<std::string> ReportPage(const std::string& run_dir);

}  // namespace lowband
