"""Golden test of the whole-run fused kernel (`fused.run_steps`, FFI target `fumjax_run_steps`).

`dynamics._simulate` with backend="fused" runs all T steps in one C++ call; with backend="reference" it is
the jitted jnp scan. The two must agree exactly: identical spike rasters and every state field equal
(value equality, i.e. np.array_equal; the kernel reproduces XLA:CPU's FMA contractions, see
cpp/run_steps_compute.h). The one representational difference allowed by value equality is the sign of a
zero: the reference adds +-0 to every untouched eligibility entry each step, the kernel skips them, so an
entry that is exactly -0.0 may read +0.0 in one and -0.0 in the other.

Every case runs a fixed seed and a fresh random one; the fresh seed is printed in the failure message
(rerun with FUMJAX_GOLDEN_SEED=<seed> to reproduce).
"""

from __future__ import annotations

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden_util import fresh_seed, x64
from jax import lax

import fumjax
from fumjax import FumConfig, Network
from fumjax.dynamics import _simulate, background_current
from fumjax.kernels import fused, fused_ops

pytestmark = pytest.mark.skipif(not fused.available(), reason="fumjax._core not built")

FIXED_SEED = 20240611
FIELDS = [f.name for f in dataclasses.fields(fumjax.State)]


def _network(n: int, exc: float, delays: str, seed: int) -> Network:
    """Distance-biased network; 'mixed' delays rebuild it through from_arrays with random delays 1..4 plus
    5% extra random edges (self-connections and duplicates allowed)."""
    net = Network.distance_biased(n, excitatory_fraction=exc, seed=seed % 2**31)
    if delays == "one":
        return net
    rng = np.random.default_rng(seed)
    pre, post, w = (np.asarray(a) for a in (net.pre, net.post, net.w0))
    excitatory = np.asarray(net.excitatory)
    m = max(1, pre.shape[0] // 20)
    pre_x = rng.integers(0, n, m)
    post_x = rng.integers(0, n, m)
    w_x = np.where(excitatory[pre_x], rng.uniform(0, 0.3, m), rng.uniform(-0.3, 0, m))
    pre, post, w = np.concatenate([pre, pre_x]), np.concatenate([post, post_x]), np.concatenate([w, w_x])
    d = rng.integers(1, 5, pre.shape[0])
    d[0] = 4  # max_delay is static: keep it 4 for every seed (no recompiles)
    return Network.from_arrays(
        pre, post, w, np.asarray(net.tau_ms), np.asarray(net.v_th_mV), excitatory, delay_steps=d
    )


def _drive(n: int, t: int, seed: int, dtype, scale: float = 1.0) -> jax.Array:
    """Poisson input, per-neuron rate spread so firing rates span ~0-50 Hz: (T, N) mV."""
    rng = np.random.default_rng(seed + 1)
    lam = rng.uniform(0.08, 0.35, n) * scale
    return jnp.asarray(2.25 * rng.poisson(lam, (t, n)), dtype)


RTOL = 1e-5
# Weights/eligibility stored in 16 bits: each update ends in one rounding to the storage type, so a single
# differently rounded intermediate (e.g. an FMA placed differently by another processor's XLA build) moves
# a stored value by one unit in the last place: 2^-10 relative for float16 (10 stored significand bits),
# 2^-7 for bfloat16 (7 bits). On this host the kernel matches the reference exactly for both.
RTOL_STORAGE = {np.dtype(jnp.float16): 2.0**-10, np.dtype(jnp.bfloat16): 2.0**-7}


def _assert_same(ref, got, spikes_ref, spikes_got, msg: str) -> None:
    s_ref, s_got = np.asarray(spikes_ref), np.asarray(spikes_got)
    assert s_ref.dtype == s_got.dtype == np.uint8 and s_ref.shape == s_got.shape, msg
    if not np.array_equal(s_ref, s_got):
        t_bad = np.nonzero((s_ref != s_got).reshape(s_ref.shape[0], -1).any(1))[0]
        pytest.fail(f"{msg}: spike rasters differ first at step {t_bad[0]} ({t_bad.size} steps differ)")
    for name in FIELDS:
        a, b = np.asarray(getattr(ref, name)), np.asarray(getattr(got, name))
        assert a.dtype == b.dtype and a.shape == b.shape, (msg, name, a.dtype, b.dtype, a.shape, b.shape)
        if a.dtype in RTOL_STORAGE:
            rtol = RTOL_STORAGE[a.dtype]
            a, b = a.astype(np.float32), b.astype(np.float32)
            close = np.isclose(a, b, rtol=rtol, atol=rtol * float(np.abs(a).max(initial=0.0)) * 1e-2)
        elif np.issubdtype(a.dtype, np.floating):
            # Same rasters are exact; float state may differ in the last bits where XLA's CPU code generation
            # (FMA contraction, vector width) differs by processor: the bound is 1e-5 relative.
            close = np.isclose(a, b, rtol=RTOL, atol=RTOL * float(np.abs(a).max(initial=0.0)) * 1e-2)
        else:
            close = a == b
        if not np.all(close):
            bad = np.flatnonzero(~np.asarray(close).ravel())
            pytest.fail(
                f"{msg}: state.{name} differs in {bad.size} entries, e.g. [{bad[0]}] "
                f"ref={a.ravel()[bad[0]]!r} fused={b.ravel()[bad[0]]!r}"
            )


def _rate_hz(spikes, dt_ms: float = 1.0) -> float:
    return float(np.asarray(spikes).mean() * 1000.0 / dt_ms)


def _run_fused(state, net, i_ext, cfg, mode, threads):
    """fused.run_steps under jit with an explicit kernel thread count: (state, spikes)."""
    return jax.jit(lambda s, i: fused.run_steps(s, net, i, cfg, mode, threads=threads))(state, i_ext)


def _run_both(net, cfg, mode, i_ext, state=None):
    state = fumjax.init_state(net, cfg) if state is None else state
    ref = _simulate(state, net, i_ext, cfg, mode, "reference")
    got = _simulate(state, net, i_ext, cfg, mode, "fused")
    return ref, got


def test_registered():
    assert "run_steps" in fused.OPS and "run_steps" in fused_ops()
    fused._register()
    assert fused.RUN_STEPS_TARGET == "fumjax_run_steps"


# (n, excitatory fraction, delays, modes, refractory steps, gamma, T, drive scale)
CASES = [
    (50, 0.8, "one", ("off", "stdp", "rstdp"), 0, 0.95, 400, 1.0),
    (300, 0.5, "mixed", ("off", "stdp", "rstdp"), 0, 0.95, 300, 1.0),
    (1000, 1.0, "one", ("stdp", "rstdp"), 0, 0.95, 200, 0.85),  # all excitatory: runaway above ~0.95
    (300, 0.8, "mixed", ("rstdp",), 3, 0.8, 300, 1.0),  # refractory; K = 41 < T: renormalizes mid-call
    # T >= 1000: indices checked once per call, learning in-list, vectorized rows (float32, D = 1)
    (200, 0.8, "one", ("off", "stdp", "rstdp"), 2, 0.95, 1000, 1.0),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[0]}-exc{c[1]}-{c[2]}-ref{c[4]}-g{c[5]}")
def test_golden_float32(case):
    n, exc, delays, modes, refractory, gamma, t, scale = case
    cfg = FumConfig().replace(
        neuron={"n_neurons": n, "refractory_steps": refractory}, plasticity={"gamma": gamma}
    )
    for seed in (FIXED_SEED, fresh_seed()):
        net = _network(n, exc, delays, seed)
        i_ext = _drive(n, t, seed, jnp.float32, scale)
        for mode in modes:
            msg = f"n={n} exc={exc} delays={delays} refractory={refractory} mode={mode} seed={seed}"
            (ref, s_ref), (got, s_got) = _run_both(net, cfg, mode, i_ext)
            assert 2.0 < _rate_hz(s_ref) < 60.0, (msg, _rate_hz(s_ref))
            _assert_same(ref, got, s_ref, s_got, msg)


@pytest.mark.parametrize("mode", ["stdp", "rstdp"])
def test_golden_float64(mode):
    with x64():
        cfg = FumConfig().replace(neuron={"n_neurons": 300}, run={"dtype": "float64"})
        for seed in (FIXED_SEED, fresh_seed()):
            net = _network(300, 0.8, "mixed", seed)
            i_ext = _drive(300, 300, seed, jnp.float64)
            (ref, s_ref), (got, s_got) = _run_both(net, cfg, mode, i_ext)
            assert got.v_mV.dtype == jnp.float64 and got.w.dtype == jnp.float64
            _assert_same(ref, got, s_ref, s_got, f"float64 mode={mode} seed={seed}")


@functools.partial(jax.jit, static_argnames=("cfg", "mode", "backend", "n_windows"))
def _windows(state, net, cfg, mode, backend, n_windows):
    """n_windows windows under lax.scan: simulate (background drive) then end_window(reward 0.5)."""

    def window(s, _):
        i_ext = background_current(s, net, cfg.run.window_steps, cfg)
        s, spikes = fumjax.simulate(s, net, i_ext, config=cfg, plasticity=mode, backend=backend)
        s = fumjax.end_window(s, 0.5, config=cfg, plasticity=mode)
        return s, spikes

    return lax.scan(window, state, None, length=n_windows)


def test_long_rstdp_windows_n1000():
    """FUM default network (N=1000, 50k synapses), 10,000 steps = 200 windows of 50, rstdp + reward."""
    cfg = FumConfig()
    net = fumjax.build_network(cfg)
    state = fumjax.init_state(net, cfg)
    ref, s_ref = _windows(state, net, cfg, "rstdp", "reference", 200)
    got, s_got = _windows(state, net, cfg, "rstdp", "fused", 200)
    assert s_ref.shape == (200, 50, 1000)
    assert 2.0 < _rate_hz(s_ref) < 60.0
    _assert_same(ref, got, s_ref, s_got, "N=1000 rstdp 200 windows")
    assert not np.array_equal(np.asarray(got.w), np.asarray(net.w0))  # the reward did change weights


def test_python_loop_windows_stdp_and_rstdp():
    """Eager public API: simulate / end_window called from Python between windows."""
    seed = fresh_seed()
    cfg = FumConfig().replace(neuron={"n_neurons": 300})
    net = _network(300, 0.8, "mixed", seed)
    for mode in ("stdp", "rstdp"):
        a = b = fumjax.init_state(net, cfg)
        for win in range(4):
            i_ext = _drive(300, 50, seed + win, jnp.float32)
            a, s_a = fumjax.simulate(a, net, i_ext, config=cfg, plasticity=mode, backend="reference")
            b, s_b = fumjax.simulate(b, net, i_ext, config=cfg, plasticity=mode, backend="fused")
            _assert_same(a, b, s_a, s_b, f"python loop mode={mode} window={win} seed={seed}")
            a = fumjax.end_window(a, 0.5, config=cfg, plasticity=mode)
            b = fumjax.end_window(b, 0.5, config=cfg, plasticity=mode)


def test_vmap_sequential():
    seed = fresh_seed()
    cfg = FumConfig().replace(neuron={"n_neurons": 100})
    net = _network(100, 0.8, "mixed", seed)
    base = fumjax.init_state(net, cfg)
    rng = np.random.default_rng(seed)
    v0 = jnp.asarray(rng.uniform(-70.0, -56.0, (3, 100)), jnp.float32)
    states = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (3,) + x.shape), base).replace(v_mV=v0)
    i_ext = jnp.stack([_drive(100, 120, seed + k, jnp.float32) for k in range(3)])

    def run(backend):
        f = lambda s, i: _simulate(s, net, i, cfg, "rstdp", backend)  # noqa: E731
        return jax.jit(jax.vmap(f))(states, i_ext)

    (ref, s_ref), (got, s_got) = run("reference"), run("fused")
    _assert_same(ref, got, s_ref, s_got, f"vmap seed={seed}")


