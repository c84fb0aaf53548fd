// Spike messages of the MPI exchange: the format (defined by fumjax/distributed/mpi_runner.py's numpy
// encode_spikes / decode_spikes) encoded into a caller's buffer. Used by spike_codec.cc (nanobind functions
// for the exchange callback, and the XLA FFI handler that encodes inside the jitted step).
//
// Message: int32 (step, kind), then kind 0: int32 events row * n_total + members[col] in row-major order;
// kind 1: the (k, n_p) block bit-packed row-major, most significant bit first (np.packbits). Kind 1 is sent
// when more than 1/32 of the block fired (4-byte events would be larger), so no message of a block of
// `size` spikes exceeds MaxMessageBytes(size).
#ifndef FUMJAX_CPP_SPIKE_CODEC_H_
#define FUMJAX_CPP_SPIKE_CODEC_H_

#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace fumjax {

constexpr int32_t kSpikeEvents = 0, kSpikeBitmask = 1;

constexpr uint64_t kLow = 0x0101010101010101ull;

// Eight spike bytes from p as a word whose bytes are 1 where the byte is not 0, else 0.
inline uint64_t Ones(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  w |= w >> 4;
  w |= w >> 2;
  w |= w >> 1;
  return w & kLow;
}

// Byte sum of a 0/1-byte word (<= 8: no carry between bytes); no popcnt instruction in the baseline ISA.
inline int64_t Count(uint64_t ones) { return static_cast<int64_t>((ones * kLow) >> 56); }

// Bit (7 - i) = byte i of a 0/1-byte word (little-endian): np.packbits' most-significant-bit-first byte.
// Each byte's product term lands on its own bit of the top byte; no two terms share a bit, so no carries.
inline uint8_t PackMsbFirst(uint64_t ones) { return static_cast<uint8_t>((ones * 0x8040201008040201ull) >> 56); }

#if defined(__SSE2__)
// 16 spike bytes -> 16-bit mask of the nonzero ones (SSE2: the x86-64 baseline).
inline uint32_t NonzeroMask16(const uint8_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return ~static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()))) & 0xffffu;
}
#endif

inline int64_t CountNonzero(const uint8_t* p, int64_t n) {
  int64_t c = 0, i = 0;
#if defined(__SSE2__)
  for (; i + 64 <= n; i += 64) {  // mostly zero: test 64 bytes at once, count only where something fired
    const __m128i v = _mm_or_si128(
        _mm_or_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 16))),
        _mm_or_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 32)),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 48))));
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128())) == 0xffff) continue;
    for (int64_t j = i; j < i + 64; j += 8) c += Count(Ones(p + j));
  }
#endif
  for (; i + 8 <= n; i += 8) c += Count(Ones(p + i));
  for (; i < n; ++i) c += p[i] != 0;
  return c;
}

inline int64_t MaxMessageBytes(int64_t size) { return 8 + (size + 7) / 8; }

// The message of a (k, n_p) row-major block s of 0/1 spikes (nonzero = spike) of steps step.. of the part with
// ids m (n_p,), written to out (capacity >= MaxMessageBytes(k * n_p)); returns its length in bytes.
inline int64_t EncodeSpikesInto(const uint8_t* s, int64_t k, int64_t n_p, const int32_t* m, int32_t step,
                                int64_t n_total, uint8_t* out) {
  const int64_t size = k * n_p;
  const int64_t fired = CountNonzero(s, size);
  const int32_t head[2] = {step, 32 * fired > size ? kSpikeBitmask : kSpikeEvents};
  std::memcpy(out, head, 8);
  if (head[1] == kSpikeBitmask) {
    uint8_t* bits = out + 8;
    const int64_t whole = size / 8, nbytes = (size + 7) / 8;
    for (int64_t b = 0; b < whole; ++b) bits[b] = PackMsbFirst(Ones(s + 8 * b));
    if (whole < nbytes) {
      uint8_t v = 0;
      for (int64_t i = 8 * whole; i < size; ++i) v |= static_cast<uint8_t>((s[i] != 0) << (7 - (i - 8 * whole)));
      bits[whole] = v;
    }
    return 8 + nbytes;
  }
  uint8_t* ev = out + 8;
  int64_t q = 0;
  auto put = [&](int64_t id) {
    const int32_t v = static_cast<int32_t>(id);
    std::memcpy(ev + 4 * q++, &v, 4);  // out may be any alignment
  };
  for (int64_t r = 0; r < k; ++r) {
    const uint8_t* row = s + r * n_p;
    const int64_t base = k > 1 ? r * n_total : 0;
    int64_t c = 0;
#if defined(__SSE2__)
    for (; c + 16 <= n_p; c += 16) {
      for (uint32_t bits = NonzeroMask16(row + c); bits; bits &= bits - 1) put(base + m[c + __builtin_ctz(bits)]);
    }
#endif
    for (; c + 8 <= n_p; c += 8) {  // most 8-byte words of a sparse block are zero
      for (uint64_t ones = Ones(row + c); ones; ones &= ones - 1) put(base + m[c + (__builtin_ctzll(ones) >> 3)]);
    }
    for (; c < n_p; ++c)
      if (row[c]) put(base + m[c]);
  }
  return 8 + 4 * q;
}

}  // namespace fumjax

#endif  // FUMJAX_CPP_SPIKE_CODEC_H_
