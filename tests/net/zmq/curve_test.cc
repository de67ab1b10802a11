// CurveZMQ key files and the ZAP handler, with real sockets on loopback.
#include "net/zmq/curve.h"

#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <thread>

#include "net/zmq/event_loop.h"
#include "net/zmq/zmq_transport.h"
#include "tests/fakes/temp_dir.h"

namespace lowband {
namespace {

using testing::TempDir;
using Catch::Matchers::Contains;

mode_t Mode(const std::string& path) {
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

TEST_CASE("curve: key files are written with safe modes and read back", "[unit]") {
  TempDir dir;
  auto key = GenerateCurveKey();
  REQUIRE(key.ok());
  REQUIRE(WriteCurveKeyFiles(dir.Path("k"), "site-a", *key).ok());
  CHECK(Mode(dir.Path("k/site-a.key")) == 0600);
  CHECK(Mode(dir.Path("k/site-a.pub")) == 0644);
  auto secret = ReadCurveKeyFile(dir.Path("k/site-a.key"), true);
  REQUIRE(secret.ok());
  CHECK(secret->public_key == key->public_key);
  CHECK(secret->secret_key == key->secret_key);
  auto pub = ReadCurveKeyFile(dir.Path("k/site-a.pub"), false);
  REQUIRE(pub.ok());
  CHECK(pub->public_key == key->public_key);
  CHECK(pub->secret_key.empty());
  // Never overwritten; a .pub is not a secret key; a readable secret is refused.
  CHECK(WriteCurveKeyFiles(dir.Path("k"), "site-a", *key).code() == StatusCode::kFailedPrecondition);
  CHECK_THAT(ReadCurveKeyFile(dir.Path("k/site-a.pub"), true).status().message(), Contains("no secret-key"));
  REQUIRE(::chmod(dir.Path("k/site-a.key").c_str(), 0640) == 0);
  auto loose = ReadCurveKeyFile(dir.Path("k/site-a.key"), true);
  REQUIRE_FALSE(loose.ok());
  CHECK_THAT(loose.status().message(), Contains("chmod 600"));
}

TEST_CASE("curve: malformed key files and allow-lists are refused naming the file", "[unit]") {
  TempDir dir;
  auto a = GenerateCurveKey(), b = GenerateCurveKey();
  REQUIRE((a.ok() && b.ok()));
  const std::string bad = dir.Write("bad.pub", "public-key = \"not a key\"\n");
  CHECK_THAT(ReadCurveKeyFile(bad, false).status().message(), Contains("bad.pub:1"));
  const std::string junk = dir.Write("junk.pub", "hello\n");
  CHECK_THAT(ReadCurveKeyFile(junk, false).status().message(), Contains("junk.pub:1"));
  const std::string mixed = dir.Write("mixed.key", "public-key = \"" + a->public_key + "\"\nsecret-key = \"" +
                                                       b->secret_key + "\"\n");
  ::chmod(mixed.c_str(), 0600);
  CHECK_THAT(ReadCurveKeyFile(mixed, true).status().message(), Contains("does not belong"));
  CHECK(ReadCurveKeyFile(dir.Path("missing.key"), true).status().code() == StatusCode::kNotFound);

  std::filesystem::create_directories(dir.Path("empty"));
  CHECK_THAT(ReadAllowList(dir.Path("empty")).status().message(), Contains("admits nobody"));
  REQUIRE(WriteCurveKeyFiles(dir.Path("list"), "x", *a).ok());
  std::filesystem::copy_file(dir.Path("list/x.pub"), dir.Path("list/y.pub"));
  CHECK_THAT(ReadAllowList(dir.Path("list")).status().message(), Contains("same key"));
}

TEST_CASE("curve: the ZAP handler admits allow-listed keys with their name and refuses others", "[unit]") {
  zmq::context_t ctx;
  auto server_key = GenerateCurveKey(), good = GenerateCurveKey(), stranger = GenerateCurveKey();
  REQUIRE((server_key.ok() && good.ok() && stranger.ok()));
  auto zap = ZapHandler::Create(ctx, {{"workers", {{good->public_key, "site-a"}}}});
  REQUIRE(zap.ok());
  CurveServerOptions so{server_key->secret_key, "workers"};
  auto server = ZmqServerTransport::Bind(ctx, "tcp://127.0.0.1:*", 1 << 20, &so);
  REQUIRE(server.ok());
  EventLoop loop;
  loop.AddSocket((*zap)->socket(), [&] { (*zap)->OnReadable(); });
  std::vector<Inbound> got;
  loop.AddSocket((*server)->socket(), [&] {
    Inbound in;
    while ((*server)->TryReceive(&in)) got.push_back(in);
  });
  auto connect = [&](const CurveKey& k) {
    CurveClientOptions co{server_key->public_key, k.public_key, k.secret_key};
    auto c = ZmqClientTransport::Connect(ctx, (*server)->endpoint(), "", 1 << 20, &co);
    REQUIRE(c.ok());
    REQUIRE((*c)->Send("", Frames{Bytes{1, 2, 3}}).ok());
    return std::move(c).value();
  };
  auto ok_client = connect(*good);
  auto bad_client = connect(*stranger);
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  while (std::chrono::steady_clock::now() < end) REQUIRE(loop.RunOnce(std::chrono::milliseconds(20)).ok());
  REQUIRE(got.size() == 1);  // the stranger's message never arrives
  CHECK(got[0].user_id == "site-a");
  CHECK(got[0].frames == Frames{Bytes{1, 2, 3}});
  CHECK((*zap)->accepted() >= 1);
  CHECK((*zap)->refused() >= 1);
}

}  // namespace
}  // namespace lowband
