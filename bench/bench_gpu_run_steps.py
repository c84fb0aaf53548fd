"""GPU whole-run kernel timings (fused.run_steps on CUDA): FUM-1k with learning, kernel alone, 100k x 100.

Run on a GPU machine after `pip install --no-build-isolation .`:  python bench/bench_gpu_run_steps.py
Timings: wall clock around block_until_ready, after warm-up; median of repeats (includes ~10-30 us of
dispatch per call; Nsight Compute's gpu__time_duration gives the kernel alone).
Paths: FUMJAX_GPU_RUN_PATH=cluster|block|multi, FUMJAX_GPU_CLUSTER=C (CTAs of the cluster path).
fum1k also times a 0-step call (the fixed cost of a call) and a jit of `v + 1` (dispatch floor), and full
learning over 10,000 steps (200 windows); BENCH_QUICK=1 keeps those two and the kernel alone (off, rstdp),
BENCH_PATHS picks the paths (default cluster,block), BENCH_REFERENCE=0 skips the reference backend,
BENCH_WINDOW_END=xla ends each learning window with XLA ops whatever the path (default: as run_driven).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import fumjax
from fumjax import FumConfig
from fumjax.dynamics import _end_window, _self_benefit_reward, _simulate_rewarded, background_current
from fumjax.kernels import fused
from fumjax.network import Network

assert fused.gpu_available()  # registers the FFI targets


def timeit(fn, *args, reps=7):
    jax.block_until_ready(fn(*args))  # compile + warm
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def _set_path(path: str, csize: int | None = None, body: str = "auto") -> None:
    os.environ["FUMJAX_GPU_RUN_PATH"] = path
    os.environ["FUMJAX_GPU_CLUSTER_BODY"] = body
    if csize is None:
        os.environ.pop("FUMJAX_GPU_CLUSTER", None)
    else:
        os.environ["FUMJAX_GPU_CLUSTER"] = str(csize)


def fum1k(
    paths=("cluster", "block"), sweep=((4, "auto"), (8, "auto"), (16, "auto"), (8, "pull"), (16, "pull"))
):
    cfg = FumConfig()  # N = 1000, K = 50, window 50 steps, rstdp
    net = fumjax.build_network(cfg)
    st = fumjax.init_state(net, cfg)
    i_ext = background_current(st, net, 1000, cfg)
    i_ext10k = background_current(st, net, 10_000, cfg)
    t_win = cfg.run.window_steps
    print(f"FUM-1k: N={net.n_neurons} E={net.n_synapses} D={net.max_delay}")
    rows = []

    def kernel_alone(label, mode, i_ext, reps=21):
        # A fresh jit per configuration: the path is read when the handler runs, and a captured command
        # buffer would replay the old launch.
        run = jax.jit(lambda s, i: fused.run_steps(s, net, i, cfg, mode))
        med, mn = timeit(run, st, i_ext, reps=reps)
        _, spk = run(st, i_ext)
        rate = float(np.asarray(spk).mean() * 1000)
        per1k = med * 1e3 * 1000 / i_ext.shape[0]
        rows.append((label, mode, per1k, mn * 1e3 * 1000 / i_ext.shape[0]))
        print(
            f"  {label}: one call of {i_ext.shape[0]} steps, {mode:5s}: {per1k:.3f} ms / 1000 steps "
            f"(min {mn * 1e3 * 1000 / i_ext.shape[0]:.3f}), rate {rate:.1f} Hz"
        )

    window_end = os.environ.get("BENCH_WINDOW_END", "run_driven")
    print(f"window end: {window_end}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

    def window(s, i_win):
        if window_end == "xla":  # the window's end on the synapses as XLA ops (the CPU's path)
            s, spk = fused.run_steps(s, net, i_win, cfg, "rstdp")
            return _end_window(s, _self_benefit_reward(s, cfg), cfg, "rstdp"), spk
        # run_driven's window (the product path): the window's end on the synapses in the fumjax_window_reward
        # kernel where the multi path leaves LTP pending (fused.window_end_in_kernel), else in XLA.
        s, spk, _ = _simulate_rewarded(s, net, i_win, cfg, "rstdp", "fused")
        return s, spk

    def windows_scan(window_fn):
        """(s, i_ext (W * t_win, N)) -> window_fn over the W windows in one lax.scan."""
        return lambda s, i_ext: jax.lax.scan(window_fn, s, i_ext.reshape(-1, t_win, i_ext.shape[1]))

    def bare_call(s, i_win):  # a window's rstdp steps alone, no window end
        return fused.run_steps(s, net, i_win, cfg, "rstdp")

    def learning(label):
        def learn_unrolled(s, i_ext):
            spikes = []
            for w in range(i_ext.shape[0] // t_win):
                s, spk = window(s, i_ext[w * t_win : (w + 1) * t_win])
                spikes.append(spk)
            return s, jnp.concatenate(spikes)

        for name, fn in (("unrolled", learn_unrolled), ("lax.scan", windows_scan(window))):
            med, mn = timeit(jax.jit(fn), st, i_ext, reps=21)
            rows.append((label, f"learning {name}", med * 1e3, mn * 1e3))
            print(
                f"  {label}: full learning (rstdp, end_window + self-benefit reward every {t_win} steps), "
                f"{name}: {med * 1e3:.3f} ms / 1000 steps (min {mn * 1e3:.3f})"
            )

    def fixed_cost(label):
        # A 0-step call: dispatch, XLA's copies of the non-donated state, the launch and the kernel's staging
        # and write-back -- what every call pays besides its steps.
        run = jax.jit(lambda s, i: fused.run_steps(s, net, i, cfg, "rstdp"))
        med, mn = timeit(run, st, i_ext[:0], reps=21)
        rows.append((label, "0-step call (ms)", med * 1e3, mn * 1e3))
        print(f"  {label}: 0-step call (fixed cost per call): {med * 1e3:.3f} ms (min {mn * 1e3:.3f})")
        med, mn = timeit(jax.jit(lambda s: s.v_mV + 1.0), st, reps=21)
        rows.append((label, "jit of v + 1 (ms)", med * 1e3, mn * 1e3))
        print(f"  {label}: a jit of v + 1 (dispatch floor): {med * 1e3:.3f} ms (min {mn * 1e3:.3f})")

    quick = os.environ.get("BENCH_QUICK", "0") == "1"  # A/B runs: kernel alone, off and rstdp

    def learning_long(label):
        # 200 windows (10,000 steps) in one lax.scan: the per-execution cost (dispatch, copies of the
        # non-donated state) spread over 10x the steps of the 1000-step figure. The same 200 rstdp calls
        # without the window's end: against full learning, what the window's end costs; against the one
        # 10,000-step call, what a call of its own per window costs.
        for what, text, window_fn in (
            ("learning 10k lax.scan", "full learning over 10,000 steps (200 windows) in lax.scan", window),
            ("rstdp 200 calls", f"200 rstdp calls of {t_win} steps, no window end, in lax.scan", bare_call),
        ):
            med, mn = timeit(jax.jit(windows_scan(window_fn)), st, i_ext10k, reps=7)
            rows.append((label, what, med * 1e3 / 10, mn * 1e3 / 10))
            print(f"  {label}: {text}: {med * 1e3 / 10:.3f} ms / 1000 steps (min {mn * 1e3 / 10:.3f})")

    for path in paths:
        _set_path(path)
        fixed_cost(path)
        for mode in ("off", "rstdp") if quick else ("off", "stdp", "rstdp"):
            kernel_alone(path, mode, i_ext)
        if quick:
            continue
        kernel_alone(path, "rstdp", i_ext10k, reps=7)
        learning(path)
        learning_long(path)
    if "cluster" in paths and not quick:
        for c, body in sweep:
            _set_path("cluster", c, body)
            kernel_alone(f"cluster C={c} {body}", "rstdp", i_ext)
        _set_path("cluster")
        # Staging cost per call: 20 calls of 50 steps vs one call of 1000 (kernel alone, no end_window).
        med, mn = timeit(jax.jit(windows_scan(bare_call)), st, i_ext, reps=21)
        rows.append(("cluster", "20 calls x 50 steps", med * 1e3, mn * 1e3))
        print(
            f"  cluster: 20 calls x 50 steps in lax.scan (no end_window): {med * 1e3:.3f} ms "
            f"(min {mn * 1e3:.3f})"
        )
    _set_path("auto")

    # Same thing with the reference backend on the GPU (per-step XLA ops), for scale.
    def window_ref(s, i_win):
        s, spk, _ = _simulate_rewarded(s, net, i_win, cfg, "rstdp", "reference")
        return s, spk

    learn_ref = jax.jit(windows_scan(window_ref))

    if os.environ.get("BENCH_REFERENCE", "1") == "1":
        med, mn = timeit(learn_ref, st, i_ext, reps=3)
        print(f"  reference backend on GPU, same full learning: median {med * 1e3:.3f} ms / 1000 steps")
    print("\nsummary (ms per 1000 steps unless noted; median, min):")
    for label, what, med, mn in rows:
        print(f"  {label:20s} {what:22s} {med:8.3f} {mn:8.3f}")


def large(n=100_000, k=100, steps=200):
    t0 = time.perf_counter()
    net = Network.distance_biased(n, k_per_neuron=k, n_workers=16)
    print(f"large: N={n} E={net.n_synapses} built in {time.perf_counter() - t0:.1f} s")
    run = jax.jit(fused.run_steps, static_argnames=("cfg", "mode"))
    # The default drive/coupling runs this network far above 10 Hz: lower g_syn until ~5-10 Hz.
    for g in (2.0, 1.0, 0.5, 0.25):
        cfg = FumConfig().replace(neuron={"n_neurons": n}, connectivity={"k_per_neuron": k, "g_syn_mV": g})
        st = fumjax.init_state(net, cfg)
        i_ext = background_current(st, net, steps, cfg)
        _, spk = run(st, net, i_ext, cfg=cfg, mode="stdp")
        rate = float(np.asarray(spk).mean() * 1000)
        print(f"  g_syn {g}: rate {rate:.1f} Hz (stdp, {steps} steps)")
        if rate <= 10.0:
            break
    for mode in ("off", "stdp", "rstdp"):
        med, mn = timeit(lambda s, i, mode=mode: run(s, net, i, cfg=cfg, mode=mode), st, i_ext, reps=5)
        _, spk = run(st, net, i_ext, cfg=cfg, mode=mode)
        rate = float(np.asarray(spk).mean() * 1000)
        print(
            f"  g_syn {g} {mode:5s}: {med / steps * 1e3:.4f} ms/step (median of 5 x {steps} steps; "
            f"min {mn / steps * 1e3:.4f}) rate {rate:.1f} Hz"
        )


if __name__ == "__main__":
    print(jax.devices(), "path:", os.environ.get("FUMJAX_GPU_RUN_PATH", "auto"))
    what = sys.argv[1:] or ["fum1k", "large"]
    if "fum1k" in what:
        fum1k(paths=tuple(os.environ.get("BENCH_PATHS", "cluster,block").split(",")))
    if "large" in what:
        large()
