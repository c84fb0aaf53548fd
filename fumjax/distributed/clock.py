"""Synced wall clocks across MPI ranks: a PTP-style two-way exchange with rank 0 (the reference clock).

One exchange between a rank and rank 0: the rank sends at t1 (its clock), rank 0 receives at t2 and
replies at t3 (rank 0's clock), the rank receives at t4 (its clock). With a symmetric path,

    offset = ((t2 - t1) + (t3 - t4)) / 2      (rank 0's clock minus this rank's clock)
    delay  = ((t4 - t1) - (t3 - t2)) / 2      (one-way path delay)

Asymmetric or jittered paths bias the offset by half the asymmetry; repeating the exchange n times and
keeping the sample of least delay (the least-queued one) is PTP's usual filter. A rank's synced time is
``local_clock() + offset`` on rank 0's timeline.

Where the host clock is itself disciplined (linuxptp ptp4l/phc2sys, or chrony/ntpd with the kernel's
adjtimex status in sync) and the ranks share that time base, ``trust_host_ptp`` uses the host clock
directly (offset 0). Detection reads what is readable (process list, adjtimex); where nothing can be
read, the host clock is trusted only when the setting says ``trust_host_ptp=True`` explicitly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "offset_delay",
    "min_delay_filter",
    "ClockSample",
    "SyncedClock",
    "host_clock_sync_state",
    "exchange_with_root",
    "sync_clocks",
]

_TAG_PING, _TAG_PONG, _TAG_GO = 9101, 9102, 9103


def offset_delay(t1: float, t2: float, t3: float, t4: float) -> tuple[float, float]:
    """(offset, delay) of one two-way exchange; offset = reference clock - local clock."""
    offset = ((t2 - t1) + (t3 - t4)) / 2
    delay = ((t4 - t1) - (t3 - t2)) / 2
    return offset, delay


@dataclasses.dataclass(frozen=True)
class ClockSample:
    t1: int
    t2: int
    t3: int
    t4: int

    @property
    def offset(self) -> float:
        return offset_delay(self.t1, self.t2, self.t3, self.t4)[0]

    @property
    def delay(self) -> float:
        return offset_delay(self.t1, self.t2, self.t3, self.t4)[1]


def min_delay_filter(samples: Sequence[tuple[float, float, float, float]]) -> tuple[float, float, int]:
    """Keep the exchange of least delay: returns (offset, delay, index) of that sample."""
    if len(samples) == 0:
        raise ValueError("min_delay_filter needs at least one (t1, t2, t3, t4) sample")
    od = np.array([offset_delay(*map(float, s)) for s in samples])
    i = int(np.argmin(od[:, 1]))
    return float(od[i, 0]), float(od[i, 1]), i


def _clock_fn(name: str) -> Callable[[], int]:
    if name == "perf_counter":
        return time.perf_counter_ns
    if name == "time":
        return time.time_ns
    if name == "monotonic":
        return time.monotonic_ns
    raise ValueError(f"clock = {name!r}: must be 'time', 'perf_counter' or 'monotonic'")


def host_clock_sync_state() -> dict:
    """What can be read about the host clock's discipline: {'ptp': bool, 'synced': bool|None, 'source': str}.

    ptp: a linuxptp process (ptp4l / phc2sys) runs. synced: the kernel's adjtimex says the clock is in
    sync (STA_UNSYNC clear, TIME_OK) - set by chrony/ntpd/phc2sys - or None if adjtimex is unreadable.
    """
    procs = set()
    try:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        procs.add(f.read().strip())
                except OSError:
                    continue
    except OSError:
        pass
    ptp = bool(procs & {"ptp4l", "phc2sys", "ts2phc"})
    daemon = next((d for d in ("phc2sys", "ptp4l", "chronyd", "ntpd", "systemd-timesyn") if d in procs), "")
    synced = None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

        class Timex(ctypes.Structure):  # struct timex (Linux): only modes and status matter here
            _fields_ = [
                ("modes", ctypes.c_uint),
                ("pad", ctypes.c_long * 3),
                ("status", ctypes.c_int),
                ("rest", ctypes.c_long * 32),
            ]

        tx = Timex()
        tx.modes = 0  # read only
        state = libc.adjtimex(ctypes.byref(tx))
        if state >= 0:
            sta_unsync = 0x0040
            synced = state != 5 and not (tx.status & sta_unsync)  # 5 = TIME_ERROR
    except (OSError, AttributeError):
        synced = None
    return {"ptp": ptp, "synced": synced, "source": daemon}


def _idle_wait(req, sleep_s: float = 5e-4) -> None:
    """Wait on a request by sleeping between tests, so idle ranks leave the cores to the measuring pair."""
    while not req.Test():
        time.sleep(sleep_s)


def exchange_with_root(comm, n: int = 32, clock: str = "time") -> list[ClockSample]:
    """Collective: every rank != 0 does n two-way exchanges with rank 0 (ranks served in turn).

    Ranks not being served wait asleep (rank 0 tells each rank when its turn starts), so on an
    oversubscribed host the pair that measures is not starved by busy-polling ranks. Returns this rank's
    samples (empty on rank 0).
    """
    now = _clock_fn(clock)
    rank, size = comm.Get_rank(), comm.Get_size()
    samples: list[ClockSample] = []
    buf = np.zeros(2, np.int64)
    go = np.zeros(1, np.int64)
    for r in range(1, size):
        if rank == 0:
            comm.Send(go, dest=r, tag=_TAG_GO)
            for _ in range(n):
                comm.Recv(buf[:1], source=r, tag=_TAG_PING)
                t2 = now()
                buf[0] = t2
                buf[1] = now()  # t3: as late as possible before the reply leaves
                comm.Send(buf, dest=r, tag=_TAG_PONG)
        elif rank == r:
            _idle_wait(comm.Irecv(go, source=0, tag=_TAG_GO))
            for _ in range(n):
                t1 = now()
                buf[0] = t1
                comm.Send(buf[:1], dest=0, tag=_TAG_PING)
                comm.Recv(buf, source=0, tag=_TAG_PONG)
                t4 = now()
                samples.append(ClockSample(t1, int(buf[0]), int(buf[1]), t4))
    _idle_wait(comm.Ibarrier())
    return samples


class SyncedClock:
    """A wall clock on rank 0's timeline: ``now()`` = local clock + offset (ns)."""

    def __init__(
        self, offset_ns: float = 0.0, delay_ns: float = 0.0, clock: str = "time", *, source: str = "exchange"
    ) -> None:
        self._now = _clock_fn(clock)
        self.clock = clock
        self.offset_ns = float(offset_ns)
        self.delay_ns = float(delay_ns)
        self.source = source

    def now(self) -> int:
        """Nanoseconds on rank 0's timeline."""
        return int(self._now() + self.offset_ns)

    def now_ms(self) -> float:
        return self.now() / 1e6

    def to_synced(self, local_ns: int) -> int:
        return int(local_ns + self.offset_ns)

    @classmethod
    def from_samples(cls, samples: Sequence[ClockSample], clock: str = "time") -> SyncedClock:
        if not samples:
            return cls(0.0, 0.0, clock, source="reference")
        off, dl, _ = min_delay_filter([(s.t1, s.t2, s.t3, s.t4) for s in samples])
        return cls(off, dl, clock)


def sync_clocks(comm, n: int = 32, *, clock: str = "time", trust_host_ptp: bool | None = None) -> SyncedClock:
    """Collective: a SyncedClock for this rank.

    trust_host_ptp: True - use the host clock directly (offset 0); False - always measure; None (default)
    - use the host clock directly only when every rank sees a linuxptp-disciplined clock that adjtimex
    reports in sync (all ranks must agree, since the exchange is collective). perf_counter/monotonic
    clocks are per-host counters, so they are always measured.
    """
    if trust_host_ptp is None:
        st = host_clock_sync_state()
        ok = bool(st["ptp"] and st["synced"]) and clock == "time"
        trust = all(comm.allgather(ok))
    else:
        trust = bool(trust_host_ptp) and clock == "time"
    if trust:
        return SyncedClock(0.0, 0.0, clock, source="host_ptp")
    samples = exchange_with_root(comm, n, clock)
    c = SyncedClock.from_samples(samples, clock)
    if comm.Get_rank() == 0:
        c.source = "reference"
    return c
