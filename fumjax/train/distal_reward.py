"""Distal reward (Izhikevich 2007, "Solving the distal reward problem") on fumjax's LIF network.

One chosen excitatory synapse (pre p -> post q) is rewarded 1-3 s (uniform, random) after each pre-then-post
pairing: q spikes 1..pairing_ms steps after p. A reward adds `reward_amount` to a dopamine level d that decays
with tau_dopamine_ms; the weights follow fumjax's own R-STDP: pair STDP accumulates into eligibility
(gamma = exp(-dt/tau_c) per step), and every window of T steps (T = run.window_steps, 10 here)
`fumjax.end_window(state, R)` applies w += eta_eff(R) * R * e with R = baseline_dopamine + mean of d over the
window's steps; excitatory weights are then floored at 0 (Izhikevich's w in [0, w_max]; fumjax's own clip is
the symmetric [-w_clip, w_clip]). The simulation runs on the fused CPU backend, one FFI call per window,
windows in `lax.scan`.

The protocol's bookkeeping is a small pytree (`ProtocolState`) and pure functions: `detect_pairings` (one
pre spike pairs at most once), `schedule_rewards` (a fixed-size queue of due steps), `dopamine_steps`
(delivery and decay). Rewards are keyed by (seed, step), so a run is a pure function of its seed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

import fumjax
from fumjax.config import FumConfig
from fumjax.encoders import gaussian_background_current, uniform_hash
from fumjax.network import Network
from fumjax.state import State

__all__ = [
    "DistalProtocol",
    "ProtocolState",
    "init_protocol",
    "detect_pairings",
    "schedule_rewards",
    "dopamine_steps",
    "distal_config",
    "build_distal_network",
    "choose_rewarded_synapse",
    "run_distal_chunk",
    "run_distal_reward",
    "criterion_minutes",
]

_NEVER = -(2**30)  # "no pending pre spike" / "empty queue slot" sentinel step


@dataclasses.dataclass(frozen=True)
class DistalProtocol:
    """Parameters of the protocol (times in ms = steps at dt = 1 ms)."""

    pairing_ms: int = 20  # post within 1..pairing_ms steps after pre is a pairing
    delay_min_ms: int = 1000  # reward 1-3 s after the pairing, uniform over integer steps
    delay_max_ms: int = 3000
    reward_amount: float = 0.5  # d += reward_amount on delivery
    tau_dopamine_ms: float = 200.0
    baseline_dopamine: float = 0.002  # R = baseline + mean d over the window
    queue_size: int = 16  # pending rewards at most; a pairing that finds the queue full is dropped
    noise_mean_mV: float = 0.3  # background current per neuron and step
    noise_std_mV: float = 1.3
    reward_seed_offset: int = 0x5EED  # reward delays use seed + offset (independent of the noise stream)

    def __post_init__(self) -> None:
        if not 1 <= self.pairing_ms:
            raise ValueError(f"pairing_ms = {self.pairing_ms}: must be >= 1")
        if not 1 <= self.delay_min_ms <= self.delay_max_ms:
            raise ValueError(
                f"delay_min_ms = {self.delay_min_ms}, delay_max_ms = {self.delay_max_ms}: "
                "need 1 <= min <= max"
            )
        if self.queue_size < 1:
            raise ValueError(f"queue_size = {self.queue_size}: must be >= 1")
        if self.tau_dopamine_ms <= 0:
            raise ValueError(f"tau_dopamine_ms = {self.tau_dopamine_ms}: must be > 0")


@dataclasses.dataclass(frozen=True)
class ProtocolState:
    """last_pre: () int32 step of the rewarded synapse's latest unpaired pre spike (or a large negative).
    due: (Q,) int32 steps at which pending rewards arrive (large negative = empty slot).
    dopamine: () float32 level d.  n_pairings, n_rewards, n_dropped: () int32 counters."""

    last_pre: Array
    due: Array
    dopamine: Array
    n_pairings: Array
    n_rewards: Array
    n_dropped: Array

    def replace(self, **changes: Array) -> ProtocolState:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    ProtocolState, data_fields=[f.name for f in dataclasses.fields(ProtocolState)], meta_fields=[]
)


def init_protocol(protocol: DistalProtocol) -> ProtocolState:
    """No pending pre spike, an empty reward queue, d = 0."""
    zero = jnp.zeros((), jnp.int32)
    return ProtocolState(
        last_pre=jnp.asarray(_NEVER, jnp.int32),
        due=jnp.full((protocol.queue_size,), _NEVER, jnp.int32),
        dopamine=jnp.zeros((), jnp.float32),
        n_pairings=zero,
        n_rewards=zero,
        n_dropped=zero,
    )


def detect_pairings(
    pre_spikes: Array, post_spikes: Array, first_step: Array, last_pre: Array, *, pairing_ms: int
) -> tuple[Array, Array]:
    """Pre-then-post pairings of one synapse over a window of T steps.

    pre_spikes, post_spikes: (T,) spikes of its pre and post neuron at steps first_step + t.
    A post spike at step s pairs with the latest pre spike at s' if 1 <= s - s' <= pairing_ms and that pre
    spike has not paired yet (each pre spike pairs at most once; a same-step pre spike does not count).
    Returns (paired (T,) bool: a pairing completes at step first_step + t, last_pre after the window).
    """

    def body(last, xs):
        t, pre, post = xs
        paired = post.astype(bool) & (t - last >= 1) & (t - last <= pairing_ms)
        last = jnp.where(paired, _NEVER, last)
        last = jnp.where(pre.astype(bool), t, last)
        return last, paired

    steps = first_step + jnp.arange(pre_spikes.shape[0], dtype=jnp.int32)
    return jax.lax.scan(body, last_pre, (steps, pre_spikes, post_spikes))[::-1]


def schedule_rewards(
    ps: ProtocolState, paired: Array, first_step: Array, seed: Array, protocol: DistalProtocol
) -> ProtocolState:
    """Queue a reward for each pairing: due = s + delay_min + floor(u * (delay_max - delay_min + 1)),
    u = uniform_hash(seed + reward_seed_offset, 0, s) for the pairing at step s = first_step + t.
    paired: (T,) bool. A pairing that finds no empty slot is counted in n_dropped."""
    span = protocol.delay_max_ms - protocol.delay_min_ms + 1
    key = jnp.asarray(seed, jnp.uint32) + jnp.uint32(protocol.reward_seed_offset)

    def body(p, xs):
        t, hit = xs
        u = uniform_hash(key, 0, t)
        delay = protocol.delay_min_ms + jnp.minimum((u * span).astype(jnp.int32), span - 1)
        empty = p.due == _NEVER
        slot = jnp.argmax(empty)
        ok = hit & empty[slot]
        due = jnp.where(ok, p.due.at[slot].set(t + delay), p.due)
        return p.replace(
            due=due,
            n_pairings=p.n_pairings + hit.astype(jnp.int32),
            n_dropped=p.n_dropped + (hit & ~ok).astype(jnp.int32),
        ), None

    steps = first_step + jnp.arange(paired.shape[0], dtype=jnp.int32)
    return jax.lax.scan(body, ps, (steps, paired))[0]


def dopamine_steps(
    ps: ProtocolState, first_step: Array, n_steps: int, protocol: DistalProtocol
) -> tuple[ProtocolState, Array]:
    """Advance d over steps first_step .. first_step + n_steps - 1: d = d * exp(-dt/tau_d) + amount * (#due
    at this step); delivered slots empty. Returns (state, mean of d over the n_steps steps)."""
    decay = math.exp(-1.0 / protocol.tau_dopamine_ms)

    def body(carry, s):
        d, due, n = carry
        hits = due == s
        k = hits.sum(dtype=jnp.int32)
        d = d * jnp.float32(decay) + jnp.float32(protocol.reward_amount) * k.astype(jnp.float32)
        return (d, jnp.where(hits, _NEVER, due), n + k), d

    steps = first_step + jnp.arange(n_steps, dtype=jnp.int32)
    (d, due, n), ds = jax.lax.scan(body, (ps.dopamine, ps.due, ps.n_rewards), steps)
    return ps.replace(dopamine=d, due=due, n_rewards=n), ds.mean()


def distal_config(
    *,
    seed: int = 0,
    g_syn_mV: float = 1.0,
    a_plus: float = 0.1,
    a_minus_ratio: float = 1.5,
    eta: float = 0.05,
    tau_elig_ms: float = 2000.0,
    window_steps: int = 10,
    rate_band_hz: tuple[float, float] | None = (1.0, 2.0),
    v_th_step_mV: float = 0.002,
) -> FumConfig:
    """The FumConfig of the protocol: 1000 neurons, K = 100 inputs each, R-STDP on the fused backend.

    The exploration's w in [0, 4] at 0.25 mV per unit maps to fumjax's w in [0, 1] (w_clip 1) at
    g_syn_mV = 1 mV per unit; eligibility gamma = exp(-dt / tau_elig_ms). rate_band_hz: intrinsic plasticity
    (thresholds only, v_th_step_mV per window, running rate averaged over ~1000 windows) holds every neuron's
    rate in the band, so any chosen synapse pairs at a similar rate; None turns it off.
    """
    intrinsic = {"enabled": False}
    if rate_band_hz is not None:
        intrinsic = {
            "enabled": True,
            "target_rate_min_hz": rate_band_hz[0],
            "target_rate_max_hz": rate_band_hz[1],
            "v_th_step_mV": v_th_step_mV,
            "tau_step_ms": 0.0,
            "rate_ema": 1e-3,
        }
    return FumConfig.from_dict(
        {
            "neuron": {"n_neurons": 1000, "excitatory_fraction": 0.8},
            "connectivity": {"k_per_neuron": 100, "g_syn_mV": g_syn_mV, "w_clip": 1.0},
            "stdp": {"a_plus": a_plus, "a_minus": a_minus_ratio * a_plus},
            "plasticity": {"mode": "rstdp", "gamma": math.exp(-1.0 / tau_elig_ms), "eta": eta},
            "intrinsic": intrinsic,
            "run": {"window_steps": window_steps, "backend": "fused", "seed": seed},
        }
    )


def build_distal_network(cfg: FumConfig, *, w_exc: float = 0.25, w_inh: float = -0.25) -> Network:
    """fumjax's distance-biased network for cfg with Izhikevich's initial weights (excitatory w_exc,
    inhibitory w_inh; 1 and -1 of w_max = 4 in his units) and static inhibitory synapses (plastic_pre =
    excitatory)."""
    net = fumjax.build_network(cfg)
    w0 = jnp.where(net.excitatory_pre[net.pre], jnp.float32(w_exc), jnp.float32(w_inh))
    return dataclasses.replace(net, w0=w0, plastic_pre=net.excitatory_pre)


def choose_rewarded_synapse(net: Network, seed: int) -> int:
    """A random excitatory -> excitatory synapse (CSR index), a pure function of seed."""
    exc = np.asarray(net.excitatory)
    pre, post = np.asarray(net.pre), np.asarray(net.post)
    candidates = np.flatnonzero(exc[pre] & exc[post])
    return int(np.random.default_rng([seed, 2007]).choice(candidates))


PERCENTILES = (50.0, 90.0, 99.0, 99.9, 100.0)


@functools.partial(jax.jit, static_argnames=("n_windows", "cfg", "protocol", "syn", "learn"))
def run_distal_chunk(
    state: State,
    ps: ProtocolState,
    net: Network,
    others: Array,
    *,
    n_windows: int,
    cfg: FumConfig,
    protocol: DistalProtocol,
    syn: int,
    learn: bool = True,
) -> tuple[State, ProtocolState, dict[str, Array]]:
    """n_windows windows of the protocol; returns (state, protocol state, summary at the chunk's end).

    learn False: warm-up with weights frozen (plasticity "off", no pairings or rewards); intrinsic plasticity
    still runs.
    others: (M,) CSR indices of the other plastic excitatory synapses. The summary holds w_syn (the rewarded
    weight), w_pct (len(PERCENTILES),) percentiles of the others' weights, rate_exc_hz and rate_inh_hz
    (mean rates over the chunk).
    """
    t_win = cfg.run.window_steps
    pre, post = net.pre[syn], net.post[syn]
    exc_syn = net.excitatory_pre[net.pre]  # fumjax clips to [-w_clip, w_clip]; Dale: excitatory w >= 0

    def window(carry, _):
        s, p = carry
        first = s.step
        noise = gaussian_background_current(
            seed=s.seed,
            n_neurons=net.n_neurons,
            first_step=first,
            n_steps=t_win,
            mean_mV=protocol.noise_mean_mV,
            std_mV=protocol.noise_std_mV,
        )
        if not learn:
            s, spikes = fumjax.simulate(s, net, noise, config=cfg, plasticity="off")
            return (fumjax.end_window(s, 0.0, config=cfg, plasticity="off"), p), spikes.sum(
                0, dtype=jnp.int32
            )
        s, spikes = fumjax.simulate(s, net, noise, config=cfg)
        paired, last = detect_pairings(
            spikes[:, pre], spikes[:, post], first, p.last_pre, pairing_ms=protocol.pairing_ms
        )
        p = schedule_rewards(p.replace(last_pre=last), paired, first, s.seed, protocol)
        p, d_mean = dopamine_steps(p, first, t_win, protocol)
        s = fumjax.end_window(s, protocol.baseline_dopamine + d_mean, config=cfg)
        s = s.replace(w=jnp.where(exc_syn, jnp.maximum(s.w, 0.0), s.w))
        return (s, p), spikes.sum(0, dtype=jnp.int32)

    (state, ps), counts = jax.lax.scan(window, (state, ps), None, length=n_windows)
    counts = counts.sum(0).astype(jnp.float32) * (1000.0 / (n_windows * t_win * cfg.neuron.dt_ms))
    exc = net.excitatory
    summary = {
        "w_syn": state.w[syn],
        "w_pct": jnp.percentile(state.w[others], jnp.asarray(PERCENTILES)),
        "rate_exc_hz": jnp.where(exc, counts, 0.0).sum() / exc.sum(),
        "rate_inh_hz": jnp.where(exc, 0.0, counts).sum() / (~exc).sum(),
        "rate_exc_pct_hz": jnp.nanpercentile(
            jnp.where(exc, counts, jnp.nan), jnp.asarray([10.0, 50.0, 90.0])
        ),
    }
    return state, ps, summary


def criterion_minutes(
    t_min: np.ndarray,
    w_syn: np.ndarray,
    w_p99: np.ndarray,
    *,
    w_max: float,
    grow: float = 0.9,
    stay: float = 0.5,
) -> float | None:
    """First record time (minutes) at which w_syn >= grow * w_max while the others' 99th percentile
    w_p99 < stay * w_max; None if never. All arrays (R,) over the R records."""
    ok = (np.asarray(w_syn) >= grow * w_max) & (np.asarray(w_p99) < stay * w_max)
    hits = np.flatnonzero(ok)
    return float(np.asarray(t_min)[hits[0]]) if hits.size else None


def run_distal_reward(
    cfg: FumConfig,
    protocol: DistalProtocol,
    *,
    minutes: float = 60.0,
    record_s: float = 10.0,
    warmup_s: float = 120.0,
    progress: bool = False,
) -> dict:
    """The whole protocol for cfg.run.seed: build the network, pick the synapse, run `minutes` of model time
    in chunks of record_s seconds, after warmup_s seconds with frozen weights in which intrinsic plasticity
    brings every neuron's rate into the band (model time 0 is the warm-up's end). Returns a dict of (R,)
    numpy trajectories (t_min, w_syn, w_p50 ... w_p100, rate_exc_hz, rate_inh_hz, n_pairings, n_rewards),
    weights in units of w_clip, plus the synapse and timing."""
    import time

    seed = cfg.run.seed
    net = build_distal_network(cfg)
    syn = choose_rewarded_synapse(net, seed)
    exc_pre = np.asarray(net.excitatory_pre)[np.asarray(net.pre)]
    others = np.flatnonzero(exc_pre)
    others = jnp.asarray(others[others != syn])
    state, ps = fumjax.init_state(net, cfg), init_protocol(protocol)
    n_windows = round(record_s * 1000.0 / (cfg.run.window_steps * cfg.neuron.dt_ms))
    n_chunks = math.ceil(minutes * 60.0 / record_s)
    keys = ("w_syn", "w_pct", "rate_exc_hz", "rate_inh_hz")
    rec: dict[str, list] = {k: [] for k in (*keys, "n_pairings", "n_rewards")}
    t0 = time.perf_counter()
    for _ in range(math.ceil(warmup_s / record_s)):
        state, ps, _ = run_distal_chunk(
            state, ps, net, others, n_windows=n_windows, cfg=cfg, protocol=protocol, syn=syn, learn=False
        )
    for c in range(n_chunks):
        state, ps, summary = run_distal_chunk(
            state, ps, net, others, n_windows=n_windows, cfg=cfg, protocol=protocol, syn=syn
        )
        for k in keys:
            rec[k].append(np.asarray(summary[k]))
        rec["n_pairings"].append(int(ps.n_pairings))
        rec["n_rewards"].append(int(ps.n_rewards))
        if progress and (c + 1) % 30 == 0:
            print(
                f"seed {seed} {(c + 1) * record_s / 60:5.1f} min: w_syn {rec['w_syn'][-1]:.3f} "
                f"p99 {rec['w_pct'][-1][2]:.3f} rewards {rec['n_rewards'][-1]}",
                file=sys.stderr,
                flush=True,
            )
    wall = time.perf_counter() - t0
    pct = np.stack(rec.pop("w_pct"))
    out = {k: np.asarray(v) for k, v in rec.items()}
    out.update({f"w_p{p:g}": pct[:, i] for i, p in enumerate(PERCENTILES)})
    out["t_min"] = np.arange(1, n_chunks + 1) * record_s / 60.0
    out.update(
        synapse=syn,
        synapse_pre=int(net.pre[syn]),
        synapse_post=int(net.post[syn]),
        n_others=int(others.shape[0]),
        n_dropped=int(ps.n_dropped),
        wall_s=wall,
    )
    return out
