#include "worker/ranks.h"

#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace lowband {

StatusOr<RankPlan> PlanRanks(const SiteConfig& site, std::optional<int> rank_flag, const std::string& rendezvous_flag) {
  RankPlan plan;
  plan.ranks = std::max(1, site.ranks);
  plan.timeout = std::chrono::milliseconds(static_cast<int64_t>(site.rank_timeout_s) * 1000);
  if (rank_flag) {
    if (plan.ranks < 2) return InvalidArgument("--rank needs a site of several ranks (site.ranks is 1)");
    if (*rank_flag < 0 || *rank_flag >= plan.ranks) {
      return InvalidArgument("--rank " + std::to_string(*rank_flag) + " is not a rank of this site (0 to " +
                             std::to_string(plan.ranks - 1) + ")");
    }
    plan.local = {*rank_flag};
  } else if (!site.local_ranks.empty()) {
    plan.local = site.local_ranks;
    std::sort(plan.local.begin(), plan.local.end());
  } else {
    for (int r = 0; r < plan.ranks; ++r) plan.local.push_back(r);
  }
  plan.rendezvous = rendezvous_flag.empty() ? site.rendezvous : rendezvous_flag;
  if (plan.ranks > 1 && plan.rendezvous.empty() && plan.own_rank() != 0) {
    return InvalidArgument("rank " + std::to_string(plan.own_rank()) +
                           " must find rank 0: set site.rendezvous or pass --rendezvous HOST:PORT");
  }
  if (!plan.rendezvous.empty()) LOWBAND_RETURN_IF_ERROR(ParseRendezvous(plan.rendezvous).status());
  return plan;
}

std::string LocalRankDevice(const std::string& device, int local_index, int ranks) {
  if (ranks > 1 && device == "cuda") return "cuda:" + std::to_string(local_index);
  return device;
}

int LocalIndexOf(const SiteConfig& site, int rank) {
  std::vector<int> local = site.local_ranks;
  std::sort(local.begin(), local.end());
  auto it = std::find(local.begin(), local.end(), rank);
  return it == local.end() ? rank : static_cast<int>(it - local.begin());
}

StatusOr<Rendezvous> ParseRendezvous(const std::string& text) {
  Rendezvous r;
  if (text.rfind("file:", 0) == 0) {
    r.file = text.substr(5);
    if (r.file.empty() || r.file[0] != '/') return InvalidArgument("rendezvous '" + text + "': file:ABSOLUTE_PATH");
    return r;
  }
  if (!ValidRendezvousAddress(text)) {
    return InvalidArgument("rendezvous '" + text +
                           "' is not HOST:PORT (an IPv4 address, localhost or a host name; port 1 to 65535), "
                           "or file:ABSOLUTE_PATH");
  }
  const size_t colon = text.rfind(':');
  r.host = text.substr(0, colon);
  r.port = std::atoi(text.c_str() + colon + 1);
  return r;
}

StatusOr<LocalRanks> LocalRanks::Spawn(const std::vector<std::string>& worker_argv, const RankPlan& plan,
                                       const std::string& rendezvous) {
  LocalRanks out;
  for (size_t i = 1; i < plan.local.size(); ++i) {
    SpawnOptions o;
    o.argv = worker_argv;
    o.argv.insert(o.argv.end(), {"--rank", std::to_string(plan.local[i]), "--rendezvous", rendezvous});
    auto p = Subprocess::Spawn(o);
    if (!p.ok()) {
      return Status(p.status().code(),
                    "cannot start rank " + std::to_string(plan.local[i]) + ": " + p.status().message());
    }
    out.children_.push_back(Child{plan.local[i], std::move(p).value()});
  }
  return out;
}

LocalRanks::~LocalRanks() { StopAll(std::chrono::milliseconds(2000)); }

std::string LocalRanks::Reap() {
  for (Child& c : children_) {
    if (!c.process.running()) continue;
    if (auto code = c.process.Poll()) {
      const std::string how = *code > 128 ? "was killed by signal " + std::to_string(*code - 128)
                                          : "exited with status " + std::to_string(*code);
      return "rank " + std::to_string(c.rank) + " (pid " + std::to_string(c.process.pid()) + ") " + how;
    }
  }
  return "";
}

void LocalRanks::StopAll(std::chrono::milliseconds grace) {
  // Ranks told to stop through the job wire (the campaign's end) exit on
  // their own within moments: give them that before SIGTERM cuts their
  // shutdown (and its last log lines) short.
  const auto settle_until = std::chrono::steady_clock::now() + std::min(grace / 2, std::chrono::milliseconds(1000));
  for (Child& c : children_) {
    if (!c.process.running()) continue;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(settle_until - std::chrono::steady_clock::now());
    if (left.count() > 0) c.process.WaitFor(left);
  }
  bool any = false;
  for (Child& c : children_) {
    if (c.process.running() && !c.process.Poll()) {
      c.process.Signal(SIGTERM);
      any = true;
    }
  }
  if (!any) return;
  const auto until = std::chrono::steady_clock::now() + grace;
  for (Child& c : children_) {
    if (!c.process.running()) continue;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (!c.process.WaitFor(std::max(left, std::chrono::milliseconds(0)))) {
      c.process.Signal(SIGKILL);
      c.process.WaitFor(std::chrono::milliseconds(1000));
    }
  }
}

}  // namespace lowband
