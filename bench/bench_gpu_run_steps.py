"""GPU whole-run kernel timings (fused.run_steps on CUDA): FUM-1k with learning, kernel alone, 100k x 100.

Run on a GPU machine after `pip install --no-build-isolation .`:  python bench/bench_gpu_run_steps.py
Timings: wall clock around block_until_ready, after warm-up; median of repeats.
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
from fumjax import FumConfig, sie
from fumjax.dynamics import _end_window, _simulate, background_current, running_rate_hz
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


def fum1k():
    cfg = FumConfig()  # N = 1000, K = 50, window 50 steps, rstdp
    net = fumjax.build_network(cfg)
    st = fumjax.init_state(net, cfg)
    i_ext = background_current(st, net, 1000, cfg)
    t_win = cfg.run.window_steps
    print(f"FUM-1k: N={net.n_neurons} E={net.n_synapses} D={net.max_delay}")

    run = jax.jit(fused.run_steps, static_argnames=("cfg", "mode"))
    for mode in ("off", "stdp", "rstdp"):
        med, mn = timeit(lambda s, i, mode=mode: run(s, net, i, cfg=cfg, mode=mode), st, i_ext)
        _, spk = run(st, net, i_ext, cfg=cfg, mode=mode)
        rate = float(np.asarray(spk).mean() * 1000)
        print(
            f"  kernel alone, one call of 1000 steps, {mode:5s}: median {med * 1e3:.3f} ms "
            f"(min {mn * 1e3:.3f}) "
            f"rate {rate:.1f} Hz"
        )

    def window(s, i_win):
        s, spk = fused.run_steps(s, net, i_win, cfg, "rstdp")
        rates = running_rate_hz(s, cfg)
        reward = cfg.sie.w_self_benefit * sie.self_benefit(rates, target_var=cfg.sie.target_rate_var)
        return _end_window(s, reward, cfg, "rstdp"), spk

    @jax.jit
    def learn_unrolled(s, i_ext):
        spikes = []
        for w in range(i_ext.shape[0] // t_win):
            s, spk = window(s, i_ext[w * t_win : (w + 1) * t_win])
            spikes.append(spk)
        return s, jnp.concatenate(spikes)

    @jax.jit
    def learn_scan(s, i_ext):
        return jax.lax.scan(window, s, i_ext.reshape(-1, t_win, i_ext.shape[1]))

    for name, fn in (("unrolled", learn_unrolled), ("lax.scan", learn_scan)):
        med, mn = timeit(fn, st, i_ext)
        print(
            f"  full learning (rstdp, end_window + self-benefit reward every {t_win} steps), {name}: "
            f"median {med * 1e3:.3f} ms / 1000 steps (min {mn * 1e3:.3f})"
        )

    # Same thing with the reference backend on the GPU (per-step XLA ops), for scale.
    @jax.jit
    def learn_ref(s, i_ext):
        def win(s, i_win):
            s, spk = _simulate(s, net, i_win, cfg, "rstdp", "reference")
            rates = running_rate_hz(s, cfg)
            reward = cfg.sie.w_self_benefit * sie.self_benefit(rates, target_var=cfg.sie.target_rate_var)
            return _end_window(s, reward, cfg, "rstdp"), spk

        return jax.lax.scan(win, s, i_ext.reshape(-1, t_win, i_ext.shape[1]))

    med, mn = timeit(learn_ref, st, i_ext, reps=3)
    print(f"  reference backend on GPU, same full learning: median {med * 1e3:.3f} ms / 1000 steps")


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
        fum1k()
    if "large" in what:
        large()
