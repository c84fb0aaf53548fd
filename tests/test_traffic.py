"""Bytes-per-step model of the bandwidth accounting (issue 5), checked on cases worked out on paper."""

import pytest

from fumjax.config import FumConfig
from fumjax.kernels.traffic import run_bytes, step_traffic

# N = 10, K = 4 (E = 40), 100 Hz at dt = 1 ms: one spike per step; window 5 steps; bfloat16 w/elig (2 B),
# float32 neuron state (4 B); gamma 0.95 renormalizes every min(5, 179) = 5 steps, i.e. only at window end.
TINY = FumConfig().replace(run={"window_steps": 5, "dtype": "bfloat16"})


def test_run_bytes_counts_sectors_touched():
    assert run_bytes(4, 4) == 32  # one element: one sector
    assert run_bytes(32, 4) == 32 + 28  # 8 aligned starts: 1 of them 1 sector, 7 of them 2 -> 1.875
    assert run_bytes(8, 4) == 36  # a pointer pair straddles a sector boundary 1 time in 8
    assert run_bytes(0, 4) == 0


def test_rstdp_tiny_network_by_hand():
    t = step_traffic(10, 4, 100.0, TINY)
    assert t.spikes_per_step == 1.0 and t.n_synapses == 40
    # neurons: 10 x (6 reads + 4 writes of 4 B + 2 B flag) + 1 spike x window_spikes r/w 8 B = 428
    # drive: 10 x (4 B written + 4 B read) = 80
    # out-row: row_ptr pair 8 + 4 x (post 4 + w 2 + ring r/w 8 + y_post 4 + elig r/w 4) = 96
    # scratch: 10 x (pre cell {pre_dw, row_end} 8 + post_yd 4) = 120
    # in-list: in_ptr pair 8 + 4 x (in_syn 4 + bucket 4 + pre cell 8 + elig 4) = 88
    # window: (40 x (w r/w + elig r/w = 8 B) + 10 x 2 x (tau, v_th, rate 12 B + window_spikes 4 B)) / 5 = 128
    assert t.bytes == {
        "neuron_state": 428,
        "drive": 80,
        "scratch": 120,
        "out_rows": 96,
        "in_lists": 88,
        "window_pass": 128,
    }
    assert t.total == 940
    # sectors: neurons 420 + spike r/w 64 = 484; out-row 36 (pair) + post 32+12 + w 32+6 + elig 2 x 38
    # + 4 x (ring 64 + y 32) = 578; in-list 36 + in_syn 44 + 4 x (bucket 32 + cell 32 + elig 64) = 592
    assert t.sector_bytes == {
        "neuron_state": 484,
        "drive": 80,
        "scratch": 120,
        "out_rows": 578,
        "in_lists": 592,
        "window_pass": 128,
    }
    assert t.sector_total == 1982


def test_no_plasticity_drops_traces_in_lists_and_the_synapse_pass():
    t = step_traffic(10, 4, 100.0, TINY, mode="off")
    # neurons 10 x (6 x 4 + 2) + 8 = 268; out-row 8 + 4 x (4 + 2 + 8) = 64; window 10 x 32 / 5 = 64
    assert t.bytes == {
        "neuron_state": 268,
        "drive": 80,
        "scratch": 0,
        "out_rows": 64,
        "in_lists": 0,
        "window_pass": 64,
    }


def test_long_window_adds_eligibility_renormalizations():
    # gamma 0.5: renormalize every floor(ln 1e4 / ln 2) = 13 steps -> 3 dense passes (steps 13, 26, 39) in a
    # 50-step window besides the window end: (40 x (8 + 3 x 4) + 320) / 50 = 22.4
    cfg = TINY.replace(plasticity={"gamma": 0.5}, run={"window_steps": 50})
    assert step_traffic(10, 4, 100.0, cfg).bytes["window_pass"] == pytest.approx(22.4)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="N = 0"):
        step_traffic(0, 4, 1.0)
    with pytest.raises(ValueError, match="mode = 'x'"):
        step_traffic(10, 4, 1.0, mode="x")
