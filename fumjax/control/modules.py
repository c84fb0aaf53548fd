"""The control modules (FUM E.1, E.2, E.5, E.7, C.3, D.5). Each is a frozen dataclass of its thresholds with a
pure `update(state, metrics) -> (state, actions)`; memory lives in `state.memo[name]`.

Metric names the modules read (the `Monitor` / `window_metrics` produce them): variance_global,
variance_region_max, variance_cluster_max (Hz^2), reward_total, silent_clusters, gpu_temp_c, gpu_util_pct,
and the arrays "counts" (T,) and "cluster_avg_reward" (k,). A missing metric makes its rule a no-op.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from fumjax.control.anomaly import fit_detectors, score_window
from fumjax.control.manager import Action, ControlState, Metrics
from fumjax.train.soc import soc_control

__all__ = [
    "StabilityModule",
    "InteractionModule",
    "SOCModule",
    "LoadModule",
    "ClusteringSchedule",
    "TuningSchedule",
    "StructuralSchedule",
    "AnomalyResponse",
    "default_modules",
]


def _scale(state: ControlState, knob: str, factor: float, lo: float, hi: float) -> ControlState:
    return state.replace(**{knob: float(np.clip(getattr(state, knob) * factor, lo, hi))})


def _ready(state: ControlState, name: str, rule: str, step: int, cooldown: int) -> bool:
    """True when `rule` of module `name` last acted at least `cooldown` steps ago (or never)."""
    last = state.memo.get(name, {}).get(rule)
    return last is None or step - last >= cooldown


def _acted(state: ControlState, name: str, rule: str, step: int) -> ControlState:
    return state.remember(name, {**state.memo.get(name, {}), rule: step})


@dataclasses.dataclass(frozen=True)
class StabilityModule:
    """Multi-scale stability checks (E.2, E.7). Thresholds in Hz^2 suit fumjax's 2-20 Hz default band
    (FUM's 0.05 Hz belongs with its 0.1-0.5 Hz band).

    - global variance > global_var_max: raise inhibition x1.1 and eta x0.9 ("raise_inhibition");
    - else a region's variance > region_var_max: regional instability, eta x0.9 ("regional_instability");
    - |reward_total| > reward_limit for each of the last reward_windows windows: eta x0.9 ("extreme_reward");
    - silent_clusters > 0: ask for growth there ("silent_clusters").
    Each rule acts at most once per `cooldown_steps`.
    """

    name: str = "stability"
    global_var_max: float = 100.0
    region_var_max: float = 100.0
    reward_limit: float = 2.0
    reward_windows: int = 5
    cooldown_steps: int = 500
    min_eta_scale: float = 0.05
    max_inhibition_scale: float = 4.0

    def update(self, state: ControlState, metrics: Metrics) -> tuple[ControlState, list[Action]]:
        step, acts = metrics.step, []
        g, reg = metrics.get("variance_global"), metrics.get("variance_region_max")

        def act(st, rule, reason, **changes):
            if not _ready(st, self.name, rule, step, self.cooldown_steps):
                return st
            for knob, factor in changes.items():
                hi = self.max_inhibition_scale if knob == "inhibition_scale" else 1.0
                st = _scale(st, knob, factor, self.min_eta_scale, hi)
            params = {k.replace("_scale", "_factor"): v for k, v in changes.items()}
            acts.append(Action(step, self.name, rule, reason, params))
            return _acted(st, self.name, rule, step)

        if g > self.global_var_max:
            reason = f"global rate variance {g:.3g} Hz^2 > {self.global_var_max:g}"
            state = act(state, "raise_inhibition", reason, inhibition_scale=1.1, eta_scale=0.9)
        elif reg > self.region_var_max:
            reason = (
                f"regional rate variance {reg:.3g} Hz^2 > {self.region_var_max:g} while global "
                f"{g:.3g} is within bounds"
            )
            state = act(state, "regional_instability", reason, eta_scale=0.9)
        r = np.asarray(metrics.history.get("reward_total", []), np.float64)[-self.reward_windows :]
        if r.size == self.reward_windows and np.all(np.abs(r) > self.reward_limit):
            reason = f"|reward| > {self.reward_limit:g} for {self.reward_windows} windows (last {r[-1]:.3g})"
            state = act(state, "extreme_reward", reason, eta_scale=0.9)
        silent = metrics.get("silent_clusters", 0.0)
        if silent > 0 and _ready(state, self.name, "silent_clusters", step, self.cooldown_steps):
            acts.append(
                Action(step, self.name, "silent_clusters", f"{silent:.0f} clusters silent: grow there")
            )
            state = _acted(state, self.name, "silent_clusters", step)
        return state, acts


@dataclasses.dataclass(frozen=True)
class InteractionModule:
    """Dynamic interaction monitoring (E.7): metric histories correlated with |r| > threshold (the monitor
    flags them) damp the learning: eta x0.9 and growth rate x0.9, at most once per cooldown_steps."""

    name: str = "interaction"
    cooldown_steps: int = 2500
    min_scale: float = 0.05

    def update(self, state: ControlState, metrics: Metrics) -> tuple[ControlState, list[Action]]:
        if not metrics.interactions or not _ready(
            state, self.name, "damp", metrics.step, self.cooldown_steps
        ):
            return state, []
        pairs = ", ".join(f"r({a}, {b}) = {r:+.2f}" for a, b, r in metrics.interactions)
        state = _scale(state, "eta_scale", 0.9, self.min_scale, 1.0)
        state = _scale(state, "growth_scale", 0.9, self.min_scale, 1.0)
        act = Action(
            metrics.step,
            self.name,
            "damp_interactions",
            f"correlated metric histories: {pairs}",
            {"eta_factor": 0.9, "growth_factor": 0.9},
        )
        return _acted(state, self.name, "damp", metrics.step), [act]


@dataclasses.dataclass(frozen=True)
class SOCModule:
    """Self-organized criticality control (C.3) through `fumjax.train.soc.soc_control`.

    Population spike counts per step (metrics.arrays["counts"]) are collected over span_windows windows;
    every span_windows windows the series is judged: inhibition x1.1 and eta x0.9 when the criticality index
    exceeds max_index or an avalanche exceeds large_fraction of n_neurons. A network with ongoing activity
    (spikes in every step) has no silent steps to separate avalanches, so counts are taken above a threshold,
    by default the median count of the series (`threshold="median"`; a number for a fixed one): an avalanche
    is a run of steps above it, its size the spikes above it. Fewer than min_avalanches -> no judgement.
    FUM's rule raises inhibition whichever side of 1.5 tau lies; with direction_aware (default) an index
    breach with tau > 1.5 (avalanches too small: subcritical) lowers inhibition (x1/1.1) instead and leaves
    eta alone, since more inhibition would push the network further from criticality.
    """

    n_neurons: int
    name: str = "soc"
    span_windows: int = 20
    threshold: str | float = "median"
    max_index: float = 0.2
    large_fraction: float = 0.1
    min_avalanches: int = 10
    min_eta_scale: float = 0.05
    max_inhibition_scale: float = 4.0
    direction_aware: bool = True

    def update(self, state: ControlState, metrics: Metrics) -> tuple[ControlState, list[Action]]:
        counts = metrics.arrays.get("counts")
        if counts is None:
            return state, []
        kept = state.memo.get(self.name, ()) + (np.asarray(counts),)
        if len(kept) < self.span_windows:
            return state.remember(self.name, kept), []
        state = state.remember(self.name, ())
        series = np.concatenate(kept).astype(np.float64)
        thr = float(np.median(series)) if self.threshold == "median" else float(self.threshold)
        decision, m = soc_control(
            np.maximum(series - thr, 0.0),
            self.n_neurons,
            max_index=self.max_index,
            large_fraction=self.large_fraction,
        )
        if m["avalanches"] < self.min_avalanches or decision.eta_factor == decision.inhibition_factor == 1.0:
            return state, []
        inh, eta = decision.inhibition_factor, decision.eta_factor
        subcritical = decision.reason.startswith("criticality") and m["tau"] > 1.5
        if self.direction_aware and subcritical:
            inh, eta = 1.0 / decision.inhibition_factor, 1.0
        state = _scale(state, "inhibition_scale", inh, 0.0, self.max_inhibition_scale)
        state = _scale(state, "eta_scale", eta, self.min_eta_scale, 1.0)
        params = {"inhibition_factor": inh, "eta_factor": eta}
        reason = f"{decision.reason} (counts above {thr:g} over {series.size} steps, tau {m['tau']:.2f})"
        reason += "; subcritical: inhibition lowered" if self.direction_aware and subcritical else ""
        return state, [Action(metrics.step, self.name, "soc_intervention", reason, params)]


@dataclasses.dataclass(frozen=True)
class LoadModule:
    """Thermal and load awareness: above temp_max_c or util_max_pct (hottest/busiest GPU) background work
    (clustering, tuning) is deferred; it resumes once both are `hysteresis` below their limits. Without GPU
    readings (NVML absent) it defers nothing and says so once."""

    name: str = "load"
    temp_max_c: float = 85.0
    util_max_pct: float = 95.0
    hysteresis: float = 5.0

    def update(self, state: ControlState, metrics: Metrics) -> tuple[ControlState, list[Action]]:
        t, u = metrics.get("gpu_temp_c"), metrics.get("gpu_util_pct")
        if not (math.isfinite(t) and math.isfinite(u)):
            if state.memo.get(self.name) == "unknown":
                return state, []
            reason = "no GPU temperature/utilization (NVML unavailable): nothing deferred"
            return state.remember(self.name, "unknown"), [
                Action(metrics.step, self.name, "load_unknown", reason)
            ]
        state = state.remember(self.name, "known")
        hot = t > self.temp_max_c or u > self.util_max_pct
        if hot and not state.defer_background:
            reason = f"GPU at {t:.0f} C / {u:.0f}% (limits {self.temp_max_c:g} C / {self.util_max_pct:g}%)"
            return state.replace(defer_background=True), [
                Action(metrics.step, self.name, "defer_background", reason)
            ]
        cool = t < self.temp_max_c - self.hysteresis and u < self.util_max_pct - self.hysteresis
        if state.defer_background and cool:
            reason = f"GPU back to {t:.0f} C / {u:.0f}%"
            return state.replace(defer_background=False), [
                Action(metrics.step, self.name, "resume_background", reason)
            ]
        return state, []


@dataclasses.dataclass(frozen=True)
class _BackgroundSchedule:
    """A job due every interval_steps, held back while state.defer_background and run once it clears."""

    name: str
    job: str
    interval_steps: int

    def _due(self, state: ControlState, metrics: Metrics) -> tuple[ControlState, list[Action]]:
        memo = state.memo.get(self.name, {"last": None, "deferred": False})
        last = memo["last"]
        due = memo["deferred"] or last is None or metrics.step - last >= self.interval_steps
        if not due:
            return state, []
        if state.defer_background:
            if memo["deferred"]:
                return state, []
            act = Action(metrics.step, self.name, f"defer_{self.job}", "background work deferred (GPU load)")
            return state.remember(self.name, {**memo, "deferred": True}), [act]
        why = "deferred run, load cleared" if memo["deferred"] else f"every {self.interval_steps} steps"
        act = Action(metrics.step, self.name, f"run_{self.job}", why)
        return state.remember(self.name, {"last": metrics.step, "deferred": False}), [act]


@dataclasses.dataclass(frozen=True)
class ClusteringSchedule(_BackgroundSchedule):
    """Adaptive clustering every interval_steps (deferred under GPU load): action "run_clustering"."""

    name: str = "clustering"
    job: str = "clustering"
    interval_steps: int = 5000

    def update(self, state: ControlState, metrics: Metrics) -> tuple[ControlState, list[Action]]:
        return self._due(state, metrics)


@dataclasses.dataclass(frozen=True)
class TuningSchedule(_BackgroundSchedule):
    """Tuning hooks (E.1): a Bayesian tuning run every interval_steps (deferred under GPU load), and the
    robustness-range fallback: when the effective eta factor leaves [min_eta_factor, max_eta_factor], the
    knobs revert to the validated defaults ("revert_parameters")."""

    name: str = "tuning"
    job: str = "tuning"
    interval_steps: int = 10_000
    min_eta_factor: float = 0.1
    max_eta_factor: float = 10.0

    def update(self, state: ControlState, metrics: Metrics) -> tuple[ControlState, list[Action]]:
        acts = []
        f = state.eta_factor
        if not self.min_eta_factor <= f <= self.max_eta_factor:
            reason = f"eta factor {f:.3g} outside [{self.min_eta_factor:g}, {self.max_eta_factor:g}]"
            state = state.replace(eta_scale=1.0, inhibition_scale=1.0, growth_scale=1.0, novelty_scale=1.0)
            acts.append(Action(metrics.step, self.name, "revert_parameters", reason))
        state, due = self._due(state, metrics)
        return state, acts + due


@dataclasses.dataclass(frozen=True)
class StructuralSchedule:
    """Structural plasticity every interval_steps (D.5, 4.C): action "structural_plasticity" naming clusters
    whose average reward (metrics.arrays["cluster_avg_reward"]) is below growth_reward as growth targets,
    with the current growth scale; skipped (and said so) in the simplified mode."""

    name: str = "structural"
    interval_steps: int = 1000
    growth_reward: float = 0.5

    def update(self, state: ControlState, metrics: Metrics) -> tuple[ControlState, list[Action]]:
        last = state.memo.get(self.name)
        if last is not None and metrics.step - last < self.interval_steps:
            return state, []
        state = state.remember(self.name, metrics.step)
        if not state.structural_enabled:
            reason = "simplified control mode: structural plasticity off"
            return state, [Action(metrics.step, self.name, "skip_structural", reason)]
        avg = metrics.arrays.get("cluster_avg_reward")
        grow = [] if avg is None else np.flatnonzero(np.asarray(avg) < self.growth_reward).tolist()
        reason = f"every {self.interval_steps} steps" + (
            f"; clusters {grow} below reward {self.growth_reward:g}" if grow else ""
        )
        params = {"grow_clusters": grow, "growth_scale": state.growth_scale}
        return state, [Action(metrics.step, self.name, "structural_plasticity", reason, params)]


DEFAULT_ANOMALY_KEYS = (
    "variance_global",
    "variance_region_max",
    "reward_total",
    "avalanche_max_fraction",
    "debt_fraction",
    "mean_rate_hz",
)


@dataclasses.dataclass(frozen=True)
class AnomalyResponse:
    """Anomaly detection and response (E.7) on the metric histories.

    Detectors (`fumjax.control.anomaly`) are fitted on the last fit_windows windows before the current one,
    leaving out windows already flagged, and refitted every refit_windows. An anomalous window in the normal
    mode enters the diagnostic mode (eta x diagnostic_eta_factor, detailed logging, novelty weight x0.9).
    Anomalies persisting for persist_steps (FUM: 10,000) fall back to the simplified mode (static STDP window,
    no structural plasticity). After recover_steps without an anomaly the mode returns to normal.
    A flagged window stays out of the fitted history for forget_steps (default 2 x persist_steps) and then
    rejoins it: a lasting change of regime becomes the new baseline instead of being flagged forever
    (absolute limits remain the StabilityModule's job).
    """

    name: str = "anomaly"
    keys: tuple[str, ...] = DEFAULT_ANOMALY_KEYS
    fit_windows: int = 100
    min_windows: int = 40
    n_components: int = 1
    refit_windows: int = 10
    persist_steps: int = 10_000
    recover_steps: int = 2_500
    forget_steps: int | None = None
    require: str = "any"
    iforest_margin: float = 0.05
    gmm_margin: float = 5.0
    seed: int = 0

    def update(self, state: ControlState, metrics: Metrics) -> tuple[ControlState, list[Action]]:
        keys = tuple(k for k in self.keys if k in metrics.history and k in metrics.current)
        memo = dict(
            state.memo.get(self.name, {"flags": (), "det": None, "age": 0, "start": None, "last": None})
        )
        if not keys:
            return state, []
        hist = np.stack([np.asarray(metrics.history[k], np.float64) for k in keys], axis=1)[:-1]
        forget = 2 * self.persist_steps if self.forget_steps is None else self.forget_steps
        flagged_at = np.asarray(memo["flags"][-hist.shape[0] :] if hist.shape[0] else (), np.int64)
        flagged_at = np.concatenate([np.full(hist.shape[0] - flagged_at.size, -1), flagged_at])
        flags = (flagged_at >= 0) & (metrics.step - flagged_at < forget)
        past = hist[~flags][-self.fit_windows :]
        det = memo["det"]
        if det is None or det.keys != keys or memo["age"] >= self.refit_windows:
            complete = np.all(np.isfinite(past), axis=1).sum() if past.size else 0
            det = (
                fit_detectors(past, keys, n_components=self.n_components, seed=self.seed)
                if complete >= self.min_windows
                else None
            )
            memo["age"] = 0
        memo["age"] += 1
        memo["det"] = det
        if det is None:
            memo["flags"] = (tuple(memo["flags"]) + (-1,))[-self.fit_windows * 2 :]
            return state.remember(self.name, memo), []
        s = score_window(
            det,
            np.asarray([metrics.current[k] for k in keys]),
            iforest_margin=self.iforest_margin,
            gmm_margin=self.gmm_margin,
            require=self.require,
        )
        memo["flags"] = (tuple(memo["flags"]) + (metrics.step if s["anomaly"] else -1,))[
            -self.fit_windows * 2 :
        ]
        step, acts = metrics.step, []
        if s["anomaly"]:
            memo["last"] = step
            memo["start"] = step if memo["start"] is None else memo["start"]
            why = f"IsolationForest score {s['iforest_score']:.3f}, GMM log-likelihood {s['gmm_loglik']:.1f}"
            if state.mode == "normal":
                state = state.replace(mode="diagnostic", novelty_scale=state.novelty_scale * 0.9)
                params = {"eta_factor": state.diagnostic_eta_factor, "detailed_logging": True}
                acts.append(Action(step, self.name, "enter_diagnostic", "anomalous window: " + why, params))
            elif state.mode == "diagnostic" and step - memo["start"] >= self.persist_steps:
                state = state.replace(mode="simplified")
                reason = f"anomalies persisting for {step - memo['start']} steps: " + why
                params = {"static_stdp_window": True, "structural_plasticity": False}
                acts.append(Action(step, self.name, "enter_simplified", reason, params))
        elif (
            state.mode != "normal" and memo["last"] is not None and step - memo["last"] >= self.recover_steps
        ):
            reason = f"no anomaly for {step - memo['last']} steps"
            acts.append(Action(step, self.name, "resume_normal", reason, {"from": state.mode}))
            state = state.replace(mode="normal")
            memo["start"] = None
        return state.remember(self.name, memo), acts


def default_modules(n_neurons: int) -> list:
    """The standard module set in its run order: load first (it gates background work), then stability,
    interactions, SOC, anomaly response, and the clustering, structural and tuning schedules."""
    return [
        LoadModule(),
        StabilityModule(),
        InteractionModule(),
        SOCModule(n_neurons),
        AnomalyResponse(),
        ClusteringSchedule(),
        StructuralSchedule(),
        TuningSchedule(),
    ]
