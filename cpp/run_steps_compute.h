// Pure whole-run compute: T steps of LIF + delayed transmission + STDP (+ scaled eligibility), no XLA
// types. It reproduces fumjax.dynamics._simulate (jitted, reference backend) bit for bit.
//
// Bit-exactness with jitted XLA:CPU. XLA's CPU backend lets LLVM contract a multiply feeding an add
// (single use, same fused loop) into a fused multiply-add whenever the host has FMA, and offers no flag
// to stop it. This file is built with -ffp-contract=off, so the compiler never contracts on its own; the
// places where XLA contracts are spelled out with MulAdd<kFma> (std::fma when kFma, else a*b + c rounded
// twice, which is what XLA produces on a host without FMA):
//   LIF:          v' = fma(dt/tau, v_rest - v, v) + I          (I = ring[slot] + i_ext, rounded first)
//   traces:       x' = fma(x, decay_x, spiked) ; y' = fma(y, decay_y, spiked)
//   eligibility:  e_hat' = fma(dw, inv_pow[step + 1 - t0], e_hat)
//   STDP pair:    ltp - ltd = fma(-a_minus, y * decay_y, ltp)  (LLVM hoists the select on the pre spike
//                 out of the subtraction, then contracts it; matters when pre and post spike together)
// Everywhere else one operation = one rounding, in the reference's order:
//   STDP reads the decayed traces rounded once (x*decay, recomputed inside XLA's gathers, not contracted);
//   ltp = spiked[i] ? a_plus * xd[j] : 0, ltd = spiked[j] ? a_minus * yd[i] : 0, dw = sign_j * (ltp - ltd)
//   (the subtraction contracted as above when the pre spiked);
//   w' = clip(w + dw, -c, c) (sign is +-1, so contraction cannot change it); ring += g_syn * w (exact
//   whether contracted or not: the spike factor is 1); the dense renormalization e_hat *= gamma^k is a
//   plain multiply (its own XLA computation, a cond branch).
// Transmission adds into the ring in the reference scatter's order: ascending synapse index (CSR, by pre).
//
// Synapse storage W (weights, eligibility, the gamma^k table) may be float16 or bfloat16 while the neuron
// state T is float32, as in the reference: a synapse value is widened to T, updated in T (the same
// operations), and rounded back to W to nearest even, which is what XLA's convert does. The renormalization
// e_hat *= gamma^k multiplies two W values; their T product is exact (11- or 8-bit significands), so one
// rounding to W gives XLA's W multiply.
//
// Synapse indices: CSR slots are uint32 (E < 2^32) and all index arithmetic is 64-bit. There is no
// per-synapse presynaptic id: the in-list pass finds the pre of slot s from pre_bucket (one int32 per
// 2^pre_shift slots) and row_ptr (PreOfSlot); long calls precompute it once per in-list entry.
// Delays: a (0,) delay array with one ring slot means every delay is 1 (compact networks).
//
// Threads (deterministic): thread p owns neurons [lo_p, hi_p) and every synapse whose post neuron it owns.
// It does the LIF update, spike list, per-neuron STDP terms and traces of its neurons; then, after the one
// barrier per step, the transmission and STDP of its synapses: rows of all spiking pre in ascending order
// (the part of each row whose post it owns) and the in-lists of its own spiking post. Every ring entry,
// weight and eligibility is written by one thread in the single-thread order, so any thread count gives
// bit-identical results. With several threads the per-step per-neuron arrays (spike lists, STDP terms) are
// double-buffered by step parity, so the next step's writes never meet this step's reads and one barrier
// per step suffices (one thread uses one buffer: half the cache footprint).
//
// Speed (float32 state on AVX2+FMA hosts): the per-neuron work of a step is one vector sweep (DenseAvx2),
// which also prefetches the next step's input row (a fresh row of the (T, N) input streams from memory
// every step); synapse arrays larger than the caches are prefetched a row / an in-list ahead.
#ifndef FUMJAX_CPP_RUN_STEPS_COMPUTE_H_
#define FUMJAX_CPP_RUN_STEPS_COMPUTE_H_

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "thread_pool.h"

namespace fumjax {

// Forced inlining lets a caller compiled for another target (e.g. __attribute__((target("fma")))) get
// the whole loop nest generated for that target.
#if defined(__GNUC__) || defined(__clang__)
#define FUMJAX_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FUMJAX_ALWAYS_INLINE inline
#endif

enum class PlasticityMode : int32_t { kOff = 0, kStdp = 1, kRstdp = 2 };

// 16-bit synapse storage types (bit patterns); float/double are stored as themselves.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

#if defined(__FLT16_MAX__)
#define FUMJAX_HAVE_FLOAT16 1
#else
#define FUMJAX_HAVE_FLOAT16 0
#endif

// Widen a stored synapse value to the compute type T, and round a T value to storage (nearest even).
template <typename T, typename W>
struct Store {
  static FUMJAX_ALWAYS_INLINE T Load(W x) { return static_cast<T>(x); }
  static FUMJAX_ALWAYS_INLINE W Put(T x) { return static_cast<W>(x); }
};

#if FUMJAX_HAVE_FLOAT16
template <>
struct Store<float, Half> {
  static FUMJAX_ALWAYS_INLINE float Load(Half x) {
    _Float16 h;
    std::memcpy(&h, &x.bits, 2);
    return static_cast<float>(h);
  }
  static FUMJAX_ALWAYS_INLINE Half Put(float x) {
    const _Float16 h = static_cast<_Float16>(x);
    Half out;
    std::memcpy(&out.bits, &h, 2);
    return out;
  }
};
#endif

template <>
struct Store<float, BFloat16> {
  static FUMJAX_ALWAYS_INLINE float Load(BFloat16 x) {
    const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static FUMJAX_ALWAYS_INLINE BFloat16 Put(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even (Eigen/ml_dtypes)
    return BFloat16{static_cast<uint16_t>(u >> 16)};
  }
};

// Everything one run needs. State arrays are updated in place; read-only arrays are const.
template <typename T, typename W>
struct RunStepsArgs {
  int64_t n = 0;        // neurons N
  int64_t e = 0;        // synapses E
  int32_t d = 1;        // ring slots D (max delay)
  int64_t t_steps = 0;  // steps T
  int32_t k_max = 0;    // eligibility table length - 1 (K)
  int32_t threads = 1;  // worker threads (>= 1), already resolved

