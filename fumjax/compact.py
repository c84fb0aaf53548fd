"""Compact network for one-GPU scale (issue 5): 12 bytes per synapse, all delays 1, built on the device.

`CompactNetwork` keeps per synapse only `post` (int32) and `in_syn` (uint32); the presynaptic neuron of a CSR
slot s is found from `pre_bucket[s >> PRE_SHIFT]` and `row_ptr`. Weights and eligibility live in the State.

`build_compact` draws the same graph distribution as :func:`fumjax.network.sample_distance_graph` (each
neuron takes K distinct partners != itself, successively without replacement, p ∝ exp(-d/sigma)) from
another random stream: a counter-based hash of (seed, post, offset) on the device instead of numpy's
generator, so a seed gives another graph than a regular Network's, the same one for any block size (and on
any device up to the rounding of float32 log). Partners are restricted to a window of radius R chosen so
that exact sampling would put at most a fraction `tail_tol` (default 1e-4) of an edge neuron's partners
beyond R (:func:`truncation_radius`; R = 64 at K = 500, sigma = 5); those partners are drawn inside the
window instead. When R reaches the grid's side the window is the whole grid and the law is exact. Inside
the window the sampling is exact: Gumbel-top-K (the K smallest log Exp(1) + d/sigma) over every valid cell.

Layout of the build (jax x64 is off, so no jax index may exceed 2^31 - 1; every device array here is 2-D or
smaller than 2^31 elements): (1) per block of posts, the K chosen offsets (into a table of grid offsets sorted
by linear offset) go to the host as an (N, K) int16/int32 array, ascending pre within each row; (2) per block
of pre neurons, the window of posts whose partners can lie in the block (index distance <= R*side + R) is
stably sorted by pre (CUB radix sort on the GPU), giving that block's CSR rows (post ascending) and the CSR
slot of every (post, k) entry, which is in_syn. Per-block results are assembled on the host and put on the
device once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from fumjax.config import FumConfig
from fumjax.network import Network, _check_k, grid_side, neuron_parameters

__all__ = [
    "PRE_SHIFT",
    "SAMPLE_BLOCK_KEYS",
    "CompactNetwork",
    "BuildPlan",
    "pre_bucket_table",
    "truncation_radius",
    "build_plan",
    "build_compact",
]

PRE_SHIFT = 9  # one pre_bucket entry per 512 CSR slots
#: (posts x window cells) keys of one sampling block (device temporaries ~ 24 bytes each).
SAMPLE_BLOCK_KEYS = 1 << 25
_STREAM_GRAPH, _STREAM_WEIGHTS = 1, 2  # jax.random / hash stream ids
_U32_MAX = np.uint32(0xFFFFFFFF)
_WEIGHT_CHUNK = 1 << 27  # synapses per weight-drawing call
# cfg.neuron fields that are keyword arguments of network.neuron_parameters
_NEURON_DISTRIBUTION_KEYS = (
    "excitatory_fraction", "tau_mean_ms", "tau_std_ms", "tau_min_ms", "tau_max_ms",
    "v_th_mean_mV", "v_th_std_mV", "v_th_min_mV", "v_th_max_mV",
)  # fmt: skip


def pre_bucket_table(row_ptr: np.ndarray, n_synapses: int, shift: int = PRE_SHIFT) -> np.ndarray:
    """((E-1 >> shift) + 1,) int32: entry b = the pre i with row_ptr[i] <= (b << shift) < row_ptr[i+1]."""
    row_ptr = np.asarray(row_ptr, dtype=np.int64)
    slots = np.arange(((int(n_synapses) - 1) >> shift) + 1, dtype=np.int64) << shift
    return (np.searchsorted(row_ptr, slots, side="right") - 1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class CompactNetwork:
    """N neurons, E = N*K synapses (or any CSR graph with all delays 1), CSR by pre, no per-synapse pre."""

    row_ptr: Array  # (N+1,) uint32: outgoing synapses of pre i are CSR slots [row_ptr[i], row_ptr[i+1])
    post: Array  # (E,) int32, CSR order (by pre, then post)
    in_ptr: Array  # (N+1,) uint32: incoming synapses of post j are in_syn[in_ptr[j]:in_ptr[j+1]]
    in_syn: Array  # (E,) uint32: CSR slots grouped by post, ascending slot within a group
    pre_bucket: Array  # ((E-1 >> pre_shift) + 1,) int32: pre neuron of slot b << pre_shift
    excitatory: Array  # (N,) bool
    tau_ms: Array  # (N,) float32
    v_th_mV: Array  # (N,) float32
    n_neurons: int  # static
    pre_shift: int = PRE_SHIFT  # static: log2 of the CSR slots per pre_bucket entry

    @property
    def n_synapses(self) -> int:
        """Number of synapses E."""
        return int(self.post.shape[0])

    @property
    def n_pre(self) -> int:
        """Number of neurons pre ids range over (= N: always a whole network)."""
        return self.n_neurons

    @property
    def excitatory_pre(self) -> Array:
        """(N,) bool types of the presynaptic neurons (= excitatory)."""
        return self.excitatory

    @property
    def plastic_pre(self) -> Array:
        """(N,) bool, all True: every synapse is plastic."""
        return jnp.ones((self.n_neurons,), bool)

    @property
    def sign(self) -> Array:
        """STDP sign (N,) float32 of each presynaptic neuron: +1 excitatory, -1 inhibitory."""
        return jnp.where(self.excitatory, 1.0, -1.0).astype(jnp.float32)

    @property
    def max_delay(self) -> int:
        """All delays are 1 step."""
        return 1

    @property
    def delay_steps(self) -> Array:
        """(0,) int32: the empty delay array means "every delay is 1"."""
        return jnp.zeros((0,), jnp.int32)

    @property
    def nbytes(self) -> dict[str, int]:
        """Bytes held by each array field: {name: bytes}."""
        return {f: int(getattr(self, f).nbytes) for f in _FIELDS}

    def with_pre_shift(self, shift: int) -> CompactNetwork:
        """The same network with a coarser pre_bucket table (shift >= pre_shift: every 2^(shift -
        pre_shift)-th entry), e.g. so that the table stays in a GPU's L2 cache; the kernels walk forward."""
        if not isinstance(shift, int) or not self.pre_shift <= shift <= 31:
            raise ValueError(f"pre_shift {shift!r}: must be an int in [{self.pre_shift}, 31]")
        step = 1 << (shift - self.pre_shift)
        return dataclasses.replace(self, pre_bucket=self.pre_bucket[::step], pre_shift=shift)

    @classmethod
    def from_network(cls, net: Network) -> CompactNetwork:
        """Exact conversion of a whole regular Network whose delays are all 1 (same CSR order)."""
        if net.n_pre != net.n_neurons:
            raise ValueError("from_network needs a whole network (n_pre == n_neurons), not one part of one")
        e = net.n_synapses
        if e >= 2**32:
            raise ValueError(f"network has E = {e} synapses: CompactNetwork needs E < 2^32 (uint32 slots)")
        if e and not bool(jnp.all(net.delay_steps == 1)):
            raise ValueError("CompactNetwork has all delays 1; this network has other delays")
        if not bool(jnp.all(net.plastic_pre)):
            raise ValueError("CompactNetwork has every synapse plastic; this network has static pre neurons")
        row_ptr = np.asarray(net.row_ptr, dtype=np.int64)
        return cls(
            row_ptr=jnp.asarray(row_ptr.astype(np.uint32)),
            post=jnp.asarray(net.post, jnp.int32),
            in_ptr=jnp.asarray(np.asarray(net.in_ptr, np.int64).astype(np.uint32)),
            in_syn=jnp.asarray(np.asarray(net.in_syn, np.int64).astype(np.uint32)),
            pre_bucket=jnp.asarray(pre_bucket_table(row_ptr, e)),
            excitatory=jnp.asarray(net.excitatory, bool),
            tau_ms=jnp.asarray(net.tau_ms, jnp.float32),
            v_th_mV=jnp.asarray(net.v_th_mV, jnp.float32),
            n_neurons=net.n_neurons,
        )

    def to_network(self, w0: Array | np.ndarray) -> Network:
        """The regular Network with the same CSR order and initial weights w0 (E,) (e.g. a State's w)."""
        e, n = self.n_synapses, self.n_neurons
        w0 = np.asarray(w0, np.float32)
        if w0.shape != (e,):
            raise ValueError(f"w0 has shape {w0.shape}, expected (E,) = ({e},)")
        idx = np.int64 if e >= 2**31 else np.int32
        row_ptr = np.asarray(self.row_ptr, np.int64)
        exc = jnp.asarray(self.excitatory)
        return Network(
            row_ptr=jnp.asarray(row_ptr.astype(idx)),
            pre=jnp.asarray(np.repeat(np.arange(n, dtype=np.int32), np.diff(row_ptr))),
            post=self.post,
            delay_steps=jnp.ones((e,), jnp.int32),
            w0=jnp.asarray(w0),
            excitatory=exc,
            tau_ms=self.tau_ms,
            v_th_mV=self.v_th_mV,
            input_order=jnp.arange(e, dtype=idx),
            in_ptr=jnp.asarray(np.asarray(self.in_ptr, np.int64).astype(idx)),
            in_syn=jnp.asarray(np.asarray(self.in_syn, np.int64).astype(idx)),
            excitatory_pre=exc,
            plastic_pre=jnp.ones((n,), bool),
            n_neurons=n,
            max_delay=1,
        )

    def draw_weights(self, dtype, *, w_exc_max: float = 0.3, w_inh_min: float = -0.3, seed: int = 0) -> Array:
        """Initial weights (E,) in `dtype`, drawn on the device: U[0, w_exc_max) if the pre neuron is
        excitatory, U[w_inh_min, 0) otherwise (network.initial_weights' law, another random stream).

        Drawn in chunks of < 2^31 slots (the pre of slot s by a search of row_ptr), each cast to `dtype` at
        once, so no float32 E-sized array exists; the chunks are concatenated (peak 2x the dtype's E bytes).
        """
        if not w_exc_max >= 0.0 or not w_inh_min <= 0.0:
            raise ValueError(f"need w_exc_max >= 0 and w_inh_min <= 0, got {w_exc_max}, {w_inh_min}")
        e = self.n_synapses
        key = jax.random.fold_in(jax.random.key(seed), _STREAM_WEIGHTS)
        chunks = []
        for c, s0 in enumerate(range(0, e, _WEIGHT_CHUNK)):
            size = min(_WEIGHT_CHUNK, e - s0)
            chunks.append(
                _weight_chunk(
                    jax.random.fold_in(key, c),
                    jnp.uint32(s0),
                    self.row_ptr,
                    self.excitatory,
                    np.float32(w_exc_max),
                    np.float32(w_inh_min),
                    size=size,
                    dtype=jnp.dtype(dtype),
                )
            )
        if not chunks:
            return jnp.zeros((0,), dtype)
        return chunks[0] if len(chunks) == 1 else jnp.concatenate(chunks)


