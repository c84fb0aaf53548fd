"""The dynamic state of a network: a frozen pytree that every step function consumes and returns."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from fumjax.compact import CompactNetwork
from fumjax.config import FumConfig
from fumjax.network import Network

__all__ = ["State", "init_state", "eligibility", "compute_dtype", "weight_dtype"]


@dataclasses.dataclass(frozen=True)
class State:
    """Dynamic variables of N neurons and E synapses (CSR order of the Network).

    v_mV: (N,) membrane potential.            refrac_left: (N,) int32 refractory steps left.
    x_pre: (N_pre,) presynaptic STDP trace of every neuron net.pre names (N_pre = N unless a part).
    y_post: (N,) postsynaptic STDP trace.
    ring_mV: (D, N) synaptic input due in the next D steps (slot step % D is due now), mV.
    w: (E,) weights.                          elig: (E,) eligibility, stored scaled by gamma^-(step - elig_t0)
    (`eligibility(state, cfg)` gives the true values; see elig_tables).   elig_t0: () int32.
    tau_ms, v_th_mV: (N,) adaptive membrane time constant and threshold (intrinsic plasticity).
    window_spikes: (N,) int32 spikes since the window began.   rate_hz: (N,) running rate estimate
    (negative until the first window ends).   step: () int32 steps done.   window_start: () int32.
    seed: () uint32 seed of the counter-based random streams.
    """

    v_mV: Array
    refrac_left: Array
    x_pre: Array
    y_post: Array
    ring_mV: Array
    w: Array
    elig: Array
    elig_t0: Array
    tau_ms: Array
    v_th_mV: Array
    window_spikes: Array
    rate_hz: Array
    step: Array
    window_start: Array
    seed: Array

    def replace(self, **changes: Array) -> State:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def n_neurons(self) -> int:
        return self.v_mV.shape[-1]


jax.tree_util.register_dataclass(
    State, data_fields=[f.name for f in dataclasses.fields(State)], meta_fields=[]
)


def compute_dtype(cfg: FumConfig) -> jnp.dtype:
    """Neuron-state dtype: float64 when the run asks for it (needs jax x64), else float32."""
    return jnp.dtype(jnp.float64 if cfg.run.dtype == "float64" else jnp.float32)


def weight_dtype(cfg: FumConfig) -> jnp.dtype:
    """Storage dtype of weights and eligibility (float32, float64, float16 or bfloat16)."""
    return jnp.dtype(cfg.run.dtype)


def init_state(network: Network | CompactNetwork, cfg: FumConfig | None = None) -> State:
    """Resting state for `network`: V = v_rest, zero traces and eligibility, w = network.w0 (a
    CompactNetwork has no w0: its weights are drawn on the device in the storage dtype, see draw_weights)."""
    cfg = cfg or FumConfig()
    if cfg.run.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("run.dtype = 'float64' needs jax x64: jax.config.update('jax_enable_x64', True)")
    n, dt = network.n_neurons, compute_dtype(cfg)
    zeros = jnp.zeros((n,), dt)
    return State(
        v_mV=jnp.full((n,), cfg.neuron.v_rest_mV, dt),
        refrac_left=jnp.zeros((n,), jnp.int32),
        x_pre=jnp.zeros((network.n_pre,), dt),
        y_post=zeros,
        ring_mV=jnp.zeros((network.max_delay, n), dt),
        w=_initial_w(network, cfg),
        elig=jnp.zeros((network.n_synapses,), weight_dtype(cfg)),
        elig_t0=jnp.zeros((), jnp.int32),
        tau_ms=jnp.asarray(network.tau_ms, dt),
        v_th_mV=jnp.asarray(network.v_th_mV, dt),
        window_spikes=jnp.zeros((n,), jnp.int32),
        rate_hz=jnp.full((n,), -1.0, dt),
        step=jnp.zeros((), jnp.int32),
        window_start=jnp.zeros((), jnp.int32),
        seed=jnp.asarray(cfg.run.seed, jnp.uint32),
    )


def _initial_w(network: Network | CompactNetwork, cfg: FumConfig) -> Array:
    if isinstance(network, CompactNetwork):
        cc = cfg.connectivity
        return network.draw_weights(
            weight_dtype(cfg), w_exc_max=cc.w_exc_max, w_inh_min=cc.w_inh_min, seed=cfg.run.seed
        )
    return jnp.asarray(network.w0, weight_dtype(cfg))


def elig_tables(cfg: FumConfig) -> tuple[np.ndarray, np.ndarray]:
    """Eligibility scale tables (gamma^k, gamma^-k) for k = 0..K, float32 computed in float64.

    Eligibility is stored scaled, e_hat = e * gamma^-(n - t0) with n the steps done and t0 the last
    renormalization step, so a step adds dw * gamma^-(n+1-t0) to the synapses it touches instead of decaying
    all of them. Every K steps (K = min(window_steps, largest k with gamma^-k <= 1e4)) a dense pass
    renormalizes e_hat; the window's end does too.
    """
    g = cfg.plasticity.gamma
    k_max = (
        cfg.run.window_steps
        if g >= 1.0
        else max(1, min(cfg.run.window_steps, int(math.log(1e4) / -math.log(g))))
    )
    k = np.arange(k_max + 1, dtype=np.float64)
    return (g**k).astype(np.float32), (g ** (-k)).astype(np.float32)


def unscale_eligibility(elig_scaled: Array, steps_since_t0: Array, cfg: FumConfig) -> Array:
    """True eligibility (E,) from the stored scaled one: e = e_hat * gamma^(n - t0)."""
    gamma_pow, _ = elig_tables(cfg)
    return elig_scaled * jnp.asarray(gamma_pow, elig_scaled.dtype)[steps_since_t0]


def eligibility(state: State, cfg: FumConfig | None = None) -> Array:
    """The true eligibility traces (E,) of `state` (it stores them scaled)."""
    return unscale_eligibility(state.elig, state.step - state.elig_t0, cfg or FumConfig())