  // State, in place.
  T* v = nullptr;                    // (N,)
  int32_t* refrac = nullptr;         // (N,)
  T* x = nullptr;                    // (N,) presynaptic trace
  T* y = nullptr;                    // (N,) postsynaptic trace
  T* ring = nullptr;                 // (D, N)
  W* w = nullptr;                    // (E,)
  W* elig = nullptr;                 // (E,) scaled eligibility
  int32_t* elig_t0 = nullptr;        // ()
  int32_t* window_spikes = nullptr;  // (N,)
  int32_t* step = nullptr;           // ()

  // Read-only inputs.
  const T* tau = nullptr;             // (N,)
  const T* v_th = nullptr;            // (N,)
  const T* i_ext = nullptr;           // (T, N)
  const uint32_t* row_ptr = nullptr;  // (N+1,) CSR by pre
  // The pre of CSR slot s (no per-synapse pre array): i = pre_bucket[s >> pre_shift], then the first
  // i with row_ptr[i+1] > s (PreOfSlot). The handler checks every entry once per call (O(E >> shift)).
  const int32_t* pre_bucket = nullptr;  // ((E-1 >> pre_shift) + 1,)
  int32_t pre_shift = 9;
  // Optional learning in-list (long calls, whose indices are all checked first): the in-list without static
  // presynaptic neurons (or in_ptr / in_syn themselves when none is static), with each entry's pre (saves
  // the slot -> pre search): lin_syn[lin_ptr[i]:lin_ptr[i+1]] and lin_pre likewise.
  const uint32_t* lin_ptr = nullptr;  // (N+1,) or null: use in_ptr/in_syn and PreOfSlot
  const uint32_t* lin_syn = nullptr;
  const int32_t* lin_pre = nullptr;
  const int32_t* post = nullptr;      // (E,)
  const int32_t* delay = nullptr;     // (E,), or null when D == 1 (all delays 1)
  const uint32_t* in_ptr = nullptr;   // (N+1,)
  const uint32_t* in_syn = nullptr;   // (E,) CSR slots grouped by post
  const uint8_t* excitatory = nullptr;  // (N,) pre code: 1 excitatory (sign +1), 0 inhibitory (-1), 2 static
  const W* gamma_pow = nullptr;       // (K+1,) in the storage type, as the reference rounds it
  const T* inv_pow = nullptr;         // (K+1,)
  bool rows_sorted = true;            // posts ascending within each row (lets threads bisect rows)
  bool rows_distinct = false;         // validated: posts strictly ascending within each row
  bool validated = false;             // every index array already checked: the loops skip their checks
  // Outgoing rows 8 synapses at a time with AVX2 gathers (RowAvx2) where the host's gathers are fast, else
  // the scalar loop: measured on FUM-1k STDP (bench/RESULTS.md), the vector rows were 4.5% faster on an Intel
  // Xeon and the scalar loop 17% faster on an AMD EPYC (Zen 4), whose gathers are microcoded.
  bool vector_rows = true;

  // Scalars, already rounded to T like jnp's weak-typed Python floats.
  T v_rest{}, v_reset{}, dt{}, g_syn{}, a_plus{}, a_minus{}, w_clip{}, decay_x{}, decay_y{};
  int32_t refractory_steps = 0;
  PlasticityMode mode = PlasticityMode::kOff;

