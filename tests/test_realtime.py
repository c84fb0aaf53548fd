"""Real-time paced mode (issue 5): pacing on a fake clock worked out by hand, and one short real run."""

import json
import time

import numpy as np
import pytest

import fumjax
from fumjax.cli import main
from fumjax.config import FumConfig
from fumjax.control.load import LoadReading
from fumjax.control.realtime import GpuSampler, pace, run_paced
from fumjax.dynamics import run_driven


class FakeClock:
    """Time moves only when a chunk works (its busy seconds) or when sleep() is called (+ overshoot)."""

    def __init__(self, busy_s, overshoot_s=0.0):
        self.t, self.busy, self.overshoot, self.sleeps = 0.0, list(busy_s), overshoot_s, []

    def clock(self):
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s + self.overshoot

    def chunk(self):
        self.t += self.busy.pop(0)


def test_pace_fixed_schedule_by_hand():
    # chunk 50 ms, busy 10, 60, 45, 30, 120, 5 ms. Ends and model end times (ms):
    #   k0 ends 10 (due 50): lag -40, sleeps 40 -> 50;  k1 50..110 (due 100): +10, overrun, no sleep;
    #   k2 110..155 (due 150): +5 overrun (cannot catch up); k3 155..185 (due 200): -15, sleeps 15 -> 200;
    #   k4 200..320 (due 250): +70; k5 320..325 (due 300): +25.  Wall 325, busy 270.
    fake = FakeClock([0.010, 0.060, 0.045, 0.030, 0.120, 0.005])
    p = pace(fake.chunk, 6, 50.0, clock=fake.clock, sleep=fake.sleep)
    assert p.chunks == 6
    assert p.busy_ms == pytest.approx((10, 60, 45, 30, 120, 5), abs=1e-9)
    assert p.lag_ms == pytest.approx((-40, 10, 5, -15, 70, 25), abs=1e-9)
    assert fake.sleeps == pytest.approx([0.040, 0.015], abs=1e-12)
    assert p.wall_ms == pytest.approx(325.0, abs=1e-9)
    assert p.busy_fraction == pytest.approx(270 / 325, abs=1e-12)
    assert p.max_lag_ms == pytest.approx(70.0, abs=1e-9) and p.overruns == 4


def test_pace_sleep_overshoot_counts_against_the_next_chunk():
    # busy 10 ms each, sleep overshoots by 1 ms: k0 10 (due 50) sleeps 40 -> 51; k1 51..61 (due 100) -39,
    # sleeps 39 -> 101; k2 101..111 (due 150) -39, sleeps 39 -> 151. Wall 151, busy 30, never late.
    fake = FakeClock([0.010] * 3, overshoot_s=0.001)
    p = pace(fake.chunk, 3, 50.0, clock=fake.clock, sleep=fake.sleep)
    assert p.lag_ms == pytest.approx((-40, -39, -39), abs=1e-9)
    assert p.wall_ms == pytest.approx(151.0, abs=1e-9)
    assert p.busy_fraction == pytest.approx(30 / 151, abs=1e-12)
    assert p.max_lag_ms == 0.0 and p.overruns == 0


def test_pace_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_chunks = 0"):
        pace(lambda: None, 0, 50.0)
    with pytest.raises(ValueError, match="chunk_ms = 0"):
        pace(lambda: None, 1, 0.0)


