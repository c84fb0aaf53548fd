"""Partition a network's neurons with METIS and split it into parts that each own their neurons' inputs.

A part owns the neurons ``members[p]`` (original ids, ascending) and every synapse whose *post* neuron it
owns. Its local :class:`~fumjax.network.Network` names presynaptic neurons by their ORIGINAL global ids and
keeps the whole network's CSR order for its synapses, so every post neuron sums its inputs in the same
order as in the whole network: a partitioned run is bit-identical to the single-process run.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from fumjax.network import Network
from fumjax.state import State

__all__ = [
    "Partition",
    "partition",
    "partition_from_parts",
    "symmetric_adjacency",
    "cut_fraction",
    "renumbering",
    "local_synapses",
    "part_synapses",
    "split",
    "split_part",
    "split_state",
    "split_state_part",
    "merge_states",
]

# State fields indexed by the part's neurons (last axis) / synapses / copied whole.
_NEURON_FIELDS = ("v_mV", "refrac_left", "y_post", "ring_mV", "tau_ms", "v_th_mV", "window_spikes", "rate_hz")
_SYNAPSE_FIELDS = ("w", "elig")
_SHARED_FIELDS = ("x_pre", "elig_t0", "step", "window_start", "seed")


@dataclasses.dataclass(frozen=True)
class Partition:
    """An assignment of N neurons to n_parts parts, with its quality."""

    parts: np.ndarray  # (N,) int32 part of each neuron
    members: tuple[np.ndarray, ...]  # n_parts arrays (n_p,) int32: original ids of part p, ascending
    cut_fraction: float  # fraction of synapses whose pre and post lie in different parts
    balance: float  # max part size / mean part size (1.0 = perfect)
    n_parts: int

    @property
    def sizes(self) -> np.ndarray:
        """Neurons per part: (n_parts,) int64."""
        return np.array([m.shape[0] for m in self.members], dtype=np.int64)


def symmetric_adjacency(net: Network) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected synapse graph in METIS form: (xadj (N+1,), adjncy (2M,), eweights (2M,)) int32.

    Edges are {pre, post} without self loops; parallel and reciprocal synapses are merged into one edge
    whose weight is the number of synapses it stands for, so the weighted edge cut = number of cut synapses.
    O(E): the CSR is sorted by pre and ``in_syn`` lists it sorted by (post, pre), so both directed copies
    are sorted runs that one stable (merging) sort combines.
    """
    n = net.n_neurons
    pre = np.asarray(net.pre)
    post = np.asarray(net.post)
    loop = pre == post
    if loop.any():  # self loops never cut
        keep = ~loop
        pre_f, post_f = pre[keep], post[keep]
        in_syn = np.argsort(post_f, kind="stable")  # CSR order is by pre, so this sorts by (post, pre)
    else:
        pre_f, post_f, in_syn = pre, post, np.asarray(net.in_syn)
    del loop
    # (u, v) packed as u << 32 | v: sorting keys sorts by (u, v); shifts unpack them
    key = np.empty(2 * pre_f.shape[0], dtype=np.int64)
    e = pre_f.shape[0]
    np.left_shift(pre_f, 32, out=key[:e], dtype=np.int64)
    key[:e] |= post_f  # sorted by (pre, post)
    np.left_shift(post_f[in_syn], 32, out=key[e:], dtype=np.int64)
    key[e:] |= pre_f[in_syn]  # sorted by (post, pre)
    del pre_f, post_f, in_syn
    key.sort(kind="stable")  # timsort: merges the two sorted runs in O(E)
    if key.size == 0:
        return np.zeros(n + 1, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32)
    head = np.empty(key.shape[0], dtype=bool)
    head[0] = True
    np.not_equal(key[1:], key[:-1], out=head[1:])
    starts = np.flatnonzero(head)
    del head
    weights = np.empty(starts.shape[0], dtype=np.int32)
    np.subtract(starts[1:], starts[:-1], out=weights[:-1], casting="unsafe")
    weights[-1] = key.shape[0] - starts[-1]
    uniq = key[starts]
    del key, starts
    u = (uniq >> 32).astype(np.int32)
    v = (uniq & 0xFFFFFFFF).astype(np.int32)
    xadj = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=n), out=xadj[1:])
    return xadj.astype(np.int32), v, weights


def cut_fraction(net: Network, parts: np.ndarray) -> float:
    """Fraction of the E synapses whose pre and post neurons lie in different parts (0.0 if E == 0)."""
    parts = np.asarray(parts)
    e = net.n_synapses
    if e == 0:
        return 0.0
    cut = np.count_nonzero(parts[np.asarray(net.pre)] != parts[np.asarray(net.post)])
    return float(cut) / float(e)


