// Operator commands as the coordinator core understands them: the words of
// a ControlRequest ("round pause" and "round" + ["pause"] are the same) and
// the options of `calibrate` / `predict`. Parsing only: what a command does
// to the campaign, and whether the phase allows it, is CoordinatorCore's
// (HandleControl). No state, no I/O. Thread: the coordinator loop.
#pragma once

#include <string>
#include <vector>

#include "coordinator/fcrag_hub.h"
#include "protocol/messages.h"

namespace lowband {

struct ControlCommand {
  enum class Verb {
    kStatus,       // status
    kWorkers,      // workers
    kRoundPause,   // round pause
    kRoundResume,  // round resume
    kRoundClose,   // round close
    kFcrag,        // calibrate [options] | predict TEXT...
    kAbort,        // campaign abort
    kEvict,        // worker evict SITE
    kUnknown,
  };
  Verb verb = Verb::kUnknown;
  std::vector<std::string> words;  // command split at spaces, then the args
  std::string site;                // kEvict
};

ControlCommand ParseControl(const ControlRequest& req);

// The answer to a command nobody knows (lists the allowed ones).
std::string UnknownControlMessage(const ControlRequest& req);

// `calibrate [--alpha A] [--score-bits B] [--summary-bits B] [--trials T]`
// or `predict TEXT...` (words[0] says which) into `plan`, whose fields hold
// the campaign's defaults. Returns "" or the refusal, naming the allowed
// values; `plan` is then partly filled and must not be used.
std::string ParseFcragCommand(const std::vector<std::string>& words, FcragPlan* plan);

}  // namespace lowband
