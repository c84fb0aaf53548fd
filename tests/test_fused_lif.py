"""The fused (XLA FFI) LIF step must reproduce the reference backend bit for bit.

The truth is the reference evaluated op by op (eagerly): ``v + (dt/tau)*(v_rest - v) + i`` with every
operation rounded separately. Under ``jax.jit`` XLA:CPU fuses the reference's elementwise ops into one
loop and lets LLVM contract ``v + a*b`` into a fused multiply-add (it has no flag to turn that off), so
jit(reference) can differ from eager reference by 1 ulp in a small fraction of neurons. The fused kernel
never contracts, so its result is the same inside or outside jit and equals the eager reference exactly;
against jit(reference) we only check the 1-ulp bound.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fumjax.kernels import fused, reference

KW = dict(v_rest_mV=-65.0, v_reset_mV=-70.0, dt_ms=0.1, refractory_steps=5)


def _x64():
    """Context manager enabling float64 (restores the previous setting on exit)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # jax < 0.7

    return enable_x64()


def _inputs(rng: np.random.Generator, n: int, dtype) -> tuple:
    """Random neurons: ~1/3 refractory, some exactly at threshold after the step, some just below."""
    v = rng.uniform(-80.0, -45.0, n).astype(dtype)
    i = rng.normal(0.5, 3.0, n).astype(dtype)
    tau = rng.uniform(2.0, 40.0, n).astype(dtype)
    v_th = rng.uniform(-56.0, -44.0, n).astype(dtype)
    refrac = rng.integers(-1, 4, n).astype(np.int32)  # includes negatives, 0, 1 (last step) and >1
    # Exactly-at-threshold neurons: v_th equals the integrated V (computed by the reference).
    no_spike = np.full(n, np.inf, dtype)
    v_int = np.asarray(reference.lif_step(v, i, tau, no_spike, np.zeros(n, np.int32), **KW)[0]).astype(dtype)
    at = rng.random(n) < 0.2
    v_th = np.where(at, v_int, v_th)
    # Just-below-threshold neurons: v_th one ulp above the integrated V (must not spike).
    below = (~at) & (rng.random(n) < 0.1)
    v_th = np.where(below, np.nextafter(v_int, np.asarray(np.inf, dtype)), v_th)
    return v, i, tau, v_th.astype(dtype), refrac, at, below


