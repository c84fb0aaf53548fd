"""Benchmark the numpy build of a distance-biased network: graph sampling, then parameter/weight assembly.

Usage: python bench/bench_network_build.py --neurons 7000000 --k 100 [--sigma 5] [--seed 0] [--workers 2]
Prints a human-readable summary and, last, one JSON line. Peak RSS is the process high-water mark
(resource.getrusage ru_maxrss), so it includes everything built so far.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fumjax.network import initial_weights, neuron_parameters, sample_distance_graph  # noqa: E402


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far, GiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark and return the result record (also printed as the final JSON line)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--sigma", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    rss0 = peak_rss_gib()
    t0 = time.perf_counter()
    pre, post = sample_distance_graph(
        args.neurons, args.k, sigma_grid=args.sigma, seed=args.seed, n_workers=args.workers
    )
    t_graph = time.perf_counter() - t0
    rss_graph = peak_rss_gib()

    t0 = time.perf_counter()
    exc, tau, v_th = neuron_parameters(args.neurons, seed=args.seed)
    w0 = initial_weights(pre, exc, seed=args.seed)
    delay = np.ones(pre.shape[0], dtype=np.int32)
    row_ptr = np.zeros(args.neurons + 1, dtype=np.int64)
    np.cumsum(np.bincount(pre, minlength=args.neurons), out=row_ptr[1:])
    t_params = time.perf_counter() - t0
    rss_all = peak_rss_gib()

    e = int(pre.shape[0])
    syn_bytes = pre.nbytes + post.nbytes + w0.nbytes + delay.nbytes
    rec: dict[str, object] = {
        "bench": "network_build",
        "neurons": args.neurons,
        "k": args.k,
        "sigma": args.sigma,
        "seed": args.seed,
        "workers": args.workers,
        "synapses": e,
        "graph_s": round(t_graph, 2),
        "params_s": round(t_params, 2),
        "total_s": round(t_graph + t_params, 2),
        "graph_synapses_per_s": round(e / t_graph),
        "peak_rss_gib_start": round(rss0, 3),
        "peak_rss_gib_after_graph": round(rss_graph, 3),
        "peak_rss_gib": round(rss_all, 3),
        "peak_rss_bytes_per_synapse": round(rss_all * 2**30 / e, 2),
        "array_bytes_per_synapse": round(syn_bytes / e, 2),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    print(
        f"N={args.neurons:,} K={args.k}: {e:,} synapses; graph {t_graph:.1f} s, params {t_params:.1f} s; "
        f"peak RSS {rss_all:.2f} GiB ({rec['peak_rss_bytes_per_synapse']} B/synapse; "
        f"arrays pre/post/w0/delay {rec['array_bytes_per_synapse']} B/synapse)"
    )
    print(json.dumps(rec))
    return rec


if __name__ == "__main__":
    main()
