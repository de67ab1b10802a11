// FcragHub: the coordinator's half of FC-RAG (docs/fcrag.md, docs/design.md 3.7).
// Transport-free, owned by CoordinatorCore. Runs plans one at a time, each a
// sequence of exchanges (a request to every participating site, then a wait
// for their replies or the deadline):
//   queries   once: each site's query texts (its labels stay at the site);
//   score     every site scores every query against its own store at B_i
//             bits with dither; the hub averages the dequantized scores
//             (cached per B_i);
//   calibrate per trial: each site gets the mean scores of its own queries
//             and a split seed, and answers with its calibration scores'
//             B_cal-bit summary; the hub pools them into the split-conformal
//             threshold, and computes the FedCP-QQ threshold from the same
//             summaries;
//   test      each site applies both thresholds to its test queries and
//             reports coverage counts and set sizes.
// A predict plan scores one text and returns its set under the newest
// threshold.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "config/config.h"
#include "fcrag/conformal.h"
#include "protocol/messages.h"

namespace lowband {

struct FcragPlan {
  uint64_t ticket = 0;  // control request to answer (0: the campaign's own calibration)
  bool predict = false;
  std::string text;     // predict: the query
  int score_bits = 8;
  int summary_bits = 6;
  double alpha = 0.1;
  int trials = 1;
};

struct FcragResult {
  uint64_t ticket = 0;
  bool predict = false;
  bool ok = true;
  std::string message;  // one line for the operator
  std::string json;     // the figures
};

class FcragHub {
 public:
  using Clock = std::chrono::steady_clock;
  using TimePoint = Clock::time_point;
  using Send = std::function<void(const std::string& site, FcragRequest request, Bytes bulk)>;

  explicit FcragHub(const CampaignConfig& config);

  void Enqueue(FcragPlan plan);
  bool idle() const { return !current_ && queue_.empty(); }
  // Starts the next plan if none runs (with the sites live now).
  void Pump(const std::vector<std::string>& sites, TimePoint now, const Send& send, std::vector<FcragResult>* done);
  // A site's reply. Replies to no pending exchange, or malformed ones, are
  // refused: the returned string says why (empty: accepted).
  std::string OnReply(const std::string& site, const FcragReply& reply, const Bytes& bulk, TimePoint now,
                      const Send& send, std::vector<FcragResult>* done);
  // Deadlines: an exchange goes on with the replies it has.
  void OnTick(TimePoint now, const Send& send, std::vector<FcragResult>* done);
  // The site will not answer (lost, evicted).
  void SiteGone(const std::string& site, TimePoint now, const Send& send, std::vector<FcragResult>* done);
  // The newest pooled threshold and its alpha (none before a calibration).
  std::optional<std::pair<double, double>> threshold() const { return threshold_; }

 private:
  enum class Step { kQueries, kScore, kCalibrate, kTest };
  struct Exchange {
    uint64_t id = 0;
    Step step = Step::kQueries;
    std::set<std::string> waiting;
    std::map<std::string, std::pair<FcragReply, Bytes>> replies;
    TimePoint start;
  };
  struct Trial {
    double threshold = 0, threshold_qq = 0;
    double coverage = 0, set_size = 0, coverage_qq = 0, set_size_qq = 0;
    uint64_t calibration = 0, test = 0;
  };

  void Begin(Step step, const std::vector<std::string>& sites, TimePoint now, const Send& send);
  void Advance(TimePoint now, const Send& send, std::vector<FcragResult>* done);
  void Fail(const std::string& why, std::vector<FcragResult>* done);
  void FinishPlan(std::vector<FcragResult>* done);
  std::string Label(int y) const { return config_.fcrag.labels[static_cast<size_t>(y)]; }
  size_t labels() const { return config_.fcrag.labels.size(); }

  CampaignConfig config_;
  std::deque<FcragPlan> queue_;
  std::optional<FcragPlan> current_;
  std::optional<Exchange> exchange_;
  uint64_t next_id_ = 1;
  std::vector<std::string> sites_;  // of the current plan
  // Queries, gathered once: texts by owner, and each owner's first row.
  bool have_queries_ = false;
  std::vector<std::string> texts_;
  std::map<std::string, std::pair<size_t, size_t>> rows_of_;  // site -> (first row, count)
  std::map<int, std::vector<double>> mean_;                   // B_i -> rows x labels mean scores
  std::map<int, uint64_t> score_bytes_;                       // B_i -> score payload bytes of the pass
  std::vector<double> predict_mean_;
  std::vector<Trial> trials_;
  std::vector<double> pooled_cal_;  // decoded calibration scores of the newest trial (density estimate)
  uint64_t summary_bytes_ = 0;
  std::optional<QuantileOfQuantiles> qq_;
  std::optional<std::pair<double, double>> threshold_;
};

}  // namespace lowband
