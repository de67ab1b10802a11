// RoundCollector: the uploads of the open round and the record they make.
// Owns the uploads accepted for the open round (by site), the uploads held
// for rounds not open yet (overlap), the H_i each site was asked for this
// round (adaptive steps) and the open round's record. Its rules: an upload
// is taken only for the open round, once per site, from the round's
// parameters (or, with overlap, theta_{r-2}), with a finite loss, a
// plausible token count, the campaign's codec and a finite, bounded delta;
// a late one is counted on its round's record; with overlap, uploads of the
// next two rounds are held until their round opens. The round is complete
// when every live worker uploaded (with >= min_workers) or at the deadline
// with min_workers; closing it drops norm outliers, marks stragglers,
// sums the train figures into the record and hands the uploads over as a
// CloseJob.
//
// The phase machine, the parameters and the aggregation belong to the core
// (Host); the workers to Membership. No I/O, no clock reads (time is passed
// in). Thread: the coordinator loop. Errors: a refused upload gets an Error
// reply through the Host (counted) and changes nothing.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"
#include "coordinator/aggregation.h"
#include "coordinator/campaign_mode.h"
#include "coordinator/core_types.h"
#include "coordinator/eval_records.h"
#include "coordinator/membership.h"
#include "protocol/messages.h"

namespace lowband {

class RoundCollector {
 public:
  // What the collector needs of the rest of the core.
  class Host {
   public:
    virtual ~Host() = default;
    virtual CampaignView View() const = 0;
    // Error reply, counted under `reason` (default: the code's name).
    virtual void Reply(const std::string& peer, ErrorCode code, const std::string& what, uint32_t round,
                       CoreOutput* out, const char* reason = nullptr) = 0;
    // The digest of the committed parameters as `w` holds them (its slice).
    virtual uint64_t DigestFor(const WorkerInfo& w) const = 0;
    // The digest of the parameters after `round` (0 if unknown).
    virtual uint64_t DigestOfRound(uint32_t round) const = 0;
  };

  // `config`, `mode`, `evals`, `members` and `host` outlive the collector.
  RoundCollector(const CampaignConfig& config, const CampaignMode* mode, EvalRecords* evals, Membership* members,
                 Host* host, TimePoint now);

  // Opens round `round` at `now`: no uploads, a fresh record, H_i for
  // every live worker. Returns the held uploads of `round` (site, message),
  // in site order; held uploads of earlier rounds are dropped.
  std::vector<std::pair<std::string, Message>> Open(uint32_t round, TimePoint now);
  // A fresh record of `round`, not collecting (restore, replay).
  void ResetRecord(uint32_t round);

  // A DeltaUpload / LogitUpload from joined worker `w`. True when it was
  // accepted for the open round (which may be complete now); false when it
  // was held for a later round or refused (Error reply).
  bool HandleUpload(WorkerInfo& w, const Message& msg, const DeltaUpload& m, CoreOutput* out);
  bool HandleLogitUpload(WorkerInfo& w, const Message& msg, const LogitUpload& m, CoreOutput* out);

  // Every live worker uploaded (with >= min_workers), or the deadline
  // passed with min_workers.
  bool Complete(bool deadline_passed) const;
  // Closes the open round (>= 1 upload): drops norm outliers (when the mode
  // checks norms), marks stragglers at the deadline (`why` "deadline"),
  // fills the record's train figures and moves the uploads into the job
  // (round set; parameters and optimizer are the caller's to add).
  CloseJob Close(TimePoint now, const char* why, CoreOutput* out);
  // The aggregation's figures into the record, now of committed round
  // `round` with parameters `digest`. Returns the record.
  const RoundRecord& Commit(const CloseResult& r, uint32_t round, uint64_t digest);

  // H_i of the open round for `w`, assigned on first ask (adaptive steps:
  // against the live workers' step times).
  int StepsFor(const WorkerInfo& w);
  // H_i asked of `site` this round, 0 if none.
  int StepsOf(const std::string& site) const;

  // The site's upload for the open round, if any, is void.
  void Drop(const std::string& site) { uploads_.erase(site); }
  bool Has(const std::string& site) const { return uploads_.count(site) > 0; }
  size_t uploads() const { return uploads_.size(); }
  // The open (or last closed, until the next opens) round's record.
  const RoundRecord& record() const { return pending_; }
  TimePoint round_start() const { return round_start_; }

 private:
  struct Upload {
    int stage = 0;  // pipeline: the stage whose parameters the delta covers
    int part = 0;   // the slice it covers: the stage (pipeline), the block (ParaBlock), else 0
    Update delta;
    Frame sparseloco;  // instead of delta: see RoundUpload
    double train_loss;
    uint64_t tokens;
    double norm;  // L2 norm of the delta
    double step_time_ms = 0;
    double wait_ms = 0;
    double cycle_ms = 0;
    std::vector<float> logits, exact;  // FPLD: dequantized probe logits (and the fp32 reference)
    uint64_t logit_bytes = 0;          // FPLD: the quantized payload
  };
  // An upload for `round` may be taken now (else replies; late ones counted).
  bool UploadIsDue(WorkerInfo& w, uint32_t round, double step_time_ms, CoreOutput* out);
  void MarkStragglers(TimePoint now);
  // Drops uploads whose norm is far above the round's median (Error reply).
  void RejectNormOutliers(CoreOutput* out);

  const CampaignConfig& config_;
  const CampaignMode* mode_;
  EvalRecords* evals_;
  Membership* members_;
  Host* host_;
  std::map<std::string, Upload> uploads_;  // the open round's, by site
  // Overlap: uploads for the rounds after the open one, held until it opens.
  std::map<std::pair<uint32_t, std::string>, Message> early_uploads_;  // by (round, site)
  // H_i of the open round by site (adaptive steps; docs/configuration.md).
  std::map<std::string, int> round_steps_;
  RoundRecord pending_;     // the open round's record
  TimePoint round_start_;   // when the open round began
};

}  // namespace lowband
