"""Point-to-point all-gather over MPI with a deadline: a rank that dies or hangs is named, then the job stops.

Every exchange sends one message to each peer (`Isend`) and polls for one message from each peer
(`Improbe`; a `Channel` tests receives it posted in advance) until all arrived or the deadline passed.
Since each peer's message is tracked separately, the ranks that sent nothing are known: the detecting rank
prints them (with when each was last heard from) to stderr and calls `MPI.Comm.Abort`, so the job exits
non-zero instead of hanging. A peer that exited is noticed the same way (or sooner by mpirun itself, which
also names it).
"""

from __future__ import annotations

import atexit
import os
import pickle
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

__all__ = ["Exchanger", "Channel", "ABORT_CODE", "sync_wait"]

ABORT_CODE = 3  # exit status of a job stopped because a rank died or hung
_TAG_BYTES, _TAG_OBJ, _TAG_CHANNEL0 = 11, 12, 100


class Exchanger:
    """All-gathers of byte payloads and Python objects among the ranks of `comm`, each under a deadline."""

    def __init__(self, comm: Any, timeout_s: float = 60.0, spin_s: float | None = None) -> None:
        """comm: an mpi4py communicator (duplicated, so no other traffic matches these messages). spin_s: how
        long a wait busy-polls before it yields the core (default: 2 ms when this node's ranks fit its cores,
        50 us when they outnumber them and a waiting rank should give its core to one that computes)."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s = {timeout_s}: must be > 0")
        if spin_s is None:
            spin_s = 2e-3 if _local_ranks(comm) <= (os.cpu_count() or 1) else 5e-5
        if spin_s < 0:
            raise ValueError(f"spin_s = {spin_s}: must be >= 0")
        self.spin_s = float(spin_s)
        self.comm = comm.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.peers = [q for q in range(self.size) if q != self.rank]
        self.timeout_s = float(timeout_s)
        self.last_seen = {q: (time.monotonic(), "start") for q in self.peers}
        self.n_channels = 0

    def channel(self, max_bytes: int) -> Channel:
        """A Channel for all-gathers of at most max_bytes per rank (collective: every rank opens the same
        channels in the same order)."""
        self.n_channels += 1
        return Channel(self, max_bytes, _TAG_CHANNEL0 + self.n_channels)

    def allgather_bytes(self, payload: np.ndarray, what: str, timeout_s: float | None = None) -> list:
        """Every rank's payload (1-D contiguous array, sent as bytes): a list of uint8 arrays by rank."""
        from mpi4py import MPI

        data = np.ascontiguousarray(payload).view(np.uint8).reshape(-1)
        sends = [self.comm.Isend([data, MPI.BYTE], dest=q, tag=_TAG_BYTES) for q in self.peers]
        out: list = [None] * self.size
        out[self.rank] = data
        status = MPI.Status()

        def probe(q: int) -> bool:
            msg = self.comm.Improbe(q, _TAG_BYTES, status)
            if msg is None:
                return False
            buf = np.empty(status.Get_count(MPI.BYTE), np.uint8)
            msg.Recv([buf, MPI.BYTE])
            out[q] = buf
            return True

        self._poll(self.peers, probe, what, timeout_s)
        self._complete(sends, self.peers, what, timeout_s)
        return out

    def allgather_obj(self, obj: Any, what: str, timeout_s: float | None = None) -> list:
        """Every rank's picklable `obj`, as a list by rank."""
        out = self.gather_obj(obj, what, root=None, timeout_s=timeout_s)
        assert out is not None
        return out

    def gather_obj(self, obj: Any, what: str, root: int | None = 0, timeout_s: float | None = None):
        """Every rank's `obj` as a list on `root` (None elsewhere); root None: on every rank."""
        from mpi4py import MPI

        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        dests = self.peers if root is None else ([] if self.rank == root else [root])
        buf = np.frombuffer(data, np.uint8)
        sends = [self.comm.Isend([buf, MPI.BYTE], dest=q, tag=_TAG_OBJ) for q in dests]
        out: list = [None] * self.size
        out[self.rank] = obj
        sources = self.peers if root is None or self.rank == root else []
        status = MPI.Status()

        def probe(q: int) -> bool:
            msg = self.comm.Improbe(q, _TAG_OBJ, status)
            if msg is None:
                return False
            raw = np.empty(status.Get_count(MPI.BYTE), np.uint8)
            msg.Recv([raw, MPI.BYTE])
            out[q] = pickle.loads(raw.tobytes())
            return True

        self._poll(sources, probe, what, timeout_s)
        self._complete(sends, dests, what, timeout_s)
        return out if root is None or self.rank == root else None

    def barrier(self, what: str, timeout_s: float | None = None) -> None:
        """Wait until every rank got here (or name the ones that did not within the deadline)."""
        self.allgather_obj(None, what, timeout_s)

    def fail(self, missing: Sequence[int], what: str, timeout_s: float) -> NoReturn:
        """Report the ranks in `missing` as dead or hung on stderr and abort the whole job."""
        now = time.monotonic()
        seen = ", ".join(
            f"rank {q} last heard {now - self.last_seen[q][0]:.1f} s ago ({self.last_seen[q][1]})"
            for q in missing
        )
        names = ", ".join(f"rank {q}" for q in missing)
        sys.stderr.write(
            f"fumjax.distributed: rank {self.rank}: {names} sent nothing for {what} within {timeout_s:g} s: "
            f"dead or hung ({seen}); aborting the job\n"
        )
        sys.stderr.flush()
        self.comm.Abort(ABORT_CODE)
        raise SystemExit(ABORT_CODE)  # pragma: no cover - Abort does not return

    # ---- polling ------------------------------------------------------------------------------------

    def _poll(self, sources: Sequence[int], probe, what: str, timeout_s: float | None) -> None:
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        pending = list(sources)
        start = time.monotonic()
        while pending:
            arrived = [q for q in pending if probe(q)]
            if arrived:
                now = time.monotonic()
                for q in arrived:
                    self.last_seen[q] = (now, what)
                pending = [q for q in pending if q not in arrived]
                continue
            waited = time.monotonic() - start
            if waited > timeout:
                self.fail(pending, what, timeout)
            _back_off(waited, self.spin_s)

    def _complete(self, sends: list, dests: Sequence[int], what: str, timeout_s: float | None) -> None:
        """Poll the sends to completion (a peer that stopped receiving is named like a silent one)."""
        self._wait_all(sends, dests, what + " (send not taken)", timeout_s)

    def _wait_all(
        self,
        reqs: list,
        ranks: Sequence[int],
        what: str,
        timeout_s: float | None,
        statuses: list | None = None,
    ) -> None:
        """Poll requests reqs (one per rank in ranks) to completion under the deadline; past it, name the
        ranks whose request is still open and abort the job."""
        from mpi4py import MPI

        if not reqs or MPI.Request.Testall(reqs, statuses):
            return
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        start = time.monotonic()
        while not MPI.Request.Testall(reqs, statuses):
            waited = time.monotonic() - start
            if waited > timeout:  # Testall modified nothing: test each to name the open ones
                stuck = [q for q, r in zip(ranks, reqs, strict=True) if not r.Test()]
                self.fail(stuck or list(ranks), what, timeout)
            _back_off(waited, self.spin_s)