def wait_for(cond, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_gpu_sampler_with_and_without_nvml():
    sampler = GpuSampler(0.001, read=lambda: LoadReading(True, "nvml", (40.0, 41.0), (7.0, 30.0)), smi=None)
    with sampler:
        wait_for(lambda: len(sampler.samples) >= 3)
    s = sampler.summary()
    assert s["source"] == "nvml" and s["samples"] >= 3 and s["mean_pct"] == 30.0 and s["max_pct"] == 30.0
    none = GpuSampler(0.001, read=lambda: LoadReading(False, "no driver"), smi=None)
    with none:
        pass
    assert none.summary() == {
        "source": None,
        "reason": "no driver",
        "samples": 0,
        "mean_pct": None,
        "max_pct": None,
    }


def test_gpu_sampler_reads_nvidia_smi_without_pynvml(tmp_path, monkeypatch):
    # A stand-in nvidia-smi: records its arguments, prints a header-free CSV value per period until killed.
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/args\nwhile true; do echo 25; echo 35; sleep 0.01; done\n'
    )
    smi.chmod(0o755)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    sampler = GpuSampler(0.01, read=lambda: LoadReading(False, "pynvml not installed"), smi=str(smi))
    with sampler:
        wait_for(lambda: len(sampler.samples) >= 4)
    s = sampler.summary()
    assert s["source"] == "nvidia-smi" and s["reason"] == "nvidia-smi (pynvml: pynvml not installed)"
    assert s["max_pct"] == 35.0 and set(sampler.samples) == {25.0, 35.0}
    args = (tmp_path / "args").read_text().split()
    assert args == ["--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "--id=3", "--loop-ms=10"]


def test_paced_run_equals_unpaced_run():
    # 2 warm-up + 3 paced windows must leave the state run_driven leaves after 5 windows; the paced spike
    # count is that of windows 3..5.
    cfg = FumConfig().replace(neuron={"n_neurons": 200}, run={"window_steps": 20})
    net = fumjax.build_network(cfg)
    ref, counts, _ = run_driven(fumjax.init_state(net, cfg), net, 5, config=cfg)
    state, run = run_paced(fumjax.init_state(net, cfg), net, 3, config=cfg, warmup_chunks=2)
    np.testing.assert_array_equal(np.asarray(state.w), np.asarray(ref.w))
    np.testing.assert_array_equal(np.asarray(state.v_mV), np.asarray(ref.v_mV))
    assert int(state.step) == 100
    assert run.spike_count == int(np.asarray(counts)[2:].sum()) > 0
    assert run.pacing.chunks == 3 and run.pacing.chunk_ms == 20.0 and len(run.warmup_ms) == 2
    assert run.pacing.wall_ms >= 60.0  # paced: never faster than the model time
    assert np.asarray(net.w0).shape == (net.n_synapses,)  # the network's arrays were not donated away


def test_paced_run_rejects_a_bad_state_before_running():
    cfg = FumConfig().replace(neuron={"n_neurons": 50})
    net = fumjax.build_network(cfg)
    state = fumjax.init_state(net, cfg)
    bad = state.replace(v_mV=state.v_mV.at[3].set(np.nan))
    with pytest.raises(ValueError, match="state.v_mV contains NaN or Inf"):
        run_paced(bad, net, 1, config=cfg)
    with pytest.raises(ValueError, match=r"state.tau_ms has shape \(10,\)"):
        run_paced(state.replace(tau_ms=state.tau_ms[:10]), net, 1, config=cfg)
    with pytest.raises(ValueError, match="state.elig contains NaN or Inf"):
        run_paced(state.replace(elig=state.elig.at[7].set(np.inf)), net, 1, config=cfg)
    with pytest.raises(ValueError, match="n_chunks = 0"):
        run_paced(state, net, 0, config=cfg)


def test_cli_realtime(capsys):
    argv = ["simulate", "--neurons", "100", "--steps", "100", "--realtime", "--json"]
    assert main(argv) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["realtime"] and s["paced_chunks"] == 2 and s["warmup_chunks"] == 2 and s["model_ms"] == 100.0
    assert s["wall_ms"] >= 100.0 and 0 < s["busy_fraction"] < 1 and s["finite"]
    assert main(["simulate", "--neurons", "100", "--steps", "120", "--realtime"]) == 2
    assert (
        "--steps = 120 with --realtime: must be a multiple of run.window_steps = 50"
        in capsys.readouterr().err
    )


def test_scale_command_realtime(capsys):
    argv = ["scale", "--neurons", "400", "--k", "20", "--seconds", "0.1", "--drive-hz", "15", "--realtime"]
    assert main(argv) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["synapses"] == 400 * 20 and s["paced_chunks"] == 2 and s["model_ms"] == 100.0
    assert s["wall_ms"] >= 100.0 and s["finite"] and s["drive_hz"] == 15.0
