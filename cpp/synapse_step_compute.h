// Pure compute of one `fumjax.dynamics.synapse_phase` (transmission + STDP/eligibility + traces), event-driven,
// for a whole network or one part of a partition (pre ids range over N_pre >= N neurons, posts are local).
// It is the synapse half of RunStepsThread (run_steps_compute.h) with the spikes of the presynaptic
// neurons given (an MPI rank gets them from the exchange) instead of computed: the same operations in the
// same order, so the results equal the jitted reference bit for bit (FMA placements as documented there).
//
// Per call: the rows of the spiking pre in ascending id (transmission with the weights from before this
// step's plasticity, then the pair STDP of the same synapse), the in-lists of the spiking posts (STDP of the
// synapses whose pre was silent; each entry's pre from a Network's per-synapse pre where given, else by
// bisecting row_ptr between two pre_bucket entries), the dense renormalization of the eligibility when due
// (once per K steps), then the traces: x' = fma(x, decay_x, spike_pre) over N_pre, y' = fma(y, decay_y,
// spike) over N.
// No per-step pass over all synapses, except one sequential sweep instead of the in-lists when more than
// 1/8 of all synapses end on a spiking post (then cheaper than as many random visits).
// Index arrays are checked where they are read.
// Transmission adds into the ring in ascending synapse order. With D = 1 the reference adds a segment_sum
// to the slot, which XLA may or may not rewrite into adding into the slot directly; the two agree because
// the slot was zeroed by this step's LIF half (`dynamics.step`), which this call assumes.
#ifndef FUMJAX_CPP_SYNAPSE_STEP_COMPUTE_H_
#define FUMJAX_CPP_SYNAPSE_STEP_COMPUTE_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

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
  const int32_t* pre = nullptr;       // (E,) pre of each CSR slot, or null: from pre_bucket and row_ptr
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

