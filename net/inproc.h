// In-process transports for tests: endpoints of one InprocNetwork exchange
// frames through per-endpoint queues, in order, with no sockets or threads.
// Single-threaded: the network and its endpoints live on one thread.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <string>

#include "net/transport.h"

namespace lowband {

// In-process network for tests: endpoints registered by name, messages
// delivered in order into per-endpoint queues. Single-threaded.
class InprocNetwork {
 public:
  // Creates the endpoint `name`. Sends from it carry `name` as peer id.
  std::unique_ptr<Transport> CreateEndpoint(const std::string& name);
  // Optional fault injection: drop everything sent to `name` while true.
  void SetPartitioned(const std::string& name, bool partitioned);
  // Total messages currently queued anywhere.
  size_t Pending() const;

 private:
  friend class InprocTransport;
  std::map<std::string, std::deque<Inbound>> queues_;
  std::map<std::string, bool> partitioned_;
};

}  // namespace lowband
