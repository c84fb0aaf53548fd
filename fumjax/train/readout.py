"""The multi-domain spiking readout the phase trainer learns in: network, a reward window, chunks of them.

Network (`Network.from_arrays`): 2D input neurons (on/off channels x and 1 - x of a D-dim item) project to
every output neuron (plastic, excitatory). Outputs are grouped in populations, one per (domain, class); each
population has `slots` preallocated neurons of which some are alive (the rest are dead slots with an
unreachable threshold, revived by growth). Every output neuron inhibits every other output of its own domain
through static synapses (`plastic_pre` False): a soft winner-take-all per domain. The item's domain is the
task context: outputs of other domains receive a strong inhibitory context current for the window, so only the
domain's populations compete and the decoder reads them (task-specific decoding).

One window per item (T steps): R-STDP eligibility from `fumjax.simulate`; the decoder's answer (the population
with the most spikes) against the target gives the external reward r in {+1, -1} (0 when unlabeled); the SIE
(`fumjax.sie.sie_step`) turns r, the input's novelty and habituation, TD(0) over activity clusters and the
self-benefit of the rates into the total reward R. Weights change only as
    w += eta_eff(R) * r_pop[population of post] * e,    eta_eff(R) = eta * (1 + (2 sigmoid(R) - 1)),
with r_pop the population-level (cluster-level) reward: targeted from r when labeled (`population_reward`),
self-supervised when unlabeled (the network's own winner, when clearly ahead, gets clip(R, 0, 1)).
Persistent synapses learn at eta * persistent_factor. Incoming weights are then L2-normalized (synaptic
scaling) and thresholds adapt per spike. No gradients anywhere; labels enter only through r.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

import fumjax
from fumjax import sie as sie_mod
from fumjax.config import FumConfig
from fumjax.network import Network
from fumjax.plasticity import DISABLED_V_TH_MV, eta_effective
from fumjax.sie import SIEState
from fumjax.state import eligibility
from fumjax.train.digits import (
    adapt_thresholds,
    encode_item,
    normalize_incoming,
    population_reward,
    rest_state,
)

__all__ = [
    "ReadoutSpec",
    "Readout",
    "build_readout",
    "run_chunk",
    "predict",
    "window_spikes",
    "init_sie_state",
    "CONTEXT_MV",
]

CONTEXT_MV = 100.0  # inhibitory context current per step onto outputs of other domains (silences them)


@dataclasses.dataclass(frozen=True)
class ReadoutSpec:
    """Static settings of the readout (hashable: they are jit static arguments)."""

    n_in: int  # input neurons (2 D: on/off)
    n_pops: int  # populations G = total classes over domains
    slots: int  # neuron slots per population (capacity)
    k_clusters: int  # padded size of the SIE's V_states (k-means k <= this)
    p_max: float = 0.25  # input spike probability per step at intensity 1 (regular rate code)
    in_amp_mV: float = 20.0
    w_norm: float = 0.0625  # L2 norm of each output neuron's incoming weights
    correct_reward: float = 0.2
    margin: float = 0.5
    theta_plus_mV: float = 0.05
    theta_relax: float = 0.001
    persistent_factor: float = 0.5


@dataclasses.dataclass(frozen=True)
class Readout:
    """Network plus the host-side maps: pop (N,) population of each neuron (-1 inputs), out_dom (N,) domain
    of each output (-1 inputs), pop_dom (G,) domain of each population, pop_offset (n_domains,) first
    population of each domain, plastic_syn (E,) input->output synapses (CSR order), v_th_alive_mV (N,)
    baseline threshold of each slot when alive."""

    net: Network
    pop: np.ndarray
    out_dom: np.ndarray
    pop_dom: np.ndarray
    pop_offset: np.ndarray
    plastic_syn: np.ndarray
    v_th_alive_mV: np.ndarray


def build_readout(n_classes: np.ndarray, spec: ReadoutSpec, alive_per_pop: int, seed: int):
    """Readout for domains with n_classes (n_domains,) classes. Returns (Readout, alive (N,) bool).

    Alive slots start with random incoming weights at L2 norm spec.w_norm; dead slots get the same draw and
    are revived by growth. Lateral inhibition: every output -> every other output of its domain, w = -1.
    """
    n_classes = np.asarray(n_classes, np.int64)
    g = int(n_classes.sum())
    if g != spec.n_pops:
        raise ValueError(f"spec.n_pops = {spec.n_pops}, but the domains have {g} classes")
    if not 1 <= alive_per_pop <= spec.slots:
        raise ValueError(f"alive_per_pop = {alive_per_pop}: must be in [1, slots = {spec.slots}]")
    n_in, m = spec.n_in, g * spec.slots
    n = n_in + m
    pop_dom = np.repeat(np.arange(n_classes.size), n_classes).astype(np.int32)
    pop = np.r_[np.full(n_in, -1), np.repeat(np.arange(g), spec.slots)].astype(np.int32)
    out_dom = np.where(pop >= 0, pop_dom[np.maximum(pop, 0)], -1).astype(np.int32)
    rng = np.random.default_rng([seed, 17])
    w_in = rng.uniform(0.0, 1.0, (n_in, m))
    w_in = w_in / np.linalg.norm(w_in, axis=0, keepdims=True) * spec.w_norm
    pre = [np.repeat(np.arange(n_in), m)]
    post = [np.tile(np.arange(n_in, n), n_in)]
    w = [w_in.ravel()]
    for d in range(n_classes.size):  # a loop over domains: all-to-all inhibition inside each domain
        ids = np.flatnonzero(out_dom == d)
        a, b = np.meshgrid(ids, ids, indexing="ij")
        off = a != b
        pre.append(a[off])
        post.append(b[off])
        w.append(np.full(int(off.sum()), -1.0))
    excitatory = np.r_[np.ones(n_in, bool), np.zeros(m, bool)]
    alive = np.r_[np.ones(n_in, bool), np.tile(np.arange(spec.slots) < alive_per_pop, g)]
    v_th_alive = np.full(n, -55.0)
    net = Network.from_arrays(
        np.concatenate(pre),
        np.concatenate(post),
        np.concatenate(w),
        tau_ms=np.full(n, 20.0),
        v_th_mV=np.where(alive, v_th_alive, DISABLED_V_TH_MV),
        excitatory=excitatory,
        plastic_pre=excitatory,
    )
    plastic_syn = np.asarray(net.pre) < n_in
    offset = np.r_[0, np.cumsum(n_classes)[:-1]].astype(np.int32)
    ro = Readout(net, pop, out_dom, pop_dom, offset, plastic_syn, v_th_alive.astype(np.float32))
    return ro, alive


def _drive(x: Array, dom: Array, k: Array, seed: Array, out_dom: Array, spec: ReadoutSpec, t_win: int):
    """External current (T, N) mV: input spikes of item x and the context current on other domains."""
    n = out_dom.shape[0]
    spk = encode_item(x, seed=seed, first_step=k * t_win, n_steps=t_win, p_max=spec.p_max, encoding="regular")
    ctx = jnp.where((out_dom >= 0) & (out_dom != dom), -CONTEXT_MV, 0.0).astype(jnp.float32)
    i_ext = (
        jnp.zeros((t_win, n), jnp.float32).at[:, : spec.n_in].set(spk.astype(jnp.float32) * spec.in_amp_mV)
    )
    return i_ext + ctx[None, :]


def _pop_counts(counts: Array, pop: Array, n_pops: int) -> Array:
    return jax.ops.segment_sum(counts, jnp.where(pop >= 0, pop, n_pops), num_segments=n_pops + 1)[:n_pops]


@functools.partial(jax.jit, static_argnames=("cfg", "spec"))
def run_chunk(carry, consts, items, seed, *, cfg: FumConfig, spec: ReadoutSpec):
    """Run a chunk of reward windows under `lax.scan`.

    carry: (state, sie: SIEState, v_th0 (N,), prev_cluster ()). consts: dict of arrays net, pop (N,),
    out_dom (N,), pop_dom (G,), pop_offset (n_dom,), plastic_syn (E,), alive (N,) bool, cluster_of (N,) int,
    persistent (E,) bool, eta_scale (). items: dict of x (C, D), dom (C,), target (C,), k (C,) encoding
    counters, valid (C,) bool (False = padding, no effect), labeled (C,) bool. seed: () uint32.
    Returns (carry, log) with per-window arrays (C, ...): correct, pred, r_ext, counts (C, N) int16, r_pop
    (C, G), the SIE components, cluster.
    """
    net = consts["net"]
    local = learning_arrays(consts, spec)

    def simulate(s, i_ext):
        s, spikes = fumjax.simulate(s, net, i_ext, config=cfg, plasticity="rstdp")
        counts = spikes.sum(0, dtype=jnp.int32)
        return s, counts, counts, spikes[:, spec.n_in :].sum(1, dtype=jnp.int32)

    return jax.lax.scan(chunk_window(consts, seed, cfg, spec, simulate, local), carry, items)


def learning_arrays(consts, spec: ReadoutSpec, part: tuple | None = None) -> dict:
    """The arrays of the window's weight and threshold update, for the whole network (part None) or for one
    MPI part = (members (n_p,) global neuron ids, syn (E_p,) global synapse ids, the part's Network with
    local post ids): post (E,) local post ids, n, post_pop (E,), learn_syn (E,), syn_scale (E,),
    out_alive (n,)."""
    net, pop, alive = consts["net"], consts["pop"], consts["alive"]
    plastic, persistent = consts["plastic_syn"], consts["persistent"]
    post = post_g = net.post  # post_g: global post ids (equal to post for the whole network)
    pop_n, alive_n = pop, alive
    if part is not None:
        members, syn, local_net = part
        plastic, persistent, post, post_g = plastic[syn], persistent[syn], local_net.post, net.post[syn]
        pop_n, alive_n = pop[members], alive[members]
    return {
        "post": post,
        "n": pop_n.shape[0],
        "post_pop": pop[post_g],
        "learn_syn": plastic & alive[post_g],
        "syn_scale": jnp.where(persistent, spec.persistent_factor, 1.0),
        "out_alive": alive_n & (pop_n >= 0),
    }


def chunk_window(consts, seed, cfg: FumConfig, spec: ReadoutSpec, simulate, local: dict):
    """The scan body of `run_chunk`: one reward window. simulate(s, i_ext (T, N)) -> (s, local counts (n,)
    int32, every neuron's counts (N,) int32, output spikes per step (T,) int32) runs the window on the whole
    network or (MPI) on this rank's part; `local` (`learning_arrays`) holds the part's update arrays.
    Decoding and the SIE use every neuron's counts; the weight and threshold updates touch only `local`."""
    t_win = cfg.run.window_steps
    pop = consts["pop"]
    cl = consts["cluster_of"]
    is_out = (pop >= 0).astype(jnp.float32)  # TD states are clusters of output activity (inputs excluded)
    cl_size = jnp.maximum(jax.ops.segment_sum(is_out, cl, num_segments=spec.k_clusters), 1.0)

    def window(c, it):
        s0, sie, v_th0, prev_c = c
        s = rest_state(s0, cfg.neuron.v_rest_mV)
        i_ext = _drive(it["x"], it["dom"], it["k"], seed, consts["out_dom"], spec, t_win)
        s, local_counts, counts, out_steps = simulate(s, i_ext)
        in_dom = consts["pop_dom"] == it["dom"]
        pc = jnp.where(in_dom, _pop_counts(counts, pop, spec.n_pops), 0)
        label = consts["pop_offset"][it["dom"]] + it["target"]
        winner = jnp.argmax(jnp.where(in_dom, pc, -1))
        any_spk = pc.sum() > 0
        correct = any_spk & (winner == label)
        r_ext = jnp.where(it["labeled"], jnp.where(correct, 1.0, -1.0), 0.0)
        rates = counts.astype(jnp.float32) * (1000.0 / (t_win * cfg.neuron.dt_ms))
        cur = jnp.argmax(jax.ops.segment_sum(rates * is_out, cl, num_segments=spec.k_clusters) / cl_size)
        sie, comp = sie_mod.sie_step(sie, it["x"], rates, prev_c, cur, r_ext, cfg)
        big_r = comp["reward"]
        # self-supervised: the network's own answer is reinforced by the SIE's positive reward; a negative R
        # (habituated, below the TD expectation) withholds reinforcement rather than reversing it
        # (a confident answer only: the runner-up below (1 - margin) x the winner's spikes, as in the labeled
        # phases' "clear right answer")
        runner = jnp.max(jnp.where(jnp.arange(spec.n_pops) == winner, -1, jnp.where(in_dom, pc, -1)))
        clear = any_spk & (runner < (1.0 - spec.margin) * pc[winner])
        r_self = (
            jnp.zeros((spec.n_pops,), jnp.float32).at[winner].set(jnp.where(clear, jnp.clip(big_r, 0, 1), 0))
        )
        r_pop = jnp.where(
            it["labeled"], population_reward(pc, label, spec.correct_reward, spec.margin), r_self
        )
        s = _learn(s, v_th0, local_counts, big_r, r_pop, consts, local, cfg, spec)
        keep = it["valid"]
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), (s, sie, cur), (s0, c[1], prev_c))
        log = {
            "correct": correct,
            "pred": jnp.where(any_spk, winner - consts["pop_offset"][it["dom"]], -1),
            "winner": jnp.where(any_spk, winner, -1),
            "rate_var": jnp.var(rates),
            "r_ext": r_ext,
            "counts": counts.astype(jnp.int16),
            "out_steps": out_steps.astype(jnp.int16),
            "r_pop": r_pop,
            **comp,
            "cluster": cur,
        }
        return (new[0], new[1], v_th0, new[2]), log

    return window


