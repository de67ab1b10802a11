#include "net/inproc.h"

namespace lowband {

class InprocTransport : public Transport {
 public:
  InprocTransport(InprocNetwork* net, std::string name) : net_(net), name_(std::move(name)) {}
  ~InprocTransport() override { net_->queues_.erase(name_); }

  Status Send(const std::string& peer, Frames frames) override {
    auto it = net_->queues_.find(peer);
    if (it == net_->queues_.end()) return Unavailable("no inproc endpoint named '" + peer + "'");
    if (net_->partitioned_[peer]) return Status::Ok();  // silently lost, like a cut link
    it->second.push_back(Inbound{name_, std::move(frames), ""});
    return Status::Ok();
  }

  bool TryReceive(Inbound* out) override {
    auto& q = net_->queues_[name_];
    if (q.empty()) return false;
    *out = std::move(q.front());
    q.pop_front();
    return true;
  }

 private:
  InprocNetwork* net_;
  std::string name_;
};

std::unique_ptr<Transport> InprocNetwork::CreateEndpoint(const std::string& name) {
  queues_[name];
  return std::make_unique<InprocTransport>(this, name);
}

void InprocNetwork::SetPartitioned(const std::string& name, bool partitioned) {
  partitioned_[name] = partitioned;
}

size_t InprocNetwork::Pending() const {
  size_t n = 0;
  for (const auto& [name, q] : queues_) n += q.size();
  return n;
}

}  // namespace lowband