_FIELDS = ("row_ptr", "post", "in_ptr", "in_syn", "pre_bucket", "excitatory", "tau_ms", "v_th_mV")
jax.tree_util.register_dataclass(
    CompactNetwork, data_fields=list(_FIELDS), meta_fields=["n_neurons", "pre_shift"]
)


@functools.partial(jax.jit, static_argnames=("size", "dtype"))
def _weight_chunk(key, s0, row_ptr, excitatory, w_exc_max, w_inh_min, *, size, dtype):
    slots = s0 + jnp.arange(size, dtype=jnp.uint32)
    pre = jnp.searchsorted(row_ptr, slots, side="right").astype(jnp.int32) - 1
    u = jax.random.uniform(key, (size,), jnp.float32)
    return jnp.where(excitatory[pre], u * w_exc_max, w_inh_min * (1.0 - u)).astype(dtype)


# --------------------------------------------------------------------------------------------------------
# Truncation radius and build plan
# --------------------------------------------------------------------------------------------------------


def _expected_beyond(k: int, sigma: float, radii: np.ndarray) -> np.ndarray:
    """Expected partners beyond each radius for exact Gumbel-top-k on the infinite grid (mean-field
    threshold): (len(radii),) float64."""
    r_max = int(max(4.0 * math.sqrt(k / math.pi), 30.0 * sigma, radii.max() + 2))
    g = np.arange(-r_max, r_max + 1, dtype=np.float64)
    d = np.hypot(g[:, None], g[None, :]).ravel()
    d = np.sort(d[(d > 0) & (d <= r_max)])

    def selected(theta: float, dd: np.ndarray) -> np.ndarray:  # P(key_c > theta), key = -d/sigma + Gumbel
        return -np.expm1(-np.exp(-(theta + dd / sigma)))

    def tail(theta: float, r: float) -> float:  # continuum beyond r_max: 2 pi r exp(-theta - r/sigma) dr
        return 2.0 * math.pi * math.exp(-theta) * sigma * (r + sigma) * math.exp(-r / sigma)

    lo, hi = -60.0, 60.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if selected(mid, d).sum() + tail(mid, r_max) > k:
            lo = mid
        else:
            hi = mid
    theta = 0.5 * (lo + hi)
    p = selected(theta, d)
    beyond = p.sum() - np.cumsum(p)  # beyond[j] = sum over cells after the j-th nearest
    out = []
    for r in radii:
        j = np.searchsorted(d, r, side="right") - 1
        out.append((beyond[j] if j >= 0 else p.sum()) + tail(theta, r_max))
    return np.asarray(out)


