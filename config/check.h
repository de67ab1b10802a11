// The check pass of the config loaders (internal to config/): range and
// cross-field rules on filled config structs.
//
// The same rules back ValidateCampaign() for configs built in code. Where an
// error is reported comes from the parse pass's ParseState: at the line its
// key was written, else at its nearest written parent, else (no state, or a
// key never written) as "FALLBACK_FILE: KEY: problem". Keys the parse pass
// marked bad are not checked again. Errors go to the Diagnostics; yaml-free.
#pragma once

#include <string>

#include "config/config.h"
#include "config/diagnostics.h"
#include "config/internal.h"

namespace lowband {
namespace config_internal {

// Every rule of a campaign, its inline sites and its site files included.
// `state` may be null (a config built in code).
void RunCampaignChecks(const CampaignConfig& config, const std::string& fallback_file, const ParseState* state,
                       Diagnostics* diag);

// The rules of a standalone site file (a site the campaign does not list:
// plain TCP is only allowed to a loopback coordinator).
void RunSiteChecks(const SiteConfig& site, const std::string& fallback_file, const ParseState* state,
                   Diagnostics* diag);

}  // namespace config_internal
}  // namespace lowband