class Channel:
    """Repeated all-gathers of small byte payloads (<= max_bytes per rank) over receives posted in advance.

    Each peer's receive of the next exchange is already posted (persistent requests, two sets used in turn),
    so an exchange is the sends plus one `Testall` per poll: no probing, no per-message allocation, no
    Python loop over peers while waiting. Deadlines and naming of silent ranks as in `Exchanger`.
    """

    def __init__(self, ex: Exchanger, max_bytes: int, tag: int) -> None:
        from mpi4py import MPI

        if max_bytes < 1:
            raise ValueError(f"max_bytes = {max_bytes}: must be >= 1")
        self.ex, self.max_bytes, self.tag = ex, int(max_bytes), tag
        self.bufs = [[np.empty(self.max_bytes, np.uint8) for _ in ex.peers] for _ in range(2)]
        self.recvs = [
            [ex.comm.Recv_init([b, MPI.BYTE], source=q, tag=tag) for b, q in zip(bufs, ex.peers, strict=True)]
            for bufs in self.bufs
        ]
        self.statuses = [MPI.Status() for _ in ex.peers]
        self.turn = 0
        self.open = True
        if ex.peers:
            MPI.Prequest.Startall(self.recvs[0])
        atexit.register(self.close)  # before mpi4py finalizes MPI (atexit runs in reverse order)

    def allgather(self, payload: np.ndarray, what: str, timeout_s: float | None = None) -> list:
        """Every rank's payload (1-D contiguous, <= max_bytes): uint8 arrays by rank, valid until the next
        call returns (they view the receive buffers)."""
        from mpi4py import MPI

        if not self.open:
            raise RuntimeError("the channel is closed")
        ex = self.ex
        data = np.ascontiguousarray(payload).view(np.uint8).reshape(-1)
        if data.shape[0] > self.max_bytes:
            raise ValueError(
                f"{what}: a payload of {data.shape[0]} bytes exceeds the channel's {self.max_bytes}"
            )
        sends = [ex.comm.Isend([data, MPI.BYTE], dest=q, tag=self.tag) for q in ex.peers]
        recvs, statuses = self.recvs[self.turn], self.statuses
        ex._wait_all(recvs, ex.peers, what, timeout_s, statuses)
        out: list = [None] * ex.size
        out[ex.rank] = data
        now = time.monotonic()
        for i, q in enumerate(ex.peers):
            out[q] = self.bufs[self.turn][i][: statuses[i].Get_count(MPI.BYTE)]
            ex.last_seen[q] = (now, what)
        self.turn ^= 1
        if recvs:
            MPI.Prequest.Startall(self.recvs[self.turn])
        ex._complete(sends, ex.peers, what, timeout_s)
        return out

    def close(self) -> None:
        """Cancel the posted receives and free the requests (idempotent; also run at exit)."""
        if not self.open:
            return
        self.open = False
        from mpi4py import MPI

        if MPI.Is_finalized():
            return
        for reqs in self.recvs:
            for r in reqs:
                if r.Test():  # completed or inactive
                    r.Free()
                else:
                    r.Cancel()
                    r.Wait()
                    r.Free()


