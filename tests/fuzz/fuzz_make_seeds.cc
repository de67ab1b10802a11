// Writes the seed corpus of every fuzz target (tests/fuzz/corpus/<target>/)
// from the real encoders, in the input formats of tests/fuzz/fuzz_inputs.h:
//   fuzz_message     every body kind via EncodeMessage (blob bodies with their
//                    bulk frame), plus frame-count and tight-limit variants;
//   fuzz_update      every codec via its packer (PackDenseFp32, PackDenseBf16,
//                    PackInt8, PackSparseLoCo at several topk, PackAggregate
//                    for sparse_fp32), some with aggregation partners;
//   fuzz_checkpoint  WriteCheckpoint files (with and without momentum, and a
//                    version-1 rewrite), raw and with the trailer left to the
//                    target;
//   fuzz_config      configs/*.yaml, configs/sites/*.yaml and small snippets.
// Deterministic: rerunning it rewrites the same files.
//
//   fuzz_make_seeds OUT_DIR SOURCE_DIR
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "base/hash.h"
#include "coordinator/checkpoint.h"
#include "codec/codec.h"
#include "protocol/wire.h"
#include "tests/fuzz/fuzz_inputs.h"

namespace lowband::fuzz {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "fuzz_make_seeds: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T Must(StatusOr<T> v, const char* what) {
  if (!v.ok()) Die(std::string(what) + ": " + v.status().ToString());
  return std::move(*v);
}

void WriteBytes(const fs::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) Die("cannot write " + path.string());
}

std::vector<uint8_t> ReadBytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Die("cannot read " + path.string());
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// ---------------------------------------------------------------- messages

Bytes MakeBulk(size_t n, uint8_t salt) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 131 + salt);
  return b;
}

BlobHeader BlobFor(const Bytes& bulk, CodecKind codec) {
  BlobHeader h;
  h.codec = codec;
  h.num_elements = bulk.size() / 4;
  h.layout_digest = 0x1234'5678'9abc'def0ull;
  h.byte_length = bulk.size();
  h.checksum = BulkChecksum(bulk.data(), bulk.size());
  h.topk = codec == CodecKind::kSparseLoCo ? 64 : 0;
  return h;
}

Message Wrap(Body body, Bytes bulk = {}) {
  Message m;
  m.campaign_id = "quickstart";
  m.sender_id = "worker-1";
  m.seq = 42;
  m.body = std::move(body);
  m.bulk = std::move(bulk);
  return m;
}

