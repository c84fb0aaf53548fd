"""Time a window's end alone: `dynamics._end_window` with the reference backend (XLA ops) against the fused
one (`fumjax_window_end`, C++), side by side in one process.

    taskset -c 0 python bench/bench_window_end.py --neurons 1000,10000 --modes rstdp,stdp

The default network of FumConfig at each size (K = 50), 200 window ends in one jitted lax.scan, each with
the self-benefit reward of the state (as run_driven computes it) and 50 more steps since the last
renormalization. Reports us per window end: the median of --repeats runs, per round, rounds alternating the
backends. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--neurons", default="1000,10000")
    p.add_argument("--k", type=int, default=50, help="presynaptic partners per neuron")
    p.add_argument("--modes", default="rstdp")
    p.add_argument("--windows", type=int, default=200)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    import jax
    import jax.numpy as jnp

    import fumjax
    from fumjax import FumConfig
    from fumjax.dynamics import _end_window, _self_benefit_reward

    rows = []
    for n in map(int, args.neurons.split(",")):
        cfg = FumConfig().replace(neuron={"n_neurons": n}, connectivity={"k_per_neuron": args.k})
        net = fumjax.build_network(cfg)
        st = fumjax.init_state(net, cfg)
        st = st.replace(elig=jnp.full_like(st.elig, 0.01), step=st.step + cfg.run.window_steps)
        for mode in args.modes.split(","):
            fns = {}
            for backend in ("reference", "fused"):

                def one(c, _, b=backend, m=mode, g=cfg):
                    c = c.replace(step=c.step + g.run.window_steps)
                    return _end_window(c, _self_benefit_reward(c, g), g, m, b), None

                fns[backend] = jax.jit(lambda s, f=one: jax.lax.scan(f, s, None, length=args.windows)[0])
                jax.block_until_ready(fns[backend](st))
            per = {b: [] for b in fns}
            for _ in range(args.rounds):
                for backend, f in fns.items():
                    ts = []
                    for _ in range(args.repeats):
                        t0 = time.process_time()
                        jax.block_until_ready(f(st))
                        ts.append(time.process_time() - t0)
                    per[backend].append(statistics.median(ts) / args.windows * 1e6)
            row = {
                "neurons": n,
                "synapses": net.n_synapses,
                "mode": mode,
                "reference_us": per["reference"],
                "fused_us": per["fused"],
                "ratio": statistics.median(per["reference"]) / statistics.median(per["fused"]),
            }
            rows.append(row)
            ref_us, fused_us = statistics.median(per["reference"]), statistics.median(per["fused"])
            print(
                f"N={n:6d} E={net.n_synapses:8d} {mode:5s}: window end reference {ref_us:8.2f} us, "
                f"fused {fused_us:8.2f} us "
                f"(rounds {', '.join(f'{x:.1f}' for x in per['reference'])} / "
                f"{', '.join(f'{x:.1f}' for x in per['fused'])}), reference / fused = {row['ratio']:.2f}x",
                flush=True,
            )
    print(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "load": os.getloadavg(), "rows": rows}))


if __name__ == "__main__":
    main()
