"""`fumjax scale`: build a CompactNetwork of N x K synapses on one device and run it learning (issue 5).

Before anything is allocated, `estimate_device_bytes` adds up every array the run holds on the device and
`check_device_memory` refuses a run that does not fit the device (jax memory_stats bytes_limit) or the
--max-gb budget, naming the estimate and what to lower. The run: run_driven windows (default Poisson drive,
SIE self-benefit reward, rstdp eligibility + reward every window, intrinsic plasticity) in groups, the state
donated between groups (no second copy of w/elig). The drive rate is calibrated on a slice with the same K
so the network rate lands near --rate-hz, and intrinsic plasticity's band is set to [rate/2, 2 rate] so it
holds the rate there. Initial weights are scaled by 50/K for K > 50 (default_weight_scale). The last line
of stdout is a JSON summary.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fumjax.compact import PRE_SHIFT, CompactNetwork, build_compact, build_plan
from fumjax.config import FumConfig
from fumjax.dynamics import resolve_mode, run_driven
from fumjax.kernels.fused import gpu_scratch_shape
from fumjax.state import State, compute_dtype, elig_tables, init_state, weight_dtype

__all__ = [
    "DeviceMemoryError",
    "estimate_device_bytes",
    "check_device_memory",
    "calibrate_drive",
    "default_pre_shift",
    "default_weight_scale",
    "scale_config",
    "add_scale_command",
    "run_scale",
]

GB = 1e9
CALIB_DRIVES_HZ = (2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
CALIB_BISECTIONS = 4
Pace = Callable[[State, CompactNetwork, int, FumConfig, str], tuple[State, dict]]


class DeviceMemoryError(ValueError):
    """The run's estimated device memory exceeds the device or the budget (raised before allocating)."""


def estimate_device_bytes(
    n_neurons: int,
    k_per_neuron: int,
    cfg: FumConfig,
    window_steps: int | None = None,
    *,
    tail_tol: float = 1e-4,
    block_elements: int = 1 << 28,
) -> dict[str, int]:
    """Device bytes of a compact N x K learning run, by array: {name: bytes}, plus 'run_total' (everything
    held while windows run), 'build_peak' (largest moment of build_compact + init_state) and 'total'."""
    n, k = int(n_neurons), int(k_per_neuron)
    t = int(window_steps or cfg.run.window_steps)
    plan = build_plan(
        n, k, sigma_grid=cfg.connectivity.sigma_grid, tail_tol=tail_tol, block_elements=block_elements
    )
    e = n * k
    wb = jnp.dtype(weight_dtype(cfg)).itemsize
    fb_dtype = jnp.dtype(compute_dtype(cfg))
    fb = fb_dtype.itemsize
    k_max = len(elig_tables(cfg)[0]) - 1
    out = {
        "post": 4 * e,
        "in_syn": 4 * e,
        "w": wb * e,
        "elig": wb * e,
        "row_ptr+in_ptr": 8 * (n + 1),
        "pre_bucket": 4 * (((e - 1) >> PRE_SHIFT) + 1),
        "neuron_params": 9 * n,  # excitatory (bool), tau_ms, v_th_mV of the network
        # v, x_pre, y_post, ring (1 slot), tau, v_th, rate in the state dtype; refrac, window_spikes int32
        "neuron_state": (7 * fb + 8) * n,
        "drive_window": t * n * fb,  # (T, N) background current of one window
        "spikes_window": t * n,  # (T, N) uint8
        # the GPU run_steps handler's scratch: post cells, the (L, N) deferred-LTP history, the spike list
        "gpu_scratch": fb * math.prod(gpu_scratch_shape(n, k_max, cfg.plasticity.mode, fb_dtype)),
        # the window-end pass (eligibility decay, reward) may keep one E-sized storage-dtype temporary
        "window_pass_temp": wb * e,
    }
    out["run_total"] = sum(out.values())
    # build: one sampling or CSR block's temporaries; then post, in_syn and the weights drawn in chunks
    # that are concatenated (2 x w) next to the zeroed eligibility
    block = max(plan.sample_block_bytes, plan.csr_block_bytes)
    out["build_peak"] = max(block, 8 * e + 3 * wb * e + out["neuron_params"] + out["neuron_state"])
    out["total"] = max(out["run_total"], out["build_peak"])
    return out


def device_bytes_limit() -> int | None:
    """The allocator's bytes_limit of the default device (jax memory_stats), None where it has none."""
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None


