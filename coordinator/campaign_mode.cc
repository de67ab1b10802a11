#include "coordinator/campaign_mode.h"

#include <algorithm>
#include <optional>

#include "base/log.h"
#include "codec/blocks.h"
#include "coordinator/welcome.h"

namespace lowband {
namespace {

const char* const kClusterPrefix = "cluster/";

bool Personalised(const PersonalizationConfig& per, const std::string& name) {
  for (const std::string& p : per.tensors) {
    if (name.rfind(p, 0) == 0) return true;
  }
  return false;
}

std::string WholeModelsOnly(int block) {
  if (block == -1) return "";
  return "upload covers block " + std::to_string(block) + "; this campaign trains whole models";
}

// Every site holds, trains and uploads the whole model.
class PlainMode : public CampaignMode {
 public:
  using CampaignMode::CampaignMode;
  Aggregation::Kind kind() const override { return Aggregation::Kind::kMean; }
  bool OneAggregateForAll() const override { return true; }
};

// Pipeline campaigns: the global parameters are every stage's tensors in
// stage order ("stage<S>." prefixes, ml/model_init.h); a part is one
// stage's slice. Workers of stage S see only their part: syncs, round
// starts, uploads, aggregates and digests are per part; the outer step,
// checkpoints and the round log stay on the whole.
class PipelineMode : public CampaignMode {
 public:
  PipelineMode(const CampaignConfig& config, const ParamSet& params, const LayoutPlan& plan)
      : CampaignMode(config, params, plan) {
    const int stages = config_.pipeline.stages;
    parts_.assign(static_cast<size_t>(stages), ParamPart{});
    size_t t = 0;
    int64_t offset = 0;
    for (int s = 0; s < stages; ++s) {
      ParamPart& part = parts_[static_cast<size_t>(s)];
      const std::string prefix = StagePrefix(s);
      part.first_tensor = t;
      part.offset = offset;
      part.first_chunk = t < plan_.tensors.size() ? plan_.tensors[t].first_chunk : plan_.chunks.size();
      for (; t < layout_.tensors.size() && layout_.tensors[t].name.rfind(prefix, 0) == 0; ++t) {
        TensorSpec local = layout_.tensors[t];
        local.name = local.name.substr(prefix.size());
        part.slice_layout_only.layout.tensors.push_back(local);
        part.numel += local.numel();
        part.num_chunks += plan_.tensors[t].num_chunks;
      }
      part.num_tensors = t - part.first_tensor;
      offset += part.numel;
      // The layout comes from InitialPipelineParameters for this config; a
      // stage without tensors means the caller built the wrong model.
      LOWBAND_CHECK(part.num_tensors > 0);
      part.plan = PlanLayout(part.slice_layout_only.layout, config_.codec.topk);
    }
    LOWBAND_CHECK(t == layout_.tensors.size());
  }
  Aggregation::Kind kind() const override { return Aggregation::Kind::kStages; }
  void Describe(Aggregation::Setup* setup) const override {
    CampaignMode::Describe(setup);
    setup->parts = parts_;
  }
  uint64_t DigestFor(const WorkerInfo& w, uint64_t) const override { return part_digests_[w.stage]; }
  StatusOr<Encoded> SyncPayload(const WorkerInfo& w, const ParamSet& params, const Aggregation&) const override {
    const ParamPart& part = parts_[static_cast<size_t>(w.stage)];
    std::vector<float> slice(params.values.begin() + part.offset, params.values.begin() + part.offset + part.numel);
    return PackDenseFp32(part.slice_layout_only.layout, slice);
  }
  const Encoded& DownFor(const WorkerInfo& w, const CloseResult& r) const override {
    return r.stage_down[static_cast<size_t>(w.stage)];
  }
  std::string UploadSlice(const WorkerInfo& w, uint32_t, int block, Slice* slice) const override {
    if (std::string bad = WholeModelsOnly(block); !bad.empty()) return bad;
    const ParamPart& part = parts_[static_cast<size_t>(w.stage)];
    *slice = Slice{w.stage, &part.slice_layout_only.layout, &part.plan};
    return "";
  }
  int64_t ParamsOf(const WorkerInfo* w) const override { return w ? parts_[w->stage].numel : whole_numel_; }
  int StageOf(const WorkerInfo& w) const override { return w.stage; }
  bool CountsLoss(int stage) const override { return stage == config_.pipeline.stages - 1; }