def test_jit_direct_aliasing_keeps_inputs_and_donation():
    """run_steps updates in place through input_output_aliases: an undonated input must stay intact,
    a donated one may be consumed; both give the reference result."""
    seed = fresh_seed()
    cfg = FumConfig().replace(neuron={"n_neurons": 200})
    net = _network(200, 0.8, "one", seed)
    state = fumjax.init_state(net, cfg)
    i_ext = _drive(200, 150, seed, jnp.float32)
    ref, s_ref = _simulate(state, net, i_ext, cfg, "stdp", "reference")
    keep = jax.tree_util.tree_map(np.array, state)
    f = jax.jit(lambda s, i: fused.run_steps(s, net, i, cfg, "stdp"))
    got, s_got = f(state, i_ext)
    _assert_same(ref, got, s_ref, s_got, f"jit seed={seed}")
    for name in FIELDS:  # the caller's buffers are untouched
        np.testing.assert_array_equal(np.asarray(getattr(state, name)), getattr(keep, name), err_msg=name)
    again, _ = f(state, i_ext)
    np.testing.assert_array_equal(np.asarray(again.w), np.asarray(got.w))
    donating = jax.jit(lambda s, i: fused.run_steps(s, net, i, cfg, "stdp"), donate_argnums=0)
    fresh = jax.tree_util.tree_map(jnp.array, keep)
    got2, s_got2 = donating(fresh, i_ext)
    _assert_same(ref, got2, s_ref, s_got2, f"donated seed={seed}")