def check_device_memory(
    estimate: dict[str, int], *, max_gb: float, bytes_limit: int | None = None, what: str = ""
) -> None:
    """Raise DeviceMemoryError when estimate['total'] exceeds max_gb GB or the device's bytes_limit."""
    need = estimate["total"]
    parts = sorted(
        ((v, name) for name, v in estimate.items() if name not in ("run_total", "build_peak", "total")),
        reverse=True,
    )
    biggest = ", ".join(f"{name} {v / GB:.2f}" for v, name in parts[:5])
    for cap, name in ((max_gb * GB, f"the --max-gb budget of {max_gb:g} GB"), (bytes_limit, "the device")):
        if cap is not None and need > cap:
            limit = f"{bytes_limit / GB:.2f} GB" if bytes_limit is not None else "unknown"
            raise DeviceMemoryError(
                f"{what}estimated device memory {need / GB:.2f} GB (run "
                f"{estimate['run_total'] / GB:.2f}, build peak {estimate['build_peak'] / GB:.2f}; "
                f"largest: {biggest} GB) exceeds {name} (device "
                f"bytes_limit from jax memory_stats: {limit}); lower --neurons or --k, use --dtype bfloat16 "
                f"or float16, shorten run.window_steps, or raise --max-gb"
            )


@functools.partial(jax.jit, static_argnames=("n_windows", "cfg", "mode", "backend"), donate_argnums=0)
def _group(state, net, n_windows: int, cfg: FumConfig, mode: str, backend: str):
    """n_windows windows of run_driven with the state donated: (state, spikes per window (n_windows,))."""
    state, counts, _ = run_driven(state, net, n_windows, config=cfg, plasticity=mode, backend=backend)
    return state, counts.sum(axis=1, dtype=jnp.int32)


_STATS_CHUNK = 1 << 28  # synapses per weight-statistics reduction


@functools.partial(jax.jit, static_argnames=("a", "b"))
def _chunk_stats(w, a: int, b: int):
    """(sum, sum of squares, min, max) of w[a:b] in float32 and whether all are finite; a static slice, so
    no E-sized float32 copy and no index above 2^31 in the program."""
    x = w[a:b].astype(jnp.float32)
    return jnp.stack([x.sum(), jnp.square(x).sum(), x.min(), x.max()]), jnp.isfinite(x).all()


def weight_stats(w) -> tuple[list[float], bool]:
    """[mean, std, min, max] of the weights (E,) and whether all are finite, reduced on the device in
    chunks of _STATS_CHUNK and combined in float64 on the host."""
    e = int(w.shape[0])
    parts = [_chunk_stats(w, a, min(a + _STATS_CHUNK, e)) for a in range(0, e, _STATS_CHUNK)]
    st = np.array([np.asarray(p[0], np.float64) for p in parts])
    mean = st[:, 0].sum() / e
    var = max(st[:, 1].sum() / e - mean * mean, 0.0)
    return [float(mean), math.sqrt(var), float(st[:, 2].min()), float(st[:, 3].max())], all(
        bool(p[1]) for p in parts
    )


def _rate_hz(spikes: int, n: int, n_windows: int, cfg: FumConfig) -> float:
    return spikes / (n * n_windows * cfg.run.window_steps * cfg.neuron.dt_ms / 1000.0)


def calibrate_drive(net, cfg: FumConfig, target_hz: float, backend: str, log=print) -> tuple[float, list]:
    """Drive rate (cfg.drive.rate_hz, Hz) putting `net` (a slice with the run's K) near target_hz.

    Mean rate over windows 3-6 of a 6-window learning run at drives 2.5..80 Hz (x2 apart) up to the first
    that overshoots, then CALIB_BISECTIONS bisections in log(drive) of the bracket; the low end (rate <=
    target) is kept, since just above it the recurrent network can run away later. Returns (drive, trials).
    """
    trials: list[tuple[float, float]] = []

    def rate(d: float) -> float:
        c = cfg.replace(drive={"rate_hz": d})
        st, counts, _ = run_driven(init_state(net, c), net, 6, config=c, backend=backend)
        r = _rate_hz(int(np.asarray(counts, np.int64)[2:].sum()), net.n_neurons, 4, c)
        trials.append((d, r))
        log(f"  calibration on {net.n_neurons} neurons: drive {d:.4g} Hz -> {r:.3f} Hz")
        return r

    lo = hi = None
    for d in CALIB_DRIVES_HZ:
        if rate(d) <= target_hz:
            lo = d
        else:
            hi = d
            break
    for _ in range(CALIB_BISECTIONS if lo is not None and hi is not None else 0):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if rate(mid) <= target_hz else (lo, mid)
    return (lo if lo is not None else hi), trials


