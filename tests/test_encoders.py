"""Tests for fumjax.encoders: counter-based hash, encoders, decoder, background drive."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import chi2

from fumjax.encoders import (
    binomial_cdf_f32,
    decode,
    gaussian_background_current,
    intensity_to_rates,
    latency_encode,
    lowpass,
    lowpass_poisson_encode,
    poisson_background_current,
    poisson_encode,
    population_rates_hz,
    spikes_to_current,
    uniform_hash,
)


def _chisquare_p(obs: np.ndarray, exp: np.ndarray | None = None) -> float:
    """Pearson chi-square goodness-of-fit p-value (df = bins - 1)."""
    obs = np.asarray(obs, np.float64)
    exp = np.full_like(obs, obs.mean()) if exp is None else np.asarray(exp, np.float64)
    stat = float(np.sum((obs - exp) ** 2 / exp))
    return float(chi2.sf(stat, len(obs) - 1))


def _ks_uniform_stat(u: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic D of samples u against U(0, 1)."""
    x = np.sort(u)
    n = len(x)
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - x), np.max(x - (i - 1) / n)))


def _binom_pmf(n: int, p: float) -> np.ndarray:
    return np.array([math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)])


# ---------------------------------------------------------------- pure-Python reference of the hash
_M = 0xFFFFFFFF


def _lowbias32_py(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M
    x ^= x >> 16
    return x


def _hash_py(seed: int, i: int, t: int) -> int:
    seed, i, t = seed & _M, i & _M, t & _M
    h = (seed * 0x9E3779B1 + 0x7F4A7C15) & _M
    h = _lowbias32_py(h ^ ((i * 0x85EBCA77) & _M))
    h = _lowbias32_py(h ^ ((t * 0xC2B2AE3D) & _M))
    return _lowbias32_py(h)


def _uniform_py(seed: int, i: int, t: int) -> float:
    return (_hash_py(seed, i, t) >> 8) * 2.0**-24


# ---------------------------------------------------------------- uniform_hash


def test_hash_known_values_bit_exact():
    # (seed, id, step) -> h >> 8, values from the pure-Python integer implementation above.
    known = {
        (0, 0, 0): 12394083,
        (0, 1, 0): 4258431,
        (0, 0, 1): 10776216,
        (1, 0, 0): 14621581,
        (42, 123456, 789): 16118197,
        (2**32 - 1, -1, 2**31 - 1): 3763729,
    }
    for (s, i, t), top24 in known.items():
        assert _hash_py(s, i, t) >> 8 == top24
        u = uniform_hash(s, jnp.array([i], jnp.int32), t)
        assert u.dtype == jnp.float32
        assert float(u[0]) == top24 * 2.0**-24


def test_hash_matches_python_reference_many():
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, 2**32, 5)
    for s in seeds:
        ids = rng.integers(-(2**31), 2**31, 40).astype(np.int32)
        t = int(rng.integers(0, 2**31))
        got = np.asarray(uniform_hash(int(s), jnp.asarray(ids), t))
        want = np.array([_uniform_py(int(s), int(i), t) for i in ids], np.float32)
        np.testing.assert_array_equal(got, want)
    # traced seed/step under jit give the same bits
    f = jax.jit(uniform_hash)
    ids = jnp.arange(16, dtype=jnp.int32)
    np.testing.assert_array_equal(np.asarray(f(jnp.int32(7), ids, jnp.int32(99))), uniform_hash(7, ids, 99))


def test_hash_broadcast_shapes():
    assert uniform_hash(1, jnp.arange(7), 3).shape == (7,)
    u = uniform_hash(1, jnp.arange(7)[None, :], jnp.arange(4)[:, None])
    assert u.shape == (4, 7)
    np.testing.assert_array_equal(u[2], uniform_hash(1, jnp.arange(7), 2))


