"""The CPU end-of-window kernel (`fused.window_end`, FFI target `fumjax_window_end`).

`dynamics._end_window` with backend "fused" in mode rstdp runs the window's end in one C++ call: the
eligibility unscaled, w = clip(w + eta_eff(R) R e), the running rate, intrinsic plasticity and the counters.
It must equal the jitted reference (`_end_window_xla`) exactly, every field, in every synapse storage dtype.
Every case runs a fixed seed and a fresh one (printed on failure; FUMJAX_GOLDEN_SEED reproduces it).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden_util import fresh_seed, x64

import fumjax
from fumjax import FumConfig, plasticity
from fumjax.dynamics import _end_window, _end_window_xla
from fumjax.kernels import fused, fused_ops

pytestmark = pytest.mark.skipif(not fused.available(), reason="fumjax._core not built")


@pytest.fixture(autouse=True)
def _on_cpu():
    """The kernel is the CPU's (a GPU machine's default device would route _end_window to XLA)."""
    with jax.default_device(jax.devices("cpu")[0]):
        yield


FIXED_SEED = 20261205
FIELDS = [f.name for f in dataclasses.fields(fumjax.State)]


def _random_state(cfg: FumConfig, seed: int):
    """A state mid-run: random weights (some near the clip), eligibility, rates (some still -1, i.e. none
    yet), window counts, thresholds (some disabled slots), tau, and step/elig_t0/window_start."""
    rng = np.random.default_rng(seed)
    net = fumjax.build_network(cfg)
    st = fumjax.init_state(net, cfg)
    n, e = net.n_neurons, net.n_synapses
    dt = st.v_mV.dtype
    step = int(rng.integers(60, 400))
    return st.replace(
        w=jnp.asarray(rng.uniform(-1.0, 1.0, e), st.w.dtype),
        elig=jnp.asarray(rng.normal(0.0, 3.0, e), st.elig.dtype),
        rate_hz=jnp.asarray(np.where(rng.random(n) < 0.2, -1.0, rng.uniform(0.0, 40.0, n)), dt),
        window_spikes=jnp.asarray(rng.integers(0, 4, n), jnp.int32),
        v_th_mV=jnp.asarray(np.where(rng.random(n) < 0.05, 1e9, rng.uniform(-62.0, -48.0, n)), dt),
        tau_ms=jnp.asarray(rng.uniform(14.0, 26.0, n), dt),
        step=jnp.asarray(step, jnp.int32),
        window_start=jnp.asarray(step - int(rng.integers(1, 60)), jnp.int32),
        elig_t0=jnp.asarray(step - int(rng.integers(0, 60)), jnp.int32),
    ), float(rng.normal(0.0, 1.5))


def _assert_equal(ref, got, msg: str) -> None:
    for f in FIELDS:
        a, b = np.asarray(getattr(ref, f)), np.asarray(getattr(got, f))
        assert a.dtype == b.dtype, f"{msg}: {f} dtype {a.dtype} vs {b.dtype}"
        if not np.array_equal(a, b):
            d = np.flatnonzero(a.ravel() != b.ravel())
            raise AssertionError(
                f"{msg}: {f} differs at {d.size} entries, e.g. {a.ravel()[d[:3]]} vs {b.ravel()[d[:3]]}"
            )


def _both(st, reward: float, cfg: FumConfig, threads: int):
    """(reference, fused) window ends, each jitted with its reward coefficient computed in the same program
    (as _end_window does: XLA contracts the coefficient's arithmetic alike in both)."""
    r = jnp.asarray(reward, st.v_mV.dtype)
    ref = jax.jit(lambda s, r: _end_window_xla(s, r, cfg, "rstdp"))(st, r)
    coef = lambda s, r: plasticity.reward_coefficient(r, s.w.dtype, cfg)  # noqa: E731
    got = jax.jit(lambda s, r: fused.window_end(s, coef(s, r), cfg, "rstdp", threads=threads))(st, r)
    return ref, got


def test_registered():
    assert "window_end" in fused.OPS and "window_end" in fused_ops()
    fused._register()
    assert fused.WINDOW_END_TARGET in fused._cpu_targets


# (storage dtype, gamma, intrinsic on, threads): gamma 0.5 gives K = 13 < the steps since elig_t0, so the
# table index clamps; 2 threads split the pass over E.
CASES = [
    ("float32", 0.95, True, 1),
    ("float32", 0.5, True, 2),
    ("float32", 0.95, False, 1),
    ("bfloat16", 0.95, True, 1),
    ("bfloat16", 0.5, True, 2),
    ("float16", 0.95, True, 1),
    ("float16", 0.5, True, 1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-g{c[1]}-ip{int(c[2])}-t{c[3]}")
def test_window_end_matches_reference(case):
    dtype, gamma, intrinsic, threads = case
    cfg = FumConfig().replace(
        neuron={"n_neurons": 400},
        connectivity={"k_per_neuron": 25},
        run={"dtype": dtype},
        plasticity={"gamma": gamma},
        intrinsic={"enabled": intrinsic},
    )
    for seed in (FIXED_SEED, fresh_seed()):
        st, reward = _random_state(cfg, seed)
        ref, got = _both(st, reward, cfg, threads)
        _assert_equal(ref, got, f"{case} seed={seed} R={reward}")
        assert int(got.elig_t0) == int(got.window_start) == int(st.step)
        assert not np.asarray(got.window_spikes).any()


@pytest.mark.parametrize("mode", ["stdp", "off"])
def test_window_end_without_reward(mode):
    """Modes without reward: the kernel leaves w and elig alone and still closes the window (dynamics routes
    these to XLA, which is cheaper without the pass over E; the kernel must agree all the same)."""
    cfg = FumConfig().replace(neuron={"n_neurons": 300}, connectivity={"k_per_neuron": 20})
    for seed in (FIXED_SEED, fresh_seed()):
        st, reward = _random_state(cfg, seed)
        r = jnp.float32(reward)
        ref = jax.jit(lambda s, r: _end_window_xla(s, r, cfg, mode))(st, r)
        got = jax.jit(lambda s: fused.window_end(s, jnp.float32(0.5), cfg, mode, threads=2))(st)
        _assert_equal(ref, got, f"mode={mode} seed={seed}")
        np.testing.assert_array_equal(np.asarray(got.w), np.asarray(st.w))


def test_window_end_float64():
    with x64():
        cfg = FumConfig().replace(
            neuron={"n_neurons": 300}, connectivity={"k_per_neuron": 20}, run={"dtype": "float64"}
        )
        for seed in (FIXED_SEED, fresh_seed()):
            st, reward = _random_state(cfg, seed)
            assert st.w.dtype == jnp.float64
            ref, got = _both(st, reward, cfg, 1)
            _assert_equal(ref, got, f"float64 seed={seed} R={reward}")


def test_window_end_by_hand():
    """Two neurons, two synapses, numbers worked out by hand (float32 rounding only where noted)."""
    cfg = FumConfig().replace(
        neuron={"n_neurons": 2}, connectivity={"k_per_neuron": 1}, plasticity={"gamma": 0.5, "eta": 0.01}
    )
    st = fumjax.init_state(fumjax.build_network(cfg), cfg)
    assert st.w.shape == (2,)  # one synapse per neuron
    w0 = np.asarray([0.25, 0.99], np.float32)
    e0 = np.asarray([8.0, 400.0], np.float32)  # e = e_hat * 0.5^2: 2 and 100 (the second clips w at +1)
    st = st.replace(
        w=jnp.asarray(w0),
        elig=jnp.asarray(e0),
        step=jnp.asarray(100, jnp.int32),
        elig_t0=jnp.asarray(98, jnp.int32),  # 2 steps since the last renormalization: gamma^2 = 0.25
        window_start=jnp.asarray(50, jnp.int32),  # a 50-step window
        window_spikes=jnp.asarray([3, 1], jnp.int32),  # 60 Hz and 20 Hz over 50 ms
        rate_hz=jnp.asarray([-1.0, 10.0], jnp.float32),  # no estimate yet; 10 Hz
        v_th_mV=jnp.asarray([-55.0, -55.0], jnp.float32),
        tau_ms=jnp.asarray([20.0, 20.0], jnp.float32),
    )
    reward = 0.0  # eta_eff(0) * 0 = 0: w moves only through the clip (it stays: 0.25, 0.99 are inside)
    got = jax.jit(lambda s: fused.window_end(s, jnp.float32(reward), cfg, "rstdp"))(st)
    np.testing.assert_array_equal(np.asarray(got.elig), [2.0, 100.0])
    np.testing.assert_array_equal(np.asarray(got.w), w0)
    # rates: 60 Hz (first estimate), 0.9 * 10 + 0.1 * 20 = 11 Hz (float32: fma(0.9f, 10, 0.1f * 20))
    np.testing.assert_allclose(np.asarray(got.rate_hz), [60.0, 11.0], rtol=1e-6)
    # 60 Hz > 20 Hz: v_th + 0.1, tau - 0.1; 11 Hz is inside [2, 20]: unchanged
    np.testing.assert_allclose(np.asarray(got.v_th_mV), [-54.9, -55.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got.tau_ms), [19.9, 20.0], rtol=1e-6)
    assert int(got.elig_t0) == int(got.window_start) == 100 and not np.asarray(got.window_spikes).any()
    # R = 1: coef = eta * 2 * sigmoid(1) * 1 = 0.0146211...; w0 = 0.25 + 0.0146211 * 2
    coef = 0.01 * 2.0 / (1.0 + np.exp(-1.0))
    got = jax.jit(lambda s: fused.window_end(s, jnp.float32(coef), cfg, "rstdp"))(st)
    np.testing.assert_allclose(float(got.w[0]), 0.25 + coef * 2.0, rtol=1e-6)
    assert float(got.w[1]) == 1.0  # 0.99 + 1.46: clipped to w_clip


def test_run_driven_fused_bit_identical():
    """run_driven (drive, steps, self-benefit reward, window end) fused against reference, rstdp: the
    same rasters, rewards and final state bit for bit."""
    seed = fresh_seed()
    for dtype in ("float32", "bfloat16"):
        cfg = FumConfig().replace(
            neuron={"n_neurons": 300},
            connectivity={"k_per_neuron": 30},
            run={"dtype": dtype, "seed": seed % 2**31},
            plasticity={"gamma": 0.9},
            sie={"target_rate_var": 60.0},
        )
        net = fumjax.build_network(cfg)
        st = fumjax.init_state(net, cfg)
        out = {
            b: fumjax.run_driven(st, net, 6, config=cfg, plasticity="rstdp", backend=b, record_spikes=True)
            for b in ("reference", "fused")
        }
        (s_r, sp_r, r_r), (s_f, sp_f, r_f) = out["reference"], out["fused"]
        assert int(np.asarray(sp_r).sum()) > 50
        np.testing.assert_array_equal(np.asarray(sp_r), np.asarray(sp_f))
        np.testing.assert_array_equal(np.asarray(r_r), np.asarray(r_f))
        _assert_equal(s_r, s_f, f"run_driven {dtype} seed={seed}")


def test_end_window_public_api_backend():
    cfg = FumConfig().replace(neuron={"n_neurons": 200}, connectivity={"k_per_neuron": 20})
    st, reward = _random_state(cfg, FIXED_SEED)
    a = fumjax.end_window(st, reward, config=cfg, plasticity="rstdp", backend="reference")
    b = fumjax.end_window(st, reward, config=cfg, plasticity="rstdp", backend="fused")
    _assert_equal(a, b, "end_window")
    c = jax.jit(lambda s, r: _end_window(s, r, cfg, "rstdp", "fused"))(st, jnp.float32(reward))
    _assert_equal(a, c, "_end_window fused")


def test_vmap_sequential():
    cfg = FumConfig().replace(neuron={"n_neurons": 100}, connectivity={"k_per_neuron": 10})
    states = [_random_state(cfg, FIXED_SEED + k) for k in range(3)]
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *[s for s, _ in states])
    rewards = jnp.asarray([r for _, r in states], jnp.float32)
    got = jax.vmap(lambda s, r: _end_window(s, r, cfg, "rstdp", "fused"))(batch, rewards)
    for k, (s, r) in enumerate(states):
        ref = jax.jit(lambda s, r: _end_window_xla(s, r, cfg, "rstdp"))(s, jnp.float32(r))
        _assert_equal(ref, jax.tree.map(lambda x, k=k: x[k], got), f"vmap item {k}")


def test_bad_input_names_the_problem():
    cfg = FumConfig().replace(neuron={"n_neurons": 50}, connectivity={"k_per_neuron": 5})
    st, _ = _random_state(cfg, FIXED_SEED)
    with pytest.raises(ValueError, match="coef has shape"):
        fused.window_end(st, jnp.zeros((2,), jnp.float32), cfg, "rstdp")
    with pytest.raises(ValueError, match="coef has shape"):
        fused.window_end(st, jnp.zeros((), jnp.int32), cfg, "rstdp")
    with pytest.raises(ValueError, match="mode = 'hebb'"):
        fused.window_end(st, jnp.float32(0.0), cfg, "hebb")
