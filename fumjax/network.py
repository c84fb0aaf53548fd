"""Static network structure: neurons on a virtual 2-D grid, distance-biased sparse connectivity, CSR storage.

Building happens in numpy (vectorized, chunked over neurons so memory stays O(N*K)); the resulting
:class:`Network` holds jax arrays and is a registered pytree, so it can be passed into ``jax.jit``.

Determinism: every random quantity is drawn from a numpy ``Generator`` seeded by
``np.random.SeedSequence(seed, spawn_key=(stream, chunk_index))`` with *fixed* internal chunk sizes
(:data:`GRAPH_CHUNK_NEURONS`, :data:`WEIGHT_CHUNK_SYNAPSES`), so a built network is a pure function of the
constructor arguments (independent of ``n_workers`` and of the machine).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

# Fixed chunk sizes: part of the definition of the random streams (changing them changes the graphs).
GRAPH_CHUNK_NEURONS = 8192
WEIGHT_CHUNK_SYNAPSES = 1 << 24
# Rejection rounds per chunk before the remaining short rows fall back to exact Gumbel-top-k.
_MAX_REJECTION_ROUNDS = 8
# Bound on (rows x N) elements materialised at once by the Gumbel fallback.
_GUMBEL_BLOCK_ELEMENTS = 1 << 22
# Stream ids for SeedSequence spawn keys.
_STREAM_PARAMS, _STREAM_GRAPH, _STREAM_WEIGHTS = 0, 1, 2


def default_k(n: int) -> int:
    """Default number of presynaptic partners per neuron: max(1, min(round(0.05 n), 100, n - 1))."""
    return max(1, min(round(0.05 * n), 100, n - 1))


def grid_side(n: int) -> int:
    """Side length of the virtual square grid holding n neurons: ceil(sqrt(n))."""
    return max(1, math.isqrt(n - 1) + 1) if n > 0 else 0


def grid_positions(n: int) -> np.ndarray:
    """Grid coordinates of neurons 0..n-1: (n, 2) int32 columns (x, y) = (i % side, i // side)."""
    side = grid_side(n)
    i = np.arange(n, dtype=np.int64)
    return np.stack([i % side, i // side], axis=1).astype(np.int32)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(key)))


# --------------------------------------------------------------------------------------------------------
# Distance-biased graph sampling
# --------------------------------------------------------------------------------------------------------


def _ring_cdf(side: int, sigma: float) -> np.ndarray:
    """CDF over Chebyshev rings r = 1..side-1 with P(r) ∝ 8 r exp(-r/sigma): (side-1,) float64."""
    r = np.arange(1, max(side, 2), dtype=np.float64)
    w = 8.0 * r * np.exp(-(r - 1.0) / sigma)  # shifted exponent: same law, no underflow of the head
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


_GUIDE_SIZE = 1 << 12  # power of two so that floor(u * size) is exact


def _ring_guide(cdf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Guide table for inverse-CDF lookup: ring index at the lower/upper edge of each u-bucket, (G,) x2."""
    edges = np.arange(_GUIDE_SIZE + 1, dtype=np.float64) / _GUIDE_SIZE
    idx = np.minimum(np.searchsorted(cdf, edges, side="right"), cdf.shape[0] - 1).astype(np.int32)
    return idx[:-1].copy(), idx[1:].copy()


def _propose(
    rng: np.random.Generator,
    px: np.ndarray,
    py: np.ndarray,
    m: int,
    *,
    n: int,
    side: int,
    sigma: float,
    cdf: np.ndarray,
    guide: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """m accepted-or-rejected proposals for each of A neurons at (px, py): (A, m) int32 ids, -1 = rejected."""
    a = px.shape[0]
    lo, hi = guide
    u = rng.random((a, m))
    b = (u * lo.shape[0]).astype(np.int32)
    r = lo[b]  # guide table (Chen-Asau): exact inverse-CDF lookup, searchsorted only where ambiguous
    amb = np.flatnonzero(r != hi[b])
    if amb.size:
        r.ravel()[amb] = np.searchsorted(cdf, u.ravel()[amb], side="right")
    del u, b
    r += 1  # ring radius, 1..side-1
    two_r = 2 * r
    j = (rng.random((a, m)) * (4 * two_r)).astype(np.int32)
    np.minimum(j, 4 * two_r - 1, out=j)
    odd = j // two_r  # which side of the ring (0..3)
    t = j - odd * two_r - r  # position along that side, -r..r-1; the cell is at distance d = sqrt(r^2 + t^2)
    # accept w.p. exp(-(d - r)/sigma)  <=>  d - r < sigma * Exp(1) =: e  <=>  t^2 < e (2r + e)   (no sqrt/exp)
    e = rng.standard_exponential((a, m), dtype=np.float32)
    e *= np.float32(sigma)
    ok = np.square(t, dtype=np.float32) < e * (e + two_r.astype(np.float32))
    del e, j, two_r
    neg = odd >= 2
    odd &= 1
    odd = odd.astype(bool)
    # side 0: (t, -r); side 1: (r, t); side 2: (-t, r); side 3: (-r, -t)
    dx = np.where(odd, r, t)
    dy = np.where(odd, t, -r)
    np.negative(dx, out=dx, where=neg)
    np.negative(dy, out=dy, where=neg)
    del t, odd, neg, r
    dx += px[:, None]
    dy += py[:, None]
    ok &= (dx >= 0) & (dx < side) & (dy >= 0) & (dy < side)
    dy *= side
    dy += dx
    ok &= dy < n
    return np.where(ok, dy, -1)


def _first_occurrence(a: np.ndarray) -> np.ndarray:
    """Row-wise mask of first occurrences (in column order) of each value of a: (A, L) -> (A, L) bool."""
    n_col = a.shape[1]
    sh = max(1, (n_col - 1).bit_length())
    key = np.left_shift(
        a, sh, dtype=np.int64
    )  # (value, column) packed: one SIMD sort, stable by construction
    key |= np.arange(n_col, dtype=np.int64)
    key.sort(axis=1)
    v = key >> sh
    first = np.ones(key.shape, dtype=bool)
    np.not_equal(v[:, 1:], v[:, :-1], out=first[:, 1:])
    del v
    keep = np.empty_like(first)
    keep[np.arange(a.shape[0])[:, None], key & ((1 << sh) - 1)] = first
    return keep


def _gumbel_fill(
    rng: np.random.Generator,
    rows: np.ndarray,
    sel: np.ndarray,
    have: np.ndarray,
    *,
    n: int,
    side: int,
    sigma: float,
) -> None:
    """Complete rows of sel in place by exact successive sampling (Gumbel-top-k) over all valid cells.

    rows: (R,) neuron ids; sel: (R, K) int32 already-drawn ids (first have[i] valid); have: (R,) int.
    """
    k = sel.shape[1]
    cell = np.arange(n, dtype=np.int64)
    cx, cy = cell % side, cell // side
    block = max(1, _GUMBEL_BLOCK_ELEMENTS // n)
    for b0 in range(0, rows.shape[0], block):
        b1 = min(b0 + block, rows.shape[0])
        rr = rows[b0:b1].astype(np.int64)
        d = np.hypot(cx[None, :] - (rr % side)[:, None], cy[None, :] - (rr // side)[:, None])
        g = -d / sigma + rng.gumbel(size=d.shape)
        ri = np.arange(b1 - b0)
        g[ri, rr] = -np.inf
        cols = np.arange(k)
        taken = np.where(cols[None, :] < have[b0:b1, None], sel[b0:b1], -1)
        tr, tc = np.nonzero(taken >= 0)
        g[tr, taken[tr, tc]] = -np.inf
        order = np.argsort(-g, axis=1, kind="stable")[:, :k]
        shift = np.maximum(cols[None, :] - have[b0:b1, None], 0)
        fresh = np.take_along_axis(order, shift, axis=1)
        sel[b0:b1] = np.where(cols[None, :] < have[b0:b1, None], sel[b0:b1], fresh).astype(np.int32)
        have[b0:b1] = k


def _sample_chunk(
    chunk: int, n: int, k: int, sigma: float, side: int, cdf: np.ndarray, seed: int
) -> np.ndarray:
    """Presynaptic partners of neurons in chunk `chunk`, in draw order: (C, K) int32."""
    rng = _rng(seed, _STREAM_GRAPH, chunk)
    start = chunk * GRAPH_CHUNK_NEURONS
    stop = min(start + GRAPH_CHUNK_NEURONS, n)
    rows = np.arange(start, stop, dtype=np.int64)
    px, py = (rows % side).astype(np.int32), (rows // side).astype(np.int32)
    guide = _ring_guide(cdf)
    c = stop - start
    sel = np.full((c, k), -1, dtype=np.int32)
    have = np.zeros(c, dtype=np.int64)
    active = np.arange(c)
    yield_est = 0.5  # accepted distinct partners per proposal; first-round guess
    for _ in range(_MAX_REJECTION_ROUNDS):
        if active.size == 0:
            break
        need = k - have[active]
        m = int(math.ceil(1.3 * need.max() / max(yield_est, 0.02))) + 8
        m = min(m, 64 * k + 1024)
        cand = _propose(rng, px[active], py[active], m, n=n, side=side, sigma=sigma, cdf=cdf, guide=guide)
        comb = np.concatenate([sel[active], cand], axis=1)
        del cand
        keep = _first_occurrence(comb)
        keep &= comb >= 0
        cum = np.cumsum(keep, axis=1, dtype=np.int32)
        keep &= cum <= k
        rr, cc = np.nonzero(keep)
        newsel = np.full((active.size, k), -1, dtype=np.int32)
        newsel[rr, cum[rr, cc] - 1] = comb[rr, cc]
        got = np.minimum(cum[:, -1], k).astype(np.int64)
        yield_est = float(np.median((got - have[active]) / m))
        sel[active] = newsel
        have[active] = got
        active = active[got < k]
    if active.size:
        sub_sel, sub_have = sel[active], have[active].copy()
        _gumbel_fill(rng, rows[active], sub_sel, sub_have, n=n, side=side, sigma=sigma)
        sel[active] = sub_sel
    return sel


def _check_k(n_neurons: int, k_per_neuron: int) -> None:
    if n_neurons < 2:
        raise ValueError(f"n_neurons must be >= 2 to have any synapses, got {n_neurons}")
    if int(k_per_neuron) != k_per_neuron or not 1 <= k_per_neuron <= n_neurons - 1:
        raise ValueError(
            f"k_per_neuron must be an integer in [1, n_neurons - 1] = [1, {n_neurons - 1}], "
            f"got {k_per_neuron}"
        )


def sample_distance_graph(
    n_neurons: int,
    k_per_neuron: int,
    *,
    sigma_grid: float = 5.0,
    seed: int = 0,
    n_workers: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Distance-biased graph with in-degree exactly K: returns (pre, post), each (N*K,) int32, CSR order.

    Each neuron (as postsynaptic) draws K distinct presynaptic partners != itself, successively without
    replacement, with probability ∝ exp(-d / sigma_grid), d = Euclidean grid distance (grid units).
    Edges are sorted by pre, then post. Result depends only on (n_neurons, k_per_neuron, sigma_grid, seed);
    n_workers (threads) only changes speed.
    """
    pre, post, _ = _distance_graph(n_neurons, k_per_neuron, sigma_grid, seed, n_workers, with_in_syn=False)
    return pre, post


def _distance_graph(
    n_neurons: int, k_per_neuron: int, sigma_grid: float, seed: int, n_workers: int, *, with_in_syn: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """sample_distance_graph, optionally also returning in_syn (see _post_major_to_csr)."""
    _check_k(n_neurons, k_per_neuron)
    if not (np.isfinite(sigma_grid) and sigma_grid > 0):
        raise ValueError(f"sigma_grid must be finite and > 0, got {sigma_grid}")
    n, k = int(n_neurons), int(k_per_neuron)
    side = grid_side(n)
    cdf = _ring_cdf(side, float(sigma_grid))
    e = n * k
    pre_pm = np.empty(e, dtype=np.int32)  # post-major: edges of post p at [p*k, (p+1)*k)
    n_chunks = -(-n // GRAPH_CHUNK_NEURONS)

    def work(ci: int) -> None:
        s = ci * GRAPH_CHUNK_NEURONS
        pre_pm[s * k : min(s + GRAPH_CHUNK_NEURONS, n) * k] = _sample_chunk(
            ci, n, k, float(sigma_grid), side, cdf, seed
        ).ravel()

    if n_workers > 1 and n_chunks > 1:
        with ThreadPoolExecutor(max_workers=n_workers) as ex:
            list(ex.map(work, range(n_chunks)))
    else:
        for ci in range(n_chunks):
            work(ci)
    return _post_major_to_csr(pre_pm, n, k, with_in_syn=with_in_syn)


def _post_major_to_csr(
    pre_pm: np.ndarray, n: int, k: int, *, with_in_syn: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Stable counting sort of post-major edges (post p owns pre_pm[p*k:(p+1)*k]) by pre.

    Returns (pre, post) (E,) int32 in CSR order and, if with_in_syn, in_syn (E,): the CSR slots of each post
    neuron's K incoming synapses, ascending (= ascending pre), post-major.
    """
    e = pre_pm.shape[0]
    counts = np.zeros(n, dtype=np.int64)
    step = 1 << 24
    for a in range(0, e, step):
        counts += np.bincount(pre_pm[a : a + step], minlength=n)
    fill = np.zeros(n, dtype=np.int64)
    np.cumsum(counts[:-1], out=fill[1:])
    post = np.empty(e, dtype=np.int32)
    in_syn = np.empty(e, dtype=np.int64 if e >= 2**31 else np.int32) if with_in_syn else None
    posts_per_slice = max(1, step // k)
    for p0 in range(0, n, posts_per_slice):
        p1 = min(p0 + posts_per_slice, n)
        seg = pre_pm[p0 * k : p1 * k]
        sh = max(1, (seg.shape[0] - 1).bit_length())
        key = np.left_shift(seg, sh, dtype=np.int64)  # (pre, edge position) packed: stable sort by pre
        key |= np.arange(seg.shape[0], dtype=np.int64)
        key.sort()
        order = key & ((1 << sh) - 1)
        ps = (key >> sh).astype(np.int32)
        del key
        start = np.empty(ps.shape[0], dtype=bool)
        start[0] = True
        np.not_equal(ps[1:], ps[:-1], out=start[1:])
        pos = np.arange(ps.shape[0], dtype=np.int64)
        first = np.maximum.accumulate(np.where(start, pos, 0))
        slot = fill[ps] + (pos - first)
        post[slot] = (p0 + order // k).astype(np.int32)
        if in_syn is not None:
            local = np.empty(seg.shape[0], dtype=in_syn.dtype)
            local[order] = slot
            local = local.reshape(p1 - p0, k)
            local.sort(axis=1)
            in_syn[p0 * k : p1 * k] = local.ravel()
        heads = np.flatnonzero(start)
        fill[ps[heads]] += np.diff(np.append(heads, ps.shape[0]))
    del pre_pm
    pre = np.repeat(np.arange(n, dtype=np.int32), counts)
    return pre, post, in_syn


# --------------------------------------------------------------------------------------------------------
# Neuron and synapse parameters
# --------------------------------------------------------------------------------------------------------


def neuron_parameters(
    n_neurons: int,
    *,
    excitatory_fraction: float = 0.8,
    tau_mean_ms: float = 20.0,
    tau_std_ms: float = 2.0,
    tau_min_ms: float = 15.0,
    tau_max_ms: float = 25.0,
    v_th_mean_mV: float = -55.0,
    v_th_std_mV: float = 2.0,
    v_th_min_mV: float = -60.0,
    v_th_max_mV: float = -50.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-neuron (excitatory (N,) bool, tau_ms (N,) float32 ms, v_th_mV (N,) float32 mV).

    Exactly round(excitatory_fraction * N) excitatory neurons, chosen by a random permutation;
    tau ~ Normal(mean, std^2) clipped to [min, max]; same for v_th.
    """
    if not 0.0 <= excitatory_fraction <= 1.0:
        raise ValueError(f"excitatory_fraction must be in [0, 1], got {excitatory_fraction}")
    rng = _rng(seed, _STREAM_PARAMS)
    n = int(n_neurons)
    excitatory = np.zeros(n, dtype=bool)
    excitatory[rng.permutation(n)[: round(excitatory_fraction * n)]] = True
    tau = np.clip(rng.normal(tau_mean_ms, tau_std_ms, n), tau_min_ms, tau_max_ms).astype(np.float32)
    v_th = np.clip(rng.normal(v_th_mean_mV, v_th_std_mV, n), v_th_min_mV, v_th_max_mV).astype(np.float32)
    return excitatory, tau, v_th


def initial_weights(
    pre: np.ndarray,
    excitatory: np.ndarray,
    *,
    w_exc_max: float = 0.3,
    w_inh_min: float = -0.3,
    seed: int = 0,
) -> np.ndarray:
    """Initial weights (E,) float32: U[0, w_exc_max) if pre is excitatory, U[w_inh_min, 0) otherwise."""
    if not w_exc_max >= 0.0 or not w_inh_min <= 0.0:
        raise ValueError(f"need w_exc_max >= 0 and w_inh_min <= 0, got {w_exc_max}, {w_inh_min}")
    e = pre.shape[0]
    w = np.empty(e, dtype=np.float32)
    exc_max, inh_min = np.float32(w_exc_max), np.float32(w_inh_min)
    for ci, a in enumerate(range(0, e, WEIGHT_CHUNK_SYNAPSES)):
        b = min(a + WEIGHT_CHUNK_SYNAPSES, e)
        u = _rng(seed, _STREAM_WEIGHTS, ci).random(b - a, dtype=np.float32)
        w[a:b] = np.where(excitatory[pre[a:b]], u * exc_max, inh_min * (np.float32(1.0) - u))
    return w


# --------------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------------


def _as_1d(name: str, x: object) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def _check_int_ids(name: str, a: np.ndarray, n: int) -> np.ndarray:
    if a.size and not (np.issubdtype(a.dtype, np.integer) or np.array_equal(a, np.round(a))):
        raise ValueError(f"{name} must hold integer neuron ids")
    if a.size and (a.min() < 0 or a.max() >= n):
        raise ValueError(
            f"{name} ids must be in [0, {n}) (n = len(tau_ms)), got range [{a.min()}, {a.max()}]"
        )
    return a.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Network:
    """Static structure of a network of N LIF neurons with E synapses, CSR by presynaptic neuron."""

    row_ptr: Array  # (N+1,) int: synapses of pre neuron i are [row_ptr[i], row_ptr[i+1])
    pre: Array  # (E,) int32
    post: Array  # (E,) int32
    delay_steps: Array  # (E,) int32, >= 1
    w0: Array  # (E,) float32, initial weights in CSR order
    excitatory: Array  # (N,) bool
    tau_ms: Array  # (N,) float32, initial membrane time constants (ms)
    v_th_mV: Array  # (N,) float32, initial thresholds (mV)
    input_order: Array  # (E,) int32: CSR slot of the caller's k-th edge (arange for built graphs)
    in_ptr: Array  # (N+1,) int: incoming synapses of post neuron i are in_syn[in_ptr[i]:in_ptr[i+1]]
    in_syn: Array  # (E,) int32 CSR slots grouped by post neuron, ascending pre within each group
    excitatory_pre: Array  # (N_pre,) bool types of all neurons pre may name (= excitatory unless a part)
    plastic_pre: Array  # (N_pre,) bool: False = static presynaptic neuron (no STDP on its synapses)
    n_neurons: int  # static
    max_delay: int  # static, max(delay_steps) (1 if E == 0)

    # ---- properties ------------------------------------------------------------------------------------

    @property
    def n_synapses(self) -> int:
        """Number of synapses E."""
        return int(self.pre.shape[0])

    @property
    def n_excitatory(self) -> int:
        """Number of excitatory neurons."""
        return int(np.count_nonzero(np.asarray(self.excitatory)))

    @property
    def sign(self) -> Array:
        """STDP sign (N_pre,) float32 of each neuron pre may name: +1 excitatory, -1 inhibitory, 0 static.

        A presynaptic neuron with plastic_pre False gets 0: the STDP kernels give its synapses dw = 0.
        """
        s = jnp.where(self.excitatory_pre, 1.0, -1.0).astype(jnp.float32)
        return jnp.where(self.plastic_pre, s, jnp.zeros((), jnp.float32))

    @property
    def n_pre(self) -> int:
        """Number of neurons `pre` ids range over: N for a whole network, all N_global for one part of it."""
        return int(self.excitatory_pre.shape[0])

    @property
    def nbytes(self) -> dict[str, int]:
        """Bytes held by each array field: {name: bytes}."""
        return {f: int(getattr(self, f).nbytes) for f in _DATA_FIELDS}

    def to_input_order(self, values_csr: Array) -> Array:
        """Per-synapse values (E,) in CSR order -> (E,) in the caller's original edge order."""
        return jnp.asarray(values_csr)[self.input_order]

    # ---- constructors ----------------------------------------------------------------------------------

    @classmethod
    def _from_csr_numpy(
        cls,
        pre: np.ndarray,
        post: np.ndarray,
        w0: np.ndarray,
        delay_steps: np.ndarray,
        excitatory: np.ndarray,
        tau_ms: np.ndarray,
        v_th_mV: np.ndarray,
        input_order: np.ndarray,
        excitatory_pre: np.ndarray | None = None,
        plastic_pre: np.ndarray | None = None,
    ) -> Network:
        """excitatory_pre: (N_pre,) types of the neurons pre names when this is one part of a larger network
        (pre then holds global ids and row_ptr has N_pre + 1 entries); default: the network itself."""
        n = int(tau_ms.shape[0])
        n_pre = n if excitatory_pre is None else int(excitatory_pre.shape[0])
        e = int(pre.shape[0])
        counts = np.bincount(pre, minlength=n_pre) if e else np.zeros(n_pre, dtype=np.int64)
        row_ptr = np.zeros(n_pre + 1, dtype=np.int64)
        np.cumsum(counts, out=row_ptr[1:])
        row_ptr = row_ptr.astype(np.int64 if e >= 2**31 else np.int32)
        in_counts = np.bincount(post, minlength=n) if e else np.zeros(n, dtype=np.int64)
        in_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(in_counts, out=in_ptr[1:])
        # CSR slots ascend with pre, so a stable sort by post keeps pre ascending within each post group
        in_syn = np.argsort(post, kind="stable").astype(np.int64 if e >= 2**31 else np.int32)
        exc_j = jnp.asarray(excitatory.astype(bool, copy=False))
        return cls(
            row_ptr=jnp.asarray(row_ptr),
            pre=jnp.asarray(pre.astype(np.int32, copy=False)),
            post=jnp.asarray(post.astype(np.int32, copy=False)),
            delay_steps=jnp.asarray(delay_steps.astype(np.int32, copy=False)),
            w0=jnp.asarray(w0.astype(np.float32, copy=False)),
            excitatory=exc_j,
            tau_ms=jnp.asarray(tau_ms.astype(np.float32, copy=False)),
            v_th_mV=jnp.asarray(v_th_mV.astype(np.float32, copy=False)),
            input_order=jnp.asarray(input_order),
            in_ptr=jnp.asarray(in_ptr.astype(row_ptr.dtype)),
            in_syn=jnp.asarray(in_syn),
            excitatory_pre=exc_j
            if excitatory_pre is None
            else jnp.asarray(excitatory_pre.astype(bool, copy=False)),
            plastic_pre=jnp.ones((n_pre,), bool)
            if plastic_pre is None
            else jnp.asarray(np.asarray(plastic_pre).astype(bool, copy=False)),
            n_neurons=n,
            max_delay=int(delay_steps.max()) if e else 1,
        )

    @classmethod
    def from_arrays(
        cls,
        pre: Sequence[int] | np.ndarray,
        post: Sequence[int] | np.ndarray,
        weights: Sequence[float] | np.ndarray,
        tau_ms: Sequence[float] | np.ndarray,
        v_th_mV: Sequence[float] | np.ndarray,
        excitatory: Sequence[bool] | np.ndarray,
        *,
        delay_steps: Sequence[int] | np.ndarray | None = None,
        plastic_pre: Sequence[bool] | np.ndarray | None = None,
    ) -> Network:
        """Network from E edges (pre, post, weights (E,)) and N neurons (tau_ms, v_th_mV, excitatory).

        Any edges are allowed (self-connections, duplicates); ids must be in [0, N), N = len(tau_ms).
        Edges are reordered to CSR (stable by pre, then post); ``to_input_order(w0)`` gives back the weights
        (as float32) in the given order. delay_steps: (E,) integers >= 1, default all 1.
        plastic_pre: (N,) bool, default all True; False makes every outgoing synapse of that neuron static
        (STDP gives it dw = 0, so neither eligibility nor reward changes its weight).
        """
        tau = _as_1d("tau_ms", tau_ms).astype(np.float64)
        n = tau.shape[0]
        if n == 0:
            raise ValueError("tau_ms must have at least one neuron")
        v_th = _as_1d("v_th_mV", v_th_mV).astype(np.float64)
        exc = _as_1d("excitatory", excitatory)
        for name, arr in (("v_th_mV", v_th), ("excitatory", exc)):
            if arr.shape[0] != n:
                raise ValueError(f"{name} has length {arr.shape[0]}, expected N = len(tau_ms) = {n}")
        if not np.all(np.isfinite(tau)):
            raise ValueError("tau_ms must be finite")
        if not np.all(tau > 0):
            raise ValueError("tau_ms must be > 0")
        if not np.all(np.isfinite(v_th)):
            raise ValueError("v_th_mV must be finite")
        if exc.dtype != bool and not np.all((exc == 0) | (exc == 1)):
            raise ValueError("excitatory must be boolean (or 0/1)")
        pre_a = _as_1d("pre", pre)
        post_a = _as_1d("post", post)
        w = _as_1d("weights", weights)
        e = pre_a.shape[0]
        for name, arr in (("post", post_a), ("weights", w)):
            if arr.shape[0] != e:
                raise ValueError(f"{name} has length {arr.shape[0]}, expected len(pre) = {e}")
        pre_a = _check_int_ids("pre", pre_a, n)
        post_a = _check_int_ids("post", post_a, n)
        if e and not np.issubdtype(w.dtype, np.number):
            raise ValueError("weights must be numeric")
        w = w.astype(np.float32)
        if not np.all(np.isfinite(w)):
            raise ValueError("weights must be finite (no NaN/inf)")
        if delay_steps is None:
            d = np.ones(e, dtype=np.int32)
        else:
            d = _as_1d("delay_steps", delay_steps)
            if d.shape[0] != e:
                raise ValueError(f"delay_steps has length {d.shape[0]}, expected len(pre) = {e}")
            if e and not (np.issubdtype(d.dtype, np.integer) or np.array_equal(d, np.round(d))):
                raise ValueError("delay_steps must be integers")
            if e and d.min() < 1:
                raise ValueError(f"delay_steps must be >= 1, got min {d.min()}")
            if e and d.max() > np.iinfo(np.int32).max:
                raise ValueError("delay_steps too large for int32")
            d = d.astype(np.int32)
        if plastic_pre is not None:
            plastic_pre = _as_1d("plastic_pre", plastic_pre)
            if plastic_pre.shape[0] != n:
                raise ValueError(
                    f"plastic_pre has length {plastic_pre.shape[0]}, expected N = len(tau_ms) = {n}"
                )
            if plastic_pre.dtype != bool and not np.all((plastic_pre == 0) | (plastic_pre == 1)):
                raise ValueError("plastic_pre must be boolean (or 0/1)")
        perm = np.lexsort((post_a, pre_a))  # stable: by pre, then post, then input position
        idx_dtype = np.int64 if e >= 2**31 else np.int32
        input_order = np.empty(e, dtype=idx_dtype)
        input_order[perm] = np.arange(e, dtype=idx_dtype)
        return cls._from_csr_numpy(
            pre_a[perm],
            post_a[perm],
            w[perm],
            d[perm],
            exc.astype(bool),
            tau,
            v_th,
            input_order,
            plastic_pre=plastic_pre,
        )

    @classmethod
    def distance_biased(
        cls,
        n_neurons: int,
        *,
        k_per_neuron: int | None = None,
        sigma_grid: float = 5.0,
        excitatory_fraction: float = 0.8,
        w_exc_max: float = 0.3,
        w_inh_min: float = -0.3,
        tau_mean_ms: float = 20.0,
        tau_std_ms: float = 2.0,
        tau_min_ms: float = 15.0,
        tau_max_ms: float = 25.0,
        v_th_mean_mV: float = -55.0,
        v_th_std_mV: float = 2.0,
        v_th_min_mV: float = -60.0,
        v_th_max_mV: float = -50.0,
        delay_steps: int = 1,
        seed: int = 0,
        n_workers: int = 2,
    ) -> Network:
        """Random N-neuron network, in-degree exactly K, partners ∝ exp(-d/sigma_grid) on the neuron grid.

        k_per_neuron defaults to default_k(N). delay_steps: one integer >= 1 for all synapses.
        The result is a pure function of the arguments (n_workers only changes speed).
        """
        k = default_k(n_neurons) if k_per_neuron is None else k_per_neuron
        _check_k(n_neurons, k)
        if int(delay_steps) != delay_steps or delay_steps < 1:
            raise ValueError(f"delay_steps must be an integer >= 1, got {delay_steps}")
        pre, post, in_syn = _distance_graph(n_neurons, k, sigma_grid, seed, n_workers, with_in_syn=True)
        exc, tau, v_th = neuron_parameters(
            n_neurons,
            excitatory_fraction=excitatory_fraction,
            tau_mean_ms=tau_mean_ms,
            tau_std_ms=tau_std_ms,
            tau_min_ms=tau_min_ms,
            tau_max_ms=tau_max_ms,
            v_th_mean_mV=v_th_mean_mV,
            v_th_std_mV=v_th_std_mV,
            v_th_min_mV=v_th_min_mV,
            v_th_max_mV=v_th_max_mV,
            seed=seed,
        )
        w0 = initial_weights(pre, exc, w_exc_max=w_exc_max, w_inh_min=w_inh_min, seed=seed)
        e = int(pre.shape[0])
        row_ptr = np.zeros(n_neurons + 1, dtype=np.int64)
        np.cumsum(np.bincount(pre, minlength=n_neurons), out=row_ptr[1:])
        idx_dtype = np.int64 if e >= 2**31 else np.int32
        # Convert one array at a time and drop the numpy copy, so peak memory stays ~ numpy + one array.
        pre_j = jnp.asarray(pre)
        del pre
        post_j = jnp.asarray(post)
        del post
        w0_j = jnp.asarray(w0)
        del w0
        in_syn_j = jnp.asarray(in_syn)
        del in_syn
        return cls(
            row_ptr=jnp.asarray(row_ptr.astype(idx_dtype)),
            pre=pre_j,
            post=post_j,
            delay_steps=jnp.full(e, int(delay_steps), dtype=jnp.int32),
            w0=w0_j,
            excitatory=(exc_j := jnp.asarray(exc)),
            tau_ms=jnp.asarray(tau),
            v_th_mV=jnp.asarray(v_th),
            input_order=jnp.arange(e, dtype=idx_dtype),
            in_ptr=jnp.arange(0, e + 1, k, dtype=idx_dtype),  # in-degree is exactly K
            in_syn=in_syn_j,
            excitatory_pre=exc_j,
            plastic_pre=jnp.ones((n_neurons,), bool),
            n_neurons=int(n_neurons),
            max_delay=int(delay_steps),
        )


_DATA_FIELDS = (
    "row_ptr",
    "pre",
    "post",
    "delay_steps",
    "w0",
    "excitatory",
    "tau_ms",
    "v_th_mV",
    "input_order",
    "in_ptr",
    "in_syn",
    "excitatory_pre",
    "plastic_pre",
)
jax.tree_util.register_dataclass(
    Network, data_fields=list(_DATA_FIELDS), meta_fields=["n_neurons", "max_delay"]
)