@functools.lru_cache(maxsize=32)
def truncation_radius(k: int, sigma: float, tail_tol: float) -> tuple[int, float]:
    """Smallest integer radius R (grid units) such that exact sampling of K partners would place at most a
    fraction tail_tol of them beyond R, for a neuron on a grid edge (a half plane, i.e. 2K partners on
    the full plane; interior neurons do better). Returns (R, that expected fraction at R)."""
    if not 0.0 < tail_tol < 1.0:
        raise ValueError(f"tail_tol must be in (0, 1), got {tail_tol}")
    radii = np.arange(1, 4 * int(math.sqrt(2 * k) + 30 * sigma) + 2, dtype=np.float64)
    frac = _expected_beyond(2 * k, sigma, radii) / (2 * k)
    j = int(np.argmax(frac <= tail_tol)) if np.any(frac <= tail_tol) else len(radii) - 1
    return int(radii[j]), float(frac[j])


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """Sizes of a build: grid side, window radius (exact = the whole grid), offsets W, index halo L,
    pre-block size B, expected fraction of partners moved inside the window, and device bytes per block."""

    n_neurons: int
    k: int
    side: int
    radius: int
    exact: bool
    n_offsets: int
    halo: int
    pre_block: int
    sample_block: int
    tail_fraction: float
    sample_block_bytes: int
    csr_block_bytes: int


