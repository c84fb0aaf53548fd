"""Tests for fumjax.network: graph law, CSR invariants, parameters, determinism, from_arrays validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import gammaincc

from fumjax import network as nw
from fumjax.network import Network, default_k, grid_positions, sample_distance_graph


def _dist(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    pos = grid_positions(n).astype(np.float64)
    return np.hypot(*(pos[a] - pos[b]).T)


def _chi2_pvalue(observed: np.ndarray, expected: np.ndarray) -> float:
    stat = float(np.sum((observed - expected) ** 2 / expected))
    return float(gammaincc((observed.size - 1) / 2.0, stat / 2.0))


def _reference_rows(n: int, k: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Independent exact reference: Gumbel-top-k over all cells, (N, K) presynaptic ids per post neuron."""
    pos = grid_positions(n).astype(np.float64)
    d = np.hypot(pos[:, None, 0] - pos[None, :, 0], pos[:, None, 1] - pos[None, :, 1])
    g = -d / sigma + rng.gumbel(size=d.shape)
    np.fill_diagonal(g, -np.inf)
    return np.argsort(-g, axis=1)[:, :k]


def _check_structure(net: Network, k: int) -> None:
    n, e = net.n_neurons, net.n_synapses
    pre, post = np.asarray(net.pre), np.asarray(net.post)
    row_ptr = np.asarray(net.row_ptr)
    assert e == n * k
    assert row_ptr.shape == (n + 1,) and row_ptr[0] == 0 and row_ptr[-1] == e
    assert np.all(np.diff(row_ptr) >= 0)
    np.testing.assert_array_equal(np.repeat(np.arange(n), np.diff(row_ptr)), pre)
    key = pre.astype(np.int64) * n + post
    assert np.all(np.diff(key) > 0)  # sorted by (pre, post) and no duplicate pairs
    assert not np.any(pre == post)
    np.testing.assert_array_equal(np.bincount(post, minlength=n), np.full(n, k))


def test_default_k() -> None:
    assert [default_k(n) for n in (2, 10, 100, 1000, 10**6)] == [1, 1, 5, 50, 100]


def test_grid_positions() -> None:
    pos = grid_positions(10)  # side 4
    assert pos.shape == (10, 2) and pos.dtype == np.int32
    np.testing.assert_array_equal(pos[[0, 3, 4, 9]], [[0, 0], [3, 0], [0, 1], [1, 2]])


def test_distance_biased_structure_and_parameters() -> None:
    n, k = 2500, 50
    net = Network.distance_biased(n, k_per_neuron=k, seed=3)
    _check_structure(net, k)
    exc = np.asarray(net.excitatory)
    assert net.n_excitatory == exc.sum() == round(0.8 * n) == 2000
    np.testing.assert_array_equal(np.asarray(net.sign), np.where(exc, 1.0, -1.0).astype(np.float32))
    w = np.asarray(net.w0)
    pre_exc = exc[np.asarray(net.pre)]
    assert w.dtype == np.float32
    assert np.all((w[pre_exc] >= 0) & (w[pre_exc] <= 0.3))
    assert np.all((w[~pre_exc] < 0) & (w[~pre_exc] >= -0.3))
    assert abs(w[pre_exc].mean() - 0.15) < 0.005 and abs(w[~pre_exc].mean() + 0.15) < 0.005
    tau, v_th = np.asarray(net.tau_ms), np.asarray(net.v_th_mV)
    assert np.all((tau >= 15) & (tau <= 25)) and abs(tau.mean() - 20) < 0.2 and abs(tau.std() - 2) < 0.2
    assert np.all((v_th >= -60) & (v_th <= -50)) and abs(v_th.mean() + 55) < 0.2
    assert np.all(np.asarray(net.delay_steps) == 1) and net.max_delay == 1
    np.testing.assert_array_equal(np.asarray(net.input_order), np.arange(n * k))
    np.testing.assert_array_equal(np.asarray(net.to_input_order(net.w0)), w)
    assert net.nbytes["pre"] == 4 * n * k and set(net.nbytes) >= {"row_ptr", "w0", "input_order"}


