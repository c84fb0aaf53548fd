"""Spike messages of the MPI exchange: events (global ids) when sparse, a bit-packed vector when dense; and
the split of the waiting at exchanges (sync_wait)."""

from __future__ import annotations

import numpy as np
import pytest

from fumjax.distributed.exchange import sync_wait
from fumjax.distributed.mpi_runner import decode_spikes, encode_spikes


def test_sparse_spikes_travel_as_events():
    members = np.array([3, 7] + list(range(40, 71)), np.int32)  # 33 neurons of a part
    spikes = np.zeros(33, np.uint8)
    spikes[1] = 1  # 1 * 32 <= 33: one int32 id (4 bytes) is smaller than 5 bytes of bits
    msg = encode_spikes(spikes, members, 17)
    assert msg.dtype == np.uint8 and msg.view(np.int32).tolist() == [17, 0, 7]  # (step, kind events, id 7)
    out = np.zeros(80, np.uint8)
    assert decode_spikes(msg, members, out) == 17
    assert np.flatnonzero(out).tolist() == [7]


def test_dense_spikes_travel_bit_packed():
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


def test_no_spikes_is_a_header_only():
    msg = encode_spikes(np.zeros(10, np.uint8), np.arange(10, dtype=np.int32), 0)
    assert msg.view(np.int32).tolist() == [0, 0]
    out = np.zeros(10, np.uint8)
    assert decode_spikes(msg, np.arange(10, dtype=np.int32), out) == 0 and not out.any()


def test_a_block_of_steps_travels_in_one_message():
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
