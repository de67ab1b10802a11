// The ranks of a multi-rank site (worker/ranks.h): which ranks a worker
// runs, where they meet, the device of each local rank.
#include "worker/ranks.h"

#include <catch2/catch.hpp>

namespace lowband {
namespace {

SiteConfig Site(int ranks) {
  SiteConfig s;
  s.name = "site-a";
  s.ranks = ranks;
  return s;
}

bool Mentions(const Status& st, const std::string& what) { return st.message().find(what) != std::string::npos; }

TEST_CASE("ranks: a plain site runs one rank, a site of two runs both here", "[unit][worker]") {
  auto one = PlanRanks(Site(1), std::nullopt, "");
  REQUIRE(one.ok());
  CHECK(one->ranks == 1);
  CHECK(one->local == std::vector<int>{0});
  CHECK(one->own_rank() == 0);
  CHECK(one->rendezvous.empty());
  CHECK(one->timeout == std::chrono::milliseconds(300000));

  SiteConfig s = Site(2);
  s.rank_timeout_s = 7;
  auto two = PlanRanks(s, std::nullopt, "");
  REQUIRE(two.ok());
  CHECK(two->ranks == 2);
  CHECK(two->local == std::vector<int>{0, 1});
  CHECK(two->own_rank() == 0);
  CHECK(two->rendezvous.empty());  // rank 0 makes a loopback rendezvous itself
  CHECK(two->timeout == std::chrono::milliseconds(7000));

  auto zero = PlanRanks(Site(0), std::nullopt, "");  // below 1: one rank
  REQUIRE(zero.ok());
  CHECK(zero->ranks == 1);
  CHECK(zero->local == std::vector<int>{0});
}

TEST_CASE("ranks: site.local_ranks are run here in ascending order", "[unit][worker]") {
  SiteConfig s = Site(4);
  s.local_ranks = {3, 0, 2};
  auto plan = PlanRanks(s, std::nullopt, "");
  REQUIRE(plan.ok());
  CHECK(plan->local == std::vector<int>{0, 2, 3});
  CHECK(plan->own_rank() == 0);

  SiteConfig other = Site(4);
  other.local_ranks = {3, 1};
  other.rendezvous = "10.0.0.1:29500";
  auto second_host = PlanRanks(other, std::nullopt, "");
  REQUIRE(second_host.ok());
  CHECK(second_host->local == std::vector<int>{1, 3});
  CHECK(second_host->own_rank() == 1);
  CHECK(second_host->rendezvous == "10.0.0.1:29500");
}

TEST_CASE("ranks: the --rank flag picks one rank of the site", "[unit][worker]") {
  SiteConfig s = Site(3);
  s.rendezvous = "file:/tmp/lowband-rdv";
  auto plan = PlanRanks(s, 2, "");
  REQUIRE(plan.ok());
  CHECK(plan->local == std::vector<int>{2});
  CHECK(plan->own_rank() == 2);
  CHECK(plan->ranks == 3);

  auto first = PlanRanks(s, 0, "");
  REQUIRE(first.ok());
  CHECK(first->local == std::vector<int>{0});

  auto past = PlanRanks(s, 3, "");
  REQUIRE_FALSE(past.ok());
  CHECK(past.status().code() == StatusCode::kInvalidArgument);
  CHECK(Mentions(past.status(), "--rank 3"));
  CHECK_FALSE(PlanRanks(s, -1, "").ok());

  auto single = PlanRanks(Site(1), 0, "");
  REQUIRE_FALSE(single.ok());
  CHECK(single.status().code() == StatusCode::kInvalidArgument);
  CHECK(Mentions(single.status(), "site.ranks is 1"));
}

TEST_CASE("ranks: a rank other than 0 without a rendezvous is refused", "[unit][worker]") {
  auto flag = PlanRanks(Site(2), 1, "");
  REQUIRE_FALSE(flag.ok());
  CHECK(flag.status().code() == StatusCode::kInvalidArgument);
  CHECK(Mentions(flag.status(), "rendezvous"));

  SiteConfig s = Site(2);
  s.local_ranks = {1};
  CHECK_FALSE(PlanRanks(s, std::nullopt, "").ok());
  // With one, it may.
  CHECK(PlanRanks(s, std::nullopt, "127.0.0.1:29500").ok());
  CHECK(PlanRanks(Site(2), 1, "127.0.0.1:29500").ok());
}

TEST_CASE("ranks: the rendezvous flag overrides site.rendezvous, and a bad one is refused", "[unit][worker]") {
  SiteConfig s = Site(2);
  s.rendezvous = "head:29500";
  auto from_site = PlanRanks(s, 1, "");
  REQUIRE(from_site.ok());
  CHECK(from_site->rendezvous == "head:29500");
  auto from_flag = PlanRanks(s, 1, "file:/run/lowband/rdv");
  REQUIRE(from_flag.ok());
  CHECK(from_flag->rendezvous == "file:/run/lowband/rdv");

  auto bad_flag = PlanRanks(s, 1, "head");
  REQUIRE_FALSE(bad_flag.ok());
  CHECK(bad_flag.status().code() == StatusCode::kInvalidArgument);
  SiteConfig bad_site = Site(2);
  bad_site.rendezvous = "file:relative/path";
  CHECK_FALSE(PlanRanks(bad_site, std::nullopt, "").ok());
  CHECK_FALSE(PlanRanks(Site(2), std::nullopt, "head:0").ok());
}

TEST_CASE("ranks: rendezvous forms", "[unit][worker]") {
  auto file = ParseRendezvous("file:/tmp/x/rdv");
  REQUIRE(file.ok());
  CHECK(file->file == "/tmp/x/rdv");
  CHECK(file->host.empty());
  CHECK(file->port == 0);

  auto tcp = ParseRendezvous("head.example:29500");
  REQUIRE(tcp.ok());
  CHECK(tcp->file.empty());
  CHECK(tcp->host == "head.example");
  CHECK(tcp->port == 29500);

  auto low = ParseRendezvous("10.1.2.3:1");
  REQUIRE(low.ok());
  CHECK(low->port == 1);
  auto high = ParseRendezvous("10.1.2.3:65535");
  REQUIRE(high.ok());
  CHECK(high->port == 65535);

  for (const char* bad : {"file:rel/path", "file:", "host:0", "host:65536", "host:99999", "host:123456",
                          "host:port", "host:12a", "host:-1", "host:", ":29500", "host", ""}) {
    INFO(bad);
    auto r = ParseRendezvous(bad);
    CHECK_FALSE(r.ok());
    if (!r.ok()) CHECK(r.status().code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("ranks: each local rank of a CUDA site gets its own device", "[unit][worker]") {
  CHECK(LocalRankDevice("cuda", 0, 2) == "cuda:0");
  CHECK(LocalRankDevice("cuda", 1, 2) == "cuda:1");
  CHECK(LocalRankDevice("cpu", 1, 2) == "cpu");
  CHECK(LocalRankDevice("cuda", 0, 1) == "cuda");
  CHECK(LocalRankDevice("cuda:3", 1, 2) == "cuda:3");  // a pinned device is kept
}

TEST_CASE("ranks: a rank's local index counts this host's ranks only", "[unit][worker]") {
  SiteConfig all = Site(4);
  CHECK(LocalIndexOf(all, 0) == 0);
  CHECK(LocalIndexOf(all, 3) == 3);

  SiteConfig some = Site(4);
  some.local_ranks = {3, 1};
  CHECK(LocalIndexOf(some, 1) == 0);
  CHECK(LocalIndexOf(some, 3) == 1);
  CHECK(LocalRankDevice("cuda", LocalIndexOf(some, 3), some.ranks) == "cuda:1");
}

}  // namespace
}  // namespace lowband