  uint8_t* spikes = nullptr;  // output (T, N)
};

template <bool kFma, typename T>
FUMJAX_ALWAYS_INLINE T MulAdd(T a, T b, T c) {
  if constexpr (kFma) {
    return std::fma(a, b, c);
  } else {
    return a * b + c;  // two roundings (-ffp-contract=off)
  }
}

// Python-style floor modulo (jnp's % on int32).
FUMJAX_ALWAYS_INLINE int32_t FloorMod(int32_t a, int32_t m) {
  int32_t r = a % m;
  return (r != 0 && ((r < 0) != (m < 0))) ? r + m : r;
}

// jnp indexing of a length-`len` table with a traced index: negative wraps once, then clamps.
FUMJAX_ALWAYS_INLINE int32_t JnpIndex(int64_t i, int32_t len) {
  if (i < 0) i += len;
  if (i < 0) i = 0;
  if (i > len - 1) i = len - 1;
  return static_cast<int32_t>(i);
}

// The presynaptic neuron of CSR slot s (0 <= s < E): the bucket's first candidate, then forward to the
// row that holds s. Stays in [0, n) whatever row_ptr holds; exact when pre_bucket was checked against a
// monotone row_ptr (a bucket spans <= 2^shift slots, so the walk is short unless many rows are empty).
FUMJAX_ALWAYS_INLINE int64_t PreOfSlot(const uint32_t* __restrict row_ptr, const int32_t* __restrict bucket,
                                       int32_t shift, int64_t n, int64_t s) {
  int64_t i = bucket[s >> shift];
  while (i + 1 < n && static_cast<int64_t>(row_ptr[i + 1]) <= s) ++i;
  return i;
}

// Software prefetch of [p, p + bytes) into the caches, one hint per 64-byte line (a hint: no fault, no
// effect on results). The synapse passes know their next random targets a row or an in-list ahead.
FUMJAX_ALWAYS_INLINE void PrefetchRange(const void* p, int64_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(bytes);
  for (uintptr_t line = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{63}; line < end; line += 64) {
    __builtin_prefetch(reinterpret_cast<const void*>(line));
  }
#endif
}

// Synapse storage (w) from which on the synapse passes prefetch their next targets.
constexpr int64_t kPrefetchMinBytes = int64_t{1} << 20;

// Scratch shared by the threads of one run (allocated by RunSteps).
template <typename T, typename W>
struct RunShared {
  const RunStepsArgs<T, W>* a = nullptr;
  std::vector<int64_t> lo;         // (P+1,) neuron range bounds
  std::vector<T> ratio;            // (N,) dt / tau
  // a_plus * x_j decayed of each listed spike j (same index as spike_list): the LTP a spiking post reads
  // from pre j; only the spiking need it, so it is not an N-array written every step.
  std::vector<T> spike_ltp[2];     // (N,)
  std::vector<T> dw_silent_pre[2]; // (N,) in-list dw of pre j: +-ltp, or 0 if j spiked (row pass) or static
  std::vector<T> yd_post[2];       // (N,) y_i * decay_y: a spiking pre's LTD is a_minus * yd_post[i]
  // This step's spikes as bytes 0/1 (plastic modes), padded by 3 so that 4-byte gathers stay inside.
  std::vector<uint8_t> spk8[2];    // (N + 3,)
  std::vector<int32_t> spike_list[2];  // (N,) thread p's spikes at [lo_p, lo_p + count)
  std::vector<int32_t> spike_count[2];  // (P,)
  bool no_refractory = false;      // refractory_steps 0 and refrac all 0: LIF skips refrac
  SpinBarrier barrier;
  std::atomic<int> error{0};
  explicit RunShared(int p) : barrier(p) {}
};

// Input and LIF for one step over neurons [0, n) of the given pointers: I = ring_now + i_ext (ring_now
// then zeroed); v' = fma(dt/tau, v_rest - v, v) + I; refractory/spike/reset as reference.lif_step. A
// function of its own so that the __restrict parameters let GCC vectorize without alias versioning.
// kRefrac false: no neuron is refractory and none becomes so (refractory_steps 0, refrac all 0 at the
// start), so refrac stays 0 and is neither read nor written (less memory traffic per step).
template <bool kFma, bool kRefrac, typename T>
FUMJAX_ALWAYS_INLINE void LifInput(int64_t n, T* __restrict ring_now, const T* __restrict iext,
                                   const T* __restrict ratio, const T* __restrict v_th, T v_rest, T v_reset,
                                   int32_t refractory_steps, T* __restrict v, int32_t* __restrict refrac,
                                   uint8_t* __restrict spk) {
  const T zero = T(0);
  for (int64_t i = 0; i < n; ++i) {
    const T cur = ring_now[i] + iext[i];
    ring_now[i] = zero;
    const T vk = v[i];
    const T vn = MulAdd<kFma>(ratio[i], v_rest - vk, vk) + cur;
    const bool ge = vn >= v_th[i];
    if constexpr (kRefrac) {
      const int32_t r = refrac[i];
      const bool free = r <= 0;  // not refractory: may spike
      const bool spiked = ge & free;
      const bool keep = free & !ge;  // refractory or spiking -> v_reset (one select, as in lif_compute.h)
      v[i] = keep ? vn : v_reset;
      spk[i] = static_cast<uint8_t>(spiked);
      const int32_t dec = static_cast<int32_t>(static_cast<uint32_t>(r) - 1u);  // wrapping, like jnp int32
      const int32_t held = dec > 0 ? dec : 0;
      refrac[i] = spiked ? refractory_steps : held;
    } else {
      v[i] = ge ? v_reset : vn;
      spk[i] = static_cast<uint8_t>(ge);
    }
  }
}

// Per-neuron STDP terms of this step, then the traces, over neurons [0, n) of the given pointers:
// ltp = a_plus * (x * decay_x) (the decayed trace rounded once, as the reference's gathers recompute it;
// the rows of spiking pre take it from spike_ltp), yd = y * decay_y (LTD = a_minus * yd, contracted into
// the pair's subtraction); the in-list dw of a silent pre is sign * (ltp - 0), 0 for a spiking or static
// pre; the spike bytes copied to spk8; then x' = fma(x, decay_x, spiked), y' likewise (contracted like XLA).
template <bool kFma, typename T>
FUMJAX_ALWAYS_INLINE void StdpTermsAndTraces(int64_t n, T* __restrict x, T* __restrict y,
                                             const uint8_t* __restrict spk, const uint8_t* __restrict code,
                                             T a_plus, T dx, T dy, T* __restrict dw_silent,
                                             T* __restrict yd_post, uint8_t* __restrict spk8) {
  const T zero = T(0);
  // Branch-free (bitwise &, selects) so that GCC vectorizes the loop.
  for (int64_t i = 0; i < n; ++i) {
    const T xi = x[i], yi = y[i];
    const uint8_t si = spk[i], ci = code[i];
    const T ltp = a_plus * (xi * dx);
    yd_post[i] = yi * dy;
    const T diff = ltp - zero;
    const T signed_dw = ci == 1 ? diff : -diff;
    const bool learns = (si == 0) & (ci != 2);
    dw_silent[i] = learns ? signed_dw : zero;
    const T s = static_cast<T>(si);
    spk8[i] = si;
    x[i] = MulAdd<kFma>(xi, dx, s);
    y[i] = MulAdd<kFma>(yi, dy, s);
  }
}

// One synapse's plasticity: eligibility += dw * inv (rstdp) or w = clip(w + dw) (stdp), in T, stored as W.
template <bool kFma, PlasticityMode kMode, typename T, typename W>
FUMJAX_ALWAYS_INLINE void ApplyDw(W* __restrict w, W* __restrict elig, int64_t k, T dw, T inv, T lo_clip,
                                  T hi_clip) {
  using S = Store<T, W>;
  if constexpr (kMode == PlasticityMode::kRstdp) {
    elig[k] = S::Put(MulAdd<kFma>(dw, inv, S::Load(elig[k])));
  } else {
    const T nw = S::Load(w[k]) + dw;
    const T lo = nw < lo_clip ? lo_clip : nw;  // maximum(-c, .)
    w[k] = S::Put(lo > hi_clip ? hi_clip : lo);  // minimum(c, .)
  }
}

#if defined(__x86_64__) || defined(__i386__)
constexpr bool kX86Simd = true;
// One block of InListAvx2: synapses kk (values in dst: w, or elig in rstdp) of pre jj, the lanes in live
// (all but a final partial block's tail, whose gathers are masked off; `lanes` of them are stored).
template <PlasticityMode kMode>
__attribute__((target("avx2,fma"), always_inline)) inline void InListBlockAvx2(
    __m256i kk, __m256i jj, __m256 live, int lanes, const float* __restrict dw_pre, float* __restrict dst,
    __m256 inv8, __m256 lo8, __m256 hi8) {
  const __m256 dw = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), dw_pre, jj, live, 4);
  const __m256 old = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), dst, kk, live, 4);
  __m256 out;
  if constexpr (kMode == PlasticityMode::kRstdp) {
    out = _mm256_fmadd_ps(dw, inv8, old);
  } else {
    out = _mm256_min_ps(hi8, _mm256_max_ps(lo8, _mm256_add_ps(old, dw)));  // max/min as ApplyDw's selects
  }
  alignas(32) int32_t k8[8];
  alignas(32) float v8[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(k8), kk);
  _mm256_store_ps(v8, out);
  for (int l = 0; l < lanes; ++l) dst[k8[l]] = v8[l];
}

