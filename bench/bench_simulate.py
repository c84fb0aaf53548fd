"""Time `fumjax simulate` (10 s of model time by default): median of several warm runs, one process each.

    python bench/bench_simulate.py --neurons 1000 --steps 10000 --repeats 3 --backend reference

Prints one line per configuration and a final JSON line; wall time excludes network build and compile.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time


def run_once(neurons: int, steps: int, backend: str, plasticity: bool) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "fumjax.cli",
        "simulate",
        "--json",
        f"--neurons={neurons}",
        f"--steps={steps}",
        f"--backend={backend}",
        "--plasticity" if plasticity else "--no-plasticity",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--neurons", type=int, default=1000)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default="reference")
    args = p.parse_args()
    results = {}
    for plasticity in (False, True):
        runs = [run_once(args.neurons, args.steps, args.backend, plasticity) for _ in range(args.repeats)]
        key = "plastic" if plasticity else "static"
        walls = [r["wall_s"] for r in runs]
        results[key] = {
            "median_wall_s": statistics.median(walls),
            "walls": walls,
            "mean_rate_hz": runs[-1]["mean_rate_hz"],
            "synapses": runs[-1]["synapses"],
        }
        print(
            f"{key:8s} N={args.neurons} steps={args.steps} backend={args.backend}: "
            f"median {statistics.median(walls):.3f} s of {walls}, rate {runs[-1]['mean_rate_hz']:.2f} Hz"
        )
    print(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                **vars(args),
                **results,
            }
        )
    )


if __name__ == "__main__":
    main()
