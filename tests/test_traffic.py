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
    # p = 0.1 spikes per neuron and step; segments of L = min(K = 5, 64) = 5 steps, one per window.
    # neurons: 10 x (6 reads + 4 writes of 4 B + 2 B flag) + 1 spike x window_spikes r/w 8 B = 428
    # drive: 10 x (4 B written + 4 B read) = 80
    # scratch: 10 x (post cell 16 written + its bits 8 read + hist 4) + summary bytes 10 / 5 + 1 spike = 283
    # out-row: row_ptr pair 8 + 4 x (post 4 + w 2 + ring r/w 8 + post cell 16 + elig r/w 4) = 144, plus hist
    #   values of (5 - 1) / 2 x (1 - 0.9^4) = 0.6878 pending steps x 4 B = 2.7512
    # flush per segment: 10 rows x (pair 8 + code 1 + bits 8 + 5 x hist 4) = 370; 40 synapses x (post 4 +
    #   summary 1 + bits 8 x f2 + elig read 2 + written 2 x f) with f = 1 - 0.9^5 = 0.40951 and
    #   f2 = f - 5 x 0.1 x 0.9^4 = 0.08146: 338.828; (370 + 338.828) / 5 steps = 141.7656
    # window (the reward in the last flush): (40 x (w r/w 4 B + elig written where the flush did not,
    #   2 x (1 - f) = 1.18098 B) + 10 x 2 x (tau, v_th, rate 12 B + window_spikes 4 B)) / 5 = 105.44784
    assert t.bytes == pytest.approx(
        {
            "neuron_state": 428,
            "drive": 80,
            "scratch": 283,
            "out_rows": 146.7512,
            "flush": 141.7656,
            "window_pass": 105.44784,
        }
    )
    assert t.total == pytest.approx(1184.96464)
    # sectors: neurons 420 + spike r/w 64 = 484; scratch 10 x (16 + 16 + 4) + 2 + 1 spike x 32 = 394;
    # out-row 36 (pair) + post 32+12 + w 32+6 + elig 2 x 38 + 4 x (ring 64 + cell 32) = 578, + 0.6878 x 32;
    # flush per segment: rows 10 x (pair 36 + 1 + bits 16 + hist 20 + post run 44 + elig run 38) = 1550,
    # summary 40 x 1 + bits 40 x 32 f2 = 144.2688, elig written back: 40 / 16 sectors x (1 - (1 - f)^16) x 32;
    # window: w r/w 160 + the other elig sectors 2.5 x (1 - f)^16 x 32 + neurons 320, over 5 steps
    f = 1 - 0.9**5
    flush_sec = (1550 + 40 + 40 * 32 * (f - 0.5 * 0.9**4) + 2.5 * (1 - (1 - f) ** 16) * 32) / 5
    assert t.sector_bytes == pytest.approx(
        {
            "neuron_state": 484,
            "drive": 80,
            "scratch": 394,
            "out_rows": 578 + 0.6878 * 32,
            "flush": flush_sec,
            "window_pass": (160 + 2.5 * (1 - f) ** 16 * 32 + 320) / 5,
        }
    )
    assert flush_sec == pytest.approx(354.8503, abs=1e-4)


def test_no_plasticity_drops_traces_the_flush_and_the_synapse_pass():
    t = step_traffic(10, 4, 100.0, TINY, mode="off")
    # neurons 10 x (6 x 4 + 2) + 8 = 268; out-row 8 + 4 x (4 + 2 + 8) = 64; window 10 x 32 / 5 = 64
    assert t.bytes == {
        "neuron_state": 268,
        "drive": 80,
        "scratch": 0,
        "out_rows": 64,
        "flush": 0,
        "window_pass": 64,
    }


def test_long_window_adds_eligibility_renormalizations():
    # gamma 0.5: renormalize every floor(ln 1e4 / ln 2) = 13 steps -> 3 dense passes (steps 13, 26, 39) in a
    # 50-step window besides the window end; segments of 13 steps, f = 1 - 0.9^13 = 0.745813:
    # (40 x (4 + 2 x (1 - f) + 3 x 4) + 320) / 50 = 19.606698
    cfg = TINY.replace(plasticity={"gamma": 0.5}, run={"window_steps": 50})
    assert step_traffic(10, 4, 100.0, cfg).bytes["window_pass"] == pytest.approx(19.606698)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="N = 0"):
        step_traffic(0, 4, 1.0)
    with pytest.raises(ValueError, match="mode = 'x'"):
        step_traffic(10, 4, 1.0, mode="x")
