"""The fused synapse half of a step (`fused.synapse_step`, FFI target `fumjax_synapse_step`): what an MPI
rank runs after its spike exchange, event-driven. Whole steps with it equal the reference's (value equality
of every synapse-side field), and one part of a partition computes exactly what the whole network does for
its synapses.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fumjax import FumConfig, Network
from fumjax.distributed.partition import part_synapses, partition, split_part, split_state_part
from fumjax.dynamics import step, synapse_phase
from fumjax.kernels import fused
from fumjax.state import init_state

pytestmark = pytest.mark.skipif(not fused.available(), reason="fumjax._core not built")


def _network(n: int, delays: str, seed: int) -> Network:
    """Distance-biased network; 'mixed': rebuilt with random delays 1..3 and every 7th neuron static
    (plastic_pre False)."""
    net = Network.distance_biased(n, seed=seed)
    if delays == "one":
        return net
    rng = np.random.default_rng(seed)
    pre, post, w = (np.asarray(a) for a in (net.pre, net.post, net.w0))
    d = rng.integers(1, 4, pre.shape[0])
    d[0] = 3
    plastic = np.arange(n) % 7 != 0
    return Network.from_arrays(
        pre,
        post,
        w,
        np.asarray(net.tau_ms),
        np.asarray(net.v_th_mV),
        np.asarray(net.excitatory),
        delay_steps=d,
        plastic_pre=plastic,
    )


@functools.partial(jax.jit, static_argnames=("cfg", "mode", "backend"))
def _phases(state, net, spikes_pre, spikes, cfg, mode, backend):
    """synapse_phase for each step of (T, N_pre) / (T, N) spikes, state.step advancing, the ring slot of the
    step zeroed first as the LIF half does: (T,) states."""

    def body(s, sp):
        s = s.replace(ring_mV=s.ring_mV.at[s.step % net.max_delay].set(0.0))
        s = synapse_phase(s, net, sp[0], sp[1], cfg, mode, backend)
        s = s.replace(step=s.step + 1)
        return s, s

    return jax.lax.scan(body, state, (spikes_pre, spikes))[1]


def _random_state(net: Network, cfg: FumConfig, rng: np.random.Generator):
    """init_state with random traces, ring, weights within the clip and eligibility, mid-window clock."""
    s = init_state(net, cfg)
    wd = s.w.dtype
    c = cfg.connectivity.w_clip
    return s.replace(
        x_pre=jnp.asarray(rng.uniform(0, 2, s.x_pre.shape), s.x_pre.dtype),
        y_post=jnp.asarray(rng.uniform(0, 2, s.y_post.shape), s.y_post.dtype),
        ring_mV=jnp.asarray(rng.uniform(0, 3, s.ring_mV.shape), s.ring_mV.dtype),
        w=jnp.asarray(rng.uniform(-c, c, s.w.shape), wd),
        elig=jnp.asarray(rng.normal(0, 0.01, s.elig.shape), wd),
        step=jnp.asarray(37, jnp.int32),
        elig_t0=jnp.asarray(10, jnp.int32),
    )


@pytest.mark.parametrize("mode", ["off", "stdp", "rstdp"])
@pytest.mark.parametrize("delays", ["one", "mixed"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_steps_with_fused_synapses_equal_reference(mode, delays, dtype):
    """`dynamics.step` under scan, fused (LIF kernel + this synapse kernel) vs reference: 300 steps of a
    driven 400-neuron network, identical rasters and synapse-side state. The fused LIF kernel rounds
    v + (dt/tau)(v_rest - v) + I without the FMA XLA uses inside this program (cpp/lif_compute.h), so v may
    differ in the last bit; the whole-run kernel `run_steps`, which contracts as XLA does, equals this
    reference exactly (test_fused_golden.py), and so the synapse half here is held to that same truth."""
    cfg = FumConfig().replace(run={"dtype": dtype})
    net = _network(400, delays, 3)
    state = init_state(net, cfg)
    rng = np.random.default_rng(3)
    i_ext = jnp.asarray(2.25 * rng.poisson(rng.uniform(0.1, 0.4, 400), (300, 400)), jnp.float32)

    @functools.partial(jax.jit, static_argnames="backend")
    def run(s, backend):
        return jax.lax.scan(lambda c, i: step(c, net, i, cfg, mode, backend), s, i_ext)

    (s_ref, sp_ref), (s_got, sp_got) = run(state, "reference"), run(state, "fused")
    assert np.asarray(sp_ref).sum() > 1500  # it did spike (~15-40 Hz)
    assert np.array_equal(np.asarray(sp_ref), np.asarray(sp_got))
    for f in dataclasses.fields(s_ref):
        a, b = np.asarray(getattr(s_ref, f.name)), np.asarray(getattr(s_got, f.name))
        if f.name == "v_mV":
            np.testing.assert_allclose(b, a, rtol=1e-6)
        else:
            assert np.array_equal(a, b), f"{f.name}: {np.count_nonzero(a != b)} of {a.size} differ"
    learned = "w" if mode == "stdp" else "elig"
    if mode != "off":  # plasticity really ran
        assert not np.array_equal(np.asarray(getattr(s_got, learned)), np.asarray(getattr(state, learned)))


@pytest.mark.parametrize("mode", ["stdp", "rstdp"])
@pytest.mark.parametrize("delays", ["one", "mixed"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_part_equals_whole_network(mode, delays, dtype):
    """One part of a partition (pre ids over all N_pre neurons, local posts) computes exactly what the whole
    network computes for its synapses and neurons, from random states and spikes (silent to 40% per step),
    across eligibility renormalizations."""
    whole = _network(300, delays, 11)
    part = partition(whole, 3, seed=0)
    p = 1
    syn = part_synapses(whole, part, p)
    members = part.members[p]
    local = split_part(whole, part, p, syn)
    cfg = FumConfig().replace(run={"dtype": dtype})
    rng = np.random.default_rng(11)
    state = _random_state(whole, cfg, rng)
    t = 120  # from step 37 with elig_t0 10 and K = 50: renormalized at steps 60 and 110
    spikes = jnp.asarray(rng.random((t, 300)) < rng.uniform(0, 0.4, (t, 1)), jnp.uint8)
    got_whole = _phases(state, whole, spikes, spikes, cfg, mode, "fused")
    got_part = _phases(
        split_state_part(state, part, p, syn), local, spikes, spikes[:, members], cfg, mode, "fused"
    )
    assert local.n_pre == 300 > local.n_neurons
    want = {
        "ring_mV": np.asarray(got_whole.ring_mV)[..., members],
        "y_post": np.asarray(got_whole.y_post)[:, members],
        "w": np.asarray(got_whole.w)[:, syn],
        "elig": np.asarray(got_whole.elig)[:, syn],
        "x_pre": np.asarray(got_whole.x_pre),
        "elig_t0": np.asarray(got_whole.elig_t0),
    }
    for f, a in want.items():
        assert np.array_equal(a, np.asarray(getattr(got_part, f))), f
    if mode == "rstdp":
        assert int(got_whole.elig_t0[-1]) == 110


def test_bad_post_index_is_named():
    net = Network.distance_biased(100, seed=1)
    bad = dataclasses.replace(net, post=net.post.at[5].set(100))
    state = init_state(net, FumConfig())
    spikes_pre = jnp.ones(100, jnp.uint8)
    with pytest.raises(Exception, match="index is out of range"):
        jax.block_until_ready(
            fused.synapse_step(state, bad, spikes_pre, jnp.zeros(100, jnp.uint8), FumConfig(), "stdp")
        )
