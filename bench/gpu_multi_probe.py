"""Multi-path probe of the GPU whole-run kernel at large N: ms per model ms against the firing rate.

Builds a random N x K network directly on the GPU (uniform fan-out K, random posts; the arrays a
CompactNetwork holds: row_ptr/in_ptr/in_syn uint32, pre_bucket int32, post int32, no pre, delays 1), 16-bit w
and elig, then runs `fused.run_steps` windows of T steps (rstdp: STDP + eligibility, the per-window dense
renormalization included) at several drive levels and prints rate, ms per step and the bytes the synapse
passes must move. Also a device-copy bandwidth (the ceiling of the bandwidth fraction), the allocator peak.
E must stay below 2^31 here (jnp.argsort indices are int32 without x64); the real 7M x 500 network comes from
the builder (fumjax.compact). Run on the GPU machine:
    python bench/gpu_multi_probe.py --neurons 1000000 --k 500 --drives 0.02,0.05,0.1
A/B of kernel variants on the same network, each from the same initial state and drive:
    python bench/gpu_multi_probe.py --neurons 4000000 --variants multi:9,multi:11,multi:12
(PATH:SHIFT = FUMJAX_GPU_RUN_PATH, read at trace time, and the pre_bucket table's log2 slots per entry.)
"""

from __future__ import annotations

import argparse
import json
import os
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

import fumjax
from fumjax import FumConfig
from fumjax.kernels import fused


