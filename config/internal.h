// Shared internals of the config loaders (internal to config/; yaml-free).
//
// The loaders work in two passes so that every problem is reported at once
// (config/parse.h, config/check.h); what one pass hands the other, and the
// value forms both accept, are declared here. config/values.cc defines the
// string helpers and validators, config/load.cc the file helpers.
//
// Not part of the config API: only config/*.cc include this header.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "base/status.h"
#include "config/diagnostics.h"

namespace lowband {
namespace config_internal {

// sparseloco: topk counts values kept per full chunk of this many (codec/codec.h kChunkElems).
constexpr int kSparseLoCoChunk = 4096;

// What the parse pass learnt about positions, for the check pass.
struct ParseState {
  // Canonical key path ("sites[0].site.name") -> where it was written.
  std::map<std::string, Where> lines;
  // Canonical paths whose value is unknown (type error) or derived from
  // another key; checks on them would only repeat an error.
  std::set<std::string> bad;
};

// ---------------------------------------------------------------------------
// Strings (config/values.cc)

// "path.key", or "key" when path is empty.
std::string Join(const std::string& path, const std::string& key);
// Items separated by ", ".
std::string JoinList(const std::vector<std::string>& items);
// As an ostream prints it (6 significant digits: "0.1", "1e+06") in the
// classic locale: numbers in messages.
std::string FormatDouble(double v);

// ---------------------------------------------------------------------------
// Value forms (config/values.cc)

// Non-empty and only '0'..'9'.
bool AllDigits(const std::string& s);
// Non-empty and only [A-Za-z0-9_.-] (campaign, site and cluster names).
bool ValidName(const std::string& s);
// cpu, cuda or cuda:N (N at most 4 digits).
bool ValidDevice(const std::string& s);

// A ZeroMQ endpoint we accept: tcp://HOST:PORT or ipc://PATH.
struct Endpoint {
  std::string scheme;  // "tcp" or "ipc"
  std::string host;    // tcp: as written, brackets kept for IPv6
  int port = 0;
  std::string path;    // ipc
};
inline constexpr char kEndpointForms[] = "tcp://HOST:PORT, ipc://PATH";
// Fills *ep and returns true for a well-formed endpoint (tcp port 1..65535;
// host *, a bracketed IPv6 address or a name/IPv4 of [A-Za-z0-9._-]).
bool ParseEndpoint(const std::string& s, Endpoint* ep);
// ipc, localhost, [::1] or 127.0.0.0/8 written as four octets.
bool IsLoopback(const Endpoint& ep);
// The endpoint a local worker dials for a bind address: a wildcard host
// (*, 0.0.0.0, [::]) becomes the loopback address of the same port.
std::string BindToConnect(const std::string& bind);
// site.rendezvous: HOST:PORT with an IPv4 address, localhost or a DNS name
// and a port 1..65535 (ValidRendezvousAddress in config/config.h).
bool ValidRendezvous(const std::string& v);

// ---------------------------------------------------------------------------
// Files (config/load.cc)

// `p` relative to the directory of `base_file`, lexically normalised; an
// empty or absolute `p` is returned as it is.
std::string ResolveRelative(const std::string& base_file, const std::string& p);
// Reads a whole config file. NotFound names the path and the OS reason;
// InvalidArgument when it is larger than any config file should be.
StatusOr<std::string> ReadConfigFile(const std::string& path);

}  // namespace config_internal
}  // namespace lowband
