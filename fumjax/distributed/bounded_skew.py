"""FUM's asynchronous mode (seed D.2) across MPI ranks: bounded skew, vector clocks, buffers, sync points.

One rank per part (``partition.split``): each rank advances its part with the jitted ``dynamics.step``,
one step per Python iteration, without a global barrier per step.

* After each step a rank sends one message to every other rank (non-blocking ``isend``, one tag, so MPI's
  per-source FIFO holds): (source, step, vector clock, send time on the synced clock, the global ids of
  the neurons that spiked, piggybacked rate summary at window ends, skew-cap sync request). Messages are
  also the heartbeat that carries the vector clock.
* Vector clocks (Fidge 1988): entry q = steps of rank q known here (own entry = own steps). A message is
  delivered only in causal order (Birman-Schiper-Stephenson: ``vc_m[src] == delivered[src] + 1`` and
  ``vc_m[r] <= delivered[r]`` for every other r); delivery merges its clock.
* Advance rule: a rank at local time t may do step t only if ``t + 1 - min_q vc[q] <= max_skew``
  (default 10): since vc[q] never exceeds q's true time, the true skew never exceeds the cap.
* Delivered spikes wait in a :class:`SpikeBuffer` until the receiver's step reaches their step; spikes of
  steps already done are late and are delivered at the current step with timestamp correction
  (:mod:`fumjax.distributed.latency`): presynaptic trace contribution exp(-L/tau+), pair-STDP with the
  original spike time (using a short history of local post spikes), the eligibility change scaled by
  gamma^L, optionally latency-aware scaling. Their synaptic input lands at the current step (unscaled).
* Rewards: at a window end each rank applies its local intrinsic plasticity, snapshots its eligibility
  and piggybacks (sum r, sum r^2, n) of its rates; when every rank's summary for that window has arrived
  the global self-benefit reward is applied to the snapshot decayed by gamma^(t - t_window)
  (:class:`RewardBuffer`). More than ``max_buffer_cycles`` windows pending pauses the rank (FUM
  pause_snn); the pending count is the processing debt, logged every step.
* Global sync every ``sync_every`` steps (default 1000), at the end, and - if ``sync_on_cap`` - when a
  rank has to wait at the skew cap: it then requests a sync at T = t + max_skew, piggybacked on its next
  message; no rank can pass T before it has delivered that message (it would need vc[requester] > t),
  so all ranks meet at the least requested T. A sync drains all messages up to its step, all-reduces
  the spike counts to a global firing rate, and runs the structural lock round.
* Structural changes: :class:`DistributedLock` - a token held by rank 0, granted in rank order at a
  sync point to each rank that queued changes (``runner.request_structural(fn)``, run as
  ``with lock: fn(runner)``);
  using the lock anywhere else raises.

Per rank the runner records logs (steps with vector clocks, sends, causal deliveries, spike applications,
syncs, lock holds, debt) for tests to check the invariants.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fumjax import dynamics, plasticity
from fumjax.config import FumConfig
from fumjax.distributed import latency as lat
from fumjax.distributed.clock import SyncedClock
from fumjax.distributed.partition import Partition, split, split_state
from fumjax.encoders import poisson_background_current
from fumjax.kernels import resolve_backend
from fumjax.network import Network
from fumjax.state import init_state

__all__ = [
    "vc_merge",
    "vc_leq",
    "vc_compare",
    "causally_deliverable",
    "may_advance",
    "next_sync_step",
    "SpikeBuffer",
    "RewardBuffer",
    "self_benefit_from_var",
    "DistributedLock",
    "SkewConfig",
    "BoundedSkewRunner",
]

TAG_MSG = 9201
TAG_TOKEN = 9202


# ---------------------------------------------------------------------------------------------------------
# Pure logic
# ---------------------------------------------------------------------------------------------------------


def vc_merge(a, b) -> np.ndarray:
    """Element-wise max of two vector clocks."""
    return np.maximum(np.asarray(a, np.int64), np.asarray(b, np.int64))


def vc_leq(a, b) -> bool:
    """a <= b entry-wise (a happened before or equals b)."""
    return bool(np.all(np.asarray(a) <= np.asarray(b)))


def vc_compare(a, b) -> str:
    """'equal', 'before' (a -> b), 'after' (b -> a) or 'concurrent'."""
    le, ge = vc_leq(a, b), vc_leq(b, a)
    if le and ge:
        return "equal"
    if le:
        return "before"
    if ge:
        return "after"
    return "concurrent"


def causally_deliverable(msg_vc, src: int, delivered, self_rank: int) -> bool:
    """BSS rule: the message is the next one from src, and every event it knows of elsewhere is delivered."""
    m = np.asarray(msg_vc)
    d = np.asarray(delivered)
    if m[src] != d[src] + 1:
        return False
    others = np.ones(m.shape[0], bool)
    others[src] = False
    others[self_rank] = False  # own events are always known locally
    return bool(np.all(m[others] <= d[others]))


def may_advance(local_time: int, vc, self_rank: int, max_skew: int) -> bool:
    """May a rank at local time t (t steps done) do step t? Iff t + 1 - min_{q != self} vc[q] <= max_skew."""
    v = np.asarray(vc)
    if v.shape[0] <= 1:
        return True
    others = np.delete(v, self_rank)
    return bool(local_time + 1 - int(others.min()) <= max_skew)


def next_sync_step(last_sync: int, sync_every: int, requests, n_steps: int) -> int:
    """The next global sync: the next multiple of sync_every, the least cap request, or the end."""
    s = (last_sync // sync_every + 1) * sync_every
    if requests:
        s = min(s, min(requests))
    return min(s, n_steps)


class SpikeBuffer:
    """Delivered remote spike events waiting for their step: add(step, ids, src), pop_due(t).

    capacity_steps bounds how far ahead of the local time events may be (FUM max_buffer_cycles); an add
    beyond it is counted in `overflow` (it cannot happen while the skew cap holds) and kept anyway.
    """

    def __init__(self, capacity_steps: int) -> None:
        self.capacity_steps = int(capacity_steps)
        self._by_step: dict[int, list[tuple[int, np.ndarray]]] = {}
        self.n_events = 0
        self.overflow = 0

    def add(self, step: int, ids, src: int, local_time: int) -> None:
        ids = np.asarray(ids, np.int32)
        if step - local_time > self.capacity_steps:
            self.overflow += 1
        self._by_step.setdefault(int(step), []).append((int(src), ids))
        self.n_events += ids.shape[0]

    def pop_due(self, t: int) -> list[tuple[int, int, np.ndarray]]:
        """All (step, src, ids) with step <= t, oldest first."""
        due = sorted(s for s in self._by_step if s <= t)
        out = []
        for s in due:
            for src, ids in self._by_step.pop(s):
                out.append((s, src, ids))
                self.n_events -= ids.shape[0]
        return out

    @property
    def pending_steps(self) -> int:
        return len(self._by_step)


def self_benefit_from_var(var: float, target_var: float) -> float:
    """sie.self_benefit from a (global) rate variance: clip(1 - |var - target| / target, 0, 1)."""
    return float(np.clip(1.0 - abs(var - target_var) / target_var, 0.0, 1.0))


class RewardBuffer:
    """Windows whose reward waits for every rank's rate summary (FUM reward_buffer)."""

    def __init__(self, n_ranks: int) -> None:
        self.n_ranks = n_ranks
        self.pending: dict[int, dict] = {}  # window -> {"t_end", "elig", "parts": {rank: summary}}

    def open(self, window: int, t_end: int, elig_snapshot) -> None:
        entry = self.pending.setdefault(window, {"parts": {}})
        entry["t_end"] = t_end
        entry["elig"] = elig_snapshot

    def contribute(self, window: int, rank: int, summary) -> None:
        self.pending.setdefault(window, {"parts": {}})["parts"][rank] = tuple(summary)

    def ready(self) -> list[int]:
        return sorted(w for w, e in self.pending.items() if "t_end" in e and len(e["parts"]) == self.n_ranks)

    def pop(self, window: int) -> dict:
        return self.pending.pop(window)

    def debt(self, t: int) -> tuple[int, int]:
        """(windows pending, steps since the oldest pending window ended)."""
        ends = [e["t_end"] for e in self.pending.values() if "t_end" in e]
        return len(ends), (t - min(ends)) if ends else 0

    @staticmethod
    def global_variance(summaries) -> float:
        s = np.array(summaries, dtype=np.float64)
        n = s[:, 2].sum()
        mean = s[:, 0].sum() / n
        return float(max(s[:, 1].sum() / n - mean * mean, 0.0))


