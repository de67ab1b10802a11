// The operator dashboard (issue 9): one self-contained page (HTML, CSS and
// JavaScript inline; no external assets, no CDN) served by the coordinator
// at GET / next to /metrics. It polls GET /api/state once a second and draws
// the campaign's charts on canvases; its round controls POST
// /api/control?command=... with the operator token (network.dashboard_token).
#pragma once

#include <string>

namespace lowband {

const std::string& DashboardPage();

}  // namespace lowband
