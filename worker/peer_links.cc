#include "worker/peer_links.h"

#include <set>

#include "base/log.h"
#include "net/zmq/zmq_transport.h"

namespace lowband {

bool PeerInbox::Push(Activation header, Bytes bulk) {
  bool kept_all = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!queue_.empty() && (queue_.size() >= capacity_ || bytes_ + bulk.size() > max_bytes_)) {
      bytes_ -= queue_.front().second.size();
      queue_.pop_front();
      ++dropped_;
      kept_all = false;
    }
    bytes_ += bulk.size();
    queue_.emplace_back(std::move(header), std::move(bulk));
  }
  cv_.notify_all();
  return kept_all;
}

StatusOr<std::pair<Activation, Bytes>> PeerInbox::Pop(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t generation = generation_;
  const bool ready = cv_.wait_for(lock, timeout, [&] { return closed_ || generation_ != generation || !queue_.empty(); });
  if (closed_) return Unavailable("worker stopping");
  if (generation_ != generation) return Unavailable("step abandoned: the worker was welcomed again");
  if (!ready) return DeadlineExceeded("no activation from a neighbour stage within " +
                                      std::to_string(timeout.count()) + " ms");
  auto item = std::move(queue_.front());
  queue_.pop_front();
  bytes_ -= item.second.size();
  return item;
}

void PeerInbox::Cancel() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++generation_;
  }
  cv_.notify_all();
}

void PeerInbox::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

uint64_t PeerInbox::dropped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_;
}

Status ZmqPeerChannel::Send(int to_stage, Activation header, Bytes bulk) {
  if (!outbox_->Post(PeerSend{to_stage, std::move(header), std::move(bulk)})) {
    return Unavailable("peer send queue full (stage " + std::to_string(to_stage) + ")");
  }
  return Status::Ok();
}

StatusOr<std::pair<Activation, Bytes>> ZmqPeerChannel::Receive(std::chrono::milliseconds timeout) {
  return inbox_->Pop(timeout);
}

StatusOr<std::unique_ptr<PeerLinks>> PeerLinks::Bind(zmq::context_t& ctx, const std::string& endpoint,
                                                     PeerInbox* inbox, const WireLimits& limits) {
  LOWBAND_ASSIGN_OR_RETURN(
      auto server,
      ZmqServerTransport::Bind(ctx, endpoint, static_cast<int64_t>(limits.max_bulk_bytes + limits.max_header_bytes)));
  return std::unique_ptr<PeerLinks>(new PeerLinks(ctx, std::move(server), inbox, limits));
}

Status PeerLinks::Configure(const Welcome& w, const std::string& campaign) {
  const int stages = w.pipeline.stages;
  if (static_cast<int>(w.stage_endpoints.size()) != stages) {
    return InvalidArgument("welcome lists " + std::to_string(w.stage_endpoints.size()) + " stage endpoints for " +
                           std::to_string(stages) + " stages");
  }
  std::set<int> targets;
  if (w.stage > 0) targets.insert(w.stage - 1);
  if (w.stage + 1 < stages) targets.insert(w.stage + 1);
  if (w.stage == 0) targets.insert(stages - 1);
  const bool rate_changed = w.pipeline.link_mbit != link_mbit_;
  stage_ = w.stage;
  stages_ = stages;
  link_mbit_ = w.pipeline.link_mbit;
  campaign_ = campaign;
  sender_ = w.worker_id;
  for (auto it = links_.begin(); it != links_.end();) {
    const bool keep = targets.count(it->first) && !rate_changed &&
                      it->second.endpoint == w.stage_endpoints[static_cast<size_t>(it->first)];
    it = keep ? std::next(it) : links_.erase(it);
  }
  for (int s : targets) {
    if (links_.count(s)) continue;
    const std::string& endpoint = w.stage_endpoints[static_cast<size_t>(s)];
    if (endpoint.empty()) return InvalidArgument("no peer endpoint for stage " + std::to_string(s));
    LOWBAND_ASSIGN_OR_RETURN(
        std::unique_ptr<ZmqClientTransport> client,
        ZmqClientTransport::Connect(ctx_, endpoint, "",
                                    static_cast<int64_t>(limits_.max_bulk_bytes + limits_.max_header_bytes)));
    Link link;
    link.endpoint = endpoint;
    if (link_mbit_ > 0) {
      LOWBAND_ASSIGN_OR_RETURN(auto throttled, ThrottledTransport::Create(std::move(client), link_mbit_ * 1e6,
                                                                          std::chrono::microseconds(0)));
      link.throttled = throttled.get();
      link.transport = std::move(throttled);
    } else {
      link.transport = std::move(client);
    }
    links_[s] = std::move(link);
    LOG_INFO("peer link", {"stage", w.stage}, {"to_stage", s}, {"endpoint", endpoint}, {"link_mbit", link_mbit_});
  }
  return Status::Ok();
}

