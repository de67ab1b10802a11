// Command-line overrides of a campaign document (`lowband run --set
// KEY=VALUE`, see config/config.h): parsing the sets, writing them into the
// YAML tree, and loading the merged campaign so that an error a set caused
// is reported against the set, not against a line of the file.
//
// yaml-cpp throws; the public functions catch and report as config errors.
#include "config/config.h"

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "config/check.h"
#include "config/diagnostics.h"
#include "config/internal.h"
#include "config/parse.h"

namespace lowband {
namespace config_internal {
namespace {

// One step of a --set KEY: a map key, or an index into a list.
struct SetStep {
  bool is_index = false;
  std::string key;
  size_t index = 0;
};

struct SetSpec {
  std::string key;  // KEY as written
  std::vector<SetStep> steps;
  YAML::Node value;
};

std::string StepsPath(const std::vector<SetStep>& steps, size_t n) {
  std::string path;
  for (size_t i = 0; i < n; ++i) {
    path = steps[i].is_index ? path + "[" + std::to_string(steps[i].index) + "]" : Join(path, steps[i].key);
  }
  return path;
}

bool KeyChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

const char* const kSetKeyForms = "dotted map keys such as codec.name or sites[0].site.threads";

// Splits "a.b[2].c" into steps; false (reported) on bad syntax.
bool ParseSetKey(const std::string& key, const std::string& where, Diagnostics* diag, std::vector<SetStep>* steps) {
  auto fail = [&](const std::string& problem) {
    diag->Add(Where{where, 0, ""}, problem, kSetKeyForms);
    return false;
  };
  if (key.empty()) return fail("empty KEY in KEY=VALUE");
  size_t i = 0;
  while (true) {
    const size_t start = i;
    while (i < key.size() && KeyChar(key[i])) ++i;
    if (i == start) {
      if (i == key.size() || key[i] == '.') return fail("empty key segment in '" + key + "'");
      return fail("unexpected '" + std::string(1, key[i]) + "' in '" + key + "'");
    }
    steps->push_back(SetStep{false, key.substr(start, i - start), 0});
    while (i < key.size() && key[i] == '[') {
      const size_t close = key.find(']', i);
      const std::string digits = close == std::string::npos ? "" : key.substr(i + 1, close - i - 1);
      if (!AllDigits(digits) || digits.size() > 9) return fail("bad list index in '" + key + "'");
      steps->push_back(SetStep{true, "", static_cast<size_t>(std::atol(digits.c_str()))});
      i = close + 1;
    }
    if (i == key.size()) return true;
    if (key[i] != '.') return fail("unexpected '" + std::string(1, key[i]) + "' in '" + key + "'");
    ++i;
    if (i == key.size()) return fail("empty key segment in '" + key + "'");
  }
}

// Reads every KEY=VALUE; reports every malformed one.
bool ParseSets(const std::vector<std::string>& sets, Diagnostics* diag, std::vector<SetSpec>* out) {
  bool ok = true;
  for (const std::string& arg : sets) {
    const size_t eq = arg.find('=');
    // Errors about sets are listed in command-line order.
    diag->RegisterFile("--set " + (eq == std::string::npos || eq == 0 ? arg : arg.substr(0, eq)));
    if (eq == std::string::npos) {
      diag->Add(Where{"--set " + arg, 0, ""}, "expected KEY=VALUE, e.g. codec.name=sparseloco");
      ok = false;
      continue;
    }
    SetSpec spec;
    spec.key = arg.substr(0, eq);
    const std::string where = "--set " + (spec.key.empty() ? arg : spec.key);
    if (!ParseSetKey(spec.key, where, diag, &spec.steps)) {
      ok = false;
      continue;
    }
    // An empty VALUE is YAML's null, as `key:` with nothing after it.
    try {
      spec.value = YAML::Load(arg.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      diag->Add(Where{where, 0, ""}, "VALUE is not valid YAML: " + e.msg,
                "a scalar or a flow node such as {name: int8} or [0.9, 0.95]");
      ok = false;
      continue;
    }
    out->push_back(std::move(spec));
  }
  return ok;
}

// Writes one set into `root` (a map; a null document becomes one). Reports
// and returns false when the path cannot be followed. *owned is the
// canonical path of the shallowest node the set created or replaced.
bool ApplySet(YAML::Node* root, const SetSpec& set, Diagnostics* diag, std::string* owned) {
  auto fail = [&](const std::string& problem) {
    diag->Add(Where{"--set " + set.key, 0, ""}, problem);
    return false;
  };
  if (root->IsNull()) root->reset(YAML::Node(YAML::NodeType::Map));
  if (!root->IsMap()) return fail("the campaign document is " + Describe(*root) + ", not a map");
  owned->clear();
  YAML::Node container;
  container.reset(*root);
  for (size_t i = 0; i < set.steps.size(); ++i) {
    const SetStep& step = set.steps[i];
    const std::string path = StepsPath(set.steps, i);
    const std::string here = StepsPath(set.steps, i + 1);
    const bool last = i + 1 == set.steps.size();
    if (step.is_index) {
      // Only an existing item can be indexed: the list's other items would
      // otherwise have to be invented.
      if (step.index >= container.size()) {
        return fail(here + ": no such item (" + path + " has " + std::to_string(container.size()) + ")");
      }
      if (last) {
        container[step.index] = set.value;
        if (owned->empty()) *owned = here;
        return true;
      }
    } else if (last) {
      container[step.key] = set.value;
      if (owned->empty()) *owned = here;
      return true;
    }
    // Descend. Const lookups, so that a missing key is not inserted (and a
    // Node is never assigned to another: yaml-cpp would alias them).
    auto lookup = [&]() {
      const YAML::Node& view = container;
      return step.is_index ? view[step.index] : view[step.key];
    };
    const YAML::Node child = lookup();
    if (set.steps[i + 1].is_index) {
      if (!child.IsDefined() || !child.IsSequence()) {
        return fail(here + " is " + (child.IsDefined() ? Describe(child) : "missing") + ", not a list");
      }
      container.reset(child);
    } else if (!child.IsDefined() || child.IsNull()) {
      if (step.is_index) {
        container[step.index] = YAML::Node(YAML::NodeType::Map);
      } else {
        container[step.key] = YAML::Node(YAML::NodeType::Map);
      }
      if (owned->empty()) *owned = here;
      container.reset(lookup());
    } else if (!child.IsMap()) {
      return fail(here + " is " + Describe(child) + ", not a map");
    } else {
      container.reset(child);
    }
  }
  return true;  // unreachable: a key has at least one step
}

// Applies every set in order; reports every one that fails.
bool ApplySets(YAML::Node* root, const std::vector<SetSpec>& sets, Diagnostics* diag,
               std::vector<Diagnostics::Override>* applied) {
  bool ok = true;
  for (const SetSpec& set : sets) {
    std::string owned;
    if (ApplySet(root, set, diag, &owned)) {
      applied->push_back({owned, set.key});
    } else {
      ok = false;
    }
  }
  return ok;
}

// Makes the relative paths that the loader resolves against the campaign
// file (sites[i].file, inline sites[i].data.dir) absolute, so the document
// means the same when saved in another directory.
void AnchorSitePaths(YAML::Node root, const std::string& source) {
  namespace fs = std::filesystem;
  // Const lookups throughout: a non-const operator[] on a missing key would
  // leave an undefined entry behind.
  auto find = [](const YAML::Node& map, const char* key) { return map[key]; };
  // Rewrites map[key] when it is a relative path.
  auto anchor = [&](YAML::Node map, const char* key) {
    const YAML::Node v = find(map, key);
    if (!v.IsDefined() || !v.IsScalar() || v.Scalar().empty() || fs::path(v.Scalar()).is_absolute()) return;
    map[key] = fs::absolute(ResolveRelative(source, v.Scalar())).lexically_normal().string();
  };
  if (const YAML::Node net = find(root, "network"); net.IsDefined() && net.IsMap()) {
    for (const char* key : {"server_key", "site_keys", "operator_keys", "dashboard_token"}) anchor(net, key);
  }
  // The FPLD public probe text, like a site's data directory.
  if (const YAML::Node fpld = find(root, "fpld"); fpld.IsDefined() && fpld.IsMap()) {
    if (const YAML::Node probes = find(fpld, "probes"); probes.IsDefined() && probes.IsMap()) anchor(probes, "dir");
  }
  const YAML::Node sites = find(root, "sites");
  if (!sites.IsDefined() || !sites.IsSequence()) return;
  for (size_t i = 0; i < sites.size(); ++i) {
    const YAML::Node item = sites[i];
    if (!item.IsMap()) continue;
    if (find(item, "file").IsDefined()) {
      anchor(item, "file");
    } else {
      if (const YAML::Node data = find(item, "data"); data.IsDefined() && data.IsMap()) anchor(data, "dir");
      if (const YAML::Node site = find(item, "site"); site.IsDefined() && site.IsMap()) {
        anchor(site, "key");
        anchor(site, "server_key");
      }
    }
  }
}

std::string EmitYaml(const YAML::Node& root) {
  YAML::Emitter out;
  out << root;
  std::string text = out.c_str();
  if (text.empty() || text.back() != '\n') text += "\n";
  return text;
}

}  // namespace
}  // namespace config_internal

using config_internal::AnchorSitePaths;
using config_internal::ApplySets;
using config_internal::Diagnostics;
using config_internal::EmitYaml;
using config_internal::LoadYaml;
using config_internal::ParseCampaignTree;
using config_internal::ParseSets;
using config_internal::ParseState;
using config_internal::ReadConfigFile;
using config_internal::RunCampaignChecks;
using config_internal::SetSpec;
using config_internal::Where;

StatusOr<std::string> ApplyOverrides(const std::string& yaml_text, const std::vector<std::string>& sets) {
  const std::string source = "<campaign>";
  Diagnostics diag;
  try {
    std::vector<SetSpec> specs;
    const bool sets_ok = ParseSets(sets, &diag, &specs);
    YAML::Node root;
    if (!LoadYaml(yaml_text, source, &diag, &root)) return diag.ToStatus();
    std::vector<Diagnostics::Override> applied;
    // The well-formed sets are applied even after a malformed one, so that
    // their path errors are reported too.
    if (!ApplySets(&root, specs, &diag, &applied) || !sets_ok) return diag.ToStatus();
    return EmitYaml(root);
  } catch (const std::exception& e) {
    diag.Add(Where{source, 0, ""}, std::string("cannot interpret YAML: ") + e.what());
    return diag.ToStatus();
  }
}

StatusOr<MergedCampaign> LoadCampaignWithOverrides(const std::string& path, const std::vector<std::string>& sets) {
  StatusOr<std::string> text = ReadConfigFile(path);
  if (!text.ok()) return text.status();
  Diagnostics diag;
  diag.RegisterFile(path);
  ParseState state;
  MergedCampaign merged;
  merged.config.source = path;
  YAML::Node root;
  try {
    std::vector<SetSpec> specs;
    const bool sets_ok = ParseSets(sets, &diag, &specs);
    if (!LoadYaml(*text, path, &diag, &root)) return diag.ToStatus();
    std::vector<Diagnostics::Override> applied;
    // Every malformed set is reported, but the campaign is not checked
    // after one: the check would blame the file for what the set meant to fix.
    if (!ApplySets(&root, specs, &diag, &applied) || !sets_ok) return diag.ToStatus();
    diag.SetOverrides(path, std::move(applied));
    ParseCampaignTree(root, path, &diag, &state, &merged.config);
  } catch (const std::exception& e) {
    diag.Add(Where{path, 0, ""}, std::string("cannot interpret YAML: ") + e.what());
    return diag.ToStatus();
  }
  RunCampaignChecks(merged.config, path, &state, &diag);
  if (!diag.empty()) return diag.ToStatus();
  try {
    AnchorSitePaths(root, path);
    merged.yaml = EmitYaml(root);
  } catch (const std::exception& e) {
    return InvalidArgument(path + ": cannot write the merged campaign: " + e.what());
  }
  return merged;
}

}  // namespace lowband
