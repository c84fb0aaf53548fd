"""Self-improvement engine (SIE): reward components computed from network activity."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

__all__ = ["self_benefit"]


def self_benefit(rates_hz: Array, *, target_var: float) -> Array:
    """Homeostatic reward in [0, 1]: clip(1 - |var(rates) - target_var| / target_var, 0, 1); rates (N,) Hz."""
    var = jnp.var(rates_hz)
    return jnp.clip(1.0 - jnp.abs(var - target_var) / target_var, 0.0, 1.0)
