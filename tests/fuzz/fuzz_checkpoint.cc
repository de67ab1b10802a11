// libFuzzer target: ReadCheckpoint (coordinator/checkpoint.h) on hostile files.
// Input format: tests/fuzz/fuzz_inputs.h. The reader takes a path, so the
// input goes to one file per process (mkstemp, rewritten each run) in a
// directory on /dev/shm when it is writable (tmpfs: no disk I/O, and the
// fsyncs of WriteCheckpoint cost nothing), else under $TMPDIR or /tmp. The
// directory is removed at exit.
//
// Checked property of every accepted file: WriteCheckpoint of what was read
// reads back, and a version-2 file is rewritten byte for byte.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "base/hash.h"
#include "coordinator/checkpoint.h"
#include "tests/fuzz/fuzz_inputs.h"

namespace lowband::fuzz {
namespace {

[[noreturn]] void Fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_checkpoint: %s: %s\n", what, detail.c_str());
  std::abort();
}

// LOWBAND_FUZZ_VERBOSE=1 prints each input's verdict (to check what seeds reach).
bool Verbose() {
  static const bool verbose = std::getenv("LOWBAND_FUZZ_VERBOSE") != nullptr;
  return verbose;
}

struct Scratch {
  std::string dir;
  std::string input;   // the file ReadCheckpoint reads
  std::string output;  // where the accepted checkpoint is rewritten
  int fd = -1;

  Scratch() {
    std::string base = "/dev/shm";
    if (::access(base.c_str(), W_OK) != 0) {
      const char* tmp = std::getenv("TMPDIR");
      base = tmp && *tmp ? tmp : "/tmp";
    }
    std::string templ = base + "/lowband-fuzz-ckpt-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) Fail("mkdtemp", templ + ": " + std::strerror(errno));
    dir = templ;
    std::string file = dir + "/input-XXXXXX";
    fd = ::mkstemp(file.data());
    if (fd < 0) Fail("mkstemp", file + ": " + std::strerror(errno));
    input = file;
    output = dir + "/rewritten.lbck";
  }
  ~Scratch() {
    ::close(fd);
    ::unlink(input.c_str());
    ::unlink(output.c_str());
    ::unlink((output + ".tmp").c_str());
    ::rmdir(dir.c_str());
  }

  void Write(const std::vector<uint8_t>& bytes) {
    if (::ftruncate(fd, 0) != 0) Fail("ftruncate", input + ": " + std::strerror(errno));
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::pwrite(fd, bytes.data() + off, bytes.size() - off, static_cast<off_t>(off));
      if (n < 0) {
        if (errno == EINTR) continue;
        Fail("pwrite", input + ": " + std::strerror(errno));
      }
      off += static_cast<size_t>(n);
    }
  }
};

Scratch& Files() {
  static Scratch scratch;  // destroyed at exit, which removes the directory
  return scratch;
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::vector<uint8_t> out;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) Fail("fopen", path + ": " + std::strerror(errno));
  uint8_t buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.insert(out.end(), buf, buf + n);
  std::fclose(f);
  return out;
}

}  // namespace
}  // namespace lowband::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  lowband::fuzz::Files();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowband;
  using namespace lowband::fuzz;
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  std::vector<uint8_t> file(data + 1, data + size);
  // The file's version (bytes 4..7, little-endian) picks its checksum.
  const uint32_t version = file.size() >= 8 ? static_cast<uint32_t>(file[4]) | static_cast<uint32_t>(file[5]) << 8 |
                                                  static_cast<uint32_t>(file[6]) << 16 |
                                                  static_cast<uint32_t>(file[7]) << 24
                                            : 0;
  if (mode & 1) {
    const uint64_t sum = version >= 3 ? Xxh64(file.data(), file.size()) : Fnv1a64(file.data(), file.size());
    for (int i = 0; i < 8; ++i) file.push_back(static_cast<uint8_t>(sum >> (8 * i)));
  }
  Scratch& s = Files();
  s.Write(file);

  StatusOr<Checkpoint> ckpt = ReadCheckpoint(s.input);
  if (Verbose()) std::fprintf(stderr, "fuzz_checkpoint: %s\n", ckpt.ok() ? "read" : ckpt.status().ToString().c_str());
  if (!ckpt.ok()) {
    if (ckpt.status().code() != StatusCode::kCorruption) {
      Fail("a bad file gave a status other than Corruption", ckpt.status().ToString());
    }
    return 0;
  }
  Status st = WriteCheckpoint(s.output, *ckpt);
  if (!st.ok()) Fail("WriteCheckpoint of an accepted checkpoint", st.ToString());
  StatusOr<Checkpoint> again = ReadCheckpoint(s.output);
  if (!again.ok()) Fail("a rewritten checkpoint does not read", again.status().ToString());
  // A file of the current version is rewritten byte for byte (older ones
  // come back in the current format).
  if (version == kCheckpointVersion && ReadAll(s.output) != file) {
    Fail("a current-version checkpoint is not rewritten byte for byte", s.input);
  }
  return 0;
}