def add_scale_command(sub) -> argparse.ArgumentParser:
    """Register the `scale` subcommand's arguments on an argparse subparsers object; returns its parser
    (fumjax.cli adds --realtime, from the control layer, and binds the command to run_scale)."""
    s = sub.add_parser("scale", help="build an N x K compact network on one device and run it learning")
    s.add_argument("--neurons", type=int, default=7_000_000, help="N (default 7,000,000)")
    s.add_argument("--k", type=int, default=500, help="synapses per neuron (in-degree, default 500)")
    s.add_argument("--seconds", type=float, default=10.0, help="model time to run, s (default 10)")
    s.add_argument("--rate-hz", type=float, default=5.0, help="target mean rate (default 5 Hz)")
    s.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    s.add_argument("--max-gb", type=float, default=56.0, help="device memory budget, GB (default 56)")
    s.add_argument("--out", help="directory for summary.json and windows.jsonl (never overwritten)")
    s.add_argument("--config", help="TOML file of FumConfig sections (flags override it)")
    s.add_argument("--seed", type=int, help="seed of network and drive (default: config, 0)")
    s.add_argument("--drive-hz", type=float, help="drive rate (Hz) to use: skips the calibration")
    s.add_argument("--calib-neurons", type=int, default=20_000, help="slice size of the calibration")
    s.add_argument("--group-windows", type=int, default=20, help="windows per printed group (default 20)")
    s.add_argument(
        "--weight-scale",
        type=float,
        help="factor on connectivity.w_exc_max and w_inh_min (default min(1, 50/K): default_weight_scale)",
    )
    s.add_argument("--tail-tol", type=float, default=1e-4, help="partners moved inside the window, fraction")
    s.add_argument(
        "--pre-shift",
        type=int,
        help="log2 CSR slots per pre_bucket entry (default: default_pre_shift(K, platform))",
    )
    s.add_argument("--estimate-only", action="store_true", help="print the memory estimate (JSON) and stop")
    return s


def default_pre_shift(k_per_neuron: int, platform: str) -> int:
    """log2 of the CSR slots per pre_bucket entry: on a GPU ~8 rows of K per entry, so the table stays in L2
    (E/2^12 x 4 B = 3.4 MB at 7M x 500; shift 12 beat 9 by 10% at 4M x 500, bench/GPU_RUN_STEPS.md); on the
    CPU PRE_SHIFT, whose forward walk from an entry is short at any K."""
    if platform != "gpu":
        return PRE_SHIFT
    return max(PRE_SHIFT, min(16, (8 * int(k_per_neuron) - 1).bit_length()))


def default_weight_scale(k_per_neuron: int) -> float:
    """Factor on the initial weight bounds for K synapses per neuron: min(1, 50/K).

    The summed initial weight onto a neuron then stays that of a K = 50 network. With 100/K the K = 500
    network is bistable (20k x 500 on the CPU: drive 15.4 Hz -> 5 Hz, 16.8 Hz -> 180 Hz) and the 7M sheet
    ran away from 6 to 321 Hz within a second on the H200; with 50/K the rate follows the drive smoothly
    (14.1, 16.8, 18.3, 20 Hz -> 2.1, 4.8, 7.0, 10.1 Hz).
    """
    return min(1.0, 50.0 / k_per_neuron)


def scale_config(
    cfg: FumConfig, k_per_neuron: int, rate_hz: float, weight_scale: float | None = None
) -> FumConfig:
    """cfg for K synapses per neuron at a target rate_hz (Hz): connectivity.k_per_neuron = K, the initial
    weight bounds times weight_scale (default default_weight_scale(K)), intrinsic band [rate/2, 2 rate]."""
    scale = default_weight_scale(k_per_neuron) if weight_scale is None else weight_scale
    cc = cfg.connectivity
    return cfg.replace(
        connectivity={
            "k_per_neuron": k_per_neuron,
            "w_exc_max": scale * cc.w_exc_max,
            "w_inh_min": scale * cc.w_inh_min,
        },
        intrinsic={"target_rate_min_hz": 0.5 * rate_hz, "target_rate_max_hz": 2.0 * rate_hz},
    )


def _config(args: argparse.Namespace) -> FumConfig:
    cfg = FumConfig.from_toml(args.config) if args.config else FumConfig()
    for name in ("neurons", "k", "group_windows", "calib_neurons"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} = {getattr(args, name)}: must be >= 1")
    if not args.seconds > 0 or not args.rate_hz > 0:
        raise ValueError(f"--seconds = {args.seconds}, --rate-hz = {args.rate_hz}: both must be > 0")
    run = {"dtype": args.dtype, "backend": "fused"}
    if args.seed is not None:
        run["seed"] = args.seed
    if args.weight_scale is not None and not args.weight_scale > 0:
        raise ValueError(f"--weight-scale = {args.weight_scale}: must be > 0")
    # N and K in one replace: the config checks K <= N - 1
    cfg = cfg.replace(neuron={"n_neurons": args.neurons}, connectivity={"k_per_neuron": args.k}, run=run)
    return scale_config(cfg, args.k, args.rate_hz, args.weight_scale)


def _check_fused(state, net) -> None:
    """A CompactNetwork runs only through the fused run_steps (the step-by-step path needs net.pre)."""
    from fumjax.kernels import fused

    if not fused.run_steps_supported(state, net):
        raise RuntimeError(
            "fumjax scale runs the fused run_steps kernel, which is unavailable here (needs fumjax._core on "
            f"the CPU or fumjax._core_gpu on a GPU; platform {jax.default_backend()}): reinstall with "
            "`pip install .` (CUDA toolkit present for the GPU build)"
        )


