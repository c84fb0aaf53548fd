"""Reward-only learning on scikit-learn digits with fumjax's R-STDP engine; prints one JSON object.

    python bench/bench_digits.py [--epochs 10] [--seeds 0 1 2]

Labels enter only through the reward; test accuracy is on the fixed stratified 25% split (random_state=0) with
weights and thresholds frozen. The recipe is fumjax.train.digits.DEFAULT_RECIPE / DEFAULT_CONFIG.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time

from fumjax.train.digits import default_config, default_recipe, train_digits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    recipe, cfg = default_recipe(), default_config()
    epochs = args.epochs or recipe_epochs()
    runs = []
    t0 = time.perf_counter()
    for seed in args.seeds:
        r = train_digits(cfg, epochs=epochs, seed=seed, recipe=recipe)
        runs.append(
            {
                "seed": seed,
                "test_accuracy": r["test_accuracy"],
                "initial_test_accuracy": r["initial_test_accuracy"],
                "test_accuracy_per_epoch": r["test_accuracy_per_epoch"],
                "train_online_accuracy_per_epoch": r["train_online_accuracy_per_epoch"],
                "epoch_seconds": [round(s, 2) for s in r["epoch_seconds"]],
                "total_seconds": round(r["total_seconds"], 1),
            }
        )
        print(f"seed {seed}: test {r['test_accuracy']:.4f}", file=sys.stderr, flush=True)
    out = {
        "benchmark": "digits reward-only R-STDP readout",
        "runs": runs,
        "mean_test_accuracy": sum(r["test_accuracy"] for r in runs) / len(runs),
        "epochs": epochs,
        "n_synapses": r["n_synapses"],
        "recipe": r["recipe"],
        "config": {k: r["config"][k] for k in ("neuron", "connectivity", "stdp", "plasticity", "run")},
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": {
            "node": platform.node(),
            "cpu": platform.processor() or platform.machine(),
            "cpus_available": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
    }
    print(json.dumps(out, indent=1))


def recipe_epochs() -> int:
    from fumjax.train.digits import DEFAULT_EPOCHS

    return DEFAULT_EPOCHS


if __name__ == "__main__":
    main()
