"""Reference backend: pure jnp, the golden truth every other backend must match."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array


def lif_step(
    v_mV: Array,
    i_mV: Array,
    tau_ms: Array,
    v_th_mV: Array,
    refrac_left: Array,
    *,
    v_rest_mV: float,
    v_reset_mV: float,
    dt_ms: float,
    refractory_steps: int,
) -> tuple[Array, Array, Array]:
    """One forward-Euler LIF step for N neurons.

    v_mV, i_mV, tau_ms, v_th_mV: (N,) float; refrac_left: (N,) int32 steps still refractory.
    V = V + (dt/tau)(v_rest - V) + I; spike where V >= v_th and not refractory; spiking V -> v_reset.
    A refractory neuron (refrac_left > 0) is held at v_reset and cannot spike.
    Returns (v_mV, spikes (N,) uint8, refrac_left).
    """
    v = v_mV + (dt_ms / tau_ms) * (v_rest_mV - v_mV) + i_mV
    reset = jnp.asarray(v_reset_mV, v.dtype)
    v = jnp.where(refrac_left > 0, reset, v)
    spiked = (v >= v_th_mV) & (refrac_left <= 0)
    v = jnp.where(spiked, reset, v)
    refrac = jnp.where(spiked, refractory_steps, jnp.maximum(refrac_left - 1, 0)).astype(refrac_left.dtype)
    return v, spiked.astype(jnp.uint8), refrac


def propagate(
    w: Array, spikes_pre: Array, pre: Array, post: Array, n_neurons: int, *, g_syn_mV: float
) -> Array:
    """Synaptic input from this step's spikes: (N,) mV, I_i = g_syn * sum_j w_ij s_j.

    w, pre, post: (E,) in CSR order; spikes_pre: (N_pre,) uint8 spikes of the neurons `pre` names.
    """
    contrib = (g_syn_mV * w.astype(jnp.float32 if w.dtype.itemsize < 4 else w.dtype)) * spikes_pre[pre]
    return jax.ops.segment_sum(contrib, post, num_segments=n_neurons)


def stdp_delta(
    x_pre: Array,
    y_post: Array,
    spikes_pre: Array,
    spikes_post: Array,
    pre: Array,
    post: Array,
    sign: Array,
    *,
    a_plus: float,
    a_minus: float,
) -> Array:
    """Pair-STDP weight change of each synapse this step: (E,).

    x_pre: (N_pre,) and y_post: (N,) traces decayed to this step but not yet incremented by its spikes, so
    Δt = 0 pairs give nothing. spikes_pre: (N_pre,), spikes_post: (N,) uint8. sign: (N_pre,) +1 for
    excitatory, -1 for inhibitory presynaptic neurons (signs flip), 0 for static ones (Network.plastic_pre
    False): their synapses get exactly dw = 0 (a select, so never -0 or NaN).
    Δw = sign_j * (A+ x_j [i spiked] - A- y_i [j spiked]); selects rather than products with the spike
    flags keep every float operation the same whether or not a compiler fuses multiply-adds.
    """
    zero = jnp.zeros((), x_pre.dtype)
    ltp = jnp.where(spikes_post.astype(bool)[post], a_plus * x_pre[pre], zero)
    ltd = jnp.where(spikes_pre.astype(bool)[pre], a_minus * y_post[post], zero)
    s = sign.astype(x_pre.dtype)[pre]
    return jnp.where(s != zero, s * (ltp - ltd), zero)
