"""Distal-reward protocol bookkeeping (fumjax.train.distal_reward) on hand-worked cases."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from fumjax.encoders import uniform_hash
from fumjax.train import distal_reward as dr

NEVER = dr._NEVER


def _spikes(t_steps: int, at: list[int]) -> jnp.ndarray:
    s = np.zeros(t_steps, np.uint8)
    s[at] = 1
    return jnp.asarray(s)


def test_detect_pairings_hand_case():
    # window of steps 100..109; a pre spike from the previous window at step 95.
    # 100: post, 100 - 95 = 5 -> pairing (the pre spike is used up)
    # 102: pre; 103: post, dt = 1 -> pairing; 104: post, nothing left to pair with
    # 106: pre and post in the same step -> dt = 0, no pairing; the pre spike at 106 stays pending
    pre = _spikes(10, [2, 6])
    post = _spikes(10, [0, 3, 4, 6])
    paired, last = dr.detect_pairings(pre, post, jnp.int32(100), jnp.int32(95), pairing_ms=20)
    assert np.asarray(paired).tolist() == [True, False, False, True, False, False, False, False, False, False]
    assert int(last) == 106


def test_detect_pairings_across_windows_and_window_edge():
    # pre at 106 (carried); next window 110..139: post at 126 (dt = 20, pairs) and a later pre at 130
    # with post at 151 of the window after (dt = 21, too late).
    paired, last = dr.detect_pairings(
        _spikes(30, [20]), _spikes(30, [16]), jnp.int32(110), jnp.int32(106), pairing_ms=20
    )
    assert np.flatnonzero(np.asarray(paired)).tolist() == [16] and int(last) == 130
    paired, last = dr.detect_pairings(_spikes(30, []), _spikes(30, [11]), jnp.int32(140), last, pairing_ms=20)
    assert not np.asarray(paired).any() and int(last) == 130


def test_schedule_rewards_delays_and_full_queue():
    protocol = dr.DistalProtocol(queue_size=2)
    ps = dr.init_protocol(protocol)
    seed = 7
    paired = jnp.asarray([True, False, False, True, True, False])  # pairings at steps 200, 203, 204
    ps = dr.schedule_rewards(ps, paired, jnp.int32(200), jnp.uint32(seed), protocol)
    key = seed + 0x5EED
    want = [s + 1000 + math.floor(float(uniform_hash(key, 0, s)) * 2001) for s in (200, 203)]
    assert all(1200 <= d <= 3203 for d in want)
    assert np.asarray(ps.due).tolist() == want
    assert int(ps.n_pairings) == 3 and int(ps.n_dropped) == 1  # the third found the queue full


def test_dopamine_steps_delivery_and_decay():
    protocol = dr.DistalProtocol(queue_size=3)
    k = math.exp(-1.0 / 200.0)
    ps = dr.init_protocol(protocol).replace(
        due=jnp.asarray([503, NEVER, 512], jnp.int32), dopamine=jnp.float32(0.0)
    )
    # window 500..509: reward at 503 -> d = 0 at 500..502, then 0.5 k^(s - 503) for s = 503..509
    ps, mean = dr.dopamine_steps(ps, jnp.int32(500), 10, protocol)
    want_d = [0.0] * 3 + [0.5 * k**i for i in range(7)]
    np.testing.assert_allclose(float(mean), sum(want_d) / 10, rtol=1e-6)
    np.testing.assert_allclose(float(ps.dopamine), 0.5 * k**6, rtol=1e-6)
    assert np.asarray(ps.due).tolist() == [NEVER, NEVER, 512] and int(ps.n_rewards) == 1
    # next window 510..519: d keeps decaying and the reward due at 512 adds 0.5
    ps, mean = dr.dopamine_steps(ps, jnp.int32(510), 10, protocol)
    want_d = [0.5 * k ** (7 + i) + (0.5 * k ** (i - 2) if i >= 2 else 0.0) for i in range(10)]
    np.testing.assert_allclose(float(mean), sum(want_d) / 10, rtol=1e-6)
    assert int(ps.n_rewards) == 2 and bool((ps.due == NEVER).all())


def test_protocol_rejects_bad_parameters():
    with pytest.raises(ValueError, match="delay_min_ms"):
        dr.DistalProtocol(delay_min_ms=3000, delay_max_ms=1000)
    with pytest.raises(ValueError, match="queue_size"):
        dr.DistalProtocol(queue_size=0)


def test_criterion_minutes_needs_both_conditions_at_once():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    w_syn = np.array([0.5, 0.92, 0.95, 0.97])
    p99 = np.array([0.3, 0.55, 0.45, 0.2])  # at 2 min the others' tail is too high; both hold at 3 min
    assert dr.criterion_minutes(t, w_syn, p99, w_max=1.0) == 3.0
    assert dr.criterion_minutes(t, w_syn, p99 + 0.3, w_max=1.0) is None
    assert dr.criterion_minutes(t, 4 * w_syn, 4 * p99, w_max=4.0) == 3.0  # fractions of w_max


def _lif_spike_steps(n_steps: int, drive_mV: float, v_th: list[float], w01: float) -> list[list[int]]:
    """Plain-numpy LIF (DESIGN step equations, tau 20 ms, rest/reset -70 mV) of neurons 0 -> 1 (weight w01,
    1 mV per unit, one-step delay), both driven by a constant current; spike steps of each neuron."""
    v, pending, out = np.full(2, -70.0), 0.0, [[], []]
    for t in range(n_steps):
        i = np.array([drive_mV, drive_mV + pending])
        v = v + (1.0 / 20.0) * (-70.0 - v) + i
        s = v >= np.asarray(v_th)
        v[s] = -70.0
        pending = w01 * float(s[0])
        for k in np.flatnonzero(s):
            out[k].append(t)
    return out


def test_chunk_counts_the_pairings_of_the_simulated_raster():
    from fumjax.config import FumConfig
    from fumjax.network import Network
    from fumjax.state import init_state

    net = Network.from_arrays([0], [1], [0.5], [20.0, 20.0], [-60.0, -59.0], [True, True])
    cfg = FumConfig.from_dict(
        {
            "neuron": {"n_neurons": 2},
            "connectivity": {"k_per_neuron": 1, "g_syn_mV": 1.0},
            "plasticity": {"mode": "rstdp", "eta": 0.0},
            "intrinsic": {"enabled": False},
            "run": {"window_steps": 10, "backend": "reference"},
        }
    )
    protocol = dr.DistalProtocol(noise_mean_mV=1.0, noise_std_mV=0.0)
    state, ps = init_state(net, cfg), dr.init_protocol(protocol)
    state, ps, summary = dr.run_distal_chunk(
        state, ps, net, jnp.zeros((1,), jnp.int32), n_windows=30, cfg=cfg, protocol=protocol, syn=0
    )
    pre_t, post_t = _lif_spike_steps(300, 1.0, [-60.0, -59.0], 0.5)
    assert pre_t[0] == 13 and post_t[0] == 14  # u = 20(1 - 0.95^t): 10 mV at t = 14; 10.73 + 0.5 at t = 15
    pairs, last = 0, None
    for t in range(300):
        if t in post_t and last is not None and 1 <= t - last <= 20:
            pairs, last = pairs + 1, None
        if t in pre_t:
            last = t
    assert pairs >= 15 and int(ps.n_pairings) == pairs
    # no reward is due within 300 steps (delays >= 1000); eta = 0 keeps the weight
    assert int(ps.n_rewards) == 0 and float(summary["w_syn"]) == 0.5
    assert int((ps.due != NEVER).sum()) == min(pairs, protocol.queue_size)