 private:
  std::vector<ParamPart> parts_;
};

// ParaBlock: one part per block (codec/blocks.h), full tensor names; each
// round a site trains the block it is assigned and uploads only that.
class BlockMode : public CampaignMode {
 public:
  BlockMode(const CampaignConfig& config, const ParamSet& params, const LayoutPlan& plan)
      : CampaignMode(config, params, plan) {
    layer_blocks_ = ::lowband::LayerBlocks(config_.model.layers, config_.parablock);
    auto ranges = BlockTensorRanges(layout_, layer_blocks_);
    // The layout comes from InitialParameters for this model config.
    LOWBAND_CHECK(ranges.ok());
    for (const TensorRange& r : *ranges) {
      ParamPart part;
      part.first_tensor = r.first;
      part.num_tensors = r.count;
      part.offset = r.offset;
      part.numel = r.numel;
      part.first_chunk = plan_.tensors[r.first].first_chunk;
      for (size_t t = r.first; t < r.first + r.count; ++t) part.num_chunks += plan_.tensors[t].num_chunks;
      part.slice_layout_only.layout = SliceLayout(layout_, r);
      part.plan = PlanLayout(part.slice_layout_only.layout, config_.codec.topk);
      parts_.push_back(std::move(part));
    }
  }
  Aggregation::Kind kind() const override { return Aggregation::Kind::kBlocks; }
  void Describe(Aggregation::Setup* setup) const override {
    CampaignMode::Describe(setup);
    setup->parts = parts_;
  }
  std::string UploadSlice(const WorkerInfo& w, uint32_t round, int block, Slice* slice) const override {
    auto of_round = round_blocks_.find(round);
    std::optional<int> assigned;
    if (of_round != round_blocks_.end()) {
      if (auto it = of_round->second.find(w.site); it != of_round->second.end()) assigned = it->second;
    }
    if (!assigned || block != *assigned) {
      return "upload covers block " + std::to_string(block) + ", round " + std::to_string(round) + " asked for " +
             (!assigned ? std::string("none") : "block " + std::to_string(*assigned));
    }
    const ParamPart& part = parts_[static_cast<size_t>(*assigned)];
    *slice = Slice{*assigned, &part.slice_layout_only.layout, &part.plan};
    return "";
  }
  bool block_rounds() const override { return true; }
  bool OneAggregateForAll() const override { return true; }
  int64_t BlockNumel(int block) const override { return parts_[static_cast<size_t>(block)].numel; }
  int BlockFor(const std::string& site, uint32_t round, int position) override {
    auto& of_round = round_blocks_[round];
    auto it = of_round.find(site);
    if (it != of_round.end()) return it->second;
    const int b = BlockForRound(config_.parablock, config_.training.seed, round, position, site);
    of_round[site] = b;
    return b;
  }
  void ForgetBlocksBefore(uint32_t round) override {
    round_blocks_.erase(round_blocks_.begin(), round_blocks_.lower_bound(round));
  }
  int RecordedBlock(int part) const override { return part; }
  std::vector<int> layer_blocks() const override { return layer_blocks_; }
  void FillWelcome(Welcome* wel) const override { wel->layer_blocks = layer_blocks_; }

