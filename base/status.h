// Status and StatusOr<T>: the error channel between lowband modules.
// Thread-compatible value types; no exception crosses a module boundary.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>

namespace lowband {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,
  kNotFound,
  kAlreadyExists,
  kFailedPrecondition,
  kOutOfRange,
  kUnavailable,
  kDeadlineExceeded,
  kCorruption,
  kInternal,
};

const char* StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message)
      : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "InvalidArgument: message" or "OK".
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status OutOfRange(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status DeadlineExceeded(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }
inline Status Corruption(std::string m) { return {StatusCode::kCorruption, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT
    assert(!status_.ok() && "StatusOr built from an OK status");
    if (status_.ok()) status_ = Internal("StatusOr built from an OK status");
  }
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace lowband

#define LOWBAND_RETURN_IF_ERROR(expr)        \
  do {                                       \
    ::lowband::Status _st = (expr);          \
    if (!_st.ok()) return _st;               \
  } while (0)

#define LOWBAND_CONCAT_INNER(a, b) a##b
#define LOWBAND_CONCAT(a, b) LOWBAND_CONCAT_INNER(a, b)
#define LOWBAND_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()
#define LOWBAND_ASSIGN_OR_RETURN(lhs, expr) \
  LOWBAND_ASSIGN_OR_RETURN_IMPL(LOWBAND_CONCAT(_statusor_, __LINE__), lhs, expr)

// A broken invariant is a bug: log and abort (systemd restarts the daemon).
#define LOWBAND_CHECK(cond)                                             \
  do {                                                                  \
    if (!(cond)) ::lowband::internal::CheckFailed(__FILE__, __LINE__, #cond); \
  } while (0)

namespace lowband::internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* cond);
}
