"""Self-improvement engine (SIE): the reward a window earns, from its parts (FUM section 2.C, DESIGN.md).

total = w_td * TD + w_novelty * novelty - w_habituation * habituation + w_self_benefit * self_benefit,
smoothed over the last `smoothing_windows` windows, and capped at 0 while novelty exceeds `novelty_cap`.
All functions are pure and jittable; `SIEState` is a pytree carried from window to window.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import Array

from fumjax.config import FumConfig, SIEConfig

__all__ = [
    "SIEState",
    "init_sie",
    "td_update",
    "novelty_and_habituation",
    "self_benefit",
    "smooth_reward",
    "sie_step",
]


@dataclasses.dataclass(frozen=True)
class SIEState:
    """SIE memory. v_states: (C,) value of each cluster state. history: (H, D) last encoded inputs (ring),
    hab: (H,) habituation counter per stored input, n_history: () int32 inputs stored so far,
    rewards: (S,) last total rewards (ring), n_rewards: () int32 rewards stored so far."""

    v_states: Array
    history: Array
    hab: Array
    n_history: Array
    rewards: Array
    n_rewards: Array

    def replace(self, **changes: Array) -> SIEState:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    SIEState, data_fields=[f.name for f in dataclasses.fields(SIEState)], meta_fields=[]
)


def init_sie(n_clusters: int, input_dim: int, cfg: FumConfig | None = None) -> SIEState:
    """Empty SIE memory for `n_clusters` cluster states and encoded inputs of length `input_dim`."""
    sc = (cfg or FumConfig()).sie
    if n_clusters < 1 or input_dim < 1:
        raise ValueError(f"n_clusters = {n_clusters}, input_dim = {input_dim}: both must be >= 1")
    return SIEState(
        v_states=jnp.zeros((n_clusters,), jnp.float32),
        history=jnp.zeros((sc.novelty_history, input_dim), jnp.float32),
        hab=jnp.zeros((sc.novelty_history,), jnp.float32),
        n_history=jnp.zeros((), jnp.int32),
        rewards=jnp.zeros((sc.smoothing_windows,), jnp.float32),
        n_rewards=jnp.zeros((), jnp.int32),
    )


def td_update(v_states: Array, cur: Array, nxt: Array, r: Array, *, gamma: float, alpha: float):
    """TD(0) over cluster states: TD = r + gamma V[nxt] - V[cur]; V[cur] += alpha TD. -> (v_states, TD)."""
    td = r + gamma * v_states[nxt] - v_states[cur]
    return v_states.at[cur].add(alpha * td), td


def novelty_and_habituation(sie: SIEState, x: Array, sc: SIEConfig) -> tuple[SIEState, Array, Array]:
    """Novelty = 1 - max cosine similarity of x (D,) to the stored inputs (1 when none); habituation.

    Counters of stored inputs matching x above `habituation_threshold` grow by `habituation_increment`
    (capped at 1); all counters then decay by `habituation_decay`. Habituation is the largest counter among
    the matches (0 when none). x is then stored in place of the oldest input, with a zero counter.
    Returns (sie, novelty, habituation).
    """
    h = sie.history.shape[0]
    valid = jnp.arange(h) < sie.n_history
    norms = jnp.linalg.norm(sie.history, axis=1) * jnp.linalg.norm(x)
    cos = jnp.where(valid & (norms > 0), sie.history @ x / jnp.where(norms > 0, norms, 1.0), -jnp.inf)
    best = jnp.max(cos)
    novelty = jnp.where(jnp.isfinite(best), 1.0 - best, 1.0)
    match = cos > sc.habituation_threshold
    hab = jnp.where(match, jnp.minimum(sie.hab + sc.habituation_increment, 1.0), sie.hab)
    habituation = jnp.max(jnp.where(match, hab, 0.0))
    hab = hab * sc.habituation_decay
    slot = sie.n_history % h
    sie = sie.replace(
        history=sie.history.at[slot].set(x.astype(sie.history.dtype)),
        hab=hab.at[slot].set(0.0),
        n_history=sie.n_history + 1,
    )
    return sie, novelty, habituation


def self_benefit(rates_hz: Array, *, target_var: float) -> Array:
    """Homeostatic reward in [0, 1]: clip(1 - |var(rates) - target_var| / target_var, 0, 1); rates (N,) Hz."""
    var = jnp.var(rates_hz)
    return jnp.clip(1.0 - jnp.abs(var - target_var) / target_var, 0.0, 1.0)


def smooth_reward(sie: SIEState, total: Array) -> tuple[SIEState, Array]:
    """Store `total` and return the mean of the last S totals (fewer while fewer were seen)."""
    s = sie.rewards.shape[0]
    rewards = sie.rewards.at[sie.n_rewards % s].set(total)
    n = jnp.minimum(sie.n_rewards + 1, s)
    return sie.replace(rewards=rewards, n_rewards=sie.n_rewards + 1), rewards.sum() / n


def sie_step(
    sie: SIEState,
    encoded_input: Array,
    rates_hz: Array,
    cur_cluster: Array,
    next_cluster: Array,
    r_ext: Array,
    cfg: FumConfig,
) -> tuple[SIEState, dict[str, Array]]:
    """One window's reward. encoded_input: (D,), rates_hz: (N,), clusters: () int, r_ext in {+1, -1, 0}.

    Returns (sie, components) with components td, novelty, habituation, self_benefit, total, reward (the
    smoothed and capped R that goes to `end_window`).
    """
    sc = cfg.sie
    v_states, td = td_update(
        sie.v_states, cur_cluster, next_cluster, r_ext, gamma=sc.td_gamma, alpha=sc.td_alpha
    )
    sie, novelty, habituation = novelty_and_habituation(sie.replace(v_states=v_states), encoded_input, sc)
    benefit = self_benefit(rates_hz, target_var=sc.target_rate_var)
    total = (
        sc.w_td * td + sc.w_novelty * novelty - sc.w_habituation * habituation + sc.w_self_benefit * benefit
    )
    sie, smoothed = smooth_reward(sie, total)
    reward = jnp.where(novelty > sc.novelty_cap, jnp.minimum(smoothed, 0.0), smoothed)
    parts = {"td": td, "novelty": novelty, "habituation": habituation, "self_benefit": benefit}
    return sie, {**parts, "total": total, "reward": reward}
