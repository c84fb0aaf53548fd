"""The fused whole-run kernel honours Network.plastic_pre exactly as the reference does."""

import numpy as np
import pytest

import fumjax
from fumjax import FumConfig, Network
from fumjax.dynamics import background_current
from fumjax.kernels import fused

pytestmark = pytest.mark.skipif(not fused.available(), reason="fumjax._core not built")


@pytest.mark.parametrize("mode", ["stdp", "rstdp"])
def test_static_presynaptic_neurons_match_reference(mode):
    rng = np.random.default_rng(7)
    n, e = 300, 6000
    pre, post = rng.integers(0, n, e), rng.integers(0, n, e)
    exc = rng.random(n) < 0.8
    w = np.where(exc[pre], rng.uniform(0, 0.3, e), rng.uniform(-0.3, 0, e))
    plastic = rng.random(n) < 0.6
    cfg = FumConfig().replace(neuron={"n_neurons": n})
    net = Network.from_arrays(pre, post, w, np.full(n, 20.0), np.full(n, -55.0), exc, plastic_pre=plastic)
    state = fumjax.init_state(net, cfg)
    i_ext = background_current(state, net, 400, cfg) * 1.5
    ref, s_ref = fumjax.simulate(state, net, i_ext, config=cfg, plasticity=mode, backend="reference")
    fus, s_fus = fumjax.simulate(state, net, i_ext, config=cfg, plasticity=mode, backend="fused")
    assert int(s_ref.sum()) > 1000
    np.testing.assert_array_equal(np.asarray(s_fus), np.asarray(s_ref))
    # float state: within 1e-5 relative (XLA's CPU code generation may round differently by processor)
    np.testing.assert_allclose(np.asarray(fus.w), np.asarray(ref.w), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(fus.elig), np.asarray(ref.elig), rtol=1e-5, atol=1e-7)
    static = ~plastic[np.asarray(net.pre)]
    np.testing.assert_array_equal(np.asarray(fus.w)[static], np.asarray(net.w0)[static])
    assert not np.asarray(fus.elig)[static].any()
    assert np.asarray(fus.elig if mode == "rstdp" else fus.w - net.w0)[~static].any()
