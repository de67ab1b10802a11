// The transport suite (transport_suite.h) over the in-process transport.
#include "net/inproc.h"

#include <memory>
#include <string>

#include <catch2/catch.hpp>

#include "tests/net/transport_suite.h"

namespace lowband {
namespace {

using namespace transport_suite;

class InprocHarness : public Harness {
 public:
  InprocHarness() : server_(net_.CreateEndpoint("coordinator")) {}
  Transport& server() override { return *server_; }
  std::unique_ptr<Transport> NewClient(const std::string& id) override { return net_.CreateEndpoint(id); }
  std::string server_peer() const override { return "coordinator"; }
  int64_t server_dropped() const override { return -1; }
  void Wait(Transport&) override {}  // delivery is synchronous

 private:
  InprocNetwork net_;
  std::unique_ptr<Transport> server_;
};


TEST_CASE("transport suite: in-process", "[inproc]") {
  RunTransportSuite([] { return std::make_unique<InprocHarness>(); });
}

}  // namespace
}  // namespace lowband
