"""Spike messages of the MPI exchange: events (global ids) when sparse, a bit-packed vector when dense; and
the split of the waiting at exchanges (sync_wait)."""

from __future__ import annotations

import numpy as np
import pytest

from fumjax.distributed.exchange import sync_wait
from fumjax.distributed.mpi_runner import spike_codec
from fumjax.kernels import fused

CODECS = [
    "numpy",
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            fused.spike_codec() is None, reason="the C++ extension fumjax._core is not built"
        ),
    ),
]


@pytest.fixture(params=CODECS)
def codec(request):
    """(encode, decode) of one codec; n_total defaults to 0 as in mpi_runner.encode_spikes."""
    enc, dec = spike_codec(request.param)
    return (lambda spikes, members, step, n_total=0: enc(spikes, members, step, n_total)), dec


def test_sparse_spikes_travel_as_events(codec):
    encode_spikes, decode_spikes = codec
    members = np.array([3, 7] + list(range(40, 71)), np.int32)  # 33 neurons of a part
    spikes = np.zeros(33, np.uint8)
    spikes[1] = 1  # 1 * 32 <= 33: one int32 id (4 bytes) is smaller than 5 bytes of bits
    msg = encode_spikes(spikes, members, 17)
    assert msg.dtype == np.uint8 and msg.view(np.int32).tolist() == [17, 0, 7]  # (step, kind events, id 7)
    out = np.zeros(80, np.uint8)
    assert decode_spikes(msg, members, out) == 17
    assert np.flatnonzero(out).tolist() == [7]


def test_dense_spikes_travel_bit_packed(codec):
    encode_spikes, decode_spikes = codec
    members = np.arange(100, 140, dtype=np.int32)  # 40 neurons
    spikes = np.zeros(40, np.uint8)
    spikes[[0, 9, 39]] = 1  # 3 * 32 = 96 > 40: bit-packed, 8 header bytes + 5 bytes
    msg = encode_spikes(spikes, members, 5)
    assert msg.shape == (8 + 5,)
    assert msg[:8].view(np.int32).tolist() == [5, 1]
    assert msg[8:].tolist() == [0b10000000, 0b01000000, 0, 0, 0b00000001]
    out = np.zeros(150, np.uint8)
    out[3] = 1  # other parts' spikes stay
    assert decode_spikes(msg, members, out) == 5
    assert np.flatnonzero(out).tolist() == [3, 100, 109, 139]


def test_no_spikes_is_a_header_only(codec):
    encode_spikes, decode_spikes = codec
    msg = encode_spikes(np.zeros(10, np.uint8), np.arange(10, dtype=np.int32), 0)
    assert msg.view(np.int32).tolist() == [0, 0]
    out = np.zeros(10, np.uint8)
    assert decode_spikes(msg, np.arange(10, dtype=np.int32), out) == 0 and not out.any()


def test_a_block_of_steps_travels_in_one_message(codec):
    encode_spikes, decode_spikes = codec
    """k = 3 steps of a part: events are k_row * N + global id; dense blocks are bit-packed row by row."""
    members = np.array([2, 5, 9], np.int32)  # a part of a network of N = 10
    block = np.zeros((3, 3), np.uint8)
    block[2, 1] = 1  # step 7 + 2, neuron 5: 1 of 9 bits, 1 * 32 > 9 -> bit-packed
    msg = encode_spikes(block, members, 7, 10)
    assert msg[:8].view(np.int32).tolist() == [7, 1] and msg[8:].tolist() == [0b00000001, 0]  # flat bit 7
    out = np.zeros((3, 10), np.uint8)
    assert decode_spikes(msg, members, out) == 7
    assert [tuple(x) for x in np.argwhere(out)] == [(2, 5)]
    members = np.arange(100, 200, dtype=np.int32)  # 100 neurons, 3 steps, 2 spikes: events
    block = np.zeros((3, 100), np.uint8)
    block[0, 4] = block[2, 99] = 1
    msg = encode_spikes(block, members, 40, 300)
    assert msg.view(np.int32).tolist() == [40, 0, 104, 2 * 300 + 199]
    out = np.zeros((3, 300), np.uint8)
    assert decode_spikes(msg, members, out) == 40
    assert [tuple(x) for x in np.argwhere(out)] == [(0, 104), (2, 199)]


