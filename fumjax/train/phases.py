"""FUM training phases 1-3 on a corpus, by reward and plasticity only (FUM section 5.A-C).

Phase 1 (seed sprinkling): a balanced seed set (`phase1_items`, equal per domain), `phase1_epochs` shuffled
epochs, targeted reward. Phase 2 (tandem complexity scaling): a curriculum of batches of at most
`phase2_batch` new items, ordered by domain complexity (classes per domain, fewest first); each stage runs
`phase2_epochs_per_stage` epochs over every item introduced so far; targeted reward; every chunk (1000 steps)
populations whose average reward is below `grow_threshold` grow a neuron (<= 1% of the alive outputs per
event, capped by the preallocated slots). Phase 3 (continuous learning): an unlabeled stream (the held-out
domain, if any, mixed with the earlier domains' training items) with self-supervised SIE reward, persistence
tags, decay of non-persistent weights, growth and pruning of silent grown neurons, SOC monitoring with the
eta intervention, periodic checkpoints.

Adaptive clustering (k-means, silhouette k) of the neurons' recent activity runs every `cluster_every`
windows; its clusters are the SIE's TD states (V_states remapped by overlap) and carry reward averages.
Everything the run carries is in `TrainerState` (checkpointed at unit boundaries; a unit is an epoch, or a
block of phase-3 windows): resuming from a checkpoint reproduces the uninterrupted run bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import fumjax
from fumjax.config import ConfigError, FumConfig, _check_type, _check_value, _field_type, _p
from fumjax.sie import SIEState
from fumjax.state import State
from fumjax.train import clustering, soc, stability
from fumjax.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from fumjax.train.corpus import Corpus
from fumjax.train.digits import recipe_config
from fumjax.train.readout import Readout, ReadoutSpec, build_readout, init_sie_state, predict, run_chunk

__all__ = [
    "Engine",
    "TrainSettings",
    "TrainerState",
    "Unit",
    "default_engine_config",
    "load_settings",
    "schedule",
    "train",
    "evaluate",
    "validate_corpus",
    "resume_point",
]


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Train-level settings (TOML table [train]); the engine's own parameters are the FumConfig sections."""

    phases: str = _p("1,2,3", doc="comma-separated phases to run, in order, from 1,2,3")
    items_per_domain: int = _p(150, 10, 100_000, doc="built-in corpus size per domain")
    val_fraction: float = _p(0.2, 0.01, 0.9)
    holdout_domain: str = _p("", doc="domain kept out of phases 1-2 and streamed (unlabeled) in phase 3")
    slots_per_class: int = _p(16, 1, 4096, doc="preallocated output neurons per class (global cap)")
    init_per_class: int = _p(4, 1, 4096, doc="output neurons alive per class at the start")
    phase1_items: int = _p(80, 1, 10**9)
    phase1_epochs: int = _p(5, 1, 10_000)
    phase2_batch: int = _p(300, 1, 10**9, doc="new items per curriculum stage")
    phase2_max_items: int = _p(
        0, 0, 10**9, doc="cap on the curriculum's distinct items (0 = all training items)"
    )
    phase2_epochs_per_stage: int = _p(3, 1, 10_000)
    phase2_final_epochs: int = _p(6, 0, 10_000, doc="extra epochs over the whole curriculum at the end")
    phase3_windows: int = _p(1200, 0, 10**9)
    phase3_block: int = _p(200, 1, 10**9, doc="phase-3 windows per checkpoint unit")
    phase3_new_fraction: float = _p(0.5, 0.0, 1.0, doc="share of held-out-domain items in the stream")
    chunk_windows: int = _p(20, 1, 100_000, doc="windows per jitted chunk (20 x 50 steps = 1000 steps)")
    grow_threshold: float = _p(0.5, -1.0, 1.0, doc="a population grows when its avg reward is below this")
    grow_threshold_self: float = _p(
        0.0,
        -10.0,
        10.0,
        doc="phase 3: growth when a population's avg self-supervised SIE reward is below this",
    )
    grow_min_windows: int = _p(8, 1, 10**9)
    grow_max_fraction: float = _p(0.01, 0.0, 1.0)
    reward_ema: float = _p(0.1, 0.0, 1.0, doc="weight of the newest window in a population's avg reward")
    cluster_every: int = _p(1000, 1, 10**9, doc="windows between k-means re-clusterings")
    cluster_history: int = _p(40, 2, 10**6, doc="recent windows used as clustering features")
    k_max: int = _p(6, 2, 64)
    tag_w_fraction: float = _p(0.8, 0.0, 1.0, doc="tag if w > this x the strongest input of its neuron")
    tag_reward: float = _p(0.9, -1.0, 1.0)
    untag_reward: float = _p(0.5, -1.0, 1.0)
    persistent_factor: float = _p(0.5, 0.0, 1.0, doc="eta factor of persistent synapses")
    decay_every: int = _p(200, 1, 10**9, doc="phase-3 windows between synaptic decay events")
    decay_factor: float = _p(0.99, 0.0, 1.0)
    prune_rate_hz: float = _p(1.0, 0.0, 1e6, doc="phase-3: grown neurons below this mean rate are pruned")
    soc_eta_floor: float = _p(0.5, 0.0, 1.0, doc="lowest eta scale SOC interventions may reach")
    eval_every_stage: bool = _p(True)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_value(f"train.{f.name}", getattr(self, f.name), f)
        if self.init_per_class > self.slots_per_class:
            raise ConfigError(
                f"train.init_per_class = {self.init_per_class} must be <= "
                f"train.slots_per_class = {self.slots_per_class}"
            )
        ph = self.phase_list
        if not ph or any(p not in (1, 2, 3) for p in ph) or sorted(set(ph)) != list(ph):
            raise ConfigError(
                f"train.phases = {self.phases!r}: must be increasing phases from 1,2,3 (e.g. '1,2')"
            )

    @property
    def phase_list(self) -> list[int]:
        try:
            return [int(p) for p in self.phases.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"train.phases = {self.phases!r}: must be comma-separated integers") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSettings:
        """Settings from a dict ({"phase1_epochs": 5, ...}); unknown keys and wrong types are errors."""
        allowed = {f.name for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if key not in allowed:
                raise ConfigError(f"unknown key 'train.{key}' (allowed: {', '.join(sorted(allowed))})")
            _check_type(f"train.{key}", value, _field_type(cls, key))
        return cls(**data)


def default_engine_config(seed: int = 0) -> FumConfig:
    """Engine settings of the trainer: the digits recipe's R-STDP (gamma 0.99, eta 0.001, A+ 0.1, A- 0.06,
    g_syn 15 mV, refractory 2), fused backend, intrinsic plasticity off (thresholds adapt per spike), and
    the SIE's self-benefit target at the rate variance of this network's windows (input neurons firing at up
    to 250 Hz beside sparse outputs: a median of ~4600 Hz^2 over phase-2 windows, where 25 Hz^2 gives 0)."""
    return recipe_config(gamma=0.99, eta=0.001, seed=seed).replace(
        run={"backend": "fused"}, sie={"target_rate_var": 4500.0}
    )


def load_settings(path: str | Path | None, seed: int = 0) -> tuple[TrainSettings, FumConfig]:
    """Settings and engine config from a TOML file ([train] plus FumConfig sections over the defaults)."""
    cfg = default_engine_config(seed)
    if path is None:
        return TrainSettings(), cfg
    from fumjax.config import read_toml

    path = Path(path)
    data = read_toml(path)
    train = data.pop("train", {})
    if not isinstance(train, dict):
        raise ConfigError(f"{path}: [train] must be a table")
    try:
        settings = TrainSettings.from_dict(train)
        for name, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{name}: expected a table, got {type(values).__name__}")
        cfg = cfg.replace(**data) if data else cfg
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if cfg.plasticity.mode != "rstdp":
        raise ConfigError(f"{path}: plasticity.mode = {cfg.plasticity.mode!r}: training needs 'rstdp'")
    return settings, cfg


# ---- the carried state -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainerState:
    """Everything a run carries between chunks (a pytree of arrays; checkpointed whole). state: network
    State; sie: SIEState; v_th0 (N,) baseline thresholds; alive (N,) bool; grown (N,) int8 (phase of its
    growth, 0 = there from the start); cluster_of (N,) int32 activity cluster; n_clusters () int32;
    cluster_avg (K,) and cluster_cnt (K,) reward averages per activity cluster; pop_avg (G,) EMA of the
    window reward of the windows each population took part in; pop_cnt (G,) int32; pop_err_x (G, D) the
    last input on which the population should have won and did not (or, unlabeled, won with a negative SIE
    reward); pop_self_avg (G,), pop_self_cnt (G,): the same EMA of the SIE reward over unlabeled windows
    the population won; dom_rate (N,) Hz: EMA (weight 0.02) of each output's rate over the windows of its
    own domain (pruning); persistent (E,) bool tags; eta_scale () SOC learning-rate scale; recent (H, N)
    int16 spike counts of the last H windows (clustering features); n_windows () int32; prev_cluster ()
    int32."""

    state: State
    sie: SIEState
    v_th0: jax.Array
    alive: jax.Array
    grown: jax.Array
    cluster_of: jax.Array
    n_clusters: jax.Array
    cluster_avg: jax.Array
    cluster_cnt: jax.Array
    pop_avg: jax.Array
    pop_cnt: jax.Array
    pop_err_x: jax.Array
    pop_self_avg: jax.Array
    pop_self_cnt: jax.Array
    dom_rate: jax.Array
    persistent: jax.Array
    eta_scale: jax.Array
    recent: jax.Array
    n_windows: jax.Array
    prev_cluster: jax.Array

    def replace(self, **kw) -> TrainerState:
        return dataclasses.replace(self, **kw)


jax.tree_util.register_dataclass(
    TrainerState, data_fields=[f.name for f in dataclasses.fields(TrainerState)], meta_fields=[]
)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One schedule unit: phase, index within the phase, stage (phase 2), and its item ids (into train)."""

    phase: int
    index: int
    stage: int
    items: np.ndarray
    labeled: bool

    @property
    def name(self) -> str:
        return f"p{self.phase}-{self.index}"


@dataclasses.dataclass(frozen=True)
class Engine:
    """Where `train` runs: run_chunk and predict (the signatures of `fumjax.train.readout`'s) and
    save_checkpoint (that of `fumjax.train.checkpoint`'s). The defaults run in this process;
    `fumjax.distributed.mpi_train.MpiTrainEngine` runs each chunk with the network split over MPI ranks."""

    run_chunk: Callable = run_chunk
    predict: Callable = predict
    save_checkpoint: Callable = save_checkpoint


# ---- schedule ----------------------------------------------------------------------------------------------


def _balanced_pick(domain: np.ndarray, domains: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    per = max(1, n // max(1, domains.size))
    pick = [rng.permutation(np.flatnonzero(domain == d))[:per] for d in domains]
    return np.concatenate(pick) if pick else np.zeros(0, np.int64)


def schedule(train: Corpus, settings: TrainSettings, seed: int) -> list[Unit]:
    """The run's units in order (deterministic in seed): phase-1 epochs, phase-2 stage epochs, phase-3
    blocks."""
    hold = _holdout_index(train, settings)
    known = np.array([d for d in range(len(train.domains)) if d != hold])
    known_items = np.flatnonzero(np.isin(train.domain, known))
    units: list[Unit] = []
    phases = settings.phase_list
    if 1 in phases:
        seed_set = _balanced_pick(
            train.domain, known, settings.phase1_items, np.random.default_rng([seed, 1])
        )
        for e in range(settings.phase1_epochs):
            order = np.random.default_rng([seed, 1, e]).permutation(seed_set)
            units.append(Unit(1, e, 0, order, True))
    if 2 in phases:
        complexity = train.n_classes[train.domain[known_items]]
        tiebreak = np.random.default_rng([seed, 2]).random(known_items.size)
        curriculum = known_items[np.lexsort((tiebreak, complexity))]
        if settings.phase2_max_items:  # a balanced subset first, so a small budget still covers every domain
            keep = _balanced_pick(
                train.domain, known, settings.phase2_max_items, np.random.default_rng([seed, 22])
            )
            curriculum = curriculum[np.isin(curriculum, keep)]
        n_stages = math.ceil(curriculum.size / settings.phase2_batch)
        idx = 0
        for s in range(n_stages):
            pool = curriculum[: min((s + 1) * settings.phase2_batch, curriculum.size)]
            n_ep = settings.phase2_epochs_per_stage + (
                settings.phase2_final_epochs if s == n_stages - 1 else 0
            )
            for _ in range(n_ep):
                units.append(Unit(2, idx, s, np.random.default_rng([seed, 2, idx]).permutation(pool), True))
                idx += 1
    if 3 in phases and settings.phase3_windows > 0:
        new_items = np.flatnonzero(train.domain == hold) if hold >= 0 else np.zeros(0, np.int64)
        n_blocks = math.ceil(settings.phase3_windows / settings.phase3_block)
        for b in range(n_blocks):
            rng = np.random.default_rng([seed, 3, b])
            size = min(settings.phase3_block, settings.phase3_windows - b * settings.phase3_block)
            use_new = (rng.random(size) < settings.phase3_new_fraction) & (new_items.size > 0)
            stream = rng.choice(known_items, size)
            if new_items.size:
                stream = np.where(use_new, rng.choice(new_items, size), stream)
            units.append(Unit(3, b, 0, stream.astype(np.int64), False))
    return units


def _holdout_index(corpus: Corpus, settings: TrainSettings) -> int:
    if not settings.holdout_domain:
        return -1
    if settings.holdout_domain not in corpus.domains:
        raise ConfigError(
            f"train.holdout_domain = {settings.holdout_domain!r}: not a domain of the corpus "
            f"({', '.join(corpus.domains)})"
        )
    return corpus.domains.index(settings.holdout_domain)


# ---- setup -------------------------------------------------------------------------------------------------


def make_spec(corpus: Corpus, settings: TrainSettings) -> ReadoutSpec:
    """Readout settings for a corpus (input dim, classes) and the train settings."""
    return ReadoutSpec(
        n_in=2 * corpus.x.shape[1],
        n_pops=int(corpus.n_classes.sum()),
        slots=settings.slots_per_class,
        k_clusters=settings.k_max,
        w_norm=0.5 / math.sqrt(corpus.x.shape[1]),
        persistent_factor=settings.persistent_factor,
    )


def init_trainer(ro: Readout, alive: np.ndarray, spec: ReadoutSpec, input_dim: int, settings, cfg):
    """The trainer state at the start of a run."""
    net = ro.net
    n, e = net.n_neurons, net.n_synapses
    return TrainerState(
        state=fumjax.init_state(net, cfg),
        sie=init_sie_state(spec, input_dim, cfg),
        v_th0=jnp.asarray(net.v_th_mV),
        alive=jnp.asarray(alive),
        grown=jnp.zeros(n, jnp.int8),
        cluster_of=jnp.zeros(n, jnp.int32),
        n_clusters=jnp.ones((), jnp.int32),
        cluster_avg=jnp.zeros(spec.k_clusters, jnp.float32),
        cluster_cnt=jnp.zeros(spec.k_clusters, jnp.int32),
        pop_avg=jnp.zeros(spec.n_pops, jnp.float32),
        pop_cnt=jnp.zeros(spec.n_pops, jnp.int32),
        pop_err_x=jnp.zeros((spec.n_pops, input_dim), jnp.float32),
        pop_self_avg=jnp.zeros(spec.n_pops, jnp.float32),
        pop_self_cnt=jnp.zeros(spec.n_pops, jnp.int32),
        dom_rate=jnp.full(n, -1.0, jnp.float32),
        persistent=jnp.zeros(e, bool),
        eta_scale=jnp.ones((), jnp.float32),
        recent=jnp.zeros((settings.cluster_history, n), jnp.int16),
        n_windows=jnp.zeros((), jnp.int32),
        prev_cluster=jnp.zeros((), jnp.int32),
    )


def _consts(ro: Readout, ts: TrainerState) -> dict:
    return dict(
        net=ro.net,
        pop=jnp.asarray(ro.pop),
        out_dom=jnp.asarray(ro.out_dom),
        pop_dom=jnp.asarray(ro.pop_dom),
        pop_offset=jnp.asarray(ro.pop_offset),
        plastic_syn=jnp.asarray(ro.plastic_syn),
        alive=ts.alive,
        cluster_of=ts.cluster_of,
        persistent=ts.persistent,
        eta_scale=ts.eta_scale,
    )


# ---- host-side mechanisms between chunks -----------------------------------------------------------------


def _ema(avg: np.ndarray, cnt: np.ndarray, sel: np.ndarray, r: float, a: float) -> None:
    avg[sel] = np.where(cnt[sel] == 0, r, (1 - a) * avg[sel] + a * r)
    cnt[sel] += 1


def _update_pop_rewards(
    ts: TrainerState, log: dict, x: np.ndarray, valid: np.ndarray, ema: float
) -> TrainerState:
    """Fold a chunk's windows into the population reward EMAs and the last-miss inputs. Labeled windows: the
    external reward r of every population the population reward touched (target and rival). Unlabeled
    windows: the SIE reward R of the winner, kept apart (another scale)."""
    avg, cnt = np.array(ts.pop_avg), np.array(ts.pop_cnt)
    savg, scnt = np.array(ts.pop_self_avg), np.array(ts.pop_self_cnt)
    err_x = np.array(ts.pop_err_x)
    r_pop, r_ext, big_r = np.asarray(log["r_pop"]), np.asarray(log["r_ext"]), np.asarray(log["reward"])
    winner = np.asarray(log["winner"])
    for i in np.flatnonzero(valid):  # a loop over the chunk's windows (<= chunk_windows)
        if r_ext[i] != 0:
            _ema(avg, cnt, r_pop[i] != 0, r_ext[i], ema)
            if r_ext[i] < 0:
                err_x[r_pop[i] > 0] = x[i]  # the population that should have won
        elif winner[i] >= 0:
            _ema(savg, scnt, np.arange(avg.size) == winner[i], big_r[i], ema)
            if big_r[i] < 0:
                err_x[winner[i]] = x[i]  # an input its winner represents poorly
    return ts.replace(
        pop_avg=jnp.asarray(avg),
        pop_cnt=jnp.asarray(cnt),
        pop_self_avg=jnp.asarray(savg),
        pop_self_cnt=jnp.asarray(scnt),
        pop_err_x=jnp.asarray(err_x),
    )


def grow(
    ts: TrainerState,
    ro: Readout,
    spec: ReadoutSpec,
    settings: TrainSettings,
    *,
    self_supervised: bool = False,
) -> tuple[TrainerState, int]:
    """Growth on low population reward: revive a dead slot of each population whose avg reward is below the
    threshold (lowest first; at most max(1, grow_max_fraction x alive outputs) per event, never beyond the
    slots), its incoming weights set to the population's last missed input (on/off code, normalized).
    self_supervised (phase 3): the SIE reward averages of unlabeled windows and grow_threshold_self decide,
    and the new neuron starts from random weights (FUM's growth): without a label, the winner's population
    is not known to be the right home for the input it missed. `grown` records the phase (2 or 3)."""
    if self_supervised:
        avg, cnt, thr = np.asarray(ts.pop_self_avg), np.asarray(ts.pop_self_cnt), settings.grow_threshold_self
    else:
        avg, cnt, thr = np.asarray(ts.pop_avg), np.asarray(ts.pop_cnt), settings.grow_threshold
    alive = np.array(ts.alive)
    out = ro.pop >= 0
    limit = max(1, int(settings.grow_max_fraction * np.count_nonzero(alive & out)))
    cand = np.flatnonzero((cnt >= settings.grow_min_windows) & (avg < thr))
    cand = cand[np.argsort(avg[cand], kind="stable")]
    cand = cand[[bool(np.any((ro.pop == g) & ~alive)) for g in cand]]  # populations with a free slot
    if cand.size == 0:
        return ts, 0
    net = ro.net
    post, pre = np.asarray(net.post), np.asarray(net.pre)
    w = np.array(ts.state.w)
    v_th, v_th0 = np.array(ts.state.v_th_mV), np.array(ts.v_th0)
    grown = np.array(ts.grown)
    cnt, avg = cnt.copy(), avg.copy()
    err_x = np.asarray(ts.pop_err_x)
    n_grown = 0
    for g in cand:  # a loop over at most `limit` populations
        if n_grown >= limit:
            break
        free = np.flatnonzero((ro.pop == g) & ~alive)
        if free.size == 0:
            continue
        slot = free[0]
        syn = np.flatnonzero((post == slot) & ro.plastic_syn)
        if self_supervised:
            vec = np.random.default_rng([int(ts.n_windows), int(slot)]).uniform(0.0, 1.0, syn.size)
        else:
            vec = np.concatenate([err_x[g], 1.0 - err_x[g]])[pre[syn]]
        w[syn] = vec / max(np.linalg.norm(vec), 1e-12) * spec.w_norm
        alive[slot] = True
        grown[slot] = 3 if self_supervised else 2
        v_th[slot] = v_th0[slot] = ro.v_th_alive_mV[slot]
        cnt[g], avg[g] = 0, 0.0
        n_grown += 1
    if not n_grown:
        return ts, 0
    state = ts.state.replace(
        w=jnp.asarray(w, ts.state.w.dtype), v_th_mV=jnp.asarray(v_th, ts.state.v_th_mV.dtype)
    )
    stats = (
        {"pop_self_cnt": cnt, "pop_self_avg": avg} if self_supervised else {"pop_cnt": cnt, "pop_avg": avg}
    )
    return ts.replace(
        state=state,
        alive=jnp.asarray(alive),
        grown=jnp.asarray(grown),
        v_th0=jnp.asarray(v_th0, ts.v_th0.dtype),
        **{k: jnp.asarray(v) for k, v in stats.items()},
    ), n_grown


def prune_silent(
    ts: TrainerState, ro: Readout, settings: TrainSettings, rates_hz: np.ndarray
) -> tuple[TrainerState, int]:
    """Pruning of silent neurons grown in phase 3 (rate over its domain's windows, rates_hz (N,), below
    prune_rate_hz; what phases 1-2 learned is kept; at most 1% of the alive outputs per event): they become
    dead slots again. Their only targets are lateral
    inhibitory synapses, so no downstream threshold needs compensating (an output drives no other input)."""
    alive, grown = np.array(ts.alive), np.array(ts.grown)
    cand = np.flatnonzero((grown == 3) & alive & (rates_hz >= 0) & (rates_hz < settings.prune_rate_hz))
    limit = max(1, int(0.01 * np.count_nonzero(alive & (ro.pop >= 0))))
    ids = cand[np.argsort(rates_hz[cand], kind="stable")[:limit]]
    if ids.size == 0:
        return ts, 0
    alive[ids] = False
    grown[ids] = 0
    v_th = np.array(ts.state.v_th_mV)
    v_th[ids] = fumjax.plasticity.DISABLED_V_TH_MV
    v0 = np.array(ts.v_th0)
    v0[ids] = fumjax.plasticity.DISABLED_V_TH_MV
    state = ts.state.replace(v_th_mV=jnp.asarray(v_th, ts.state.v_th_mV.dtype))
    return ts.replace(
        state=state, alive=jnp.asarray(alive), grown=jnp.asarray(grown), v_th0=jnp.asarray(v0)
    ), int(ids.size)


def recluster(ts: TrainerState, spec: ReadoutSpec, seed: int) -> tuple[TrainerState, dict]:
    """k-means of the neurons' recent spike counts (silhouette k in [2, k_max]); V_states and the cluster
    reward averages are carried to the new clusters by member overlap."""
    feats = np.asarray(ts.recent, np.float64).T  # (N, H)
    alive = np.asarray(ts.alive) & (np.arange(feats.shape[0]) >= spec.n_in)  # alive output neurons
    feats = feats[alive]
    if feats.shape[0] < 3 or not np.any(feats.std(0) > 0):
        return ts, {}
    res = clustering.cluster_activity(feats, k_min=2, k_max=spec.k_clusters, seed=seed)
    old = np.asarray(ts.cluster_of)
    new = np.zeros_like(old)
    new[alive] = res.labels
    k_old = int(ts.n_clusters)

    def carry(values: np.ndarray) -> np.ndarray:
        out = np.zeros(spec.k_clusters, np.float32)
        out[: res.k] = clustering.remap_values(old[alive], res.labels, values[:k_old], res.k)
        return out

    v_states = carry(np.asarray(ts.sie.v_states, np.float64))
    cavg = carry(np.asarray(ts.cluster_avg, np.float64))
    ccnt = np.round(carry(np.asarray(ts.cluster_cnt, np.float64))).astype(np.int32)
    ts = ts.replace(
        sie=ts.sie.replace(v_states=jnp.asarray(v_states)),
        cluster_of=jnp.asarray(new, jnp.int32),
        n_clusters=jnp.asarray(res.k, jnp.int32),
        cluster_avg=jnp.asarray(cavg),
        cluster_cnt=jnp.asarray(ccnt),
    )
    return ts, {"k": res.k, "silhouette": res.silhouette}


def update_tags(ts: TrainerState, ro: Readout, settings: TrainSettings) -> TrainerState:
    """Persistence tags (stability.update_tags) with populations as the clusters: a plastic synapse is tagged
    when its weight exceeds tag_w_fraction of its neuron's strongest input and its population's avg reward
    exceeds tag_reward; untagged below untag_reward."""
    w = np.asarray(ts.state.w, np.float64)
    post = np.asarray(ro.net.post)
    plastic = ro.plastic_syn
    w_in = np.where(plastic, w, 0.0)
    max_in = np.zeros(ro.net.n_neurons)
    np.maximum.at(max_in, post, w_in)
    w_rel = np.where(plastic, w_in / np.maximum(max_in[post], 1e-30), 0.0)
    pop_of = np.maximum(ro.pop, 0)
    tags = stability.update_tags(
        jnp.asarray(w_rel),
        ts.persistent,
        jnp.asarray(post),
        jnp.asarray(pop_of),
        ts.pop_avg,
        w_tag=settings.tag_w_fraction,
        reward_tag=settings.tag_reward,
        reward_untag=settings.untag_reward,
    )
    return ts.replace(persistent=tags & jnp.asarray(plastic) & ts.alive[jnp.asarray(post)])


def decay(ts: TrainerState, ro: Readout, settings: TrainSettings) -> TrainerState:
    """Synaptic decay of non-persistent plastic weights (stability.decay_weights, no pruning: the readout is
    all-to-all, so a weak synapse is kept for relearning)."""
    plastic = jnp.asarray(ro.plastic_syn)
    w, _ = stability.decay_weights(
        ts.state.w,
        ts.persistent | ~plastic,
        jnp.ones_like(plastic),
        factor=settings.decay_factor,
        prune_below=0.0,
    )
    return ts.replace(state=ts.state.replace(w=w))


# ---- running -----------------------------------------------------------------------------------------------


def _fingerprint(corpus: Corpus, settings: TrainSettings, cfg: FumConfig, seed: int) -> str:
    h = hashlib.sha256()
    for a in (corpus.x, corpus.target, corpus.domain, corpus.n_classes):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps([dataclasses.asdict(settings), cfg.to_dict(), seed, list(corpus.domains)]).encode())
    return h.hexdigest()[:16]


def evaluate(
    ts: TrainerState,
    ro: Readout,
    spec: ReadoutSpec,
    cfg: FumConfig,
    data: Corpus,
    seed: int,
    predict_fn: Callable = predict,
) -> dict:
    """Frozen-weight accuracy on `data`: {"accuracy", "per_domain": {name: acc}} (domains present only)."""
    if len(data) == 0:
        return {"accuracy": float("nan"), "per_domain": {}}
    pred = np.asarray(
        predict_fn(
            ts.state,
            _consts(ro, ts),
            jnp.asarray(data.x),
            jnp.asarray(data.domain),
            jnp.uint32(seed),
            cfg=cfg,
            spec=spec,
        )
    )
    ok = pred == data.target
    per = {data.domains[d]: float(ok[data.domain == d].mean()) for d in np.unique(data.domain)}
    return {"accuracy": float(ok.mean()), "per_domain": per}


def train(
    corpus: Corpus,
    settings: TrainSettings,
    cfg: FumConfig,
    *,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_window: Callable[[dict], None] | None = None,
    on_unit: Callable[[dict], None] | None = None,
    stop_after_units: int | None = None,
    engine: Engine | None = None,
) -> dict:
    """Run the phases of `settings` on `corpus` (split into train/validation); returns the results.

    on_window(record) gets one dict per window (phase, unit, correct, reward components, ...); on_unit(record)
    one per unit (train accuracy, validation accuracy when evaluated, growth, clusters, SOC). With
    checkpoint_dir, the trainer state is saved after every unit; resume continues from the latest one there
    (it must come from the same corpus, settings, config and seed). stop_after_units ends the run early
    (tests of resuming). Result keys: val (phase-2 validation set), val_after_phase (per phase), units,
    trainer (final TrainerState), readout, spec, fingerprint. engine: where chunks run (default: here).
    """
    engine = engine or Engine()
    cfg = cfg.replace(run={"seed": int(seed) % 2**32})
    su = _setup(corpus, settings, cfg, seed)
    train_set, val_known, val_new, hold, units = (
        su["train"],
        su["val_known"],
        su["val_new"],
        su["hold"],
        su["units"],
    )
    spec, ro, ts, fp = su["spec"], su["readout"], su["trainer"], su["fingerprint"]
    start, results = 0, {"val_after_phase": {}, "units_done": 0}
    if resume:
        if checkpoint_dir is None:
            raise CheckpointError("resuming needs a checkpoint directory")
        ts, meta = _load_resume(checkpoint_dir, ts, fp)
        start = int(meta["units_done"])
        results["val_after_phase"] = meta.get("val_after_phase", {})
    eval_seed = (seed * 7919 + 104729) % 2**32
    c = settings.chunk_windows
    t_win = cfg.run.window_steps
    for ui in range(start, len(units)):
        unit = units[ui]
        t0 = time.perf_counter()
        n_items = unit.items.size
        correct, grown_total, pruned_total, rewards, socs = [], 0, 0, [], []
        for s0 in range(0, n_items, c):
            idx = unit.items[s0 : s0 + c]
            n_valid = idx.size
            idx_p = np.r_[idx, np.zeros(c - n_valid, np.int64)]
            valid = np.arange(c) < n_valid
            items = dict(
                x=jnp.asarray(train_set.x[idx_p]),
                dom=jnp.asarray(train_set.domain[idx_p]),
                target=jnp.asarray(train_set.target[idx_p]),
                k=jnp.asarray(np.arange(s0, s0 + c), jnp.int32),
                valid=jnp.asarray(valid),
                labeled=jnp.full((c,), unit.labeled),
            )
            carry = (ts.state, ts.sie, ts.v_th0, ts.prev_cluster)
            unit_seed = jnp.uint32((seed * 1000003 + ui * 9176 + 1) % 2**32)
            carry, log = engine.run_chunk(carry, _consts(ro, ts), items, unit_seed, cfg=cfg, spec=spec)
            ts = ts.replace(state=carry[0], sie=carry[1], prev_cluster=carry[3])
            log = jax.tree_util.tree_map(np.asarray, log)
            ts = _after_chunk(
                ts, log, valid, train_set.domain[idx_p], ro, settings, 1000.0 / (t_win * cfg.neuron.dt_ms)
            )
            ts = _update_pop_rewards(ts, log, train_set.x[idx_p], valid, settings.reward_ema)
            if unit.phase == 2:
                ts, g = grow(ts, ro, spec, settings)
                grown_total += g
            counts = log["counts"][valid]
            out_counts = counts[:, spec.n_in :].sum(1)  # per window; per-step series for SOC below
            series = np.asarray(log["out_steps"])[valid].reshape(-1) if "out_steps" in log else out_counts
            action, soc_m = soc.soc_control(series, int(np.count_nonzero(np.asarray(ts.alive)[spec.n_in :])))
            socs.append(soc_m)
            if unit.phase == 3:
                if action.eta_factor != 1.0:
                    ts = ts.replace(
                        eta_scale=jnp.maximum(ts.eta_scale * action.eta_factor, settings.soc_eta_floor)
                    )
                ts, g = grow(ts, ro, spec, settings, self_supervised=True)
                grown_total += g
            nw = int(ts.n_windows)
            if unit.phase == 3 and (nw // settings.decay_every) != ((nw - n_valid) // settings.decay_every):
                ts = update_tags(ts, ro, settings)
                ts = decay(ts, ro, settings)
                ts, p = prune_silent(ts, ro, settings, np.asarray(ts.dom_rate))
                pruned_total += p
            if (nw // settings.cluster_every) != ((nw - n_valid) // settings.cluster_every):
                ts, info = recluster(ts, spec, seed)
            for i in np.flatnonzero(valid):
                rec = {
                    "phase": unit.phase,
                    "unit": unit.name,
                    "window": nw - n_valid + int(np.count_nonzero(valid[: i + 1])),
                    "domain": corpus.domains[int(train_set.domain[idx_p[i]])],
                    "labeled": unit.labeled,
                    "correct": bool(log["correct"][i]),
                    "r_ext": float(log["r_ext"][i]),
                    **{
                        k: float(log[k][i])
                        for k in ("td", "novelty", "habituation", "self_benefit", "total", "reward")
                    },
                    "cluster": int(log["cluster"][i]),
                    "rate_var_hz2": float(log["rate_var"][i]),
                    "output_spikes": int(out_counts[i]),
                }
                correct.append(rec["correct"])
                rewards.append(rec["reward"])
                if on_window:
                    on_window(rec)
        rec = {
            "phase": unit.phase,
            "unit": unit.name,
            "stage": unit.stage,
            "items": int(n_items),
            "train_accuracy": float(np.mean(correct)) if unit.labeled else None,
            "agreement": None if unit.labeled else float(np.mean(correct)),
            "mean_reward": float(np.mean(rewards)),
            "alive_outputs": int(np.count_nonzero(np.asarray(ts.alive)[spec.n_in :])),
            "grown": grown_total,
            "pruned": pruned_total,
            "persistent": int(np.count_nonzero(np.asarray(ts.persistent))),
            "clusters": int(ts.n_clusters),
            "eta_scale": float(ts.eta_scale),
            "soc_tau": float(np.nanmean([m["tau"] for m in socs])) if socs else float("nan"),
            "seconds": time.perf_counter() - t0,
        }
        last_of_phase = ui + 1 == len(units) or units[ui + 1].phase != unit.phase
        last_of_stage = ui + 1 == len(units) or units[ui + 1].stage != unit.stage or last_of_phase
        if last_of_phase or (unit.phase == 2 and last_of_stage and settings.eval_every_stage):
            ev = evaluate(ts, ro, spec, cfg, val_known, eval_seed, engine.predict)
            rec["val_accuracy"] = ev["accuracy"]
            rec["val_per_domain"] = ev["per_domain"]
            if len(val_new):
                rec["val_new_domain"] = _new_domain_eval(
                    ts, ro, spec, cfg, val_new, train_set, hold, eval_seed, engine.predict
                )
            if last_of_phase:
                results["val_after_phase"][str(unit.phase)] = {k: rec[k] for k in rec if k.startswith("val")}
        if unit.phase == 1 and last_of_phase:  # the seed graph's first clusters (FUM: resize V_states)
            ts, _ = recluster(ts, spec, seed)
        if unit.phase == 2 and last_of_phase:  # consolidation: tag what phase 2 learned
            ts = update_tags(ts, ro, settings)
        if on_unit:
            on_unit(rec)
        if checkpoint_dir is not None:
            meta = {
                "fingerprint": fp,
                "units_done": ui + 1,
                "unit": unit.name,
                "val_after_phase": results["val_after_phase"],
            }
            engine.save_checkpoint(checkpoint_dir, ts, step=ui + 1, meta=meta)
        results["units_done"] = ui + 1
        if stop_after_units is not None and ui + 1 >= stop_after_units:
            break
    results.update(trainer=ts, readout=ro, spec=spec, fingerprint=fp, n_units=len(units))
    results["val"] = evaluate(ts, ro, spec, cfg, val_known, eval_seed, engine.predict)
    if len(val_new):
        results["val_new_domain"] = _new_domain_eval(
            ts, ro, spec, cfg, val_new, train_set, hold, eval_seed, engine.predict
        )
    return results


def validate_corpus(corpus: Corpus, settings: TrainSettings) -> None:
    """Raise CorpusError/ConfigError when the corpus cannot be trained on with these settings."""
    from fumjax.train.corpus import CorpusError

    if len(corpus) < 10:
        raise CorpusError(f"the corpus has {len(corpus)} items: at least 10 are needed")
    hold = _holdout_index(corpus, settings)
    if hold >= 0 and len(corpus.domains) < 2:
        raise ConfigError("train.holdout_domain needs a corpus with at least 2 domains")
    if np.any(corpus.target >= corpus.n_classes[corpus.domain]):
        raise CorpusError("a target is not below its domain's class count")


def _setup(corpus: Corpus, settings: TrainSettings, cfg: FumConfig, seed: int) -> dict:
    """Split, schedule, readout and initial trainer state of a run (deterministic in its arguments)."""
    validate_corpus(corpus, settings)
    train_set, val_set = corpus.split(val_fraction=settings.val_fraction, seed=seed)
    hold = _holdout_index(corpus, settings)
    spec = make_spec(corpus, settings)
    ro, alive = build_readout(corpus.n_classes, spec, settings.init_per_class, seed)
    return {
        "train": train_set,
        "val_known": val_set.subset(np.flatnonzero(val_set.domain != hold)),
        "val_new": val_set.subset(np.flatnonzero(val_set.domain == hold)),
        "hold": hold,
        "units": schedule(train_set, settings, seed),
        "spec": spec,
        "readout": ro,
        "trainer": init_trainer(ro, alive, spec, corpus.x.shape[1], settings, cfg),
        "fingerprint": _fingerprint(corpus, settings, cfg, seed),
    }


def _load_resume(checkpoint_dir, like: TrainerState, fp: str) -> tuple[TrainerState, dict]:
    path = latest_checkpoint(checkpoint_dir)
    if path is None:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir} to resume from")
    ts, record = load_checkpoint(path, like)
    meta = record["meta"]
    if meta.get("fingerprint") != fp:
        raise CheckpointError(
            f"{path}: made by a run with another corpus, settings, config or seed "
            f"(fingerprint {meta.get('fingerprint')} != {fp})"
        )
    return ts, meta


def resume_point(
    corpus: Corpus, settings: TrainSettings, cfg: FumConfig, *, seed: int, checkpoint_dir
) -> int:
    """Units done by the latest checkpoint in checkpoint_dir, after verifying it in full (checksum, structure,
    and that it comes from this corpus, settings, config and seed). Raises CheckpointError otherwise."""
    cfg = cfg.replace(run={"seed": int(seed) % 2**32})
    su = _setup(corpus, settings, cfg, seed)
    _, meta = _load_resume(checkpoint_dir, su["trainer"], su["fingerprint"])
    return int(meta["units_done"])


def _after_chunk(
    ts: TrainerState, log: dict, valid: np.ndarray, dom: np.ndarray, ro: Readout, settings, hz: float
):
    """Window counter, recent activity ring (clustering features), cluster reward averages, domain rates."""
    counts = log["counts"][valid]
    dom_rate = np.array(ts.dom_rate)
    for c, d in zip(counts, dom[valid], strict=True):  # a loop over the chunk's windows
        sel = ro.out_dom == d
        r = c[sel].astype(np.float32) * hz
        dom_rate[sel] = np.where(dom_rate[sel] < 0, r, 0.98 * dom_rate[sel] + 0.02 * r)
    recent = np.concatenate([np.asarray(ts.recent), counts.astype(np.int16)])[-settings.cluster_history :]
    cavg, ccnt = np.array(ts.cluster_avg), np.array(ts.cluster_cnt)
    for cl, r in zip(log["cluster"][valid], log["reward"][valid], strict=True):
        ccnt[cl] += 1
        cavg[cl] += (r - cavg[cl]) / ccnt[cl]
    return ts.replace(
        recent=jnp.asarray(recent),
        n_windows=ts.n_windows + int(valid.sum()),
        dom_rate=jnp.asarray(dom_rate, jnp.float32),
        cluster_avg=jnp.asarray(cavg, jnp.float32),
        cluster_cnt=jnp.asarray(ccnt),
    )


def _new_domain_eval(
    ts,
    ro,
    spec,
    cfg,
    val_new: Corpus,
    train_set: Corpus,
    hold: int,
    seed: int,
    predict_fn: Callable = predict,
) -> dict:
    """The held-out domain learned without labels: its populations' answers are mapped to classes by majority
    vote on the domain's training items (labels used for this evaluation only), then scored on validation."""
    tr = train_set.subset(np.flatnonzero(train_set.domain == hold))
    consts = _consts(ro, ts)
    p_tr = np.asarray(
        predict_fn(
            ts.state, consts, jnp.asarray(tr.x), jnp.asarray(tr.domain), jnp.uint32(seed), cfg=cfg, spec=spec
        )
    )
    p_va = np.asarray(
        predict_fn(
            ts.state,
            consts,
            jnp.asarray(val_new.x),
            jnp.asarray(val_new.domain),
            jnp.uint32(seed),
            cfg=cfg,
            spec=spec,
        )
    )
    k = int(train_set.n_classes[hold])
    mapping = np.full(k + 1, -1)
    for p in range(k):  # loop over the domain's populations
        sel = tr.target[p_tr == p]
        if sel.size:
            mapping[p] = np.bincount(sel, minlength=k).argmax()
    mapped = np.where(p_va >= 0, mapping[np.clip(p_va, 0, k)], -1)
    return {
        "direct_accuracy": float((p_va == val_new.target).mean()),
        "cluster_accuracy": float((mapped == val_new.target).mean()),
    }
