"""Synaptic decay with persistence tags (FUM E.4): slow forgetting of what is not consolidated.

Every `interval` steps non-persistent weights decay (w *= 0.99) and those with |w| < prune_below are
pruned (masked). Synapses with w > 0.8 whose post neuron's cluster has avg reward > 0.9 are tagged
persistent (exempt from decay); a tag is removed when that cluster's avg reward falls below 0.5.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

__all__ = ["decay_weights", "update_tags"]


def decay_weights(
    w: Array, persistent: Array, alive: Array, *, factor: float = 0.99, prune_below: float = 0.01
) -> tuple[Array, Array]:
    """One decay event over E synapses: returns (w, alive); pruned synapses get w = 0 and alive = False."""
    w = jnp.where(persistent, w, w * factor)
    alive = alive & (persistent | (jnp.abs(w) >= prune_below))
    return jnp.where(alive, w, 0.0).astype(w.dtype), alive


def update_tags(
    w: Array,
    persistent: Array,
    post: Array,
    cluster_of: Array,
    avg_reward: Array,
    *,
    w_tag: float = 0.8,
    reward_tag: float = 0.9,
    reward_untag: float = 0.5,
) -> Array:
    """Tag (E,) synapses with |w| > w_tag in clusters with avg reward > reward_tag; untag below reward_untag.

    post: (E,) post neuron of each synapse; cluster_of: (N,) cluster of each neuron; avg_reward: (k,).
    """
    r = avg_reward[cluster_of[post]]
    tag = (jnp.abs(w) > w_tag) & (r > reward_tag)
    return (persistent | tag) & ~(r < reward_untag)
