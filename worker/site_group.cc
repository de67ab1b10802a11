#include "worker/site_group.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <thread>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if defined(LOWBAND_HAVE_GLOO)
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#if defined(LOWBAND_HAVE_NCCL)
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/torch.h>

namespace lowband {
namespace {

bool IsCuda(const std::string& device) { return device.rfind("cuda", 0) == 0; }

std::string What(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  std::string s = e.what();
  // Gloo's messages carry a source position first; keep them short.
  return s.size() > 400 ? s.substr(0, 400) + "..." : s;
}

// The address of this host on the route to `host` (no packet is sent: a
// UDP connect only picks the route), so ranks on other hosts can reach the
// Gloo pairs this rank listens on. Empty if it cannot be found.
std::string LocalAddressToward(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || res == nullptr) return "";
  std::string out;
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  if (fd >= 0) {
    sockaddr_in local{};
    socklen_t len = sizeof(local);
    if (::connect(fd, res->ai_addr, res->ai_addrlen) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      char buf[INET_ADDRSTRLEN] = {};
      if (::inet_ntop(AF_INET, &local.sin_addr, buf, sizeof(buf)) != nullptr) out = buf;
    }
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return out;
}

bool IsLoopbackHost(const std::string& host) { return host == "localhost" || host.rfind("127.", 0) == 0; }

}  // namespace

std::string SiteGroupUnsupported(const std::string& device) {
  if (IsCuda(device)) {
#if defined(LOWBAND_HAVE_NCCL)
    return "";
#else
    return "this build has no NCCL process group (LibTorch without CUDA, or nccl.h not found)";
#endif
  }
#if defined(LOWBAND_HAVE_GLOO)
  return "";
#else
  return "this build has no Gloo process group (the gloo headers, Debian's libgloo-dev, were not found)";
#endif
}

int VisibleCudaDevices() {
  try {
    return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
  } catch (const std::exception&) {
    return 0;
  }
}

struct SiteGroup::Impl {
  SiteGroupOptions options;
  torch::Device device{torch::kCPU};
  c10::intrusive_ptr<c10d::Store> store;
#if defined(LOWBAND_HAVE_GLOO)
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#endif
#if defined(LOWBAND_HAVE_NCCL)
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;
#endif

  // Runs `op` on the process group (Gloo or NCCL) and waits for its work.
  template <class Op>
  Status Collective(const char* name, Op op) {
    try {
#if defined(LOWBAND_HAVE_NCCL)
      if (nccl) {
        op(*nccl)->wait(options.timeout);
        return Status::Ok();
      }
#endif
#if defined(LOWBAND_HAVE_GLOO)
      if (gloo) {
        op(*gloo)->wait(options.timeout);
        return Status::Ok();
      }
#endif
      return FailedPrecondition(std::string("site group: ") + name + " before Join");
    } catch (const std::exception& e) {
      return Unavailable("site rank " + std::to_string(options.rank) + "/" + std::to_string(options.size) + ": " +
                         name + " failed (a rank is gone or did not answer within " +
                         std::to_string(options.timeout.count() / 1000) + " s): " + What(e));
    }
  }
};

SiteGroup::SiteGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SiteGroup::~SiteGroup() = default;

StatusOr<std::unique_ptr<SiteGroup>> SiteGroup::OpenStore(const SiteGroupOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return InvalidArgument("site group: rank " + std::to_string(options.rank) + " of " + std::to_string(options.size));
  }
  if (options.file.empty() && (options.port < 1 || options.port > 65535)) {
    return InvalidArgument("site group: rank " + std::to_string(options.rank) + " needs the store's port, got " +
                           std::to_string(options.port));
  }
  const std::string why = SiteGroupUnsupported(options.device);
  if (!why.empty()) return FailedPrecondition("site group on " + options.device + ": " + why);
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  try {
    impl->device = torch::Device(options.device);
    if (!options.file.empty()) {
      impl->store = c10::make_intrusive<c10d::FileStore>(options.file, options.size);
    } else {
      c10d::TCPStoreOptions o;
      o.port = static_cast<uint16_t>(options.port);
      o.isServer = options.rank == 0;
      o.numWorkers = options.size;
      o.waitWorkers = false;
      o.timeout = options.timeout;
      impl->store = c10::make_intrusive<c10d::TCPStore>(options.host, o);
    }
    impl->store->setTimeout(options.timeout);
  } catch (const std::exception& e) {
    const std::string where =
        options.file.empty() ? options.host + ":" + std::to_string(options.port) : "file " + options.file;
    return Unavailable("site group: rank " + std::to_string(options.rank) +
                       (options.rank == 0 ? " cannot open the store at " : " cannot reach the store at ") + where +
                       ": " + What(e));
  }
  return std::unique_ptr<SiteGroup>(new SiteGroup(std::move(impl)));
}