def _offsets(side: int, radius: int, exact: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grid offsets (dx, dy) != 0 within the window, sorted by linear offset dy*side + dx: (W,) int32 x3 and
    their distances (W,) float32."""
    r = side - 1 if exact else min(radius, side - 1)
    g = np.arange(-r, r + 1, dtype=np.int64)
    dx, dy = (a.ravel() for a in np.meshgrid(g, g, indexing="xy"))
    d = np.hypot(dx, dy)
    keep = (d > 0) & (exact | (d <= radius))
    dx, dy, d = dx[keep], dy[keep], d[keep]
    lin = dy * side + dx
    order = np.argsort(lin, kind="stable")
    return (
        dx[order].astype(np.int32),
        dy[order].astype(np.int32),
        lin[order].astype(np.int32),
        d[order].astype(np.float32),
    )


def build_plan(
    n_neurons: int,
    k_per_neuron: int,
    *,
    sigma_grid: float = 5.0,
    tail_tol: float = 1e-4,
    block_elements: int = 1 << 28,
) -> BuildPlan:
    """Sizes of build_compact for (N, K) without building anything (also used by the memory estimate)."""
    _check_k(n_neurons, k_per_neuron)
    n, k = int(n_neurons), int(k_per_neuron)
    if n * k >= 2**32:
        raise ValueError(
            f"N*K = {n * k} synapses: the compact layout indexes CSR slots with uint32, so E must be < 2^32 "
            f"= {2**32}; lower --neurons or --k"
        )
    if not (np.isfinite(sigma_grid) and sigma_grid > 0):
        raise ValueError(f"sigma_grid must be finite and > 0, got {sigma_grid}")
    side = grid_side(n)
    radius, frac = truncation_radius(k, float(sigma_grid), tail_tol)
    exact = radius >= side - 1  # the square window then covers the whole grid: exact sampling
    if exact:
        frac = 0.0
    r = side - 1 if exact else min(radius, side - 1)
    n_off = (2 * r + 1) ** 2 - 1 if exact else int(len(_offsets(side, radius, False)[0]))
    if n_off < k:
        raise ValueError(f"window of radius {radius} holds {n_off} cells < K = {k}")
    halo = r * side + r
    pre_block = max(1, min(n, block_elements // k - 2 * halo))
    if (pre_block + 2 * halo) * k >= 2**31:
        raise ValueError(
            f"N = {n}, K = {k}: the halo of {halo} posts around a pre block needs >= 2^31 window entries"
        )
    sample_block = max(1, min(n, SAMPLE_BLOCK_KEYS // n_off))
    # device bytes of one block (XLA's CPU memory analysis at 7M x 500: 0.74 GB sample, 5.9 GB CSR with
    # its in/outputs), plus room for CUB's sort buffers and the previous block's outputs (pipelined). The
    # CSR block's 38 B per window entry: the H200's allocator peaked at 9.71 GB building 1M x 500, whose
    # window holds 2.68e8 entries (36.2 B each; the former 34 B under-estimated that build by 6%)
    sample_bytes = sample_block * (n_off * 24 + k * 8)
    nw = min(pre_block + 2 * halo, n)
    csr_bytes = nw * k * 38 + 4 * (pre_block + 1)
    return BuildPlan(
        n, k, side, radius, exact, n_off, halo, pre_block, sample_block, frac, sample_bytes, csr_bytes
    )


# --------------------------------------------------------------------------------------------------------
# Device passes
# --------------------------------------------------------------------------------------------------------


def _order_bits(x: Array) -> Array:
    """float32 -> uint32 with the same order (for finite values and +-inf)."""
    b = jax.lax.bitcast_convert_type(x, jnp.uint32)
    neg = (b >> 31).astype(bool)
    return jnp.where(neg, ~b, b | jnp.uint32(0x80000000))


def _fmix32(h: Array) -> Array:
    """murmur3's 32-bit finalizer (a bijection of uint32, wrapping arithmetic)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _partner_keys(seed: Array, q: Array, d_over_sigma: Array) -> Array:
    """Sampling keys (B, W) float32 of posts q (B,) over the offsets: log Exp(1) + d/sigma, the K smallest
    of which are K draws without replacement with p ∝ exp(-d/sigma). The Exp(1) comes from a counter-based
    hash of (seed, post, offset index), so the graph does not depend on how posts are blocked."""
    o = jnp.arange(d_over_sigma.shape[0], dtype=jnp.uint32)
    h = _fmix32(seed ^ (q.astype(jnp.uint32) * jnp.uint32(0x9E3779B1)))
    h = _fmix32(h[:, None] ^ (o[None, :] * jnp.uint32(0x27D4EB2F) + jnp.uint32(0x165667B1)))
    # 23 bits: (j + 0.5) 2^-23 is exact in float32 and < 1, so -log(u) > 0 (24 bits would round to 1.0)
    u = ((h >> 9).astype(jnp.float32) + 0.5) * jnp.float32(2.0**-23)
    return jnp.log(-jnp.log(u)) + d_over_sigma[None, :]


def _select_bisect(keys: Array, k: int) -> Array:
    """(B, W) bool: the K smallest keys of each row, ties to the lower index (finds the K-th smallest by
    bisection on order-preserving bits: 32 compare-and-count passes, no sort)."""
    bits = _order_bits(keys)
    b = keys.shape[0]

    def bisect(_, lohi):  # smallest t with #(bits <= t) >= K, per row
        lo, hi = lohi
        mid = lo + ((hi - lo) >> 1)
        enough = jnp.sum(bits <= mid[:, None], axis=1, dtype=jnp.int32) >= k
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lo0 = jnp.zeros((b,), jnp.uint32)
    theta, _ = jax.lax.fori_loop(0, 32, bisect, (lo0, jnp.full((b,), _U32_MAX)))
    below = bits < theta[:, None]
    need = k - jnp.sum(below, axis=1, dtype=jnp.int32)
    ties = bits == theta[:, None]
    return below | (ties & (jnp.cumsum(ties, axis=1, dtype=jnp.int32) <= need[:, None]))


def _select_top_k(keys: Array, k: int) -> Array:
    """Same as _select_bisect through lax.top_k (faster on the CPU; ties also to the lower index)."""
    _, idx = jax.lax.top_k(-keys, k)
    b = keys.shape[0]
    return jnp.zeros(keys.shape, bool).at[jnp.arange(b)[:, None], idx].set(True)


@functools.partial(jax.jit, static_argnames=("n", "side", "k", "b", "method"))
def _sample_block(seed, start, dx, dy, d_over_sigma, *, n, side, k, b, method):
    """K partners of posts start..start+b-1: offset indices (b, K) int32, ascending (= ascending pre), and
    ok (b,) bool (False: fewer than K valid cells in the window)."""
    w = dx.shape[0]
    q = start + jnp.arange(b, dtype=jnp.int32)
    qx, qy = q % side, q // side
    cx, cy = qx[:, None] + dx[None, :], qy[:, None] + dy[None, :]
    valid = (cx >= 0) & (cx < side) & (cy >= 0) & (cy < side) & (cy * side + cx < n)
    keys = jnp.where(valid, _partner_keys(seed, q, d_over_sigma), jnp.inf)
    take = (_select_bisect if method == "bisect" else _select_top_k)(keys, k)
    ok = jnp.sum(take & valid, axis=1) == k
    pos = jnp.cumsum(take, axis=1, dtype=jnp.int32) - 1
    rows = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, w))
    cols = jnp.where(take, pos, k)
    offs = jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32)[None, :], (b, w))
    sel = jnp.zeros((b, k), jnp.int32).at[rows, cols].set(offs, mode="drop")
    return sel, ok | (q >= n)