def run_scale(args: argparse.Namespace, pace: Pace | None = None) -> int:
    """`fumjax scale` (args as parsed by add_scale_command's parser); returns the exit code. pace: when given,
    the windows run through pace(state, net, n_windows, cfg, mode) -> (state, figures) instead of in printed
    groups, and its figures (a dict) join the JSON summary (fumjax.cli passes --realtime's paced run)."""
    cfg = _config(args)
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None and out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"--out {out_dir} exists and is not empty: give a new directory")
    n, k = args.neurons, args.k
    say = functools.partial(print, flush=True)
    est = estimate_device_bytes(n, k, cfg, tail_tol=args.tail_tol)
    limit = device_bytes_limit()
    if args.estimate_only:
        print(json.dumps({**est, "bytes_limit": limit, "max_gb": args.max_gb}))
        return 0
    check_device_memory(est, max_gb=args.max_gb, bytes_limit=limit, what=f"N = {n}, K = {k}: ")
    dev = jax.devices()[0]
    say(f"fumjax scale: {n} x {k} = {n * k} synapses, {args.dtype}, on {dev.platform} ({dev.device_kind})")
    say(
        f"  estimate {est['total'] / GB:.2f} GB (run {est['run_total'] / GB:.2f}, "
        f"build {est['build_peak'] / GB:.2f}), "
        f"budget {args.max_gb:g} GB, device limit {'-' if limit is None else f'{limit / GB:.2f} GB'}"
    )
    mode = resolve_mode(None, cfg)
    n_windows = max(1, round(args.seconds * 1000.0 / (cfg.run.window_steps * cfg.neuron.dt_ms)))

    drive = args.drive_hz
    calib = []
    t0 = time.perf_counter()
    if drive is None:
        n_cal = min(n, args.calib_neurons)
        c_cal = cfg.replace(neuron={"n_neurons": n_cal})
        slice_net = build_compact(
            n_cal, k, sigma_grid=cfg.connectivity.sigma_grid, seed=cfg.run.seed, cfg=c_cal
        )
        _check_fused(init_state(slice_net, c_cal), slice_net)
        drive, calib = calibrate_drive(slice_net, c_cal, args.rate_hz, cfg.run.backend, log=say)
        del slice_net
    calib_s = time.perf_counter() - t0
    cfg = cfg.replace(drive={"rate_hz": drive})
    say(
        f"  drive {drive:.4g} Hz x {cfg.drive.n_inputs} inputs x {cfg.drive.amp_mV} mV "
        f"(calibration {calib_s:.1f} s)"
    )

    t0 = time.perf_counter()
    net = build_compact(
        n, k, sigma_grid=cfg.connectivity.sigma_grid, seed=cfg.run.seed, cfg=cfg, tail_tol=args.tail_tol
    )
    shift = default_pre_shift(k, dev.platform) if args.pre_shift is None else args.pre_shift
    net = net.with_pre_shift(shift)
    state = init_state(net, cfg)
    # init_state's tau/v_th are the network's arrays: copy them, since _group donates the state
    state = state.replace(tau_ms=jnp.copy(state.tau_ms), v_th_mV=jnp.copy(state.v_th_mV))
    jax.block_until_ready(state)
    _check_fused(state, net)
    build_s = time.perf_counter() - t0
    held_net = sum(net.nbytes.values())
    held_syn = int(state.w.nbytes + state.elig.nbytes)
    held_neuron = sum(int(x.nbytes) for x in jax.tree_util.tree_leaves(state)) - held_syn
    e = net.n_synapses
    per_syn = (net.post.nbytes + net.in_syn.nbytes + held_syn + net.pre_bucket.nbytes) / e
    per_neuron = (held_net - net.post.nbytes - net.in_syn.nbytes - net.pre_bucket.nbytes + held_neuron) / n
    stats = dev.memory_stats() or {}
    say(
        f"  build {build_s:.1f} s: {per_syn:.3f} B/synapse (post, in_syn, w, elig, pre_bucket), "
        f"{per_neuron:.1f} B/neuron; allocator peak {stats.get('peak_bytes_in_use', 0) / GB:.2f} GB"
    )

    if pace is not None:
        state, figures = pace(state, net, n_windows, cfg, mode)
        ws, finite = weight_stats(state.w)
        summary = {"neurons": n, "synapses": e, "dtype": args.dtype, "device": dev.device_kind}
        summary |= {"build_s": round(build_s, 3), "drive_hz": drive, "bytes_per_synapse": per_syn}
        summary |= {"w_mean_std_min_max": ws, "finite": finite and bool(jnp.isfinite(state.v_mV).all())}
        print(json.dumps({**summary, **figures}), flush=True)
        return 0 if summary["finite"] else 1

    records = []
    done, spikes_total, wall_s, compile_s = 0, 0, 0.0, 0.0
    while done < n_windows:
        g = min(args.group_windows, n_windows - done)
        t0 = time.perf_counter()
        state, counts = _group(state, net, g, cfg, mode, cfg.run.backend)
        counts = np.asarray(counts, np.int64)
        dt = time.perf_counter() - t0
        if done == 0:
            compile_s = dt  # the first group compiles; later groups of another size compile too (one more)
        else:
            wall_s += dt
        ws, finite = weight_stats(state.w)
        rate = _rate_hz(int(counts.sum()), n, g, cfg)
        spikes_total += int(counts.sum())
        done += g
        rec = {
            "t_s": done * cfg.run.window_steps * cfg.neuron.dt_ms / 1000.0,
            "rate_hz": rate,
            "w_mean": ws[0],
            "w_std": ws[1],
            "w_min": ws[2],
            "w_max": ws[3],
            "finite": bool(finite) and bool(jnp.isfinite(state.v_mV).all()),
            "wall_s": dt,
        }
        records.append(rec)
        say(
            f"  t {rec['t_s']:7.2f} s  rate {rate:7.3f} Hz  w mean {ws[0]:+.5f} std {ws[1]:.5f} "
            f"[{ws[2]:+.4f}, {ws[3]:+.4f}]  finite {rec['finite']}  {dt:.2f} s"
        )
    timed_steps = (n_windows - min(args.group_windows, n_windows)) * cfg.run.window_steps
    stats = dev.memory_stats() or {}
    model_ms = timed_steps * cfg.neuron.dt_ms
    summary = {
        "neurons": n,
        "synapses": e,
        "dtype": args.dtype,
        "backend": cfg.run.backend,
        "platform": dev.platform,
        "device": dev.device_kind,
        "build_s": round(build_s, 3),
        "calibration_s": round(calib_s, 3),
        "drive_hz": drive,
        "target_rate_hz": args.rate_hz,
        "rate_hz": _rate_hz(spikes_total, n, done, cfg),
        "model_s": done * cfg.run.window_steps * cfg.neuron.dt_ms / 1000.0,
        "compile_and_first_group_s": round(compile_s, 3),
        "ms_per_model_ms": (wall_s * 1000.0 / model_ms) if model_ms else None,
        "bytes_per_synapse": per_syn,
        "bytes_per_neuron": per_neuron,
        "pre_shift": net.pre_shift,
        "peak_bytes": stats.get("peak_bytes_in_use"),
        "bytes_limit": limit,
        "estimate_bytes": est["total"],
        "finite": all(r["finite"] for r in records),
        "calibration": calib,
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "windows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), flush=True)
    return 0 if summary["finite"] else 1
