"""Structural plasticity inside preallocated capacity: growth, pruning with threshold compensation, rewiring.

The network lives in fixed capacity: N_cap neuron slots and E_cap synapse slots. A dead neuron has a
threshold no input reaches (`DEAD_V_TH_MV`), so it never spikes; a dead synapse joins the reserved sink neuron
(slot N_cap - 1, always dead) to itself with w = 0, so it never transmits and its STDP terms are 0. Changes
happen on the host between windows (an O(E) rebuild of the CSR arrays); shapes never change, so the jitted
step is not recompiled. Limits follow FUM 4.C / E.4: growth and rewiring at most 1% per event, a global neuron
cap, pruning only of silent neurons, new inhibitory synapses alongside new excitatory ones (20 per 100).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from fumjax.config import FumConfig
from fumjax.network import Network, grid_positions
from fumjax.plasticity import DISABLED_V_TH_MV as DEAD_V_TH_MV
from fumjax.state import State

__all__ = ["DEAD_V_TH_MV", "Structure", "from_network", "to_network", "grow", "prune", "rewire", "pad_state"]


@dataclasses.dataclass
class Structure:
    """Host-side editable structure in slot order. Neurons (N_cap,): alive, excitatory, tau_ms, v_th_mV.
    Synapses (E_cap,): alive, pre, post, w, elig (true eligibility), delay."""

    alive_n: np.ndarray
    excitatory: np.ndarray
    tau_ms: np.ndarray
    v_th_mV: np.ndarray
    alive_s: np.ndarray
    pre: np.ndarray
    post: np.ndarray
    w: np.ndarray
    elig: np.ndarray
    delay: np.ndarray

    @property
    def n_cap(self) -> int:
        return int(self.alive_n.size)

    @property
    def sink(self) -> int:
        return self.n_cap - 1


def from_network(
    net: Network, state: State, *, n_cap: int | None = None, e_cap: int | None = None
) -> Structure:
    """Editable structure of `net` and `state` with room for n_cap neurons (incl. sink), e_cap synapses.

    A network made by `to_network` is recognized (its dead slots stay dead); capacities default to its own.
    The state must be at a window boundary (eligibility unscaled: state.step == state.elig_t0).
    """
    n, e = net.n_neurons, net.n_synapses
    v_th = np.asarray(state.v_th_mV)
    has_sink = bool(v_th[-1] >= DEAD_V_TH_MV)
    n_cap = (n if has_sink else n + 1) if n_cap is None else n_cap
    e_cap = e if e_cap is None else e_cap
    if n_cap < (n if has_sink else n + 1) or e_cap < e:
        raise ValueError(f"capacity (n_cap={n_cap}, e_cap={e_cap}) below the network's ({n} + sink, {e})")
    if int(state.step) != int(state.elig_t0):
        raise ValueError("structural changes happen at window boundaries (call end_window first)")
    order = np.asarray(net.input_order)
    pre, post = np.asarray(net.pre)[order], np.asarray(net.post)[order]
    sink_in = n - 1 if has_sink else -1
    alive_syn = ~((pre == sink_in) & (post == sink_in))
    s = Structure(
        alive_n=np.zeros(n_cap, bool),
        excitatory=np.ones(n_cap, bool),
        tau_ms=np.full(n_cap, 20.0, np.float32),
        v_th_mV=np.full(n_cap, DEAD_V_TH_MV, np.float32),
        alive_s=np.zeros(e_cap, bool),
        pre=np.full(e_cap, n_cap - 1, np.int32),
        post=np.full(e_cap, n_cap - 1, np.int32),
        w=np.zeros(e_cap, np.float32),
        elig=np.zeros(e_cap, np.float32),
        delay=np.ones(e_cap, np.int32),
    )
    s.alive_n[:n] = v_th < DEAD_V_TH_MV
    s.excitatory[:n] = np.asarray(net.excitatory)
    s.tau_ms[:n] = np.asarray(state.tau_ms)
    s.v_th_mV[:n] = v_th
    s.alive_s[:e] = alive_syn
    s.pre[:e] = np.where(alive_syn, pre, n_cap - 1)
    s.post[:e] = np.where(alive_syn, post, n_cap - 1)
    s.w[:e] = np.asarray(state.w, np.float32)[order]
    s.elig[:e] = np.asarray(state.elig, np.float32)[order]
    s.delay[:e] = np.asarray(net.delay_steps)[order]
    return s


def to_network(s: Structure, state: State | None, cfg: FumConfig) -> tuple[Network, State | None]:
    """Network of the structure (dead slots as described above) and the state carried into its CSR order.

    `state` must have n_cap neurons (grow it with `pad_state` first when it came from a smaller network).
    """
    v_th = np.where(s.alive_n, s.v_th_mV, DEAD_V_TH_MV).astype(np.float32)
    pre = np.where(s.alive_s, s.pre, s.sink)
    post = np.where(s.alive_s, s.post, s.sink)
    w = np.where(s.alive_s, s.w, 0.0)
    net = Network.from_arrays(pre, post, w, s.tau_ms, v_th, s.excitatory, delay_steps=s.delay)
    if state is None:
        return net, None
    order = np.asarray(net.input_order)
    w_csr = np.empty_like(w)
    w_csr[order] = w
    e_csr = np.empty_like(w)
    e_csr[order] = np.where(s.alive_s, s.elig, 0.0)
    v = np.asarray(state.v_mV).copy()
    v[~s.alive_n] = cfg.neuron.v_rest_mV
    state = state.replace(
        w=jnp.asarray(w_csr, state.w.dtype),
        elig=jnp.asarray(e_csr, state.elig.dtype),
        tau_ms=jnp.asarray(s.tau_ms, state.tau_ms.dtype),
        v_th_mV=jnp.asarray(v_th, state.v_th_mV.dtype),
        v_mV=jnp.asarray(v, state.v_mV.dtype),
    )
    return net, state


def _free_slots(alive: np.ndarray, count: int) -> np.ndarray:
    free = np.flatnonzero(~alive)
    if free.size < count:
        raise ValueError(f"capacity exhausted: {count} slots needed, {free.size} free")
    return free[:count]


def grow(
    s: Structure,
    n_new: int,
    rng: np.random.Generator,
    cfg: FumConfig,
    *,
    k_in: int,
    k_out: int,
    max_fraction: float = 0.01,
) -> np.ndarray:
    """Add up to n_new neurons (at most max_fraction of the alive ones, at least 1, never the sink slot), each
    with k_in inputs from and k_out outputs to alive neurons nearby on the grid (p ∝ exp(-d/sigma)).
    Returns the new neurons' ids."""
    alive = np.flatnonzero(s.alive_n)
    room = s.n_cap - 1 - alive.size
    n_new = int(min(n_new, max(1, int(max_fraction * alive.size)), room))
    if n_new <= 0:
        return np.zeros(0, np.int32)
    ids = _free_slots(s.alive_n[:-1], n_new).astype(np.int32)
    nc, cc = cfg.neuron, cfg.connectivity
    s.alive_n[ids] = True
    s.excitatory[ids] = rng.random(n_new) < nc.excitatory_fraction
    s.tau_ms[ids] = np.clip(rng.normal(nc.tau_mean_ms, nc.tau_std_ms, n_new), nc.tau_min_ms, nc.tau_max_ms)
    s.v_th_mV[ids] = np.clip(
        rng.normal(nc.v_th_mean_mV, nc.v_th_std_mV, n_new), nc.v_th_min_mV, nc.v_th_max_mV
    )
    pos = grid_positions(s.n_cap).astype(np.float64)
    d = np.linalg.norm(pos[ids][:, None, :] - pos[alive][None, :, :], axis=-1)  # (n_new, N_alive): 1% of N
    logits = -d / cc.sigma_grid + rng.gumbel(size=d.shape)
    k = min(max(k_in, k_out), alive.size)
    partners = alive[np.argsort(-logits, axis=1)[:, :k]]  # Gumbel top-k: weighted sampling w/o replacement
    pre = np.concatenate([partners[:, :k_in].ravel(), np.repeat(ids, k_out)])
    post = np.concatenate([np.repeat(ids, k_in), partners[:, :k_out].ravel()])
    _add_synapses(s, pre.astype(np.int32), post.astype(np.int32), rng, cfg)
    return ids


