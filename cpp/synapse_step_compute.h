// Pure compute of one `fumjax.dynamics.synapse_phase` (transmission + STDP/eligibility + traces), event-driven,
// for a whole network or one part of a partition (pre ids range over N_pre >= N neurons, posts are local).
// It is the synapse half of RunStepsThread (run_steps_compute.h) with the spikes of the presynaptic
// neurons given (an MPI rank gets them from the exchange) instead of computed: the same operations in the
// same order, so the results equal the jitted reference bit for bit (FMA placements as documented there).
//
// Per call: the rows of the spiking pre in ascending id (transmission with the weights from before this
// step's plasticity, then the pair STDP of the same synapse), the in-lists of the spiking posts (STDP of the
// synapses whose pre was silent), the dense renormalization of the eligibility when due (once per K steps),
// then the traces: x' = fma(x, decay_x, spike_pre) over N_pre, y' = fma(y, decay_y, spike) over N.
// No per-step pass over all synapses. Index arrays are checked where they are read (a call visits few).
// Transmission adds into the ring in ascending synapse order. With D = 1 the reference adds a segment_sum
// to the slot, which XLA may or may not rewrite into adding into the slot directly; the two agree because
// the slot was zeroed by this step's LIF half (`dynamics.step`), which this call assumes.
#ifndef FUMJAX_CPP_SYNAPSE_STEP_COMPUTE_H_
#define FUMJAX_CPP_SYNAPSE_STEP_COMPUTE_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "run_steps_compute.h"

namespace fumjax {

template <typename T, typename W>
struct SynapseStepArgs {
  int64_t n = 0;      // post neurons N (this part's)
  int64_t n_pre = 0;  // neurons the pre ids name (N_pre)
  int64_t e = 0;      // synapses E
  int32_t d = 1;      // ring slots D
  int32_t k_max = 0;  // eligibility table length - 1 (K)
  int32_t step = 0;   // the step being completed (state.step)

  // State, in place.
  T* ring = nullptr;           // (D, N)
  W* w = nullptr;              // (E,)
  W* elig = nullptr;           // (E,) scaled eligibility
  int32_t* elig_t0 = nullptr;  // ()
  T* x = nullptr;              // (N_pre,) presynaptic trace
  T* y = nullptr;              // (N,) postsynaptic trace

  // Read-only.
  const uint8_t* spikes_pre = nullptr;  // (N_pre,) 0/1
  const uint8_t* spikes = nullptr;      // (N,) 0/1
  const uint32_t* row_ptr = nullptr;    // (N_pre + 1,) CSR by pre
  const int32_t* pre_bucket = nullptr;  // ((E-1 >> pre_shift) + 1,), checked against row_ptr by the handler
  int32_t pre_shift = 9;
  const int32_t* post = nullptr;      // (E,) local post ids
  const int32_t* delay = nullptr;     // (E,), or null when D == 1
  const uint32_t* in_ptr = nullptr;   // (N + 1,)
  const uint32_t* in_syn = nullptr;   // (E,)
  const uint8_t* excitatory = nullptr;  // (N_pre,) pre code: 1 excitatory, 0 inhibitory, 2 static
  const W* gamma_pow = nullptr;       // (K+1,)
  const T* inv_pow = nullptr;         // (K+1,)