def partition_from_parts(
    net: Network, parts: np.ndarray, n_parts: int | None = None, shares: np.ndarray | None = None
) -> Partition:
    """A Partition from a given assignment parts (N,) of ints in [0, n_parts) (n_parts default max + 1);
    its balance is measured against the target `shares` (n_parts,) of the neurons (default equal)."""
    parts = np.asarray(parts)
    n = net.n_neurons
    if parts.shape != (n,):
        raise ValueError(f"parts has shape {parts.shape}, expected ({n},)")
    if not np.issubdtype(parts.dtype, np.integer):
        raise ValueError(f"parts must hold integers, got dtype {parts.dtype}")
    n_parts = int(parts.max()) + 1 if n_parts is None else int(n_parts)
    if n and (parts.min() < 0 or parts.max() >= n_parts):
        raise ValueError(f"parts must lie in [0, {n_parts}), got [{parts.min()}, {parts.max()}]")
    parts = parts.astype(np.int32)
    order = np.argsort(parts, kind="stable").astype(np.int32)  # grouped by part, ascending id within
    bounds = np.zeros(n_parts + 1, dtype=np.int64)
    np.cumsum(np.bincount(parts, minlength=n_parts), out=bounds[1:])
    members = tuple(order[bounds[p] : bounds[p + 1]] for p in range(n_parts))
    sizes = np.diff(bounds)
    targets = n * (np.full(n_parts, 1.0 / n_parts) if shares is None else _check_shares(shares, n_parts))
    return Partition(
        parts=parts,
        members=members,
        cut_fraction=cut_fraction(net, parts),
        balance=float((sizes / targets).max()) if n else 1.0,
        n_parts=n_parts,
    )


def partition(
    net: Network, n_parts: int, *, seed: int = 0, shares: np.ndarray | list[float] | None = None
) -> Partition:
    """METIS k-way partition of the symmetrized synapse graph into n_parts parts (edge weight = synapses).

    shares: (n_parts,) target fraction of the neurons for each part (normalized; default equal), e.g. in
    proportion to the measured speed of the rank that will run the part (`MpiRun.rebalanced`).
    n_parts = 1 puts every neuron in part 0. The result depends only on (network, n_parts, seed, shares).
    """
    n_parts = int(n_parts)
    n = net.n_neurons
    if not 1 <= n_parts <= n:
        raise ValueError(f"n_parts = {n_parts}: must be in [1, N = {n}]")
    tpwgts = None if shares is None else _check_shares(shares, n_parts)
    if n_parts == 1:
        return partition_from_parts(net, np.zeros(n, np.int32), 1)
    try:
        import pymetis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("partitioning needs pymetis: pip install pymetis") from exc
    xadj, adjncy, eweights = symmetric_adjacency(net)
    opts = pymetis.Options(seed=int(seed))
    graph = pymetis.CSRAdjacency(xadj, adjncy)
    kw = {} if tpwgts is None else {"tpwgts": [float(x) for x in tpwgts]}
    _, membership = pymetis.part_graph(n_parts, graph, eweights=eweights, options=opts, **kw)
    return partition_from_parts(net, np.asarray(membership, dtype=np.int32), n_parts, tpwgts)


def _check_shares(shares, n_parts: int) -> np.ndarray:
    """shares as float64 (n_parts,) summing to 1, or a ValueError naming what is wrong."""
    s = np.asarray(shares, dtype=np.float64)
    if s.shape != (n_parts,):
        raise ValueError(f"shares has shape {s.shape}: need one per part, ({n_parts},)")
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"shares = {s.tolist()}: each must be finite and > 0")
    return s / s.sum()


def renumbering(part: Partition) -> tuple[np.ndarray, np.ndarray]:
    """Ids making each part contiguous (part 0 first, ascending original id within a part).

    Returns (new_of_old (N,) int32, old_of_new (N,) int32), inverse permutations.
    """
    old_of_new = np.concatenate(part.members).astype(np.int32) if part.members else np.zeros(0, np.int32)
    new_of_old = np.empty_like(old_of_new)
    new_of_old[old_of_new] = np.arange(old_of_new.shape[0], dtype=np.int32)
    return new_of_old, old_of_new


def local_synapses(net: Network, part: Partition) -> list[np.ndarray]:
    """local_to_global_syn of each part: (E_p,) CSR slots (whole network) of the synapses part p owns."""
    post_part = part.parts[np.asarray(net.post)]
    idx_dtype = np.int64 if net.n_synapses >= 2**31 else np.int32
    return [np.flatnonzero(post_part == p).astype(idx_dtype) for p in range(part.n_parts)]


def part_synapses(net: Network, part: Partition, p: int) -> np.ndarray:
    """local_to_global_syn of part p alone: (E_p,) CSR slots of the synapses whose post neuron it owns."""
    idx_dtype = np.int64 if net.n_synapses >= 2**31 else np.int32
    return np.flatnonzero(part.parts[np.asarray(net.post)] == p).astype(idx_dtype)


