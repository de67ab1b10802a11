// libFuzzer target: the YAML config loaders ParseCampaignYaml and
// ParseSiteYaml (config/config.h) on hostile text. They must return
// InvalidArgument, never crash, throw or hang. The input is the YAML text;
// both parsers see every input.
//
// The campaign is "read" from campaign.yaml in a per-process directory that
// also holds a valid site file (site.yaml, and sites/site-a.yaml as
// configs/example-campaign.yaml names it) and a broken one (bad.yaml), so
// `sites: [{file: site.yaml}]` in an input exercises the site-file path.
// Absolute paths in an input are opened as they are: scripts/fuzz runs the
// target with stdin on /dev/null so that `file: /dev/stdin` cannot block.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "config/config.h"

namespace lowband::fuzz {
namespace {

[[noreturn]] void Fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_config: %s: %s\n", what, detail.c_str());
  std::abort();
}

// LOWBAND_FUZZ_VERBOSE=1 prints each input's verdict (to check what seeds reach).
bool Verbose() {
  static const bool verbose = std::getenv("LOWBAND_FUZZ_VERBOSE") != nullptr;
  return verbose;
}

constexpr char kSiteFile[] =
    "site:\n"
    "  name: site-a\n"
    "  coordinator: \"tcp://127.0.0.1:5555\"\n"
    "  device: cpu\n"
    "  threads: 1\n"
    "data:\n"
    "  dir: .\n"
    "  files: [a.txt]\n"
    "  validation_fraction: 0.1\n";
constexpr char kBadSiteFile[] = "site: {name: [unclosed\n";

struct SiteDir {
  std::string dir;
  std::string campaign_name;  // source_name passed to the parsers

  SiteDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/lowband-fuzz-config-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) Fail("mkdtemp", templ + ": " + std::strerror(errno));
    dir = templ;
    WriteFile(dir + "/site.yaml", kSiteFile);
    WriteFile(dir + "/bad.yaml", kBadSiteFile);
    if (::mkdir((dir + "/sites").c_str(), 0755) != 0) Fail("mkdir", dir + "/sites: " + std::strerror(errno));
    WriteFile(dir + "/sites/site-a.yaml", kSiteFile);
    campaign_name = dir + "/campaign.yaml";
  }
  ~SiteDir() {
    ::unlink((dir + "/site.yaml").c_str());
    ::unlink((dir + "/bad.yaml").c_str());
    ::unlink((dir + "/sites/site-a.yaml").c_str());
    ::rmdir((dir + "/sites").c_str());
    ::rmdir(dir.c_str());
  }
  static void WriteFile(const std::string& path, const char* text) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr || std::fputs(text, f) < 0 || std::fclose(f) != 0) Fail("write", path);
  }
};

const SiteDir& Dir() {
  static SiteDir dir;
  return dir;
}

template <typename T>
void ExpectConfigError(const char* parser, const StatusOr<T>& result) {
  if (!result.ok() && result.status().code() != StatusCode::kInvalidArgument) {
    Fail(parser, "an error other than InvalidArgument: " + result.status().ToString());
  }
  if (!result.ok() && result.status().message().empty()) Fail(parser, "an error without a message");
}

}  // namespace
}  // namespace lowband::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  lowband::fuzz::Dir();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowband;
  using namespace lowband::fuzz;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::string& name = Dir().campaign_name;
  StatusOr<CampaignConfig> campaign = ParseCampaignYaml(text, name);
  ExpectConfigError("ParseCampaignYaml", campaign);
  if (campaign.ok()) {
    Status st = ValidateCampaign(*campaign);
    if (!st.ok()) Fail("ValidateCampaign rejected a parsed campaign", st.ToString());
  }
  StatusOr<SiteConfig> site = ParseSiteYaml(text, name);
  ExpectConfigError("ParseSiteYaml", site);
  if (Verbose()) {
    std::fprintf(stderr, "fuzz_config: campaign: %s\nfuzz_config: site: %s\n",
                 campaign.ok() ? "ok" : campaign.status().ToString().c_str(),
                 site.ok() ? "ok" : site.status().ToString().c_str());
  }
  return 0;
}
