"""`fused.all_finite` (FFI target `fumjax_all_finite`, cpp/all_finite.cc): the public API's NaN/Inf scan on
the CPU, against the reference answer jnp.isfinite(x).all() per array, in every floating storage dtype, on
fresh random arrays (the seed is printed in the failure message; FUMJAX_GOLDEN_SEED=<seed> reproduces)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden_util import fresh_seed, x64

import fumjax
from fumjax.kernels import fused

pytestmark = pytest.mark.skipif(not fused.available(), reason="fumjax._core not built")


def _arrays(rng: np.random.Generator, dtype) -> list[tuple[str, jax.Array]]:
    """Finite arrays (with the dtype's extremes: +-max, the smallest subnormal, -0.0), the same with one NaN,
    +Inf or -Inf at a random place, a 2-D one and an empty one."""
    info = jnp.finfo(dtype)
    finite = rng.standard_normal(1003).astype(np.float32) * 100.0
    extremes = np.array([info.max, -info.max, info.smallest_subnormal, -0.0], np.float64)
    base = np.concatenate([finite, extremes]).astype(dtype)
    out = [("finite", base)]
    for name, value in (("nan", np.nan), ("+inf", np.inf), ("-inf", -np.inf)):
        bad = base.copy()
        bad[rng.integers(0, bad.size)] = value
        out.append((name, bad))
    out.append(("2-D with a NaN", np.where(rng.random((37, 29)) < 0.001, np.nan, 1.0).astype(dtype)))
    out.append(("empty", np.zeros((0,), dtype)))
    return [(name, jnp.asarray(x)) for name, x in out]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_all_finite_matches_isfinite(dtype):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    with x64():
        arrays = _arrays(rng, jnp.dtype(dtype))
        xs = tuple(x for _, x in arrays)
        assert fused.all_finite_supported(xs)
        got = np.asarray(fused.all_finite(xs))
        want = np.asarray([bool(jnp.isfinite(x).all()) for x in xs])
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, want, err_msg=f"{dtype} seed={seed}: {[n for n, _ in arrays]}")
    assert want.tolist() == [True, False, False, False, bool(np.isfinite(np.asarray(xs[4])).all()), True]


def test_all_finite_supported_only_for_concrete_float_arrays_on_the_cpu():
    f = jnp.ones(4, jnp.float32)
    assert fused.all_finite_supported((f, jnp.ones(3, jnp.bfloat16)))
    assert not fused.all_finite_supported((f, jnp.ones(3, jnp.int32)))  # not floating
    assert not fused.all_finite_supported((f, np.ones(3, np.float32)))  # not a jax.Array
    seen = []
    jax.jit(lambda x: seen.append(fused.all_finite_supported((x,))) or x)(f)  # a tracer
    assert seen == [False]


def test_api_names_the_array_through_the_scan():
    """simulate's check takes the scan (CPU) and still names the first bad array."""
    cfg = fumjax.FumConfig().replace(neuron={"n_neurons": 50})
    net = fumjax.build_network(cfg)
    state = fumjax.init_state(net, cfg)
    i_ext = jnp.zeros((5, 50), jnp.float32)
    bad = state.replace(elig=state.elig.at[7].set(-jnp.inf), w=state.w.at[3].set(jnp.nan))
    with pytest.raises(ValueError, match="state.w contains NaN or Inf"):
        fumjax.simulate(bad, net, i_ext, config=cfg)
    with pytest.raises(ValueError, match="i_ext_mV contains NaN or Inf"):
        fumjax.simulate(state, net, i_ext.at[4, 49].set(jnp.inf), config=cfg)