int SiteGroup::rank() const { return impl_->options.rank; }
int SiteGroup::size() const { return impl_->options.size; }
const char* SiteGroup::backend() const { return IsCuda(impl_->options.device) ? "nccl" : "gloo"; }

Status SiteGroup::Join() {
  Impl& s = *impl_;
  const std::string& host = s.options.host;
  try {
    if (IsCuda(s.options.device)) {
#if defined(LOWBAND_HAVE_NCCL)
      // This rank's GPU is the process's current device, so NCCL and CUDA
      // contexts stay on it (not all on GPU 0).
      c10::cuda::set_device(s.device.index() < 0 ? 0 : s.device.index());
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = s.options.timeout;
      s.nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(s.store, s.options.rank, s.options.size, opts);
#endif
    } else {
#if defined(LOWBAND_HAVE_GLOO)
      auto opts = c10d::ProcessGroupGloo::Options::create();
      opts->timeout = s.options.timeout;
      std::string address = "127.0.0.1";
      if (s.options.file.empty() && !IsLoopbackHost(host)) {
        address = LocalAddressToward(host, s.options.port);
        if (address.empty()) return Unavailable("site group: no route from this host to the rendezvous " + host);
      }
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(address));
      // Gloo connects every pair of ranks here, waiting up to the timeout.
      s.gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(s.store, s.options.rank, s.options.size, opts);
#endif
    }
  } catch (const std::exception& e) {
    return Unavailable("site group: rank " + std::to_string(s.options.rank) + " cannot join " +
                       std::to_string(s.options.size) + " ranks: " + What(e));
  }
  // NCCL makes its communicator at the first collective: join it now.
  std::vector<double> probe{1.0};
  LOWBAND_RETURN_IF_ERROR(AllreduceSum(&probe));
  if (probe[0] != static_cast<double>(s.options.size)) {
    return Internal("site group: " + std::to_string(probe[0]) + " ranks answered, expected " +
                    std::to_string(s.options.size));
  }
  return Status::Ok();
}

namespace {
std::string JobKey(uint64_t seq) { return "lowband/job/" + std::to_string(seq); }
}  // namespace

// A job's bytes by broadcast from rank 0 (its size came through the store).
Status SiteGroup::BroadcastBytes(std::vector<uint8_t>* bytes) {
  try {
    auto t = torch::empty({static_cast<int64_t>(bytes->size())}, torch::TensorOptions().dtype(torch::kUInt8));
    if (impl_->options.rank == 0) std::memcpy(t.data_ptr<uint8_t>(), bytes->data(), bytes->size());
    t = t.to(impl_->device);
    LOWBAND_RETURN_IF_ERROR(Broadcast(t, 0));
    if (impl_->options.rank != 0) {
      auto cpu = t.to(torch::kCPU).contiguous();
      std::memcpy(bytes->data(), cpu.data_ptr<uint8_t>(), bytes->size());
    }
    return Status::Ok();
  } catch (const std::exception& e) {
    return Internal("site group: job broadcast: " + What(e));
  }
}

