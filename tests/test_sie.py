"""SIE components against values worked out by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fumjax import FumConfig
from fumjax import sie as S

CFG = FumConfig()


def test_td_update_by_hand():
    v, td = S.td_update(jnp.array([0.0, 0.5]), 0, 1, 1.0, gamma=0.9, alpha=0.1)
    assert float(td) == pytest.approx(1.45)  # 1 + 0.9*0.5 - 0
    np.testing.assert_allclose(np.asarray(v), [0.145, 0.5], rtol=1e-6)


def test_novelty_and_habituation_by_hand():
    sie = S.init_sie(2, 2, CFG)
    e0, e1 = jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])
    sie, nov, hab = S.novelty_and_habituation(sie, e0, CFG.sie)
    assert (float(nov), float(hab)) == (1.0, 0.0)  # nothing stored yet
    sie, nov, hab = S.novelty_and_habituation(sie, 3.0 * e0, CFG.sie)  # cosine 1 with slot 0
    assert float(nov) == pytest.approx(0.0) and float(hab) == pytest.approx(0.1)
    np.testing.assert_allclose(np.asarray(sie.hab[:2]), [0.095, 0.0], rtol=1e-6)  # decayed, new slot 0
    sie, nov, hab = S.novelty_and_habituation(sie, e0, CFG.sie)  # matches both stored copies
    assert float(hab) == pytest.approx(0.195)  # 0.095 + 0.1 beats 0 + 0.1
    sie, nov, hab = S.novelty_and_habituation(sie, e1, CFG.sie)  # orthogonal: cosine 0
    assert float(nov) == pytest.approx(1.0) and float(hab) == 0.0
    assert int(sie.n_history) == 4


def test_habituation_caps_at_one():
    sie = S.init_sie(1, 3, CFG.replace(sie={"novelty_history": 1}))
    x = jnp.array([1.0, 2.0, 3.0])
    sie, _, _ = S.novelty_and_habituation(sie, x, CFG.sie)
    cap = CFG.replace(sie={"habituation_decay": 1.0}).sie
    habs = []
    for _ in range(15):  # one slot, overwritten each time with counter 0: habituation stays 0.1
        sie, _, hab = S.novelty_and_habituation(sie, x, cap)
        habs.append(float(hab))
    assert habs == pytest.approx([0.1] * 15)
    sie = S.init_sie(1, 3, CFG.replace(sie={"novelty_history": 50}))
    sie = sie.replace(history=sie.history.at[0].set(x), n_history=jnp.array(1, jnp.int32))
    sie = sie.replace(hab=sie.hab.at[0].set(0.95))
    _, _, hab = S.novelty_and_habituation(sie, x, cap)
    assert float(hab) == pytest.approx(1.0)  # 0.95 + 0.1 capped


@pytest.mark.parametrize("rates, expected", [([0.0, 10.0], 1.0), ([0.0, 20.0], 0.0), ([0.0, 8.944272], 0.8)])
def test_self_benefit(rates, expected):
    # var([0, a]) = a^2/4: 25 -> 1; 100 -> clip(1 - 75/25) = 0; 20 -> 1 - 5/25 = 0.8 (target 25 Hz^2)
    assert float(S.self_benefit(jnp.array(rates), target_var=25.0)) == pytest.approx(expected, abs=1e-5)


def test_smoothing_over_last_five_windows():
    sie = S.init_sie(1, 1, CFG)
    means = []
    for total in range(1, 8):
        sie, m = S.smooth_reward(sie, jnp.float32(total))
        means.append(float(m))
    assert means == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0])


def test_sie_step_total_and_novelty_cap():
    sie = S.init_sie(2, 2, CFG)
    rates = jnp.array([0.0, 10.0])  # self_benefit 1
    # first input: novelty 1 > 0.9 caps a positive reward at 0
    sie, c = S.sie_step(sie, jnp.array([1.0, 0.0]), rates, 0, 1, 1.0, CFG)
    assert float(c["td"]) == pytest.approx(1.0) and float(c["novelty"]) == 1.0
    assert float(c["total"]) == pytest.approx(1.0 + 1.0 - 0.0 + 1.0)
    assert float(c["reward"]) == 0.0
    # same input again: novelty 0, habituation 0.1, TD = -1 + 0.9*0 - V[1] (=0)
    sie, c = S.sie_step(sie, jnp.array([2.0, 0.0]), rates, 1, 0, -1.0, CFG)
    v0 = 0.1 * 1.0  # V[0] after the first update
    assert float(c["td"]) == pytest.approx(-1.0 + 0.9 * v0)
    total2 = float(c["td"]) + 0.0 - 0.1 + 1.0
    assert float(c["total"]) == pytest.approx(total2, abs=1e-6)
    assert float(c["reward"]) == pytest.approx((3.0 + total2) / 2, abs=1e-6)


def test_sie_step_jits():
    sie = S.init_sie(3, 4, CFG)
    f = jax.jit(lambda s, x: S.sie_step(s, x, jnp.ones(5), 0, 2, 0.0, CFG))
    sie, c = f(sie, jnp.arange(4.0))
    assert set(c) == {"td", "novelty", "habituation", "self_benefit", "total", "reward"}
