// Spike messages of the MPI exchange (fumjax/distributed/mpi_runner.py: encode_spikes / decode_spikes, the
// numpy reference and the format's definition), as plain nanobind functions: the exchange runs in a host
// callback once per step, and numpy's nonzero/fancy indexing on a cache-cold (n_p,) block costs ~80 us there.
//
// Message: int32 (step, kind), then kind 0: int32 events row * n_total + members[col] in row-major order;
// kind 1: the (k, n_p) block bit-packed row-major, most significant bit first (np.packbits). Kind 1 is sent
// when more than 1/32 of the block fired (4-byte events would be larger).

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

namespace nb = nanobind;

namespace fumjax {
namespace {

constexpr int32_t kEvents = 0, kBitmask = 1;

using Block = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;
using Members = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Message = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Out = nb::ndarray<uint8_t, nb::c_contig, nb::device::cpu>;
using Bytes = nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>;

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

int64_t CountNonzero(const uint8_t* p, int64_t n) {
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

Bytes NewBytes(int64_t n, uint8_t** data) {
  auto* buf = new uint8_t[n > 0 ? n : 1];
  nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<uint8_t*>(p); });
  *data = buf;
  return Bytes(buf, {static_cast<size_t>(n)}, owner);
}

// (n_p,) or (k, n_p) 0/1 spikes of steps step.. of the part with `members` -> the message bytes.
Bytes EncodeSpikes(Block block, Members members, int32_t step, int64_t n_total) {
  if (block.ndim() != 1 && block.ndim() != 2) throw std::invalid_argument("spikes: need (n_p,) or (k, n_p)");
  const int64_t n_p = static_cast<int64_t>(block.shape(block.ndim() - 1));
  const int64_t k = block.ndim() == 2 ? static_cast<int64_t>(block.shape(0)) : 1;
  if (static_cast<int64_t>(members.shape(0)) != n_p)
    throw std::invalid_argument("members has " + std::to_string(members.shape(0)) + " ids for " +
                                std::to_string(n_p) + " spike columns");
  const uint8_t* s = block.data();
  const int32_t* m = members.data();
  const int64_t size = k * n_p;
  const int64_t fired = CountNonzero(s, size);
  const int32_t head[2] = {step, 32 * fired > size ? kBitmask : kEvents};
  uint8_t* out = nullptr;
  if (head[1] == kBitmask) {
    const int64_t nbytes = (size + 7) / 8;
    Bytes msg = NewBytes(8 + nbytes, &out);
    std::memcpy(out, head, 8);
    uint8_t* bits = out + 8;
    const int64_t whole = size / 8;
    for (int64_t b = 0; b < whole; ++b) bits[b] = PackMsbFirst(Ones(s + 8 * b));
    if (whole < nbytes) {
      uint8_t v = 0;
      for (int64_t i = 8 * whole; i < size; ++i) v |= static_cast<uint8_t>((s[i] != 0) << (7 - (i - 8 * whole)));
      bits[whole] = v;
    }
    return msg;
  }
  Bytes msg = NewBytes(8 + 4 * fired, &out);
  std::memcpy(out, head, 8);
  int32_t* ev = reinterpret_cast<int32_t*>(out + 8);  // new[] storage: aligned for int32
  int64_t q = 0;
  for (int64_t r = 0; r < k; ++r) {
    const uint8_t* row = s + r * n_p;
    const int64_t base = k > 1 ? r * n_total : 0;
    int64_t c = 0;
#if defined(__SSE2__)
    for (; c + 16 <= n_p; c += 16) {
      for (uint32_t bits = NonzeroMask16(row + c); bits; bits &= bits - 1)
        ev[q++] = static_cast<int32_t>(base + m[c + __builtin_ctz(bits)]);
    }
#endif
    for (; c + 8 <= n_p; c += 8) {  // most 8-byte words of a sparse block are zero
      for (uint64_t ones = Ones(row + c); ones; ones &= ones - 1)
        ev[q++] = static_cast<int32_t>(base + m[c + (__builtin_ctzll(ones) >> 3)]);
    }
    for (; c < n_p; ++c)
      if (row[c]) ev[q++] = static_cast<int32_t>(base + m[c]);
  }
  return msg;
}

// Set the spikes of one message from the part with `members` in spikes_pre ((N,) or (k, N)); a bit-packed
// message writes the part's columns whole. Returns the message's step.
int32_t DecodeSpikes(Message msg, Members members, Out spikes_pre) {
  const int64_t len = static_cast<int64_t>(msg.shape(0));
  if (len < 8) throw std::invalid_argument("spike message of " + std::to_string(len) + " bytes: no header");
  if (spikes_pre.ndim() != 1 && spikes_pre.ndim() != 2)
    throw std::invalid_argument("spikes_pre: need (N,) or (k, N)");
  int32_t head[2];
  std::memcpy(head, msg.data(), 8);
  const uint8_t* body = msg.data() + 8;
  uint8_t* flat = spikes_pre.data();
  const int64_t n = static_cast<int64_t>(spikes_pre.shape(spikes_pre.ndim() - 1));
  const int64_t k = spikes_pre.ndim() == 2 ? static_cast<int64_t>(spikes_pre.shape(0)) : 1;
  const int64_t size = k * n, n_p = static_cast<int64_t>(members.shape(0));
  const int32_t* m = members.data();
  if (head[1] == kEvents) {
    if ((len - 8) % 4) throw std::invalid_argument("event message: body not a whole number of int32");
    const int64_t count = (len - 8) / 4;
    for (int64_t q = 0; q < count; ++q) {
      int32_t id;
      std::memcpy(&id, body + 4 * q, 4);
      if (id < 0 || id >= size)
        throw std::out_of_range("spike event " + std::to_string(id) + " outside [0, " + std::to_string(size) + ")");
      flat[id] = 1;
    }
    return head[0];
  }
  if (head[1] != kBitmask) throw std::invalid_argument("spike message kind " + std::to_string(head[1]));
  if (len - 8 != (k * n_p + 7) / 8)
    throw std::invalid_argument("bit-packed message of " + std::to_string(len - 8) + " bytes for " +
                                std::to_string(k) + " x " + std::to_string(n_p) + " spikes");
  for (int64_t c = 0; c < n_p; ++c)
    if (m[c] < 0 || m[c] >= n)
      throw std::out_of_range("member id " + std::to_string(m[c]) + " outside [0, " + std::to_string(n) + ")");
  for (int64_t r = 0; r < k; ++r)
    for (int64_t c = 0; c < n_p; ++c) {
      const int64_t i = r * n_p + c;
      flat[r * n + m[c]] = (body[i >> 3] >> (7 - (i & 7))) & 1;
    }
  return head[0];
}

}  // namespace

void RegisterSpikeCodec(nb::module_& m) {
  m.def("encode_spikes", &EncodeSpikes, nb::arg("spikes"), nb::arg("members"), nb::arg("step"),
        nb::arg("n_total"), "A part's spike message (see mpi_runner.encode_spikes).");
  m.def("decode_spikes", &DecodeSpikes, nb::arg("msg"), nb::arg("members"), nb::arg("spikes_pre").noconvert(),
        "Set one message's spikes in spikes_pre; returns its step (see mpi_runner.decode_spikes).");
}

}  // namespace fumjax