def test_hash_uniformity_across_ids_and_steps():
    n = 200_000
    u_ids = np.asarray(uniform_hash(123, jnp.arange(n), 5), np.float64)
    u_steps = np.asarray(uniform_hash(123, 5, jnp.arange(n)), np.float64)
    for u in (u_ids, u_steps):
        assert u.min() >= 0.0 and u.max() < 1.0
        assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
        assert abs(u.var() - 1 / 12) < 0.002
        assert _ks_uniform_stat(u) < 1.95 / math.sqrt(n)  # KS critical value at alpha ~ 1e-3
        counts = np.histogram(u, bins=100, range=(0, 1))[0]
        assert _chisquare_p(counts) > 1e-3
    # pairs (u[k], u[k+1]) are uniform on the unit square (no lag-1 structure)
    h2 = np.histogram2d(u_ids[:-1], u_ids[1:], bins=16, range=[[0, 1], [0, 1]])[0].ravel()
    assert _chisquare_p(h2) > 1e-3


def test_hash_different_streams():
    ids = jnp.arange(50_000)
    base = np.asarray(uniform_hash(1, ids, 0))
    others = [
        np.asarray(uniform_hash(2, ids, 0)),  # other seed
        np.asarray(uniform_hash(1, ids, 1)),  # other step
        np.asarray(uniform_hash(1, ids + 50_000, 0)),  # other ids
        np.asarray(uniform_hash(1, ids + 1, 0)),  # shifted ids
    ]
    for o in others:
        assert np.mean(base == o) < 0.001
        assert abs(np.corrcoef(base, o)[0, 1]) < 0.03
    # fixed seed: id -> hash is injective, so all 24-bit outputs of 50k ids are (almost surely) distinct
    assert len(np.unique(base)) > 49_900


# ---------------------------------------------------------------- Poisson rate encoding


def _exact_expected_count(p: float, refractory: int, n_steps: int) -> float:
    """Expected spike count of the refractory Bernoulli process, by exact Markov-chain propagation."""
    dist = np.zeros(refractory + 1)
    dist[0] = 1.0  # refractory counter, starts at 0
    total = 0.0
    for _ in range(n_steps):
        total += dist[0] * p
        new = np.zeros_like(dist)
        new[refractory] += dist[0] * p
        new[0] += dist[0] * (1 - p)
        new[:-1] += dist[1:]  # counters > 0 decrement
        dist = new
    return total


def test_poisson_rate_within_bounds_with_refractory():
    n_ch, n_steps, rate = 2000, 100, 20.0  # 200k channel-steps
    s = np.asarray(poisson_encode(jnp.full(n_ch, rate), seed=11, n_steps=n_steps))
    assert s.shape == (n_steps, n_ch) and s.dtype == np.uint8
    per_ch = s.sum(axis=0).astype(np.float64)
    expected = _exact_expected_count(0.02, 5, n_steps)  # ~1.84 (vs 2.0 without refractoriness)
    sem = per_ch.std(ddof=1) / math.sqrt(n_ch)
    assert abs(per_ch.mean() - expected) < 5 * sem


def test_poisson_rate_no_refractory_is_bernoulli():
    n_ch, n_steps = 2000, 100
    s = np.asarray(poisson_encode(jnp.full(n_ch, 20.0), seed=3, n_steps=n_steps, refractory_steps=0))
    n = n_ch * n_steps
    p = 0.02
    assert abs(s.sum() - n * p) < 5 * math.sqrt(n * p * (1 - p))


def test_poisson_refractory_respected_exactly():
    rates = jnp.linspace(0.0, 900.0, 300)
    s = np.asarray(poisson_encode(rates, seed=5, n_steps=200, refractory_steps=5))
    assert s[:, 0].sum() == 0  # 0 Hz never spikes
    for c in range(0, 300, 7):
        t = np.nonzero(s[:, c])[0]
        if len(t) > 1:
            assert np.diff(t).min() >= 6
    # saturating rate: exactly one spike every refractory_steps + 1 steps, starting at step 0
    sat = np.asarray(poisson_encode(jnp.full(4, 1000.0), seed=9, n_steps=60, refractory_steps=5))
    want = np.zeros(60, np.uint8)
    want[::6] = 1
    for c in range(4):
        np.testing.assert_array_equal(sat[:, c], want)
    assert sat.sum() == 4 * 10


