"""Every parameter of a fumjax run as frozen dataclasses, loadable from TOML and validated.

Each field carries its allowed range in its metadata; `FumConfig.from_dict` rejects unknown keys, wrong
types and out-of-range values with one `ConfigError` that names the key (``stdp.a_plus``) and the range.
Units are in the names: ms, mV, Hz; dt is 1 ms unless `neuron.dt_ms` says otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

INF = math.inf


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of its allowed range."""


def _p(default: Any, lo: float | None = None, hi: float | None = None, *, choices: tuple = (), doc: str = ""):
    """A dataclass field with an allowed closed range [lo, hi] (None = unbounded) or a set of choices."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices, "doc": doc})


@dataclass(frozen=True)
class NeuronConfig:
    """LIF neuron population: size, E/I mix, per-neuron tau and threshold distributions, reset."""

    n_neurons: int = _p(1000, 1, 2**31 - 1, doc="number of neurons N")
    excitatory_fraction: float = _p(0.8, 0.0, 1.0, doc="exactly round(f*N) neurons are excitatory")
    tau_mean_ms: float = _p(20.0, 1e-3, INF)
    tau_std_ms: float = _p(2.0, 0.0, INF)
    tau_min_ms: float = _p(15.0, 1e-3, INF)
    tau_max_ms: float = _p(25.0, 1e-3, INF)
    v_th_mean_mV: float = _p(-55.0, -INF, INF)
    v_th_std_mV: float = _p(2.0, 0.0, INF)
    v_th_min_mV: float = _p(-60.0, -INF, INF)
    v_th_max_mV: float = _p(-50.0, -INF, INF)
    v_rest_mV: float = _p(-70.0, -INF, INF)
    v_reset_mV: float = _p(-70.0, -INF, INF)
    refractory_steps: int = _p(0, 0, 10_000, doc="steps a neuron is held at reset after a spike")
    dt_ms: float = _p(1.0, 1e-6, INF)


@dataclass(frozen=True)
class ConnectivityConfig:
    """Distance-biased sparse graph on a 2-D grid and synaptic coupling."""

    k_per_neuron: int = _p(0, 0, 2**31 - 1, doc="presynaptic partners per neuron; 0 = min(5% of N, 100)")
    sigma_grid: float = _p(5.0, 1e-6, INF, doc="length scale of exp(-d/sigma), grid units")
    w_exc_max: float = _p(0.3, 0.0, 1.0, doc="initial excitatory weights ~ U(0, w_exc_max)")
    w_inh_min: float = _p(-0.3, -1.0, 0.0, doc="initial inhibitory weights ~ U(w_inh_min, 0)")
    w_clip: float = _p(1.0, 0.0, INF, doc="weights always clipped to [-w_clip, w_clip]")
    g_syn_mV: float = _p(2.0, 0.0, INF, doc="mV per unit weight per presynaptic spike")
    delay_steps: int = _p(1, 1, 255, doc="synaptic delay in steps (1 = next step)")


@dataclass(frozen=True)
class STDPConfig:
    """Pair STDP via traces; signs flip for inhibitory presynaptic neurons."""

    a_plus: float = _p(0.1, 0.0, INF)
    a_minus: float = _p(0.12, 0.0, INF)
    tau_plus_ms: float = _p(20.0, 1e-6, INF)
    tau_minus_ms: float = _p(20.0, 1e-6, INF)


@dataclass(frozen=True)
class PlasticityConfig:
    """How STDP reaches the weights: `rstdp` (eligibility + reward per window) or `stdp` (direct)."""

    mode: str = _p("rstdp", choices=("rstdp", "stdp", "off"))
    gamma: float = _p(0.95, 1e-3, 1.0, doc="eligibility decay per step")
    eta: float = _p(0.01, 0.0, INF, doc="base learning rate of the reward update")


@dataclass(frozen=True)
class SIEConfig:
    """Self-improvement engine: reward = w_td*TD + w_novelty*novelty - w_habituation*hab + w_self*benefit."""

    w_td: float = _p(1.0, 0.0, INF)
    w_novelty: float = _p(1.0, 0.0, INF)
    w_habituation: float = _p(1.0, 0.0, INF)
    w_self_benefit: float = _p(1.0, 0.0, INF)
    td_gamma: float = _p(0.9, 0.0, 1.0)
    td_alpha: float = _p(0.1, 0.0, 1.0)
    novelty_history: int = _p(50, 1, 100_000)
    novelty_cap: float = _p(0.9, 0.0, 1.0, doc="reward capped at 0 when novelty exceeds this")
    habituation_threshold: float = _p(0.9, 0.0, 1.0)
    habituation_increment: float = _p(0.1, 0.0, 1.0)
    habituation_decay: float = _p(0.95, 0.0, 1.0)
    # FUM's 0.05 Hz^2 belongs with its 0.1-0.5 Hz band; at the default 2-20 Hz band an active network's
    # running rates vary by ~5 Hz across neurons, so the default target is 25 Hz^2.
    target_rate_var: float = _p(25.0, 1e-12, INF, doc="target variance of running firing rates, Hz^2")
    smoothing_windows: int = _p(5, 1, 10_000)


@dataclass(frozen=True)
class IntrinsicConfig:
    """Per-window threshold/tau adaptation toward a firing-rate band."""

    enabled: bool = _p(True)
    target_rate_min_hz: float = _p(2.0, 0.0, INF)
    target_rate_max_hz: float = _p(20.0, 0.0, INF)
    v_th_step_mV: float = _p(0.1, 0.0, INF)
    tau_step_ms: float = _p(0.1, 0.0, INF)
    rate_ema: float = _p(0.1, 0.0, 1.0, doc="weight of the newest window in the running rate estimate")


@dataclass(frozen=True)
class EncoderConfig:
    """Input encoding of items into spike trains."""

    kind: str = _p("poisson", choices=("poisson", "latency"))
    max_rate_hz: float = _p(100.0, 0.0, 1000.0)
    refractory_steps: int = _p(5, 0, 1000)
    lowpass_taps: int = _p(5, 1, 1000)
    amp_mV: float = _p(10.0, 0.0, INF, doc="current per input spike into its neuron")


@dataclass(frozen=True)
class DriveConfig:
    """Default background input: n_inputs Poisson trains per neuron."""

    n_inputs: int = _p(10, 0, 100_000)
    rate_hz: float = _p(20.0, 0.0, 1000.0)
    amp_mV: float = _p(2.25, 0.0, INF)


@dataclass(frozen=True)
class RunConfig:
    """Window length, numeric type (float16/bfloat16: weights and eligibility stored in 16 bits, neuron
    state float32), backend, seed and kernel threads."""

    window_steps: int = _p(50, 1, 1_000_000, doc="steps per input item / reward window")
    dtype: str = _p("float32", choices=("float32", "float64", "float16", "bfloat16"))
    backend: str = _p("reference", choices=("reference", "fused"))
    seed: int = _p(0, 0, 2**32 - 1)
    threads: int = _p(0, 0, 4096, doc="fused CPU kernel threads; 0 = automatic (up to the idle usable cores)")


@dataclass(frozen=True)
class FumConfig:
    """All parameters of a run; sections mirror the TOML tables."""

    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    connectivity: ConnectivityConfig = field(default_factory=ConnectivityConfig)
    stdp: STDPConfig = field(default_factory=STDPConfig)
    plasticity: PlasticityConfig = field(default_factory=PlasticityConfig)
    sie: SIEConfig = field(default_factory=SIEConfig)
    intrinsic: IntrinsicConfig = field(default_factory=IntrinsicConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    drive: DriveConfig = field(default_factory=DriveConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            for sf in dataclasses.fields(section):
                _check_value(f"{f.name}.{sf.name}", getattr(section, sf.name), sf)
        _check_pairs(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FumConfig:
        """Build from nested dicts ({"stdp": {"a_plus": 0.1}, ...}); missing keys keep defaults."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a table of sections, got {type(data).__name__}")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for name, values in data.items():
            if name not in sections:
                raise ConfigError(f"unknown section {name!r} (allowed: {', '.join(sections)})")
            section_cls = sections[name].default_factory  # type: ignore[misc]
            if not isinstance(values, dict):
                raise ConfigError(f"{name}: expected a table, got {type(values).__name__}")
            allowed = {sf.name: sf for sf in dataclasses.fields(section_cls)}
            for key, value in values.items():
                if key not in allowed:
                    raise ConfigError(f"unknown key '{name}.{key}' (allowed: {', '.join(allowed)})")
                _check_type(f"{name}.{key}", value, _field_type(section_cls, key))
            kwargs[name] = section_cls(**values)
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str | Path) -> FumConfig:
        """Load a TOML file whose tables are the sections of FumConfig."""
        return cls.from_dict(read_toml(path))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict, the inverse of from_dict."""
        return dataclasses.asdict(self)

    def replace(self, **sections: dict[str, Any]) -> FumConfig:
        """A copy with some keys changed: cfg.replace(neuron={"n_neurons": 100})."""
        merged = self.to_dict()
        for name, values in sections.items():
            if name not in merged:
                raise ConfigError(f"unknown section {name!r} (allowed: {', '.join(merged)})")
            merged[name].update(values)
        return FumConfig.from_dict(merged)

    @property
    def k_per_neuron(self) -> int:
        """Presynaptic partners per neuron, resolving 0 to the default min(round(5% N), 100, N-1)."""
        k = self.connectivity.k_per_neuron
        n = self.neuron.n_neurons
        return k if k > 0 else max(1, min(round(0.05 * n), 100, n - 1))


def _field_type(cls: type, name: str) -> type:
    hints = typing.get_type_hints(cls)
    return hints[name]


def _check_type(key: str, value: Any, expected: Any) -> None:
    if isinstance(expected, types.UnionType):  # pragma: no cover - no unions used now
        expected = typing.get_args(expected)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }[expected](value)
    if not ok:
        raise ConfigError(f"{key}: expected {expected.__name__}, got {type(value).__name__} ({value!r})")


def _check_value(key: str, value: Any, f: dataclasses.Field) -> None:
    lo, hi, choices = f.metadata["lo"], f.metadata["hi"], f.metadata["choices"]
    if choices:
        if value not in choices:
            raise ConfigError(f"{key} = {value!r}: must be one of {', '.join(map(repr, choices))}")
        return
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{key} = nan: must be a number in [{lo}, {hi}]")
    if lo is not None and hi is not None and not (lo <= value <= hi):
        raise ConfigError(f"{key} = {value!r}: must be in [{lo}, {hi}]")


def _check_pairs(cfg: FumConfig) -> None:
    n, c, ip = cfg.neuron, cfg.connectivity, cfg.intrinsic
    for lo_key, hi_key, lo, hi in (
        ("neuron.tau_min_ms", "neuron.tau_max_ms", n.tau_min_ms, n.tau_max_ms),
        ("neuron.v_th_min_mV", "neuron.v_th_max_mV", n.v_th_min_mV, n.v_th_max_mV),
        (
            "intrinsic.target_rate_min_hz",
            "intrinsic.target_rate_max_hz",
            ip.target_rate_min_hz,
            ip.target_rate_max_hz,
        ),
    ):
        if lo > hi:
            raise ConfigError(f"{lo_key} = {lo} must be <= {hi_key} = {hi}")
    if c.k_per_neuron > n.n_neurons - 1:
        raise ConfigError(
            f"connectivity.k_per_neuron = {c.k_per_neuron}: must be in [0, {n.n_neurons - 1}] "
            f"(at most N-1 for neuron.n_neurons = {n.n_neurons})"
        )


def read_toml(path: str | Path) -> dict:
    """The tables of a TOML file as a dict; ConfigError naming the file when it is missing or not TOML."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
