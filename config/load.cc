// The public loaders: read a file, run the parse pass and then the check
// pass, and return the config or every problem at once. Also the file
// helpers both passes share (config/internal.h).
//
// yaml-cpp throws; each loader catches a yaml-cpp corner we did not foresee
// and reports it as a config error rather than crashing.
#include "config/config.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

#include <yaml-cpp/yaml.h>

#include "config/check.h"
#include "config/diagnostics.h"
#include "config/internal.h"
#include "config/parse.h"

namespace lowband {
namespace config_internal {
namespace {

// A config file is small; anything bigger is a mistake (wrong path), and
// bounding it keeps a stray multi-GB file from being slurped into memory.
constexpr size_t kMaxConfigFileBytes = 16u << 20;

}  // namespace

std::string ResolveRelative(const std::string& base_file, const std::string& p) {
  namespace fs = std::filesystem;
  fs::path path(p);
  if (p.empty() || path.is_absolute()) return p;
  fs::path dir = fs::path(base_file).parent_path();
  if (dir.empty()) return path.lexically_normal().string();
  return (dir / path).lexically_normal().string();
}

StatusOr<std::string> ReadConfigFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NotFound(path + ": cannot open: " + std::strerror(errno));
  std::string text;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return NotFound(path + ": cannot read: " + std::strerror(err));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxConfigFileBytes) {
      ::close(fd);
      return InvalidArgument(path + ": larger than " + std::to_string(kMaxConfigFileBytes) +
                             " bytes; not a config file");
    }
  }
  ::close(fd);
  return text;
}

}  // namespace config_internal

using config_internal::Diagnostics;
using config_internal::LoadYaml;
using config_internal::ParseCampaignTree;
using config_internal::ParseSiteTree;
using config_internal::ParseState;
using config_internal::ReadConfigFile;
using config_internal::RunCampaignChecks;
using config_internal::RunSiteChecks;
using config_internal::Where;

StatusOr<CampaignConfig> ParseCampaignYaml(const std::string& yaml_text, const std::string& source_name) {
  Diagnostics diag;
  diag.RegisterFile(source_name);
  ParseState state;
  CampaignConfig cfg;
  cfg.source = source_name;
  try {
    YAML::Node root;
    if (!LoadYaml(yaml_text, source_name, &diag, &root)) return diag.ToStatus();
    ParseCampaignTree(root, source_name, &diag, &state, &cfg);
  } catch (const std::exception& e) {
    // A yaml-cpp corner we did not foresee: still a config error, not a crash.
    diag.Add(Where{source_name, 0, ""}, std::string("cannot interpret YAML: ") + e.what());
    return diag.ToStatus();
  }
  RunCampaignChecks(cfg, source_name, &state, &diag);
  if (!diag.empty()) return diag.ToStatus();
  return cfg;
}

StatusOr<CampaignConfig> LoadCampaignFile(const std::string& path) {
  StatusOr<std::string> text = ReadConfigFile(path);
  if (!text.ok()) return text.status();
  return ParseCampaignYaml(*text, path);
}

StatusOr<SiteConfig> ParseSiteYaml(const std::string& yaml_text, const std::string& source_name) {
  Diagnostics diag;
  diag.RegisterFile(source_name);
  ParseState state;
  SiteConfig site;
  site.source = source_name;
  try {
    YAML::Node root;
    if (!LoadYaml(yaml_text, source_name, &diag, &root)) return diag.ToStatus();
    if (!ParseSiteTree(root, source_name, &diag, &state, &site)) return diag.ToStatus();
  } catch (const std::exception& e) {
    diag.Add(Where{source_name, 0, ""}, std::string("cannot interpret YAML: ") + e.what());
    return diag.ToStatus();
  }
  RunSiteChecks(site, source_name, &state, &diag);
  if (!diag.empty()) return diag.ToStatus();
  return site;
}

StatusOr<SiteConfig> LoadSiteFile(const std::string& path) {
  StatusOr<std::string> text = ReadConfigFile(path);
  if (!text.ok()) return text.status();
  return ParseSiteYaml(*text, path);
}

bool WholeModelMean(const CampaignConfig& config) {
  return !config.fpld.enabled && config.pipeline.stages <= 1 && config.parablock.blocks <= 1 &&
         config.personalization.tensors.empty();
}

Status ValidateCampaign(const CampaignConfig& config) {
  Diagnostics diag;
  RunCampaignChecks(config, config.source.empty() ? "<campaign>" : config.source, nullptr, &diag);
  return diag.ToStatus();
}

}  // namespace lowband