 private:
  std::vector<int> layer_blocks_;  // block of each layer
  std::vector<ParamPart> parts_;
  std::map<uint32_t, std::map<std::string, int>> round_blocks_;  // block by round and site
};

// Personalisation (ClusterLayout): cluster 0 = sites in no cluster (the
// model's own copies), 1.. = the named clusters. A worker sees the model
// layout: its view maps each model tensor to the extended tensor it reads.
class ClusterMode : public CampaignMode {
 public:
  ClusterMode(const CampaignConfig& config, const ParamSet& params, const LayoutPlan& plan)
      : CampaignMode(config, params, plan) {
    const PersonalizationConfig& per = config_.personalization;
    size_t n = 0;
    while (n < layout_.tensors.size() && layout_.tensors[n].name.rfind(kClusterPrefix, 0) != 0) ++n;
    model_layout_.tensors.assign(layout_.tensors.begin(), layout_.tensors.begin() + static_cast<std::ptrdiff_t>(n));
    model_plan_ = PlanLayout(model_layout_, config_.codec.topk);
    std::map<std::string, size_t> index_of;
    for (size_t j = 0; j < layout_.tensors.size(); ++j) index_of[layout_.tensors[j].name] = j;
    personal_tensor_.assign(n, false);
    std::vector<size_t> own(n);
    for (size_t i = 0; i < n; ++i) {
      own[i] = i;
      personal_tensor_[i] = Personalised(per, model_layout_.tensors[i].name);
    }
    views_.assign(1, own);  // cluster 0: sites in no cluster
    for (const auto& [cluster, sites] : per.clusters) {
      std::vector<size_t> view = own;
      for (size_t i = 0; i < n; ++i) {
        if (!personal_tensor_[i]) continue;
        auto it = index_of.find(kClusterPrefix + cluster + "/" + model_layout_.tensors[i].name);
        LOWBAND_CHECK(it != index_of.end());  // the caller extended the layout with ClusterLayout
        view[i] = it->second;
      }
      views_.push_back(std::move(view));
      for (const std::string& site : sites) cluster_of_site_[site] = static_cast<int>(views_.size()) - 1;
    }
  }
  Aggregation::Kind kind() const override { return Aggregation::Kind::kClusters; }
  void Describe(Aggregation::Setup* setup) const override {
    CampaignMode::Describe(setup);
    setup->model_layout = model_layout_;
    setup->model_plan = model_plan_;
    setup->views = views_;
    setup->personal_tensor = personal_tensor_;
  }
  uint64_t DigestFor(const WorkerInfo& w, uint64_t) const override { return view_digests_[ClusterIndex(w.site)]; }
  StatusOr<Encoded> SyncPayload(const WorkerInfo& w, const ParamSet& params, const Aggregation& agg) const override {
    return PackDenseFp32(model_layout_, agg.ViewValues(params, ClusterIndex(w.site)));
  }
  const Encoded& DownFor(const WorkerInfo& w, const CloseResult& r) const override {
    return r.cluster_down[static_cast<size_t>(ClusterIndex(w.site))];
  }
  std::string UploadSlice(const WorkerInfo& w, uint32_t, int block, Slice* slice) const override {
    if (std::string bad = WholeModelsOnly(block); !bad.empty()) return bad;
    // Aggregated with its cluster (Aggregation's kClusters).
    *slice = Slice{ClusterIndex(w.site), &model_layout_, &model_plan_};
    return "";
  }
  int64_t ParamsOf(const WorkerInfo*) const override { return model_layout_.numel(); }
  int ClusterIndex(const std::string& site) const override {
    auto it = cluster_of_site_.find(site);
    return it == cluster_of_site_.end() ? 0 : it->second;
  }
  std::string ClusterName(const std::string& site) const override {
    const int k = ClusterIndex(site);
    return k == 0 ? std::string() : config_.personalization.clusters[static_cast<size_t>(k - 1)].first;
  }
  void RecordEvals(const std::map<std::string, EvalReport>& evals, RoundRecord* r) const override {
    // Validation loss per cluster (token-weighted over its sites).
    std::map<std::string, std::pair<double, double>> per;
    for (const auto& [site, ev] : evals) {
      auto& [sum, n] = per[ClusterName(site).empty() ? "(none)" : ClusterName(site)];
      const double weight = static_cast<double>(std::max<uint64_t>(ev.val_tokens, 1));
      sum += ev.val_loss * weight;
      n += weight;
    }
    r->cluster_val_loss.clear();
    for (const auto& [name, sn] : per) r->cluster_val_loss[name] = sn.first / sn.second;
  }