def test_poisson_encode_matches_hash_and_is_reproducible():
    rates = jnp.array([0.0, 50.0, 300.0, 1000.0, 2000.0])
    s = np.asarray(
        poisson_encode(rates, seed=4, n_steps=40, refractory_steps=0, first_step=7, channel_offset=3)
    )
    u = np.asarray(uniform_hash(4, jnp.arange(5)[None, :] + 3, 7 + jnp.arange(40)[:, None]))
    p = np.clip(np.asarray(rates) / 1000.0, 0, 1)
    np.testing.assert_array_equal(s, (u < p[None, :]).astype(np.uint8))
    # same seed -> same; shift of first_step = shift of the stream; channel_offset = column shift
    big = np.asarray(poisson_encode(jnp.full(10, 200.0), seed=4, n_steps=30, refractory_steps=0))
    np.testing.assert_array_equal(
        big, poisson_encode(jnp.full(10, 200.0), seed=4, n_steps=30, refractory_steps=0)
    )
    later = poisson_encode(jnp.full(10, 200.0), seed=4, n_steps=20, refractory_steps=0, first_step=10)
    np.testing.assert_array_equal(big[10:], later)
    part = poisson_encode(jnp.full(4, 200.0), seed=4, n_steps=30, refractory_steps=0, channel_offset=6)
    np.testing.assert_array_equal(big[:, 6:], part)
    other = np.asarray(poisson_encode(jnp.full(10, 200.0), seed=5, n_steps=30, refractory_steps=0))
    assert not np.array_equal(big, other)


def test_poisson_encode_jit_traced_first_step():
    f = jax.jit(lambda fs: poisson_encode(jnp.full(8, 150.0), seed=2, n_steps=25, first_step=fs))
    np.testing.assert_array_equal(
        f(jnp.int32(13)), poisson_encode(jnp.full(8, 150.0), seed=2, n_steps=25, first_step=13)
    )


def test_intensity_to_rates():
    r = intensity_to_rates(jnp.array([-0.5, 0.0, 0.25, 1.0, 3.0]), max_rate_hz=80.0)
    np.testing.assert_allclose(r, [0.0, 0.0, 20.0, 80.0, 80.0])


# ---------------------------------------------------------------- latency encoding


def test_latency_encode_by_hand():
    x = jnp.array([1.0, 0.5, 0.0, 0.2, 0.9])
    s = np.asarray(latency_encode(x, n_steps=5))  # t_max = 4: t = round(4 (1 - x))
    assert s.shape == (5, 5) and s.dtype == np.uint8
    # x=1 -> 0; x=.5 -> 2; x=0 -> silent (<= threshold); x=.2 -> round(3.2)=3; x=.9 -> round(0.4)=0
    want = np.zeros((5, 5), np.uint8)
    want[0, 0] = 1
    want[2, 1] = 1
    want[3, 3] = 1
    want[0, 4] = 1
    np.testing.assert_array_equal(s, want)
    s2 = np.asarray(
        latency_encode(jnp.array([1.0, 0.5, 0.3, 0.0]), n_steps=20, t_min=2, t_max=12, threshold=0.4)
    )
    # t = round(2 + 10 (1 - x)): x=1 -> 2, x=.5 -> 7, x=.3 below threshold, x=0 below threshold
    assert np.nonzero(s2[:, 0])[0].tolist() == [2]
    assert np.nonzero(s2[:, 1])[0].tolist() == [7]
    assert s2[:, 2:].sum() == 0
    assert s2.sum(axis=0).max() == 1


