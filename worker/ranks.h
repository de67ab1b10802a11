// The ranks of a multi-rank site on this host (docs/ranks.md): which ones
// this worker runs, where they meet, and the child processes it starts for
// all but the first. Torch-free.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "base/process.h"
#include "base/status.h"

namespace lowband {

struct RankPlan {
  int ranks = 1;
  std::vector<int> local;  // ranks run here, ascending: local[0] in this process, the rest as children
  // Where the ranks meet: "file:PATH" (one host: rank 0 makes a private
  // file), or HOST:PORT of rank 0's TCPStore.
  std::string rendezvous;
  std::chrono::milliseconds timeout{300000};
  int own_rank() const { return local.empty() ? 0 : local.front(); }
};

// From the site file and the worker's --rank / --rendezvous flags (empty:
// not given). InvalidArgument names what is wrong.
StatusOr<RankPlan> PlanRanks(const SiteConfig& site, std::optional<int> rank_flag, const std::string& rendezvous_flag);

// The device of the i-th rank run on this host: "cuda" -> "cuda:i".
std::string LocalRankDevice(const std::string& device, int local_index, int ranks);
// Where `rank` stands among this host's ranks (site.local_ranks, or all).
int LocalIndexOf(const SiteConfig& site, int rank);

// Splits a rendezvous into the FileStore path, or host and port.
struct Rendezvous {
  std::string file;
  std::string host;
  int port = 0;
};
StatusOr<Rendezvous> ParseRendezvous(const std::string& text);

// The child processes of the ranks after local[0]: each runs the same
// worker command line with --rank R --rendezvous WHERE. Stopped (SIGTERM,
// then SIGKILL) when destroyed.
class LocalRanks {
 public:
  static StatusOr<LocalRanks> Spawn(const std::vector<std::string>& worker_argv, const RankPlan& plan,
                                    const std::string& rendezvous);
  LocalRanks() = default;
  LocalRanks(LocalRanks&&) = default;
  LocalRanks& operator=(LocalRanks&&) = default;
  ~LocalRanks();

  // Reaps children that ended: a description of the first one ("rank 1
  // (pid 123) was killed by signal 9"), or "" while all run.
  std::string Reap();
  // Children still running get up to min(grace / 2, 1 s) to exit on their
  // own, then SIGTERM, then SIGKILL for those still running after `grace`.
  void StopAll(std::chrono::milliseconds grace);
  size_t size() const { return children_.size(); }

 private:
  struct Child {
    int rank;
    Subprocess process;
  };
  std::vector<Child> children_;
};

}  // namespace lowband
