#include "coordinator/fcrag_hub.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "fcrag/fcrag.h"
#include "codec/dither.h"
#include "base/json.h"
#include "base/log.h"
#include "codec/params.h"

namespace lowband {
namespace {

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

double Sd(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = Mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

std::string Num(double v) {
  char b[32];
  std::snprintf(b, sizeof(b), "%.4g", v);
  return b;
}

}  // namespace

FcragHub::FcragHub(const CampaignConfig& config) : config_(config) {}

void FcragHub::Enqueue(FcragPlan plan) { queue_.push_back(std::move(plan)); }

void FcragHub::Pump(const std::vector<std::string>& sites, TimePoint now, const Send& send,
                    std::vector<FcragResult>* done) {
  while (!current_ && !queue_.empty()) {
    current_ = std::move(queue_.front());
    queue_.pop_front();
    sites_ = sites;
    trials_.clear();
    summary_bytes_ = 0;
    if (sites_.empty()) {
      Fail("no site is connected", done);
      continue;
    }
    if (current_->predict && !threshold_) {
      Fail("no calibration yet: run `lowband calibrate` first", done);
      continue;
    }
    if (current_->predict) {
      Begin(Step::kScore, sites_, now, send);
    } else if (!have_queries_) {
      Begin(Step::kQueries, sites_, now, send);
    } else if (!mean_.count(current_->score_bits)) {
      Begin(Step::kScore, sites_, now, send);
    } else {
      Begin(Step::kCalibrate, sites_, now, send);
    }
  }
}

void FcragHub::Begin(Step step, const std::vector<std::string>& sites, TimePoint now, const Send& send) {
  Exchange ex;
  ex.id = next_id_++;
  ex.step = step;
  ex.start = now;
  const FcragPlan& plan = *current_;
  const double score_max = config_.fcrag.score_max;
  for (const std::string& site : sites) {
    FcragRequest rq;
    rq.id = ex.id;
    rq.score_max = score_max;
    rq.calibration_fraction = config_.fcrag.calibration_fraction;
    Bytes bulk;
    switch (step) {
      case Step::kQueries:
        rq.kind = FcragKind::kQueries;
        break;
      case Step::kScore: {
        rq.kind = FcragKind::kScore;
        rq.bits = plan.score_bits;
        rq.seed = config_.training.seed ^ 0x6a09e667f3bcc908ull;
        const std::vector<std::string> one{plan.text};
        const auto& texts = plan.predict ? one : texts_;
        rq.count = static_cast<uint32_t>(texts.size());
        bulk = PackTextList(texts);
        break;
      }
      case Step::kCalibrate: {
        auto rows = rows_of_.find(site);
        if (rows == rows_of_.end() || rows->second.second == 0) continue;  // it holds no queries
        rq.kind = FcragKind::kCalibrate;
        rq.bits = plan.summary_bits;
        // Trial t splits the same way whatever the bits or alpha, so settings compare on equal splits.
        rq.seed = config_.training.seed * 1000003ull + trials_.size();
        rq.count = static_cast<uint32_t>(rows->second.second);
        const std::vector<double>& mean = mean_.at(plan.score_bits);
        bulk.resize(rows->second.second * labels() * sizeof(float));
        for (size_t i = 0; i < rows->second.second * labels(); ++i) {
          const float v = static_cast<float>(mean[rows->second.first * labels() + i]);
          std::memcpy(bulk.data() + i * sizeof(float), &v, sizeof(float));
        }
        break;
      }
      case Step::kTest: {
        if (!rows_of_.count(site) || rows_of_.at(site).second == 0) continue;
        rq.kind = FcragKind::kTest;
        rq.threshold = trials_.back().threshold;
        rq.threshold_qq = trials_.back().threshold_qq;
        break;
      }
    }
    rq.blob.codec = CodecKind::kDenseFp32;
    rq.blob.byte_length = bulk.size();
    rq.blob.checksum = BulkChecksum(bulk.data(), bulk.size());
    ex.waiting.insert(site);
    send(site, rq, std::move(bulk));
  }
  exchange_ = std::move(ex);
}

std::string FcragHub::OnReply(const std::string& site, const FcragReply& reply, const Bytes& bulk, TimePoint now,
                              const Send& send, std::vector<FcragResult>* done) {
  if (!exchange_ || reply.id != exchange_->id) return "no FC-RAG exchange " + std::to_string(reply.id) + " is open";
  if (!exchange_->waiting.count(site)) return "a second or unasked reply to exchange " + std::to_string(reply.id);
  exchange_->waiting.erase(site);
  exchange_->replies[site] = {reply, bulk};
  if (exchange_->waiting.empty()) Advance(now, send, done);
  return "";
}

void FcragHub::OnTick(TimePoint now, const Send& send, std::vector<FcragResult>* done) {
  const auto deadline = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(config_.quorum.round_deadline_s));
  if (exchange_ && now - exchange_->start > deadline) {
    for (const std::string& site : exchange_->waiting) LOG_WARN("FC-RAG: no reply by the deadline", {"site", site});
    exchange_->waiting.clear();
    Advance(now, send, done);
  }
}

void FcragHub::SiteGone(const std::string& site, TimePoint now, const Send& send, std::vector<FcragResult>* done) {
  sites_.erase(std::remove(sites_.begin(), sites_.end(), site), sites_.end());
  if (exchange_ && exchange_->waiting.erase(site) && exchange_->waiting.empty()) Advance(now, send, done);
}

void FcragHub::Fail(const std::string& why, std::vector<FcragResult>* done) {
  FcragResult r;
  r.ticket = current_ ? current_->ticket : 0;
  r.predict = current_ && current_->predict;
  r.ok = false;
  r.message = why;
  LOG_WARN("FC-RAG plan failed", {"reason", why});
  done->push_back(std::move(r));
  current_.reset();
  exchange_.reset();
}

// The exchange is complete (or past its deadline): use what came back.
void FcragHub::Advance(TimePoint now, const Send& send, std::vector<FcragResult>* done) {
  Exchange ex = std::move(*exchange_);
  exchange_.reset();
  const FcragPlan& plan = *current_;
  const ScoreRange range{0.0, config_.fcrag.score_max};
  switch (ex.step) {
    case Step::kQueries: {
      for (auto& [site, r] : ex.replies) {
        auto texts = UnpackTextList(r.second, r.first.count);
        if (!texts.ok()) {
          LOG_WARN("FC-RAG: queries refused", {"site", site}, {"reason", texts.status().ToString()});
          continue;
        }
        rows_of_[site] = {texts_.size(), texts->size()};
        texts_.insert(texts_.end(), texts->begin(), texts->end());
      }
      if (texts_.empty()) return Fail("no site sent queries", done);
      have_queries_ = true;
      LOG_INFO("FC-RAG queries gathered", {"queries", static_cast<uint64_t>(texts_.size())},
               {"sites", static_cast<uint64_t>(rows_of_.size())});
      return mean_.count(plan.score_bits) ? Begin(Step::kCalibrate, sites_, now, send)
                                          : Begin(Step::kScore, sites_, now, send);
    }
    case Step::kScore: {
      const size_t rows = plan.predict ? 1 : texts_.size();
      std::vector<double> sum(rows * labels(), 0.0);
      int sites = 0;
      uint64_t bytes = 0;
      for (auto& [site, r] : ex.replies) {
        auto scores = DecodeScores(r.second.data(), r.second.size(), sum.size(), range, plan.score_bits,
                                   DitherSeedFor(config_.training.seed ^ 0x6a09e667f3bcc908ull,
                                                  static_cast<uint32_t>(ex.id), site));
        if (!scores.ok()) {
          LOG_WARN("FC-RAG: scores refused", {"site", site}, {"reason", scores.status().ToString()});
          continue;
        }
        for (size_t i = 0; i < sum.size(); ++i) sum[i] += (*scores)[i];
        ++sites;
        bytes += r.second.size();
      }
      if (sites == 0) return Fail("no site's scores arrived", done);
      for (double& v : sum) v /= sites;
      if (plan.predict) {
        predict_mean_ = std::move(sum);
        return FinishPlan(done);
      }
      mean_[plan.score_bits] = std::move(sum);
      score_bytes_[plan.score_bits] = bytes;
      return Begin(Step::kCalibrate, sites_, now, send);
    }
    case Step::kCalibrate: {
      std::vector<ScoreSummary> summaries;
      std::vector<std::vector<double>> values;
      for (auto& [site, r] : ex.replies) {
        auto s = UnpackSummary(r.second.data(), r.second.size(), plan.summary_bits, r.first.count);
        if (!s.ok()) {
          LOG_WARN("FC-RAG: summary refused", {"site", site}, {"reason", s.status().ToString()});
          continue;
        }
        summary_bytes_ += r.second.size();
        std::vector<double> v;
        for (uint32_t c : s->codes) v.push_back(CodeValue(c, range, plan.summary_bits));
        values.push_back(std::move(v));
        summaries.push_back(std::move(s).value());
      }
      if (summaries.empty()) return Fail("no site's calibration summary arrived", done);
      auto pooled = PooledThreshold(summaries, range, plan.alpha);
      if (!pooled.ok()) return Fail(pooled.status().ToString(), done);
      Trial t;
      t.threshold = *pooled;
      pooled_cal_.clear();
      size_t n_qq = std::numeric_limits<size_t>::max();
      for (const auto& v : values) {
        pooled_cal_.insert(pooled_cal_.end(), v.begin(), v.end());
        t.calibration += v.size();
        n_qq = std::min(n_qq, v.size());
      }
      // FedCP-QQ from the same summaries: every site's local k-th smallest
      // of n_qq scores (a seeded random subset where it has more).
      t.threshold_qq = std::numeric_limits<double>::infinity();
      auto qq = n_qq > 0 ? PlanQuantileOfQuantiles(values.size(), n_qq, plan.alpha)
                         : StatusOr<QuantileOfQuantiles>(InvalidArgument("a site has no calibration scores"));
      if (qq.ok()) {
        qq_ = *qq;
        std::mt19937_64 rng(config_.training.seed + trials_.size());
        std::vector<double> local;
        for (auto v : values) {
          std::shuffle(v.begin(), v.end(), rng);
          v.resize(n_qq);
          local.push_back(LocalOrderStatistic(v, qq->k));
        }
        t.threshold_qq = QuantileOfQuantilesThreshold(local, *qq);
      } else {
        qq_.reset();
      }
      trials_.push_back(t);
      return Begin(Step::kTest, sites_, now, send);
    }
    case Step::kTest: {
      Trial& t = trials_.back();
      uint64_t covered = 0, covered_qq = 0, sizes = 0, sizes_qq = 0;
      for (auto& [site, r] : ex.replies) {
        const FcragReply& f = r.first;
        if (f.covered > f.count || f.covered_qq > f.count || f.set_size > uint64_t{f.count} * labels() ||
            f.set_size_qq > uint64_t{f.count} * labels()) {
          LOG_WARN("FC-RAG: test counts refused (out of range)", {"site", site});
          continue;
        }
        t.test += f.count;
        covered += f.covered;
        covered_qq += f.covered_qq;
        sizes += f.set_size;
        sizes_qq += f.set_size_qq;
      }
      if (t.test == 0) return Fail("no site reported test queries", done);
      const double n = static_cast<double>(t.test);
      t.coverage = covered / n;
      t.coverage_qq = covered_qq / n;
      t.set_size = sizes / n;
      t.set_size_qq = sizes_qq / n;
      if (static_cast<int>(trials_.size()) < plan.trials) return Begin(Step::kCalibrate, sites_, now, send);
      return FinishPlan(done);
    }
  }
}

void FcragHub::FinishPlan(std::vector<FcragResult>* done) {
  const FcragPlan plan = *current_;
  current_.reset();
  FcragResult r;
  r.ticket = plan.ticket;
  r.predict = plan.predict;
  if (plan.predict) {
    const auto [q, alpha] = *threshold_;
    std::vector<std::string> set;
    JsonObject scores;
    for (size_t y = 0; y < labels(); ++y) {
      scores.Add(Label(static_cast<int>(y)), predict_mean_[y]);
      if (predict_mean_[y] <= q) set.push_back(Label(static_cast<int>(y)));
    }
    std::string list, json_list;
    for (const std::string& l : set) {
      list += (list.empty() ? "" : ", ") + l;
      json_list += (json_list.empty() ? "" : ",") + JsonString(l);
    }
    r.message = "{" + list + "} at alpha " + Num(alpha) + " (threshold " + Num(q) + ")";
    JsonObject o;
    o.AddRaw("set", "[" + json_list + "]").AddRaw("scores", scores.str()).Add("threshold", q).Add("alpha", alpha);
    r.json = o.str();
    done->push_back(std::move(r));
    return;
  }
  std::vector<double> cov, size, cov_qq, size_qq, thr, thr_qq, ncal;
  for (const Trial& t : trials_) {
    cov.push_back(t.coverage);
    size.push_back(t.set_size);
    cov_qq.push_back(t.coverage_qq);
    size_qq.push_back(t.set_size_qq);
    thr.push_back(t.threshold);
    thr_qq.push_back(t.threshold_qq);
    ncal.push_back(static_cast<double>(t.calibration));
  }
  const size_t n_cal = static_cast<size_t>(Mean(ncal));
  const size_t sites = rows_of_.size();
  const CoverageBound bound =
      FcragCoverageBound(plan.alpha, n_cal, /*delta_fl=*/0.0, EstimateDensityMax(pooled_cal_),
                         std::vector<int>(sites, plan.score_bits), ScoreRange{0.0, config_.fcrag.score_max}, sites);
  threshold_ = {trials_.back().threshold, plan.alpha};
  JsonObject b;
  b.Add("nominal", bound.nominal).Add("finite_sample", bound.finite_sample).Add("delta_fl", bound.delta_fl)
      .Add("delta_rag", bound.delta_rag).Add("lower", bound.lower);
  JsonObject o;
  o.Add("alpha", plan.alpha).Add("score_bits", plan.score_bits).Add("summary_bits", plan.summary_bits)
      .Add("trials", static_cast<uint64_t>(trials_.size())).Add("sites", static_cast<uint64_t>(sites))
      .Add("queries", static_cast<uint64_t>(texts_.size())).Add("labels", static_cast<uint64_t>(labels()))
      .Add("calibration", n_cal).Add("threshold", thr.back()).Add("threshold_mean", Mean(thr))
      .Add("coverage_mean", Mean(cov)).Add("coverage_sd", Sd(cov))
      .Add("coverage_min", *std::min_element(cov.begin(), cov.end()))
      .Add("set_size_mean", Mean(size)).Add("set_size_sd", Sd(size))
      .Add("qq_k", qq_ ? qq_->k : 0).Add("qq_l", qq_ ? qq_->l : 0).Add("qq_plan_coverage", qq_ ? qq_->coverage : 0.0)
      .Add("qq_threshold_mean", Mean(thr_qq)).Add("qq_coverage_mean", Mean(cov_qq))
      .Add("qq_coverage_min", *std::min_element(cov_qq.begin(), cov_qq.end())).Add("qq_set_size_mean", Mean(size_qq))
      .Add("score_bytes", score_bytes_.count(plan.score_bits) ? score_bytes_.at(plan.score_bits) : 0)
      .Add("summary_bytes_per_trial", summary_bytes_ / std::max<uint64_t>(trials_.size(), 1))
      .AddRaw("bound", b.str());
  r.json = o.str();
  r.message = "alpha " + Num(plan.alpha) + ": threshold " + Num(thr.back()) + " (pooled " + std::to_string(n_cal) +
              " calibration scores at " + std::to_string(plan.summary_bits) + " bits, site scores at " +
              (plan.score_bits ? std::to_string(plan.score_bits) + " bits" : std::string("fp32")) + "); coverage " +
              Num(Mean(cov)) + " +- " + Num(Sd(cov)) + " (min " + Num(*std::min_element(cov.begin(), cov.end())) +
              ") over " + std::to_string(trials_.size()) + " splits, mean set " + Num(Mean(size)) + " of " +
              std::to_string(labels()) + " labels; FedCP-QQ coverage " + Num(Mean(cov_qq)) + ", set " +
              Num(Mean(size_qq)) + "; bound >= " + Num(bound.lower) + " = 1-alpha " + Num(bound.nominal) +
              " - 1/(n+1) " + Num(bound.finite_sample) + " - D_FL " + Num(bound.delta_fl) + " - D_RAG " +
              Num(bound.delta_rag);
  trials_.clear();
  done->push_back(std::move(r));
}

}  // namespace lowband
