// Config diagnostics: collecting, redirecting and ordering error lines.
#include "config/diagnostics.h"

#include <algorithm>
#include <set>
#include <utility>

namespace lowband {
namespace config_internal {

void Diagnostics::SetOverrides(std::string file, std::vector<Override> overrides) {
  override_file_ = std::move(file);
  overrides_ = std::move(overrides);
}

void Diagnostics::Add(const Where& at, const std::string& problem, const std::string& allowed) {
  const Where where = Redirect(at);
  std::string text = where.file;
  if (where.line > 0) text += ":" + std::to_string(where.line);
  text += ": ";
  if (!where.key.empty()) text += where.key + ": ";
  text += problem;
  if (!allowed.empty()) text += " (allowed: " + allowed + ")";
  entries_.push_back({Rank(where.file), where.line, entries_.size(), std::move(text)});
}

Status Diagnostics::ToStatus() const {
  if (entries_.empty()) return Status::Ok();
  std::vector<Entry> sorted = entries_;
  std::sort(sorted.begin(), sorted.end(), [](const Entry& a, const Entry& b) {
    if (a.rank != b.rank) return a.rank < b.rank;
    if (a.line != b.line) return a.line < b.line;
    return a.seq < b.seq;
  });
  std::string message;
  std::set<std::string> seen;  // one mistake may trip a check twice
  for (const Entry& e : sorted) {
    if (!seen.insert(e.text).second) continue;
    if (!message.empty()) message += "\n";
    message += e.text;
  }
  return InvalidArgument(std::move(message));
}

size_t Diagnostics::Rank(const std::string& file) {
  for (size_t i = 0; i < files_.size(); ++i) {
    if (files_[i] == file) return i;
  }
  files_.push_back(file);
  return files_.size() - 1;
}

// The last set wins, as when they were applied.
Where Diagnostics::Redirect(const Where& where) const {
  if (overrides_.empty() || where.file != override_file_) return where;
  for (auto it = overrides_.rbegin(); it != overrides_.rend(); ++it) {
    const std::string& o = it->owned;
    const bool under = where.key == o || (where.key.size() > o.size() && where.key.compare(0, o.size(), o) == 0 &&
                                          (where.key[o.size()] == '.' || where.key[o.size()] == '['));
    if (!under) continue;
    return Where{"--set " + it->key, 0, where.key == it->key ? "" : where.key};
  }
  return where;
}

}  // namespace config_internal
}  // namespace lowband
