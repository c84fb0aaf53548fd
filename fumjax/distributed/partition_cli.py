"""`fumjax partition`: METIS-partition the default distance-biased network and report the cut."""

from __future__ import annotations

import argparse
import json
import os
import time

__all__ = ["add_partition_command", "run_partition"]


def add_partition_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `partition` subcommand (handler in `func`) on the `fumjax` subparsers."""
    p = subparsers.add_parser(
        "partition", help="partition the default distance-biased network with METIS; report cut and balance"
    )
    p.add_argument("--neurons", type=int, required=True, help="number of neurons N")
    p.add_argument("--parts", type=int, required=True, help="number of parts P (1 <= P <= N)")
    p.add_argument("--seed", type=int, default=0, help="seed of the network and of METIS (default 0)")
    p.add_argument("--out", help="write parts and the contiguous renumbering to this .npz file")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--json", action="store_true", help="print only a JSON summary line")
    p.set_defaults(func=run_partition)
    return p


def run_partition(args: argparse.Namespace) -> int:
    """Handler of `fumjax partition`: build, partition, print a summary, optionally save; returns 0.

    Raises ValueError for bad arguments or an existing --out without --force (the CLI prints it, exit 2).
    """
    if args.neurons < 2:
        raise ValueError(f"--neurons = {args.neurons}: must be >= 2")
    if not 1 <= args.parts <= args.neurons:
        raise ValueError(f"--parts = {args.parts}: must be in [1, --neurons = {args.neurons}]")
    if args.seed < 0 or args.seed > 2**32 - 1:
        raise ValueError(f"--seed = {args.seed}: must be in [0, 2**32 - 1]")
    out = args.out
    if out is not None:
        if not out.endswith(".npz"):
            out += ".npz"  # numpy would append it anyway; check the name that will really be written
        if os.path.exists(out) and not args.force:
            raise ValueError(f"--out {out} already exists; pass --force to overwrite it")
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            raise ValueError(f"--out {out}: directory {parent} does not exist")

    import numpy as np

    from fumjax import build_network
    from fumjax.config import FumConfig
    from fumjax.distributed.partition import partition, renumbering

    cfg = FumConfig().replace(neuron={"n_neurons": args.neurons}, run={"seed": args.seed})
    t0 = time.perf_counter()
    net = build_network(cfg)
    t1 = time.perf_counter()
    part = partition(net, args.parts, seed=args.seed)
    t2 = time.perf_counter()
    summary = {
        "neurons": net.n_neurons,
        "synapses": net.n_synapses,
        "parts": part.n_parts,
        "seed": args.seed,
        "cut_fraction": part.cut_fraction,
        "balance": part.balance,
        "part_sizes": [int(s) for s in part.sizes],
        "build_s": round(t1 - t0, 3),
        "partition_s": round(t2 - t1, 3),
    }
    if out is not None:
        new_of_old, old_of_new = renumbering(part)
        np.savez(
            out,
            parts=part.parts,
            new_of_old=new_of_old,
            old_of_new=old_of_new,
            part_sizes=part.sizes,
            cut_fraction=np.float64(part.cut_fraction),
            balance=np.float64(part.balance),
        )
        summary["out"] = out
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"network: {net.n_neurons} neurons, {net.n_synapses} synapses")
        print(f"build time: {summary['build_s']} s")
        print(f"parts: {part.n_parts}  sizes: {summary['part_sizes']}")
        print(f"cut fraction: {part.cut_fraction:.4f}  balance: {part.balance:.4f}")
        print(f"partition time: {summary['partition_s']} s")
        if out is not None:
            print(f"wrote {out} (parts, new_of_old, old_of_new, part_sizes)")
    return 0