@functools.partial(jax.jit, static_argnames=("k", "block"))
def _csr_block(sel_w, q0, a, lin, base, *, k, block):
    """CSR rows of pre block [a, a+block) from the window of posts q0..q0+nw-1.

    Returns (post (nw*K,) int32 whose first E_b entries are the block's CSR, row_ptr_local (block+1,)
    int32, slot (nw, K) uint32: the CSR slot base + j of entry (q, k) if its pre is in the block, else 0).
    """
    nw = sel_w.shape[0]
    q = q0 + jnp.arange(nw, dtype=jnp.int32)
    pre = q[:, None] + lin[sel_w.astype(jnp.int32)]
    inb = (pre >= a) & (pre < a + block)
    key = jnp.where(inb, pre - a, block).ravel()
    val = jnp.arange(nw * k, dtype=jnp.int32)
    skey, sval = jax.lax.sort((key, val), num_keys=1, is_stable=True)
    row_ptr = jnp.searchsorted(skey, jnp.arange(block + 1, dtype=jnp.int32), side="left").astype(jnp.int32)
    e_b = row_ptr[block]
    j = jnp.arange(nw * k, dtype=jnp.int32)
    slot = (
        jnp.zeros((nw * k,), jnp.uint32)
        .at[jnp.where(j < e_b, sval, nw * k)]
        .set(base + j.astype(jnp.uint32), mode="drop", unique_indices=True)
    )
    post = q0 + sval // k
    return post, row_ptr, slot.reshape(nw, k)


