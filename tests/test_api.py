"""Public API: jit/vmap, bad input rejected before any state changes, the default network's activity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fumjax
from fumjax import FumConfig
from fumjax.dynamics import background_current

SMALL = FumConfig().replace(neuron={"n_neurons": 100})


@pytest.fixture(scope="module")
def small():
    net = fumjax.build_network(SMALL)
    return net, fumjax.init_state(net, SMALL)


def test_vmap_over_independent_states_matches_separate_runs(small):
    net, state = small
    drives = jnp.stack(
        [background_current(state.replace(seed=jnp.uint32(s)), net, 100, SMALL) for s in (1, 2, 3)]
    )
    states = jax.tree.map(lambda x: jnp.stack([x] * 3), state)

    def run(st, i_ext):
        return fumjax.simulate(st, net, i_ext, config=SMALL)

    out_states, spikes = jax.vmap(run)(states, drives)
    assert spikes.shape == (3, 100, 100) and spikes.dtype == jnp.uint8
    for b in range(3):
        s_b, sp_b = fumjax.simulate(state, net, drives[b], config=SMALL)
        np.testing.assert_array_equal(np.asarray(spikes[b]), np.asarray(sp_b))
        np.testing.assert_array_equal(np.asarray(out_states.elig[b]), np.asarray(s_b.elig))
    assert not np.array_equal(np.asarray(spikes[0]), np.asarray(spikes[1]))  # different drives differ


def test_simulate_under_user_jit(small):
    net, state = small
    i_ext = background_current(state, net, 50, SMALL)
    jitted = jax.jit(lambda st, i: fumjax.simulate(st, net, i, config=SMALL))
    _, sp_jit = jitted(state, i_ext)
    _, sp = fumjax.simulate(state, net, i_ext, config=SMALL)
    np.testing.assert_array_equal(np.asarray(sp_jit), np.asarray(sp))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda st, i: (st, i.at[3, 7].set(jnp.nan)), "i_ext_mV contains NaN or Inf"),
        (lambda st, i: (st, i.at[0, 0].set(jnp.inf)), "i_ext_mV contains NaN or Inf"),
        (lambda st, i: (st.replace(v_mV=st.v_mV.at[2].set(jnp.nan)), i), "state.v_mV contains NaN or Inf"),
        (lambda st, i: (st.replace(w=st.w.at[0].set(jnp.inf)), i), "state.w contains NaN or Inf"),
        (lambda st, i: (st, i[:, :50]), "i_ext_mV has shape (10, 50): expected 2 dims with last dim 100"),
        (lambda st, i: (st, i[0]), "i_ext_mV has shape (100,)"),
        (lambda st, i: (st, i.astype(jnp.int32)), "i_ext_mV has dtype int32: expected a floating dtype"),
        (lambda st, i: (st, i[:0]), "i_ext_mV has 0 steps"),
        (lambda st, i: (st.replace(w=st.w[:-1]), i), "state.w has shape"),
        (lambda st, i: (st.replace(v_mV=st.v_mV.astype(jnp.float16)), i), "state.v_mV has dtype float16"),
    ],
)
def test_bad_input_raises_before_state_changes(small, mutate, message):
    net, state = small
    before = jax.tree.map(np.array, state)
    bad_state, bad_i = mutate(state, background_current(state, net, 10, SMALL))
    with pytest.raises(ValueError) as info:
        fumjax.simulate(bad_state, net, bad_i, config=SMALL)
    assert message in str(info.value)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, state))


def test_bad_arguments(small):
    net, state = small
    i_ext = jnp.zeros((5, 100))
    with pytest.raises(ValueError, match="backend = 'gpu-magic'"):
        fumjax.simulate(state, net, i_ext, config=SMALL, backend="gpu-magic")
    with pytest.raises(ValueError, match="plasticity = 'hebb'"):
        fumjax.simulate(state, net, i_ext, config=SMALL, plasticity="hebb")
    with pytest.raises(ValueError, match="reward contains NaN"):
        fumjax.end_window(state, float("nan"), config=SMALL)
    with pytest.raises(ValueError, match="reward must be a scalar"):
        fumjax.end_window(state, jnp.ones(3), config=SMALL)
    with pytest.raises(ValueError, match="n_windows = 0"):
        fumjax.run_driven(state, net, 0, config=SMALL)


def test_float64_when_x64_enabled():
    cfg = SMALL.replace(run={"dtype": "float64"})
    with pytest.raises(ValueError, match="needs jax x64"):
        fumjax.init_state(fumjax.build_network(cfg), cfg)
    jax.config.update("jax_enable_x64", True)
    try:
        net = fumjax.build_network(cfg)
        state = fumjax.init_state(net, cfg)
        state, spikes = fumjax.simulate(state, net, background_current(state, net, 200, cfg), config=cfg)
        assert state.v_mV.dtype == jnp.float64 and state.w.dtype == jnp.float64
        assert int(spikes.sum()) > 0
    finally:
        jax.config.update("jax_enable_x64", False)


def test_default_network_is_active_and_stays_finite_for_100k_steps():
    cfg = FumConfig()
    net = fumjax.build_network(cfg)
    state = fumjax.init_state(net, cfg)
    n_windows = 100_000 // cfg.run.window_steps
    state, counts, rewards = fumjax.run_driven(state, net, n_windows, config=cfg)
    counts = np.asarray(counts)
    rate_first_10s = counts[:200].sum() / (1000 * 10.0)
    rate_last_10s = counts[-200:].sum() / (1000 * 10.0)
    assert 1.0 <= rate_first_10s <= 50.0, rate_first_10s
    assert 1.0 <= rate_last_10s <= 50.0, rate_last_10s
    for name in ("v_mV", "w", "elig", "x_pre", "y_post", "tau_ms", "v_th_mV"):
        assert np.isfinite(np.asarray(getattr(state, name))).all(), name
    w = np.asarray(state.w)
    assert np.abs(w).max() <= 1.0 and not np.array_equal(w, np.asarray(net.w0))  # plasticity moved weights
    assert int(state.step) == 100_000


def test_gpu_split_traces_attr(monkeypatch):
    """FUMJAX_GPU_SPLIT_TRACES picks the block split kernel's trace owner: dyn (the default) -> 1, plast -> 0;
    anything else is an error naming the variable."""
    from fumjax.kernels.fused import gpu_path_attrs

    monkeypatch.delenv("FUMJAX_GPU_SPLIT_TRACES", raising=False)
    assert int(gpu_path_attrs()["gpu_split_traces"]) == 1
    monkeypatch.setenv("FUMJAX_GPU_SPLIT_TRACES", "plast")
    assert int(gpu_path_attrs()["gpu_split_traces"]) == 0
    monkeypatch.setenv("FUMJAX_GPU_SPLIT_TRACES", "warp")
    with pytest.raises(ValueError, match="FUMJAX_GPU_SPLIT_TRACES = 'warp'"):
        gpu_path_attrs()
