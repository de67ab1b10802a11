// The settings that shape a campaign's result, as canonical text.
//
// CanonicalSettings(config) writes every field of a campaign that can change
// what it computes (the parameters after each round, the figures recorded
// for a round, an FPLD student, an FC-RAG calibration), one `key=value` line
// per field in a fixed order. Equal settings give byte-identical text on any
// host and locale; the coordinator's state fingerprint is its FNV-1a 64
// (CampaignFingerprint, coordinator/state_store.h), so a restart whose text
// differs refuses to resume the stored campaign.
//
// In (every field of the section unless noted):
//   campaign  name, seed (not rounds)
//   model
//   training  inner_steps, batch_size, eval_batches, overlap,
//             inner_optimizer, adaptive_steps
//   outer_optimizer, codec
//   quorum    aggregation, weighting, max_norm_ratio (what a round makes
//             of its uploads)
//   pipeline  stages, replicas, ratio, wire_dtype, split, micro_batches,
//             schedule
//   parablock, personalization, fpld (incl. probes), fcrag (not serve)
//   sites     per local site: site.name, site.ranks, site.model, and data
//             (dir as loaded, files, validation_fraction)
// Out, deliberately (a resumed campaign may change them):
//   campaign.rounds (a campaign may be extended; no round's result depends
//   on it); quorum expected_workers, min_workers, round_deadline_s,
//   start_timeout_s (who takes part and how long to wait); pipeline
//   link_mbit (an emulated link) and peer_timeout_ms; fcrag.serve; all of
//   network, output and checkpoint; a site's endpoints, keys, device,
//   threads, metrics, slowdown, link_mbit, rendezvous, local_ranks and
//   rank_timeout_s; `source` everywhere.
//
// Format. The first line is "lowband.settings=1" (the format's version).
// Keys are the campaign file's dotted key paths (`training.inner_optimizer.
// lr`, `sites[0].data.files`; `fpld.enabled` and `fcrag.enabled` say whether
// the section is present, `training.inner_optimizer.betas` holds both
// betas). Values: integers in decimal; doubles as "%.17g" in the C locale
// (exact: they read back to the same double); booleans true/false; enums by
// their file names (codec.name=sparseloco); strings in double quotes with
// '\\', '"' and bytes below 0x20 or 0x7f written as \\, \" and \xNN; lists
// as [a,b] with items as above. `sites.count` and
// `personalization.clusters.count` precede their indexed entries. Every
// field is written whether or not its feature is on, so the set of keys is
// the same for every campaign with the same number of sites and clusters.
//
// Pure function, any thread.
#pragma once

#include <string>

#include "config/config.h"

namespace lowband {

std::string CanonicalSettings(const CampaignConfig& config);

}  // namespace lowband
