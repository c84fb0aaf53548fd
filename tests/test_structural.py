import numpy as np
import pytest

import fumjax
from fumjax import FumConfig, Network
from fumjax.dynamics import _simulate, background_current
from fumjax.train import structural as S

CFG = FumConfig().replace(neuron={"n_neurons": 100})


def _window(state, net):
    state, spikes = fumjax.simulate(state, net, background_current(state, net, 50, CFG), config=CFG)
    return fumjax.end_window(state, 0.2, config=CFG), spikes


@pytest.fixture(scope="module")
def base():
    net = fumjax.build_network(CFG)
    state, _ = _window(fumjax.init_state(net, CFG), net)
    return net, state


def test_capacity_padding_changes_nothing_for_alive_neurons(base):
    net, state = base
    s = S.from_network(net, state, n_cap=130, e_cap=700)
    big_net, big_state = S.to_network(s, S.pad_state(state, net, 130, CFG), CFG)
    assert big_net.n_neurons == 130 and big_net.n_synapses == 700
    a, sp_a = _window(state, net)
    b, sp_b = _window(big_state, big_net)
    np.testing.assert_array_equal(np.asarray(sp_b)[:, :100], np.asarray(sp_a))
    assert np.asarray(sp_b)[:, 100:].sum() == 0  # dead slots and the sink never spike
    w_slots = np.asarray(big_net.to_input_order(b.w))  # slot order: the original synapses first
    np.testing.assert_array_equal(w_slots[:500], np.asarray(net.to_input_order(a.w)))
    assert not w_slots[500:].any()


def test_grow_respects_caps_and_does_not_recompile(base):
    net, state = base
    s = S.from_network(net, state, n_cap=130, e_cap=800)
    big_net, big_state = S.to_network(s, S.pad_state(state, net, 130, CFG), CFG)
    big_state, _ = _window(big_state, big_net)
    compiled = _simulate._cache_size()
    s = S.from_network(big_net, big_state)  # capacities recognized from the dead slots
    assert (s.n_cap, s.alive_n.sum(), s.alive_s.size, s.alive_s.sum()) == (130, 100, 800, 500)
    rng = np.random.default_rng(0)
    ids = S.grow(s, 10, rng, CFG, k_in=5, k_out=3)
    assert ids.tolist() == [100]  # 1% of 100 alive neurons: one neuron per event
    assert s.alive_n.sum() == 101 and s.alive_s.sum() == 500 + 8
    assert ((s.post == 100) & s.alive_s).sum() == 5 and ((s.pre == 100) & s.alive_s).sum() == 3
    assert CFG.neuron.v_th_min_mV <= s.v_th_mV[100] <= CFG.neuron.v_th_max_mV
    grown_net, grown_state = S.to_network(s, big_state, CFG)
    _window(grown_state, grown_net)
    assert _simulate._cache_size() == compiled  # same shapes: no new compilation


def test_prune_compensates_downstream_thresholds_by_hand():
    net = Network.from_arrays(
        [0, 2],
        [1, 1],
        [0.3, -0.2],
        tau_ms=[20.0, 20.0, 20.0, 20.0],
        v_th_mV=[-55.0, -55.0, -55.0, -55.0],
        excitatory=[True, True, False, True],
    )
    state = fumjax.init_state(net, CFG)
    s = S.from_network(net, state, n_cap=5, e_cap=2)
    rates = np.array([0.5, 10.0, 0.8, 3.0, 0.0])
    ids = S.prune(s, rates, CFG, rate_min_hz=1.0, max_fraction=0.5)
    assert ids.tolist() == [0, 2]  # the two silent neurons (max 50% of 4 alive = 2)
    # lost drive into neuron 1: g (2 mV) * (0.3 * 0.5 Hz + (-0.2) * 0.8 Hz) * 1 ms / 1000 = -2e-5 mV per step
    # threshold moves by -tau/dt times that: +0.0004 mV
    assert s.v_th_mV[1] == pytest.approx(-55.0 + 20.0 * 2e-5, abs=1e-6)
    assert not s.alive_s.any() and s.alive_n.tolist() == [False, True, False, True, False]


def test_rewire_keeps_synapse_count_and_adds_inhibition(base):
    net, state = base
    s = S.from_network(net, state, n_cap=101, e_cap=500)
    w_before = s.w.copy()
    rng = np.random.default_rng(1)
    spikes = (rng.random((200, 101)) < 0.05).astype(np.uint8)
    spikes[:, 100] = 0
    made = S.rewire(s, spikes, rng, CFG, max_fraction=0.04)
    assert made == 20  # 4% of 500 synapses: 17 excitatory + round(0.2 * 17) = 3 inhibitory
    assert s.alive_s.sum() == 500
    new = np.flatnonzero(s.alive_s & (s.elig == 0) & (s.w != w_before))
    assert (~s.excitatory[s.pre[new]]).sum() >= 3
