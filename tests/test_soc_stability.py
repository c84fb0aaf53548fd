import jax.numpy as jnp
import numpy as np
import pytest

from fumjax.train.soc import avalanche_sizes, criticality_index, fit_power_law, soc_control
from fumjax.train.stability import decay_weights, update_tags


def test_avalanche_sizes_by_hand():
    assert avalanche_sizes(np.array([0, 2, 3, 0, 0, 1, 0, 4, 4, 4])).tolist() == [5, 1, 12]
    assert avalanche_sizes(np.zeros(5)).tolist() == []
    assert avalanche_sizes(np.array([1, 5, 1, 6]), threshold=1).tolist() == [5, 6]


def test_power_law_fit_recovers_exponent():
    rng = np.random.default_rng(0)
    # continuous Pareto with exponent 1.5 above 0.5, rounded: discrete power law ~ s^-1.5 for s >= 1
    s = np.floor(0.5 * (1 - rng.random(200_000)) ** (-1 / 0.5) + 0.5).astype(np.int64)
    tau = fit_power_law(s, s_min=1)
    assert tau == pytest.approx(1.5, abs=0.03)
    assert criticality_index(tau) < 0.03
    # the estimator by hand on three sizes: 1 + 3 / (ln 2 + ln 2 + ln 6)
    assert fit_power_law(np.array([1, 1, 3])) == pytest.approx(1 + 3 / (2 * np.log(2) + np.log(6)))


def test_soc_control_actions():
    calm = np.tile([0, 1, 0, 2, 0, 1, 1, 0], 50)
    action, metrics = soc_control(calm, n_neurons=1000)
    assert metrics["largest_avalanche"] == 2.0
    big = calm.copy()
    big[100:110] = 50  # one avalanche of ~500 spikes > 0.1 * 1000
    action, metrics = soc_control(big, n_neurons=1000)
    assert (action.inhibition_factor, action.eta_factor) == (1.1, 0.9) and "avalanche" in action.reason


def test_decay_and_tags_by_hand():
    w = jnp.array([0.9, 0.5, 0.01, -0.9])
    persistent = jnp.array([True, False, False, False])
    w2, alive = decay_weights(w, persistent, jnp.ones(4, bool))
    np.testing.assert_allclose(np.asarray(w2), [0.9, 0.495, 0.0, -0.891], rtol=1e-6)  # 0.0099 pruned
    assert np.asarray(alive).tolist() == [True, True, False, True]
    post = jnp.array([0, 1, 1, 2])
    cluster_of = jnp.array([0, 1, 1])
    tags = update_tags(w, jnp.zeros(4, bool), post, cluster_of, jnp.array([0.95, 0.95]))
    assert np.asarray(tags).tolist() == [True, False, False, True]
    tags = update_tags(w, tags, post, cluster_of, jnp.array([0.95, 0.3]))  # cluster 1 falls below 0.5
    assert np.asarray(tags).tolist() == [True, False, False, False]
