#include "base/log.h"

#include <cmath>
#include <cstdio>
#include <ctime>
#include <sys/time.h>

namespace lowband::log {
namespace {
std::string g_role = "lowband";
std::string g_node;
Level g_level = Level::kInfo;

const char* LevelName(Level l) {
  switch (l) {
    case Level::kDebug: return "DEBUG";
    case Level::kInfo: return "INFO";
    case Level::kWarn: return "WARN";
    case Level::kError: return "ERROR";
  }
  return "INFO";
}

void AppendValue(std::string* out, const std::string& v) {
  bool plain = !v.empty();
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) plain = false;
  }
  if (plain) {
    *out += v;
    return;
  }
  *out += '"';
  for (char c : v) {
    if (c == '"' || c == '\\') {
      *out += '\\';
      *out += c;
    } else if (c == '\n') {
      *out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      *out += ' ';
    } else {
      *out += c;
    }
  }
  *out += '"';
}
}  // namespace

std::string Printable(const std::string& bytes) {
  static const char kHex[] = "0123456789abcdef";
  std::string s;
  for (unsigned char c : bytes) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      s.push_back(static_cast<char>(c));
    } else {
      s += "\\x";
      s.push_back(kHex[c >> 4]);
      s.push_back(kHex[c & 15]);
    }
  }
  return s;
}

void SetRole(const std::string& role, const std::string& node_id) {
  g_role = role;
  g_node = node_id;
}
void SetLevel(Level level) { g_level = level; }
Level ParseLevel(const std::string& name) {
  if (name == "debug") return Level::kDebug;
  if (name == "warn") return Level::kWarn;
  if (name == "error") return Level::kError;
  return Level::kInfo;
}

void Write(Level level, const std::string& msg, std::initializer_list<Field> fields) {
  if (level < g_level) return;
  timeval tv;
  gettimeofday(&tv, nullptr);
  tm t;
  gmtime_r(&tv.tv_sec, &t);
  char ts[64];
  std::snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", t.tm_year + 1900, t.tm_mon + 1,
                t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, static_cast<long>(tv.tv_usec / 1000));
  std::string line = "ts=";
  line += ts;
  line += " level=";
  line += LevelName(level);
  line += " role=";
  line += g_role;
  if (!g_node.empty()) {
    line += " node=";
    AppendValue(&line, g_node);
  }
  line += " msg=";
  AppendValue(&line, msg);
  for (const Field& f : fields) {
    line += ' ';
    line += f.key;
    line += '=';
    if (const auto* s = std::get_if<std::string>(&f.value)) {
      AppendValue(&line, *s);
    } else if (const auto* d = std::get_if<double>(&f.value)) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.6g", *d);
      line += buf;
    } else {
      line += std::to_string(std::get<long long>(f.value));
    }
  }
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace lowband::log
