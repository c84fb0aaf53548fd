"""Time fumjax.compact.build_compact by phase (issue 5): sampling, CSR/in_syn, device put, weights.

    python bench/bench_compact_build.py --neurons 1000000 --k 100            # CPU here
    python bench/bench_compact_build.py --neurons 7000000 --k 500 --dtype bfloat16   # H200

Phases (build_compact's timings): plan (truncation radius, neuron parameters), sample (per post block:
keys over the window, K smallest -> (N, K) offsets on the host), csr (per pre block: stable sort of the post
window by pre -> post, row_ptr, in_syn on the host), put (post and in_syn to the device); then weights
(init_state: w drawn on the device in --dtype, eligibility zeroed). --numpy also times
network.sample_distance_graph at the same size for comparison.
The last line is a JSON record (with the load average: timings on a shared machine are noisy).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import jax

from fumjax import compact
from fumjax.config import FumConfig
from fumjax.network import sample_distance_graph
from fumjax.state import init_state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--neurons", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--tail-tol", type=float, default=1e-4)
    p.add_argument("--numpy", action="store_true", help="also time the numpy sampler (regular Network)")
    a = p.parse_args()
    n, k = a.neurons, a.k
    rec: dict = {"neurons": n, "k": k, "platform": jax.devices()[0].platform, "load_avg": os.getloadavg()}
    plan = compact.build_plan(n, k, tail_tol=a.tail_tol)
    rec["plan"] = {
        f: getattr(plan, f) for f in ("radius", "exact", "n_offsets", "halo", "pre_block", "sample_block")
    }
    print(f"plan {plan}", flush=True)
    phases: dict[str, float] = {}
    t = time.perf_counter()
    net = compact.build_compact(n, k, tail_tol=a.tail_tol, timings=phases)
    rec["build_s"] = time.perf_counter() - t
    rec.update({f"{name}_s": v for name, v in phases.items()})
    print(f"build {rec['build_s']:.1f} s: {phases}", flush=True)
    cfg = FumConfig().replace(run={"dtype": a.dtype})
    t = time.perf_counter()
    jax.block_until_ready(init_state(net, cfg))
    rec["weights_s"] = time.perf_counter() - t
    stats = jax.devices()[0].memory_stats() or {}
    rec["peak_bytes"] = stats.get("peak_bytes_in_use")
    if a.numpy:
        t = time.perf_counter()
        sample_distance_graph(n, k, seed=0)
        rec["numpy_sampler_s"] = time.perf_counter() - t
    rec["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rec["load_avg_end"] = os.getloadavg()
    print(json.dumps(rec, default=float), flush=True)


if __name__ == "__main__":
    main()
