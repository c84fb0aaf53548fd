// Pure LIF-step compute: no XLA types, usable from tests or other backends.
#ifndef FUMJAX_CPP_LIF_COMPUTE_H_
#define FUMJAX_CPP_LIF_COMPUTE_H_

#include <cstdint>

namespace fumjax {

// One forward-Euler LIF step for n neurons, matching fumjax/kernels/reference.py bit for bit:
//   v' = v + (dt / tau) * (v_rest - v) + i     (evaluated left to right in T, no FMA:
//                                               build with -ffp-contract=off)
//   refractory (refrac > 0): v' = v_reset, no spike
//   spike where v' >= v_th and not refractory: v' = v_reset, refrac' = refractory_steps
//   otherwise refrac' = max(refrac - 1, 0)
// Branch-free (selects only) so the loop auto-vectorizes.
template <typename T>
inline void LifStep(int64_t n, const T* __restrict v, const T* __restrict i, const T* __restrict tau,
                    const T* __restrict v_th, const int32_t* __restrict refrac, T v_rest, T v_reset,
                    T dt, int32_t refractory_steps, T* __restrict v_out, uint8_t* __restrict spikes,
                    int32_t* __restrict refrac_out) {
  for (int64_t k = 0; k < n; ++k) {
    const T vk = v[k];
    const T ratio = dt / tau[k];
    const T drive = ratio * (v_rest - vk);
    T vn = vk + drive;
    vn = vn + i[k];
    const int32_t r = refrac[k];
    const bool free = r <= 0;  // not refractory: may spike
    const bool ge = vn >= v_th[k];
    const bool spiked = ge & free;
    // Refractory or spiking -> v_reset. One select (two chained float selects defeat GCC's
    // if-conversion); same result as the reference's two jnp.where, NaN included.
    const bool keep = free & !ge;
    v_out[k] = keep ? vn : v_reset;
    spikes[k] = static_cast<uint8_t>(spiked);
    // Wrapping decrement (like jnp int32 arithmetic), then max(., 0).
    const int32_t dec = static_cast<int32_t>(static_cast<uint32_t>(r) - 1u);
    const int32_t held = dec > 0 ? dec : 0;
    refrac_out[k] = spiked ? refractory_steps : held;
  }
}

}  // namespace fumjax

#endif  // FUMJAX_CPP_LIF_COMPUTE_H_