// The learning in-list pass, 8 entries at a time (float32 storage; called only from the AVX2+FMA code, as a
// function of its own, compiled for that target, once per spiking post neuron):
// gather dw of the 8 pre and the 8 synapse values, the same operations as ApplyDw lane by lane (max/min
// with the clip first give the scalar selects' results), store lane by lane. The synapses of one in-list
// are distinct, so no two lanes write the same place. pre_of: each entry's pre (the learning in-list's,
// which exists only in calls whose indices were all checked once: k < e, j < n, no per-block checks);
// e < 2^31 (the gathers take int32 indices). The last partial block runs masked. Does all of [q, p1).
template <PlasticityMode kMode>
__attribute__((target("avx2,fma"))) void InListAvx2(int64_t q, int64_t p1, const uint32_t* __restrict syn,
                                                    const int32_t* __restrict pre_of,
                                                    const float* __restrict dw_pre, float* __restrict w,
                                                    float* __restrict elig, float inv, float lo_clip,
                                                    float hi_clip) {
  const __m256 inv8 = _mm256_set1_ps(inv), lo8 = _mm256_set1_ps(lo_clip), hi8 = _mm256_set1_ps(hi_clip);
  float* const dst = kMode == PlasticityMode::kRstdp ? elig : w;
  const __m256 all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  for (; q + 8 <= p1; q += 8) {
    const __m256i kk = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(syn + q));
    const __m256i jj = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pre_of + q));
    InListBlockAvx2<kMode>(kk, jj, all, 8, dw_pre, dst, inv8, lo8, hi8);
  }
  if (q < p1) {  // the tail as one masked block
    const int lanes = static_cast<int>(p1 - q);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), lane);
    const __m256i kk = _mm256_maskload_epi32(reinterpret_cast<const int*>(syn + q), live);
    const __m256i jj = _mm256_maskload_epi32(pre_of + q, live);
    InListBlockAvx2<kMode>(kk, jj, _mm256_castsi256_ps(live), lanes, dw_pre, dst, inv8, lo8, hi8);
  }
}

// One block of RowAvx2: synapses k.. with posts ii (distinct, in [0, n)), the lanes in live (all but a
// final partial block's tail, whose loads, gathers and stores are masked off; `lanes` of them scattered).
template <PlasticityMode kMode>
__attribute__((target("avx2,fma"), always_inline)) inline void RowBlockAvx2(
    int64_t k, __m256i ii, __m256i live, int lanes, float* __restrict w, float* __restrict elig,
    float* __restrict ring, const uint8_t* __restrict spk8, const float* __restrict yd, __m256 g8, bool learn,
    __m256 ltp8, __m256 flip, __m256 na8, __m256 inv8, __m256 lo8, __m256 hi8) {
  const __m256 live_ps = _mm256_castsi256_ps(live);
  const __m256 zero8 = _mm256_setzero_ps();
  const __m256 w8 = _mm256_maskload_ps(w + k, live);
  const __m256 ring8 =
      _mm256_add_ps(_mm256_mask_i32gather_ps(zero8, ring, ii, live_ps, 4), _mm256_mul_ps(g8, w8));
  alignas(32) int32_t i8[8];
  alignas(32) float r8[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(i8), ii);
  _mm256_store_ps(r8, ring8);
  for (int l = 0; l < lanes; ++l) ring[i8[l]] = r8[l];
  if constexpr (kMode != PlasticityMode::kOff) {
    if (learn) {
      // 4 bytes at each post's spike byte (spk8 is padded), the low one its flag: ltp_j or +0
      const int* spk4 = reinterpret_cast<const int*>(spk8);
      const __m256i s4 = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), spk4, ii, live, 1);
      const __m256i fired =
          _mm256_cmpgt_epi32(_mm256_and_si256(s4, _mm256_set1_epi32(0xff)), _mm256_setzero_si256());
      const __m256 ltp = _mm256_and_ps(_mm256_castsi256_ps(fired), ltp8);
      const __m256 diff = _mm256_fmadd_ps(na8, _mm256_mask_i32gather_ps(zero8, yd, ii, live_ps, 4), ltp);
      const __m256 dw = _mm256_xor_ps(diff, flip);
      if constexpr (kMode == PlasticityMode::kRstdp) {
        _mm256_maskstore_ps(elig + k, live, _mm256_fmadd_ps(dw, inv8, _mm256_maskload_ps(elig + k, live)));
      } else {
        _mm256_maskstore_ps(w + k, live, _mm256_min_ps(hi8, _mm256_max_ps(lo8, _mm256_add_ps(w8, dw))));
      }
    }
  }
}

