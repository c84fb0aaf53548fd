"""METIS partition of the default distance-biased network: cut fraction, balance, time. Prints JSON lines.

Usage: python bench/bench_partition.py [--neurons 100000] [--parts 2 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fumjax import build_network
from fumjax.config import FumConfig
from fumjax.distributed.partition import partition, partition_from_parts, split, symmetric_adjacency
from fumjax.network import grid_positions, grid_side


def grid_blocks(n: int, n_parts: int) -> np.ndarray:
    """Geometric baseline: 2 -> halves, 4 -> quadrants of the neuron grid; otherwise vertical strips (N,)."""
    xy = grid_positions(n)
    side = grid_side(n)
    if n_parts == 4:
        return (xy[:, 0] >= side // 2).astype(np.int32) + 2 * (xy[:, 1] >= side // 2).astype(np.int32)
    return np.minimum(xy[:, 0] * n_parts // side, n_parts - 1).astype(np.int32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--neurons", type=int, default=100_000)
    ap.add_argument("--parts", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = FumConfig().replace(neuron={"n_neurons": args.neurons}, run={"seed": args.seed})
    t0 = time.perf_counter()
    net = build_network(cfg)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, adjncy, _ = symmetric_adjacency(net)
    adjacency_s = time.perf_counter() - t0
    for p in args.parts:
        t0 = time.perf_counter()
        part = partition(net, p, seed=args.seed)
        part_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        split(net, part)
        split_s = time.perf_counter() - t0
        baseline = partition_from_parts(net, grid_blocks(net.n_neurons, p), p)
        print(
            json.dumps(
                {
                    "neurons": net.n_neurons,
                    "synapses": net.n_synapses,
                    "k": cfg.k_per_neuron,
                    "undirected_edges": int(adjncy.shape[0] // 2),
                    "parts": p,
                    "cut_fraction": round(part.cut_fraction, 6),
                    "balance": round(part.balance, 6),
                    "part_sizes": [int(s) for s in part.sizes],
                    "grid_block_cut_fraction": round(baseline.cut_fraction, 6),
                    "build_s": round(build_s, 3),
                    "adjacency_s": round(adjacency_s, 3),
                    "partition_s": round(part_s, 3),
                    "split_s": round(split_s, 3),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
