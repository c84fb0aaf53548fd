"""Real-time paced runs (issue 5): 1 ms of model time per ms of wall clock, and how busy the device was.

The run advances in chunks of whole windows (`run_driven` under jit, the state donated). After each chunk it
blocks until the device is done, records that busy time, then sleeps until the wall clock reaches the chunk's
model end time on a fixed schedule (start + k * chunk). A chunk that ends after its model end time is an
overrun; its lag is how far past that time it ended; the next chunk then starts at once and the schedule is
not moved, so a run that is too slow accumulates lag instead of hiding it. The first chunks compile: they run
unpaced before the schedule starts and are left out of every figure. Busy time is measured on the host (from
dispatch to the results being ready), so it is an upper bound on device busy time; where NVML is present its
GPU utilization, sampled during the paced chunks, is a second opinion (it counts a sample period as busy when
any kernel ran in it, so it reads high for short kernels).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fumjax.config import FumConfig
from fumjax.control.load import read_gpu_load
from fumjax.dynamics import check_state, resolve_mode, run_driven
from fumjax.kernels import resolve_backend
from fumjax.state import State

__all__ = [
    "Pacing",
    "PacedRun",
    "pace",
    "run_paced",
    "GpuSampler",
    "add_realtime_argument",
    "print_paced",
]

WARMUP_CHUNKS = 2


@dataclasses.dataclass(frozen=True)
class Pacing:
    """Figures of the paced chunks (warm-up excluded); times in ms.

    busy_ms[k]: chunk k's time from its start to its results being ready. lag_ms[k]: its end minus its model
    end time (start + (k+1) * chunk_ms); negative = early. wall_ms: start of the first chunk to the end of the
    run (the last sleep included)."""

    chunk_ms: float
    busy_ms: tuple[float, ...]
    lag_ms: tuple[float, ...]
    wall_ms: float

    @property
    def chunks(self) -> int:
        return len(self.busy_ms)

    @property
    def busy_fraction(self) -> float:
        """Sum of busy time over wall time."""
        return sum(self.busy_ms) / self.wall_ms if self.wall_ms > 0 else float("nan")

    @property
    def max_lag_ms(self) -> float:
        """How far behind real time the run fell at worst (0 when no chunk ended late)."""
        return max(0.0, max(self.lag_ms, default=0.0))

    @property
    def overruns(self) -> int:
        """Chunks that ended after their model end time."""
        return sum(1 for lag in self.lag_ms if lag > 0)


def pace(
    run_chunk: Callable[[], object],
    n_chunks: int,
    chunk_ms: float,
    *,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], object] = time.sleep,
) -> Pacing:
    """Run `run_chunk` (blocking until its work is done) n_chunks times paced to chunk_ms of wall clock each.

    clock() returns seconds; sleep(s) sleeps s seconds (both injectable for tests)."""
    if n_chunks < 1:
        raise ValueError(f"n_chunks = {n_chunks}: must be >= 1")
    if not chunk_ms > 0:
        raise ValueError(f"chunk_ms = {chunk_ms}: must be > 0")
    chunk_s = chunk_ms / 1000.0
    busy, lag = [], []
    start = clock()
    for k in range(n_chunks):
        t0 = clock()
        run_chunk()
        t1 = clock()
        due = start + (k + 1) * chunk_s
        busy.append((t1 - t0) * 1000.0)
        lag.append((t1 - due) * 1000.0)
        if t1 < due:
            sleep(due - t1)
    wall_ms = (clock() - start) * 1000.0
    return Pacing(chunk_ms=float(chunk_ms), busy_ms=tuple(busy), lag_ms=tuple(lag), wall_ms=wall_ms)


class GpuSampler:
    """Samples GPU utilization (%) while in its `with` block: NVML (pynvml; busiest GPU) every period_s on a
    background thread, else `nvidia-smi --query-gpu=utilization.gpu --loop-ms` (the GPU jax uses) where that
    command exists."""

    def __init__(self, period_s: float = 0.1, read: Callable = read_gpu_load, smi: str | None = "nvidia-smi"):
        self.period_s = period_s
        self._read = read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self.samples: list[float] = []
        first = read()
        self.source = "nvml" if first.available else None
        self.reason = first.reason
        self._smi = None if first.available or smi is None else shutil.which(smi)
        if self._smi:
            self.source, self.reason = "nvidia-smi", f"nvidia-smi (pynvml: {first.reason})"

    def __enter__(self) -> GpuSampler:
        if self.source == "nvml":
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        elif self.source == "nvidia-smi":
            cmd = [self._smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            # The GPU jax uses first: CUDA_VISIBLE_DEVICES' first entry (index or UUID), else GPU 0.
            gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"
            cmd += [f"--id={gpu}", f"--loop-ms={max(1, round(self.period_s * 1000))}"]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            reading = self._read()
            if reading.available and reading.utilization_pct:
                self.samples.append(max(reading.utilization_pct))

    def _read_smi(self) -> None:
        for line in self._proc.stdout:
            try:
                value = float(line.strip())
            except ValueError:
                continue
            if not self._stop.is_set():
                self.samples.append(value)

    def summary(self) -> dict:
        """{'source', 'reason', 'samples', 'mean_pct', 'max_pct'} (None without samples)."""
        s = self.samples
        return {
            "source": self.source,
            "reason": self.reason,
            "samples": len(s),
            "mean_pct": statistics.fmean(s) if s else None,
            "max_pct": max(s) if s else None,
        }


@dataclasses.dataclass(frozen=True)
class PacedRun:
    """A paced run: the pacing figures, the warm-up chunks' times (ms, compile included), spikes counted in
    the paced chunks, and the NVML summary (GpuSampler.summary)."""

    pacing: Pacing
    warmup_ms: tuple[float, ...]
    spike_count: int
    n_neurons: int
    gpu: dict

    @property
    def mean_rate_hz(self) -> float:
        model_s = self.pacing.chunks * self.pacing.chunk_ms / 1000.0
        return self.spike_count / (self.n_neurons * model_s)

    def summary(self) -> dict:
        """Plain-dict figures for JSON output."""
        p = self.pacing
        busy = sorted(p.busy_ms)
        return {
            "realtime": True,
            "chunk_ms": p.chunk_ms,
            "paced_chunks": p.chunks,
            "warmup_chunks": len(self.warmup_ms),
            "warmup_ms": [round(x, 3) for x in self.warmup_ms],
            "model_ms": p.chunks * p.chunk_ms,
            "wall_ms": round(p.wall_ms, 3),
            "busy_ms": round(sum(p.busy_ms), 3),
            "busy_fraction": p.busy_fraction,
            "busy_chunk_median_ms": round(statistics.median(busy), 4),
            "busy_chunk_max_ms": round(busy[-1], 4),
            "max_lag_ms": round(p.max_lag_ms, 4),
            "overruns": p.overruns,
            "paced_spike_count": self.spike_count,
            "paced_rate_hz": self.mean_rate_hz,
            "gpu_util": self.gpu,
        }


@functools.partial(jax.jit, static_argnames=("n_windows", "cfg", "mode", "backend"), donate_argnums=0)
def _chunk(state: State, net, n_windows: int, cfg: FumConfig, mode: str, backend: str):
    state, counts, _ = run_driven(state, net, n_windows, config=cfg, plasticity=mode, backend=backend)
    return state, counts.sum(dtype=jnp.int32)


def _unshare(state: State, network) -> State:
    """Copy the state leaves that are a network array (init_state's w is network.w0 itself): donating them
    would delete the network's array."""
    shared = {id(x) for x in jax.tree_util.tree_leaves(network)}
    return jax.tree_util.tree_map(lambda x: jnp.copy(x) if id(x) in shared else x, state)


@jax.jit
def _finite(state: State) -> dict:
    return {
        f.name: jnp.isfinite(x).all()
        for f in dataclasses.fields(state)
        if jnp.issubdtype((x := getattr(state, f.name)).dtype, jnp.floating)
    }


def _check(state: State, network, cfg: FumConfig) -> None:
    """check_state before the first chunk (inside the jitted chunks its NaN/Inf checks cannot run): shapes
    and dtypes on abstract values, then every float field's finiteness in one jitted reduction, so no
    E-sized boolean temporary is made (at 7M x 500 each would be 3.5 GB)."""
    jax.eval_shape(lambda s, net: check_state(s, net, cfg), state, network)
    bad = [name for name, ok in _finite(state).items() if not bool(ok)]
    if bad:
        raise ValueError(f"state.{bad[0]} contains NaN or Inf")


def run_paced(
    state: State,
    network,
    n_chunks: int,
    *,
    config: FumConfig | None = None,
    plasticity: bool | str | None = None,
    backend: str | None = None,
    windows_per_chunk: int = 1,
    warmup_chunks: int = WARMUP_CHUNKS,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], object] = time.sleep,
    gpu_period_s: float = 0.1,
) -> tuple[State, PacedRun]:
    """Run warmup_chunks unpaced chunks, then n_chunks chunks of windows_per_chunk windows (run_driven:
    default drive, SIE reward, learning) paced to the wall clock. `state` is donated (do not reuse it).

    network: a Network or anything run_driven takes. Returns (state, PacedRun)."""
    cfg = config or FumConfig()
    mode = resolve_mode(plasticity, cfg)
    backend = resolve_backend(backend or cfg.run.backend)
    if windows_per_chunk < 1:
        raise ValueError(f"windows_per_chunk = {windows_per_chunk}: must be >= 1")
    if warmup_chunks < 0:
        raise ValueError(f"warmup_chunks = {warmup_chunks}: must be >= 0")
    if n_chunks < 1:
        raise ValueError(f"n_chunks = {n_chunks}: must be >= 1")
    _check(state, network, cfg)
    chunk_ms = windows_per_chunk * cfg.run.window_steps * cfg.neuron.dt_ms
    st = _unshare(state, network)
    counts = []

    def run_chunk():
        nonlocal st
        st, count = _chunk(st, network, windows_per_chunk, cfg, mode, backend)
        counts.append(jax.block_until_ready(count))
        jax.block_until_ready(st)

    warm = []
    for _ in range(warmup_chunks):
        t0 = clock()
        run_chunk()
        warm.append((clock() - t0) * 1000.0)
    counts.clear()
    with GpuSampler(gpu_period_s) as sampler:
        pacing = pace(run_chunk, n_chunks, chunk_ms, clock=clock, sleep=sleep)
    spikes = int(np.sum([np.asarray(c, np.int64) for c in counts]))
    run = PacedRun(pacing, tuple(warm), spikes, int(network.n_neurons), sampler.summary())
    return st, run


