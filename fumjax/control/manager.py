"""The control layer's frame: control state, actions, the module interface and the `ControlManager`.

FUM E.7 ("modular control architecture"): every control mechanism is a module with one interface,
`update(state, metrics) -> (state, actions)`, pure (its output depends only on its inputs; any memory it keeps
lives in `state.memo[module.name]`), so each can be tested alone on constructed metric histories. The manager
runs the registered modules in order, threading the state through them, and keeps a log of every action with
its reason. Actions either change the control state's knobs (eta scale, inhibition scale, mode, ...) — which
`effective_config` turns into the `FumConfig` the next window runs with — or ask the training loop to do
something (run clustering, structural plasticity, a tuning run), which the loop reads from the returned list.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fumjax.config import FumConfig

__all__ = [
    "MODES",
    "Action",
    "ControlState",
    "Metrics",
    "ControlModule",
    "ControlManager",
    "effective_config",
]

MODES = ("normal", "diagnostic", "simplified")


@dataclasses.dataclass(frozen=True)
class Action:
    """One decision of a control module: which module, what (name), with which parameters, and why."""

    step: int
    module: str
    name: str
    reason: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record."""
        return {
            "step": self.step,
            "module": self.module,
            "action": self.name,
            "reason": self.reason,
            "params": dict(self.params),
        }


@dataclasses.dataclass(frozen=True)
class ControlState:
    """The knobs the control layer sets, and each module's memory.

    eta_scale, inhibition_scale, growth_scale, novelty_scale: multipliers (1 = as configured) of the
    learning rate, of inhibitory weights, of the structural growth rate and of the SIE novelty weight.
    mode: "normal" | "diagnostic" (eta further x diagnostic_eta_factor, detailed logging) | "simplified"
    (static STDP window tau+ = 20 ms, no structural plasticity). defer_background: clustering and tuning wait
    (thermal or load limit). memo: per-module memory, {module name: any immutable value}.
    """

    eta_scale: float = 1.0
    inhibition_scale: float = 1.0
    growth_scale: float = 1.0
    novelty_scale: float = 1.0
    mode: str = "normal"
    diagnostic_eta_factor: float = 0.5
    defer_background: bool = False
    memo: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode = {self.mode!r}: must be one of {', '.join(MODES)}")

    def replace(self, **changes: Any) -> ControlState:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def remember(self, module: str, value: Any) -> ControlState:
        """A copy whose memo holds `value` for `module`."""
        return self.replace(memo={**self.memo, module: value})

    @property
    def detailed_logging(self) -> bool:
        """Diagnostic and simplified modes log every metric of every window."""
        return self.mode != "normal"

    @property
    def structural_enabled(self) -> bool:
        """Structural plasticity runs only outside the simplified mode."""
        return self.mode != "simplified"

    @property
    def adaptive_stdp_window(self) -> bool:
        """Adaptive STDP windows (e.g. latency-widened tau+) only outside the simplified mode."""
        return self.mode != "simplified"

    @property
    def eta_factor(self) -> float:
        """The total multiplier of eta: eta_scale, times diagnostic_eta_factor outside the normal mode."""
        return self.eta_scale * (self.diagnostic_eta_factor if self.mode != "normal" else 1.0)


@dataclasses.dataclass(frozen=True)
class Metrics:
    """What the modules see at a window's end.

    step: the step count. current: {name: value} of this window. history: {name: (H,) float64} of the last H
    windows, this one last (NaN where a window lacked the metric). arrays: raw per-window arrays a module may
    need (e.g. "counts": (T,) population spike counts per step). interactions: (a, b, r) for metric pairs
    whose histories correlate with |r| above the monitor's threshold (FUM E.7).
    """

    step: int
    current: Mapping[str, float]
    history: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    interactions: tuple[tuple[str, str, float], ...] = ()

    def get(self, name: str, default: float = float("nan")) -> float:
        """This window's value of `name` (default when absent)."""
        return float(self.current.get(name, default))


class ControlModule(Protocol):
    """A control mechanism: a name and a pure update."""

    name: str

    def update(self, state: ControlState, metrics: Metrics) -> tuple[ControlState, list[Action]]:
        """Decide on this window: returns the new control state and the actions taken (with reasons)."""
        ...


class ControlManager:
    """Runs registered modules in order each window and logs every action (optionally to a JSONL file).

    The manager holds no control state itself: `update` takes and returns it, so a run can checkpoint it with
    the network state. `log` keeps every action taken, in order.
    """

    def __init__(self, modules: Sequence[ControlModule] = (), *, log_path: str | Path | None = None):
        self._modules: list[ControlModule] = []
        self.log: list[Action] = []
        self._log_path = Path(log_path) if log_path is not None else None
        for m in modules:
            self.register(m)

    @property
    def modules(self) -> tuple[ControlModule, ...]:
        """The registered modules, in the order they run."""
        return tuple(self._modules)

    def register(self, module: ControlModule) -> None:
        """Add a module (runs after those already registered); names must be unique."""
        name = getattr(module, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{module!r} has no name: a control module needs a non-empty str `name`")
        if not callable(getattr(module, "update", None)):
            raise ValueError(f"control module {name!r} has no update(state, metrics) method")
        if any(m.name == name for m in self._modules):
            raise ValueError(f"a control module named {name!r} is already registered")
        self._modules.append(module)

    def update(self, state: ControlState, metrics: Metrics) -> tuple[ControlState, list[Action]]:
        """Run every module on (state, metrics) in order; returns the final state and all actions."""
        actions: list[Action] = []
        for m in self._modules:
            state, acts = m.update(state, metrics)
            actions.extend(acts)
        self.log.extend(actions)
        if self._log_path is not None and actions:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            with self._log_path.open("a") as fh:
                for a in actions:
                    fh.write(json.dumps(a.to_dict()) + "\n")
        return state, actions


def effective_config(cfg: FumConfig, state: ControlState, *, static_tau_plus_ms: float = 20.0) -> FumConfig:
    """The config the next window runs with: eta x state.eta_factor, SIE novelty weight x novelty_scale;
    in the simplified mode the STDP window is the static tau+ = tau- = static_tau_plus_ms."""
    changes: dict[str, dict[str, Any]] = {
        "plasticity": {"eta": cfg.plasticity.eta * state.eta_factor},
        "sie": {"w_novelty": cfg.sie.w_novelty * state.novelty_scale},
    }
    if not state.adaptive_stdp_window:
        changes["stdp"] = {"tau_plus_ms": static_tau_plus_ms, "tau_minus_ms": static_tau_plus_ms}
    return cfg.replace(**changes)
