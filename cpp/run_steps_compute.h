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
// Everywhere else one operation = one rounding, in the reference's order:
//   STDP reads the decayed traces rounded once (x*decay, recomputed inside XLA's gathers, not contracted);
//   ltp = spiked[i] ? a_plus * xd[j] : 0, ltd = spiked[j] ? a_minus * yd[i] : 0, dw = sign_j * (ltp - ltd);
//   w' = clip(w + dw, -c, c) (sign is +-1, so contraction cannot change it); ring += g_syn * w (exact
//   whether contracted or not: the spike factor is 1); the dense renormalization e_hat *= gamma^k is a
//   plain multiply (its own XLA computation, a cond branch).
// Transmission adds into the ring in the reference scatter's order: ascending synapse index (CSR, by pre).
#ifndef FUMJAX_CPP_RUN_STEPS_COMPUTE_H_
#define FUMJAX_CPP_RUN_STEPS_COMPUTE_H_

#include <cmath>
#include <cstdint>

namespace fumjax {

// Forced inlining lets a caller compiled for another target (e.g. __attribute__((target("fma")))) get
// the whole loop nest generated for that target.
#if defined(__GNUC__) || defined(__clang__)
#define FUMJAX_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FUMJAX_ALWAYS_INLINE inline
#endif

enum class PlasticityMode : int32_t { kOff = 0, kStdp = 1, kRstdp = 2 };

// Everything one run needs. State arrays are updated in place; read-only arrays are const.
template <typename T>
struct RunStepsArgs {
  int64_t n = 0;        // neurons N
  int64_t e = 0;        // synapses E
  int32_t d = 1;        // ring slots D (max delay)
  int64_t t_steps = 0;  // steps T
  int32_t k_max = 0;    // eligibility table length - 1 (K)

  // State, in place.
  T* v = nullptr;                  // (N,)
  int32_t* refrac = nullptr;       // (N,)
  T* x = nullptr;                  // (N,) presynaptic trace
  T* y = nullptr;                  // (N,) postsynaptic trace
  T* ring = nullptr;               // (D, N)
  T* w = nullptr;                  // (E,)
  T* elig = nullptr;               // (E,) scaled eligibility
  int32_t* elig_t0 = nullptr;      // ()
  int32_t* window_spikes = nullptr;  // (N,)
  int32_t* step = nullptr;         // ()

  // Read-only inputs.
  const T* tau = nullptr;          // (N,)
  const T* v_th = nullptr;         // (N,)
  const T* i_ext = nullptr;        // (T, N)
  const int32_t* row_ptr = nullptr;  // (N+1,)
  const int32_t* pre = nullptr;    // (E,)
  const int32_t* in_pre = nullptr;  // optional (E,): pre[in_syn[p]] (saves a dependent random load); or null
  const int32_t* post = nullptr;   // (E,)
  const int32_t* delay = nullptr;  // (E,)
  const int32_t* in_ptr = nullptr;   // (N+1,)
  const int32_t* in_syn = nullptr;   // (E,)
  const uint8_t* excitatory = nullptr;  // (N,) pre code: 1 excitatory (sign +1), 0 inhibitory (-1), 2 static
  const T* gamma_pow = nullptr;    // (K+1,)
  const T* inv_pow = nullptr;      // (K+1,)

  // Scalars, already rounded to T like jnp's weak-typed Python floats.
  T v_rest{}, v_reset{}, dt{}, g_syn{}, a_plus{}, a_minus{}, w_clip{}, decay_x{}, decay_y{};
  int32_t refractory_steps = 0;
  PlasticityMode mode = PlasticityMode::kOff;

