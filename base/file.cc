#include "base/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace lowband {
namespace {

std::string Errno(const std::string& what, const std::string& path, int err) {
  return path + ": " + what + ": " + std::strerror(err);
}

Status WriteAll(int fd, const std::string& data, const std::string& path) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Internal(Errno("write", path, errno));
    }
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

// Makes the rename itself durable: without it a crash can leave the old
// directory entry even though the new file's data reached the disk.
Status SyncDirectory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Internal(Errno("open directory", dir, errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return Internal(Errno("fsync directory", dir, err));
  return Status::Ok();
}

}  // namespace

Status WriteFileAtomically(const std::string& path, const std::string& data,
                           const std::function<void()>& before_rename) {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Internal(dir.string() + ": create directories: " + ec.message());

  // A fixed temp name: one writer per path, and a leftover from a crash is
  // simply overwritten.
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Internal(Errno("open", tmp, errno));
  Status st = WriteAll(fd, data, tmp);
  if (st.ok() && ::fsync(fd) != 0) st = Internal(Errno("fsync", tmp, errno));
  if (::close(fd) != 0 && st.ok()) st = Internal(Errno("close", tmp, errno));
  if (st.ok() && before_rename) before_rename();
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) st = Internal(Errno("rename to " + path, tmp, errno));
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return SyncDirectory(dir.string());
}

StatusOr<std::string> ReadWholeFile(const std::string& path, uint64_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return err == ENOENT ? NotFound(Errno("open", path, err)) : Internal(Errno("open", path, err));
  }
  struct stat sb {};
  if (::fstat(fd, &sb) != 0) {
    const int err = errno;
    ::close(fd);
    return Internal(Errno("stat", path, err));
  }
  if (!S_ISREG(sb.st_mode)) {
    ::close(fd);
    return InvalidArgument(path + ": not a regular file");
  }
  if (static_cast<uint64_t>(sb.st_size) > max_bytes) {
    ::close(fd);
    return InvalidArgument(path + ": " + std::to_string(sb.st_size) + " bytes, more than the " +
                           std::to_string(max_bytes) + " allowed");
  }
  std::string data(static_cast<size_t>(sb.st_size), '\0');
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::read(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      ::close(fd);
      return Internal(Errno(n < 0 ? "read" : "read (file shrank)", path, err));
    }
    off += static_cast<size_t>(n);
  }
  ::close(fd);
  return data;
}

}  // namespace lowband
