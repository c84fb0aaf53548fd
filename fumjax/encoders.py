"""Input encoders, output decoders and background drive for FUM.

Randomness is counter-based and partition-independent: every random number is a pure function of
(seed, global id, step) through :func:`uniform_hash`, so results do not depend on how neurons or time
are chunked across devices/kernels and can be reproduced bit-for-bit in C++/CUDA.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

# Odd multipliers / offset used by uniform_hash (all uint32).
_SEED_MUL = 0x9E3779B1
_SEED_ADD = 0x7F4A7C15
_ID_MUL = 0x85EBCA77
_STEP_MUL = 0xC2B2AE3D
_LB_M1 = 0x7FEB352D
_LB_M2 = 0x846CA68B


def _to_u32(x: int | Array) -> Array:
    """Reinterpret an integer scalar/array as uint32 (two's complement wrap, i.e. value mod 2**32)."""
    if isinstance(x, (int, np.integer)):
        return jnp.asarray(np.uint32(int(x) & 0xFFFFFFFF))
    a = jnp.asarray(x)
    if a.dtype == jnp.uint32:
        return a
    if a.dtype != jnp.int32:
        a = a.astype(jnp.int32)
    return lax.bitcast_convert_type(a, jnp.uint32)


def _lowbias32(h: Array) -> Array:
    """lowbias32 avalanche mixer on uint32 (wrapping arithmetic)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(_LB_M1)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(_LB_M2)
    h = h ^ (h >> 16)
    return h


def uniform_hash(seed: int | Array, ids: int | Array, step: int | Array) -> Array:
    """Counter-based uniform in [0, 1): float32, shape = broadcast(seed, ids, step), e.g. ids (C,) -> (C,).

    Exact formula (all arithmetic on uint32, wrapping mod 2**32; seed/ids/step are taken mod 2**32,
    i.e. negative int32 values are reinterpreted as their two's-complement bits)::

        lowbias32(x): x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16
        h = seed * 0x9e3779b1 + 0x7f4a7c15
        h = lowbias32(h ^ (id   * 0x85ebca77))
        h = lowbias32(h ^ (step * 0xc2b2ae3d))
        h = lowbias32(h)
        u = (float)(h >> 8) * 2**-24          # exactly representable in float32, u in [0, 1 - 2**-24]

    For a fixed seed the map id -> h is injective at any step and, for fixed (seed, id), step -> h is
    injective, since each stage is a bijection of its input.
    """
    return _hash_u32(_to_u32(seed), _to_u32(ids), _to_u32(step))


def _hash_bits(s: Array, i: Array, t: Array) -> Array:
    """The uint32 hash h of uniform_hash (before its conversion to a float)."""
    h = s * jnp.uint32(_SEED_MUL) + jnp.uint32(_SEED_ADD)
    h = _lowbias32(h ^ (i * jnp.uint32(_ID_MUL)))
    h = _lowbias32(h ^ (t * jnp.uint32(_STEP_MUL)))
    return _lowbias32(h)


@jax.jit
def _hash_u32(s: Array, i: Array, t: Array) -> Array:
    return (_hash_bits(s, i, t) >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def intensity_to_rates(x: Array, *, max_rate_hz: float = 100.0) -> Array:
    """Map intensities x (C,) in [0, 1] (clipped) to Poisson rates (C,) in Hz: rate = x * max_rate_hz."""
    return jnp.clip(jnp.asarray(x, jnp.float32), 0.0, 1.0) * jnp.float32(max_rate_hz)


@functools.partial(jax.jit, static_argnames=("refractory_steps",))
def _poisson_from_probs(
    p: Array,
    *,
    seed: int | Array,
    refractory_steps: int,
    first_step: int | Array,
    channel_offset: int | Array,
) -> Array:
    """Refractory Bernoulli process: p (T, C) spike probability per step -> spikes (T, C) uint8."""
    n_steps, n_ch = p.shape
    ids = jnp.arange(n_ch, dtype=jnp.int32) + jnp.asarray(channel_offset, jnp.int32)
    step0 = jnp.asarray(first_step, jnp.int32)

    def body(refrac: Array, xs: tuple[Array, Array]) -> tuple[Array, Array]:
        t, p_t = xs
        u = uniform_hash(seed, ids, step0 + t)
        spike = (refrac <= 0) & (u < p_t)
        refrac = jnp.where(spike, jnp.int32(refractory_steps), jnp.maximum(refrac - 1, 0))
        return refrac, spike.astype(jnp.uint8)

    refrac0 = jnp.zeros((n_ch,), jnp.int32)
    _, spikes = lax.scan(body, refrac0, (jnp.arange(n_steps, dtype=jnp.int32), p))
    return spikes


def _rates_to_probs(rates_hz: Array, dt_ms: float) -> Array:
    return jnp.clip(jnp.asarray(rates_hz, jnp.float32) * jnp.float32(dt_ms / 1000.0), 0.0, 1.0)


def poisson_encode(
    rates_hz: Array,
    *,
    seed: int | Array,
    n_steps: int = 50,
    dt_ms: float = 1.0,
    refractory_steps: int = 5,
    first_step: int | Array = 0,
    channel_offset: int | Array = 0,
) -> Array:
    """Rate-encode rates_hz (C,) [Hz] into spikes (n_steps, C) uint8 (Poisson process with refractoriness).

    At step t channel c spikes iff it is not refractory and
    uniform_hash(seed, c + channel_offset, first_step + t) < clip(rates_hz[c] * dt_ms / 1000, 0, 1);
    after a spike the channel is silent for `refractory_steps` steps (so spikes are >= refractory_steps + 1
    steps apart). The refractory state starts at 0 at step first_step.
    """
    rates = jnp.asarray(rates_hz, jnp.float32)
    p = jnp.broadcast_to(_rates_to_probs(rates, dt_ms)[None, :], (n_steps, rates.shape[0]))
    return _poisson_from_probs(
        p,
        seed=_to_u32(seed),
        refractory_steps=refractory_steps,
        first_step=first_step,
        channel_offset=channel_offset,
    )


@functools.partial(jax.jit, static_argnames=("n_steps", "t_min", "t_max", "threshold"))
def latency_encode(
    x: Array,
    *,
    n_steps: int = 50,
    t_min: int = 0,
    t_max: int | None = None,
    threshold: float = 0.0,
) -> Array:
    """Temporal (latency) encoding: x (C,) in [0, 1] -> spikes (n_steps, C) uint8, one spike per channel.

    Channel c spikes once at step round(t_min + (1 - x[c]) * (t_max - t_min)) (round half to even;
    x clipped to [0, 1]; t_max defaults to n_steps - 1): stronger inputs fire earlier. Channels with
    x <= threshold do not spike.
    """
    if t_max is None:
        t_max = n_steps - 1
    x = jnp.asarray(x, jnp.float32)
    xc = jnp.clip(x, 0.0, 1.0)
    t_spike = jnp.round(t_min + (1.0 - xc) * (t_max - t_min)).astype(jnp.int32)
    steps = jnp.arange(n_steps, dtype=jnp.int32)[:, None]
    return ((steps == t_spike[None, :]) & (x > threshold)[None, :]).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("n_taps",))
def lowpass(x: Array, *, n_taps: int = 5) -> Array:
    """Causal moving average of x (T, C) over the last n_taps steps -> (T, C) float32.

    y[t] = mean(x[max(0, t - n_taps + 1) : t + 1]); for t < n_taps - 1 the mean is over the t + 1
    available steps. Computed with a cumulative sum along time.
    """
    x = jnp.asarray(x, jnp.float32)
    n_t = x.shape[0]
    cs = jnp.concatenate([jnp.zeros((1,) + x.shape[1:], jnp.float32), jnp.cumsum(x, axis=0)], axis=0)
    t = jnp.arange(n_t)
    lo = jnp.maximum(t + 1 - n_taps, 0)
    count = (t + 1 - lo).astype(jnp.float32)
    shape = (n_t,) + (1,) * (x.ndim - 1)
    return (cs[t + 1] - cs[lo]) / count.reshape(shape)


def lowpass_poisson_encode(
    rates_hz: Array,
    *,
    seed: int | Array,
    n_steps: int = 50,
    n_taps: int = 5,
    dt_ms: float = 1.0,
    refractory_steps: int = 5,
    first_step: int | Array = 0,
    channel_offset: int | Array = 0,
) -> Array:
    """Low-pass (n_taps moving average) rates_hz (T, C) or (C,) [Hz], then Poisson-encode -> (T, C) uint8.

    A (C,) input is held constant for n_steps steps (so the filter leaves it unchanged); a (T, C) input
    sets T (n_steps is ignored). Per-step spike probability is clip(filtered_rate * dt_ms / 1000, 0, 1),
    with the same hash stream and refractoriness as :func:`poisson_encode`.
    """
    rates = jnp.asarray(rates_hz, jnp.float32)
    if rates.ndim == 1:
        rates = jnp.broadcast_to(rates[None, :], (n_steps, rates.shape[0]))
    p = _rates_to_probs(lowpass(rates, n_taps=n_taps), dt_ms)
    return _poisson_from_probs(
        p,
        seed=_to_u32(seed),
        refractory_steps=refractory_steps,
        first_step=first_step,
        channel_offset=channel_offset,
    )


@functools.partial(jax.jit, static_argnames=("n_neurons", "amp_mV"))
def spikes_to_current(spikes: Array, channel_neuron: Array, n_neurons: int, *, amp_mV: float) -> Array:
    """Input spikes (T, C) uint8 -> current (T, N) float32 [mV per step]; channel c drives channel_neuron[c].

    Several channels targeting the same neuron are summed. Targets outside [0, n_neurons) (e.g. -1)
    are dropped.
    """
    tgt = jnp.asarray(channel_neuron, jnp.int32)
    tgt = jnp.where((tgt >= 0) & (tgt < n_neurons), tgt, n_neurons)
    s = jnp.asarray(spikes).astype(jnp.float32) * jnp.float32(amp_mV)
    out = jnp.zeros((s.shape[0], n_neurons), jnp.float32)
    return out.at[:, tgt].add(s, mode="drop")


@functools.partial(jax.jit, static_argnames=("n_populations", "dt_ms"))
def population_rates_hz(spikes: Array, population: Array, n_populations: int, *, dt_ms: float = 1.0) -> Array:
    """Mean firing rate per output population: spikes (T, N) uint8, population (N,) int32 -> (P,) float32 Hz.

    population[n] = -1 (or any id outside [0, P)) marks a non-output neuron. rate_p = total spikes of p /
    (n_neurons_in_p * T * dt_ms / 1000); an empty population has rate 0.
    """
    spikes = jnp.asarray(spikes)
    pop = jnp.asarray(population, jnp.int32)
    pop = jnp.where((pop >= 0) & (pop < n_populations), pop, n_populations)
    counts = jnp.sum(spikes.astype(jnp.int32), axis=0)
    tot = jax.ops.segment_sum(counts, pop, num_segments=n_populations + 1)[:n_populations]
    size = jax.ops.segment_sum(jnp.ones_like(counts), pop, num_segments=n_populations + 1)[:n_populations]
    duration_s = spikes.shape[0] * dt_ms / 1000.0
    denom = size.astype(jnp.float32) * jnp.float32(duration_s)
    return jnp.where(size > 0, tot.astype(jnp.float32) / jnp.maximum(denom, 1e-30), 0.0).astype(jnp.float32)


def decode(spikes: Array, population: Array, n_populations: int) -> Array:
    """Decoded class: argmax of population_rates_hz(spikes (T, N), population (N,)) -> int32; ties: lowest."""
    return jnp.argmax(population_rates_hz(spikes, population, n_populations)).astype(jnp.int32)


def binomial_cdf_f32(n: int, p: float) -> np.ndarray:
    """CDF(k) = P[Binomial(n, p) <= k] for k = 0..n-1, computed in float64 and cast -> (n,) float32 numpy."""
    p = min(max(float(p), 0.0), 1.0)
    pmf = np.array([math.comb(n, k) * p**k * (1.0 - p) ** (n - k) for k in range(n)], np.float64)
    return np.cumsum(pmf).astype(np.float32)


def poisson_background_current(
    *,
    seed: int | Array,
    n_neurons: int,
    first_step: int | Array,
    n_steps: int,
    n_inputs: int = 10,
    rate_hz: float = 20.0,
    amp_mV: float = 2.25,
    dt_ms: float = 1.0,
    neuron_offset: int | Array = 0,
    neuron_ids: Array | None = None,
) -> Array:
    """Background drive (n_steps, n_neurons) float32 [mV] = amp_mV * Binomial(n_inputs, rate_hz*dt_ms/1000).

    Each neuron gets n_inputs independent Poisson trains at rate_hz. One uniform per neuron per step,
    u = uniform_hash(seed, id_n, first_step + t), is inverted through the float32 CDF:
    count = sum_{k=0}^{n_inputs-1} [u >= CDF(k)] with CDF from :func:`binomial_cdf_f32`.
    id_n = neuron_ids[n] if neuron_ids (n_neurons,) int is given (e.g. the global ids of one part's
    neurons), else n + neuron_offset. first_step and neuron_ids may be traced.
    """
    if neuron_ids is not None and tuple(jnp.shape(neuron_ids)) != (n_neurons,):
        raise ValueError(f"neuron_ids has shape {jnp.shape(neuron_ids)}, expected ({n_neurons},)")
    if n_inputs <= 0:
        return jnp.zeros((n_steps, n_neurons), jnp.float32)
    offset = jnp.asarray(neuron_offset, jnp.int32)
    return _background_impl(
        _to_u32(seed),
        jnp.asarray(first_step, jnp.int32),
        jnp.arange(n_neurons, dtype=jnp.int32) + offset
        if neuron_ids is None
        else jnp.asarray(neuron_ids, jnp.int32),
        n_neurons=n_neurons,
        n_steps=n_steps,
        n_inputs=n_inputs,
        p=float(rate_hz) * float(dt_ms) / 1000.0,
        amp_mV=float(amp_mV),
    )


@functools.partial(jax.jit, static_argnames=("n_neurons", "n_steps", "n_inputs", "p", "amp_mV"))
def _background_impl(
    seed: Array,
    first_step: Array,
    ids: Array,
    *,
    n_neurons: int,
    n_steps: int,
    n_inputs: int,
    p: float,
    amp_mV: float,
) -> Array:
    ids = ids[None, :]
    steps = first_step + jnp.arange(n_steps, dtype=jnp.int32)[:, None]
    cdf = binomial_cdf_f32(n_inputs, p)
    u = _hash_u32(seed, _to_u32(ids), _to_u32(steps))
    # count = #{k : CDF(k) <= u}. u < 1, so CDF entries that round to 1.0 never count: drop them. A short
    # table is a few elementwise compares (fused, vectorized; ~10x faster on CPU than searchsorted's loop
    # of gathers); a long one keeps searchsorted.
    cdf = cdf[cdf < 1.0]
    if cdf.size <= _MAX_COMPARES:
        count = jnp.zeros(u.shape, jnp.int32)
        for c in cdf:
            count = count + (u >= jnp.float32(c)).astype(jnp.int32)
    else:
        count = jnp.searchsorted(jnp.asarray(cdf), u, side="right")
    return count.astype(jnp.float32) * jnp.float32(amp_mV)


_MAX_COMPARES = 32


# Irwin-Hall(4) over bytes: the sum of 4 independent uniform bytes has mean 510 and variance 4*(256^2-1)/12.
_IH_MEAN = 510.0
_IH_STD = math.sqrt(4 * (256**2 - 1) / 12)


def gaussian_background_current(
    *,
    seed: int | Array,
    n_neurons: int,
    first_step: int | Array,
    n_steps: int,
    mean_mV: float,
    std_mV: float,
) -> Array:
    """Noise current (n_steps, n_neurons) float32 [mV], about N(mean_mV, std_mV^2) per neuron and step.

    One hash per neuron n and step t, h = uniform_hash's uint32 h(seed, n, first_step + t); the sum of its
    four bytes s (an Irwin-Hall(4) variate: exact mean 510, std sqrt(21845) = 147.80, range +-3.45 std)
    gives I = mean_mV + std_mV * (s - 510) / 147.80. Three times cheaper than jax.random.normal on CPU;
    the membrane sums ~tau of these per time constant, so its potential is Gaussian to a close approximation.
    first_step may be traced.
    """
    return _gaussian_impl(
        _to_u32(seed),
        jnp.asarray(first_step, jnp.int32),
        n_neurons=n_neurons,
        n_steps=n_steps,
        mean_mV=float(mean_mV),
        std_mV=float(std_mV),
    )


@functools.partial(jax.jit, static_argnames=("n_neurons", "n_steps", "mean_mV", "std_mV"))
def _gaussian_impl(
    seed: Array, first_step: Array, *, n_neurons: int, n_steps: int, mean_mV: float, std_mV: float
) -> Array:
    ids = jnp.arange(n_neurons, dtype=jnp.int32)[None, :]
    steps = first_step + jnp.arange(n_steps, dtype=jnp.int32)[:, None]
    h = _hash_bits(seed, _to_u32(ids), _to_u32(steps))
    m = jnp.uint32(0xFF)
    s = (h & m) + ((h >> 8) & m) + ((h >> 16) & m) + (h >> 24)
    z = (s.astype(jnp.float32) - jnp.float32(_IH_MEAN)) * jnp.float32(1.0 / _IH_STD)
    return jnp.float32(mean_mV) + jnp.float32(std_mV) * z