// One row's synapses [k, k1), 8 at a time (float32 storage, D = 1; called only from AVX2+FMA code). The
// row's posts must be in [0, n) and strictly ascending, so they are distinct and the gather-add-scatter of
// the ring loses nothing: trusted (checked once per call for every row), else checked per block, where
// the first block that is not stops the vector loop and the scalar loop goes on from there; trusted, the
// last partial block runs masked. Per block: transmission ring[i] += g * w (multiply and add rounded apart,
// as the scalar code), then, if the row learns, the pair STDP of the scalar code lane by lane (spike
// select, fma, sign flip as an exact xor, clip as max/min or the eligibility fma). Returns the first
// synapse not done.
template <PlasticityMode kMode>
__attribute__((target("avx2,fma"))) int64_t RowAvx2(int64_t k, int64_t k1, int32_t n, const int32_t* __restrict post,
                                                    float* __restrict w, float* __restrict elig,
                                                    float* __restrict ring, const uint8_t* __restrict spk8,
                                                    const float* __restrict yd, float g, bool learn,
                                                    float ltp_j, bool excitatory, float neg_a_minus,
                                                    float inv, float lo_clip, float hi_clip, bool trusted) {
  const __m256 g8 = _mm256_set1_ps(g), ltp8 = _mm256_set1_ps(ltp_j);
  const __m256 na8 = _mm256_set1_ps(neg_a_minus), inv8 = _mm256_set1_ps(inv);
  const __m256 lo8 = _mm256_set1_ps(lo_clip), hi8 = _mm256_set1_ps(hi_clip);
  const __m256 flip = _mm256_set1_ps(excitatory ? 0.0f : -0.0f);
  const __m256i n8 = _mm256_set1_epi32(n), rot = _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6);
  const __m256i all = _mm256_set1_epi32(-1);
  __m256i prev = _mm256_set1_epi32(-1);  // lane 0: the last post of the previous block
  for (; k + 8 <= k1; k += 8) {
    const __m256i ii = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(post + k));
    if (!trusted) {
      const __m256i before = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(ii, rot), prev, 1);
      const __m256i ok = _mm256_and_si256(_mm256_cmpgt_epi32(ii, before), _mm256_cmpgt_epi32(n8, ii));
      if (_mm256_movemask_epi8(ok) != -1) break;  // ii > before >= -1 also gives ii >= 0
      prev = _mm256_permutevar8x32_epi32(ii, rot);
    }
    RowBlockAvx2<kMode>(k, ii, all, 8, w, elig, ring, spk8, yd, g8, learn, ltp8, flip, na8, inv8, lo8, hi8);
  }
  if (trusted && k < k1) {
    const int lanes = static_cast<int>(k1 - k);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), lane);
    const __m256i ii = _mm256_maskload_epi32(post + k, live);
    RowBlockAvx2<kMode>(k, ii, live, lanes, w, elig, ring, spk8, yd, g8, learn, ltp8, flip, na8, inv8, lo8,
                        hi8);
    k = k1;
  }
  return k;
}

// The per-neuron work of one step in one sweep, 8 neurons at a time (float32 state, AVX2+FMA; any synapse
// storage): LifInput, the spike list and window counts, and (kPlastic) StdpTermsAndTraces, with the same
// operations lane by lane (XLA's FMA placements, one rounding elsewhere; compares ordered like the scalar
// >=). One pass instead of three: each neuron's values are loaded once, and the spike flags go from the
// compare mask to the list (bit scan) without a reload. Arrays as in the scalar functions, offset to the
// thread's first neuron `base`; list gets base + index of each spike, ascending. Returns the neurons done
// (a multiple of 8); *ns += the spikes listed.
template <bool kRefrac, bool kPlastic>
__attribute__((target("avx2,fma"))) int64_t DenseAvx2(
    int64_t n, int64_t base, float* __restrict ring_now, const float* __restrict iext,
    const float* iext_next,
    const float* __restrict ratio, const float* __restrict v_th, float v_rest, float v_reset,
    int32_t refractory_steps, float* __restrict v, int32_t* __restrict refrac, uint8_t* __restrict spk,
    int32_t* __restrict list, int64_t* ns, int32_t* __restrict window_spikes, const uint8_t* __restrict code,
    float a_plus, float dx, float dy, float* __restrict x, float* __restrict y, float* __restrict spike_ltp,
    float* __restrict dw_silent, float* __restrict yd_post, uint8_t* __restrict spk8) {
  const __m256 zero8 = _mm256_setzero_ps(), one8 = _mm256_set1_ps(1.0f), sign8 = _mm256_set1_ps(-0.0f);
  const __m256 v_rest8 = _mm256_set1_ps(v_rest), v_reset8 = _mm256_set1_ps(v_reset);
  const __m256 a_plus8 = _mm256_set1_ps(a_plus), dx8 = _mm256_set1_ps(dx), dy8 = _mm256_set1_ps(dy);
  const __m256i zero_i = _mm256_setzero_si256(), one_i = _mm256_set1_epi32(1), two_i = _mm256_set1_epi32(2);
  const __m256i refrac8 = _mm256_set1_epi32(refractory_steps);
  int64_t count = *ns;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    // The next step's input, a step ahead: a fresh (T, N) row each step streams from memory, and the
    // hardware prefetchers do not run ahead of it (a row is a page or so).
    if (iext_next != nullptr && (i & 15) == 0) __builtin_prefetch(iext_next + i, 0, 3);
    const __m256 cur = _mm256_add_ps(_mm256_loadu_ps(ring_now + i), _mm256_loadu_ps(iext + i));
    _mm256_storeu_ps(ring_now + i, zero8);
    const __m256 vk = _mm256_loadu_ps(v + i);
    const __m256 vn =
        _mm256_add_ps(_mm256_fmadd_ps(_mm256_loadu_ps(ratio + i), _mm256_sub_ps(v_rest8, vk), vk), cur);
    const __m256 ge = _mm256_cmp_ps(vn, _mm256_loadu_ps(v_th + i), _CMP_GE_OQ);
    __m256 spiked = ge;
    if constexpr (kRefrac) {
      const __m256i r = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(refrac + i));
      const __m256 busy = _mm256_castsi256_ps(_mm256_cmpgt_epi32(r, zero_i));  // refractory: may not spike
      spiked = _mm256_andnot_ps(busy, ge);
      // refractory or spiking: v_reset
      _mm256_storeu_ps(v + i, _mm256_blendv_ps(vn, v_reset8, _mm256_or_ps(busy, ge)));
      const __m256i held = _mm256_max_epi32(_mm256_sub_epi32(r, one_i), zero_i);  // wrapping r - 1, then max
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(refrac + i),
                          _mm256_blendv_epi8(held, refrac8, _mm256_castps_si256(spiked)));
    } else {
      _mm256_storeu_ps(v + i, _mm256_blendv_ps(vn, v_reset8, ge));
    }
    uint32_t m = static_cast<uint32_t>(_mm256_movemask_ps(spiked));
    // The 8 mask bits as 8 bytes 0/1 (byte l = bit l).
    const uint64_t bit_l_of_byte_l =
        (static_cast<uint64_t>(m) * 0x0101010101010101ull) & 0x8040201008040201ull;
    const uint64_t bytes = ((bit_l_of_byte_l + 0x7f7f7f7f7f7f7f7full) >> 7) & 0x0101010101010101ull;
    std::memcpy(spk + i, &bytes, 8);
    __m256 xi = zero8, ltp = zero8;
    if constexpr (kPlastic) {
      std::memcpy(spk8 + i, &bytes, 8);
      xi = _mm256_loadu_ps(x + i);
      ltp = _mm256_mul_ps(a_plus8, _mm256_mul_ps(xi, dx8));
    }
    if (m != 0) {
      alignas(32) float ltp_lanes[8];
      if constexpr (kPlastic) _mm256_store_ps(ltp_lanes, ltp);
      do {
        const int l = __builtin_ctz(m);
        if constexpr (kPlastic) spike_ltp[count] = ltp_lanes[l];
        list[count++] = static_cast<int32_t>(base + i + l);
        window_spikes[i + l] += 1;
        m &= m - 1;
      } while (m != 0);
    }
    if constexpr (kPlastic) {
      const __m256 yi = _mm256_loadu_ps(y + i);
      _mm256_storeu_ps(yd_post + i, _mm256_mul_ps(yi, dy8));
      const __m256i ci = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(code + i)));
      const __m256 diff = _mm256_sub_ps(ltp, zero8);
      const __m256 exc = _mm256_castsi256_ps(_mm256_cmpeq_epi32(ci, one_i));
      const __m256 signed_dw = _mm256_blendv_ps(_mm256_xor_ps(diff, sign8), diff, exc);
      const __m256 silent_static = _mm256_or_ps(spiked, _mm256_castsi256_ps(_mm256_cmpeq_epi32(ci, two_i)));
      _mm256_storeu_ps(dw_silent + i, _mm256_andnot_ps(silent_static, signed_dw));
      const __m256 s = _mm256_and_ps(spiked, one8);
      _mm256_storeu_ps(x + i, _mm256_fmadd_ps(xi, dx8, s));
      _mm256_storeu_ps(y + i, _mm256_fmadd_ps(yi, dy8, s));
    }
  }
  *ns = count;
  return i;
}
#else
constexpr bool kX86Simd = false;
template <PlasticityMode kMode, typename... Args>
FUMJAX_ALWAYS_INLINE int64_t RowAvx2(int64_t k, Args...) {
  return k;
}
template <bool kRefrac, bool kPlastic, typename... Args>
FUMJAX_ALWAYS_INLINE int64_t DenseAvx2(Args...) {
  return 0;
}
template <PlasticityMode kMode, typename... Args>
FUMJAX_ALWAYS_INLINE void InListAvx2(Args...) {}
#endif