void PeerLinks::OnReadable() {
  Inbound in;
  for (int i = 0; i < 256 && server_->TryReceive(&in); ++i) {
    uint64_t bytes = 0;
    for (const auto& fr : in.frames) bytes += fr.size();
    auto msg = DecodeMessage(std::move(in.frames), limits_);
    if (!msg.ok()) {
      ++rejected_;
      LOG_WARN("peer message rejected", {"reason", msg.status().ToString()});
      continue;
    }
    auto* a = std::get_if<Activation>(&msg->body);
    if (a == nullptr || static_cast<int>(a->stage) >= stages_ || static_cast<int>(a->stage) == stage_) {
      ++rejected_;
      LOG_WARN("peer message rejected", {"kind", BodyName(msg->body)},
               {"from_stage", a ? static_cast<long long>(a->stage) : -1LL});
      continue;
    }
    Boundary& b = boundaries_[static_cast<int>(a->stage)];
    b.bytes_received += bytes;
    ++b.messages_received;
    if (!inbox_->Push(std::move(*a), std::move(msg->bulk))) {
      LOG_WARN("peer inbox full; oldest activation dropped", {"stage", stage_});
    }
  }
}

const char* PeerLinks::KindName(int kind) {
  switch (kind) {
    case kForward: return "forward";
    case kBackward: return "backward";
    case kLabels: return "labels";
    case kEval: return "eval";
  }
  return "unknown";
}

static_assert(int{PeerLinks::kForward} == int{PeerTraffic::kForward} &&
                  int{PeerLinks::kBackward} == int{PeerTraffic::kBackward} &&
                  int{PeerLinks::kLabels} == int{PeerTraffic::kLabels} && int{PeerLinks::kEval} == int{PeerTraffic::kEval} &&
                  int{PeerLinks::kKinds} == int{PeerTraffic::kKinds},
              "PeerLinks kinds are the wire's PeerTraffic kinds");

std::vector<PeerTraffic> PeerLinks::TakeTraffic() {
  std::vector<PeerTraffic> out;
  for (const auto& [to, b] : boundaries_) {
    Boundary& seen = reported_[to];
    for (int k = 0; k < kKinds; ++k) {
      const uint64_t messages = b.kind_messages_sent[k] - seen.kind_messages_sent[k];
      if (messages == 0) continue;
      out.push_back(PeerTraffic{static_cast<uint32_t>(stage_), static_cast<uint32_t>(to), static_cast<uint8_t>(k),
                                messages, b.kind_bytes_sent[k] - seen.kind_bytes_sent[k],
                                b.kind_bulk_bytes_sent[k] - seen.kind_bulk_bytes_sent[k]});
    }
    seen = b;
  }
  return out;
}

void PeerLinks::LogTotals() const {
  for (const auto& [to, b] : boundaries_) {
    auto per = [&b](int k, const uint64_t* bytes) {
      return b.kind_messages_sent[k] ? static_cast<double>(bytes[k]) / b.kind_messages_sent[k] : 0.0;
    };
    LOG_INFO("peer link totals", {"stage", stage_}, {"to_stage", to}, {"bytes_sent", b.bytes_sent},
             {"bytes_received", b.bytes_received}, {"forward_messages", b.kind_messages_sent[kForward]},
             {"forward_bytes_per_message", per(kForward, b.kind_bytes_sent)},
             {"forward_bulk_per_message", per(kForward, b.kind_bulk_bytes_sent)},
             {"backward_messages", b.kind_messages_sent[kBackward]},
             {"backward_bytes_per_message", per(kBackward, b.kind_bytes_sent)},
             {"backward_bulk_per_message", per(kBackward, b.kind_bulk_bytes_sent)},
             {"labels_bytes", b.kind_bytes_sent[kLabels]},
             {"eval_bytes", b.kind_bytes_sent[kEval]});
  }
}

void PeerLinks::Send(PeerSend s) {
  auto it = links_.find(s.to_stage);
  if (it == links_.end()) {
    LOG_WARN("no peer link for activation", {"stage", stage_}, {"to_stage", s.to_stage});
    return;
  }
  const int kind = s.header.labels ? kLabels : s.header.eval ? kEval : s.header.backward ? kBackward : kForward;
  Message m;
  m.campaign_id = campaign_;
  m.sender_id = sender_;
  m.seq = ++seq_;
  m.body = std::move(s.header);
  m.bulk = std::move(s.bulk);
  const uint64_t bulk_bytes = m.bulk.size();
  Frames frames = EncodeMessage(std::move(m));
  uint64_t bytes = 0;
  for (const auto& fr : frames) bytes += fr.size();
  Status st = it->second.transport->Send("", std::move(frames));
  if (!st.ok()) {
    LOG_WARN("peer send failed", {"stage", stage_}, {"to_stage", s.to_stage}, {"reason", st.ToString()});
    return;
  }
  Boundary& b = boundaries_[s.to_stage];
  b.bytes_sent += bytes;
  ++b.messages_sent;
  b.kind_bytes_sent[kind] += bytes;
  ++b.kind_messages_sent[kind];
  b.kind_bulk_bytes_sent[kind] += bulk_bytes;
}

std::optional<std::chrono::microseconds> PeerLinks::Pump() {
  std::optional<std::chrono::microseconds> next;
  for (auto& [stage, link] : links_) {
    if (link.throttled == nullptr) continue;
    auto wait = link.throttled->Pump();
    if (wait && (!next || *wait < *next)) next = wait;
  }
  return next;
}

}  // namespace lowband