def add_realtime_argument(parser: argparse.ArgumentParser) -> None:
    """Add `--realtime` to a run command's parser."""
    parser.add_argument(
        "--realtime",
        action="store_true",
        help=(
            "pace the run to the wall clock (1 ms of model time per ms) in chunks of one window; report the "
            f"busy fraction, worst lag and overruns (the first {WARMUP_CHUNKS} chunks compile: they run "
            "unpaced before the paced model time and are excluded)"
        ),
    )


def print_paced(run: PacedRun, *, quiet: bool) -> None:
    """Print the human summary lines of a paced run (nothing when quiet)."""
    if quiet:
        return
    s, p = run.summary(), run.pacing
    print(
        f"  realtime: {p.chunks} chunks of {p.chunk_ms:g} ms paced ({s['model_ms']:g} ms model time) after "
        f"{s['warmup_chunks']} warm-up chunks ({sum(run.warmup_ms):.0f} ms, compile; excluded)"
    )
    print(
        f"  busy {100 * p.busy_fraction:.3f}% of {p.wall_ms:.1f} ms wall (per chunk median "
        f"{s['busy_chunk_median_ms']:.3f} ms, max {s['busy_chunk_max_ms']:.3f} ms); worst lag "
        f"{p.max_lag_ms:.3f} ms, {p.overruns} of {p.chunks} chunks overran; rate {run.mean_rate_hz:.2f} Hz"
    )
    g = run.gpu
    if g["samples"]:
        print(
            f"  GPU utilization ({g['source']}, {g['samples']} samples): mean {g['mean_pct']:.1f}%, "
            f"max {g['max_pct']:g}%"
        )
    else:
        print(f"  GPU utilization: no samples ({g['reason']})")