// Thread p's share of the whole run. Errors (an index out of range) set sh.error; all threads stop after
// the next barrier, so none waits on a barrier the others never reach.
template <bool kFma, PlasticityMode kMode, bool kD1, typename T, typename W>
FUMJAX_ALWAYS_INLINE void RunStepsThread(RunShared<T, W>& sh, int p) {
  const RunStepsArgs<T, W>& a = *sh.a;
  const int nt = static_cast<int>(sh.lo.size()) - 1;
  const int64_t n = a.n, e = a.e;
  const int64_t lo = sh.lo[p], hi = sh.lo[p + 1], own = hi - lo;
  const int32_t d = kD1 ? 1 : a.d;
  constexpr bool plastic = kMode != PlasticityMode::kOff;
  constexpr bool rstdp = kMode == PlasticityMode::kRstdp;
  using S = Store<T, W>;

  T* __restrict ring = a.ring;
  W* __restrict w = a.w;
  W* __restrict elig = a.elig;
  const uint32_t* __restrict row_ptr = a.row_ptr;
  const int32_t* __restrict post = a.post;
  const int32_t* __restrict delay = a.delay;
  const uint32_t* __restrict in_ptr = a.in_ptr;
  const uint32_t* __restrict in_syn = a.in_syn;
  const bool lin = a.lin_ptr != nullptr;
  const uint32_t* __restrict l_ptr = lin ? a.lin_ptr : a.in_ptr;
  const uint32_t* __restrict l_syn = lin ? a.lin_syn : a.in_syn;
  const int32_t* __restrict l_pre = a.lin_pre;
  const int32_t* __restrict bucket = a.pre_bucket;
  const int32_t shift = a.pre_shift;
  // The vector in-list pass gathers with int32 indices, needs each entry's pre and checks no index.
  const bool vec_inlist = lin && a.validated && e < INT32_MAX;
  const uint8_t* __restrict code = a.excitatory;
  const T g = a.g_syn, clip = a.w_clip, neg_clip = -a.w_clip, neg_a_minus = -a.a_minus;
  const bool bisect = nt > 1 && a.rows_sorted;
  const bool filter = nt > 1 && !a.rows_sorted;
  const bool checked = !a.validated;
  const bool vec_rows = !filter && a.vector_rows;
  const bool rows_trusted = a.validated && a.rows_distinct;  // all posts checked: in range, ascending
  constexpr int32_t kRowsAhead = 2;  // rows prefetched this many spikes ahead
  // Prefetching pays only when the synapse arrays outgrow the caches (measured: +10% time at 50k float32
  // synapses, which stay in L2, -20% at 500k).
  const bool prefetch = e * static_cast<int64_t>(sizeof(W)) >= kPrefetchMinBytes;

  int32_t s = *a.step;
  int32_t t0 = *a.elig_t0;
  for (int64_t t = 0; t < a.t_steps; ++t, ++s) {
    const int b = nt == 1 ? 0 : static_cast<int>(t & 1);  // one thread: no overlap, one buffer (less cache)
    const int32_t slot = FloorMod(s, d);
    T* __restrict ring_now = ring + static_cast<int64_t>(slot) * n;
    uint8_t* __restrict spk = a.spikes + t * n;

    // ---- own neurons: input + LIF, spike list (ascending) and window counts, STDP terms and traces ----
    int32_t* __restrict my_list = sh.spike_list[b].data() + lo;
    T* __restrict my_ltp = sh.spike_ltp[b].data() + (plastic ? lo : 0);  // aligned with my_list
    T* __restrict dw_silent = sh.dw_silent_pre[b].data();
    T* __restrict yd_post = sh.yd_post[b].data();
    uint8_t* __restrict spk8 = sh.spk8[b].data();
    const T* __restrict iext = a.i_ext + t * n;
    const T* iext_next = t + 1 < a.t_steps ? iext + n + lo : nullptr;

    int64_t ns = 0;
    int64_t l0 = lo;  // own neurons [lo, l0) are done by the one-sweep vector pass
    if constexpr (kFma && kX86Simd && std::is_same_v<T, float>) {
      const auto dense = sh.no_refractory ? &DenseAvx2<false, plastic> : &DenseAvx2<true, plastic>;
      l0 += dense(own, lo, ring_now + lo, iext + lo, iext_next, sh.ratio.data() + lo, a.v_th + lo, a.v_rest,
                  a.v_reset, a.refractory_steps, a.v + lo, a.refrac + lo, spk + lo, my_list, &ns,
                  a.window_spikes + lo, code + lo, a.a_plus, a.decay_x, a.decay_y, a.x + lo, a.y + lo,
                  my_ltp, dw_silent + lo, yd_post + lo, plastic ? spk8 + lo : nullptr);
    }
    // The rest (all of them without the vector pass): three passes (vectorized, branch-free selects).
    const int64_t rest = hi - l0;
    if (sh.no_refractory) {
      LifInput<kFma, false, T>(rest, ring_now + l0, iext + l0, sh.ratio.data() + l0, a.v_th + l0, a.v_rest,
                               a.v_reset, a.refractory_steps, a.v + l0, a.refrac + l0, spk + l0);
    } else {
      LifInput<kFma, true, T>(rest, ring_now + l0, iext + l0, sh.ratio.data() + l0, a.v_th + l0, a.v_rest,
                              a.v_reset, a.refractory_steps, a.v + l0, a.refrac + l0, spk + l0);
    }
    {
      const int64_t ns0 = ns;
      int64_t i = l0;
      for (; i + 8 <= hi; i += 8) {  // skipping zero words fast
        uint64_t word;
        std::memcpy(&word, spk + i, 8);
        if (word == 0) continue;
        for (int64_t q = i; q < i + 8; ++q) {
          my_list[ns] = static_cast<int32_t>(q);
          ns += spk[q];
        }
      }
      for (; i < hi; ++i) {
        my_list[ns] = static_cast<int32_t>(i);
        ns += spk[i];
      }
      for (int64_t c = ns0; c < ns; ++c) {  // sparse: only the spiking
        a.window_spikes[my_list[c]] += 1;
        if constexpr (plastic) my_ltp[c] = a.a_plus * (a.x[my_list[c]] * a.decay_x);  // x before its update
      }
    }
    sh.spike_count[b][p] = static_cast<int32_t>(ns);
    T inv = T(1);
    if constexpr (plastic) {
      StdpTermsAndTraces<kFma, T>(rest, a.x + l0, a.y + l0, spk + l0, code + l0, a.a_plus, a.decay_x,
                                  a.decay_y, dw_silent + l0, yd_post + l0, spk8 + l0);
    }
    if constexpr (rstdp) {
      // Dense renormalization every K steps, of the synapses this thread owns (by post), before any of
      // them gets this step's increment.
      const int32_t since = s - t0;
      if (since >= a.k_max) {
        const T scale = S::Load(a.gamma_pow[JnpIndex(since < a.k_max ? since : a.k_max, a.k_max + 1)]);
        if (nt == 1) {
          for (int64_t k = 0; k < e; ++k) elig[k] = S::Put(S::Load(elig[k]) * scale);
        } else {
          for (int64_t q = in_ptr[lo]; q < static_cast<int64_t>(in_ptr[hi]); ++q) {
            const int64_t k = in_syn[q];
            if (k >= e) {
              sh.error.store(-1);
              break;
            }
            elig[k] = S::Put(S::Load(elig[k]) * scale);
          }
        }
        t0 = s;
      }
      inv = a.inv_pow[JnpIndex(static_cast<int64_t>(s) + 1 - t0, a.k_max + 1)];
    }

    sh.barrier.Wait();
    if (sh.error.load(std::memory_order_relaxed) != 0) break;

    // ---- rows of all spiking pre (ascending j): transmission with this step's pre-plasticity weights,
    // then STDP; only the synapses whose post this thread owns ----
    for (int q = 0; q < nt; ++q) {
      const int32_t* list = sh.spike_list[b].data() + sh.lo[q];
      const T* list_ltp = sh.spike_ltp[b].data() + (plastic ? sh.lo[q] : 0);
      const int32_t count = sh.spike_count[b][q];
      for (int32_t c = 0; c < count; ++c) {
        const int32_t j = list[c];
        if (prefetch && c + kRowsAhead < count) {  // the synapses of the row kRowsAhead spikes on
          const int32_t ja = list[c + kRowsAhead];
          const int64_t a0 = row_ptr[ja], a1 = row_ptr[ja + 1];
          if (a0 <= a1 && a1 <= e) {
            PrefetchRange(post + a0, (a1 - a0) * static_cast<int64_t>(sizeof(int32_t)));
            PrefetchRange(w + a0, (a1 - a0) * static_cast<int64_t>(sizeof(W)));
          }
        }
        int64_t k0 = row_ptr[j], k1 = row_ptr[j + 1];
        if (k1 < k0 || k1 > e) {
          sh.error.store(-3);
          goto step_done;
        }
        if (bisect) {
          const int32_t* first = post + k0;
          const int32_t* last = post + k1;
          k0 = std::lower_bound(first, last, static_cast<int32_t>(lo)) - post;
          k1 = std::lower_bound(post + k0, last, static_cast<int32_t>(hi)) - post;
        }
        const T ltp_j = plastic ? list_ltp[c] : T(0);
        const uint8_t code_j = code[j];  // 2: a static presynaptic neuron, no STDP on its synapses
        const bool learn = plastic && code_j != 2;
        int64_t k = k0;
        if constexpr (kFma && kD1 && kX86Simd && std::is_same_v<T, float> && std::is_same_v<W, float>) {
          if (vec_rows) {
            k = RowAvx2<kMode>(k0, k1, static_cast<int32_t>(n), post, w, elig, ring_now, spk8,
                               yd_post, g, learn, ltp_j, code_j == 1, neg_a_minus, inv, neg_clip, clip,
                               rows_trusted);
          }
        }
        for (; k < k1; ++k) {
          const int32_t i = post[k];
          if (checked && static_cast<uint64_t>(static_cast<uint32_t>(i)) >= static_cast<uint64_t>(n)) {
            sh.error.store(-1);
            goto step_done;
          }
          if (filter && (i < lo || i >= hi)) continue;
          T* __restrict target = ring_now;
          if constexpr (!kD1) {
            const int32_t dk = delay[k];
            if (checked && (dk < 1 || dk > d)) {
              sh.error.store(-2);
              goto step_done;
            }
            int32_t r = slot + dk;
            if (r >= d) r -= d;
            target = ring + static_cast<int64_t>(r) * n;
          }
          target[i] += g * S::Load(w[k]);
          if constexpr (plastic) {
            if (learn) {
              const T ltp = spk[i] ? ltp_j : T(0);
              const T diff = MulAdd<kFma>(neg_a_minus, yd_post[i], ltp);
              const T dw = code_j == 1 ? diff : -diff;  // sign_j * diff, exact
              ApplyDw<kFma, kMode, T, W>(w, elig, k, dw, inv, neg_clip, clip);
            }
          }
        }
      }
    }

    // ---- STDP on the incoming synapses of own spiking post; dw is 0 where the pre spiked (done in its
    // row above) or is static, which leaves the value unchanged (branch-free) ----
    if constexpr (plastic) {
      for (int64_t c = 0; c < ns; ++c) {
        const int32_t i = my_list[c];
        // Prefetch the entries of the in-list two spikes on, and the synapse values of the next one.
        if (prefetch && c + 2 < ns) {
          const int32_t i2 = my_list[c + 2];
          const int64_t a0 = l_ptr[i2], a1 = l_ptr[i2 + 1];
          if (a0 <= a1 && a1 <= e) {
            PrefetchRange(l_syn + a0, (a1 - a0) * static_cast<int64_t>(sizeof(uint32_t)));
            if (lin) PrefetchRange(l_pre + a0, (a1 - a0) * static_cast<int64_t>(sizeof(int32_t)));
          }
        }
        if (prefetch && c + 1 < ns) {
          const int32_t i1 = my_list[c + 1];
          const int64_t a0 = l_ptr[i1], a1 = l_ptr[i1 + 1];
          if (a0 <= a1 && a1 <= e) {
            for (int64_t q = a0; q < a1; ++q) {
              const int64_t k = l_syn[q];
              if constexpr (rstdp) {
                __builtin_prefetch(elig + k);
              } else {
                __builtin_prefetch(w + k);
              }
            }
          }
        }
        const int64_t p0 = l_ptr[i], p1 = l_ptr[i + 1];
        if (p1 < p0 || p1 > e) {
          sh.error.store(-3);
          goto step_done;
        }
        if constexpr (kFma && kX86Simd && std::is_same_v<T, float> && std::is_same_v<W, float>) {
          if (vec_inlist) {
            InListAvx2<kMode>(p0, p1, l_syn, l_pre, dw_silent, w, elig, inv, neg_clip, clip);
            continue;
          }
        }
        for (int64_t q = p0; q < p1; ++q) {
          const int64_t k = l_syn[q];
          if (checked && k >= e) {
            sh.error.store(-1);
            goto step_done;
          }
          const int64_t j = lin ? l_pre[q] : PreOfSlot(row_ptr, bucket, shift, n, k);
          if (checked && static_cast<uint64_t>(j) >= static_cast<uint64_t>(n)) {
            sh.error.store(-1);
            goto step_done;
          }
          ApplyDw<kFma, kMode, T, W>(w, elig, k, dw_silent[j], inv, neg_clip, clip);
        }
      }
    }
  step_done:;
  }
  if (p == 0) {
    *a.step = s;
    *a.elig_t0 = t0;
  }
}