def split(net: Network, part: Partition) -> list[Network]:
    """One local Network per part: neurons members[p] (local id = position), synapses with post in part p.

    Local ``pre`` = original global ids, ``post`` = local ids, synapses in the whole network's CSR order
    (= sorted by (original pre, local post)); ``excitatory_pre``/``plastic_pre`` cover all N neurons, and
    every part keeps the whole network's max_delay (so states split and merge with equal ring buffers).
    """
    _check_partition(net, part)
    return [split_part(net, part, p, syn) for p, syn in enumerate(local_synapses(net, part))]


def split_part(net: Network, part: Partition, p: int, syn: np.ndarray | None = None) -> Network:
    """The local Network of part p alone (see `split`); syn: its `part_synapses`, computed if None."""
    _check_partition(net, part)
    if not 0 <= p < part.n_parts:
        raise ValueError(f"part {p}: must be in [0, {part.n_parts})")
    syn = part_synapses(net, part, p) if syn is None else syn
    m = part.members[p]
    local_post = np.empty(net.n_neurons, np.int32)  # local id of each neuron of part p
    local_post[m] = np.arange(m.shape[0], dtype=np.int32)
    plastic = getattr(net, "plastic_pre", None)  # older Networks have no plastic_pre field
    extra = {} if plastic is None else {"plastic_pre": np.asarray(plastic)}
    local = net._from_csr_numpy(
        np.asarray(net.pre)[syn],
        local_post[np.asarray(net.post)[syn]],
        np.asarray(net.w0)[syn],
        np.asarray(net.delay_steps)[syn],
        np.asarray(net.excitatory)[m],
        np.asarray(net.tau_ms)[m],
        np.asarray(net.v_th_mV)[m],
        np.arange(syn.shape[0], dtype=syn.dtype),
        excitatory_pre=np.asarray(net.excitatory_pre),
        **extra,
    )
    return dataclasses.replace(local, max_delay=net.max_delay)


def split_state(state: State, net: Network, part: Partition, parts: list[Network]) -> list[State]:
    """The whole-network state cut into one State per part (x_pre, step, seed... copied to every part)."""
    _check_partition(net, part)
    if len(parts) != part.n_parts:
        raise ValueError(f"got {len(parts)} part networks for a partition into {part.n_parts}")
    out = []
    for p, syn in enumerate(local_synapses(net, part)):
        if parts[p].n_synapses != syn.shape[0] or parts[p].n_neurons != part.members[p].shape[0]:
            raise ValueError(f"part network {p} does not match the partition (was it split from this net?)")
        out.append(split_state_part(state, part, p, syn))
    return out


def split_state_part(state: State, part: Partition, p: int, syn: np.ndarray) -> State:
    """Part p's State cut from the whole-network state; syn: (E_p,) its `part_synapses`."""
    mj, sj = jnp.asarray(part.members[p]), jnp.asarray(syn)
    changes = {f: jnp.take(getattr(state, f), mj, axis=-1) for f in _NEURON_FIELDS}
    changes.update({f: jnp.take(getattr(state, f), sj, axis=-1) for f in _SYNAPSE_FIELDS})
    return state.replace(**changes)


def merge_states(
    states: list[State], net: Network, part: Partition, parts: list[Network] | None = None
) -> State:
    """Inverse of split_state: one whole-network State from the parts' states (x_pre etc. from part 0).

    `parts` (the part networks) is only checked for its length; it may be None.
    """
    _check_partition(net, part)
    n_nets = part.n_parts if parts is None else len(parts)
    if len(states) != part.n_parts or n_nets != part.n_parts:
        raise ValueError(f"need {part.n_parts} states and part networks, got {len(states)}, {n_nets}")
    new_of_old, _ = renumbering(part)  # = position of each neuron in the concatenation of the parts
    pos_of_old = jnp.asarray(new_of_old)
    syn_all = np.concatenate(local_synapses(net, part))
    pos_of_syn = np.empty_like(syn_all)
    pos_of_syn[syn_all] = np.arange(syn_all.shape[0], dtype=syn_all.dtype)
    pos_of_syn = jnp.asarray(pos_of_syn)
    changes = {}
    for f in _NEURON_FIELDS:
        cat = jnp.concatenate([getattr(s, f) for s in states], axis=-1)
        changes[f] = jnp.take(cat, pos_of_old, axis=-1)
    for f in _SYNAPSE_FIELDS:
        cat = jnp.concatenate([getattr(s, f) for s in states], axis=-1)
        changes[f] = jnp.take(cat, pos_of_syn, axis=-1)
    return states[0].replace(**changes)


def _check_partition(net: Network, part: Partition) -> None:
    if part.parts.shape != (net.n_neurons,):
        raise ValueError(f"partition covers {part.parts.shape[0]} neurons, network has {net.n_neurons}")
