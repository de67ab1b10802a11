#include "coordinator/control_commands.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace lowband {

ControlCommand ParseControl(const ControlRequest& req) {
  ControlCommand c;
  for (size_t start = 0; start <= req.command.size();) {
    const size_t end = std::min(req.command.find(' ', start), req.command.size());
    if (end > start) c.words.push_back(req.command.substr(start, end - start));
    start = end + 1;
  }
  c.words.insert(c.words.end(), req.args.begin(), req.args.end());
  const std::vector<std::string>& w = c.words;
  const std::string verb = w.empty() ? std::string() : w[0];
  const std::string sub = w.size() > 1 ? w[1] : std::string();
  using V = ControlCommand::Verb;
  if (verb == "status" && w.size() == 1) {
    c.verb = V::kStatus;
  } else if (verb == "workers" && w.size() == 1) {
    c.verb = V::kWorkers;
  } else if (verb == "round" && w.size() == 2 && sub == "pause") {
    c.verb = V::kRoundPause;
  } else if (verb == "round" && w.size() == 2 && sub == "resume") {
    c.verb = V::kRoundResume;
  } else if (verb == "round" && w.size() == 2 && sub == "close") {
    c.verb = V::kRoundClose;
  } else if (verb == "calibrate" || verb == "predict") {
    c.verb = V::kFcrag;
  } else if (verb == "campaign" && w.size() == 2 && sub == "abort") {
    c.verb = V::kAbort;
  } else if (verb == "worker" && w.size() == 3 && sub == "evict") {
    c.verb = V::kEvict;
    c.site = w[2];
  }
  return c;
}

std::string UnknownControlMessage(const ControlRequest& req) {
  return "unknown command '" + req.command + (req.args.empty() ? "" : " ...") +
         "' (allowed: status, workers, round pause|resume|close, campaign abort, worker evict SITE, "
         "checkpoint, calibrate, predict)";
}

std::string ParseFcragCommand(const std::vector<std::string>& words, FcragPlan* plan) {
  if (words[0] == "predict") {
    plan->predict = true;
    for (size_t i = 1; i < words.size(); ++i) plan->text += (i > 1 ? " " : "") + words[i];
    if (plan->text.empty() || plan->text.size() > 65536) return "predict needs a text of 1..65536 bytes";
    return "";
  }
  for (size_t i = 1; i < words.size(); i += 2) {
    const std::string& key = words[i];
    const std::string value = i + 1 < words.size() ? words[i + 1] : "";
    char* end = nullptr;
    const double v = std::strtod(value.c_str(), &end);
    const bool number = !value.empty() && end && *end == '\0' && std::isfinite(v);
    const bool integer = number && v == std::floor(v);
    if (key == "--alpha" && number && v > 0 && v < 1) {
      plan->alpha = v;
    } else if (key == "--score-bits" && integer && v >= 0 && v <= 16) {
      plan->score_bits = static_cast<int>(v);
    } else if (key == "--summary-bits" && integer && v >= 1 && v <= 15) {
      plan->summary_bits = static_cast<int>(v);
    } else if (key == "--trials" && integer && v >= 1 && v <= 10000) {
      plan->trials = static_cast<int>(v);
    } else {
      return "calibrate: bad option '" + key + (value.empty() ? "" : " " + value) +
             "' (allowed: --alpha in (0,1), --score-bits 0..16, --summary-bits 1..15, --trials 1..10000)";
    }
  }
  return "";
}

}  // namespace lowband