def _sample_all(plan: BuildPlan, sigma: float, seed: int, method: str | None = None) -> np.ndarray:
    """(N, K) offset indices of every post's partners (host), ascending pre within a row.

    method: 'top_k' or 'bisect' (same result); None: top_k on the CPU, bisect elsewhere (a fixed number
    of compare-and-count passes; XLA's top_k for large K sorts every row on a GPU).
    """
    n, k, side = plan.n_neurons, plan.k, plan.side
    method = method or ("top_k" if jax.default_backend() == "cpu" else "bisect")
    if method not in ("top_k", "bisect"):
        raise ValueError(f"method = {method!r}: must be 'top_k' or 'bisect'")
    dx, dy, _, d = _offsets(side, plan.radius, plan.exact)
    sel = np.empty((n, k), np.int16 if len(dx) < 2**15 else np.int32)
    seed_u32 = _fmix32(jnp.uint32(seed) ^ jnp.uint32(0x632BE5AB * _STREAM_GRAPH))
    dxj, dyj, ds = jnp.asarray(dx), jnp.asarray(dy), jnp.asarray(d / np.float32(sigma))
    b = plan.sample_block
    ok_all = True
    pending = None  # the previous block's device results, fetched after the next block is dispatched

    def fetch(start, s, ok):
        stop = min(start + b, n)
        sel[start:stop] = np.asarray(s)[: stop - start]
        return bool(np.asarray(ok).all())

    for start in range(0, n, b):
        out = _sample_block(seed_u32, jnp.int32(start), dxj, dyj, ds, n=n, side=side, k=k, b=b, method=method)
        if pending is not None:
            ok_all &= fetch(*pending)
        pending = (start, *out)
    ok_all &= fetch(*pending)
    if not ok_all:
        raise RuntimeError(f"some neuron has fewer than K = {k} valid cells within radius {plan.radius}")
    return sel