std::vector<std::pair<std::string, Message>> SampleMessages() {
  std::vector<std::pair<std::string, Message>> out;
  out.emplace_back("hello", Wrap(Hello{"site-a", "cuda:0", 80ull << 30, 12.5, 1000000, 100000, "", ModelSpecShape(0, 0, 0, 0, 0), 1}));
  Welcome w;
  w.worker_id = "w-0001";
  w.codec.kind = CodecKind::kSparseLoCo;
  w.codec.topk = 64;
  w.data_seed = 99;
  w.worker_index = 2;
  w.heartbeat_interval_ms = 500;
  w.heartbeat_timeout_ms = 10000;
  out.emplace_back("welcome", Wrap(w));
  {
    Welcome f = w;  // FPLD: settings and a probe set of 2 contexts
    f.model.context = 16;
    f.fpld.enabled = true;
    f.fpld.contexts = 2;
    f.fpld.positions = 4;
    f.fpld.probe_tokens.assign(2 * 16, 'a');
    out.emplace_back("welcome_fpld", Wrap(f));
    Hello h{"site-c", "cpu", 1ull << 30, 20.0, 1000, 100, "", ModelSpecShape(0, 0, 0, 0, 0), 1};
    h.own_model = ModelSpecShape(2, 96, 4, 0, 0);
    out.emplace_back("hello_own_model", Wrap(h));
    Hello r{"site-d", "cuda:0", 1ull << 30, 2.0, 1000, 100, "", ModelSpecShape(0, 0, 0, 0, 0), 1};
    r.ranks = 2;
    out.emplace_back("hello_ranks", Wrap(r));
  }
  {
    Bytes texts = PackTextList({"what is a monad", "wisdom"});
    FcragRequest rq;
    rq.id = 4;
    rq.kind = FcragKind::kScore;
    rq.bits = 8;
    rq.count = 2;
    rq.blob = BlobFor(texts, CodecKind::kDenseFp32);
    out.emplace_back("fcrag_request", Wrap(rq, texts));
    Bytes bulk = MakeBulk(24, 6);
    FcragReply rp;
    rp.id = 4;
    rp.kind = FcragKind::kCalibrate;
    rp.count = 12;
    rp.blob = BlobFor(bulk, CodecKind::kDenseFp32);
    out.emplace_back("fcrag_reply", Wrap(rp, bulk));
    Welcome f = w;
    f.fcrag.enabled = true;
    f.fcrag.labels = {"computers", "science", "food"};
    out.emplace_back("welcome_fcrag", Wrap(f));
  }
  {
    Bytes bulk = MakeBulk(64, 5);
    LogitUpload u;
    u.round = 3;
    u.train_loss = 2.5;
    u.tokens = 5120;
    u.rows = 2;
    u.vocab = 256;
    u.bits = 1;
    u.clip = 8;
    u.blob = BlobFor(bulk, CodecKind::kDenseFp32);
    out.emplace_back("logit_upload", Wrap(u, bulk));
  }
  out.emplace_back("model_sync", Wrap(ModelSync{7, 0xabcdefull, BlobFor(MakeBulk(64, 1), CodecKind::kDenseFp32)}));
  out.emplace_back("sync_pull", Wrap(SyncPull{7, 0xabcdefull, 65536, 65536}));
  {
    Bytes bulk = MakeBulk(64, 5);
    const uint64_t checksum = BulkChecksum(bulk.data(), bulk.size());
    out.emplace_back("sync_chunk", Wrap(SyncChunk{7, 0xabcdefull, 0, static_cast<uint32_t>(bulk.size()), checksum}, bulk));
  }
  out.emplace_back("heartbeat", Wrap(Heartbeat{12, "training"}));
  out.emplace_back("campaign_end", Wrap(CampaignEnd{"all rounds done", 41}));
  out.emplace_back("round_start", Wrap(RoundStart{5, 0x77ull, 30, 60000}));
  {
    Bytes bulk = MakeBulk(48, 2);
    out.emplace_back(
        "delta_upload",
        Wrap(DeltaUpload{9, 0x1111ull, 2.375, 123456, 33.25, BlobFor(bulk, CodecKind::kSparseLoCo), {}, -1, 0}, bulk));
  }
  {
    Bytes bulk = MakeBulk(40, 3);
    out.emplace_back("aggregate", Wrap(Aggregate{9, 0x2222ull, 3, BlobFor(bulk, CodecKind::kSparseFp32)}, bulk));
  }
  out.emplace_back("aggregate_empty_bulk", Wrap(Aggregate{9, 0x2222ull, 3, BlobFor(Bytes{}, CodecKind::kDenseFp32)}));
  out.emplace_back("eval_report", Wrap(EvalReport{9, 1.875, 4096, 0x3333ull, {}, {}}));
  out.emplace_back("eval_report_ranks", Wrap(EvalReport{9, 1.875, 4096, 0x3333ull, {}, {0x3333ull, 0x3333ull}}));
  out.emplace_back("error", Wrap(Error{ErrorCode::kWrongRound, "round 3 is stale", 3}));
  out.emplace_back("control_request", Wrap(ControlRequest{"workers", {"--json", "", "x y"}}));
  out.emplace_back("control_response", Wrap(ControlResponse{true, "2 workers", "{\"workers\":2}"}));
  {
    Bytes bulk = MakeBulk(2 * 4 * 8 * 2, 4);  // bf16 [2, 4, 8]
    BlobHeader blob = BlobFor(bulk, CodecKind::kDenseFp32);
    blob.num_elements = 2 * 4 * 8;
    out.emplace_back("activation", Wrap(Activation{3, 1, 0, 0, false, 2, 4, 8, WireDtype::kBf16, blob}, bulk));
  }
  return out;
}