def _add_synapses(s: Structure, pre: np.ndarray, post: np.ndarray, rng: np.random.Generator, cfg: FumConfig):
    slots = _free_slots(s.alive_s, pre.size)
    cc = cfg.connectivity
    exc = s.excitatory[pre]
    s.alive_s[slots] = True
    s.pre[slots], s.post[slots] = pre, post
    s.w[slots] = np.where(
        exc, rng.uniform(0.0, cc.w_exc_max, pre.size), rng.uniform(cc.w_inh_min, 0.0, pre.size)
    )
    s.elig[slots] = 0.0
    s.delay[slots] = cc.delay_steps


def prune(
    s: Structure,
    rates_hz: np.ndarray,
    cfg: FumConfig,
    *,
    rate_min_hz: float = 1.0,
    max_fraction: float = 0.01,
) -> np.ndarray:
    """Remove the most silent alive neurons (rate < rate_min_hz; at most max_fraction of the alive ones)
    with their synapses. Each downstream neuron i loses the mean drive sum_j g w_ji r_j dt of its pruned
    inputs; its threshold moves by -tau_i / dt times that (the steady-state voltage it no longer gets),
    clamped to range. Returns the pruned ids."""
    alive = np.flatnonzero(s.alive_n)
    silent = alive[rates_hz[alive] < rate_min_hz]
    limit = max(1, int(max_fraction * alive.size)) if silent.size else 0
    ids = silent[np.argsort(rates_hz[silent], kind="stable")[:limit]]
    if ids.size == 0:
        return ids.astype(np.int32)
    gone = np.zeros(s.n_cap, bool)
    gone[ids] = True
    out = s.alive_s & gone[s.pre] & ~gone[s.post]
    dt = cfg.neuron.dt_ms
    lost = np.zeros(s.n_cap)
    np.add.at(lost, s.post[out], cfg.connectivity.g_syn_mV * s.w[out] * rates_hz[s.pre[out]] * dt / 1000.0)
    comp = -s.tau_ms / dt * lost
    nc = cfg.neuron
    keep = s.alive_n & ~gone
    s.v_th_mV[keep] = np.clip(s.v_th_mV[keep] + comp[keep], nc.v_th_min_mV, nc.v_th_max_mV)
    s.alive_s &= ~(gone[s.pre] | gone[s.post])
    s.alive_n[ids] = False
    return ids.astype(np.int32)