# ---------------------------------------------------------------- low-pass filter


def test_lowpass_by_hand():
    x = jnp.array([[5.0, 0.0], [0.0, 10.0], [10.0, 0.0], [0.0, 0.0], [5.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    y = np.asarray(lowpass(x, n_taps=3))
    want = np.array(
        [
            [5.0, 0.0],  # 5/1
            [2.5, 5.0],  # (5+0)/2, (0+10)/2
            [5.0, 10 / 3],  # (5+0+10)/3
            [10 / 3, 10 / 3],  # (0+10+0)/3
            [5.0, 0.0],  # (10+0+5)/3
            [5 / 3, 0.0],
            [5 / 3, 0.0],
        ]
    )
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    assert y.dtype == np.float32
    # default 5 taps on a ramp
    r = np.asarray(lowpass(jnp.arange(8.0)[:, None]))[:, 0]
    np.testing.assert_allclose(r, [0, 0.5, 1, 1.5, 2, 3, 4, 5])
    # constant signal unchanged; n_taps=1 identity
    np.testing.assert_allclose(lowpass(jnp.full((9, 3), 7.0)), 7.0)
    np.testing.assert_allclose(lowpass(x, n_taps=1), x)


def test_lowpass_poisson_encode():
    rates = jnp.concatenate([jnp.zeros((2, 3)), jnp.full((12, 3), 1000.0)], axis=0)  # (14, 3)
    s = np.asarray(lowpass_poisson_encode(rates, seed=8, refractory_steps=0))
    assert s.shape == (14, 3)
    # filtered p: t0,t1 = 0 -> silent; t>=6 -> 1 -> always spikes
    assert s[:2].sum() == 0
    assert s[6:].all()
    p = np.asarray(lowpass(rates)) / 1000.0
    u = np.asarray(uniform_hash(8, jnp.arange(3)[None, :], jnp.arange(14)[:, None]))
    np.testing.assert_array_equal(s, (u < p).astype(np.uint8))
    # a (C,) input is constant, so it equals plain poisson_encode
    np.testing.assert_array_equal(
        lowpass_poisson_encode(jnp.full(6, 70.0), seed=1, n_steps=30),
        poisson_encode(jnp.full(6, 70.0), seed=1, n_steps=30),
    )


# ---------------------------------------------------------------- input current, decoder


def test_spikes_to_current_two_channels_one_neuron():
    spikes = jnp.array([[1, 1, 0, 1], [0, 1, 1, 0], [1, 0, 0, 1]], jnp.uint8)  # (T=3, C=4)
    channel_neuron = jnp.array([2, 2, 0, -1], jnp.int32)  # channels 0,1 -> neuron 2; channel 3 unconnected
    i = np.asarray(spikes_to_current(spikes, channel_neuron, 4, amp_mV=1.5))
    want = np.array([[0.0, 0, 3.0, 0], [1.5, 0, 1.5, 0], [0, 0, 1.5, 0]], np.float32)
    np.testing.assert_array_equal(i, want)
    assert i.dtype == np.float32


def test_population_rates_and_decode_by_hand():
    # T=10 steps of 1 ms = 0.01 s; neurons 0,1 -> pop 0; 2 -> pop 1; 3 not output; 4,5 -> pop 2
    s = np.zeros((10, 6), np.uint8)
    s[:3, 0] = 1  # 3 spikes
    s[:1, 1] = 1  # 1 spike -> pop0: 4 spikes / (2 * 0.01 s) = 200 Hz
    s[:5, 2] = 1  # pop1: 5 / 0.01 = 500 Hz
    s[:, 3] = 1  # ignored
    s[:2, 4] = 1  # pop2: 2 / (2 * 0.01) = 100 Hz
    pop = jnp.array([0, 0, 1, -1, 2, 2], jnp.int32)
    r = np.asarray(population_rates_hz(jnp.asarray(s), pop, 4))
    np.testing.assert_allclose(r, [200.0, 500.0, 100.0, 0.0], rtol=1e-6)  # pop 3 empty -> 0
    assert int(decode(jnp.asarray(s), pop, 4)) == 1
    r2 = np.asarray(population_rates_hz(jnp.asarray(s), pop, 3, dt_ms=0.5))
    np.testing.assert_allclose(r2, [400.0, 1000.0, 200.0], rtol=1e-6)
    # tie -> lowest index
    s[:, :] = 0
    s[0, 2] = 1  # pop1: 1 spike / 1 neuron
    s[0, 4] = 1
    s[1, 5] = 1  # pop2: 2 spikes / 2 neurons -> same rate
    assert int(decode(jnp.asarray(s), pop, 3)) == 1
    assert int(decode(jnp.zeros((10, 6), jnp.uint8), pop, 3)) == 0


# ---------------------------------------------------------------- background drive


def test_binomial_cdf():
    cdf = binomial_cdf_f32(3, 0.5)
    np.testing.assert_allclose(cdf, [0.125, 0.5, 0.875])
    assert binomial_cdf_f32(10, 0.02).dtype == np.float32


def test_background_mean_and_binomial_distribution():
    n_neurons, n_steps, n, p = 2000, 100, 10, 0.02
    cur = np.asarray(poisson_background_current(seed=17, n_neurons=n_neurons, first_step=0, n_steps=n_steps))
    assert cur.shape == (n_steps, n_neurons) and cur.dtype == np.float32
    counts = np.rint(cur / 2.25).astype(int)
    np.testing.assert_allclose(counts * 2.25, cur)
    m = counts.size
    assert abs(counts.mean() - n * p) < 5 * math.sqrt(n * p * (1 - p) / m)
    pmf = _binom_pmf(n, p)
    obs = np.bincount(counts.ravel(), minlength=n + 1)
    # pool the tail (k >= 3) so that expected counts are >= 5
    obs_p = np.array([obs[0], obs[1], obs[2], obs[3:].sum()])
    exp_p = m * np.array([pmf[0], pmf[1], pmf[2], pmf[3:].sum()])
    assert _chisquare_p(obs_p, exp_p) > 1e-3
    # higher-rate setting, non-trivial distribution over many k
    c2 = np.asarray(
        poisson_background_current(seed=2, n_neurons=1000, first_step=0, n_steps=100, rate_hz=300.0)
    )
    k2 = np.rint(c2 / 2.25).astype(int).ravel()
    pmf2 = _binom_pmf(10, 0.3)
    obs2 = np.bincount(k2, minlength=11)
    obs2 = np.append(obs2[:7], obs2[7:].sum())
    exp2 = k2.size * np.append(pmf2[:7], pmf2[7:].sum())
    assert _chisquare_p(obs2, exp2) > 1e-3


def test_background_inverse_cdf_exact():
    u = np.asarray(uniform_hash(5, jnp.arange(300)[None, :] + 40, 9 + jnp.arange(20)[:, None]))
    cdf = binomial_cdf_f32(10, 0.05)
    want = (u[..., None] >= cdf).sum(-1) * np.float32(2.25)
    got = poisson_background_current(
        seed=5, n_neurons=300, first_step=9, n_steps=20, rate_hz=50.0, neuron_offset=40
    )
    np.testing.assert_array_equal(got, want)


def test_background_inverse_cdf_exact_long_table():
    """200 inputs at p = 0.5: a CDF table too long for elementwise compares (searchsorted path)."""
    u = np.asarray(uniform_hash(7, jnp.arange(50)[None, :], 3 + jnp.arange(30)[:, None]))
    cdf = binomial_cdf_f32(200, 0.5)
    assert (cdf < 1.0).sum() > 32
    want = (u[..., None] >= cdf).sum(-1) * np.float32(0.5)
    got = poisson_background_current(
        seed=7, n_neurons=50, first_step=3, n_steps=30, n_inputs=200, rate_hz=500.0, amp_mV=0.5
    )
    np.testing.assert_array_equal(got, want)
    assert 90 * 0.5 < float(np.mean(got)) < 110 * 0.5


def test_background_jit_traced_first_step_and_shifts():
    kw = dict(seed=21, n_neurons=500, n_steps=30)
    f = jax.jit(lambda fs: poisson_background_current(first_step=fs, **kw))
    eager = np.asarray(poisson_background_current(first_step=40, **kw))
    np.testing.assert_array_equal(f(jnp.int32(40)), eager)
    np.testing.assert_array_equal(eager, poisson_background_current(first_step=40, **kw))
    # shift of first_step = shift of the stream; neuron_offset = column shift
    long = np.asarray(poisson_background_current(first_step=30, **{**kw, "n_steps": 40}))
    np.testing.assert_array_equal(long[10:], eager)
    part = poisson_background_current(seed=21, n_neurons=200, n_steps=30, first_step=40, neuron_offset=300)
    np.testing.assert_array_equal(eager[:, 300:], part)
    assert not np.array_equal(
        eager, np.asarray(poisson_background_current(first_step=40, **{**kw, "seed": 22}))
    )


@pytest.mark.parametrize("rate", [0.0, 1000.0])
def test_background_edge_rates(rate: float):
    c = np.asarray(
        poisson_background_current(seed=1, n_neurons=50, first_step=0, n_steps=10, rate_hz=rate, n_inputs=4)
    )
    np.testing.assert_array_equal(c, 0.0 if rate == 0.0 else 4 * 2.25)


# ---------------------------------------------------------------- gaussian_background_current


def test_gaussian_background_hand_values():
    # h(0, 0, 0) = 0xbd1e638b: bytes 139 + 99 + 30 + 189 = 457; h(0, 1, 0): 213 + 127 + 250 + 64 = 654;
    # h(0, 0, 1): 208 + 152 + 110 + 164 = 634. I = 0.3 + 1.3 * (s - 510) / sqrt(21845).
    for (s, i, t), total in {(0, 0, 0): 457, (0, 1, 0): 654, (0, 0, 1): 634}.items():
        h = _hash_py(s, i, t)
        assert sum((h >> k) & 255 for k in (0, 8, 16, 24)) == total
    got = np.asarray(
        gaussian_background_current(seed=0, n_neurons=2, first_step=0, n_steps=2, mean_mV=0.3, std_mV=1.3)
    )
    assert got.shape == (2, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], [0.3 - 1.3 * 53 / 147.80054, 0.3 + 1.3 * 144 / 147.80054], rtol=1e-6)
    np.testing.assert_allclose(got[1, 0], 0.3 + 1.3 * 124 / 147.80054, rtol=1e-6)
    # rows are keyed by absolute step: a window starting at step 1 repeats row 1
    later = gaussian_background_current(seed=0, n_neurons=2, first_step=1, n_steps=1, mean_mV=0.3, std_mV=1.3)
    np.testing.assert_array_equal(np.asarray(later)[0], got[1])


def test_gaussian_background_moments():
    x = np.asarray(
        gaussian_background_current(
            seed=3, n_neurons=1000, first_step=0, n_steps=200, mean_mV=0.3, std_mV=1.3
        )
    ).astype(np.float64)
    # 200k samples: standard errors 0.003 (mean) and ~0.002 (std)
    assert abs(x.mean() - 0.3) < 0.015 and abs(x.std() - 1.3) < 0.01
    assert abs(x.max() - 0.3) <= 1.3 * 510 / 147.80054 + 1e-5  # Irwin-Hall(4) range: +-3.45 std
    # no correlation between neighbouring neurons or steps
    assert abs(np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(x[:-1].ravel(), x[1:].ravel())[0, 1]) < 0.01