std::vector<uint8_t> MessageInput(const Frames& frames, uint8_t extra_flags) {
  std::vector<uint8_t> in;
  if (frames.size() == 1) {
    in.push_back(extra_flags);
    in.insert(in.end(), frames[0].begin(), frames[0].end());
    return in;
  }
  in.push_back(static_cast<uint8_t>((frames.size() == 3 ? 2 : 1) | extra_flags));
  PutU32(&in, static_cast<uint32_t>(frames[0].size()));
  in.insert(in.end(), frames[0].begin(), frames[0].end());
  in.insert(in.end(), frames[1].begin(), frames[1].end());
  return in;
}

void WriteMessageSeeds(const fs::path& dir) {
  for (const auto& [name, msg] : SampleMessages()) {
    const Frames frames = EncodeMessage(msg);
    WriteBytes(dir / name, MessageInput(frames, 0));
    if (name == "heartbeat") {
      // A header-only body with a bulk frame attached; tight limits.
      WriteBytes(dir / "heartbeat_with_bulk", MessageInput(Frames{frames[0], Bytes{1, 2, 3}}, 0));
      WriteBytes(dir / "heartbeat_tight", MessageInput(frames, kMessageTightLimits));
    }
    if (name == "model_sync") {
      WriteBytes(dir / "model_sync_three_frames", MessageInput(Frames{frames[0], frames[1], Bytes{}}, 0));
      WriteBytes(dir / "model_sync_header_only", MessageInput(Frames{frames[0]}, 0));
    }
  }
}

// ---------------------------------------------------------------- updates

// Deterministic values with spread-out exponents.
float Value(uint64_t i) {
  const uint64_t h = (i + 1) * 0x9e3779b97f4a7c15ull;
  const float mant = static_cast<float>(static_cast<int64_t>(h >> 40) - (1ll << 23)) / static_cast<float>(1 << 23);
  return std::ldexp(mant, static_cast<int>((h >> 8) % 16) - 8);
}

std::vector<uint8_t> UpdateInput(const Encoded& enc, int topk, uint8_t flags) {
  std::vector<uint8_t> in;
  in.push_back(static_cast<uint8_t>(enc.header.codec));
  in.push_back(flags);
  PutU16(&in, static_cast<uint16_t>(topk));
  PutU32(&in, 0);
  in.insert(in.end(), enc.bulk.begin(), enc.bulk.end());
  return in;
}

SparseLoCoParts LoCoParts(const LayoutPlan& plan) {
  SparseLoCoParts parts;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    for (int j = 0; j < 4; ++j) parts.tables.push_back(Value(16 * t + j));
  }
  uint64_t e = 0;
  for (const Chunk& ch : plan.chunks) {
    // k evenly spread local indices, strictly increasing.
    const int64_t n = ch.numel();
    for (int32_t j = 0; j < ch.k; ++j, ++e) {
      parts.indices.push_back(static_cast<uint16_t>(j * n / ch.k));
      parts.codes.push_back(static_cast<uint8_t>((e * 7) & 3));
    }
  }
  return parts;
}

// A sparse update with `per_chunk` spread entries per chunk.
Update SparseUpdate(const LayoutPlan& plan, int per_chunk) {
  Update u;
  u.dense = false;
  u.begin.push_back(0);
  uint64_t e = 0;
  for (const Chunk& ch : plan.chunks) {
    const int64_t n = ch.numel();
    const int64_t k = std::min<int64_t>(per_chunk, n);
    for (int64_t j = 0; j < k; ++j, ++e) {
      u.index.push_back(static_cast<uint16_t>(j * n / k));
      u.value.push_back(Value(e));
    }
    u.begin.push_back(static_cast<uint32_t>(u.index.size()));
  }
  return u;
}

