// One-line key=value logs to stderr (journald collects them).
// Thread-safe: each line is written with a single fwrite.
//
//   LOG_INFO("round committed", {{"round", 3}, {"val_loss", 2.71}});
#pragma once

#include <initializer_list>
#include <string>
#include <variant>

namespace lowband::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

struct Field {
  Field(const char* k, const std::string& v) : key(k), value(v) {}
  Field(const char* k, const char* v) : key(k), value(std::string(v)) {}
  Field(const char* k, double v) : key(k), value(v) {}
  Field(const char* k, int v) : key(k), value(static_cast<long long>(v)) {}
  Field(const char* k, unsigned v) : key(k), value(static_cast<long long>(v)) {}
  Field(const char* k, long v) : key(k), value(static_cast<long long>(v)) {}
  Field(const char* k, unsigned long v) : key(k), value(static_cast<long long>(v)) {}
  Field(const char* k, long long v) : key(k), value(v) {}
  Field(const char* k, unsigned long long v) : key(k), value(static_cast<long long>(v)) {}
  Field(const char* k, bool v) : key(k), value(std::string(v ? "true" : "false")) {}
  const char* key;
  std::variant<std::string, double, long long> value;
};

// Process-wide settings, set once by main before threads start.
void SetRole(const std::string& role, const std::string& node_id);
void SetLevel(Level level);
Level ParseLevel(const std::string& name);  // "debug","info","warn","error"

void Write(Level level, const std::string& msg, std::initializer_list<Field> fields);

// Untrusted bytes (routing ids, identifiers) made safe for a log line or an
// error message: printable ASCII kept, everything else (and '\\') as \xNN.
std::string Printable(const std::string& bytes);

}  // namespace lowband::log

#define LOG_DEBUG(msg, ...) ::lowband::log::Write(::lowband::log::Level::kDebug, msg, {__VA_ARGS__})
#define LOG_INFO(msg, ...) ::lowband::log::Write(::lowband::log::Level::kInfo, msg, {__VA_ARGS__})
#define LOG_WARN(msg, ...) ::lowband::log::Write(::lowband::log::Level::kWarn, msg, {__VA_ARGS__})
#define LOG_ERROR(msg, ...) ::lowband::log::Write(::lowband::log::Level::kError, msg, {__VA_ARGS__})