def test_unsupported_falls_back_and_bad_index_is_an_error():
    cfg16 = FumConfig().replace(neuron={"n_neurons": 50}, run={"dtype": "float16"})
    net = _network(50, 0.8, "one", FIXED_SEED)
    state = fumjax.init_state(net, cfg16)
    mixed = state.replace(elig=state.elig.astype(jnp.float32))  # w float16, elig float32: not supported
    assert fused.run_steps_supported(state, net) and not fused.run_steps_supported(mixed, net)
    i_ext = _drive(50, 60, FIXED_SEED, jnp.float32)
    (ref, s_ref), (got, s_got) = _run_both(net, cfg16, "stdp", i_ext, mixed)
    _assert_same(ref, got, s_ref, s_got, "mixed storage dtypes: step-by-step fallback")

    cfg = FumConfig().replace(neuron={"n_neurons": 50})
    state = fumjax.init_state(net, cfg)
    bad = dataclasses.replace(net, post=jnp.full_like(net.post, 10_000))
    for threads in (1, 2):
        with pytest.raises(Exception, match="out of range"):
            jax.block_until_ready(fused.run_steps(state, bad, i_ext * 4.0, cfg, "stdp", threads=threads))
    # One bad entry among valid ones, at either end of the array (the checks are branch-free passes).
    e = net.n_synapses
    for field, k, value in (("post", 0, -1), ("post", e - 1, 50), ("in_syn", e - 1, e), ("in_syn", 0, -1)):
        arr = np.asarray(getattr(net, field)).copy()
        arr[k] = value
        one_bad = dataclasses.replace(net, **{field: jnp.asarray(arr)})
        with pytest.raises(Exception, match="out of range"):
            jax.block_until_ready(fused.run_steps(state, one_bad, i_ext, cfg, "stdp"))
    mixed_net = _network(50, 0.8, "mixed", FIXED_SEED)
    for value in (0, mixed_net.max_delay + 1):
        d = np.asarray(mixed_net.delay_steps).copy()
        d[len(d) // 2] = value
        with pytest.raises(Exception, match=r"delay is outside \[1, ring slots\]"):
            jax.block_until_ready(
                fused.run_steps(
                    fumjax.init_state(mixed_net, cfg),
                    dataclasses.replace(mixed_net, delay_steps=jnp.asarray(d)),
                    i_ext,
                    cfg,
                    "stdp",
                )
            )
    with pytest.raises(ValueError, match="mode"):
        fused.run_steps(state, net, i_ext, cfg, "bogus")
    with pytest.raises(ValueError, match="threads"):
        fused.run_steps(state, net, i_ext, cfg, "stdp", threads=-1)


def _unsorted_rows(net: Network, seed: int) -> Network:
    """The same synapses with each row's order shuffled (posts no longer ascending within a row), as
    structural rewiring in place can leave them; in_syn remapped to the new slots."""
    rng = np.random.default_rng(seed)
    row_ptr = np.asarray(net.row_ptr)
    perm = np.concatenate(
        [a + rng.permutation(b - a) for a, b in zip(row_ptr[:-1], row_ptr[1:], strict=True)]
    )
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    take = lambda x: jnp.asarray(np.asarray(x)[perm])  # noqa: E731
    return dataclasses.replace(
        net,
        pre=take(net.pre),
        post=take(net.post),
        delay_steps=take(net.delay_steps),
        w0=take(net.w0),
        input_order=jnp.asarray(inv[np.asarray(net.input_order)]),
        in_syn=jnp.asarray(inv[np.asarray(net.in_syn)]),
    )


@pytest.mark.parametrize("rows", ["sorted", "unsorted"])
def test_threads_bit_identical(rows):
    """1, 2, 3 and 4 kernel threads give bit-identical results (every synapse and ring entry is written by
    the thread owning its post neuron, in the single-thread order) and match the reference. Unsorted rows
    take the filtering path instead of bisection. 2,500 steps: silent neurons' traces decay into the
    float32 denormal range, which XLA flushes to zero; the worker threads must do the same."""
    seed = fresh_seed()
    n = 400
    cfg = FumConfig().replace(neuron={"n_neurons": n, "refractory_steps": 1}, plasticity={"gamma": 0.8})
    net = _network(n, 0.8, "mixed", seed)
    if rows == "unsorted":
        net = _unsorted_rows(net, seed)
    i_ext = _drive(n, 2500, seed, jnp.float32)
    state = fumjax.init_state(net, cfg)
    for mode in ("off", "stdp", "rstdp"):
        ref, s_ref = _simulate(state, net, i_ext, cfg, mode, "reference")
        outs = []
        for threads in (1, 2, 3, 4):
            got, s_got = _run_fused(state, net, i_ext, cfg, mode, threads)
            _assert_same(ref, got, s_ref, s_got, f"{rows} mode={mode} threads={threads} seed={seed}")
            outs.append((got, s_got))
        for got, s_got in outs[1:]:
            np.testing.assert_array_equal(np.asarray(s_got), np.asarray(outs[0][1]))
            for name in FIELDS:  # bitwise, -0.0 vs +0.0 included
                a, b = np.asarray(getattr(outs[0][0], name)), np.asarray(getattr(got, name))
                assert a.tobytes() == b.tobytes(), (rows, mode, name, seed)


def test_vector_and_scalar_rows_bit_identical(monkeypatch):
    """The row pass runs 8 synapses at a time with AVX2 gathers or as a scalar loop, by host
    (cpp/ffi_util.h, UseVectorRows: scalar on AMD, whose gathers are slow); FUMJAX_CPU_VECTOR_ROWS forces
    either. Both must match the reference exactly and each other bitwise, with 1 and 2 threads."""
    seed = fresh_seed()
    n = 400
    cfg = FumConfig().replace(neuron={"n_neurons": n})
    net = _network(n, 0.8, "one", seed)
    i_ext = _drive(n, 1000, seed, jnp.float32)
    state = fumjax.init_state(net, cfg)
    for mode in ("off", "stdp", "rstdp"):
        ref, s_ref = _simulate(state, net, i_ext, cfg, mode, "reference")
        outs = []
        for rows in ("1", "0"):
            monkeypatch.setenv("FUMJAX_CPU_VECTOR_ROWS", rows)
            for threads in (1, 2):
                got, s_got = _run_fused(state, net, i_ext, cfg, mode, threads)
                msg = f"FUMJAX_CPU_VECTOR_ROWS={rows}, {threads} threads, {mode}, seed {seed}"
                _assert_same(ref, got, s_ref, s_got, msg)
                outs.append((got, s_got))
        for got, s_got in outs[1:]:
            np.testing.assert_array_equal(np.asarray(s_got), np.asarray(outs[0][1]))
            for name in FIELDS:
                a, b = np.asarray(getattr(outs[0][0], name)), np.asarray(getattr(got, name))
                assert a.tobytes() == b.tobytes(), (mode, name, seed)


def test_unsorted_rows_one_thread():
    """Rows whose posts do not ascend: the kernel's vectorized row blocks (float32, D = 1) must hand them to
    the scalar loop, which keeps the synapse order."""
    seed = fresh_seed()
    n = 300
    cfg = FumConfig().replace(neuron={"n_neurons": n})
    net = _unsorted_rows(_network(n, 0.8, "one", seed), seed)
    i_ext = _drive(n, 300, seed, jnp.float32)
    for mode in ("off", "stdp", "rstdp"):
        (ref, s_ref), (got, s_got) = _run_both(net, cfg, mode, i_ext)
        _assert_same(ref, got, s_ref, s_got, f"unsorted rows, 1 thread, mode={mode} seed={seed}")


def test_large_network_prefetch_path():
    """A network whose float32 weights exceed 1 MiB (2^18 synapses): the synapse passes prefetch the rows
    and in-lists ahead (cpp/run_steps_compute.h, kPrefetchMinBytes); calls of >= 32 steps also take the
    in-list with each entry's pre. Results stay identical to the reference, on 1 and 2 threads."""
    seed = fresh_seed()
    n = 2700
    # w_exc_max 0.15: ~10-12 Hz in both modes (rstdp keeps the weights, which run away at 0.3 and K = 100)
    net = Network.distance_biased(n, k_per_neuron=100, w_exc_max=0.15, seed=seed % 2**31)
    assert net.n_synapses * 4 >= 2**20
    cfg = FumConfig().replace(neuron={"n_neurons": n}, plasticity={"gamma": 0.8})
    i_ext = _drive(n, 1000, seed, jnp.float32)
    state = fumjax.init_state(net, cfg)
    for mode in ("stdp", "rstdp"):
        ref, s_ref = _simulate(state, net, i_ext, cfg, mode, "reference")
        assert 3.0 < _rate_hz(s_ref) < 60.0, (_rate_hz(s_ref), seed)
        for threads in (1, 2):
            got, s_got = _run_fused(state, net, i_ext, cfg, mode, threads)
            _assert_same(ref, got, s_ref, s_got, f"prefetch path mode={mode} threads={threads} seed={seed}")


def test_validated_rows_masked_tails():
    """Rows with strictly ascending posts, checked once per call (calls of >= 32 steps): the vector row
    and in-list passes skip their per-block index checks and run each row's / in-list's last partial block
    masked (rows of every length mod 8 here). Identical to the reference in all modes, on 1 and 2 threads."""
    seed = fresh_seed()
    n = 400
    net = _network(n, 0.8, "one", seed)
    rp, post = np.asarray(net.row_ptr), np.asarray(net.post)
    assert all(np.all(np.diff(post[rp[j] : rp[j + 1]]) > 0) for j in range(n))
    assert len(set(np.diff(rp) % 8)) == 8
    cfg = FumConfig().replace(neuron={"n_neurons": n}, plasticity={"gamma": 0.8})
    i_ext = _drive(n, 1000, seed, jnp.float32)
    state = fumjax.init_state(net, cfg)
    for mode in ("off", "stdp", "rstdp"):
        ref, s_ref = _simulate(state, net, i_ext, cfg, mode, "reference")
        for threads in (1, 2):
            got, s_got = _run_fused(state, net, i_ext, cfg, mode, threads)
            _assert_same(ref, got, s_ref, s_got, f"validated rows mode={mode} threads={threads} seed={seed}")


@pytest.mark.parametrize("memo", ["0", "1"])
def test_short_calls_check_indices_in_the_loops(memo, monkeypatch):
    """Calls of fewer than 32 steps skip the once-per-call index checks and the in-list scratch where no
    network memo may be kept (FUMJAX_CPU_NETWORK_MEMO=0, or networks above 2^21 synapses): the loops check
    each index and search each in-list entry's pre. With the memo (the default), plastic ones check once and
    keep the in-list like long calls. Either way back-to-back 20-step calls (and one of 5) stay identical to
    the reference's whole run, with delays 1 and mixed 1-4."""
    monkeypatch.setenv("FUMJAX_CPU_NETWORK_MEMO", memo)
    seed = fresh_seed()
    n = 300
    cfg = FumConfig().replace(neuron={"n_neurons": n}, plasticity={"gamma": 0.8})
    for delays in ("one", "mixed"):
        net = _network(n, 0.8, delays, seed)
        i_ext = _drive(n, 105, seed, jnp.float32)
        state = fumjax.init_state(net, cfg)
        for mode in ("off", "stdp", "rstdp"):
            ref, s_ref = _simulate(state, net, i_ext, cfg, mode, "reference")
            got, parts = state, []
            for a in range(0, 105, 20):
                got, s_part = _simulate(got, net, i_ext[a : a + 20], cfg, mode, "fused")
                parts.append(s_part)
            s_got = jnp.concatenate(parts)
            _assert_same(ref, got, s_ref, s_got, f"20-step calls delays={delays} mode={mode} seed={seed}")


def test_checks_and_in_list_kept_only_for_the_same_network():
    """A checked call (>= 32 steps) keeps its index checks and learning in-list for the next call on
    byte-identical network arrays (cpp/run_steps.cc, NetworkMemo). Networks of the same shapes in the same
    jitted program must not get another's: all plastic, then excitatory-only plastic (another in-list), the
    rows reordered (another in-list and row check; 2 threads bisect sorted rows and filter unsorted ones),
    then the first again; every 50-step call matches the reference. A bad post after a kept good network is
    still an error."""
    seed = fresh_seed()
    n = 300
    cfg = FumConfig().replace(neuron={"n_neurons": n}, plasticity={"gamma": 0.8})
    cfg2 = cfg.replace(run={"threads": 2})
    a = _network(n, 0.8, "one", seed)
    b = dataclasses.replace(a, plastic_pre=a.excitatory_pre)
    c = _unsorted_rows(a, seed)
    i_ext = _drive(n, 50, seed, jnp.float32)
    for name, net in (("all plastic", a), ("exc plastic", b), ("unsorted", c), ("all plastic", a)):
        state = fumjax.init_state(net, cfg)
        for mode in ("stdp", "rstdp"):
            ref, s_ref = _simulate(state, net, i_ext, cfg, mode, "reference")
            for conf in (cfg, cfg2):
                got, s_got = _simulate(state, net, i_ext, conf, mode, "fused")
                msg = f"{name} mode={mode} threads={conf.run.threads} seed={seed}"
                _assert_same(ref, got, s_ref, s_got, msg)
    post = np.asarray(a.post).copy()
    post[len(post) // 2] = n
    with pytest.raises(Exception, match="out of range"):
        bad = dataclasses.replace(a, post=jnp.asarray(post))
        jax.block_until_ready(_simulate(fumjax.init_state(a, cfg), bad, i_ext, cfg, "stdp", "fused"))


def test_threads_from_config():
    n = 300
    cfg = FumConfig().replace(neuron={"n_neurons": n}, run={"threads": 2})
    assert fused.resolve_threads(None, cfg) == 2 and fused.resolve_threads(0, cfg) == 0
    net = _network(n, 0.8, "one", FIXED_SEED)
    i_ext = _drive(n, 200, FIXED_SEED, jnp.float32)
    (ref, s_ref), (got, s_got) = _run_both(net, cfg, "rstdp", i_ext)
    _assert_same(ref, got, s_ref, s_got, "run.threads = 2")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_golden_16bit_synapses(dtype):
    """Weights and eligibility stored in float16/bfloat16 (neuron state float32) in both backends."""
    for n, delays, modes, t in (
        (300, "mixed", ("stdp", "rstdp"), 300),
        (200, "one", ("stdp", "rstdp"), 1000),
    ):
        cfg = FumConfig().replace(neuron={"n_neurons": n}, run={"dtype": dtype})
        for seed in (FIXED_SEED, fresh_seed()):
            net = _network(n, 0.8, delays, seed)
            i_ext = _drive(n, t, seed, jnp.float32)
            for mode in modes:
                msg = f"{dtype} n={n} delays={delays} mode={mode} seed={seed}"
                (ref, s_ref), (got, s_got) = _run_both(net, cfg, mode, i_ext)
                assert got.w.dtype == got.elig.dtype == jnp.dtype(dtype) and got.v_mV.dtype == jnp.float32
                assert 2.0 < _rate_hz(s_ref) < 60.0, (msg, _rate_hz(s_ref))
                _assert_same(ref, got, s_ref, s_got, msg)
                if mode == "stdp":  # plasticity really moved the 16-bit weights
                    assert not np.array_equal(np.asarray(got.w), np.asarray(net.w0).astype(dtype)), msg


def test_bytes_per_synapse():
    """Per-synapse storage of the fused kernels, by hand: 50 neurons, K = 3 partners each (E = 150)."""
    net = Network.distance_biased(50, k_per_neuron=3, seed=1)
    assert net.n_synapses == 150 and net.max_delay == 1
    per_neuron_plastic = 2 * 4 * 51 / 150  # row_ptr and in_ptr, uint32, (N+1,) each
    bucket = 4 * 1 / 150  # pre_bucket: one int32 per 512 CSR slots
    cases = [  # (run.dtype, mode, plastic_total): w + elig + post + in_syn (no per-synapse pre)
        ("float32", "rstdp", 4 + 4 + 4 + 4),
        ("float32", "stdp", 4 + 0 + 4 + 4),
        ("float16", "rstdp", 2 + 2 + 4 + 4),
        ("bfloat16", "rstdp", 2 + 2 + 4 + 4),
    ]
    for dtype, mode, plastic_total in cases:
        cfg = FumConfig().replace(neuron={"n_neurons": 50}, run={"dtype": dtype})
        got = fused.bytes_per_synapse(net, cfg, mode)
        assert got["plastic_total"] == plastic_total, (dtype, mode, got)
        assert got["total"] == pytest.approx(plastic_total + per_neuron_plastic + bucket), (dtype, mode, got)
        assert got["call_scratch"] == 4  # each in-list entry's pre, during a long call
    # the whole run: state w + elig (float16) and the Network's arrays: pre, post, delay, in_syn,
    # input_order (int32) and w0 (float32) per synapse; row_ptr, in_ptr (int32, N+1), tau, v_th (float32),
    # excitatory, excitatory_pre, plastic_pre (bool) per neuron
    want = 2 + 2 + 6 * 4 + (2 * 4 * 51 + 2 * 4 * 50 + 3 * 50) / 150
    cfg16 = FumConfig().replace(neuron={"n_neurons": 50}, run={"dtype": "float16"})
    assert fused.bytes_per_synapse(net, cfg16, "rstdp")["process_total"] == pytest.approx(want)
    off = fused.bytes_per_synapse(net, FumConfig().replace(neuron={"n_neurons": 50}), "off")
    assert off["plastic_total"] == 4 + 4 and off["total"] == pytest.approx(8 + 4 * 51 / 150)
    assert off["call_scratch"] == 0
    # a delay above 1 adds the int32 delay array
    d = Network.from_arrays(
        np.asarray(net.pre),
        np.asarray(net.post),
        np.asarray(net.w0),
        np.asarray(net.tau_ms),
        np.asarray(net.v_th_mV),
        np.asarray(net.excitatory),
        delay_steps=np.full(150, 2),
    )
    assert fused.bytes_per_synapse(d, cfg16, "rstdp")["plastic_total"] == 12 + 4
    with pytest.raises(ValueError, match="mode"):
        fused.bytes_per_synapse(net, cfg16, "bogus")


def _sparse_rows_network(n: int, seed: int) -> Network:
    """Random network where 70% of the neurons have no outgoing synapses and a few have long rows (up to
    1,300 slots, more than two pre_bucket spans), 30% of the presynaptic neurons static."""
    rng = np.random.default_rng(seed)
    senders = rng.choice(n, n * 3 // 10, replace=False)
    fan = rng.integers(1, 40, senders.size)
    fan[:3] = (1300, 700, 513)
    pre = np.repeat(senders, fan)
    post = rng.integers(0, n, pre.size)
    exc = rng.random(n) < 0.8
    w = np.where(exc[pre], rng.uniform(0, 0.3, pre.size), rng.uniform(-0.3, 0, pre.size))
    return Network.from_arrays(
        pre, post, w, rng.uniform(15, 25, n), rng.uniform(-58, -52, n), exc, plastic_pre=rng.random(n) < 0.7
    )


@pytest.mark.parametrize("t_steps", [300, 1200])
def test_pre_bucket_empty_rows_and_static_pre(t_steps):
    """The slot -> pre search (pre_bucket, then forward over empty rows) on rows of very uneven length;
    1,200 steps take the long-call path (each in-list entry's pre precomputed, learning in-list without the
    static presynaptic neurons), 300 the per-visit search. Both must match the reference exactly."""
    seed = fresh_seed()
    net = _sparse_rows_network(600, seed)
    assert int(np.asarray(net.row_ptr)[-1]) > 1024 and not np.asarray(net.plastic_pre).all()
    cfg = FumConfig().replace(neuron={"n_neurons": 600})
    i_ext = _drive(600, t_steps, seed, jnp.float32, scale=1.5)
    for mode in ("stdp", "rstdp"):
        (ref, s_ref), (got, s_got) = _run_both(net, cfg, mode, i_ext)
        assert _rate_hz(s_ref) > 2.0, (mode, seed)
        _assert_same(ref, got, s_ref, s_got, f"sparse rows T={t_steps} mode={mode} seed={seed}")


@dataclasses.dataclass(frozen=True)
class _WithBucket:
    """A Network plus an explicit pre_bucket (what a CompactNetwork carries), for the kernel's check."""

    net: Network
    pre_bucket: jax.Array

    def __getattr__(self, name):
        return getattr(self.net, name)


def test_bad_pre_bucket_and_too_many_synapses_are_errors():
    net = _network(100, 0.8, "one", FIXED_SEED)
    cfg = FumConfig().replace(neuron={"n_neurons": 100})
    state = fumjax.init_state(net, cfg)
    i_ext = _drive(100, 20, FIXED_SEED, jnp.float32)
    row_ptr = np.asarray(net.row_ptr)
    slots = np.arange((net.n_synapses - 1) // 512 + 1) * 512
    good = np.searchsorted(row_ptr, slots, side="right").astype(np.int32) - 1
    ref, s_ref = _simulate(state, net, i_ext, cfg, "stdp", "reference")
    got, s_got = fused.run_steps(state, _WithBucket(net, jnp.asarray(good)), i_ext, cfg, "stdp")
    _assert_same(ref, got, s_ref, s_got, "explicit pre_bucket")
    bad = good.copy()
    bad[-1] = good[-1] + 1  # a row that starts after the bucket's first slot
    with pytest.raises(Exception, match="pre_bucket does not match row_ptr"):
        jax.block_until_ready(fused.run_steps(state, _WithBucket(net, jnp.asarray(bad)), i_ext, cfg, "stdp"))
    huge = types.SimpleNamespace(n_synapses=2**32, n_neurons=100, n_pre=100)
    with pytest.raises(ValueError, match="uint32"):
        fused.run_steps(state, huge, i_ext, cfg, "stdp")
