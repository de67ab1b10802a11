// Minimal JSON writer for metrics records and control responses.
// Not a parser. Value type, any thread.
#pragma once

#include <cstdint>
#include <string>

namespace lowband {

std::string JsonString(const std::string& s);  // quoted and escaped
std::string JsonNumber(double v);              // NaN/Inf -> null

// Builds one JSON object: JsonObject().Add("a", 1).Add("b", "x").str()
class JsonObject {
 public:
  JsonObject& Add(const std::string& key, double v);
  JsonObject& Add(const std::string& key, int v) { return AddRaw(key, std::to_string(v)); }
  JsonObject& Add(const std::string& key, uint32_t v) { return AddRaw(key, std::to_string(v)); }
  JsonObject& Add(const std::string& key, uint64_t v) { return AddRaw(key, std::to_string(v)); }
  JsonObject& Add(const std::string& key, int64_t v) { return AddRaw(key, std::to_string(v)); }
  JsonObject& Add(const std::string& key, bool v) { return AddRaw(key, v ? "true" : "false"); }
  JsonObject& Add(const std::string& key, const std::string& v) { return AddRaw(key, JsonString(v)); }
  JsonObject& Add(const std::string& key, const char* v) { return AddRaw(key, JsonString(v)); }
  // `json` must already be valid JSON (an object or array).
  JsonObject& AddRaw(const std::string& key, const std::string& json);
  std::string str() const { return body_ + "}"; }

 private:
  std::string body_ = "{";
};

}  // namespace lowband
