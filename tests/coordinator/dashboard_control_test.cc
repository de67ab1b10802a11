// The dashboard's round-control checks: method, operator token, command.
#include "coordinator/dashboard_control.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

namespace lowband {
namespace {

const std::string kToken = "0123456789abcdef";

HttpRequest Post(const std::string& authorization) {
  HttpRequest r;
  r.method = "POST";
  r.path = "/api/control";
  r.authorization = authorization;
  return r;
}

TEST_CASE("dashboard control: refusals carry their status codes", "[unit][coordinator]") {
  HttpRequest get = Post("Bearer " + kToken);
  get.method = "GET";
  auto d = CheckDashboardControl(get, kToken, "pause", "");
  REQUIRE(d.refused);
  CHECK(d.refused->status == 405);
  CHECK(d.refused->content_type == "application/json");
  CHECK(d.refused->body == "{\"ok\":false,\"message\":\"round controls are POST requests\"}");

  d = CheckDashboardControl(Post("Bearer " + kToken), "", "pause", "");
  REQUIRE(d.refused);
  CHECK(d.refused->status == 403);

  const std::vector<std::string> bad = {"", "Bearer ", "Bearer 0123456789abcdeX", "Bearer " + kToken + "0",
                                       "Bearer 0123456789abcde", kToken, "Basic " + kToken};
  for (const std::string& auth : bad) {
    INFO(auth);
    d = CheckDashboardControl(Post(auth), kToken, "pause", "");
    REQUIRE(d.refused);
    CHECK(d.refused->status == 401);
    CHECK(d.refused->body == "{\"ok\":false,\"message\":\"the operator token is missing or wrong\"}");
  }

  d = CheckDashboardControl(Post("Bearer " + kToken), kToken, "reboot", "");
  REQUIRE(d.refused);
  CHECK(d.refused->status == 400);
  CHECK(d.refused->body == "{\"ok\":false,\"message\":\"unknown command 'reboot' (allowed: pause, resume, close, "
                           "evict&site=SITE)\"}");
  d = CheckDashboardControl(Post("Bearer " + kToken), kToken, "", "");
  REQUIRE(d.refused);
  CHECK(d.refused->status == 400);
}

TEST_CASE("dashboard control: accepted commands become control requests", "[unit][coordinator]") {
  for (const std::string c : {"pause", "resume", "close"}) {
    const auto d = CheckDashboardControl(Post("Bearer " + kToken), kToken, c, "ignored");
    REQUIRE_FALSE(d.refused);
    CHECK(d.request.command == "round " + c);
    CHECK(d.request.args.empty());
  }
  const auto d = CheckDashboardControl(Post("Bearer " + kToken), kToken, "evict", "site-b");
  REQUIRE_FALSE(d.refused);
  CHECK(d.request.command == "worker evict");
  CHECK(d.request.args == std::vector<std::string>{"site-b"});
  CHECK(ControlAnswer(409, false, "no").status == 409);
  CHECK(ControlAnswer(200, true, "ok").body == "{\"ok\":true,\"message\":\"ok\"}");
}

}  // namespace
}  // namespace lowband
