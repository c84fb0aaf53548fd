"""Plasticity as small pure functions: trace decay, eligibility, reward application, intrinsic plasticity."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array

from fumjax.config import FumConfig
from fumjax.state import elig_tables
from fumjax.state import unscale_eligibility as eligibility

DISABLED_V_TH_MV = 1.0e9  # a threshold at or above this marks a disabled (dead) neuron slot

__all__ = [
    "DISABLED_V_TH_MV",
    "elig_tables",
    "eligibility",
    "reward_coefficient",
    "decay_traces",
    "increment_traces",
    "eta_effective",
    "apply_reward",
    "update_rate_estimate",
    "intrinsic_update",
]


def decay_traces(x_pre: Array, y_post: Array, cfg: FumConfig) -> tuple[Array, Array]:
    """Decay pre/post traces (N,) by exp(-dt/tau+) and exp(-dt/tau-) for one step."""
    dt = cfg.neuron.dt_ms
    return (x_pre * math.exp(-dt / cfg.stdp.tau_plus_ms), y_post * math.exp(-dt / cfg.stdp.tau_minus_ms))


def increment_traces(
    x_pre: Array, y_post: Array, spikes_pre: Array, spikes_post: Array
) -> tuple[Array, Array]:
    """Traces jump by 1 on a spike: x_pre (N_pre,) by spikes_pre, y_post (N,) by spikes_post."""
    return x_pre + spikes_pre.astype(x_pre.dtype), y_post + spikes_post.astype(y_post.dtype)


def eta_effective(reward: Array, eta: float) -> Array:
    """Reward-modulated learning rate: eta * (1 + (2*sigmoid(R) - 1)) = 2*eta*sigmoid(R)."""
    return eta * (1.0 + (2.0 * jax.nn.sigmoid(reward) - 1.0))


def reward_coefficient(reward: Array, w_dtype, cfg: FumConfig) -> Array:
    """The scalar eta_eff(R) * R of apply_reward, in its compute dtype (float32, or float64 weights)."""
    reward = jnp.asarray(reward, jnp.promote_types(w_dtype, jnp.float32))
    return eta_effective(reward, cfg.plasticity.eta) * reward


def apply_reward(w: Array, elig: Array, reward: Array, cfg: FumConfig) -> Array:
    """End-of-window weight update: w = clip(w + eta_eff(R) * R * e, -w_clip, w_clip); (E,) -> (E,)."""
    coef = reward_coefficient(reward, w.dtype, cfg)
    new = w.astype(coef.dtype) + coef * elig.astype(coef.dtype)
    c = cfg.connectivity.w_clip
    return jnp.clip(new, -c, c).astype(w.dtype)


def update_rate_estimate(rate_hz: Array, window_rate_hz: Array, cfg: FumConfig) -> Array:
    """Running rate (N,) Hz: (1-a) rate + a window_rate, a = intrinsic.rate_ema; negative (none) -> window."""
    a = cfg.intrinsic.rate_ema
    return jnp.where(rate_hz < 0, window_rate_hz, (1.0 - a) * rate_hz + a * window_rate_hz)


def intrinsic_update(tau_ms: Array, v_th_mV: Array, rate_hz: Array, cfg: FumConfig) -> tuple[Array, Array]:
    """Per-window intrinsic plasticity from the running rate estimate rate_hz; all arrays (N,).

    Above the target band: v_th += step, tau -= step; below it: v_th -= step, tau += step; both clamped
    to their ranges; disabled neuron slots (v_th >= DISABLED_V_TH_MV) keep their threshold.
    Returns (tau_ms, v_th_mV).
    """
    ip, nc = cfg.intrinsic, cfg.neuron
    rate = rate_hz
    if not ip.enabled:
        return tau_ms, v_th_mV
    above = (rate > ip.target_rate_max_hz).astype(tau_ms.dtype)
    below = (rate < ip.target_rate_min_hz).astype(tau_ms.dtype)
    v_th = jnp.clip(v_th_mV + ip.v_th_step_mV * (above - below), nc.v_th_min_mV, nc.v_th_max_mV)
    v_th = jnp.where(v_th_mV >= DISABLED_V_TH_MV, v_th_mV, v_th)  # disabled slots stay disabled
    tau = jnp.clip(tau_ms + ip.tau_step_ms * (below - above), nc.tau_min_ms, nc.tau_max_ms)
    return tau, v_th
