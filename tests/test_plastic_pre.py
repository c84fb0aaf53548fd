"""Static synapses: Network.plastic_pre False gives a neuron's outgoing synapses dw = 0 (reference STDP)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import fumjax
from fumjax.state import eligibility


def _two_neuron_net(plastic_pre):
    # 0 -> 1 (w 0.5) and 1 -> 0 (w -0.5); neuron 0 excitatory, 1 inhibitory
    return fumjax.Network.from_arrays(
        [0, 1], [1, 0], [0.5, -0.5], [20.0, 20.0], [-55.0, -55.0], [True, False], plastic_pre=plastic_pre
    )


def test_plastic_pre_gate_gives_zero_dw_for_static_synapses():
    cfg = fumjax.FumConfig().replace(plasticity={"gamma": 1.0}, intrinsic={"enabled": False})
    # alternate spikes of 0 and 1 so both synapses see pre-post and post-pre pairs
    i_ext = np.zeros((20, 2), np.float32)
    i_ext[2::4, 0] = 30.0
    i_ext[4::4, 1] = 30.0
    e = {}
    for name, pp in (("all", None), ("static1", [True, False])):
        net = _two_neuron_net(pp)
        s, spikes = fumjax.simulate(fumjax.init_state(net, cfg), net, jnp.asarray(i_ext), config=cfg)
        assert np.asarray(spikes).sum(0).min() >= 3
        e[name] = np.asarray(net.to_input_order(eligibility(s, cfg)))
        s2 = fumjax.end_window(s, 1.0, config=cfg)
        w = np.asarray(net.to_input_order(s2.w))
        if name == "static1":
            assert e[name][1] == 0.0 and w[1] == -0.5  # 1 -> 0 is static: no eligibility, weight unchanged
            assert w[0] != 0.5
    assert e["all"][1] != 0.0  # the same synapse is plastic by default
    assert e["all"][0] == e["static1"][0]  # the plastic synapse is unaffected by the gate
    np.testing.assert_array_equal(np.asarray(_two_neuron_net(None).plastic_pre), [True, True])
    np.testing.assert_array_equal(np.asarray(_two_neuron_net([True, False]).sign), [1.0, 0.0])
    with pytest.raises(ValueError, match="plastic_pre"):
        _two_neuron_net([True])