def _assert_same(got, want) -> None:
    for name, g, w in zip(("v_mV", "spikes", "refrac_left"), got, want, strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype, (name, g.dtype, w.dtype)
        assert g.shape == w.shape, (name, g.shape, w.shape)
        # Bitwise comparison (NaN-safe, distinguishes -0.0 from 0.0).
        np.testing.assert_array_equal(g.view(np.uint8), w.view(np.uint8), err_msg=name)


def _assert_within_one_ulp(got, want) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    ulp = np.spacing(np.maximum(np.abs(got), np.abs(want)))
    assert np.all(np.abs(got.astype(np.float64) - want.astype(np.float64)) <= ulp)


def test_available():
    assert fused.available(), "fumjax._core is not importable: build/install the package first"
    assert "lif_step" in fused.OPS
    fused._register()  # idempotent
    fused._register()
    assert "cpu" in fused._registered


@pytest.mark.parametrize("n", [1, 7, 1000, 4099])
def test_float32_eager_and_jit(n):
    v, i, tau, v_th, refrac, at, below = _inputs(np.random.default_rng(n), n, np.float32)
    args = tuple(jnp.asarray(x) for x in (v, i, tau, v_th, refrac))
    want = reference.lif_step(*args, **KW)
    _assert_same(fused.lif_step(*args, **KW), want)
    got_jit = jax.jit(lambda *a: fused.lif_step(*a, **KW))(*args)
    _assert_same(got_jit, want)
    # jit(reference) may be FMA-contracted: 1 ulp off in V, so spikes may flip only for the neurons
    # placed exactly at / one ulp below threshold.
    want_jit = jax.jit(lambda *a: reference.lif_step(*a, **KW))(*args)
    same_spike = np.asarray(got_jit[1]) == np.asarray(want_jit[1])
    assert np.all(same_spike | at | below)
    _assert_within_one_ulp(np.asarray(got_jit[0])[same_spike], np.asarray(want_jit[0])[same_spike])

    spikes, refrac_new = np.asarray(want[1]), np.asarray(want[2])
    free = refrac <= 0
    # The cases really occur and behave as specified.
    assert np.all(spikes[at & free] == 1)
    assert np.all(spikes[below & free] == 0)
    assert np.all(spikes[~free] == 0)
    assert np.all(np.asarray(want[0])[~free] == np.float32(KW["v_reset_mV"]))
    assert np.all(refrac_new[spikes == 1] == KW["refractory_steps"])
    assert np.all(refrac_new[spikes == 0] == np.maximum(refrac[spikes == 0] - 1, 0))
    if n >= 1000:
        assert (at & free).sum() > 0 and (below & free).sum() > 0 and (~free).sum() > 0


def test_float32_hand_values():
    # v=-60, tau=10, dt=0.1 -> -60 + 0.01*(-5) + 2 = -58.05 (in float32 arithmetic).
    v = jnp.array([-60.0, -60.0, -60.0, -50.0], jnp.float32)
    i = jnp.array([2.0, 2.0, 2.0, 0.0], jnp.float32)
    tau = jnp.full(4, 10.0, jnp.float32)
    f = np.float32
    v_int = f(f(-60.0) + f(f(f(0.1) / f(10.0)) * f(f(-65.0) - f(-60.0)))) + f(2.0)
    v_th = jnp.array([v_int, np.nextafter(v_int, f(0)), -40.0, -55.0], jnp.float32)
    refrac = jnp.array([0, 0, 0, 2], jnp.int32)
    v_new, spikes, r_new = fused.lif_step(v, i, tau, v_th, refrac, **KW)
    np.testing.assert_array_equal(np.asarray(spikes), [1, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(v_new), np.array([-70.0, v_int, v_int, -70.0], np.float32))
    np.testing.assert_array_equal(np.asarray(r_new), [5, 0, 0, 1])


def test_float64():
    with _x64():
        v, i, tau, v_th, refrac, at, _ = _inputs(np.random.default_rng(64), 2000, np.float64)
        args = tuple(jnp.asarray(x) for x in (v, i, tau, v_th, refrac))
        assert args[0].dtype == jnp.float64
        want = reference.lif_step(*args, **KW)
        got = fused.lif_step(*args, **KW)
        assert got[0].dtype == jnp.float64
        _assert_same(got, want)
        _assert_same(jax.jit(lambda *a: fused.lif_step(*a, **KW))(*args), want)
        assert np.asarray(want[1])[at & (refrac <= 0)].all()
        # float64 differs from the float32 result for the same inputs: it is really computed in f64.
        got32 = fused.lif_step(*(jnp.asarray(x, jnp.float32) for x in (v, i, tau, v_th)), args[4], **KW)
        assert got32[0].dtype == jnp.float32
        assert np.any(np.asarray(got[0]) != np.asarray(got32[0]).astype(np.float64))
    assert jnp.asarray(1.0).dtype == jnp.float32  # x64 setting restored


def test_scan_200_steps():
    """jit(lax.scan) of the fused step == the reference stepped op by op, for all 200 steps."""
    rng = np.random.default_rng(200)
    n, steps = 512, 200
    v0 = jnp.asarray(rng.uniform(-70.0, -50.0, n), jnp.float32)
    refrac0 = jnp.zeros(n, jnp.int32)
    tau = jnp.asarray(rng.uniform(5.0, 30.0, n), jnp.float32)
    v_th = jnp.asarray(rng.uniform(-55.0, -50.0, n), jnp.float32)
    drive = jnp.asarray(rng.normal(0.3, 1.5, (steps, n)), jnp.float32)

    def body(carry, i_t):
        v, refrac = carry
        v, spikes, refrac = fused.lif_step(v, i_t, tau, v_th, refrac, **KW)
        return (v, refrac), (spikes, v, refrac)

    (v_f, r_f), (raster_f, vs_f, rs_f) = jax.jit(lambda c, d: lax.scan(body, c, d))((v0, refrac0), drive)

    v, refrac = v0, refrac0
    raster_r, vs_r, rs_r = [], [], []
    for t in range(steps):
        v, spikes, refrac = reference.lif_step(v, drive[t], tau, v_th, refrac, **KW)
        raster_r.append(np.asarray(spikes))
        vs_r.append(np.asarray(v))
        rs_r.append(np.asarray(refrac))
    raster_r, vs_r, rs_r = np.stack(raster_r), np.stack(vs_r), np.stack(rs_r)

    raster_f = np.asarray(raster_f)
    assert raster_f.shape == (steps, n) and raster_f.dtype == np.uint8
    assert raster_r.sum() > 100, "test network should spike"
    assert (rs_r > 1).any(), "test network should have refractory neurons"
    np.testing.assert_array_equal(raster_f, raster_r)
    np.testing.assert_array_equal(np.asarray(vs_f).view(np.uint32), vs_r.view(np.uint32))
    np.testing.assert_array_equal(np.asarray(rs_f), rs_r)
    np.testing.assert_array_equal(np.asarray(v_f).view(np.uint32), vs_r[-1].view(np.uint32))
    np.testing.assert_array_equal(np.asarray(r_f), rs_r[-1])


def test_vmap():
    rng = np.random.default_rng(7)
    b, n = 4, 300
    batches = [_inputs(rng, n, np.float32)[:5] for _ in range(b)]
    stacked = tuple(jnp.asarray(np.stack(xs)) for xs in zip(*batches, strict=True))

    def f(*a):
        return fused.lif_step(*a, **KW)

    def g(*a):
        return reference.lif_step(*a, **KW)

    got = jax.vmap(f)(*stacked)
    assert got[0].shape == (b, n)
    _assert_same(got, jax.vmap(g)(*stacked))
    _assert_same(jax.jit(jax.vmap(f))(*stacked), jax.vmap(g)(*stacked))
    for k in range(b):
        row = reference.lif_step(*(jnp.asarray(x) for x in batches[k]), **KW)
        _assert_same(tuple(x[k] for x in got), row)
    # Unbatched parameters (tau, v_th shared across the batch).
    got_shared = jax.vmap(f, in_axes=(0, 0, None, None, 0))(
        stacked[0], stacked[1], stacked[2][0], stacked[3][0], stacked[4]
    )
    want_shared = jax.vmap(g, in_axes=(0, 0, None, None, 0))(
        stacked[0], stacked[1], stacked[2][0], stacked[3][0], stacked[4]
    )
    _assert_same(got_shared, want_shared)


def test_empty():
    z = jnp.zeros(0, jnp.float32)
    v, s, r = fused.lif_step(z, z, z, z, jnp.zeros(0, jnp.int32), **KW)
    assert v.shape == (0,) and s.dtype == jnp.uint8 and r.dtype == jnp.int32


def test_wrong_dtype_python_errors():
    n = 8
    f32 = jnp.ones(n, jnp.float32)
    r = jnp.zeros(n, jnp.int32)
    with pytest.raises(TypeError, match="float32 or float64"):
        fused.lif_step(jnp.ones(n, jnp.float16), f32, f32, f32, r, **KW)
    with pytest.raises(TypeError, match="refrac_left must be int32"):
        fused.lif_step(f32, f32, f32, f32, jnp.zeros(n, jnp.uint8), **KW)
    with pytest.raises(TypeError, match="i_mV has dtype"):
        fused.lif_step(f32, jnp.ones(n, jnp.bfloat16), f32, f32, r, **KW)


def _raw_call(args, out_dtype=jnp.float32):
    shape = args[0].shape
    call = jax.ffi.ffi_call(
        fused.TARGET,
        (
            jax.ShapeDtypeStruct(shape, out_dtype),
            jax.ShapeDtypeStruct(shape, jnp.uint8),
            jax.ShapeDtypeStruct(shape, jnp.int32),
        ),
    )
    out = call(
        *args,
        v_rest_mV=np.float64(-65.0),
        v_reset_mV=np.float64(-70.0),
        dt_ms=np.float64(0.1),
        refractory_steps=np.int32(5),
    )
    return jax.block_until_ready(out)


def test_wrong_dtype_handler_errors():
    """The C++ handler itself rejects bad dtypes/shapes with InvalidArgument (no crash)."""
    assert fused.available()
    n = 8
    f32, r = jnp.ones(n, jnp.float32), jnp.zeros(n, jnp.int32)
    with pytest.raises(Exception, match="float32 or float64"):
        _raw_call((jnp.ones(n, jnp.int32), f32, f32, f32, r), out_dtype=jnp.int32)
    with pytest.raises(Exception, match="share one float dtype"):
        _raw_call((f32, jnp.ones(n, jnp.bfloat16), f32, f32, r))
    with pytest.raises(Exception, match="refrac_left must be int32"):
        _raw_call((f32, f32, f32, f32, jnp.zeros(n, jnp.float32)))
    with pytest.raises(Exception, match="same shape"):
        _raw_call((f32, f32, jnp.ones(n + 1, jnp.float32), f32, r))
    # Still healthy afterwards.
    v, s, rr = _raw_call((f32 * -60.0, f32 * 0.0, f32 * 10.0, f32 * -50.0, r))
    assert np.asarray(s).sum() == 0


def _gpu_devices():
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_devices(), reason="no GPU visible to JAX (jax.devices('gpu') fails)")
def test_gpu_matches_reference():
    if not fused.gpu_available():
        pytest.skip("fumjax._core_gpu was not built (no CUDA/HIP toolkit at build time)")
    gpu = _gpu_devices()[0]
    for dtype, ctx in ((np.float32, contextlib.nullcontext()), (np.float64, _x64())):
        with ctx:
            v, i, tau, v_th, refrac, _, _ = _inputs(np.random.default_rng(3), 5000, dtype)
            args_gpu = tuple(jax.device_put(jnp.asarray(x), gpu) for x in (v, i, tau, v_th, refrac))
            got = jax.jit(lambda *a: fused.lif_step(*a, **KW))(*args_gpu)
            assert got[0].devices() == {gpu}
            with jax.default_device(jax.devices("cpu")[0]):  # op-by-op reference on CPU
                want = reference.lif_step(*(jnp.asarray(x) for x in (v, i, tau, v_th, refrac)), **KW)
            _assert_same(got, want)