#if defined(__x86_64__) || defined(__i386__)
// The dense-firing sweep over one silent pre's row, 8 synapses at a time (float32 storage; called only from
// the AVX2+FMA code): where the post spiked (4-byte gathers from spk8, padded by 3), eligibility += dw * inv
// or w = clip(w + dw), the scalar ApplyDw's operations lane by lane; masked stores, so untouched lanes keep
// their bits. Stops at the first block with a post outside [0, n) (the scalar loop goes on from there and
// reports it). Returns the first synapse not done.
template <PlasticityMode kMode>
__attribute__((target("avx2,fma"))) int64_t SweepRowAvx2(int64_t k, int64_t k1, int32_t n,
                                                         const int32_t* __restrict post, float* __restrict w,
                                                         float* __restrict elig, const uint8_t* __restrict spk8,
                                                         float dw, float inv, float lo_clip, float hi_clip) {
  const __m256 dw8 = _mm256_set1_ps(dw), inv8 = _mm256_set1_ps(inv);
  const __m256 lo8 = _mm256_set1_ps(lo_clip), hi8 = _mm256_set1_ps(hi_clip);
  const __m256i zero = _mm256_setzero_si256(), last = _mm256_set1_epi32(n - 1), low = _mm256_set1_epi32(0xff);
  const int* spk4 = reinterpret_cast<const int*>(spk8);
  float* const dst = kMode == PlasticityMode::kRstdp ? elig : w;
  for (; k + 8 <= k1; k += 8) {
    const __m256i ii = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(post + k));
    const __m256i bad = _mm256_or_si256(_mm256_cmpgt_epi32(zero, ii), _mm256_cmpgt_epi32(ii, last));
    if (!_mm256_testz_si256(bad, bad)) break;
    const __m256i fired = _mm256_cmpgt_epi32(_mm256_and_si256(_mm256_i32gather_epi32(spk4, ii, 1), low), zero);
    if (_mm256_testz_si256(fired, fired)) continue;
    const __m256 old = _mm256_loadu_ps(dst + k);
    __m256 out;
    if constexpr (kMode == PlasticityMode::kRstdp) {
      out = _mm256_fmadd_ps(dw8, inv8, old);
    } else {
      out = _mm256_min_ps(hi8, _mm256_max_ps(lo8, _mm256_add_ps(old, dw8)));
    }
    _mm256_maskstore_ps(dst + k, fired, out);
  }
  return k;
}
#else
template <PlasticityMode kMode, typename... Args>
FUMJAX_ALWAYS_INLINE int64_t SweepRowAvx2(int64_t k, Args...) {
  return k;
}
#endif

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
  // The vector row pass (run_steps' RowAvx2) reads y * decay_y and the spike bytes (padded by 3 for its
  // 4-byte gathers) from arrays of their own.
  constexpr bool kVecRows =
      kFma && kX86Simd && std::is_same_v<T, float> && std::is_same_v<W, float>;
  std::vector<T> yd;
  std::vector<uint8_t> spk8;
  if (kVecRows) {
    spk8.assign(static_cast<size_t>(n) + 3, 0);
    std::memcpy(spk8.data(), sp, static_cast<size_t>(n));
    if (d == 1) {
      yd.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) yd[i] = y[i] * a.decay_y;
    }
  }
  // The spiking pre (ascending) and posts, as lists, so that the synapse passes can prefetch ahead.
  std::vector<int32_t> list_pre, list_post;
  for (int64_t j0 = 0; j0 < n_pre; j0 += 8) {
    uint64_t word = 0;
    const int64_t m = std::min<int64_t>(8, n_pre - j0);
    std::memcpy(&word, sp_pre + j0, static_cast<size_t>(m));
    if (word == 0) continue;
    for (int64_t j = j0; j < j0 + m; ++j) {
      if (sp_pre[j]) list_pre.push_back(static_cast<int32_t>(j));
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    if (sp[i]) list_post.push_back(static_cast<int32_t>(i));
  }
  const bool prefetch = e * static_cast<int64_t>(sizeof(W)) >= kPrefetchMinBytes;
  constexpr size_t kRowsAhead = 2;
  for (size_t c = 0; c < list_pre.size(); ++c) {
    const int32_t j = list_pre[c];
    if (prefetch && c + kRowsAhead < list_pre.size()) {  // the synapses of the row kRowsAhead spikes on
      const int32_t ja = list_pre[c + kRowsAhead];
      const int64_t a0 = a.row_ptr[ja], a1 = a.row_ptr[ja + 1];
      if (a0 <= a1 && a1 <= e) {
        PrefetchRange(a.post + a0, (a1 - a0) * static_cast<int64_t>(sizeof(int32_t)));
        PrefetchRange(w + a0, (a1 - a0) * static_cast<int64_t>(sizeof(W)));
        if (kMode == PlasticityMode::kRstdp) PrefetchRange(elig + a0, (a1 - a0) * static_cast<int64_t>(sizeof(W)));
      }
    }
    const int64_t k0 = a.row_ptr[j], k1 = a.row_ptr[j + 1];
    if (k1 < k0 || k1 > e) return -3;
    const uint8_t code_j = a.excitatory[j];
    const bool learn = plastic && code_j != 2;
    const T ltp_j = a.a_plus * (x[j] * a.decay_x);
    int64_t k = k0;
    if constexpr (kVecRows) {  // 8 synapses at a time where the row's posts ascend (checked per block)
      if (d == 1) {
        k = RowAvx2<kMode>(k0, k1, static_cast<int32_t>(n), a.post, w, elig, a.ring, spk8.data(), yd.data(), g,
                           learn, ltp_j, code_j == 1, neg_a_minus, inv, neg_clip, clip, false);
      }
    }
    for (; k < k1; ++k) {
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

  if constexpr (plastic) {
    // STDP of the synapses whose post spiked and whose pre was silent (dw = sign * (ltp - 0)): through the
    // in-lists of the spiking posts, or, when those hold more than 1/8 of all synapses (dense firing), in
    // one sequential sweep over the rows of the silent pre, which reads memory in order instead of at
    // random. Both update the same synapses with the same values (the in-list pass also adds dw = 0 where
    // the pre spiked or is static, which changes no value).
    int64_t in_work = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (sp[i]) in_work += static_cast<int64_t>(a.in_ptr[i + 1]) - static_cast<int64_t>(a.in_ptr[i]);
    }
    if (8 * in_work > e) {
      for (int64_t j = 0; j < n_pre; ++j) {
        const uint8_t code_j = a.excitatory[j];
        if (sp_pre[j] || code_j == 2) continue;
        const int64_t k0 = a.row_ptr[j], k1 = a.row_ptr[j + 1];
        if (k1 < k0 || k1 > e) return -3;
        const T diff = a.a_plus * (x[j] * a.decay_x) - zero;
        const T dw = code_j == 1 ? diff : -diff;
        int64_t k = k0;
        if constexpr (kVecRows) {
          k = SweepRowAvx2<kMode>(k0, k1, static_cast<int32_t>(n), a.post, w, elig, spk8.data(), dw, inv, neg_clip,
                                  clip);
        }
        for (; k < k1; ++k) {
          const int32_t i = a.post[k];
          if (static_cast<uint64_t>(static_cast<uint32_t>(i)) >= static_cast<uint64_t>(n)) return -1;
          if (sp[i]) ApplyDw<kFma, kMode, T, W>(w, elig, k, dw, inv, neg_clip, clip);
        }
      }
    } else {
      for (size_t c = 0; c < list_post.size(); ++c) {
        const int32_t i = list_post[c];
        if (prefetch && c + 1 < list_post.size()) {  // the next in-list's synapse values and pre
          const int32_t i1 = list_post[c + 1];
          const int64_t a0 = a.in_ptr[i1], a1 = a.in_ptr[i1 + 1];
          if (a0 <= a1 && a1 <= e) {
            for (int64_t q = a0; q < a1; ++q) {
              const int64_t k = a.in_syn[q];
              __builtin_prefetch(kMode == PlasticityMode::kRstdp ? elig + k : w + k);
              if (a.pre != nullptr) __builtin_prefetch(a.pre + k);
            }
          }
        }
        const int64_t p0 = a.in_ptr[i], p1 = a.in_ptr[i + 1];
        if (p1 < p0 || p1 > e) return -3;
        for (int64_t q = p0; q < p1; ++q) {
          const int64_t k = a.in_syn[q];
          if (k >= e) return -1;
          const int64_t j = a.pre != nullptr
                                ? a.pre[k]
                                : PreOfSlotBisect(a.row_ptr, a.pre_bucket, n_buckets, a.pre_shift, n_pre, k);
          if (static_cast<uint64_t>(j) >= static_cast<uint64_t>(n_pre)) return -1;
          // 0 where the pre spiked (done in its row) or is static
          const uint8_t code_j = a.excitatory[j];
          const T diff = a.a_plus * (x[j] * a.decay_x) - zero;
          const T dw = (sp_pre[j] == 0 && code_j != 2) ? (code_j == 1 ? diff : -diff) : zero;
          ApplyDw<kFma, kMode, T, W>(w, elig, k, dw, inv, neg_clip, clip);
        }
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
