"""Time the fused CPU whole-run kernel alone (fused.run_steps) on the peer-bench recipe networks.

    python bench/bench_fused_cpu.py --neurons 1000,10000 --modes off,stdp,rstdp --threads 1,2 --dtypes float32

One process; the FUM recipe network and input of bench/bench_peers.py (identical arrays), 10,000 steps in
one call, input current precomputed, excitatory presynaptic neurons plastic. Reports CPU and wall seconds
(median of --repeats after one warm-up), rates, and a per-step estimate of the work (spikes, synapse
events, bytes touched). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import A_MINUS, A_PLUS, G_SYN, TAU_STDP, W_MAX, build_problem, external_current  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--neurons", default="1000,10000")
    p.add_argument("--modes", default="off,stdp,rstdp")
    p.add_argument("--threads", default="1")
    p.add_argument("--dtypes", default="float32")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import jax

    import fumjax
    from fumjax import FumConfig, Network
    from fumjax.kernels import fused

    rows = []
    for n in map(int, args.neurons.split(",")):
        prob = build_problem(n, args.steps, seed=0)
        i_ext = jax.device_put(external_current(prob))
        exc = prob["exc"]
        net = Network.from_arrays(
            prob["pre"], prob["post"], prob["w"], prob["tau"], prob["v_th"], exc, plastic_pre=exc
        )
        for dtype in args.dtypes.split(","):
            cfg = FumConfig().replace(
                neuron={"n_neurons": n, "v_rest_mV": -70.0, "v_reset_mV": -70.0, "refractory_steps": 0},
                connectivity={"g_syn_mV": G_SYN, "w_clip": W_MAX, "delay_steps": 1},
                stdp={
                    "a_plus": A_PLUS,
                    "a_minus": A_MINUS,
                    "tau_plus_ms": TAU_STDP,
                    "tau_minus_ms": TAU_STDP,
                },
                run={"dtype": dtype},
            )
            for mode in args.modes.split(","):
                for threads in map(int, args.threads.split(",")):
                    f = jax.jit(
                        lambda s, i, m=mode, c=cfg, t=threads, g=net: fused.run_steps(
                            s, g, i, c, m, threads=t
                        )
                    )
                    state = fumjax.init_state(net, cfg)
                    jax.block_until_ready(f(state, i_ext))
                    walls, cpus = [], []
                    for _ in range(args.repeats):
                        state = jax.block_until_ready(fumjax.init_state(net, cfg))
                        t0, c0 = time.perf_counter(), time.process_time()
                        out, spikes = jax.block_until_ready(f(state, i_ext))
                        walls.append(time.perf_counter() - t0)
                        cpus.append(time.process_time() - c0)
                    n_spk = int(np.asarray(spikes, np.int64).sum())
                    row = {
                        "neurons": n,
                        "synapses": net.n_synapses,
                        "dtype": dtype,
                        "mode": mode,
                        "threads": threads,
                        "median_wall_s": statistics.median(walls),
                        "median_cpu_s": statistics.median(cpus),
                        "walls": walls,
                        "rate_hz": n_spk / n / (args.steps * 1e-3),
                        "us_per_step": statistics.median(walls) / args.steps * 1e6,
                        "synapse_events_per_step": n_spk / args.steps * net.n_synapses / n,
                        "bytes_per_synapse": fused.bytes_per_synapse(net, cfg, mode)["total"],
                    }
                    rows.append(row)
                    print(
                        f"N={n:6d} {dtype:8s} {mode:5s} threads={threads}: "
                        f"wall {row['median_wall_s'] * 1e3:8.2f} ms"
                        f" (cpu {row['median_cpu_s'] * 1e3:8.2f}) = {row['us_per_step']:.2f} us/step,"
                        f" {row['rate_hz']:.2f} Hz, {row['synapse_events_per_step']:.0f} syn events/step,"
                        f" {row['bytes_per_synapse']:.2f} B/syn",
                        flush=True,
                    )
    print(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "load": os.getloadavg(), "rows": rows}))


if __name__ == "__main__":
    main()
