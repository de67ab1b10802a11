// Aggregation: the compute-heavy half of closing a round, as a pure function
// of the round's accepted uploads and the global state it changes (the
// parameters and the outer optimizer). The core hands both over in a
// CloseJob and gets them back, updated, in a CloseResult: on the service's
// compute thread (coordinator/compute.h) the event loop keeps answering
// heartbeats, control and the dashboard while a large model's aggregate,
// outer step, encodings and digests are computed or an FPLD student is
// distilled; in tests and small campaigns the core runs it inline.
//
// The campaign's mode is chosen once, when the Aggregation is built:
//   kMean      every upload covers the whole model: their (weighted) mean;
//   kStages    pipeline: per-stage means of the stages' slices, joined;
//   kBlocks    ParaBlock: per-block means, a block nobody trained stays;
//   kClusters  personalisation: shared tensors over every upload, the
//              personalised ones per cluster;
//   kDistil    FPLD: the mean teacher distilled into a student, g = theta -
//              student (the distiller is called on the computing thread).
// Then the outer step, the logged gradient, the downlink encodings (whole,
// per stage, per cluster view), the update applied, and the digests. With a
// compressed downlink (kMean only: config/check.cc) the update applied, by
// the coordinator and by every site, is the one the payload decodes to
// (coordinator/downlink.h).
//
// Immutable after construction: Close is const and may run on any thread,
// one call at a time per job (jobs own their buffers; nothing is shared
// with the loop while a job runs but this object).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "codec/codec.h"
#include "codec/params.h"
#include "config/config.h"
#include "coordinator/distiller.h"
#include "coordinator/downlink.h"
#include "coordinator/outer_optimizer.h"

namespace lowband {

// A slice of the global parameters: one pipeline stage or ParaBlock block.
struct ParamPart {
  size_t first_tensor = 0, num_tensors = 0;
  int64_t offset = 0, numel = 0;
  size_t first_chunk = 0, num_chunks = 0;  // in the global chunk plan
  ParamSet slice_layout_only;              // layout with local names (values empty)
  LayoutPlan plan;
};

// An accepted upload, as aggregation needs it.
struct RoundUpload {
  int stage = 0;  // pipeline: the stage whose parameters the delta covers
  int part = 0;   // the slice it covers: the stage (pipeline), the block (ParaBlock), the cluster, else 0
  Update delta;
  // Plain mean with the sparseloco codec: the payload's bulk as it arrived
  // (checked by ParseUpdate then), summed in place by AggregateMean; delta
  // is then empty. 1.75 bytes per kept value instead of the parsed 6: 64
  // sites' uploads of a 1B-parameter model held for a round take 1.8 GB, not 6.
  Frame sparseloco;
  uint64_t tokens = 0;
  std::vector<float> logits, exact;  // FPLD: dequantized probe logits (and the fp32 reference)
  uint64_t logit_bytes = 0;          // FPLD: the quantized payload
};

// The buffers a round's logged payload (the one sent down too) is written
// into, reused from round to round: a fresh model-sized buffer is faulted
// in a page at a time (on a VM a few hundred MB/s: seconds a round at 1B
// parameters), one of an earlier round is already resident. A buffer is
// taken again only once no Frame holds it (the round log, the catch-up
// log, a transport sending it); what it held is never read, only
// overwritten, so nothing of one round reaches the next through it. Round
// state like OuterOptimizer: it moves into each CloseJob and back out of
// its CloseResult. One thread at a time (whoever holds it).
class PayloadBuffers {
 public:
  // A buffer no Frame holds, else a new one (kept). Of the free ones the
  // largest is taken and the others are freed, so the buffers kept are
  // those still in use plus the one being written.
  std::shared_ptr<Bytes> Take();
  size_t size() const { return held_.size(); }