@pytest.mark.parametrize("rate", [0.0, 0.004, 0.03, 0.2, 1.0])
@pytest.mark.parametrize("k", [1, 3])
def test_native_codec_writes_the_numpy_bytes(rate, k):
    """The C++ codec against the numpy one (the format's definition) on random parts, both message kinds."""
    if fused.spike_codec() is None:
        pytest.skip("the C++ extension fumjax._core is not built")
    rng = np.random.default_rng()
    n, n_p = 1000, 613  # n_p not a multiple of 8: a partial last word / byte
    members = np.sort(rng.choice(n, n_p, replace=False)).astype(np.int32)
    block = (rng.random((k, n_p)) < rate).astype(np.uint8)
    spikes = block if k > 1 else block[0]
    (enc_np, dec_np), (enc_c, dec_c) = spike_codec("numpy"), spike_codec("native")
    msg = enc_np(spikes, members, 9, n)
    got = enc_c(spikes, members, 9, n)
    assert got.dtype == np.uint8 and np.array_equal(got, msg)
    out_np = (rng.random((k, n) if k > 1 else n) < 0.1).astype(np.uint8)  # other parts' spikes
    out_c = out_np.copy()
    assert dec_np(msg, members, out_np) == dec_c(msg, members, out_c) == 9
    assert np.array_equal(out_c, out_np)


def test_native_codec_names_bad_messages():
    codec = fused.spike_codec()
    if codec is None:
        pytest.skip("the C++ extension fumjax._core is not built")
    members = np.arange(4, dtype=np.int32)
    out = np.zeros(4, np.uint8)
    with pytest.raises(IndexError, match="spike event 7 outside"):
        codec.decode_spikes(np.array([0, 0, 7], np.int32).view(np.uint8), members, out)
    with pytest.raises(ValueError, match="bit-packed message of 2 bytes"):
        codec.decode_spikes(np.array([0, 1, 0], np.int32).view(np.uint8)[:10], members, out)
    with pytest.raises(ValueError, match="members has 4 ids for 5"):
        codec.encode_spikes(np.zeros(5, np.uint8), members, 0, 4)
    with pytest.raises(TypeError):  # a copy would lose the writes: no conversion of the output
        codec.decode_spikes(np.array([0, 0], np.int32).view(np.uint8), members, np.zeros(4, np.int32))


def test_sync_wait_splits_waiting_into_imbalance_and_jitter():
    # worked by hand: busy r0 = (1.0 - 0.2, 2.5 - 1.3) = (0.8, 1.2), r1 = (1.2 - 0.2, 2.4 - 1.3) = (1.0, 1.1);
    # slowest mean 1.05 (r1); per-interval max (1.0, 1.2), mean 1.1 -> jitter 0.05; r0 waits (0.2, 0) = 0.1
    # = imbalance 0.05 + jitter 0.05
    enter = np.array([[0.0, 1.0, 2.5], [0.1, 1.2, 2.4]])
    leave = np.array([[0.2, 1.3, 2.6], [0.2, 1.3, 2.6]])
    got = sync_wait(enter, leave)
    np.testing.assert_allclose(got["busy_s"], [1.0, 1.05])
    np.testing.assert_allclose(got["imbalance_s"], [0.05, 0.0], atol=1e-12)
    assert got["jitter_s"] == pytest.approx(0.05)
    np.testing.assert_allclose(got["exchange_s"], [0.2, 0.15])
    with pytest.raises(ValueError, match="M >= 2"):
        sync_wait(enter[:, :1], leave[:, :1])


def test_channel_checks_payload_size_and_closing():
    """A Channel on one rank (no peers): returns the payload; too large a payload and use after close are
    named errors."""
    mpi = pytest.importorskip("mpi4py.MPI")
    from fumjax.distributed.exchange import Exchanger

    ch = Exchanger(mpi.COMM_SELF, timeout_s=5.0).channel(16)
    got = ch.allgather(np.arange(4, dtype=np.int32), "four ids")
    assert len(got) == 1 and got[0].view(np.int32).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="a payload of 20 bytes exceeds the channel's 16"):
        ch.allgather(np.arange(5, dtype=np.int32), "five ids")
    ch.close()
    ch.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        ch.allgather(np.zeros(1, np.uint8), "after close")


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.5])
@pytest.mark.parametrize("k", [1, 2])
def test_message_encoded_in_the_program_is_the_numpy_message(rate, k):
    """fused.spike_message (the FFI target, inside jit) writes the numpy codec's message after its length."""
    if fused.spike_codec() is None:
        pytest.skip("the C++ extension fumjax._core is not built")
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng()
    n, n_p = 500, 203
    members = np.sort(rng.choice(n, n_p, replace=False)).astype(np.int32)
    block = (rng.random((k, n_p)) < rate).astype(np.uint8)
    spikes = block if k > 1 else block[0]
    fn = jax.jit(lambda s, m, t: fused.spike_message(s, m, t, n))
    out = np.asarray(fn(jnp.asarray(spikes), jnp.asarray(members), jnp.int32(31)))
    assert out.shape == (fused.spike_message_bytes(k * n_p),) == (4 + 8 + (k * n_p + 7) // 8,)
    want = spike_codec("numpy")[0](spikes, members, 31, n)
    length = int(out[:4].view(np.int32)[0])
    assert length == want.shape[0] and np.array_equal(out[4 : 4 + length], want)