void WriteUpdateSeeds(const fs::path& dir) {
  const ParamLayout layout = FuzzLayout();
  const int64_t p = layout.numel();
  const LayoutPlan plan64 = PlanLayout(layout, 64);

  std::vector<float> values(static_cast<size_t>(p));
  for (int64_t i = 0; i < p; ++i) values[i] = Value(i);
  WriteBytes(dir / "dense_fp32", UpdateInput(Must(PackDenseFp32(layout, values), "dense_fp32"), 64, 0));

  std::vector<uint16_t> bits(static_cast<size_t>(p));
  for (int64_t i = 0; i < p; ++i) {
    uint32_t f;
    std::memcpy(&f, &values[i], 4);
    bits[i] = static_cast<uint16_t>(f >> 16);
  }
  WriteBytes(dir / "dense_bf16", UpdateInput(Must(PackDenseBf16(layout, bits), "dense_bf16"), 64, 0));

  Int8Parts int8;
  for (size_t c = 0; c < plan64.chunks.size(); ++c) int8.scales.push_back(0.001f * static_cast<float>(c + 1));
  for (int64_t i = 0; i < p; ++i) int8.q.push_back(static_cast<int8_t>(static_cast<int>(i * 37 % 255) - 127));
  WriteBytes(dir / "int8", UpdateInput(Must(PackInt8(layout, plan64, int8), "int8"), 64, 0));

  for (int topk : {1, 64, 1000, 4096}) {
    const LayoutPlan plan = PlanLayout(layout, topk);
    const Encoded enc = Must(PackSparseLoCo(layout, plan, LoCoParts(plan)), "sparseloco");
    WriteBytes(dir / ("sparseloco_topk" + std::to_string(topk)), UpdateInput(enc, topk, 0));
    if (topk == 64) {
      const uint8_t partners[] = {0x40, 0x80, 0xc0, 0x20 | 0x80, 0x20 | 0xc0};
      for (uint8_t f : partners) {
        char name[64];
        std::snprintf(name, sizeof(name), "sparseloco_topk64_flags%02x", f);
        WriteBytes(dir / name, UpdateInput(enc, topk, f));
      }
    }
  }

  for (int per_chunk : {0, 1, 5}) {
    const Encoded enc = Must(PackAggregate(layout, plan64, SparseUpdate(plan64, per_chunk)), "sparse_fp32");
    if (enc.header.codec != CodecKind::kSparseFp32) Die("PackAggregate did not choose sparse_fp32");
    WriteBytes(dir / ("sparse_fp32_" + std::to_string(per_chunk)), UpdateInput(enc, 64, 0));
    if (per_chunk == 5) {
      WriteBytes(dir / "sparse_fp32_5_flags40", UpdateInput(enc, 64, 0x40));
      WriteBytes(dir / "sparse_fp32_5_flagsa0", UpdateInput(enc, 64, 0xa0));
      WriteBytes(dir / "sparse_fp32_5_flagse0", UpdateInput(enc, 64, 0xe0));
    }
  }

  for (int per_chunk : {0, 1, 5, 200}) {
    const Update support = SparseUpdate(plan64, per_chunk);
    Sparse2BitParts parts;
    parts.tables.assign(4 * plan64.tensors.size(), 0.25f);
    parts.begin = support.begin;
    parts.indices = support.index;
    for (size_t i = 0; i < parts.indices.size(); ++i) parts.codes.push_back(static_cast<uint8_t>(i & 3));
    const Encoded enc = Must(PackSparse2Bit(layout, plan64, parts), "sparse_2bit");
    WriteBytes(dir / ("sparse_2bit_" + std::to_string(per_chunk)), UpdateInput(enc, 64, 0));
  }
}

// ---------------------------------------------------------------- checkpoints

