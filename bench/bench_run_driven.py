"""Time a user's learning run: `fumjax.run_driven` (each window: the Poisson drive, one fused call of the
window's steps, the SIE self-benefit reward and the window's end), after one warm-up run.

    taskset -c 0 python bench/bench_run_driven.py --neurons 1000,10000 --k 50 --modes stdp,rstdp

The default network of FumConfig at each size (K presynaptic partners per neuron), --windows windows of the
config's window length (default 200 x 50 steps = 10 s of model time). Reports the median wall and CPU
seconds of --repeats runs and the per-window cost. The last line is JSON. To compare two builds of the
extension side by side, install one with `pip install --no-build-isolation --target DIR .` and alternate
runs with and without `PYTHONPATH=DIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--neurons", default="1000")
    p.add_argument("--k", type=int, default=50, help="presynaptic partners per neuron")
    p.add_argument("--modes", default="rstdp")
    p.add_argument("--backend", default="fused", choices=("fused", "reference"))
    p.add_argument("--windows", type=int, default=200)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()

    import jax

    import fumjax
    from fumjax import FumConfig

    rows = []
    for n in map(int, args.neurons.split(",")):
        cfg = FumConfig().replace(neuron={"n_neurons": n}, connectivity={"k_per_neuron": args.k})
        net = fumjax.build_network(cfg)
        for mode in args.modes.split(","):
            state = fumjax.init_state(net, cfg)

            def run(s=state, g=net, c=cfg, m=mode):
                out = fumjax.run_driven(s, g, args.windows, config=c, plasticity=m, backend=args.backend)
                return jax.block_until_ready(out)

            _, counts, _ = run()
            walls, cpus = [], []
            for _ in range(args.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                run()
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            steps = args.windows * cfg.run.window_steps
            row = {
                "neurons": n,
                "synapses": net.n_synapses,
                "mode": mode,
                "backend": args.backend,
                "windows": args.windows,
                "steps": steps,
                "median_wall_s": statistics.median(walls),
                "median_cpu_s": statistics.median(cpus),
                "walls": walls,
                "us_per_window": statistics.median(walls) / args.windows * 1e6,
                "rate_hz": float(counts.sum()) / n / (steps * cfg.neuron.dt_ms * 1e-3),
            }
            rows.append(row)
            print(
                f"N={n:6d} K={args.k} {mode:5s} {args.backend}: wall {row['median_wall_s'] * 1e3:8.2f} ms"
                f" (cpu {row['median_cpu_s'] * 1e3:8.2f}) for {steps} steps, {row['us_per_window']:.0f} us"
                f" per window, {row['rate_hz']:.2f} Hz",
                flush=True,
            )
    print(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "load": os.getloadavg(), "rows": rows}))


if __name__ == "__main__":
    main()
