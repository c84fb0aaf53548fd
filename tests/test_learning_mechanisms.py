"""Hand-checked tests of the train-level learning mechanisms (fumjax.train.digits), plus a fast reward-only
learning smoke test on a tiny 2-class problem. The static-synapse gate (Network.plastic_pre) is tested in
tests/test_plastic_pre.py."""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from fumjax.train.digits import (
    DigitsRecipe,
    adapt_thresholds,
    encode_item,
    kwta_mask,
    normalize_incoming,
    population_reward,
    recipe_config,
    train_readout,
)


def test_normalize_incoming_keeps_the_sum_per_post_neuron():
    w = jnp.array([0.2, 0.6, -0.5, 0.1, 0.3, 1.5])
    post = jnp.array([0, 0, 0, 1, 1, 1])
    mask = jnp.array([True, True, False, True, True, True])
    out = np.asarray(normalize_incoming(w, post, mask, 2, 2.0))
    # post 0: masked 0.2, 0.6 -> sum 0.8 scaled to 2.0; the unmasked -0.5 (a static synapse) is untouched
    np.testing.assert_allclose(out[:3], [0.5, 1.5, -0.5], rtol=1e-6)
    # post 1: 1.5 is clipped to 1 first -> 0.1, 0.3, 1.0 (sum 1.4) scaled to 2.0
    np.testing.assert_allclose(out[3:], np.array([0.1, 0.3, 1.0]) * 2.0 / 1.4, rtol=1e-6)
    np.testing.assert_allclose([out[:2].sum(), out[3:].sum()], [2.0, 2.0], rtol=1e-6)


def test_normalize_incoming_l2_keeps_the_norm():
    w = jnp.array([3.0, 4.0, 0.0]) * 0.1
    out = np.asarray(normalize_incoming(w, jnp.array([0, 0, 0]), jnp.ones(3, bool), 1, 1.0, "l2"))
    np.testing.assert_allclose(out, [0.6, 0.8, 0.0], rtol=1e-6)


def test_population_reward_assignment():
    # right answer: +1 to the target population only
    np.testing.assert_array_equal(population_reward(jnp.array([1, 5, 2]), jnp.int32(1)), [0.0, 1.0, 0.0])
    # wrong winner (population 2) gets -1, the target (0) +1, the others 0
    np.testing.assert_array_equal(population_reward(jnp.array([1, 0, 4]), jnp.int32(0)), [1.0, 0.0, -1.0])
    # silence: nobody won, the target still gets +1
    np.testing.assert_array_equal(population_reward(jnp.array([0, 0, 0]), jnp.int32(2)), [0.0, 0.0, 1.0])
    # near miss: right (6 vs 5) but within margin 0.5 -> +1 target, -1 runner-up; clear right ->
    # correct_reward
    np.testing.assert_array_equal(population_reward(jnp.array([6, 5, 1]), jnp.int32(0), 0.3, 0.5), [1, -1, 0])
    np.testing.assert_allclose(population_reward(jnp.array([6, 2, 1]), jnp.int32(0), 0.3, 0.5), [0.3, 0, 0])
    # a tie the lower index wins counts as wrong for the higher-index target
    np.testing.assert_array_equal(population_reward(jnp.array([4, 4, 0]), jnp.int32(1)), [-1, 1, 0])


def test_kwta_picks_the_largest():
    c = jnp.array([3, 9, 0, 7, 9])
    np.testing.assert_array_equal(kwta_mask(c, 1), [False, True, False, False, False])  # tie: lower index
    np.testing.assert_array_equal(kwta_mask(c, 3), [False, True, False, True, True])
    np.testing.assert_array_equal(kwta_mask(jnp.array([0, 0]), 1), [False, False])  # no spikes, no winner


def test_adapt_thresholds():
    v = jnp.array([-55.0, -50.0, -60.0])
    v0 = jnp.array([-55.0, -55.0, -60.0])
    out = adapt_thresholds(v, v0, jnp.array([2, 0, 5]), jnp.array([True, True, False]), 0.5, 0.1)
    np.testing.assert_allclose(out, [-54.0, -50.5, -60.0], rtol=1e-6)  # last one is not an output neuron


def test_encode_item_on_off_and_regular_counts():
    x = jnp.array([1.0, 0.0, 0.5])
    spk = np.asarray(encode_item(x, seed=3, first_step=0, n_steps=40, p_max=0.25, encoding="regular"))
    # channels: on (1, 0, .5) then off (0, 1, .5); regular code gives floor/ceil of p*T = 10, 0, 5 / 0, 10, 5
    counts = spk.sum(0)
    np.testing.assert_array_equal(counts, [10, 0, 5, 0, 10, 5])
    spk_p = np.asarray(encode_item(x, seed=3, first_step=0, n_steps=4000, p_max=0.25, encoding="poisson"))
    np.testing.assert_allclose(spk_p.mean(0), [0.25, 0, 0.125, 0, 0.25, 0.125], atol=0.02)


def test_reward_only_learning_smoke_two_classes():
    """Two 8-pixel classes (left half bright vs right half bright, noisy); labels only via reward."""
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 2, n).astype(np.int32)
        base = np.where(y[:, None] == 0, np.r_[np.ones(4), np.zeros(4)], np.r_[np.zeros(4), np.ones(4)])
        x = np.clip(base * 0.8 + rng.uniform(0, 0.3, (n, 8)), 0, 1).astype(np.float32)
        return x, y

    x_tr, y_tr = make(60)
    x_te, y_te = make(60)
    recipe = DigitsRecipe(n_per_class=2, encoding="regular", pop_reward=True, norm="l2", w_inh=1.0, w_sum=1.2)
    t0 = time.perf_counter()
    h = train_readout(
        x_tr, y_tr, x_te, y_te, config=recipe_config(eta=0.003), recipe=recipe, epochs=4, seed=0, n_classes=2
    )
    assert time.perf_counter() - t0 < 30
    net = h["network"]
    # before learning the random weights are (close to) chance; after, >= 90% on held-out items
    assert h["test_accuracy"][-1] >= 0.9, h
    assert h["initial_test_accuracy"] <= 0.75, h  # untrained: near chance
    assert net.n_synapses == 16 * 4 + 4 * 3


def test_anneal_relax_returns_thresholds_to_baseline():
    """With anneal_relax = 1 the last (annealing) epoch stops threshold increases and sets v_th back to the
    baseline each window: v_th - 1 * (v_th - v_th0) = v_th0. Without it the outputs keep their offsets
    (+theta_plus per spike)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (20, 4)).astype(np.float32)
    y = rng.integers(0, 2, 20).astype(np.int32)
    common = dict(n_per_class=2, encoding="regular", theta_plus_mV=0.5, theta_relax=0.0, anneal_epochs=1)
    out = {}
    for relax in (0.0, 1.0):
        recipe = DigitsRecipe(**common, anneal_relax=relax)
        h = train_readout(x, y, x, y, config=recipe_config(), recipe=recipe, epochs=2, seed=0, n_classes=2)
        v_th = np.asarray(h["final_state"].v_th_mV)[8:]  # the 4 output neurons after 8 on/off inputs
        out[relax] = v_th - np.asarray(h["network"].v_th_mV)[8:]
    assert out[0.0].max() >= 0.5  # at least one output spiked: offsets of whole multiples of 0.5 mV
    np.testing.assert_allclose(out[1.0], 0.0, atol=1e-5)