class DistributedLock:
    """Token lock for structural changes: rank 0 holds the token and grants it at sync points only.

    `with lock:` blocks until this rank holds the token and returns it on exit; it raises outside a lock
    round (a sync point). `run_round(counts)` (collective) serves count[r] holds of rank r, in rank order.
    """

    def __init__(self, comm, clock: SyncedClock | None = None) -> None:
        self.comm = comm
        self.rank = comm.Get_rank()
        self.clock = clock or SyncedClock()
        self._round: int | None = None
        self.held = False
        self.log: list[tuple[int, int, int, int]] = []  # (sync step, rank, t_enter_ns, t_exit_ns)
        self._t_enter = 0

    def __enter__(self):
        if self._round is None:
            raise RuntimeError("structural changes are allowed only under the lock at a global sync point")
        if self.held:
            raise RuntimeError("lock already held (not reentrant)")
        if self.rank != 0:
            tok = np.zeros(1, np.int64)
            self.comm.Recv(tok, source=0, tag=TAG_TOKEN)
        self.held = True
        self._t_enter = self.clock.now()
        return self

    def __exit__(self, *exc) -> None:
        t_exit = self.clock.now()
        self.log.append((self._round, self.rank, self._t_enter, t_exit))
        self.held = False
        if self.rank != 0:
            self.comm.Send(np.ones(1, np.int64), dest=0, tag=TAG_TOKEN)

    def run_round(self, sync_step: int, fns: list[Callable[[], None]]) -> None:
        """Collective at a sync point: every rank's queued fns run, one rank at a time, under the lock."""
        counts = self.comm.allgather(len(fns))
        self._round = sync_step
        try:
            for r, c in enumerate(counts):
                for k in range(c):
                    if self.rank == r:
                        with self:
                            fns[k]()
                    elif self.rank == 0:  # grant the token to r and wait for it back
                        self.comm.Send(np.ones(1, np.int64), dest=r, tag=TAG_TOKEN)
                        self.comm.Recv(np.zeros(1, np.int64), source=r, tag=TAG_TOKEN)
            self.comm.Barrier()
        finally:
            self._round = None