void WriteCheckpointSeeds(const fs::path& dir, const fs::path& scratch) {
  Checkpoint ckpt;
  ckpt.round = 12;
  ckpt.campaign = "quickstart";
  ckpt.params.layout.tensors = {TensorSpec{"emb", {3, 4}}, TensorSpec{"bias", {5}}, TensorSpec{"gain", {}}};
  for (int i = 0; i < 18; ++i) ckpt.params.values.push_back(Value(i));
  for (int i = 0; i < 18; ++i) ckpt.outer_momentum.push_back(Value(100 + i));

  auto emit = [&](const std::string& name, const Checkpoint& c) {
    const fs::path file = scratch / (name + ".lbck");
    Status st = WriteCheckpoint(file.string(), c);
    if (!st.ok()) Die("WriteCheckpoint: " + st.ToString());
    std::vector<uint8_t> bytes = ReadBytes(file);
    fs::remove(file);
    std::vector<uint8_t> raw{0};
    raw.insert(raw.end(), bytes.begin(), bytes.end());
    WriteBytes(dir / (name + "_raw"), raw);
    std::vector<uint8_t> body{1};
    body.insert(body.end(), bytes.begin(), bytes.end() - 8);  // the target appends the trailer
    WriteBytes(dir / (name + "_fixsum"), body);
    return bytes;
  };
  emit("momentum", ckpt);
  Checkpoint plain = ckpt;
  plain.outer_momentum.clear();
  const std::vector<uint8_t> current = emit("no_momentum", plain);
  Checkpoint down = ckpt;
  down.downlink_error.assign(ckpt.params.values.size(), 0.25f);
  emit("downlink", down);

  // Version 1: no momentum or downlink section (drop their zero counts
  // before the trailer), and an FNV-1a values digest.
  std::vector<uint8_t> v1{1};
  v1.insert(v1.end(), current.begin(), current.end() - 24);
  v1[1 + 4] = 1;
  const size_t digest_at = 1 + 4 + 4 + 4 + 4 + plain.campaign.size();  // magic, version, round, name length, name
  const uint64_t fnv = Fnv1a64(plain.params.values.data(), plain.params.values.size() * sizeof(float));
  for (int i = 0; i < 8; ++i) v1[digest_at + i] = static_cast<uint8_t>(fnv >> (8 * i));
  WriteBytes(dir / "version1_fixsum", v1);

  Checkpoint empty;
  empty.campaign = "";
  emit("empty_layout", empty);
}

// ---------------------------------------------------------------- configs

void WriteConfigSeeds(const fs::path& dir, const fs::path& source) {
  for (const char* rel : {"configs/quickstart.yaml", "configs/example-campaign.yaml", "configs/sites/site-a.yaml"}) {
    const fs::path path = source / rel;
    WriteBytes(dir / path.filename(), ReadBytes(path));
  }
  const std::pair<const char*, const char*> snippets[] = {
      {"campaign_min", "campaign: {name: c1}\n"},
      {"campaign_site_file", "campaign: {name: c2, rounds: 3}\nsites:\n  - file: site.yaml\n  - file: bad.yaml\n"},
      {"campaign_codecs",
       "campaign: {name: c3}\ncodec: {name: sparseloco, density: 0.015625, error_feedback: 0}\n"
       "quorum: {expected_workers: 2, min_workers: 1, aggregation: mean_of_choosers, max_norm_ratio: 0}\n"
       "outer_optimizer: {name: fedavg, server_lr: 1.0}\n"
       "network: {bind: 'ipc:///tmp/x', control: 'tcp://[::1]:1', metrics: '127.0.0.1:9100'}\n"
       "checkpoint: {every: 2, keep: 1}\n"},
      {"campaign_anchors", "campaign: &c {name: c4}\nmodel: &m {layers: 1, d_model: 8, heads: 2}\nx: *m\n"},
      {"site_inline",
       "site: {name: s1, device: 'cuda:1', threads: 4, metrics: 'localhost:9101'}\n"
       "data: {dir: /tmp, files: [], validation_fraction: 0.5}\n"},
      {"bad_types", "campaign: {name: [1, 2], rounds: -1}\nmodel: {layers: 1e99, vocab: 0x100}\n"},
  };
  for (const auto& [name, text] : snippets) {
    WriteBytes(dir / name, std::vector<uint8_t>(text, text + std::strlen(text)));
  }
}

}  // namespace
}  // namespace lowband::fuzz

int main(int argc, char** argv) {
  using namespace lowband::fuzz;
  if (argc != 3) {
    std::fprintf(stderr, "usage: fuzz_make_seeds OUT_DIR SOURCE_DIR\n");
    return 64;
  }
  const fs::path out = argv[1];
  const fs::path source = argv[2];
  for (const char* target : {"fuzz_message", "fuzz_update", "fuzz_checkpoint", "fuzz_config"}) {
    fs::create_directories(out / target);
  }
  const fs::path scratch = fs::temp_directory_path() / "lowband-fuzz-seeds";
  fs::create_directories(scratch);
  WriteMessageSeeds(out / "fuzz_message");
  WriteUpdateSeeds(out / "fuzz_update");
  WriteCheckpointSeeds(out / "fuzz_checkpoint", scratch);
  WriteConfigSeeds(out / "fuzz_config", source);
  fs::remove_all(scratch);
  return 0;
}
