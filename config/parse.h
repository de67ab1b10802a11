// The parse pass of the config loaders (internal to config/): YAML text and
// trees to the config structs.
//
// It rejects unknown and duplicate keys and values of the wrong type, fills
// the structs (keys not written keep their defaults), and records in a
// ParseState the file and line of every key seen and the keys whose value is
// unknown, for the check pass (config/check.h) to report at. Range and
// cross-field rules are not checked here. Errors go to the Diagnostics.
//
// yaml-cpp throws: every function here may throw std::exception on a
// yaml-cpp corner, which callers catch and report as a config error. Only
// config/*.cc include this header (yaml-cpp is private to the config target).
#pragma once

#include <string>

#include <yaml-cpp/yaml.h>

#include "config/config.h"
#include "config/diagnostics.h"
#include "config/internal.h"

namespace lowband {
namespace config_internal {

// A node as an error message shows what was found: "nothing", "a map",
// "a list of N items" or the scalar in quotes.
std::string Describe(const YAML::Node& node);

// Parses a YAML text into *out; a syntax error is reported with the file and
// line (and column) and false returned.
bool LoadYaml(const std::string& text, const std::string& file, Diagnostics* diag, YAML::Node* out);

// The whole campaign document `root`, read from `source` (relative paths in
// it are resolved against `source`; `sites` items that name a site file are
// read here). cfg->sites[i] exists for every item of `sites`, even a broken
// one, so that it matches the canonical path "sites[i]".
void ParseCampaignTree(const YAML::Node& root, const std::string& source, Diagnostics* diag, ParseState* state,
                       CampaignConfig* cfg);

// A site file's document `root` ({site:, data:}) read from `source`. False
// when `root` is not a map (reported); the check pass is then skipped.
bool ParseSiteTree(const YAML::Node& root, const std::string& source, Diagnostics* diag, ParseState* state,
                   SiteConfig* site);

}  // namespace config_internal
}  // namespace lowband
