#include <chrono>
#include <cstdio>
#include <optional>

#include "cli/commands.h"
#include "config/config.h"
#include "net/zmq/curve.h"
#include "net/zmq/event_loop.h"
#include "net/zmq/zmq_transport.h"
#include "protocol/wire.h"

namespace lowband::cli {

int Control(const ControlOptions& options, const std::string& name, const std::vector<std::string>& args) {
  // For messages: "round pause", "worker evict site-a".
  std::string command = name;
  for (const std::string& a : args) command += " " + a;
  std::string endpoint = options.endpoint;
  std::string campaign;
  if (endpoint.empty()) {
    if (options.campaign_file.empty()) {
      std::fprintf(stderr, "lowband %s: give --endpoint tcp://HOST:PORT or --campaign FILE\n", command.c_str());
      return 64;
    }
    auto config = LoadCampaignFile(options.campaign_file);
    if (!config.ok()) {
      std::fprintf(stderr, "lowband %s: invalid campaign:\n%s\n", command.c_str(), config.status().message().c_str());
      return kExitConfig;
    }
    endpoint = config->network.control;
    campaign = config->name;
  }
  std::optional<CurveClientOptions> curve;
  if (!options.key.empty() || !options.server_key.empty()) {
    if (options.key.empty() || options.server_key.empty()) {
      std::fprintf(stderr, "lowband %s: CurveZMQ needs both --key (yours) and --server-key (the coordinator's)\n",
                   command.c_str());
      return 64;
    }
    auto key = ReadCurveKeyFile(options.key, /*secret_required=*/true);
    auto server = key.ok() ? ReadCurveKeyFile(options.server_key, /*secret_required=*/false) : key.status();
    if (!server.ok()) {
      std::fprintf(stderr, "lowband %s: %s\n", command.c_str(), server.status().ToString().c_str());
      return kExitConfig;
    }
    curve = CurveClientOptions{server->public_key, key->public_key, key->secret_key};
  }
  zmq::context_t ctx{1};
  auto link = ZmqClientTransport::Connect(ctx, endpoint, "", 64 << 20, curve ? &*curve : nullptr);
  if (!link.ok()) {
    std::fprintf(stderr, "lowband %s: %s\n", command.c_str(), link.status().ToString().c_str());
    return 69;
  }
  Message req;
  req.campaign_id = campaign;
  req.sender_id = "cli";
  req.body = ControlRequest{name, args};
  Status st = (*link)->Send("", EncodeMessage(req));
  if (!st.ok()) {
    std::fprintf(stderr, "lowband %s: cannot send to %s: %s\n", command.c_str(), endpoint.c_str(),
                 st.ToString().c_str());
    return 69;
  }
  EventLoop loop;
  bool answered = false;
  int code = 1;
  loop.AddSocket((*link)->socket(), [&] {
    Inbound in;
    while (!answered && (*link)->TryReceive(&in)) {
      auto msg = DecodeMessage(in.frames, WireLimits{});
      if (!msg.ok()) {
        std::fprintf(stderr, "lowband %s: malformed reply: %s\n", command.c_str(), msg.status().ToString().c_str());
        answered = true;
        return;
      }
      const auto* resp = std::get_if<ControlResponse>(&msg->body);
      if (!resp) continue;
      answered = true;
      if (options.json && !resp->json.empty()) {
        std::printf("%s\n", resp->json.c_str());
      } else {
        std::printf("%s\n", resp->message.c_str());
      }
      if (!resp->ok) std::fprintf(stderr, "lowband %s: %s\n", command.c_str(), resp->message.c_str());
      code = resp->ok ? 0 : 1;
    }
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(options.timeout_ms);
  while (!answered && std::chrono::steady_clock::now() < deadline) {
    Status st = loop.RunOnce(std::chrono::milliseconds(50));
    if (!st.ok()) {
      std::fprintf(stderr, "lowband %s: %s\n", command.c_str(), st.ToString().c_str());
      return 1;
    }
  }
  if (!answered) {
    std::fprintf(stderr, "lowband %s: no answer from %s within %d ms (is the coordinator running%s?)\n",
                 command.c_str(), endpoint.c_str(), options.timeout_ms,
                 curve ? ", and is your key in its operator allow-list"
                       : "; with network.security curve, pass --key and --server-key");
    return 69;
  }
  return code;
}

int KeysGenerate(const std::string& name, const std::string& dir) {
  auto key = GenerateCurveKey();
  Status st = key.ok() ? WriteCurveKeyFiles(dir, name, *key) : key.status();
  if (!st.ok()) {
    std::fprintf(stderr, "lowband keys generate: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("%s/%s.key (secret, mode 0600)\n%s/%s.pub (public: %s)\n", dir.c_str(), name.c_str(), dir.c_str(),
              name.c_str(), key->public_key.c_str());
  return 0;
}

}  // namespace lowband::cli