Status SiteGroup::Post(uint64_t seq, const std::vector<uint8_t>& bytes) {
  try {
    const std::string size = std::to_string(bytes.size());
    impl_->store->set(JobKey(seq), std::vector<uint8_t>(size.begin(), size.end()));
    if (seq >= 2) impl_->store->deleteKey(JobKey(seq - 2));
  } catch (const std::exception& e) {
    return Unavailable("site group: cannot post job " + std::to_string(seq) + ": " + What(e));
  }
  if (bytes.empty()) return Status::Ok();
  std::vector<uint8_t> copy = bytes;
  return BroadcastBytes(&copy);
}

StatusOr<std::optional<std::vector<uint8_t>>> SiteGroup::Fetch(uint64_t seq, const std::function<bool()>& stop) {
  const std::string key = JobKey(seq);
  std::vector<uint8_t> header;
  try {
    // Short polls first (a job usually follows the last at once), then 10 ms.
    for (int polls = 0;; ++polls) {
      if (impl_->store->check({key})) {
        header = impl_->store->get(key);
        break;
      }
      if (stop && stop()) return std::optional<std::vector<uint8_t>>();
      std::this_thread::sleep_for(std::chrono::microseconds(polls < 200 ? 500 : 10000));
    }
  } catch (const std::exception& e) {
    return Unavailable("site group: rank 0 is gone (waiting for job " + std::to_string(seq) + "): " + What(e));
  }
  const std::string size_text(header.begin(), header.end());
  char* end = nullptr;
  const unsigned long long size = std::strtoull(size_text.c_str(), &end, 10);
  if (size_text.empty() || end == nullptr || *end != '\0' || size > (1ull << 31)) {
    return Unavailable("site group: job " + std::to_string(seq) + " has an unreadable size '" + size_text + "'");
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  if (!bytes.empty()) LOWBAND_RETURN_IF_ERROR(BroadcastBytes(&bytes));
  return std::optional<std::vector<uint8_t>>(std::move(bytes));
}

Status SiteGroup::AllreduceSum(at::Tensor& tensor) {
  std::vector<at::Tensor> list{tensor};
  return impl_->Collective("all-reduce", [&](auto& pg) { return pg.allreduce(list); });
}

Status SiteGroup::AllreduceSum(std::vector<double>* values) {
  try {
    auto t = torch::tensor(*values, torch::TensorOptions().dtype(torch::kFloat64)).to(impl_->device);
    LOWBAND_RETURN_IF_ERROR(AllreduceSum(t));
    auto cpu = t.to(torch::kCPU).contiguous();
    std::memcpy(values->data(), cpu.data_ptr<double>(), values->size() * sizeof(double));
    return Status::Ok();
  } catch (const std::exception& e) {
    return Internal("site group: all-reduce of " + std::to_string(values->size()) + " values: " + What(e));
  }
}

StatusOr<std::vector<uint64_t>> SiteGroup::AllGather(uint64_t value) {
  const int n = impl_->options.size;
  try {
    // Each rank fills its own slot; the sum of one value and zeros is exact.
    auto t = torch::zeros({n}, torch::TensorOptions().dtype(torch::kInt64));
    int64_t v;
    std::memcpy(&v, &value, sizeof(v));
    t[impl_->options.rank] = v;
    t = t.to(impl_->device);
    LOWBAND_RETURN_IF_ERROR(AllreduceSum(t));
    auto cpu = t.to(torch::kCPU).contiguous();
    std::vector<uint64_t> out(static_cast<size_t>(n));
    std::memcpy(out.data(), cpu.data_ptr<int64_t>(), out.size() * sizeof(uint64_t));
    return out;
  } catch (const std::exception& e) {
    return Internal(std::string("site group: gather: ") + What(e));
  }
}

Status SiteGroup::Broadcast(at::Tensor& tensor, int root) {
  std::vector<at::Tensor> list{tensor};
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  return impl_->Collective("broadcast", [&](auto& pg) { return pg.broadcast(list, opts); });
}

}  // namespace lowband
