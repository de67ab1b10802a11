// SiteGroup: the ranks of one site joined by LibTorch's c10d (docs/ranks.md).
//
// The ranks meet at a c10d store: a FileStore when they share a host (a
// private file: nothing listens on the network), or a TCPStore that rank 0
// hosts at the site's rendezvous address. The process group is
// ProcessGroupGloo for CPU ranks or ProcessGroupNCCL for CUDA ranks.
//   * Jobs: rank 0 posts each job it runs (numbered 0, 1, 2, ...): its size
//     goes through the store, its bytes by a broadcast; the other ranks
//     run the same job.
//   * The collectives inside a job: gradient all-reduce, evaluation sums,
//     digest gathering.
// Every failure (a rank gone, a timeout) is a Status, never an exception.
// Torch-free header; owned by one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"

namespace at {
class Tensor;
}

namespace lowband {

// Exit status of a worker whose site lost a rank (EX_TEMPFAIL): a restart
// (systemd Restart=on-failure) brings every rank back and the site rejoins.
constexpr int kExitSiteDown = 75;

struct SiteGroupOptions {
  int rank = 0;
  int size = 1;
  // Where the ranks meet: a FileStore at `file` when set (ranks on one
  // host), else rank 0's TCPStore at host:port.
  std::string file;
  std::string host = "127.0.0.1";
  int port = 0;
  std::string device = "cpu";      // this rank's device: "cpu" (Gloo) or "cuda:N" (NCCL)
  // A collective, or joining the group, fails after this long.
  std::chrono::milliseconds timeout{300000};
};

// Whether this build has a c10d backend for `device` ("" if so, else why not).
std::string SiteGroupUnsupported(const std::string& device);
// CUDA devices visible to this process (0 without CUDA).
int VisibleCudaDevices();

class SiteGroup {
 public:
  // Opens the store: a FileStore, or rank 0 listens (TCPStore server) and
  // the others connect, retrying until options.timeout.
  static StatusOr<std::unique_ptr<SiteGroup>> OpenStore(const SiteGroupOptions& options);
  ~SiteGroup();

  int rank() const;
  int size() const;
  const char* backend() const;  // "gloo" or "nccl"

  // Forms the process group: blocks until every rank has joined (or the
  // timeout passes).
  Status Join();

  // Jobs. Rank 0 posts the seq-th job (empty: stop); keys two jobs behind
  // are dropped from the store (every rank has read them: each job ends in
  // a collective).
  Status Post(uint64_t seq, const std::vector<uint8_t>& bytes);
  // The other ranks: waits for job `seq`, calling `stop` between polls
  // (nullopt when it says so). Unavailable when rank 0 is gone.
  StatusOr<std::optional<std::vector<uint8_t>>> Fetch(uint64_t seq, const std::function<bool()>& stop);

  // Collectives: every rank calls the same ones in the same order.
  // Unavailable when a rank is gone or the timeout passed.
  Status AllreduceSum(at::Tensor& tensor);            // in place, on this rank's device
  Status AllreduceSum(std::vector<double>* values);  // in place
  StatusOr<std::vector<uint64_t>> AllGather(uint64_t value);  // one per rank, rank order
  Status Broadcast(at::Tensor& tensor, int root = 0);

 private:
  Status BroadcastBytes(std::vector<uint8_t>* bytes);
  struct Impl;
  explicit SiteGroup(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowband
