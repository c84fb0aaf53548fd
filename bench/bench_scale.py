r"""Bandwidth accounting of a learning run (issue 5 item 3): bytes a step must move vs a measured device copy.

    python bench/bench_scale.py --neurons 20000 --k 100 --rates 1,5,10               # CPU, small N
    python bench/bench_scale.py --neurons 7000000 --k 500 --dtype bfloat16 --rates 1,5,10 --copy-gb 4  # H200

Steps, each printed as it finishes (flush) and all figures in a final JSON line (also --out FILE):
1. device copy: a ~copy-gb float32 array (not zeros) copied by `x.copy()` and by `x + 1` (jitted), median of
   --copy-repeats after 2 warm-ups; bandwidth = (bytes read + bytes written) / time. The larger of the two is
   the reference ("measured device copy").
2. the network: fumjax.compact.build_compact(N, K) (the compact layout), or with --regular a regular
   Network (fumjax.build_network; small N only). Build time and the allocator peak where the device has one.
3. configuration and drive: those of `fumjax scale --k K --rate-hz R` for each target rate R: initial
   weights scaled by default_weight_scale(K) = min(1, 50/K), intrinsic plasticity's band [R/2, 2R], and the
   drive from fumjax.train.scale.calibrate_drive on a slice of min(N, --calib-neurons) neurons with the same
   K (the network itself when N is at most that). The measured rate of the timed run is what the bytes
   use, so a miss only moves the operating point (--drives skips the calibration).
4. per target rate: run_driven windows (default drive, SIE reward, rstdp learning, intrinsic plasticity;
   backend --backend) through fumjax.control.realtime.run_paced without sleeping: 2 warm-up windows
   (compile) excluded, then --windows windows, each timed to its results being ready; step time = median
   window time / window_steps.
5. model bytes per step (fumjax.kernels.traffic.step_traffic at the measured rate: neuron pass with the
   multi path's scratch, drive, out-rows with their deferred LTP, the amortized segment flush and window
   pass), achieved bandwidth = bytes / step time, its fraction of
   the copy bandwidth (target >= 0.5), and the same for the 32-byte-sector count (the random-access
   penalty: a gathered 4-byte value costs a 32-byte sector).

Nsight Compute on the GPU. The fused GPU path for large N (hip/run_steps.hip, "multi") launches FlushKernel
(a no-op except at a segment's end), NeuronKernel and SynapseKernel once per step and FinalizeKernel once per
window; in rstdp the window ends in FlushKernel<..., 1> (fumjax_window_reward: the last segment's LTP, the
eligibility rescale and the reward over all E synapses in one pass); the reward and the drive are XLA
fusions. `--profile` runs the build, one warm-up window (compile) and ONE more window, no copy test and no
calibration (drive: --drives, else 15 Hz):
    python bench/bench_scale.py --neurons 7000000 --k 500 --dtype bfloat16 --rates 5 --profile
    ncu --clock-control none --kernel-name-base demangled -k regex:'NeuronKernel|SynapseKernel' \
        --launch-skip 120 -c 2 --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
        python bench/bench_scale.py <same args> --profile        # step 10 of the second window
    ncu --clock-control none --kernel-name-base demangled -k regex:'FlushKernel<.*bool.1>' \
        --launch-skip 1 -c 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
        python bench/bench_scale.py <same args> --profile        # the second window's end
(--launch-skip 120 skips the first window's 2 x 50 per-step launches and 10 steps of the second.) Read
Duration, DRAM Throughput, L2 Hit Rate and the bytes read/written per kernel. Where nsys is missing (the
lent machines), `--trace DIR` lists every kernel's device time per window (the FFI kernels and the XLA
fusions) from a jax.profiler trace:
    python bench/bench_scale.py --neurons 7000000 --k 500 --rates 5 --drives 16.8 --trace /tmp/tr
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import fumjax
from fumjax.compact import build_compact
from fumjax.config import FumConfig
from fumjax.control.realtime import run_paced
from fumjax.kernels.traffic import step_traffic
from fumjax.train.scale import calibrate_drive, scale_config, weight_stats

# --profile without --drives: the drive that gave ~5 Hz in the CPU calibrations at K = 100 and 200 with the
# former 100/K weight scale (15.1-15.4 Hz and 14.8 Hz); the default 20 Hz drive ran those networks away.
PROFILE_DRIVE_HZ = 15.0


def log(msg: str) -> None:
    print(msg, flush=True)


def median_time(fn, repeats: int) -> float:
    """Median seconds of fn() (which blocks) over repeats calls after 2 warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(gb: float, repeats: int) -> dict:
    """Device copy bandwidth (bytes read + written per second) of a gb-GB float32 array, two ways."""
    n = int(gb * 1e9 / 4)
    x = jax.jit(lambda: jax.lax.iota(jnp.float32, n) * 1.0001 + 0.5, out_shardings=None)()
    x.block_until_ready()
    out = {"bytes": 4 * n}
    for name, f in (("copy", jax.jit(lambda a: a.copy())), ("add1", jax.jit(lambda a: a + 1.0))):

        def run(f=f, x=x, name=name):
            y = f(x)
            y.block_until_ready()
            if y is x:
                raise RuntimeError(f"{name}: jit returned its input; no copy was made")

        t = median_time(run, repeats)
        out[f"{name}_s"] = t
        out[f"{name}_GBps"] = 2 * 4 * n / t / 1e9
    del x
    out["GBps"] = max(out["copy_GBps"], out["add1_GBps"])
    return out


def peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def build(n: int, k: int, cfg: FumConfig, compact: bool):
    """(network, layout name): fumjax.compact.build_compact if `compact`, else a regular Network."""
    cfg = cfg.replace(neuron={"n_neurons": n}, connectivity={"k_per_neuron": k})
    if compact:
        net = build_compact(n, k, sigma_grid=cfg.connectivity.sigma_grid, seed=cfg.run.seed, cfg=cfg)
        return net, "compact"
    return fumjax.build_network(cfg), "regular"


def calibrate(
    n: int, k: int, cfg: FumConfig, targets: list[float], backend: str, compact: bool, net=None
) -> dict:
    """Drive rate (Hz) for each target rate: fumjax.train.scale.calibrate_drive on a slice of n neurons
    (net: the slice when it is already built, e.g. the whole network when N is small)."""
    cfg = cfg.replace(neuron={"n_neurons": n})
    if net is None:
        net, _ = build(n, k, cfg, compact)
    return {t: calibrate_drive(net, scale_config(cfg, k, t), t, backend, log=log)[0] for t in targets}


def device_times(trace_dir: str, n_windows: int, top: int = 12) -> list[tuple[str, float, int]]:
    """Per-window device time of each kernel name in the newest jax.profiler trace under trace_dir:
    [(name, ms per window, launches per window)], largest first; [] where the trace has no device plane."""
    pattern = os.path.join(trace_dir, "**", "*.xplane.pb")
    files = sorted(glob.glob(pattern, recursive=True), key=os.path.getmtime)
    if not files:
        return []
    total: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(files[-1]).planes:
        if not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            if "stream" not in line.name.lower():  # the kernels; "XLA Ops" repeats them by HLO op
                continue
            for ev in line.events:
                total[ev.name] += ev.duration_ns / 1e6
                count[ev.name] += 1
    rows = sorted(total.items(), key=lambda kv: -kv[1])[:top]
    return [(name, ms / n_windows, count[name] // n_windows) for name, ms in rows]


def measure(
    net,
    cfg: FumConfig,
    target_hz: float,
    drive_hz: float,
    windows: int,
    backend: str,
    profile: bool,
    trace_dir: str | None = None,
) -> dict:
    """Time `windows` learning windows at the given drive; returns step time, rate and the byte model.
    trace_dir: also trace every window (warm-up included) with jax.profiler and report device time per
    kernel per window (the trace's device plane: a GPU only)."""
    c = scale_config(cfg, round(net.n_synapses / net.n_neurons), target_hz)
    c = c.replace(drive={"rate_hz": drive_hz})
    state = fumjax.init_state(net, c)
    warmup = 1 if profile else 2
    if trace_dir:
        jax.profiler.start_trace(trace_dir)
    state, run = run_paced(
        state,
        net,
        windows,
        config=c,
        backend=backend,
        warmup_chunks=warmup,
        sleep=lambda s: None,
    )
    kernels = []
    if trace_dir:
        jax.profiler.stop_trace()
        kernels = device_times(trace_dir, warmup + windows)
    t_win = c.run.window_steps
    busy = sorted(run.pacing.busy_ms)
    step_ms = statistics.median(busy) / t_win
    w_stats, finite = weight_stats(state.w)
    del state
    k = net.n_synapses / net.n_neurons
    traffic = step_traffic(net.n_neurons, round(k), run.mean_rate_hz, c)
    step_s = step_ms / 1000.0
    return {
        "drive_hz": drive_hz,
        "rate_hz": run.mean_rate_hz,
        "windows": run.pacing.chunks,
        "warmup_ms": list(run.warmup_ms),
        "window_ms_median": statistics.median(busy),
        "window_ms_min": busy[0],
        "window_ms_max": busy[-1],
        "step_ms": step_ms,
        "realtime_factor": c.neuron.dt_ms / step_ms,
        "bytes_per_step": traffic.bytes,
        "bytes_total": traffic.total,
        "sector_bytes_per_step": traffic.sector_bytes,
        "sector_bytes_total": traffic.sector_total,
        "achieved_GBps": traffic.total / step_s / 1e9,
        "sector_achieved_GBps": traffic.sector_total / step_s / 1e9,
        "w_mean_std_min_max": w_stats,
        "finite": finite,  # every weight finite
        "gpu_util": run.gpu,
        "device_ms_per_window": kernels,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--neurons", type=int, default=20_000)
    p.add_argument("--k", type=int, default=100, help="synapses per neuron")
    p.add_argument("--rates", default="1,5,10", help="target mean rates, Hz, comma-separated")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--backend", default="fused", choices=("fused", "reference"))
    p.add_argument("--windows", type=int, default=5, help="timed windows per rate (after 2 warm-up)")
    p.add_argument("--copy-gb", type=float, help="copy test size, GB (default 4 on a GPU, 0.5 on the CPU)")
    p.add_argument("--copy-repeats", type=int, default=10)
    p.add_argument("--calib-neurons", type=int, default=20_000, help="slice size of the drive calibration")
    p.add_argument("--drives", help="drive rates (Hz), one per target rate: skips the calibration")
    p.add_argument("--regular", action="store_true", help="a regular Network instead of build_compact")
    p.add_argument("--profile", action="store_true", help="for ncu: build, 1 warm-up + 1 window, first rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pre-shift",
        type=int,
        help="coarser pre_bucket table (log2 CSR slots per entry, >= fumjax.compact.PRE_SHIFT; compact only)",
    )
    p.add_argument("--out", help="also write the JSON summary to this file")
    p.add_argument("--trace", help="jax.profiler trace directory: device time per kernel per window (GPU)")
    a = p.parse_args()

    dev = jax.devices()[0]
    on_gpu = dev.platform != "cpu"
    log(
        f"bench_scale {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} on {dev.device_kind} "
        f"({dev.platform}), jax {jax.__version__}, host {platform.node()}, load {os.getloadavg()[0]:.2f}"
    )
    targets = [float(x) for x in a.rates.split(",")]
    cfg = FumConfig().replace(
        run={"dtype": a.dtype, "backend": a.backend, "seed": a.seed},
        connectivity={"k_per_neuron": a.k},
        neuron={"n_neurons": a.neurons},
    )
    summary: dict = {"neurons": a.neurons, "k": a.k, "dtype": a.dtype, "backend": a.backend}
    summary["pre_shift"] = a.pre_shift
    summary["device"] = f"{dev.device_kind} ({dev.platform})"

    cp = None
    if not a.profile:
        gb = a.copy_gb if a.copy_gb is not None else (4.0 if on_gpu else 0.5)
        try:
            cp = copy_bandwidth(gb, a.copy_repeats)
        except Exception as exc:
            log(f"device copy FAILED {type(exc).__name__}: {exc}")
    if cp is not None:
        summary["copy"] = cp
        log(
            f"device copy of {cp['bytes'] / 1e9:.2f} GB: x.copy() {cp['copy_GBps']:.1f} GB/s, x + 1 "
            f"{cp['add1_GBps']:.1f} GB/s (read + write, median of {a.copy_repeats}); "
            f"reference {cp['GBps']:.1f}"
        )

    t0 = time.perf_counter()
    net, layout = build(a.neurons, a.k, cfg, not a.regular)
    if a.pre_shift is not None:
        net = net.with_pre_shift(a.pre_shift)
    jax.block_until_ready(net)
    build_s = time.perf_counter() - t0
    syn_bytes = sum(
        int(x.nbytes) for x in jax.tree_util.tree_leaves(net) if x.shape and x.shape[0] >= net.n_synapses
    )
    summary.update(
        layout=layout, build_s=build_s, synapses=int(net.n_synapses), peak_after_build=peak_bytes()
    )
    log(
        f"network ({layout}): {net.n_neurons} neurons x {a.k} = {net.n_synapses} synapses, built in "
        f"{build_s:.1f} s; E-sized network arrays {syn_bytes / net.n_synapses:.2f} B/synapse; allocator peak "
        f"{summary['peak_after_build']}"
    )

    if a.drives:
        drives = dict(zip(targets, [float(x) for x in a.drives.split(",")], strict=True))
    elif a.profile:
        drives = {targets[0]: PROFILE_DRIVE_HZ}
    else:
        n_cal = min(a.neurons, a.calib_neurons)
        t0 = time.perf_counter()
        try:
            slice_net = net if n_cal == a.neurons else None
            drives = calibrate(n_cal, a.k, cfg, targets, a.backend, not a.regular, slice_net)
        except Exception as exc:  # keep going at the default drive: the bytes use the measured rate anyway
            log(f"calibration FAILED {type(exc).__name__}: {exc}; default drive for every target")
            drives = {t: cfg.drive.rate_hz for t in targets}
        log(f"calibration: {drives} (drive Hz per target Hz), {time.perf_counter() - t0:.1f} s")
    summary["drives"] = {str(t): d for t, d in drives.items()}

    results = []
    for target in list(drives)[: 1 if a.profile else None]:
        try:
            r = measure(
                net,
                cfg,
                target,
                drives[target],
                1 if a.profile else a.windows,
                a.backend,
                a.profile,
                os.path.join(a.trace, f"{target:g}Hz") if a.trace else None,
            )
        except Exception as exc:  # one shot on the device: record the failure and go on to the next rate
            log(f"target {target:g} Hz: FAILED {type(exc).__name__}: {exc}")
            results.append({"target_hz": target, "error": f"{type(exc).__name__}: {exc}"})
            continue
        r["target_hz"] = target
        if "copy" in summary:
            r["fraction_of_copy"] = r["achieved_GBps"] / summary["copy"]["GBps"]
            r["sector_fraction_of_copy"] = r["sector_achieved_GBps"] / summary["copy"]["GBps"]
        results.append(r)
        parts = ", ".join(f"{k} {v / 1e6:.2f}" for k, v in r["bytes_per_step"].items())
        log(
            f"target {target:g} Hz (drive {r['drive_hz']:.3g} Hz): rate {r['rate_hz']:.3f} Hz, step "
            f"{r['step_ms']:.4f} ms (window median {r['window_ms_median']:.2f} ms, min "
            f"{r['window_ms_min']:.2f}, max {r['window_ms_max']:.2f}; warm-up "
            f"{', '.join(f'{x:.0f}' for x in r['warmup_ms'])} ms excluded), "
            f"{r['realtime_factor']:.2f}x real time"
        )
        log(
            f"  model MB/step: {parts}; total {r['bytes_total'] / 1e6:.2f} "
            f"(sectors {r['sector_bytes_total'] / 1e6:.2f})"
        )
        for name, ms, launches in r["device_ms_per_window"]:
            log(f"  device {ms:9.3f} ms/window ({launches} launches) {name[:110]}")
        w_stats = ", ".join(f"{x:.4g}" for x in r["w_mean_std_min_max"])
        log(f"  w mean/std/min/max {w_stats}, finite {r['finite']}, GPU util {r['gpu_util']['mean_pct']}")
        if "fraction_of_copy" in r:
            log(
                f"  achieved {r['achieved_GBps']:.1f} GB/s = {100 * r['fraction_of_copy']:.1f}% of the copy "
                f"(sector count: {r['sector_achieved_GBps']:.1f} GB/s = "
                f"{100 * r['sector_fraction_of_copy']:.1f}%)"
            )
    summary["results"] = results
    summary["peak_bytes"] = peak_bytes()
    log(f"allocator peak {summary['peak_bytes']}")
    line = json.dumps(summary)
    if a.out:
        with open(a.out, "x") as f:  # never overwrite an earlier result
            f.write(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    main()
