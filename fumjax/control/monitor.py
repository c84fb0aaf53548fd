"""Monitoring (FUM E.2, E.5, E.7): multi-scale rate variance, avalanche statistics, processing debt,
correlations between metric histories, and the `Monitor` that keeps histories and writes JSONL/TensorBoard.

The pure functions take numpy arrays and return plain floats/arrays; `Monitor` is the one stateful piece
(history ring, open files). Variances are of firing rates in Hz, so they are in Hz^2.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from fumjax.control.manager import Metrics
from fumjax.train.soc import avalanche_sizes, criticality_index, fit_power_law

__all__ = [
    "multiscale_variance",
    "avalanche_stats",
    "DebtTracker",
    "correlation_flags",
    "DEFAULT_INTERACTION_PAIRS",
    "window_metrics",
    "tensorboard_writer",
    "Monitor",
]


def multiscale_variance(
    rates_hz: np.ndarray,
    labels: np.ndarray,
    k: int,
    *,
    region_of: np.ndarray | None = None,
    region_size: int = 10,
) -> dict[str, np.ndarray | float]:
    """Rate variance (Hz^2) per cluster (k,), per region (R,) and global, from rates (N,) and labels (N,).

    A region is a group of clusters: region_of (k,) gives each cluster's region; default c // region_size
    (FUM's "groups of ~10 clusters"). Empty clusters/regions get variance 0. Returns cluster_var, region_var,
    global_var, plus the scalars max_cluster_var and max_region_var.
    """
    r = np.asarray(rates_hz, np.float64)
    lab = np.asarray(labels)
    if r.ndim != 1 or lab.shape != r.shape:
        raise ValueError(f"rates_hz {r.shape} and labels {lab.shape} must both be (N,)")
    if lab.size and (lab.min() < 0 or lab.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}), got [{lab.min()}, {lab.max()}]")
    reg = np.arange(k) // region_size if region_of is None else np.asarray(region_of)
    if reg.shape != (k,):
        raise ValueError(f"region_of has shape {reg.shape}, expected ({k},)")

    def grouped_var(g: np.ndarray, m: int) -> np.ndarray:
        n = np.bincount(g, minlength=m).astype(np.float64)
        s1 = np.bincount(g, weights=r, minlength=m)
        s2 = np.bincount(g, weights=r * r, minlength=m)
        mean = s1 / np.maximum(n, 1)
        return np.maximum(s2 / np.maximum(n, 1) - mean * mean, 0.0)

    cluster_var = grouped_var(lab, k)
    n_reg = int(reg.max()) + 1 if k else 0
    region_var = grouped_var(reg[lab], n_reg)
    return {
        "cluster_var": cluster_var,
        "region_var": region_var,
        "global_var": float(r.var()) if r.size else 0.0,
        "max_cluster_var": float(cluster_var.max()) if k else 0.0,
        "max_region_var": float(region_var.max()) if n_reg else 0.0,
    }


def avalanche_stats(counts: np.ndarray, n_neurons: int, *, s_min: int = 1) -> dict[str, float]:
    """Avalanche statistics of a per-step spike-count series (T,): number, mean and largest size (also as a
    fraction of N), power-law exponent tau and criticality index |tau - 1.5| (NaN with < 2 avalanches)."""
    sizes = avalanche_sizes(counts)
    tau = fit_power_law(sizes, s_min=s_min)
    largest = float(sizes.max()) if sizes.size else 0.0
    return {
        "avalanches": float(sizes.size),
        "avalanche_mean": float(sizes.mean()) if sizes.size else 0.0,
        "avalanche_max": largest,
        "avalanche_max_fraction": largest / max(n_neurons, 1),
        "tau": tau,
        "criticality_index": criticality_index(tau) if math.isfinite(tau) else float("nan"),
    }


@dataclasses.dataclass
class DebtTracker:
    """Processing debt (FUM D.2 / E.5): windows whose wall time overran the budget.

    Over the last `horizon` windows: the number that overran, their fraction, the debt in ms (time over
    budget summed), and the steady-state overrun probability of the two-state Markov chain estimated from
    the transitions (normal <-> overrun): p01 / (p01 + p10).
    """

    budget_ms: float
    horizon: int = 100
    over: list[bool] = dataclasses.field(default_factory=list)
    excess_ms: list[float] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.budget_ms > 0:
            raise ValueError(f"budget_ms = {self.budget_ms}: must be > 0")
        if self.horizon < 2:
            raise ValueError(f"horizon = {self.horizon}: must be >= 2")

    def record(self, wall_ms: float) -> dict[str, float]:
        """Fold one window's wall time (ms) in; returns debt_windows, debt_fraction, debt_ms, p_overrun."""
        self.over.append(wall_ms > self.budget_ms)
        self.excess_ms.append(max(wall_ms - self.budget_ms, 0.0))
        del self.over[: -self.horizon], self.excess_ms[: -self.horizon]
        o = np.asarray(self.over)
        a, b = o[:-1], o[1:]
        n0, n1 = np.count_nonzero(~a), np.count_nonzero(a)
        p01 = np.count_nonzero(~a & b) / n0 if n0 else 0.0
        p10 = np.count_nonzero(a & ~b) / n1 if n1 else 0.0
        p_over = p01 / (p01 + p10) if p01 + p10 > 0 else float(o.mean())
        return {
            "debt_windows": float(o.sum()),
            "debt_fraction": float(o.mean()),
            "debt_ms": float(np.sum(self.excess_ms)),
            "p_overrun": float(p_over),
        }


def window_metrics(
    rates_hz: np.ndarray,
    labels: np.ndarray,
    k: int,
    counts: np.ndarray,
    *,
    reward_parts: Mapping[str, float] | None = None,
    region_size: int = 10,
    debt: DebtTracker | None = None,
    wall_ms: float | None = None,
    gpu: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One window's scalar metrics and arrays, under the names the control modules read.

    rates_hz (N,), labels (N,) in [0, k), counts (T,) population spikes per step; reward_parts: the dict of
    `fumjax.sie.sie_step` (td, novelty, habituation, self_benefit, total, reward), stored as reward_<name>;
    debt and wall_ms: the window's wall time folded into the tracker; gpu: `LoadReading.metrics()`.
    Returns (values, arrays) with arrays "counts" and "cluster_var".
    """
    mv = multiscale_variance(rates_hz, labels, k, region_size=region_size)
    n = int(np.asarray(rates_hz).size)
    cluster_rates = np.bincount(labels, weights=np.asarray(rates_hz, np.float64), minlength=k)
    values = {
        "mean_rate_hz": float(np.mean(rates_hz)) if n else 0.0,
        "variance_global": mv["global_var"],
        "variance_region_max": mv["max_region_var"],
        "variance_cluster_max": mv["max_cluster_var"],
        "silent_clusters": float(
            np.count_nonzero((cluster_rates == 0) & (np.bincount(labels, minlength=k) > 0))
        ),
        **avalanche_stats(counts, n),
    }
    for name, v in (reward_parts or {}).items():
        values[f"reward_{name}"] = float(v)
    if debt is not None and wall_ms is not None:
        values.update(debt.record(wall_ms))
    values.update(gpu or {})
    return values, {"counts": np.asarray(counts), "cluster_var": mv["cluster_var"]}


# Pairs whose correlation means an interaction (E.7). (variance_global, reward_total) and
# (variance_region_max, reward_total) are left out on purpose: fumjax's self-benefit reward is a function of
# the rate variance (and with <= 10 clusters a region is the whole network): they correlate by construction.
DEFAULT_INTERACTION_PAIRS: tuple[tuple[str, str], ...] = (
    ("variance_global", "debt_fraction"),
    ("reward_total", "debt_fraction"),
    ("variance_global", "criticality_index"),
    ("reward_total", "criticality_index"),
)


def correlation_flags(
    history: Mapping[str, np.ndarray],
    pairs: Iterable[tuple[str, str]] | None = None,
    *,
    threshold: float = 0.5,
    min_windows: int = 20,
    window: int = 100,
) -> list[tuple[str, str, float]]:
    """Pearson r between metric histories over their last `window` common finite entries; returns the pairs
    with |r| > threshold as (a, b, r). pairs None: every pair of the history's keys. Pairs with fewer than
    min_windows entries, a missing key or a constant series are skipped."""
    if pairs is None:
        pairs = itertools.combinations(sorted(history), 2)
    flagged = []
    for a, b in pairs:
        if a not in history or b not in history:
            continue
        x, y = np.asarray(history[a], np.float64), np.asarray(history[b], np.float64)
        n = min(x.size, y.size)
        x, y = x[-n:], y[-n:]
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok][-window:], y[ok][-window:]
        if x.size < min_windows or x.std() == 0 or y.std() == 0:
            continue
        r = float(np.corrcoef(x, y)[0, 1])
        if abs(r) > threshold:
            flagged.append((a, b, r))
    return flagged


def tensorboard_writer(logdir: str | Path):
    """A tensorboardX SummaryWriter on logdir, or (None, reason) when tensorboardX is not installed.

    Returns (writer or None, reason str)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None, "tensorboardX is not installed (pip install tensorboardX); TensorBoard output skipped"
    return SummaryWriter(str(logdir)), "tensorboardX"


class Monitor:
    """Keeps the last `history` windows of every metric, writes each window as a JSONL line (and as
    TensorBoard scalars when asked and tensorboardX is present), and builds the `Metrics` the control
    modules read.

    In normal operation only `log_keys` go to the JSONL file (all keys when None); when the control state asks
    for detailed logging (diagnostic/simplified modes) every metric is written.
    """

    def __init__(
        self,
        *,
        history: int = 200,
        jsonl_path: str | Path | None = None,
        tensorboard_dir: str | Path | None = None,
        log_keys: Sequence[str] | None = None,
        interaction_pairs: Iterable[tuple[str, str]] | None = DEFAULT_INTERACTION_PAIRS,
        correlation_threshold: float = 0.5,
    ):
        if history < 2:
            raise ValueError(f"history = {history}: must be >= 2")
        self.history_len = history
        self._hist: dict[str, list[float]] = {}
        self._n = 0
        self.jsonl_path = Path(jsonl_path) if jsonl_path is not None else None
        self.log_keys = tuple(log_keys) if log_keys is not None else None
        self.pairs = tuple(interaction_pairs) if interaction_pairs is not None else None
        self.correlation_threshold = correlation_threshold
        self.tb, self.tb_status = (None, "not requested")
        if tensorboard_dir is not None:
            self.tb, self.tb_status = tensorboard_writer(tensorboard_dir)

    def history(self) -> dict[str, np.ndarray]:
        """{name: (H,) float64}, oldest first; NaN where a window lacked the metric."""
        return {k: np.asarray(v, np.float64) for k, v in self._hist.items()}

    def record(
        self,
        step: int,
        values: Mapping[str, float],
        *,
        arrays: Mapping[str, np.ndarray] | None = None,
        detailed: bool = False,
    ) -> Metrics:
        """Add one window's scalar metrics; adds the interaction flags; writes the log; returns `Metrics`."""
        values = {k: float(v) for k, v in values.items()}
        for k in values.keys() - self._hist.keys():
            self._hist[k] = [math.nan] * min(self._n, self.history_len)
        for k, col in self._hist.items():
            col.append(values.get(k, math.nan))
            del col[: -self.history_len]
        self._n += 1
        hist = self.history()
        flags = correlation_flags(hist, self.pairs, threshold=self.correlation_threshold)
        values["interaction_flags"] = float(len(flags))
        self._write(step, values, flags, detailed)
        return Metrics(
            step=step, current=values, history=hist, arrays=dict(arrays or {}), interactions=tuple(flags)
        )

    def _write(self, step: int, values: dict[str, float], flags: list, detailed: bool) -> None:
        keys = (
            values.keys() if detailed or self.log_keys is None else [k for k in self.log_keys if k in values]
        )
        if self.jsonl_path is not None:
            rec = {"step": step, **{k: _json_num(values[k]) for k in keys}}
            if flags:
                rec["interactions"] = [{"a": a, "b": b, "r": round(r, 4)} for a, b, r in flags]
            self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            with self.jsonl_path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k in keys:
                if math.isfinite(values[k]):
                    self.tb.add_scalar(k, values[k], step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the JSONL file is appended per window)."""
        if self.tb is not None:
            self.tb.close()


def _json_num(x: float) -> float | None:
    return x if math.isfinite(x) else None