// Runs thread p of the run set up in sh (dispatch on the plasticity mode and D == 1).
template <bool kFma, typename T, typename W>
FUMJAX_ALWAYS_INLINE void RunStepsPart(RunShared<T, W>& sh, int p) {
  const bool d1 = sh.a->d == 1;
  switch (sh.a->mode) {
    case PlasticityMode::kOff:
      return d1 ? RunStepsThread<kFma, PlasticityMode::kOff, true, T, W>(sh, p)
                : RunStepsThread<kFma, PlasticityMode::kOff, false, T, W>(sh, p);
    case PlasticityMode::kStdp:
      return d1 ? RunStepsThread<kFma, PlasticityMode::kStdp, true, T, W>(sh, p)
                : RunStepsThread<kFma, PlasticityMode::kStdp, false, T, W>(sh, p);
    default:
      return d1 ? RunStepsThread<kFma, PlasticityMode::kRstdp, true, T, W>(sh, p)
                : RunStepsThread<kFma, PlasticityMode::kRstdp, false, T, W>(sh, p);
  }
}

// Allocates the shared scratch for a.threads threads (neurons split evenly).
template <typename T, typename W>
void PrepareShared(const RunStepsArgs<T, W>& a, RunShared<T, W>& sh) {
  const int nt = a.threads;
  sh.a = &a;
  sh.lo.resize(static_cast<size_t>(nt) + 1);
  for (int q = 0; q <= nt; ++q) sh.lo[q] = a.n * q / nt;
  sh.ratio.resize(static_cast<size_t>(a.n));
  // dt / tau is loop-invariant (tau changes only between windows); XLA hoists it the same way.
  for (int64_t i = 0; i < a.n; ++i) sh.ratio[i] = a.dt / a.tau[i];
  sh.no_refractory = a.refractory_steps == 0;
  for (int64_t i = 0; i < a.n && sh.no_refractory; ++i) sh.no_refractory = a.refrac[i] == 0;
  const bool plastic = a.mode != PlasticityMode::kOff;
  const int buffers = nt > 1 ? 2 : 1;  // by step parity with several threads; one thread uses b = 0 only
  for (int b = 0; b < buffers; ++b) {
    sh.spike_list[b].resize(static_cast<size_t>(a.n));
    sh.spike_count[b].assign(static_cast<size_t>(nt), 0);
    if (plastic) {
      sh.spike_ltp[b].resize(static_cast<size_t>(a.n));
      sh.dw_silent_pre[b].resize(static_cast<size_t>(a.n));
      sh.spk8[b].resize(static_cast<size_t>(a.n) + 3);
      sh.yd_post[b].resize(static_cast<size_t>(a.n));
    }
  }
}

}  // namespace fumjax

#endif  // FUMJAX_CPP_RUN_STEPS_COMPUTE_H_
