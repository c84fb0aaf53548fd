"""Reference backend: pure jnp, the golden truth every other backend must match."""

from __future__ import annotations

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