def _learn(s, v_th0, counts, big_r, r_pop, consts, local: dict, cfg: FumConfig, spec: ReadoutSpec):
    """The window's weight update (eligibility x population reward, L2 scaling) and threshold adaptation on
    the neurons and synapses of `local` (whole network or one part); counts (n,) are theirs."""
    e = eligibility(s, cfg)
    s = fumjax.end_window(s, 0.0, config=cfg, plasticity="rstdp")  # bookkeeping: R = 0 changes no w
    eta = eta_effective(big_r, cfg.plasticity.eta) * consts["eta_scale"]
    r_syn = jnp.where(local["learn_syn"], r_pop[jnp.maximum(local["post_pop"], 0)], 0.0) * local["syn_scale"]
    w = jnp.clip(s.w + eta * r_syn * e, -1.0, 1.0)
    w = normalize_incoming(w, local["post"], local["learn_syn"], local["n"], spec.w_norm, "l2")
    v_th = adapt_thresholds(
        s.v_th_mV, v_th0, counts, local["out_alive"], spec.theta_plus_mV, spec.theta_relax
    )
    return s.replace(w=w.astype(s.w.dtype), v_th_mV=v_th)


@functools.partial(jax.jit, static_argnames=("cfg", "spec"))
def predict(state, consts, x, dom, seed, first=0, *, cfg: FumConfig, spec: ReadoutSpec):
    """Frozen-weight answers (M,) (class within the domain, -1 when silent) for items x (M, D), dom (M,);
    item i is encoded with counter first + i (a slice of a larger set gives the same answers)."""
    t_win = cfg.run.window_steps
    s0 = rest_state(state, cfg.neuron.v_rest_mV)
    net, pop = consts["net"], consts["pop"]

    def one(xi, di, k):
        i_ext = _drive(xi, di, k, seed, consts["out_dom"], spec, t_win)
        _, spikes = fumjax.simulate(s0, net, i_ext, config=cfg, plasticity="off")
        pc = _pop_counts(spikes.sum(0, dtype=jnp.int32), pop, spec.n_pops)
        in_dom = consts["pop_dom"] == di
        pc = jnp.where(in_dom, pc, -1)
        winner = jnp.argmax(pc)
        return jnp.where(pc.max() > 0, winner - consts["pop_offset"][di], -1)

    return jax.vmap(one)(x, dom, jnp.arange(x.shape[0], dtype=jnp.int32) + first)


@functools.partial(jax.jit, static_argnames=("cfg", "spec"))
def window_spikes(state, consts, x, dom, seed, *, cfg: FumConfig, spec: ReadoutSpec):
    """Spikes (T, N) uint8 of one frozen-weight window on item x (D,) of domain dom (for rasters)."""
    i_ext = _drive(x, dom, jnp.int32(0), seed, consts["out_dom"], spec, cfg.run.window_steps)
    _, spikes = fumjax.simulate(
        rest_state(state, cfg.neuron.v_rest_mV), consts["net"], i_ext, config=cfg, plasticity="off"
    )
    return spikes


def init_sie_state(spec: ReadoutSpec, input_dim: int, cfg: FumConfig) -> SIEState:
    """SIE memory with spec.k_clusters (padded) cluster states."""
    return sie_mod.init_sie(spec.k_clusters, input_dim, cfg)
