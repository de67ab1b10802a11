#include "base/json.h"

#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

namespace lowband {

std::string JsonString(const std::string& s) {
  // nlohmann-json escapes what JSON requires and replaces bytes that are not
  // UTF-8 with U+FFFD, so a record is valid JSON whatever a name holds.
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string JsonNumber(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.10g", v);
  return buf;
}

JsonObject& JsonObject::Add(const std::string& key, double v) { return AddRaw(key, JsonNumber(v)); }

JsonObject& JsonObject::AddRaw(const std::string& key, const std::string& json) {
  if (body_.size() > 1) body_ += ',';
  body_ += JsonString(key);
  body_ += ':';
  body_ += json;
  return *this;
}

}  // namespace lowband
