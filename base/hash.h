// Hashes of byte ranges: FNV-1a 64 (parameter digests, layout digests) and
// XXH64 (bulk-frame checksums), and the hex form both are logged in. Pure
// functions, any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace lowband {

// FNV-1a 64 of a byte range, continuing from `seed`.
uint64_t Fnv1a64(const void* data, size_t size, uint64_t seed = 0xcbf29ce484222325ull);
// XXH64 (the xxHash 64-bit algorithm, same values as `xxh64sum`; Debian's
// libxxhash): the checksum of bulk frames. FNV-1a goes a byte at a time (~4 cycles a byte,
// 4 ms for a 3 MB payload); XXH64 reads 32-byte stripes on four independent
// lanes at ~10 GB/s, so checking a payload costs far less than encoding it.
uint64_t Xxh64(const void* data, size_t size, uint64_t seed = 0);
inline uint64_t BulkChecksum(const void* data, size_t size) { return Xxh64(data, size); }
std::string DigestHex(uint64_t digest);

}  // namespace lowband
