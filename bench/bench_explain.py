"""Train the reward-only digits readout briefly, snapshot it for `fumjax explain`, and explain test items.

    python bench/bench_explain.py --epochs 3 --out bench/explain_digits

Writes OUT/ckpt-*.npz (explainable snapshot) and OUT/item<IDX>.json/.png for the first correctly classified
test item, and prints per item (the first --items): target, prediction, the traced pathway (input channel ->
output neuron), whether the pathway's output neuron belongs to the target's population, and whether its
input channel is the "on" channel of a pixel >= 0.5 or the "off" channel of a pixel < 0.5 (the channel with
the higher rate); then one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from fumjax.cli import main as fumjax_main
from fumjax.control.explain_cli import explain_checkpoint, save_explainable
from fumjax.train import digits


def run(epochs: int, out: Path, items: int, seed: int) -> dict:
    recipe, cfg = digits.default_recipe(), digits.default_config(seed)
    recipe = dataclasses.replace(recipe, anneal_epochs=min(recipe.anneal_epochs, max(epochs - 1, 0)))
    x_tr, x_te, y_tr, y_te = digits.load_digits_split()
    t0 = time.perf_counter()
    h = digits.train_readout(x_tr, y_tr, x_te, y_te, config=cfg, recipe=recipe, epochs=epochs, seed=seed)
    train_s = time.perf_counter() - t0
    net = h["network"]
    _, pop = digits.build_readout_network(128, 10, recipe, seed)
    enc = {
        "n_in": 128,
        "p_max": recipe.p_max,
        "in_amp_mV": recipe.in_amp_mV,
        "encoding": recipe.encoding,
        "seed": 12345,
    }
    ckpt = save_explainable(
        out, net, h["final_state"], pop, config=cfg.replace(run={"seed": seed}), encoding=enc, step=epochs
    )
    rows = []
    for idx in range(items):
        ex, info = explain_checkpoint(ckpt, f"digits:{idx}")
        pw = ex.pathway
        row = {"item": idx, "target": info["target"], "prediction": ex.prediction, "pathway": pw}
        if pw:
            src, dst = pw[0], pw[-1]
            pixel, on = src % 64, src < 64
            row["output_in_target_population"] = bool(pop[dst] == info["target"])
            row["source"] = f"{'on' if on else 'off'} channel of pixel {pixel} (value {x_te[idx][pixel]:.2f})"
            row["source_consistent"] = bool((x_te[idx][pixel] >= 0.5) == on)
        rows.append(row)
        print(json.dumps(row))
    first_correct = next((r["item"] for r in rows if r["prediction"] == r["target"]), None)
    if first_correct is not None:
        fumjax_main(
            [
                "explain",
                str(ckpt),
                f"digits:{first_correct}",
                "--out",
                str(out / f"item{first_correct}"),
                "--force",
            ]
        )
    correct = [r for r in rows if r["prediction"] == r["target"] and r["pathway"]]
    return {
        "epochs": epochs,
        "test_accuracy": h["test_accuracy"][-1],
        "train_seconds": round(train_s, 1),
        "items": items,
        "correct_with_pathway": len(correct),
        "pathway_output_in_target_population": sum(r["output_in_target_population"] for r in correct),
        "pathway_source_consistent": sum(r["source_consistent"] for r in correct),
        "first_correct_item": first_correct,
        "checkpoint": str(ckpt),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/explain_digits")
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty: choose another --out")
    print(json.dumps(run(a.epochs, out, a.items, a.seed)))