  T g_syn{}, a_plus{}, a_minus{}, w_clip{}, decay_x{}, decay_y{};
  PlasticityMode mode = PlasticityMode::kOff;
};

// The pre of CSR slot s by bisection between the pre of its bucket and of the next one: a part's rows are
// mostly empty (the pre of other parts reach few of its posts), so PreOfSlot's forward walk would be long.
FUMJAX_ALWAYS_INLINE int64_t PreOfSlotBisect(const uint32_t* __restrict row_ptr, const int32_t* __restrict bucket,
                                             int64_t n_buckets, int32_t shift, int64_t n_pre, int64_t s) {
  const int64_t b = s >> shift;
  const int64_t lo = bucket[b];
  const int64_t hi = b + 1 < n_buckets ? bucket[b + 1] : n_pre - 1;
  // the first m in (lo, hi + 1] with row_ptr[m] > s; its row m - 1 holds s
  return std::upper_bound(row_ptr + lo + 1, row_ptr + hi + 1, static_cast<uint32_t>(s)) - row_ptr - 1;
}

// One synapse_phase. Returns 0, or -1 (a post/in_syn index out of range), -2 (a delay outside [1, D]),
// -3 (row_ptr/in_ptr not a CSR pointer); state may then be partly updated.
template <bool kFma, PlasticityMode kMode, typename T, typename W>
FUMJAX_ALWAYS_INLINE int SynapseStep(const SynapseStepArgs<T, W>& a) {
  using S = Store<T, W>;
  constexpr bool plastic = kMode != PlasticityMode::kOff;
  const int64_t n = a.n, n_pre = a.n_pre, e = a.e;
  const int32_t d = a.d, s = a.step;
  const int64_t n_buckets = e > 0 ? ((e - 1) >> a.pre_shift) + 1 : 0;
  const T g = a.g_syn, clip = a.w_clip, neg_clip = -a.w_clip, neg_a_minus = -a.a_minus, zero = T(0);
  const uint8_t* __restrict sp_pre = a.spikes_pre;
  const uint8_t* __restrict sp = a.spikes;
  const T* __restrict x = a.x;
  const T* __restrict y = a.y;
  W* __restrict w = a.w;
  W* __restrict elig = a.elig;

  T inv = T(1);
  if constexpr (kMode == PlasticityMode::kRstdp) {
    int32_t t0 = *a.elig_t0;
    const int32_t since = s - t0;
    if (since >= a.k_max) {  // dense renormalization once per K steps, before this step's increments
      const T scale = S::Load(a.gamma_pow[JnpIndex(since < a.k_max ? since : a.k_max, a.k_max + 1)]);
      for (int64_t k = 0; k < e; ++k) elig[k] = S::Put(S::Load(elig[k]) * scale);
      t0 = s;
      *a.elig_t0 = t0;
    }
    inv = a.inv_pow[JnpIndex(static_cast<int64_t>(s) + 1 - t0, a.k_max + 1)];
  }

  const int32_t slot = FloorMod(s, d);
  for (int64_t j0 = 0; j0 < n_pre; j0 += 8) {
    uint64_t word = 0;
    const int64_t m = std::min<int64_t>(8, n_pre - j0);
    std::memcpy(&word, sp_pre + j0, static_cast<size_t>(m));
    if (word == 0) continue;
    for (int64_t j = j0; j < j0 + m; ++j) {
      if (!sp_pre[j]) continue;
      const int64_t k0 = a.row_ptr[j], k1 = a.row_ptr[j + 1];
      if (k1 < k0 || k1 > e) return -3;
      const uint8_t code_j = a.excitatory[j];
      const bool learn = plastic && code_j != 2;
      const T ltp_j = a.a_plus * (x[j] * a.decay_x);
      for (int64_t k = k0; k < k1; ++k) {
        const int32_t i = a.post[k];
        if (static_cast<uint64_t>(static_cast<uint32_t>(i)) >= static_cast<uint64_t>(n)) return -1;
        T* __restrict target = a.ring;
        if (d > 1) {
          const int32_t dk = a.delay[k];
          if (dk < 1 || dk > d) return -2;
          int32_t r = slot + dk;
          if (r >= d) r -= d;
          target = a.ring + static_cast<int64_t>(r) * n;
        }
        target[i] += g * S::Load(w[k]);
        if constexpr (plastic) {
          if (learn) {
            const T ltp = sp[i] ? ltp_j : zero;
            const T diff = MulAdd<kFma>(neg_a_minus, y[i] * a.decay_y, ltp);
            ApplyDw<kFma, kMode, T, W>(w, elig, k, code_j == 1 ? diff : -diff, inv, neg_clip, clip);
          }
        }
      }
    }
  }

  if constexpr (plastic) {
    for (int64_t i = 0; i < n; ++i) {
      if (!sp[i]) continue;
      const int64_t p0 = a.in_ptr[i], p1 = a.in_ptr[i + 1];
      if (p1 < p0 || p1 > e) return -3;
      for (int64_t q = p0; q < p1; ++q) {
        const int64_t k = a.in_syn[q];
        if (k >= e) return -1;
        const int64_t j = PreOfSlotBisect(a.row_ptr, a.pre_bucket, n_buckets, a.pre_shift, n_pre, k);
        // dw of a silent pre: sign * (ltp - 0); 0 where the pre spiked (done in its row) or is static
        const uint8_t code_j = a.excitatory[j];
        const T diff = a.a_plus * (x[j] * a.decay_x) - zero;
        const T dw = (sp_pre[j] == 0 && code_j != 2) ? (code_j == 1 ? diff : -diff) : zero;
        ApplyDw<kFma, kMode, T, W>(w, elig, k, dw, inv, neg_clip, clip);
      }
    }
    T* __restrict xw = a.x;
    T* __restrict yw = a.y;
    for (int64_t j = 0; j < n_pre; ++j) xw[j] = MulAdd<kFma>(xw[j], a.decay_x, static_cast<T>(sp_pre[j]));
    for (int64_t i = 0; i < n; ++i) yw[i] = MulAdd<kFma>(yw[i], a.decay_y, static_cast<T>(sp[i]));
  }
  return 0;
}

}  // namespace fumjax

#endif  // FUMJAX_CPP_SYNAPSE_STEP_COMPUTE_H_
