"""`fumjax tune`: Bayesian optimization (optuna TPE) of eta, gamma and the SIE weights on a small
reward-learning task, candidates evaluated as vmapped ensembles; trials to JSONL (and optionally optuna
storage), the best config to TOML (never over an existing file without --force). Last line: JSON summary."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from fumjax.config import FumConfig
from fumjax.control.tune import (
    SearchSpace,
    TuneTask,
    config_with,
    evaluate_candidates,
    tune,
    write_config_toml,
)

__all__ = ["add_tune_command"]


def add_tune_command(sub: argparse._SubParsersAction) -> None:
    """Register `fumjax tune` on the CLI's subparsers."""
    p = sub.add_parser(
        "tune", help="Bayesian tuning of eta, gamma and SIE weights (optuna, vmapped ensembles)"
    )
    p.add_argument("--config", help="base TOML config (its values are trial 0, the default to beat)")
    p.add_argument("--trials", type=int, default=48, help="number of trials (default 48)")
    p.add_argument("--batch", type=int, default=8, help="candidates per vmapped ensemble round (default 8)")
    p.add_argument(
        "--objective",
        choices=("accuracy", "reward"),
        default="accuracy",
        help="validation accuracy (default) or mean SIE reward over the last --reward-window items",
    )
    p.add_argument("--reward-window", type=int, default=50, help="items averaged by the reward objective")
    p.add_argument("--classes", default="0,1,2,3", help="digits classes of the task (default 0,1,2,3)")
    p.add_argument("--n-train", type=int, default=300, help="training items (default 300)")
    p.add_argument("--n-val", type=int, default=150, help="validation items (default 150)")
    p.add_argument("--epochs", type=int, default=2, help="passes over the training items (default 2)")
    p.add_argument("--seed", type=int, default=0, help="task and sampler seed (default 0)")
    p.add_argument(
        "--task-seeds", type=int, default=3, help="objective = mean over this many task seeds (default 3)"
    )
    p.add_argument(
        "--confirm-seeds",
        type=int,
        default=2,
        help="re-measure default and best on this many fresh task seeds (default 2; 0 = skip)",
    )
    p.add_argument("--out", default="tuned.toml", help="best config TOML (default tuned.toml)")
    p.add_argument(
        "--trials-out", default="tune_trials.jsonl", help="trials JSONL (default tune_trials.jsonl)"
    )
    p.add_argument("--storage", help="optuna storage URL (e.g. sqlite:///tune.db) to keep the study as well")
    p.add_argument("--force", action="store_true", help="overwrite existing --out and --trials-out files")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out, trials_out = Path(args.out), Path(args.trials_out)
    for f in (out, trials_out):
        if f.exists() and not args.force:
            raise ValueError(f"{f} exists: choose another path or pass --force")
    try:
        classes = tuple(int(c) for c in args.classes.split(","))
    except ValueError:
        raise ValueError(
            f"--classes {args.classes!r}: expected comma-separated digits, e.g. 0,1,2,3"
        ) from None
    base = FumConfig.from_toml(args.config) if args.config else FumConfig()
    task = TuneTask(
        classes=classes,
        n_train=args.n_train,
        n_val=args.n_val,
        epochs=args.epochs,
        objective=args.objective,
        reward_window=args.reward_window,
        n_seeds=args.task_seeds,
        seed=args.seed,
    )
    if trials_out.exists():
        trials_out.unlink()  # --force given
    res = tune(
        task,
        n_trials=args.trials,
        batch=args.batch,
        space=SearchSpace(),
        base=base,
        seed=args.seed,
        trials_path=trials_out,
        storage=args.storage,
        verbose=not args.quiet,
    )
    best_cfg = config_with(base, res["best_params"])
    header = (
        f"fumjax tune: best of {args.trials} trials, objective {args.objective} "
        f"{res['best_objective']:.4f} (default {res['default_objective']:.4f}), seed {args.seed}"
    )
    write_config_toml(out, best_cfg, force=args.force, header=header)
    summary = {
        k: res[k] for k in ("objective", "default_objective", "best_objective", "best_trial", "seconds")
    }
    summary |= {
        "improvement": res["best_objective"] - res["default_objective"],
        "best_params": res["best_params"],
    }
    if args.confirm_seeds > 0:
        step = task.n_seeds  # draws of disjoint task seeds
        fresh = [
            dataclasses.replace(task, seed=args.seed + 1000 + i * step) for i in range(args.confirm_seeds)
        ]
        both = [evaluate_candidates([res["default_params"], res["best_params"]], t, base=base) for t in fresh]
        summary["confirm_default"] = [round(float(b[0]), 4) for b in both]
        summary["confirm_best"] = [round(float(b[1]), 4) for b in both]
    summary |= {"config": str(out), "trials": str(trials_out)}
    if not args.quiet:
        print(f"fumjax tune: {header[13:]}; wrote {out} and {trials_out}")
    print(json.dumps(summary))
    return 0