def test_single_draw_distance_law_chi_square() -> None:
    """K=1: each neuron's partner has p(c) ∝ exp(-d/σ) over valid cells; compare histogram of d exactly."""
    n, sigma = 10000, 5.0
    pre, post = sample_distance_graph(n, 1, sigma_grid=sigma, seed=11)
    pos = grid_positions(n).astype(np.int64)
    max_d2 = 2 * int(pos.max()) ** 2
    w_of_d2 = np.exp(-np.sqrt(np.arange(max_d2 + 1)) / sigma)
    w_of_d2[0] = 0.0  # no self-connection
    # Exact law of d^2 for one draw, summed over all N post neurons (enumerate every valid cell).
    expected_d2 = np.zeros(max_d2 + 1)
    for a in range(0, n, 1000):
        d2 = ((pos[a : a + 1000, None, :] - pos[None, :, :]) ** 2).sum(axis=2)
        w = w_of_d2[d2]
        w /= w.sum(axis=1, keepdims=True)
        expected_d2 += np.bincount(d2.ravel(), w.ravel(), max_d2 + 1)
    assert expected_d2.sum() == pytest.approx(n)
    # Merge consecutive d^2 values into bins of >= ~40 expected counts.
    group = (np.cumsum(expected_d2) - expected_d2) // 40.0
    group = np.minimum(group, group[-1] - 1)  # fold the (small) last group into the previous one
    group = np.unique(group, return_inverse=True)[1]  # consecutive ids (a heavy d^2 value may skip ids)
    expected = np.bincount(group, expected_d2)

    def observed_bins(pre: np.ndarray, post: np.ndarray) -> np.ndarray:
        d2 = ((pos[pre] - pos[post]) ** 2).sum(axis=1)
        return np.bincount(group[d2], minlength=expected.size).astype(np.float64)

    assert expected.size > 100 and expected.min() > 10
    p = _chi2_pvalue(observed_bins(pre, post), expected)
    assert p > 1e-3, p
    # The same histogram under a wrong sigma must be rejected (the test has power).
    assert _chi2_pvalue(observed_bins(*sample_distance_graph(n, 1, sigma_grid=4.5, seed=11)), expected) < 1e-6


def _paired_mean_distance_z(n: int, k: int, sigma: float, seeds: range) -> float:
    """z-score of per-neuron mean partner distance: ours minus an independent Gumbel-top-k reference."""
    pos_rows = np.arange(n)
    diffs = []
    for s in seeds:
        pre, post = sample_distance_graph(n, k, sigma_grid=sigma, seed=s)
        ours = np.bincount(post, _dist(n, pre, post), n) / k
        ref_pre = _reference_rows(n, k, sigma, np.random.default_rng(1000 + s))
        ref = _dist(n, ref_pre.ravel(), np.repeat(pos_rows, k)).reshape(n, k).mean(axis=1)
        diffs.append(ours - ref)
    dd = np.concatenate(diffs)
    return float(dd.mean() / (dd.std(ddof=1) / np.sqrt(dd.size)))


def test_mean_distance_matches_exact_sampling_without_replacement() -> None:
    z = _paired_mean_distance_z(900, 50, 5.0, range(4))
    assert abs(z) < 4.0, z


