// lowband-worker: one site's daemon.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <optional>

#include "config/config.h"
#include "data/corpus.h"
#include "net/zmq/event_loop.h"
#include "base/log.h"
#include "base/process.h"
#include "worker/service.h"

int main(int argc, char** argv) {
  // Before any thread exists (LibTorch, ZeroMQ), so every thread inherits
  // the blocked stop signals and only the loop's signalfd sees them.
  auto signals = lowband::SignalWatcher::Create();
  if (!signals.ok()) {
    std::fprintf(stderr, "lowband-worker: %s\n", signals.status().ToString().c_str());
    return 1;
  }
  CLI::App app{"lowband worker: trains on this site's data for a coordinator's campaign"};
  std::string site_file, campaign_file, site_name, log_level = "info", rendezvous;
  std::optional<int> rank;
  auto* by_file = app.add_option("--config,-f", site_file, "site YAML file");
  auto* by_campaign = app.add_option("--campaign", campaign_file, "campaign YAML file listing this site");
  app.add_option("--site", site_name, "site name inside --campaign")->needs(by_campaign);
  by_file->excludes(by_campaign);
  app.add_option("--log-level", log_level, "debug, info, warn or error")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
  app.add_option("--rank", rank,
                 "a site of several ranks: run this rank alone (rank 0 starts the others itself; "
                 "use on a host that runs a rank of a site spanning hosts)");
  app.add_option("--rendezvous", rendezvous, "where the site's ranks meet: HOST:PORT (default site.rendezvous)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 64;
  }
  lowband::log::SetLevel(lowband::log::ParseLevel(log_level));
  if (site_file.empty() && campaign_file.empty()) {
    std::fprintf(stderr, "lowband-worker: give --config SITE.yaml, or --campaign FILE --site NAME\n");
    return 64;
  }

  lowband::SiteConfig site;
  std::string campaign_name;
  if (!site_file.empty()) {
    auto s = lowband::LoadSiteFile(site_file);
    if (!s.ok()) {
      std::fprintf(stderr, "lowband-worker: invalid site file:\n%s\n", s.status().message().c_str());
      return lowband::kExitConfig;
    }
    site = std::move(s).value();
  } else {
    auto c = lowband::LoadCampaignFile(campaign_file);
    if (!c.ok()) {
      std::fprintf(stderr, "lowband-worker: invalid campaign:\n%s\n", c.status().message().c_str());
      return lowband::kExitConfig;
    }
    bool found = false;
    std::string names;
    for (const auto& s : c->sites) {
      names += (names.empty() ? "" : ", ") + s.name;
      if (s.name == site_name) {
        site = s;
        found = true;
      }
    }
    if (!found) {
      std::fprintf(stderr, "lowband-worker: %s: no site named '%s' (sites: %s)\n", campaign_file.c_str(),
                   site_name.c_str(), names.c_str());
      return lowband::kExitConfig;
    }
    campaign_name = c->name;
  }
  auto plan = lowband::PlanRanks(site, rank, rendezvous);
  if (!plan.ok()) {
    std::fprintf(stderr, "lowband-worker: %s: %s\n", site.source.c_str(), plan.status().message().c_str());
    return lowband::kExitConfig;
  }
  const int own_rank = plan->own_rank();
  lowband::log::SetRole("worker", plan->ranks > 1 && own_rank > 0 ? site.name + "/rank" + std::to_string(own_rank)
                                                                    : site.name);
  site.device = lowband::LocalRankDevice(site.device, lowband::LocalIndexOf(site, own_rank), plan->ranks);
  auto corpus = lowband::Corpus::Load(site.data);
  if (!corpus.ok()) {
    std::fprintf(stderr, "lowband-worker: %s: cannot load data: %s\n", site.source.c_str(),
                 corpus.status().ToString().c_str());
    return lowband::kExitConfig;
  }
  // The command line a started rank repeats, with --rank and --rendezvous.
  lowband::WorkerRanks ranks{std::move(plan).value(), {lowband::SelfExePath()}, /*notify_systemd=*/!rank};
  for (const std::string& a : site_file.empty() ? std::vector<std::string>{"--campaign", campaign_file, "--site",
                                                                          site_name}
                                                : std::vector<std::string>{"--config", site_file}) {
    ranks.worker_argv.push_back(a);
  }
  ranks.worker_argv.insert(ranks.worker_argv.end(), {"--log-level", log_level});
  if (own_rank > 0) return lowband::RunFollowerRank(std::move(site), std::move(corpus).value(), ranks, **signals);
  lowband::WorkerService service(std::move(site), campaign_name, std::move(corpus).value(), std::move(ranks));
  return service.Run(**signals);
}
