// Bytes, Frame and Frames: the unit transports move (a multipart message of
// frames) and the wire format encodes into. The one header both net/ and
// protocol/ need, so neither depends on the other.
//
// A Frame is a byte buffer shared by reference: copying a Frame (a payload
// sent to many peers, a message handed to a transport) shares the buffer and
// copies no bytes; the ZeroMQ transport hands the same buffer to libzmq
// without a copy and releases it when libzmq is done. A Frame reads like a
// `const Bytes&` (and converts to one). Writing through a Frame (Mutable(),
// resize, push_back...) first makes its buffer its own if anyone else holds
// it (copy on write), so a shared payload is never changed under another
// holder; Mutable() is the way to write. Moving a Frame out into Bytes takes the buffer without a copy when
// no one else holds it.
//
// Threads: a Frame object belongs to one thread; its buffer may be held by
// Frames on several threads (the reference count is atomic) and is only read
// while shared.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <utility>
#include <vector>

namespace lowband {

using Bytes = std::vector<uint8_t>;

class Frame {
 public:
  Frame() = default;
  Frame(Bytes bytes) : buf_(std::make_shared<Bytes>(std::move(bytes))) {}  // NOLINT: implicit by design
  // Shares `buf` with whoever made it: a producer that recycles buffers (the
  // CUDA encoder) reuses one once no Frame holds it. Writes still copy.
  explicit Frame(std::shared_ptr<Bytes> buf) : buf_(std::move(buf)) {}
  Frame(std::initializer_list<uint8_t> bytes) : Frame(Bytes(bytes)) {}
  Frame(size_t n, uint8_t value) : Frame(Bytes(n, value)) {}
  template <typename It, typename = decltype(*std::declval<It>())>
  Frame(It first, It last) : Frame(Bytes(first, last)) {}

  // Reading.
  size_t size() const { return buf_ ? buf_->size() : 0; }
  bool empty() const { return size() == 0; }
  const uint8_t* data() const { return buf_ ? buf_->data() : nullptr; }
  const Bytes& bytes() const { return buf_ ? *buf_ : Empty(); }
  operator const Bytes&() const& { return bytes(); }  // NOLINT: implicit by design
  Bytes::const_iterator begin() const { return bytes().begin(); }
  Bytes::const_iterator end() const { return bytes().end(); }
  uint8_t operator[](size_t i) const { return (*buf_)[i]; }
  // The buffer, for a holder that outlives this Frame (a transport).
  std::shared_ptr<const Bytes> Share() const { return buf_ ? buf_ : std::make_shared<Bytes>(); }
  // True when another Frame (or a transport) holds the same buffer.
  bool shared() const { return buf_ && buf_.use_count() > 1; }

  // Writing (copy on write). Writes go through Mutable() explicitly, so
  // reading a Frame never copies its buffer by accident.
  void resize(size_t n) { Mutable().resize(n); }
  void push_back(uint8_t b) { Mutable().push_back(b); }
  void pop_back() { Mutable().pop_back(); }
  void clear() { buf_.reset(); }
  template <typename... Args>
  void assign(Args&&... args) {
    buf_ = std::make_shared<Bytes>();
    buf_->assign(std::forward<Args>(args)...);
  }
  Bytes& Mutable() {
    if (!buf_) {
      buf_ = std::make_shared<Bytes>();
    } else if (buf_.use_count() > 1) {
      buf_ = std::make_shared<Bytes>(*buf_);
    }
    return *buf_;
  }

  // Moving out: the buffer itself when this Frame holds the only reference.
  operator Bytes() && {  // NOLINT: implicit by design
    if (!buf_) return Bytes();
    Bytes out = buf_.use_count() == 1 ? std::move(*buf_) : *buf_;
    buf_.reset();
    return out;
  }

  friend bool operator==(const Frame& a, const Frame& b) { return a.bytes() == b.bytes(); }
  friend bool operator==(const Frame& a, const Bytes& b) { return a.bytes() == b; }
  friend bool operator==(const Bytes& a, const Frame& b) { return a == b.bytes(); }
  friend bool operator!=(const Frame& a, const Frame& b) { return !(a == b); }
  friend bool operator!=(const Frame& a, const Bytes& b) { return !(a == b); }
  friend bool operator!=(const Bytes& a, const Frame& b) { return !(a == b); }

 private:
  static const Bytes& Empty() {
    static const Bytes empty;
    return empty;
  }
  std::shared_ptr<Bytes> buf_;
};

using Frames = std::vector<Frame>;

}  // namespace lowband