  // Outputs and scratch.
  uint8_t* spikes = nullptr;   // (T, N)
  T* ratio = nullptr;          // scratch (N,): dt / tau
  int32_t* spike_list = nullptr;  // scratch (N,)
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

// Input and LIF for one step over all neurons: I = ring_now + i_ext (ring_now then zeroed);
// v' = fma(dt/tau, v_rest - v, v) + I; refractory/spike/reset as reference.lif_step; window count += spike.
// A function of its own so that the __restrict parameters let GCC vectorize without alias versioning.
template <bool kFma, typename T>
FUMJAX_ALWAYS_INLINE void LifInput(int64_t n, T* __restrict ring_now, const T* __restrict iext,
                                   const T* __restrict ratio, const T* __restrict v_th, T v_rest, T v_reset,
                                   int32_t refractory_steps, T* __restrict v, int32_t* __restrict refrac,
                                   uint8_t* __restrict spk, int32_t* __restrict wspk) {
  const T zero = T(0);
  for (int64_t i = 0; i < n; ++i) {
    const T cur = ring_now[i] + iext[i];
    ring_now[i] = zero;
    const T vk = v[i];
    const T vn = MulAdd<kFma>(ratio[i], v_rest - vk, vk) + cur;
    const int32_t r = refrac[i];
    const bool free = r <= 0;  // not refractory: may spike
    const bool ge = vn >= v_th[i];
    const bool spiked = ge & free;
    const bool keep = free & !ge;  // refractory or spiking -> v_reset (one select, as in lif_compute.h)
    v[i] = keep ? vn : v_reset;
    spk[i] = static_cast<uint8_t>(spiked);
    const int32_t dec = static_cast<int32_t>(static_cast<uint32_t>(r) - 1u);  // wrapping, like jnp int32
    const int32_t held = dec > 0 ? dec : 0;
    refrac[i] = spiked ? refractory_steps : held;
    wspk[i] += static_cast<int32_t>(spiked);
  }
}

// Trace decay and increment over all neurons: z' = fma(z, decay, spiked).
template <bool kFma, typename T>
FUMJAX_ALWAYS_INLINE void DecayIncrement(int64_t n, T* __restrict z, T decay, const uint8_t* __restrict spk) {
  for (int64_t i = 0; i < n; ++i) z[i] = MulAdd<kFma>(z[i], decay, static_cast<T>(spk[i]));
}

// The step loop, specialized on the plasticity mode and on D == 1 so the inner loops carry no mode tests.
template <bool kFma, PlasticityMode kMode, bool kD1, typename T>
FUMJAX_ALWAYS_INLINE int RunStepsImpl(const RunStepsArgs<T>& a) {
  const int64_t n = a.n;
  const int32_t d = kD1 ? 1 : a.d;
  T* __restrict v = a.v;
  int32_t* __restrict refrac = a.refrac;
  T* __restrict x = a.x;
  T* __restrict y = a.y;
  T* __restrict ring = a.ring;
  T* __restrict w = a.w;
  T* __restrict elig = a.elig;
  int32_t* __restrict wspk = a.window_spikes;
  const T* __restrict v_th = a.v_th;
  T* __restrict ratio = a.ratio;
  int32_t* __restrict spike_list = a.spike_list;
  const int32_t* __restrict row_ptr = a.row_ptr;
  const int32_t* __restrict pre = a.pre;
  const int32_t* __restrict in_pre = a.in_pre;
  const int32_t* __restrict post = a.post;
  const int32_t* __restrict delay = a.delay;
  const int32_t* __restrict in_ptr = a.in_ptr;
  const int32_t* __restrict in_syn = a.in_syn;
  const uint8_t* __restrict exc = a.excitatory;

  const T v_rest = a.v_rest, v_reset = a.v_reset, g = a.g_syn;
  const T a_plus = a.a_plus, a_minus = a.a_minus, clip = a.w_clip, neg_clip = -a.w_clip;
  const T dx = a.decay_x, dy = a.decay_y;
  const int32_t rs = a.refractory_steps;
  const T zero = T(0);
  constexpr bool plastic = kMode != PlasticityMode::kOff;
  constexpr bool rstdp = kMode == PlasticityMode::kRstdp;
  const int64_t e = a.e;

  // dt / tau is loop-invariant (tau changes only between windows); XLA hoists it the same way.
  for (int64_t i = 0; i < n; ++i) ratio[i] = a.dt / a.tau[i];

  int32_t s = *a.step;
  int32_t t0 = *a.elig_t0;
  for (int64_t t = 0; t < a.t_steps; ++t, ++s) {
    const int32_t slot = FloorMod(s, d);
    T* __restrict ring_now = ring + static_cast<int64_t>(slot) * n;
    uint8_t* __restrict spk = a.spikes + t * n;

    // ---- input + LIF (vectorized; branch-free selects) ----
    LifInput<kFma, T>(n, ring_now, a.i_ext + t * n, ratio, v_th, v_rest, v_reset, rs, v, refrac, spk, wspk);

    // ---- spike list (ascending), skipping zero words fast ----
    int64_t ns = 0;
    {
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) {
        uint64_t word;
        __builtin_memcpy(&word, spk + i, 8);
        if (word == 0) continue;
        for (int64_t q = i; q < i + 8; ++q) {
          spike_list[ns] = static_cast<int32_t>(q);
          ns += spk[q];
        }
      }
      for (; i < n; ++i) {
        spike_list[ns] = static_cast<int32_t>(i);
        ns += spk[i];
      }
    }

    // ---- eligibility renormalization (dense, every K steps) and this step's scale ----
    T inv = T(1);
    if constexpr (rstdp) {
      const int32_t since = s - t0;
      if (since >= a.k_max) {
        const T scale = a.gamma_pow[JnpIndex(since < a.k_max ? since : a.k_max, a.k_max + 1)];
        for (int64_t k = 0; k < e; ++k) elig[k] = elig[k] * scale;
        t0 = s;
      }
      inv = a.inv_pow[JnpIndex(static_cast<int64_t>(s) + 1 - t0, a.k_max + 1)];
    }

    // ---- rows of spiking pre: transmission with this step's (pre-plasticity) weights, then STDP ----
    // Ring additions keep the reference scatter's order (ascending synapse index); each synapse's weight
    // is read for transmission before its own update, and no other synapse's update is visible to it.
    for (int64_t q = 0; q < ns; ++q) {
      const int32_t j = spike_list[q];
      const int32_t k0 = row_ptr[j], k1 = row_ptr[j + 1];
      if (k0 < 0 || k1 < k0 || k1 > e) return -3;
      const T ltp_j = a_plus * (x[j] * dx);  // STDP reads the decayed trace rounded once
      const uint8_t code_j = exc[j];  // 2: a static presynaptic neuron, no STDP on its synapses
      for (int32_t k = k0; k < k1; ++k) {
        const int32_t i = post[k];
        if (static_cast<uint32_t>(i) >= static_cast<uint64_t>(n)) return -1;
        T* __restrict target = ring_now;
        if constexpr (!kD1) {
          const int32_t dk = delay[k];
          if (dk < 1 || dk > d) return -2;
          int32_t r = slot + dk;
          if (r >= d) r -= d;
          target = ring + static_cast<int64_t>(r) * n;
        }
        target[i] += g * w[k];
        if constexpr (!plastic) continue;
        if (code_j == 2) continue;
        const T ltp = spk[i] ? ltp_j : zero;
        const T ltd = a_minus * (y[i] * dy);
        const T diff = ltp - ltd;
        const T dw = code_j == 1 ? diff : -diff;  // sign_j * diff, exact
        if constexpr (rstdp) {
          elig[k] = MulAdd<kFma>(dw, inv, elig[k]);
        } else {
          const T nw = w[k] + dw;
          const T lo = nw < neg_clip ? neg_clip : nw;  // maximum(-c, .)
          w[k] = lo > clip ? clip : lo;                // minimum(c, .)
        }
      }
    }
    if constexpr (!plastic) continue;

    // ---- STDP on the incoming synapses of spiking post whose pre is silent (ltd = 0) ----
    for (int64_t q = 0; q < ns; ++q) {
      const int32_t i = spike_list[q];
      const int32_t p0 = in_ptr[i], p1 = in_ptr[i + 1];
      if (p0 < 0 || p1 < p0 || p1 > e) return -3;
      for (int32_t p = p0; p < p1; ++p) {
        const int32_t k = in_syn[p];
        if (static_cast<uint32_t>(k) >= static_cast<uint64_t>(e)) return -1;
        const int32_t j = in_pre != nullptr ? in_pre[p] : pre[k];
        if (static_cast<uint32_t>(j) >= static_cast<uint64_t>(n)) return -1;
        if (spk[j] || exc[j] == 2) continue;  // done with the pre's row above, or static
        const T ltp = a_plus * (x[j] * dx);
        const T diff = ltp - zero;
        const T dw = exc[j] == 1 ? diff : -diff;
        if constexpr (rstdp) {
          elig[k] = MulAdd<kFma>(dw, inv, elig[k]);
        } else {
          const T nw = w[k] + dw;
          const T lo = nw < neg_clip ? neg_clip : nw;
          w[k] = lo > clip ? clip : lo;
        }
      }
    }

    // ---- traces: decay and increment (contracted like XLA) ----
    DecayIncrement<kFma, T>(n, x, dx, spk);
    DecayIncrement<kFma, T>(n, y, dy, spk);
  }
  *a.step = s;
  *a.elig_t0 = t0;
  return 0;
}

// Runs a.t_steps steps. Returns 0 on success, or a negative code when an index read from the network
// arrays is out of range (-1: post/pre/in_syn, -2: delay, -3: row_ptr/in_ptr); checked only where used.
template <bool kFma, typename T>
FUMJAX_ALWAYS_INLINE int RunSteps(const RunStepsArgs<T>& a) {
  const bool d1 = a.d == 1;
  switch (a.mode) {
    case PlasticityMode::kOff:
      return d1 ? RunStepsImpl<kFma, PlasticityMode::kOff, true, T>(a)
                : RunStepsImpl<kFma, PlasticityMode::kOff, false, T>(a);
    case PlasticityMode::kStdp:
      return d1 ? RunStepsImpl<kFma, PlasticityMode::kStdp, true, T>(a)
                : RunStepsImpl<kFma, PlasticityMode::kStdp, false, T>(a);
    default:
      return d1 ? RunStepsImpl<kFma, PlasticityMode::kRstdp, true, T>(a)
                : RunStepsImpl<kFma, PlasticityMode::kRstdp, false, T>(a);
  }
}

}  // namespace fumjax

#endif  // FUMJAX_CPP_RUN_STEPS_COMPUTE_H_