def rewire(
    s: Structure,
    spikes: np.ndarray,
    rng: np.random.Generator,
    cfg: FumConfig,
    *,
    persistent: np.ndarray | None = None,
    max_fraction: float = 0.01,
    inhibitory_per_100: int = 20,
    top_active: int = 64,
) -> int:
    """Replace the weakest non-persistent synapses (at most max_fraction of the alive ones) by new
    excitatory synapses between the most co-active unconnected pairs (co-activity = spike-count product over
    a window of spikes (T, N_cap) uint8, among the top_active neurons), plus inhibitory_per_100 new
    inhibitory synapses per 100 excitatory ones onto the same posts. Returns the number created."""
    alive_s = np.flatnonzero(s.alive_s)
    n_total = max(1, int(max_fraction * alive_s.size))
    n_change = max(1, round(n_total * 100 / (100 + inhibitory_per_100)))  # excitatory share of the budget
    counts = spikes.sum(0).astype(np.float64) * s.alive_n
    top = np.argsort(-counts, kind="stable")[:top_active]
    top = top[counts[top] > 0]
    exc_top = top[s.excitatory[top]]
    if exc_top.size == 0 or top.size < 2:
        return 0
    act = spikes[:, top].astype(np.float64)
    co = spikes[:, exc_top].astype(np.float64).T @ act  # (n_exc_top, n_top)
    co[exc_top[:, None] == top[None, :]] = -1.0
    existing = set(zip(s.pre[alive_s].tolist(), s.post[alive_s].tolist(), strict=True))
    order = np.argsort(-co, axis=None, kind="stable")
    new_pre, new_post = [], []
    for flat in order[: 4 * n_change]:  # a bounded scan over the best few candidate pairs
        i, j = divmod(int(flat), top.size)
        pair = (int(exc_top[i]), int(top[j]))
        if co[i, j] <= 0 or len(new_pre) >= n_change:
            break
        if pair not in existing:
            new_pre.append(pair[0])
            new_post.append(pair[1])
    n_exc = len(new_pre)
    inh = np.flatnonzero(s.alive_n & ~s.excitatory)
    n_inh = min(int(round(n_exc * inhibitory_per_100 / 100)), inh.size) if n_exc else 0
    if n_inh:
        new_pre += rng.choice(inh, n_inh).tolist()
        new_post += rng.choice(np.array(new_post[:n_exc]), n_inh).tolist()
    total = len(new_pre)
    if total == 0:
        return 0
    removable = alive_s if persistent is None else alive_s[~persistent[alive_s]]
    weakest = removable[np.argsort(np.abs(s.w[removable]), kind="stable")[:total]]
    s.alive_s[weakest] = False
    _add_synapses(s, np.array(new_pre, np.int32), np.array(new_post, np.int32), rng, cfg)
    return total


def pad_state(state: State, net: Network, n_cap: int, cfg: FumConfig) -> State:
    """A state of a network of N neurons extended to n_cap neuron slots (new slots at rest)."""
    extra = n_cap - net.n_neurons

    def ext(x: jnp.ndarray, fill: float) -> jnp.ndarray:
        return jnp.concatenate([x, jnp.full((extra,) + x.shape[1:], fill, x.dtype)], axis=0)

    ring = jnp.concatenate(
        [state.ring_mV, jnp.zeros((state.ring_mV.shape[0], extra), state.ring_mV.dtype)], 1
    )
    return state.replace(
        v_mV=ext(state.v_mV, cfg.neuron.v_rest_mV),
        refrac_left=ext(state.refrac_left, 0),
        x_pre=ext(state.x_pre, 0.0),
        y_post=ext(state.y_post, 0.0),
        ring_mV=ring,
        tau_ms=ext(state.tau_ms, cfg.neuron.tau_mean_ms),
        v_th_mV=ext(state.v_th_mV, DEAD_V_TH_MV),
        window_spikes=ext(state.window_spikes, 0),
        rate_hz=ext(state.rate_hz, -1.0),
    )
