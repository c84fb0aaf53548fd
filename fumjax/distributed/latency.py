"""FUM's latency mitigations (seed section D.2 "Impact of Latency on STDP Precision"), as small pure pieces.

* :class:`LatencyStats` - running mean/std (Welford) of message latency plus FUM's windowed history
  (``latency_history[-1000:]``) and its max; latencies come from send times on the synced clock
  (:mod:`fumjax.distributed.clock`): ``latency = receive_time - send_time``.
* Timestamp correction - FUM: ``t_adjusted = t_received - latency``. Spike messages here carry their
  step, so the true timestamp is known exactly; a late spike's effects are applied with it:
  :func:`trace_contribution` (its presynaptic trace contribution decayed by exp(-lateness/tau)),
  :func:`late_stdp_dw` (its pair-STDP change computed with the original spike time) and
  :func:`eligibility_decay` (gamma^lateness, FUM ``e_ij(t) = gamma^(t - t_buffered) e_ij(t_buffered)``).
* :func:`adaptive_tau` - adaptive STDP window ``tau = 20 + max_latency`` (ms).
* :func:`latency_aware_scale` - FUM's latency-aware STDP scaling ``dw *= (1 - latency_error/max_latency)``
  with ``latency_error = std(latency_history[-1000:])`` (the formula is in seed D.2; D.4 only refers back).
* :class:`Kalman1D` - Kalman refinement of the latency estimate (constant-state model, process noise q,
  measurement noise r).
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np

__all__ = [
    "LatencyStats",
    "Kalman1D",
    "adjusted_timestamp",
    "trace_contribution",
    "eligibility_decay",
    "adaptive_tau",
    "latency_aware_scale",
    "late_stdp_dw",
    "pair_stdp_reference",
]


class LatencyStats:
    """Running latency statistics: Welford mean/std over all samples, plus FUM's windowed history.

    ``mean``/``std`` cover every sample; ``window_mean``/``window_std``/``max`` the last ``history``
    samples (FUM: 1000). Units are whatever the caller feeds (ms here).
    """

    def __init__(self, history: int = 1000) -> None:
        if history < 1:
            raise ValueError(f"history = {history}: must be >= 1")
        self.n = 0
        self._mean = 0.0
        self._m2 = 0.0
        self.history: collections.deque[float] = collections.deque(maxlen=int(history))

    def add(self, latency: float) -> None:
        x = float(latency)
        self.n += 1
        d = x - self._mean
        self._mean += d / self.n
        self._m2 += d * (x - self._mean)
        self.history.append(x)

    def extend(self, latencies) -> None:
        for x in np.asarray(latencies, dtype=np.float64).ravel():
            self.add(float(x))

    @property
    def mean(self) -> float:
        return self._mean if self.n else 0.0

    @property
    def std(self) -> float:
        """Population std of all samples (0 with fewer than 2)."""
        return math.sqrt(self._m2 / self.n) if self.n > 1 else 0.0

    @property
    def window_mean(self) -> float:
        return float(np.mean(self.history)) if self.history else 0.0

    @property
    def window_std(self) -> float:
        return float(np.std(self.history)) if len(self.history) > 1 else 0.0

    @property
    def max(self) -> float:
        """Max over the windowed history (FUM's observed max latency)."""
        return float(np.max(self.history)) if self.history else 0.0

    def summary(self) -> dict:
        return {
            "n": self.n,
            "mean": self.mean,
            "std": self.std,
            "window_mean": self.window_mean,
            "window_std": self.window_std,
            "max": self.max,
        }


@dataclasses.dataclass
class Kalman1D:
    """1-D Kalman filter for a (nearly) constant state x observed as z = x + N(0, r).

    Predict: P += q (process noise; q = 0 means truly constant). Update: K = P / (P + r),
    x += K (z - x), P = (1 - K) P. With q = 0 and a flat prior (p0 -> inf) the estimate is the
    cumulative mean of the measurements; q > 0 keeps the gain from vanishing, so the estimate follows a
    latency that drifts or shifts (a route change) far faster than a long moving average.
    """

    q: float = 1e-3
    r: float = 1.0
    x: float = 0.0
    p: float = 1e6
    n: int = 0

    def update(self, z: float) -> float:
        if self.q < 0 or self.r <= 0:
            raise ValueError(f"need q >= 0 and r > 0, got q = {self.q}, r = {self.r}")
        p = self.p + self.q
        k = p / (p + self.r)
        self.x = self.x + k * (float(z) - self.x)
        self.p = (1.0 - k) * p
        self.n += 1
        return self.x

    def filter(self, zs) -> np.ndarray:
        """Run over a sequence; returns the estimate after each measurement."""
        return np.array([self.update(z) for z in np.asarray(zs, dtype=np.float64).ravel()])

    @property
    def estimate(self) -> float:
        return self.x

    @property
    def variance(self) -> float:
        return self.p


def adjusted_timestamp(t_received: float, latency: float) -> float:
    """FUM timestamp correction: t_adjusted = t_received - latency."""
    return float(t_received) - float(latency)


def trace_contribution(lateness_steps, tau_ms: float, dt_ms: float = 1.0):
    """What a spike `lateness_steps` steps old contributes to an exp(-t/tau) trace now: exp(-L dt / tau)."""
    return np.exp(-np.asarray(lateness_steps, dtype=np.float64) * dt_ms / tau_ms)


def eligibility_decay(gamma: float, lateness_steps):
    """gamma^(t - t_buffered): scale of an eligibility change made `lateness_steps` steps ago."""
    return np.power(float(gamma), np.asarray(lateness_steps, dtype=np.float64))


def adaptive_tau(max_latency_ms: float, base_ms: float = 20.0) -> float:
    """FUM adaptive STDP window: tau_+ = tau_- = base + max_latency (ms); base 20 ms."""
    if max_latency_ms < 0:
        raise ValueError(f"max_latency_ms = {max_latency_ms}: must be >= 0")
    return float(base_ms) + float(max_latency_ms)


def latency_aware_scale(latency_error: float, max_latency: float) -> float:
    """FUM latency-aware STDP: dw *= (1 - latency_error / max_latency), clipped to [0, 1]; 1 if max == 0."""
    if max_latency <= 0:
        return 1.0
    return float(np.clip(1.0 - float(latency_error) / float(max_latency), 0.0, 1.0))


def late_stdp_dw(
    lateness: int,
    y_post_now: np.ndarray,
    post_history: np.ndarray,
    *,
    a_plus: float,
    a_minus: float,
    tau_plus_ms: float,
    tau_minus_ms: float,
    dt_ms: float = 1.0,
) -> np.ndarray:
    """Pair-STDP change that ONE presynaptic spike at step t_s = t - L contributes, seen at step t.

    Same pairing as `dynamics.step` (traces, no Δt = 0 pairs): the spike depresses by a_minus * y_i(t_s)
    (post trace at t_s, decayed, before t_s's increment) and potentiates by a_plus * exp(-(t' - t_s)/tau+)
    for every post spike at t' in (t_s, t]. Sign (E/I) is left to the caller.

    lateness: L >= 0. y_post_now: (M,) post traces at step t decayed but not yet incremented (as stdp_delta
    sees them). post_history: (L + 1, M) post spikes at steps t - L .. t (row k = step t - L + k).
    Returns (M,) float64. L = 0 gives -a_minus * y_post_now (what the step itself computes).
    """
    L = int(lateness)
    hist = np.asarray(post_history, dtype=np.float64)
    if hist.shape[0] != L + 1:
        raise ValueError(f"post_history has {hist.shape[0]} rows, need lateness + 1 = {L + 1}")
    y_now = np.asarray(y_post_now, dtype=np.float64)
    # y(t_s) = exp(L dt/tau-) (y(t) - sum_{t_s <= t' < t} post(t') exp(-(t - t') dt / tau-))
    k = np.arange(L + 1)  # row k is step t_s + k
    back = np.exp(-(L - k[:L]) * dt_ms / tau_minus_ms)
    y_ts = math.exp(L * dt_ms / tau_minus_ms) * (y_now - back @ hist[:L]) if L else y_now
    fwd = np.exp(-k[1:] * dt_ms / tau_plus_ms)  # post spikes at t_s + 1 .. t
    ltp = fwd @ hist[1:] if L else np.zeros_like(y_now)
    return a_plus * ltp - a_minus * y_ts


def pair_stdp_reference(
    pre_times,
    post_times,
    *,
    a_plus: float,
    a_minus: float,
    tau_plus_ms: float,
    tau_minus_ms: float,
    dt_ms: float = 1.0,
) -> float:
    """Brute-force all-pairs STDP of one synapse: sum over pairs with Δt = t_post - t_pre != 0 of
    a_plus exp(-Δt/tau+) (Δt > 0) or -a_minus exp(Δt/tau-) (Δt < 0); times in steps. Test reference."""
    total = 0.0
    for tp in pre_times:
        for tq in post_times:
            d = (tq - tp) * dt_ms
            if d > 0:
                total += a_plus * math.exp(-d / tau_plus_ms)
            elif d < 0:
                total -= a_minus * math.exp(d / tau_minus_ms)
    return total