def test_gumbel_fallback_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force every row (after one rejection round) through the Gumbel fallback; the law must not change."""
    monkeypatch.setattr(nw, "_MAX_REJECTION_ROUNDS", 1)
    calls = []
    orig = nw._gumbel_fill

    def spy(*args: object, **kwargs: object) -> None:
        calls.append(len(args[1]))  # type: ignore[arg-type]
        orig(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(nw, "_gumbel_fill", spy)
    z = _paired_mean_distance_z(400, 120, 3.0, range(4))
    assert sum(calls) > 0
    assert abs(z) < 4.0, z


def test_determinism() -> None:
    a = Network.distance_biased(3000, k_per_neuron=20, seed=5)
    b = Network.distance_biased(3000, k_per_neuron=20, seed=5, n_workers=1)
    c = Network.distance_biased(3000, k_per_neuron=20, seed=6)
    for f in nw._DATA_FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)))
    assert not np.array_equal(np.asarray(a.post), np.asarray(c.post))
    assert not np.array_equal(np.asarray(a.w0), np.asarray(c.w0))
    assert not np.array_equal(np.asarray(a.tau_ms), np.asarray(c.tau_ms))


def test_multi_chunk_graph() -> None:
    n, k = nw.GRAPH_CHUNK_NEURONS * 2 + 123, 4
    pre, post = sample_distance_graph(n, k, seed=1)
    assert pre.dtype == post.dtype == np.int32
    key = pre.astype(np.int64) * n + post
    assert np.all(np.diff(key) > 0) and not np.any(pre == post)
    np.testing.assert_array_equal(np.bincount(post, minlength=n), np.full(n, k))
    assert 8.0 < _dist(n, pre, post).mean() < 10.5  # p(d) ~ d exp(-d/5) on the plane: mean 2 sigma = 10


@pytest.mark.parametrize(("n", "k"), [(2, 1), (10, None), (10, 9), (37, 36), (50, 30)])
def test_small_networks(n: int, k: int | None) -> None:
    net = Network.distance_biased(n, k_per_neuron=k, seed=0)
    kk = default_k(n) if k is None else k
    _check_structure(net, kk)
    if kk == n - 1:  # complete graph
        assert net.n_synapses == n * (n - 1)


@pytest.mark.parametrize("k", [0, 10, -1, 2.5])
def test_bad_k(k: float) -> None:
    with pytest.raises(ValueError, match="k_per_neuron.*\\[1, 9\\]"):
        Network.distance_biased(10, k_per_neuron=k)  # type: ignore[arg-type]


def test_jit_pytree() -> None:
    net = Network.distance_biased(100, k_per_neuron=5, seed=0)

    @jax.jit
    def total_input(net: Network, spikes: jax.Array) -> jax.Array:
        return jnp.zeros(net.n_neurons).at[net.post].add(net.w0 * spikes[net.pre])

    out = total_input(net, jnp.ones(100))
    expected = np.bincount(np.asarray(net.post), np.asarray(net.w0, dtype=np.float64), 100)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)
    leaves, treedef = jax.tree_util.tree_flatten(net)
    assert len(leaves) == len(nw._DATA_FIELDS)
    assert jax.tree_util.tree_unflatten(treedef, leaves).max_delay == 1


def _explicit(rng: np.random.Generator, n: int = 20, e: int = 200) -> dict[str, np.ndarray]:
    return dict(
        pre=rng.integers(0, n, e),
        post=rng.integers(0, n, e),
        weights=rng.normal(size=e).astype(np.float32),
        tau_ms=rng.uniform(10, 30, n),
        v_th_mV=rng.uniform(-60, -50, n),
        excitatory=rng.random(n) < 0.8,
    )


def test_from_arrays_round_trip() -> None:
    rng = np.random.default_rng(0)
    a = _explicit(rng)
    delays = rng.integers(1, 6, a["pre"].size)
    net = Network.from_arrays(**a, delay_steps=delays)
    pre, post, w = np.asarray(net.pre), np.asarray(net.post), np.asarray(net.w0)
    np.testing.assert_array_equal(np.asarray(net.to_input_order(net.w0)), a["weights"])
    np.testing.assert_array_equal(np.asarray(net.to_input_order(net.delay_steps)), delays)
    np.testing.assert_array_equal(np.asarray(net.to_input_order(net.pre)), a["pre"])
    np.testing.assert_array_equal(np.asarray(net.to_input_order(net.post)), a["post"])
    key = pre.astype(np.int64) * 20 + post
    assert np.all(np.diff(key) >= 0)  # CSR order (duplicates allowed)
    row_ptr = np.asarray(net.row_ptr)
    np.testing.assert_array_equal(
        row_ptr, np.concatenate([[0], np.cumsum(np.bincount(a["pre"], minlength=20))])
    )
    assert net.max_delay == delays.max() and net.n_neurons == 20 and net.n_synapses == 200
    ordered = sorted(zip(a["pre"], a["post"], range(200), strict=True))
    np.testing.assert_array_equal(w, a["weights"][[i for _, _, i in ordered]])


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        ("post", lambda a: a.update(post=a["post"][:-1])),
        ("weights", lambda a: a.update(weights=a["weights"][:-1])),
        ("pre", lambda a: a["pre"].__setitem__(3, 20)),
        ("post", lambda a: a["post"].__setitem__(0, -1)),
        ("weights", lambda a: a["weights"].__setitem__(5, np.nan)),
        ("tau_ms", lambda a: a["tau_ms"].__setitem__(2, 0.0)),
        ("tau_ms", lambda a: a["tau_ms"].__setitem__(2, np.inf)),
        ("v_th_mV", lambda a: a["v_th_mV"].__setitem__(1, np.nan)),
        ("v_th_mV", lambda a: a.update(v_th_mV=a["v_th_mV"][:-1])),
        ("excitatory", lambda a: a.update(excitatory=a["excitatory"][:-1])),
        ("pre", lambda a: a.update(pre=a["pre"].reshape(10, 20))),
        ("delay_steps", lambda a: a.update(delay_steps=np.zeros(200, np.int64))),
        ("delay_steps", lambda a: a.update(delay_steps=np.full(200, 1.5))),
        ("delay_steps", lambda a: a.update(delay_steps=np.ones(199, np.int64))),
    ],
)
def test_from_arrays_rejects_bad_input(name: str, mutate: object) -> None:
    a: dict[str, np.ndarray] = _explicit(np.random.default_rng(1))
    mutate(a)  # type: ignore[operator]
    with pytest.raises(ValueError, match=name):
        Network.from_arrays(**a)


def test_incoming_index_matches_generic_path() -> None:
    """distance_biased in_ptr/in_syn (streamed) equal the from_arrays (argsort) ones."""
    n = nw.GRAPH_CHUNK_NEURONS + 500
    net = Network.distance_biased(n, k_per_neuron=7, seed=2)
    ref = Network.from_arrays(net.pre, net.post, net.w0, net.tau_ms, net.v_th_mV, net.excitatory)
    np.testing.assert_array_equal(np.asarray(net.in_ptr), np.asarray(ref.in_ptr))
    np.testing.assert_array_equal(np.asarray(net.in_syn), np.asarray(ref.in_syn))
    in_syn, post, pre = np.asarray(net.in_syn), np.asarray(net.post), np.asarray(net.pre)
    np.testing.assert_array_equal(post[in_syn], np.repeat(np.arange(n), 7))
    assert np.all(np.diff(pre[in_syn].reshape(n, 7), axis=1) > 0)
