"""Helpers shared by the golden tests (fused against reference): a fresh seed per run and float64 mode."""

from __future__ import annotations

import os

import jax
import numpy as np


def fresh_seed() -> int:
    """A new random seed each run, or FUMJAX_GOLDEN_SEED to reproduce a failure that printed it."""
    env = os.environ.get("FUMJAX_GOLDEN_SEED")
    return int(env) if env else int(np.random.SeedSequence().entropy % (2**32))


def x64():
    """Context manager enabling float64 (jax.enable_x64, or jax.experimental.enable_x64 before jax 0.7)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # jax < 0.7

    return enable_x64()
