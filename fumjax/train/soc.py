"""Self-organized criticality monitoring: avalanches, power-law exponent, criticality index, interventions.

An avalanche is a maximal run of consecutive steps whose population spike count exceeds `threshold`
(0: any spike), its size the spikes in the run. The exponent tau of P(s) ~ s^-tau is the discrete
maximum-likelihood estimate (Clauset, Shalizi & Newman 2009, eq. 3.7 approximation) over sizes >= s_min.
FUM (C.3): criticality_index = |tau - 1.5|; above 0.2, or avalanches above 0.1 N, global inhibition rises
(x1.1) and the learning rate falls (x0.9).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["avalanche_sizes", "fit_power_law", "criticality_index", "SOCAction", "soc_control"]


def avalanche_sizes(counts: np.ndarray, *, threshold: float = 0.0) -> np.ndarray:
    """Sizes (A,) of avalanches in a per-step spike-count series counts (T,)."""
    counts = np.asarray(counts, np.float64)
    active = counts > threshold
    if not active.any():
        return np.zeros(0, np.int64)
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    csum = np.concatenate([[0.0], np.cumsum(counts)])
    return np.round(csum[ends] - csum[starts]).astype(np.int64)


def fit_power_law(sizes: np.ndarray, *, s_min: int = 1) -> float:
    """MLE exponent tau of a discrete power law over sizes >= s_min: 1 + n / sum(ln(s / (s_min - 0.5)))."""
    s = np.asarray(sizes, np.float64)
    s = s[s >= s_min]
    if s.size < 2:
        return float("nan")
    denom = np.log(s / (s_min - 0.5)).sum()
    return float(1.0 + s.size / denom) if denom > 0 else float("nan")


def criticality_index(tau: float) -> float:
    """|tau - 1.5| (0 at criticality)."""
    return abs(tau - 1.5)


@dataclasses.dataclass(frozen=True)
class SOCAction:
    """What soc_control decided and why: multipliers for global inhibition and eta, and the reason."""

    inhibition_factor: float
    eta_factor: float
    reason: str


def soc_control(
    counts: np.ndarray, n_neurons: int, *, max_index: float = 0.2, large_fraction: float = 0.1, s_min: int = 1
) -> tuple[SOCAction, dict[str, float]]:
    """Monitor a count series (T,); returns the intervention and the metrics (tau, index, max avalanche)."""
    sizes = avalanche_sizes(counts)
    tau = fit_power_law(sizes, s_min=s_min)
    index = criticality_index(tau) if np.isfinite(tau) else float("nan")
    largest = float(sizes.max()) if sizes.size else 0.0
    metrics = {
        "tau": tau,
        "criticality_index": index,
        "largest_avalanche": largest,
        "avalanches": float(sizes.size),
    }
    if largest > large_fraction * n_neurons:
        return SOCAction(1.1, 0.9, f"avalanche of {largest:.0f} spikes > {large_fraction} N"), metrics
    if np.isfinite(index) and index > max_index:
        return SOCAction(1.1, 0.9, f"criticality index {index:.3f} > {max_index}"), metrics
    return SOCAction(1.0, 1.0, "near-critical"), metrics