 private:
  ParamLayout model_layout_;  // what workers hold
  LayoutPlan model_plan_;
  std::vector<std::vector<size_t>> views_;  // per cluster index: model tensor -> extended tensor
  std::vector<bool> personal_tensor_;       // per model tensor
  std::map<std::string, int> cluster_of_site_;
};

// FPLD (docs/fpld.md): sites upload probe logits; the round's student is
// distilled from their mean.
class FpldMode : public CampaignMode {
 public:
  using CampaignMode::CampaignMode;
  Aggregation::Kind kind() const override { return Aggregation::Kind::kDistil; }
  bool TakesDeltas() const override { return false; }
  bool TakesLogits() const override { return true; }
  bool Adopts(const WorkerInfo& w) const override {
    const ModelSpec& own = w.hello.own_model;
    return own.layers == 0 || (own.layers == config_.model.layers && own.d_model == config_.model.d_model &&
                               own.heads == config_.model.heads);
  }
  // Sites with models of their own evaluate nothing of the student's.
  int EvalsNeeded(int min_workers, int live_expected) const override {
    return std::min(std::max(min_workers, 1), live_expected);
  }
  bool ChecksNorms() const override { return false; }
  void SetProbes(std::vector<uint8_t> probes) override { probes_ = std::move(probes); }
  void FillWelcome(Welcome* wel) const override {
    // Only logits cross the wire: the parameters' codec does not matter.
    wel->codec = CodecSpec{};
    wel->fpld = ToSpec(config_.fpld);
    wel->fpld.probe_tokens = probes_;
  }

 private:
  std::vector<uint8_t> probes_;
};

}  // namespace

std::unique_ptr<CampaignMode> CampaignMode::Make(const CampaignConfig& config, const ParamSet& params,
                                                 const LayoutPlan& plan) {
  if (config.fpld.enabled) return std::make_unique<FpldMode>(config, params, plan);
  if (config.pipeline.stages > 1) return std::make_unique<PipelineMode>(config, params, plan);
  if (config.parablock.blocks > 1) return std::make_unique<BlockMode>(config, params, plan);
  if (!config.personalization.tensors.empty()) return std::make_unique<ClusterMode>(config, params, plan);
  return std::make_unique<PlainMode>(config, params, plan);
}

StatusOr<ParamSet> CampaignMode::ClusterLayout(const CampaignConfig& config, const ParamSet& model) {
  const PersonalizationConfig& per = config.personalization;
  if (per.tensors.empty()) return model;
  for (const std::string& p : per.tensors) {
    bool any = false;
    for (const TensorSpec& t : model.layout.tensors) any = any || t.name.rfind(p, 0) == 0;
    if (!any) {
      std::string names;
      for (const TensorSpec& t : model.layout.tensors) names += (names.empty() ? "" : ", ") + t.name;
      return InvalidArgument("personalization.tensors: no tensor of the model starts with '" + p +
                             "' (tensors: " + names + ")");
    }
  }
  ParamSet out = model;
  for (const auto& [cluster, sites] : per.clusters) {
    int64_t offset = 0;
    for (const TensorSpec& t : model.layout.tensors) {
      if (Personalised(per, t.name)) {
        TensorSpec copy = t;
        copy.name = kClusterPrefix + cluster + "/" + t.name;
        out.layout.tensors.push_back(copy);
        out.values.insert(out.values.end(), model.values.begin() + offset, model.values.begin() + offset + t.numel());
      }
      offset += t.numel();
    }
  }
  return out;
}

void CampaignMode::Describe(Aggregation::Setup* setup) const {
  setup->kind = kind();
  setup->layout = layout_;
  setup->plan = plan_;
}

void CampaignMode::ComputeDigests(const Aggregation& agg, const ParamSet& params) {
  agg.Digests(params, nullptr, &part_digests_, &view_digests_);
}

void CampaignMode::SetDigests(std::vector<uint64_t> parts, std::vector<uint64_t> views) {
  part_digests_ = std::move(parts);
  view_digests_ = std::move(views);
}

StatusOr<Encoded> CampaignMode::SyncPayload(const WorkerInfo&, const ParamSet& params, const Aggregation&) const {
  return PackDenseFp32(params.layout, params.values);
}

std::string CampaignMode::UploadSlice(const WorkerInfo&, uint32_t, int block, Slice* slice) const {
  if (std::string bad = WholeModelsOnly(block); !bad.empty()) return bad;
  *slice = Slice{0, &layout_, &plan_};
  return "";
}

}  // namespace lowband