def sync_wait(enter_s: np.ndarray, exit_s: np.ndarray) -> dict[str, np.ndarray | float]:
    """Where the waiting at per-step all-gathers comes from, from every rank's exchange times.

    enter_s, exit_s: (P, M) seconds (each rank's own perf_counter) at which rank r entered and left its
    exchange m; every rank runs the same M exchanges, each a synchronization of all ranks. The busy time
    busy[r, m] = enter[r, m] - exit[r, m - 1] (m >= 1) is the rank's work between two exchanges. With
    exchanges that cost nothing, rank r would still wait max_q busy[q, m] - busy[r, m] per interval: the
    mean of that is `imbalance_s[r]` (slowest rank's mean busy minus r's) plus `jitter_s` (the mean of the
    per-interval maximum above the slowest mean: which rank is last changes from interval to interval).
    Returns busy_s (P,) mean busy, exchange_s (P,) mean time inside an exchange, imbalance_s (P,),
    jitter_s (float), all per interval in seconds.
    """
    enter_s, exit_s = np.asarray(enter_s, np.float64), np.asarray(exit_s, np.float64)
    if enter_s.shape != exit_s.shape or enter_s.ndim != 2 or enter_s.shape[1] < 2:
        raise ValueError(f"enter_s {enter_s.shape} and exit_s {exit_s.shape}: need the same (P, M >= 2)")
    busy = enter_s[:, 1:] - exit_s[:, :-1]
    mean_busy = busy.mean(axis=1)
    return {
        "busy_s": mean_busy,
        "exchange_s": (exit_s - enter_s)[:, 1:].mean(axis=1),
        "imbalance_s": mean_busy.max() - mean_busy,
        "jitter_s": float(busy.max(axis=0).mean() - mean_busy.max()),
    }


def _back_off(waited_s: float, spin_s: float) -> None:
    """Between polls: spin for spin_s (a message from a rank on another core is usually that close), then
    yield the core for 150 us, then sleep (ranks may outnumber cores: give the core to those computing)."""
    if waited_s < spin_s:
        return
    if waited_s < spin_s + 1.5e-4:
        os.sched_yield()
    else:
        time.sleep(min(1e-3, 0.05 * waited_s))


def _local_ranks(comm: Any) -> int:
    """Ranks of comm on this node, from the launcher's environment (Open MPI, MPICH/Hydra, PMIx), else all."""
    for key in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return comm.Get_size()
