// CampaignMode: what differs between the kinds of campaign, chosen once
// when the core is built (Make), so the core asks one object instead of
// branching on the mode:
//   plain     every site holds, trains and uploads the whole model;
//   pipeline  (pipeline.stages > 1) a site holds one stage's slice: its
//             syncs, digests, uploads and aggregates are that slice's, and
//             only the last stage reports losses;
//   blocks    (ParaBlock, parablock.blocks > 1) every site holds the whole
//             model but trains, each round, the block it is assigned;
//   clusters  (personalization.tensors) a site holds its cluster's view of
//             the extended layout (coordinator/core.h, ClusterLayout);
//   fpld      sites upload probe logits, not deltas; a site with a model of
//             its own takes no part in the student's parameters.
// The config's check pass rules out combinations; should an unchecked
// config hold several, the order above from the bottom wins (fpld first),
// as in Aggregation's kind.
//
// Owns the per-mode layouts (stage and block slices, cluster views), the
// digests per stage or view of the committed parameters, and ParaBlock's
// block assignments per round. Thread: the coordinator loop (the
// Aggregation it describes is what runs elsewhere). Errors: a refused upload
// slice is returned as the text of the reply; a broken layout is a bug
// (CHECK).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "codec/params.h"
#include "config/config.h"
#include "coordinator/aggregation.h"
#include "coordinator/core_types.h"

namespace lowband {

class CampaignMode {
 public:
  // `params`: the global layout (extended with cluster copies when
  // personalised); `plan`: its chunk plan at the campaign's topk.
  static std::unique_ptr<CampaignMode> Make(const CampaignConfig& config, const ParamSet& params,
                                            const LayoutPlan& plan);
  // Personalisation: `model` extended with "cluster/<name>/<tensor>" copies
  // of the personalised tensors (CoordinatorCore::ClusterLayout).
  static StatusOr<ParamSet> ClusterLayout(const CampaignConfig& config, const ParamSet& model);

  // Subclasses only (abstract); use Make.
  CampaignMode(const CampaignConfig& config, const ParamSet& params, const LayoutPlan& plan)
      : config_(config), layout_(params.layout), plan_(plan), whole_numel_(params.layout.numel()) {}
  virtual ~CampaignMode() = default;

  virtual Aggregation::Kind kind() const = 0;
  // Fills the aggregation's kind and the slices or views it needs.
  virtual void Describe(Aggregation::Setup* setup) const;

  // Digests of the parameters as each stage / view holds them: recomputed
  // (restore, replay, start) or taken from a close.
  void ComputeDigests(const Aggregation& agg, const ParamSet& params);
  void SetDigests(std::vector<uint64_t> parts, std::vector<uint64_t> views);
  // The digest of what `w` holds when the global parameters' is `whole`.
  virtual uint64_t DigestFor(const WorkerInfo& w, uint64_t whole) const { return whole; }

  // The ModelSync payload for `w` (dense fp32 of what it holds).
  virtual StatusOr<Encoded> SyncPayload(const WorkerInfo& w, const ParamSet& params, const Aggregation& agg) const;
  // The encoding of a closed round's update that `w` gets.
  virtual const Encoded& DownFor(const WorkerInfo& w, const CloseResult& r) const { return r.down; }

  // Parameter deltas: false where sites upload something else (FPLD).
  virtual bool TakesDeltas() const { return true; }
  // Logit uploads (FPLD).
  virtual bool TakesLogits() const { return false; }
  // What a DeltaUpload of `round` from `w` naming `block` must cover: the
  // part it is aggregated under and the layout to parse it against. ""
  // when acceptable, else the refusal (a bad_payload reply).
  struct Slice {
    int part = 0;
    const ParamLayout* layout = nullptr;
    const LayoutPlan* plan = nullptr;
  };
  virtual std::string UploadSlice(const WorkerInfo& w, uint32_t round, int block, Slice* slice) const;

  // Parameters `w`'s syncs and aggregates cover (null: an unknown site).
  virtual int64_t ParamsOf(const WorkerInfo* w) const { return whole_numel_; }
  // ParaBlock: block `block`'s size (only when block_rounds()).
  virtual bool block_rounds() const { return false; }
  virtual int64_t BlockNumel(int block) const { return whole_numel_; }
  // ParaBlock: the block `site` trains in `round` (-1: the whole model),
  // assigned once per round from its `position` among the live sites.
  virtual int BlockFor(const std::string& site, uint32_t round, int position) { return -1; }
  // Forgets assignments of rounds before `round`.
  virtual void ForgetBlocksBefore(uint32_t round) {}
  // The block an upload of `part` trained, as its record shows it.
  virtual int RecordedBlock(int part) const { return -1; }
  // ParaBlock: the block of each layer, for the Welcome (empty: off).
  virtual std::vector<int> layer_blocks() const { return {}; }

  // Pipeline: the stage `w` holds (-1 in other campaigns).
  virtual int StageOf(const WorkerInfo& w) const { return -1; }
  // Whether a report from a site of `stage` carries the model's loss
  // (pipeline: only the last stage computes it).
  virtual bool CountsLoss(int stage) const { return stage == 0; }

  // Personalisation: the site's cluster (0 / "": none).
  virtual int ClusterIndex(const std::string& site) const { return 0; }
  virtual std::string ClusterName(const std::string& site) const { return ""; }
  // Adds what the mode records of a round's evaluations (per-cluster losses).
  virtual void RecordEvals(const std::map<std::string, EvalReport>& evals, RoundRecord* r) const {}

  // FPLD: whether `w` adopts the student's parameters (syncs, aggregates,
  // evaluations); a site with a model of its own does not.
  virtual bool Adopts(const WorkerInfo& w) const { return true; }
  // Every worker gets the same Aggregate of a round (the whole model's,
  // or the blocks'): the coordinator can log them for catching up.
  virtual bool OneAggregateForAll() const { return false; }
  // Evaluations a record needs (min_workers; FPLD: no more than can come).
  virtual int EvalsNeeded(int min_workers, int live_expected) const { return std::max(min_workers, 1); }
  // Whether norm outliers are looked for at a close (not for logits).
  virtual bool ChecksNorms() const { return true; }
  // FPLD: the probe set every Welcome carries.
  virtual void SetProbes(std::vector<uint8_t> probes) {}
  // The mode's part of a Welcome (the codec is already the campaign's).
  virtual void FillWelcome(Welcome* wel) const {}

 protected:
  CampaignConfig config_;
  ParamLayout layout_;
  LayoutPlan plan_;
  int64_t whole_numel_ = 0;
  std::vector<uint64_t> part_digests_;
  std::vector<uint64_t> view_digests_;
};

}  // namespace lowband
