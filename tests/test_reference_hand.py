"""Reference backend against values worked out by hand (DESIGN.md step order and equations)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import fumjax
from fumjax import FumConfig, Network

A_PLUS, A_MINUS = 0.1, 0.12


def _pair_net(w0: float, excitatory_pre: bool) -> Network:
    """Neuron 0 -> neuron 1, one synapse."""
    return Network.from_arrays(
        np.array([0]),
        np.array([1]),
        np.array([w0]),
        tau_ms=np.array([20.0, 20.0]),
        v_th_mV=np.array([-55.0, -55.0]),
        excitatory=np.array([excitatory_pre, True]),
    )


def _pulses(t_steps: int, times: dict[int, int]) -> np.ndarray:
    """External input (T, 2): a 100 mV kick makes neuron i spike at step times[i]."""
    i_ext = np.zeros((t_steps, 2), np.float32)
    for neuron, t in times.items():
        i_ext[t, neuron] = 100.0
    return i_ext


CFG_NO_COUPLING = FumConfig().replace(connectivity={"g_syn_mV": 0.0}, intrinsic={"enabled": False})


def test_single_neuron_threshold_crossing_under_constant_input():
    # u = V + 70 follows u[t] = 0.95 u[t-1] + 1, so u[t] = 20 (1 - 0.95^t); u >= 15 first at t = 28
    # (0.95^27 = 0.2503 -> u = 14.993; 0.95^28 = 0.2378 -> u = 15.243): spike at index 27, again at 55.
    net = Network.from_arrays(
        np.array([0]),
        np.array([0]),
        np.array([0.0]),
        tau_ms=np.array([20.0]),
        v_th_mV=np.array([-55.0]),
        excitatory=np.array([True]),
    )
    state = fumjax.init_state(net, CFG_NO_COUPLING)
    state, spikes = fumjax.simulate(state, net, jnp.ones((60, 1)), config=CFG_NO_COUPLING, plasticity=False)
    assert spikes.dtype == jnp.uint8 and spikes.shape == (60, 1)
    assert np.flatnonzero(np.asarray(spikes[:, 0])).tolist() == [27, 55]
    u_59 = 20 * (1 - 0.95 ** (59 - 55))
    assert float(state.v_mV[0]) == pytest.approx(-70 + u_59, abs=1e-4)


@pytest.mark.parametrize("excitatory", [True, False])
@pytest.mark.parametrize("dt_ms", [5, -5, 0])
def test_stdp_pair(excitatory, dt_ms):
    # pre spikes at step 10, post at 10 + dt: Δw = +A+ e^{-5/20} (dt=+5), -A- e^{-5/20} (dt=-5), 0 (dt=0);
    # an inhibitory presynaptic neuron flips the sign.
    w0 = 0.5 if excitatory else -0.5
    net = _pair_net(w0, excitatory)
    state = fumjax.init_state(net, CFG_NO_COUPLING)
    state, spikes = fumjax.simulate(
        state, net, _pulses(30, {0: 10, 1: 10 + dt_ms}), config=CFG_NO_COUPLING, plasticity="stdp"
    )
    assert np.asarray(spikes).sum(0).tolist() == [1, 1]
    expected = {5: A_PLUS * math.exp(-5 / 20), -5: -A_MINUS * math.exp(-5 / 20), 0: 0.0}[dt_ms]
    sign = 1.0 if excitatory else -1.0
    assert float(state.w[0]) - w0 == pytest.approx(sign * expected, abs=1e-6)


@pytest.mark.parametrize("k", [12, 120])  # 120 crosses the dense renormalizations at steps 50 and 100
def test_eligibility_decays_by_gamma_per_step_and_reward_uses_eta_eff(k):
    net = _pair_net(0.5, True)
    state = fumjax.init_state(net, CFG_NO_COUPLING)
    # post spike at step 15, then k more steps of decay
    state, _ = fumjax.simulate(state, net, _pulses(15 + 1 + k, {0: 10, 1: 15}), config=CFG_NO_COUPLING)
    e_expected = A_PLUS * math.exp(-5 / 20) * 0.95**k
    assert float(fumjax.state.eligibility(state, CFG_NO_COUPLING)[0]) == pytest.approx(e_expected, rel=1e-5)
    assert float(state.w[0]) == 0.5  # rstdp: nothing reaches w before the reward
    state = fumjax.end_window(state, 1.0, config=CFG_NO_COUPLING)
    eta_eff = 0.01 * (1 + (2 / (1 + math.exp(-1.0)) - 1))  # 0.0146212
    assert float(state.w[0]) == pytest.approx(0.5 + eta_eff * 1.0 * e_expected, rel=1e-6)
    state_neg = fumjax.end_window(
        fumjax.init_state(net, CFG_NO_COUPLING).replace(elig=jnp.array([0.2])), -2.0, config=CFG_NO_COUPLING
    )
    eta_neg = 0.01 * (2 / (1 + math.exp(2.0)))
    assert float(state_neg.w[0]) == pytest.approx(0.5 + eta_neg * -2.0 * 0.2, rel=1e-6)


@pytest.mark.parametrize("excitatory,w0,bound", [(True, 0.95, 1.0), (False, -0.95, -1.0)])
def test_weights_clip_at_plus_minus_one(excitatory, w0, bound):
    net = _pair_net(w0, excitatory)
    state = fumjax.init_state(net, CFG_NO_COUPLING)
    state, _ = fumjax.simulate(
        state, net, _pulses(30, {0: 10, 1: 15}), config=CFG_NO_COUPLING, plasticity="stdp"
    )
    assert float(state.w[0]) == bound
    # reward path clips too: a large reward times a large eligibility
    state = fumjax.init_state(net, CFG_NO_COUPLING).replace(elig=jnp.array([50.0 * np.sign(w0)]))
    assert float(fumjax.end_window(state, 3.0, config=CFG_NO_COUPLING).w[0]) == bound


def test_intrinsic_plasticity_steps_and_clamps():
    cfg = FumConfig().replace(connectivity={"g_syn_mV": 0.0})  # band 2-20 Hz, steps 0.1 mV / 0.1 ms
    net = Network.from_arrays(
        np.array([0]),
        np.array([1]),
        np.array([0.1]),
        tau_ms=np.array([15.05, 24.95, 20.0, 20.0]),
        v_th_mV=np.array([-50.05, -59.95, -55.0, -55.0]),
        excitatory=np.array([True, True, True, True]),
    )
    state = fumjax.init_state(net, cfg)
    # 50-step window: neuron 0 fires 5 times (100 Hz, above), 1 and 2 never (below), 3 once (20 Hz, inside)
    state = state.replace(window_spikes=jnp.array([5, 0, 0, 1], jnp.int32), step=jnp.array(50, jnp.int32))
    state = fumjax.end_window(state, 0.0, config=cfg)
    np.testing.assert_allclose(np.asarray(state.rate_hz), [100.0, 0.0, 0.0, 20.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.v_th_mV), [-50.0, -60.0, -55.1, -55.0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(state.tau_ms), [15.0, 25.0, 20.1, 20.0], atol=1e-5)
    assert np.asarray(state.window_spikes).tolist() == [0, 0, 0, 0] and int(state.window_start) == 50