def pre_bucket(n: int, k: int, shift: int) -> jax.Array:
    """Pre neuron of slot b << shift for uniform fan-out k (row_ptr[j] = j k)."""
    n_buckets = (n * k - 1) // (1 << shift) + 1
    slot = jnp.arange(n_buckets, dtype=jnp.uint32) * jnp.uint32(1 << shift)
    return (slot // jnp.uint32(k)).astype(jnp.int32)


def build(n: int, k: int, dtype: str, seed: int = 0):
    """A random network with uniform fan-out k, built on the default device (duck-typed CompactNetwork)."""
    e = n * k
    key = jax.random.PRNGKey(seed)
    kp, kw, ke = jax.random.split(key, 3)
    row_ptr = jnp.arange(n + 1, dtype=jnp.uint32) * jnp.uint32(k)
    post = jax.random.randint(kp, (e,), 0, n, dtype=jnp.int32)
    in_syn = jnp.argsort(post, stable=True).astype(jnp.uint32)
    counts = jnp.bincount(post, length=n)
    in_ptr = jnp.concatenate([jnp.zeros(1, jnp.uint32), jnp.cumsum(counts).astype(jnp.uint32)])
    excitatory = jax.random.uniform(ke, (n,)) < 0.8
    pre_exc = jnp.repeat(excitatory, k, total_repeat_length=e)
    mag = jax.random.uniform(kw, (e,), jnp.float32, 0.0, 0.06)
    w0 = jnp.where(pre_exc, mag, -2.0 * mag).astype(dtype)
    del pre_exc, mag
    net = types.SimpleNamespace(
        n_neurons=n,
        n_pre=n,
        n_synapses=e,
        max_delay=1,
        row_ptr=row_ptr,
        post=post,
        in_ptr=in_ptr,
        in_syn=in_syn,
        pre_bucket=pre_bucket(n, k, fused.PRE_SHIFT),
        pre_shift=fused.PRE_SHIFT,
        delay_steps=jnp.zeros((0,), jnp.int32),
        excitatory=excitatory,
        excitatory_pre=excitatory,
        plastic_pre=jnp.ones((n,), bool),
        w0=w0,
        tau_ms=jnp.full((n,), 20.0, jnp.float32),
        v_th_mV=jnp.full((n,), -55.0, jnp.float32),
    )
    fields = ("row_ptr", "post", "in_ptr", "in_syn", "pre_bucket", "excitatory", "tau_ms", "v_th_mV")
    net.nbytes = {f: int(getattr(net, f).nbytes) for f in fields}  # as CompactNetwork.nbytes
    return net


def copy_bandwidth(gib: float = 4.0) -> float:
    """Device-to-device copy (bytes read + written per second), median of 10."""
    x = jnp.ones((int(gib * 2**30) // 4,), jnp.float32)
    f = jax.jit(lambda a: a * 1.0 + 0.0)
    f(x).block_until_ready()
    ts = []
    for _ in range(10):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return 2 * x.nbytes / float(np.median(ts))


def run_drives(a, net, cfg, state, tag: dict) -> list[dict]:
    """Windows of run_steps at each drive level from `state`: one row (rate, ms per step, ...) per drive."""
    # The network's arrays go in as arguments (captured, they would be compiled in as constants).
    arrays = {k: v for k, v in vars(net).items() if isinstance(v, jax.Array)}
    static = {k: v for k, v in vars(net).items() if k not in arrays}
    step = jax.jit(
        lambda s, arr, i: fused.run_steps(s, types.SimpleNamespace(**static, **arr), i, cfg, a.mode),
        donate_argnums=0,
    )
    n, T = a.neurons, a.window
    rows = []
    for pr in (float(x) for x in a.drives.split(",")):
        key = jax.random.PRNGKey(int(pr * 1e6))
        times, spikes = [], 0
        for wdx in range(a.windows + 1):
            key, sub = jax.random.split(key)
            i_ext = (jax.random.uniform(sub, (T, n)) < pr).astype(jnp.float32) * a.drive_mV
            jax.block_until_ready(i_ext)
            t0 = time.perf_counter()
            state, spk = step(state, arrays, i_ext)
            nsp = int(jnp.sum(spk, dtype=jnp.int32))  # syncs
            dt = time.perf_counter() - t0
            if wdx > 0:  # first window of each drive: compile / warm-up
                times.append(dt)
                spikes += nsp
        rate = spikes / (a.windows * T * n) * 1000.0
        ms_step = float(np.median(times)) / T * 1000.0
        w = np.asarray(state.w[:10_000_000].astype(jnp.float32))
        el = np.asarray(state.elig[:10_000_000].astype(jnp.float32))
        events = rate / 1000.0 * n * a.k  # synapse rows walked per step (and as many in-list entries)
        row = dict(
            **tag,
            drive=pr,
            rate_hz=rate,
            ms_per_step=ms_step,
            realtime_x=1.0 / ms_step,
            syn_events_per_step=events,
            w_mean=float(w.mean()),
            w_std=float(w.std()),
            elig_absmax=float(np.abs(el).max()),
            finite=bool(np.isfinite(w).all() and np.isfinite(el).all()),
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--neurons", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=500)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--mode", default="rstdp", help="off, stdp or rstdp")
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--windows", type=int, default=6)
    p.add_argument("--drives", default="0.001,0.005,0.01")
    p.add_argument("--drive-mV", type=float, default=30.0)
    p.add_argument(
        "--variants",
        default="",
        help="comma-separated PATH:SHIFT (GPU run path, pre_bucket shift); default: the current path and "
        "fumjax.compact.PRE_SHIFT",
    )
    a = p.parse_args()
    dev = jax.devices()[0]
    bw = copy_bandwidth()
    print(f"device {dev.device_kind}; copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    t0 = time.perf_counter()
    net = build(a.neurons, a.k, a.dtype)
    jax.block_until_ready(net.in_syn)
    t_build = time.perf_counter() - t0
    cfg = FumConfig().replace(neuron={"n_neurons": a.neurons}, run={"dtype": a.dtype})
    state = fumjax.init_state(net, cfg)
    assert fused.run_steps_supported(state, net)
    b = fused.bytes_per_synapse(net, cfg, a.mode)
    print(
        f"built N={a.neurons} K={a.k} E={net.n_synapses:.3e} in {t_build:.1f} s; {b['total']:.2f} B/syn",
        flush=True,
    )
    variants = [v.split(":") for v in a.variants.split(",")] if a.variants else [["", str(fused.PRE_SHIFT)]]
    rows = []
    for path, shift in variants:
        if path:
            os.environ["FUMJAX_GPU_RUN_PATH"] = path
        jax.clear_caches()  # the path is an attribute fixed at trace time
        net.pre_shift = int(shift)
        net.pre_bucket = pre_bucket(a.neurons, a.k, net.pre_shift)
        del state  # a fresh copy (state arrays may alias net.w0 etc., and run_drives donates them)
        state = jax.tree.map(jnp.copy, fumjax.init_state(net, cfg))
        rows += run_drives(a, net, cfg, state, dict(path=path or "default", pre_shift=net.pre_shift))
    stats = dev.memory_stats() or {}
    print(
        f"peak_bytes_in_use {stats.get('peak_bytes_in_use', 0) / 2**30:.2f} GiB; "
        f"bytes_in_use {stats.get('bytes_in_use', 0) / 2**30:.2f} GiB",
        flush=True,
    )
    print(
        json.dumps(
            dict(
                neurons=a.neurons,
                k=a.k,
                dtype=a.dtype,
                mode=a.mode,
                build_s=t_build,
                copy_Bps=bw,
                rows=rows,
                peak_bytes=stats.get("peak_bytes_in_use"),
            )
        )
    )


if __name__ == "__main__":
    main()