# ---------------------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SkewConfig:
    """Parameters of the bounded-skew mode (FUM defaults)."""

    max_skew: int = 10  # steps a rank may run ahead of the slowest
    sync_every: int = 1000  # steps between global syncs
    sync_on_cap: bool = True  # also sync when a rank has to wait at the cap
    max_buffer_cycles: int = 5  # reward windows that may await their reward before the rank pauses
    late_history: int = 0  # post-spike history kept for late STDP (0 = max_skew + 2); older spikes capped
    decay_buffered: bool = True  # eligibility of buffered updates scaled by gamma^(delay)
    latency_aware: bool = False  # scale late spikes' dw by (1 - std(latency)/max(latency))
    poll_sleep_s: float = 2e-4  # sleep while waiting for messages


class BoundedSkewRunner:
    """One rank's part of a bounded-skew run. Collective construction (all ranks of `comm`)."""

    def __init__(
        self,
        comm,
        net: Network,
        part: Partition,
        *,
        config: FumConfig | None = None,
        skew: SkewConfig | None = None,
        plasticity_mode: bool | str | None = None,
        backend: str = "reference",
        clock: SyncedClock | None = None,
        slow_s: float = 0.0,
    ) -> None:
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        if part.n_parts != self.size:
            raise ValueError(f"partition has {part.n_parts} parts for {self.size} ranks")
        self.cfg = config or FumConfig()
        self.sk = skew or SkewConfig()
        self.mode = dynamics.resolve_mode(plasticity_mode, self.cfg)
        self.backend = resolve_backend(backend)
        self.clock = clock or SyncedClock()
        self.slow_s = float(slow_s)
        self.n_total = net.n_neurons
        self.members = np.asarray(part.members[self.rank], np.int32)
        parts = split(net, part)
        self.net = parts[self.rank]
        self.state = split_state(init_state(net, self.cfg), net, part, parts)[self.rank]
        self.n_local = self.net.n_neurons
        self.lock = DistributedLock(comm, self.clock)
        self._structural: list[Callable[[], None]] = []
        # host copies for late-spike corrections
        self._row_ptr = np.asarray(self.net.row_ptr)
        self._post = np.asarray(self.net.post)
        self._delay = np.asarray(self.net.delay_steps)
        self._sign = np.asarray(self.net.sign, np.float64)
        self._hlen = (self.sk.late_history or self.sk.max_skew + 2) + 1
        self._hist = np.zeros((self._hlen, self.n_local), np.uint8)
        self._inv_pow = plasticity.elig_tables(self.cfg)[1]
        members_j = jnp.asarray(self.members)
        dc, W = self.cfg.drive, self.cfg.run.window_steps
        dtype = self.state.v_mV.dtype
        n_local = self.n_local

        def _drive(seed, first):
            return poisson_background_current(
                seed=seed,
                n_neurons=n_local,
                first_step=first,
                n_steps=W,
                n_inputs=dc.n_inputs,
                rate_hz=dc.rate_hz,
                amp_mV=dc.amp_mV,
                dt_ms=self.cfg.neuron.dt_ms,
                neuron_ids=members_j,
            ).astype(dtype)

        cfg, mode, be = self.cfg, self.mode, self.backend

        def _step(state, netl, i_ext, remote):
            return dynamics.step(
                state, netl, i_ext, cfg, mode, be, exchange=lambda sp: remote.at[members_j].set(sp)
            )

        self._drive = jax.jit(_drive)
        self._jstep = jax.jit(_step)
        self._end_window = lambda s: dynamics._end_window(s, jnp.asarray(0.0, dtype), cfg, mode)
        self._apply_reward = jax.jit(lambda w, e, r: plasticity.apply_reward(w, e, r, cfg))

    # -- public ------------------------------------------------------------------------------------------

    def request_structural(self, fn: Callable[[BoundedSkewRunner], None]) -> None:
        """Queue a structural change; it runs at the next sync point as `with lock: fn(runner)`."""
        self._structural.append(lambda: fn(self))

    def warmup(self) -> None:
        """Compile the step and drive functions (not part of the timed run)."""
        i = self._drive(self.state.seed, self.state.step)
        s, _ = self._jstep(self.state, self.net, i[0], jnp.zeros(self.n_total, jnp.uint8))
        jax.block_until_ready(s)
        jax.block_until_ready(self._end_window(s))

    def run(self, n_steps: int, on_step: Callable[[BoundedSkewRunner, int], None] | None = None) -> dict:
        """Run n_steps steps asynchronously; returns this rank's logs (see module doc)."""
        sk, P, me = self.sk, self.size, self.rank
        from mpi4py import MPI

        self._MPI = MPI
        W = self.cfg.run.window_steps
        self.vc = np.zeros(P, np.int64)
        self.delivered = np.zeros(P, np.int64)
        self.requests: set[int] = set()
        self._causal: list[tuple] = []
        self._reqs: list = []
        self.spikes = SpikeBuffer(sk.max_buffer_cycles * W)
        self.rewards = RewardBuffer(P)
        self.lat = lat.LatencyStats()
        self.kalman = lat.Kalman1D(q=1e-4, r=1.0)
        logs = {
            "steps": [],  # (local_time after, synced ns, vc...)
            "sends": [],  # (step, synced ns, vc...)
            "deliveries": [],  # (local_time, src, msg_step, msg vc..., delivered before...)
            "applied": [],  # (local_time (step computing), src, spike step, n_events)
            "syncs": [],  # (step, reason, global_rate_hz)
            "cap_waits": 0,
            "cap_requests": [],
            "debt": [],  # (local_time, windows pending, steps pending)
            "pauses": 0,
            "events_sent": 0,
            "events_applied": 0,
            "late_events": 0,
            "max_lateness": 0,
            "capped_lateness": 0,
            "rewards": [],  # (window, t_end, t_applied, reward)
        }
        self.logs = logs
        t = 0
        last_sync = 0
        n_spikes_since_sync = 0
        self.total_spikes = 0
        drive, drive_first = None, -1
        cap_request: int | None = None
        while True:
            target = next_sync_step(last_sync, sk.sync_every, self.requests, n_steps)
            if t == target:
                reason = "end" if t == n_steps else ("periodic" if t % sk.sync_every == 0 else "cap")
                rate = self._global_sync(t, n_spikes_since_sync, t - last_sync)
                logs["syncs"].append((t, reason, rate))
                n_spikes_since_sync = 0
                last_sync = t
                self.requests.clear()
                cap_request = None  # a request not yet sent is void after a sync (it would reach others late)
                if t == n_steps:
                    break
                continue
            if t > target:  # cannot happen (see module doc); recorded for the tests
                raise RuntimeError(f"rank {me} at step {t} passed sync target {target}")
            # advance rule (skew cap) and reward debt (pause)
            waited = False
            while True:
                self._poll()
                if self._resolve_rewards(t):
                    pass
                target = next_sync_step(last_sync, sk.sync_every, self.requests, n_steps)
                if t >= target:
                    break
                ok = may_advance(t, self.vc, me, sk.max_skew)
                debt_ok = self.rewards.debt(t)[0] <= sk.max_buffer_cycles
                if ok and debt_ok:
                    break
                if not ok and not waited:
                    logs["cap_waits"] += 1
                    if sk.sync_on_cap and cap_request is None:
                        cap_request = t + sk.max_skew
                        self.requests.add(cap_request)
                        logs["cap_requests"].append((t, cap_request))
                if not debt_ok and not waited:
                    logs["pauses"] += 1
                waited = True
                time.sleep(sk.poll_sleep_s)
            if t >= target:
                continue
            # one step
            if drive is None or drive_first + W <= t:
                drive_first = (t // W) * W
                drive = np.asarray(self._drive(self.state.seed, jnp.asarray(drive_first, jnp.int32)))
            remote, primary, extra = self._compose(t)
            self.state, sp = self._jstep(
                self.state, self.net, jnp.asarray(drive[t - drive_first]), jnp.asarray(remote)
            )
            sp = np.asarray(sp)
            self._hist[t % self._hlen] = sp
            if primary or extra:
                self._late_corrections(t, sp, primary, extra)
            if self.slow_s:
                time.sleep(self.slow_s)
            ids = self.members[np.flatnonzero(sp)]
            n_spikes_since_sync += ids.shape[0]
            self.total_spikes += ids.shape[0]
            t += 1
            self.vc[me] = t
            self.delivered[me] = t
            summary = None
            if t % W == 0:
                self.state = self._end_window(self.state)
                e = np.asarray(self.state.elig, np.float64) if self.mode == "rstdp" else None
                self.rewards.open(t // W, t, e)
                r = np.asarray(self.state.rate_hz, np.float64)
                summary = (float(r.sum()), float((r * r).sum()), float(r.shape[0]))
                self.rewards.contribute(t // W, me, summary)
            now = self.clock.now()
            msg = (me, t - 1, self.vc.copy(), now, ids, (t // W, summary) if summary else None, cap_request)
            cap_request = None
            for q in range(P):
                if q != me:
                    self._reqs.append(self.comm.isend(msg, dest=q, tag=TAG_MSG))
            logs["events_sent"] += ids.shape[0] * (P - 1)
            logs["sends"].append((t - 1, now, *self.vc.tolist()))
            logs["steps"].append((t, now, *self.vc.tolist()))
            d = self.rewards.debt(t)
            logs["debt"].append((t, d[0], d[1]))
            if len(self._reqs) > 64:
                self._reqs = [r for r in self._reqs if not r.Test()]
            if on_step is not None:
                on_step(self, t)
        # flush late events left for after the last step (all from steps < n_steps)
        primary_none, extra_all = {}, []
        for s, src, ids in self.spikes.pop_due(n_steps):
            logs["applied"].append((n_steps, src, s, ids.shape[0]))
            logs["events_applied"] += ids.shape[0]
            for j in ids:
                extra_all.append((int(j), n_steps - 1 - s))
        if extra_all and n_steps > 0:
            self._late_corrections(
                n_steps - 1, self._hist[(n_steps - 1) % self._hlen], primary_none, extra_all
            )
        self._MPI.Request.Waitall(self._reqs)
        self._reqs = []
        logs["latency"] = self.lat.summary()
        logs["kalman_latency_ms"] = self.kalman.estimate
        logs["total_spikes"] = self.total_spikes
        logs["n_local"] = self.n_local
        logs["spike_buffer_overflow"] = self.spikes.overflow
        logs["lock"] = list(self.lock.log)
        return logs

    # -- internals -----------------------------------------------------------------------------------------

    def _poll(self) -> bool:
        MPI, got = self._MPI, False
        st = MPI.Status()
        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_MSG, status=st):
            self._causal.append(self.comm.recv(source=st.Get_source(), tag=TAG_MSG))
            got = True
        progress = True
        while progress and self._causal:
            progress = False
            for k, m in enumerate(self._causal):
                src, vc = m[0], m[2]
                if causally_deliverable(vc, src, self.delivered, self.rank):
                    self._deliver(m)
                    del self._causal[k]
                    progress = True
                    break
        return got

    def _deliver(self, m) -> None:
        src, step, vc, t_send, ids, summary, cap_req = m
        t_local = int(self.vc[self.rank])
        self.logs["deliveries"].append(
            (t_local, src, step, *np.asarray(vc).tolist(), *self.delivered.tolist())
        )
        self.delivered[src] = vc[src]
        self.vc = vc_merge(self.vc, vc)
        self.vc[self.rank] = t_local
        lat_ms = (self.clock.now() - t_send) / 1e6
        self.lat.add(lat_ms)
        self.kalman.update(lat_ms)
        if ids.shape[0]:
            self.spikes.add(step, ids, src, t_local)
        if summary is not None:
            self.rewards.contribute(summary[0], src, summary[1])
        if cap_req is not None:
            self.requests.add(int(cap_req))

    def _resolve_rewards(self, t: int) -> bool:
        done = False
        for w in self.rewards.ready():
            e = self.rewards.pop(w)
            var = RewardBuffer.global_variance(list(e["parts"].values()))
            reward = self.cfg.sie.w_self_benefit * self_benefit_from_var(var, self.cfg.sie.target_rate_var)
            if self.mode == "rstdp":
                dt = t - e["t_end"]
                g = lat.eligibility_decay(self.cfg.plasticity.gamma, dt) if self.sk.decay_buffered else 1.0
                el = jnp.asarray(e["elig"] * g, self.state.elig.dtype)
                rr = jnp.asarray(reward, self.state.v_mV.dtype)
                self.state = self.state.replace(w=self._apply_reward(self.state.w, el, rr))
            self.logs["rewards"].append((w, e["t_end"], t, reward))
            done = True
        return done

    def _compose(self, t: int):
        """Remote spike vector (N,) for step t; primary {j: lateness} marked in it; extra [(j, lateness)]."""
        remote = np.zeros(self.n_total, np.uint8)
        primary: dict[int, int] = {}
        extra: list[tuple[int, int]] = []
        for s, src, ids in self.spikes.pop_due(t):  # oldest first: later ones replace the primary
            self.logs["applied"].append((t, src, s, ids.shape[0]))
            self.logs["events_applied"] += ids.shape[0]
            L = t - s
            for j in ids.tolist():
                if j in primary:
                    extra.append((j, primary[j]))
                primary[j] = L
            remote[ids] = 1
        late = {j: L for j, L in primary.items() if L > 0}
        n_late = len(late) + sum(1 for _, L in extra if L > 0)
        self.logs["late_events"] += n_late
        if primary:
            self.logs["max_lateness"] = max(self.logs["max_lateness"], max(primary.values()))
        return remote, late, [(j, L) for j, L in extra]

    def _late_corrections(self, t: int, sp, primary: dict, extra: list) -> None:
        """Timestamp correction of late events after step t (see module doc). primary: in the step's
        spike vector (the step counted them as on time); extra: not seen by the step at all."""
        cfg, st = self.cfg, self.state
        tp, tm, dt = cfg.stdp.tau_plus_ms, cfg.stdp.tau_minus_ms, cfg.neuron.dt_ms
        x = np.array(st.x_pre, np.float64)
        do_stdp = self.mode != "off"
        if do_stdp:
            y_now = np.asarray(st.y_post, np.float64) - sp.astype(np.float64)
            w = np.array(st.w, np.float64)
            el = np.array(st.elig, np.float64)
            corr = np.zeros_like(w)
            scale = (
                lat.latency_aware_scale(self.lat.window_std, self.lat.max) if self.sk.latency_aware else 1.0
            )
        ring = np.array(st.ring_mV, np.float64)
        hmax = self._hlen - 1
        gamma = cfg.plasticity.gamma
        for is_extra, items in ((False, primary.items()), (True, extra)):
            for j, L in items:
                if L > hmax:
                    self.logs["capped_lateness"] += 1
                    L = hmax
                a, b = int(self._row_ptr[j]), int(self._row_ptr[j + 1])
                x[j] += float(lat.trace_contribution(L, tp, dt)) - (0.0 if is_extra else 1.0)
                if is_extra and b > a:  # propagate the spike the step did not see
                    d = ring.shape[0]
                    w_ab = np.asarray(st.w[a:b], np.float64)
                    ring[(t + self._delay[a:b]) % d, self._post[a:b]] += cfg.connectivity.g_syn_mV * w_ab
                if not do_stdp or b == a:
                    continue
                post = self._post[a:b]
                rows = [(t - L + k) % self._hlen for k in range(L + 1)]
                true = (
                    lat.late_stdp_dw(
                        L,
                        y_now[post],
                        self._hist[rows][:, post],
                        a_plus=cfg.stdp.a_plus,
                        a_minus=cfg.stdp.a_minus,
                        tau_plus_ms=tp,
                        tau_minus_ms=tm,
                        dt_ms=dt,
                    )
                    * self._sign[j]
                    * scale
                )
                applied = (
                    np.zeros_like(true) if is_extra else self._sign[j] * (-cfg.stdp.a_minus * y_now[post])
                )
                if self.mode == "rstdp":
                    g = float(lat.eligibility_decay(gamma, L)) if self.sk.decay_buffered else 1.0
                    corr[a:b] += g * true - applied
                else:
                    corr[a:b] += true - applied
        changes = {"x_pre": jnp.asarray(x, st.x_pre.dtype), "ring_mV": jnp.asarray(ring, st.ring_mV.dtype)}
        if do_stdp:
            if self.mode == "rstdp":
                k = int(st.step) - int(st.elig_t0)
                el += corr * float(self._inv_pow[min(k, self._inv_pow.shape[0] - 1)])
                changes["elig"] = jnp.asarray(el, st.elig.dtype)
            else:
                c = cfg.connectivity.w_clip
                changes["w"] = jnp.asarray(np.clip(w + corr, -c, c), st.w.dtype)
        self.state = st.replace(**changes)

    def _global_sync(self, S: int, n_spikes: int, n_steps: int) -> float:
        """Drain every message of steps < S, all-reduce the spike count, run the lock round."""
        P = self.size
        while any(self.delivered[q] < S for q in range(P) if q != self.rank):
            if not self._poll():
                time.sleep(self.sk.poll_sleep_s)
        self._resolve_rewards(S)
        tot = self.comm.allreduce(np.array([n_spikes, self.n_local * n_steps], np.float64))
        rate = float(tot[0] / max(tot[1], 1.0) * 1000.0 / self.cfg.neuron.dt_ms)
        fns, self._structural = self._structural, []
        self.lock.run_round(S, fns)
        return rate
