"""Where a learning window's time goes on the GPU: every kernel of FUM-1k's learning scan, for Nsight Compute.

    # profile (every kernel, its duration only; the scan runs twice, the second run is the one to read):
    ncu --csv --metrics gpu__time_duration.sum python3 bench/ncu_window_profile.py run 10 > kernels.csv
    # the same program's wall time without ncu, then the table:
    python3 bench/ncu_window_profile.py wall 10
    python3 bench/ncu_window_profile.py table kernels.csv 10 [wall_us_per_window]

`run W` / `wall W`: W windows of 50 steps in one `lax.scan`, each run_driven's window (fused run_steps in
rstdp, the self-benefit reward, the window's end; the drive precomputed, as in bench_gpu_run_steps.py
fum1k), jitted, run twice (compile + one profiled run). `wall` prints the median wall time per window of 21
runs. `table` sums the durations of the second run's kernels by name (from its first run_steps launch on;
XLA's runtime kernels such as autotuning's redzone checks left out), per window, and against the wall time
per window the gap that no kernel covers (launches, the scan's loop, host synchronization).
"""

from __future__ import annotations

import csv
import statistics
import sys
import time
from collections import defaultdict


def _program(n_windows: int):
    import jax

    import fumjax
    from fumjax import FumConfig
    from fumjax.dynamics import _simulate_rewarded, background_current

    cfg = FumConfig()
    net = fumjax.build_network(cfg)
    st = fumjax.init_state(net, cfg)
    t_win = cfg.run.window_steps
    i_ext = background_current(st, net, n_windows * t_win, cfg).reshape(n_windows, t_win, -1)

    def window(s, i_win):
        s, spk, _ = _simulate_rewarded(s, net, i_win, cfg, "rstdp", "fused")
        return s, spk.sum(dtype="int32")

    learn = jax.jit(lambda s, i: jax.lax.scan(window, s, i))
    return learn, st, i_ext


def run(n_windows: int) -> None:
    import jax

    learn, st, i_ext = _program(n_windows)
    for _ in range(2):
        _, counts = jax.block_until_ready(learn(st, i_ext))
    print(f"window profile done: {n_windows} windows, {int(counts.sum())} spikes", file=sys.stderr)


def wall(n_windows: int) -> None:
    import jax

    learn, st, i_ext = _program(n_windows)
    jax.block_until_ready(learn(st, i_ext))
    times = []
    for _ in range(21):
        t0 = time.perf_counter()
        jax.block_until_ready(learn(st, i_ext))
        times.append(time.perf_counter() - t0)
    print(f"wall: {statistics.median(times) / n_windows * 1e6:.2f} us per window (median of 21)")


def table(path: str, n_windows: int, wall_us: float | None) -> None:
    """Per-kernel totals of the profiled (second) run from ncu's --csv output, in us per window."""
    rows = []
    with open(path) as f:
        lines = [line for line in f if line.startswith('"')]  # ncu's CSV rows only
    for r in csv.DictReader(lines):
        if r.get("Metric Name") == "gpu__time_duration.sum":
            unit = r["Metric Unit"].replace("second", "s")  # ncu writes ns or nsecond, by version
            scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3}.get(unit, float("nan"))
            rows.append((int(r["ID"]), r["Kernel Name"], float(r["Metric Value"].replace(",", "")) * scale))
    rows.sort()
    # XLA's own runtime kernels (autotuning's redzone checks, delay kernels) are not the program's
    rows = [r for r in rows if "stream_executor::" not in r[1]]
    # Each run launches W run_steps kernels, one a window; the second run's windows are its launches from
    # its first run_steps kernel on (what it launches before that, once per run, is left out).
    steps_at = [i for i, (_, name, _) in enumerate(rows) if "RunSteps" in name]
    if len(steps_at) != 2 * n_windows:
        raise SystemExit(f"{path}: {len(steps_at)} run_steps launches, want {2 * n_windows} (2 runs of W)")
    second = rows[steps_at[n_windows] :]
    by_name: dict[str, list[float]] = defaultdict(list)
    for _, name, us in second:
        by_name[name].append(us)
    total = sum(us for _, _, us in second)
    per_window = len(second) / n_windows
    print(f"{len(rows)} kernel launches; the second run: {len(second)} ({per_window:.1f} per window)")
    print(f"{'us per window':>14} {'launches/window':>16}  kernel")
    for name, us in sorted(by_name.items(), key=lambda kv: -sum(kv[1])):
        print(f"{sum(us) / n_windows:14.2f} {len(us) / n_windows:16.1f}  {name[:100]}")
    print(f"{total / n_windows:14.2f} {'':>16}  all kernels")
    if wall_us is not None:
        gap = wall_us - total / n_windows
        print(f"{gap:14.2f} {'':>16}  not in any kernel (wall {wall_us:.2f} us per window)")


def main() -> None:
    cmd = sys.argv[1] if len(sys.argv) > 1 else "run"
    if cmd == "run":
        run(int(sys.argv[2]) if len(sys.argv) > 2 else 10)
    elif cmd == "wall":
        wall(int(sys.argv[2]) if len(sys.argv) > 2 else 10)
    elif cmd == "table":
        table(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else None)
    else:
        raise SystemExit(f"unknown command {cmd!r}: run, wall or table")


if __name__ == "__main__":
    main()