 private:
  std::vector<std::shared_ptr<Bytes>> held_;
};

// FPLD: the student's distillation from the mean teacher.
using DistilFn = std::function<StatusOr<DistilOutcome>(
    uint32_t round, const ParamSet& start, const std::vector<float>& teacher, const std::vector<float>* exact)>;

struct CloseJob {
  uint32_t round = 0;
  std::map<std::string, RoundUpload> uploads;  // by site (name order: a fixed float sum)
  ParamSet params;                             // theta_{r-1}
  OuterOptimizer outer;
  DownlinkEncoder downlink;
  PayloadBuffers payloads;
};

struct CloseResult {
  uint32_t round = 0;
  Status status;                       // not OK: the round cannot commit (the campaign fails); params are theta_{r-1}
  ParamSet params;                     // theta_r (theta_{r-1} when status failed before the apply)
  OuterOptimizer outer;                // stepped
  DownlinkEncoder downlink;            // its error feedback updated (compressed downlink)
  PayloadBuffers payloads;             // the job's, r.logged's buffer among them when it is one
  Encoded logged;                      // the aggregated pseudo-gradient g, as the round log keeps it
  Encoded down;                        // the update as every whole-model site gets it (u, or u compressed)
  std::vector<Encoded> stage_down;     // pipeline: u's slice per stage
  std::vector<Encoded> cluster_down;   // personalisation: u's view per cluster
  uint64_t nnz = 0;                    // entries of the update sent down
  uint64_t digest = 0;                 // of theta_r
  std::vector<uint64_t> part_digests;  // pipeline: per stage
  std::vector<uint64_t> view_digests;  // personalisation: per cluster view
  // FPLD figures for the round's record (NaN where not measured).
  uint64_t logit_payload_bytes = 0, logit_fp32_bytes = 0;
  double teacher_kl = std::numeric_limits<double>::quiet_NaN();
  double student_kl = std::numeric_limits<double>::quiet_NaN();
  double distill_loss = std::numeric_limits<double>::quiet_NaN();
  double public_val_loss = std::numeric_limits<double>::quiet_NaN();
  // Wall time of Close's parts (informational: reported by
  // bench/coordinator_scale; nothing depends on it). aggregate: the mean
  // (distillation, for FPLD), and freeing the uploads; pack: the logged
  // payload; update: the outer step and the downlink's encoding; apply:
  // theta -= u, and the per-stage or per-cluster payloads; digest: the
  // digests. The packed mean (PackAggregateMean): count is its first pass,
  // apply its second (the sums, written into the payload and applied),
  // digest the checksum beside the digest.
  struct Phases {
    double count_s = 0, aggregate_s = 0, pack_s = 0, update_s = 0, apply_s = 0, digest_s = 0;
  };
  Phases phases;
};

class Aggregation {
 public:
  enum class Kind { kMean, kStages, kBlocks, kClusters, kDistil };

  // `plan`: the chunk plan of the global layout; `parts`: the pipeline
  // stages or ParaBlock blocks (empty otherwise); personalisation: the model
  // layout, its plan, each cluster's view (model tensor -> global tensor)
  // and which model tensors are personalised.
  struct Setup {
    Kind kind = Kind::kMean;
    ParamLayout layout;
    LayoutPlan plan;
    std::vector<ParamPart> parts;
    ParamLayout model_layout;
    LayoutPlan model_plan;
    std::vector<std::vector<size_t>> views;
    std::vector<bool> personal_tensor;
    AggregationRule rule = AggregationRule::kMeanAll;
    bool uniform = false;  // quorum.weighting uniform
    bool sparse_codec = false;
    int vocab = 0;
    DistilFn distil;  // kDistil
  };
  explicit Aggregation(Setup setup) : s_(std::move(setup)) {}

  Kind kind() const { return s_.kind; }
  // The aggregate, the outer step, the encodings, the apply and the digests.
  // `pool` (may be null: the calling thread) spreads the plain mean's chunks
  // and the downlink's SparseLoCo selection; the result does not depend on
  // it. With an outer step that leaves g as it is (sgd, lr 1, no momentum)
  // and the sparse_fp32 downlink, the payload down is the logged one.
  CloseResult Close(CloseJob job, ThreadPool* pool) const;

  // Digests of `params` as the sites of each kind hold them (`whole` may be
  // null when the caller has it).
  void Digests(const ParamSet& params, uint64_t* whole, std::vector<uint64_t>* parts,
               std::vector<uint64_t>* views) const;
  // Personalisation: cluster `cluster`'s view of the global values / of an update.
  std::vector<float> ViewValues(const ParamSet& params, int cluster) const;
  Update ViewOf(const Update& extended, int cluster) const;
  // A part's slice of an update of the whole layout.
  Update SliceUpdate(const Update& u, const ParamPart& part) const;

 private:
  Update MeanOfParts(const std::map<std::string, RoundUpload>& uploads) const;
  Update MeanOfClusters(const std::map<std::string, RoundUpload>& uploads) const;
  StatusOr<Update> Distil(uint32_t round, const ParamSet& params, const std::map<std::string, RoundUpload>& uploads,
                          CloseResult* result) const;
  Setup s_;
};

}  // namespace lowband
