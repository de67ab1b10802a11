// Value forms shared by the config passes: key paths and lists in
// messages, names, devices, ZeroMQ endpoints and the rendezvous address.
// Pure functions, any thread; no yaml-cpp here.
#include "config/internal.h"

#include <arpa/inet.h>

#include <cctype>
#include <cstdlib>
#include <locale>
#include <sstream>

#include "config/config.h"

namespace lowband {
namespace config_internal {
namespace {

bool ValidHost(const std::string& host) {
  if (host == "*") return true;
  if (host.size() >= 3 && host.front() == '[' && host.back() == ']') {
    for (size_t i = 1; i + 1 < host.size(); ++i) {
      char c = host[i];
      bool ok = std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.';
      if (!ok) return false;
    }
    return true;
  }
  if (host.empty() || host.size() > 253) return false;
  for (char c : host) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}

bool IsLoopbackIpv4(const std::string& host) {
  // 127.0.0.0/8, written as four dotted decimal octets.
  if (host.rfind("127.", 0) != 0) return false;
  int parts = 0;
  size_t start = 0;
  while (start <= host.size()) {
    size_t dot = host.find('.', start);
    std::string octet = host.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!AllDigits(octet) || octet.size() > 3 || std::atoi(octet.c_str()) > 255) return false;
    ++parts;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts == 4;
}

// A DNS-style host name: dot-separated labels of letters, digits and '-'
// (not at either end of a label), at most 253 characters.
bool ValidDnsName(const std::string& host) {
  if (host.empty() || host.size() > 253) return false;
  size_t start = 0;
  while (true) {
    const size_t dot = host.find('.', start);
    const std::string label = host.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    for (char c : label) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
      if (!ok) return false;
    }
    if (dot == std::string::npos) return true;
    start = dot + 1;
  }
}

}  // namespace

std::string Join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string JoinList(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) {
    if (!out.empty()) out += ", ";
    out += s;
  }
  return out;
}

std::string FormatDouble(double v) {
  std::ostringstream os;
  os.imbue(std::locale::classic());
  os << v;
  return os.str();
}

bool AllDigits(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

bool ValidName(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

bool ValidDevice(const std::string& s) {
  if (s == "cpu" || s == "cuda") return true;
  if (s.rfind("cuda:", 0) != 0) return false;
  std::string n = s.substr(5);
  return AllDigits(n) && n.size() <= 4;
}

bool ParseEndpoint(const std::string& s, Endpoint* ep) {
  if (s.rfind("ipc://", 0) == 0) {
    ep->scheme = "ipc";
    ep->path = s.substr(6);
    return !ep->path.empty();
  }
  if (s.rfind("tcp://", 0) != 0) return false;
  std::string rest = s.substr(6);
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = rest.substr(0, colon);
  std::string port = rest.substr(colon + 1);
  if (!ValidHost(host) || !AllDigits(port) || port.size() > 5) return false;
  int p = std::atoi(port.c_str());
  if (p < 1 || p > 65535) return false;
  ep->scheme = "tcp";
  ep->host = host;
  ep->port = p;
  return true;
}

bool IsLoopback(const Endpoint& ep) {
  if (ep.scheme == "ipc") return true;
  return ep.host == "localhost" || ep.host == "[::1]" || IsLoopbackIpv4(ep.host);
}

// A local worker cannot connect to a wildcard bind address; it dials the
// loopback address of the same port instead.
std::string BindToConnect(const std::string& bind) {
  Endpoint ep;
  if (!ParseEndpoint(bind, &ep) || ep.scheme != "tcp") return bind;
  if (ep.host == "*" || ep.host == "0.0.0.0") return "tcp://127.0.0.1:" + std::to_string(ep.port);
  if (ep.host == "[::]") return "tcp://[::1]:" + std::to_string(ep.port);
  return bind;
}

// site.rendezvous: HOST:PORT of rank 0's c10d store, which the other ranks
// (possibly on other hosts) dial: an IPv4 address, localhost or a DNS name,
// and a concrete port 1..65535.
bool ValidRendezvous(const std::string& v) {
  const size_t colon = v.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  const std::string host = v.substr(0, colon);
  const std::string port = v.substr(colon + 1);
  if (!AllDigits(port) || port.size() > 5) return false;
  const long p = std::atol(port.c_str());
  if (p < 1 || p > 65535) return false;
  if (host == "localhost") return true;
  in_addr addr{};
  if (::inet_pton(AF_INET, host.c_str(), &addr) == 1) return true;
  // Digits and dots only but not an IPv4 address (999.1.1.1, 10.0.0): a typo.
  if (host.find_first_not_of("0123456789.") == std::string::npos) return false;
  return ValidDnsName(host);
}

}  // namespace config_internal

bool ValidRendezvousAddress(const std::string& host_port) { return config_internal::ValidRendezvous(host_port); }

}  // namespace lowband