def _csr_all(plan: BuildPlan, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row_ptr (N+1,) int64, post (E,) int32, in_syn (E,) uint32) on the host from the partner offsets."""
    n, k, halo, blk = plan.n_neurons, plan.k, plan.halo, plan.pre_block
    _, _, lin, _ = _offsets(plan.side, plan.radius, plan.exact)
    lin_j = jnp.asarray(lin)
    e = n * k
    row_ptr = np.zeros(n + 1, np.int64)
    post = np.empty(e, np.int32)
    in_syn = np.zeros((n, k), np.uint32)
    nw = min(blk + 2 * halo, n)

    def fetch(a, q0, p, rp, slot):  # host part of block a (row_ptr[a] is known: blocks end in order)
        b1, base = min(a + blk, n), int(row_ptr[a])
        rp = np.asarray(rp, np.int64)
        e_b = int(rp[b1 - a])
        row_ptr[a + 1 : b1 + 1] = base + rp[1 : b1 - a + 1]
        post[base : base + e_b] = np.asarray(p[:e_b])
        np.add(in_syn[q0 : q0 + nw], np.asarray(slot), out=in_syn[q0 : q0 + nw])

    base = jnp.uint32(0)  # first slot of the block, kept on the device so the next block needs no fetch
    pending = None
    for a in range(0, n, blk):
        q0 = max(0, min(a - halo, n - nw))  # a window of nw posts holding [a - halo, a + blk + halo)
        window = jnp.asarray(np.ascontiguousarray(sel[q0 : q0 + nw]))
        p, rp, slot = _csr_block(window, jnp.int32(q0), jnp.int32(a), lin_j, base, k=k, block=blk)
        base = base + rp[blk].astype(jnp.uint32)
        if pending is not None:
            fetch(*pending)
        pending = (a, q0, p, rp, slot)
    fetch(*pending)
    if row_ptr[n] != e:
        raise RuntimeError(f"CSR build lost synapses: {row_ptr[n]} of {e}")
    return row_ptr, post, in_syn.reshape(e)


def build_compact(
    n_neurons: int,
    k_per_neuron: int,
    *,
    sigma_grid: float = 5.0,
    seed: int = 0,
    cfg: FumConfig | None = None,
    tail_tol: float = 1e-4,
    block_elements: int = 1 << 28,
    timings: dict[str, float] | None = None,
) -> CompactNetwork:
    """Distance-biased CompactNetwork: N neurons, in-degree exactly K, partners ∝ exp(-d/sigma_grid).

    Neuron parameters as network.neuron_parameters with cfg.neuron's distributions (same stream as a
    regular Network of this seed). tail_tol: see truncation_radius; block_elements bounds the (posts x K)
    entries of one pre block's sort (device temporaries ~ 32 bytes each). The graph is a pure function of
    (n, k, sigma_grid, seed, tail_tol), independent of block_elements. timings: if given, receives the
    seconds of each phase (plan, sample, csr, put).
    """
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        if timings is not None:
            timings[name] = now - clock[0]
        clock[0] = now

    cfg = cfg or FumConfig()
    if int(seed) != seed or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2^32), got {seed}")
    plan = build_plan(
        n_neurons, k_per_neuron, sigma_grid=sigma_grid, tail_tol=tail_tol, block_elements=block_elements
    )
    dists = {f: getattr(cfg.neuron, f) for f in _NEURON_DISTRIBUTION_KEYS}
    exc, tau, v_th = neuron_parameters(plan.n_neurons, **dists, seed=seed)
    lap("plan")
    sel = _sample_all(plan, float(sigma_grid), seed)
    lap("sample")
    row_ptr, post, in_syn = _csr_all(plan, sel)
    del sel
    lap("csr")
    e = plan.n_neurons * plan.k
    post_j = jax.device_put(post)
    del post
    in_syn_j = jax.device_put(in_syn)
    del in_syn
    net = CompactNetwork(
        row_ptr=jnp.asarray(row_ptr.astype(np.uint32)),
        post=post_j,
        in_ptr=jnp.asarray((np.arange(plan.n_neurons + 1, dtype=np.int64) * plan.k).astype(np.uint32)),
        in_syn=in_syn_j,
        pre_bucket=jnp.asarray(pre_bucket_table(row_ptr, e)),
        excitatory=jnp.asarray(exc),
        tau_ms=jnp.asarray(tau),
        v_th_mV=jnp.asarray(v_th),
        n_neurons=plan.n_neurons,
    )
    jax.block_until_ready(net)
    lap("put")
    return net
