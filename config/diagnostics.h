// Config diagnostics (internal to config/): the error lines a load collects
// from every file it reads, each "FILE:LINE: KEY: problem (allowed: ...)",
// returned at once as one InvalidArgument Status.
//
// Not part of the config API: only config/*.cc include this header.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "base/status.h"

namespace lowband {
namespace config_internal {

// Where an error is reported: file, 1-based line (0 = unknown) and the key
// path as the user sees it in that file.
struct Where {
  std::string file;
  int line = 0;
  std::string key;
};

// Collects error lines from several files and returns them sorted by file
// (in order of first appearance) and line, so the report reads top-down.
// An error line is "FILE[:LINE]: [KEY: ]problem[ (allowed: ALLOWED)]"; the
// line is left out when it is 0 and the key when it is empty. Identical
// lines are reported once.
class Diagnostics {
 public:
  // A key path that a --set wrote (or created on the way) in `file`: errors
  // at or under it are about the command line, not about a line of the file.
  struct Override {
    std::string owned;  // canonical path of the shallowest node the set wrote
    std::string key;    // KEY as the user wrote it
  };
  // From now on, an error in `file` at or under an override's `owned` path
  // is reported as "--set KEY: problem" (or "--set KEY: PATH: problem" below
  // it), with no line; the last matching override wins.
  void SetOverrides(std::string file, std::vector<Override> overrides);

  void Add(const Where& at, const std::string& problem, const std::string& allowed = "");

  bool empty() const { return entries_.empty(); }

  // Ok when nothing was added; else InvalidArgument with one line per error.
  Status ToStatus() const;

  // Fixes the report order of a file before any error in it is added.
  void RegisterFile(const std::string& file) { Rank(file); }

 private:
  struct Entry {
    size_t rank;
    int line;
    size_t seq;
    std::string text;
  };

  size_t Rank(const std::string& file);
  Where Redirect(const Where& where) const;

  std::vector<std::string> files_;
  std::vector<Entry> entries_;
  std::string override_file_;
  std::vector<Override> overrides_;
};

}  // namespace config_internal
}  // namespace lowband
