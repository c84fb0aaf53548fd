"""`fumjax train`: phases 1-3 on the built-in or a JSONL corpus, with progress, metrics, plots, summary.

Everything given is validated (config, corpus, checkpoint) before anything is written. Outputs in --out:
metrics.jsonl (one record per window, "type": "window", and per unit, "type": "unit"), plots/*.png,
summary.json. The last line of stdout is the JSON summary (validation accuracy per domain, ...).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["add_train_command"]


def add_train_command(sub) -> argparse.ArgumentParser:
    """Register the `train` subcommand's arguments on an argparse subparsers object; returns its parser
    (fumjax.cli binds the command to one process or, with --distributed, to fumjax.distributed.mpi_train)."""
    t = sub.add_parser("train", help="train by reward only through FUM phases 1-3 (built-in 8-domain corpus)")
    t.add_argument("--phases", help="phases to run, e.g. 1,2 or 1,2,3 (default: config, else 1,2,3)")
    t.add_argument("--corpus", help="JSONL corpus (one {domain, input, target} per line); default built-in")
    t.add_argument("--config", help="TOML: [train] settings and FumConfig sections")
    t.add_argument("--seed", type=int, default=0, help="seed of corpus split, network, schedule (default 0)")
    t.add_argument("--holdout-domain", help="domain kept out of phases 1-2 and streamed unlabeled in phase 3")
    t.add_argument("--checkpoint-dir", help="save the trainer state after every unit here (default OUT/ckpt)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    t.add_argument("--out", help="output directory (default ./fumjax-train-<date-time>)")
    t.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--distributed",
        action="store_true",
        help="under mpirun: the network split over the MPI ranks (exact; rank 0 writes the outputs)",
    )
    t.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="--distributed: seconds to wait for a rank before aborting",
    )
    return t


def _prepare(args: argparse.Namespace):
    """Validate every input; returns (corpus, settings, cfg, out, ckpt). Writes nothing."""
    import dataclasses

    from fumjax.config import ConfigError
    from fumjax.train import phases
    from fumjax.train.checkpoint import CheckpointError, latest_checkpoint
    from fumjax.train.corpus import builtin_corpus, load_jsonl

    if args.seed < 0 or args.seed >= 2**32:
        raise ConfigError(f"--seed = {args.seed}: must be in [0, 2**32)")
    settings, cfg = phases.load_settings(args.config, seed=args.seed)
    over = {}
    if args.phases is not None:
        over["phases"] = args.phases
    if args.holdout_domain is not None:
        over["holdout_domain"] = args.holdout_domain
    if over:
        settings = phases.TrainSettings(**{**dataclasses.asdict(settings), **over})
    corpus = (
        load_jsonl(args.corpus)
        if args.corpus
        else builtin_corpus(items_per_domain=settings.items_per_domain, seed=args.seed)
    )
    phases.validate_corpus(corpus, settings)
    out = Path(args.out) if args.out else Path(f"fumjax-train-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else out / "ckpt"
    if args.resume:
        if latest_checkpoint(ckpt) is None:
            raise CheckpointError(f"--resume: no checkpoint in {ckpt}")
    else:
        if (out / "metrics.jsonl").exists() or (out / "summary.json").exists():
            raise ConfigError(f"{out} already holds a run: choose another --out, or --resume it")
        if latest_checkpoint(ckpt) is not None:
            raise CheckpointError(f"{ckpt} already holds checkpoints: choose another directory, or --resume")
    return corpus, settings, cfg, out, ckpt


def run_train(args: argparse.Namespace, engine=None) -> int:
    """`fumjax train`; engine: a `fumjax.distributed.mpi_train.MpiTrainEngine` under mpirun (rank 0 writes
    metrics, plots and summary; the summary adds per-rank step times and exchange shares), else None."""
    t_start = time.perf_counter()
    corpus, settings, cfg, out, ckpt = _prepare(args)
    writer = engine is None or engine.rank == 0
    if engine is not None:  # every rank validated the inputs before rank 0 writes anything
        engine.ex.barrier("validating the inputs", timeout_s=max(engine.timeout_s, 600.0))

    import numpy as np

    from fumjax.train import phases
    from fumjax.train.checkpoint import latest_checkpoint

    units = phases.schedule(
        corpus.split(val_fraction=settings.val_fraction, seed=args.seed)[0], settings, args.seed
    )
    done_units = 0
    if args.resume:  # verify the checkpoint in full before touching the outputs
        done_units = phases.resume_point(corpus, settings, cfg, seed=args.seed, checkpoint_dir=ckpt)
    metrics_path = out / "metrics.jsonl"
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        _trim_metrics(metrics_path, done_units)
    windows: list[dict] = []
    total = sum(u.items.size for u in units)
    done = sum(u.items.size for u in units[:done_units])
    bar = None
    if writer and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=done, unit="win", file=sys.stderr, dynamic_ncols=True, desc="train")
    state = {"unit_index": done_units, "acc": [], "pending": []}

    def on_window(rec: dict) -> None:
        rec = {"type": "window", "unit_index": state["unit_index"], **rec}
        windows.append(rec)
        state["pending"].append(rec)
        state["acc"].append(rec["correct"])
        if bar is not None:
            bar.update(1)
            if len(state["acc"]) % 20 == 0:
                a = np.mean(state["acc"][-200:])
                bar.set_postfix(
                    phase=rec["phase"], acc=f"{a:.3f}", reward=f"{rec['reward']:+.3f}", refresh=False
                )

    def on_unit(rec: dict) -> None:
        rec = {"type": "unit", "unit_index": state["unit_index"], **rec}
        if writer:
            with metrics_path.open("a") as fh:
                for w in state["pending"]:
                    fh.write(json.dumps(w) + "\n")
                fh.write(json.dumps(rec) + "\n")
        state["pending"] = []
        state["unit_index"] += 1
        if bar is not None and "val_accuracy" in rec:
            bar.write(f"{rec['unit']}: validation accuracy {rec['val_accuracy']:.3f}")

    res = phases.train(
        corpus,
        settings,
        cfg,
        seed=args.seed,
        checkpoint_dir=ckpt,
        resume=args.resume,
        on_window=on_window,
        on_unit=on_unit,
        engine=None if engine is None else engine.engine(),
    )
    if bar is not None:
        bar.close()
    distributed = {} if engine is None else engine.summary()
    if not writer:
        return 0
    all_windows = _read_windows(metrics_path)
    plot_paths = [] if args.no_plots else _plots(out / "plots", res, corpus, cfg, all_windows)
    vap = res["val_after_phase"]
    summary = {
        "val_accuracy": res["val"]["accuracy"],
        "val_per_domain": res["val"]["per_domain"],
        "val_accuracy_after_phase": {p: v["val_accuracy"] for p, v in vap.items()},
        "phases": settings.phases,
        "holdout_domain": settings.holdout_domain or None,
        "windows": int(res["trainer"].n_windows),
        "alive_outputs": int(np.count_nonzero(np.asarray(res["trainer"].alive)[res["spec"].n_in :])),
        "seed": args.seed,
        "wall_s": round(time.perf_counter() - t_start, 2),
        "out": str(out),
        "metrics": str(metrics_path),
        "checkpoint": str(latest_checkpoint(ckpt)),
        "plots": [str(p) for p in plot_paths],
    }
    summary.update(distributed)
    if "val_new_domain" in res:
        summary["new_domain"] = res["val_new_domain"]
    if "2" in vap and "3" in vap:
        summary["retention"] = vap["3"]["val_accuracy"] / max(vap["2"]["val_accuracy"], 1e-12)
    tmp = out / f".summary.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "summary.json")
    ranks = ""
    if distributed.get("step_ms_per_rank"):
        per_rank = zip(distributed["step_ms_per_rank"], distributed["exchange_share_per_rank"], strict=True)
        ranks = "; " + ", ".join(
            f"rank {q} {ms:.3f} ms/step ({100 * share:.1f}% exchange)"
            for q, (ms, share) in enumerate(per_rank)
        )
    print(
        f"fumjax train: {summary['windows']} windows, validation accuracy {summary['val_accuracy']:.3f}, "
        f"{summary['wall_s']:.1f} s; metrics {metrics_path}{ranks}"
    )
    print(json.dumps(summary))
    return 0


def _trim_metrics(path: Path, units_done: int) -> None:
    """Keep only the records of units a checkpoint covers (a crash may have left later ones); atomic."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["unit_index"] < units_done]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(ln + "\n" for ln in keep))
    os.replace(tmp, path)


def _read_windows(path: Path) -> list[dict]:
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln]
    return [r for r in recs if r["type"] == "window"]


def _plots(plot_dir: Path, res: dict, corpus, cfg, windows: list[dict]) -> list[Path]:
    """All PNG plots of a finished run."""
    import jax.numpy as jnp
    import numpy as np

    from fumjax.train import phases, plots
    from fumjax.train.readout import window_spikes

    plot_dir.mkdir(parents=True, exist_ok=True)
    ts, ro, spec = res["trainer"], res["readout"], res["spec"]
    consts = phases._consts(ro, ts)
    n_in = spec.n_in
    alive = np.asarray(ts.alive)
    paths = []
    first = [int(np.flatnonzero(corpus.domain == d)[0]) for d in np.unique(corpus.domain)[:6]]
    rasters = np.stack(
        [
            np.asarray(
                window_spikes(
                    ts.state,
                    consts,
                    jnp.asarray(corpus.x[i]),
                    jnp.int32(corpus.domain[i]),
                    jnp.uint32(7),
                    cfg=cfg,
                    spec=spec,
                )
            )
            for i in first
        ]
    )
    keep = np.flatnonzero(alive)  # dead slots never spike: leave them out of the raster
    titles = [f"{corpus.domains[corpus.domain[i]]} (target {corpus.target[i]})" for i in first]
    paths.append(
        plots.spike_raster(
            plot_dir / "spike_raster.png", rasters[:, :, keep], int(np.sum(keep < n_in)), titles
        )
    )
    rates = np.asarray(ts.recent, np.float64).mean(0) * (1000.0 / cfg.run.window_steps)
    out_alive = alive & (ro.pop >= 0)
    pop_rates = {}
    for d, name in enumerate(corpus.domains):
        sel = out_alive & (ro.out_dom == d)
        pop_rates[name] = float(rates[sel].mean()) if sel.any() else 0.0
    paths.append(
        plots.cluster_rates(
            plot_dir / "rates_per_cluster.png",
            rates[out_alive],
            np.asarray(ts.cluster_of)[out_alive],
            int(ts.n_clusters),
            pop_rates,
        )
    )
    paths.append(plots.reward_components(plot_dir / "reward_components.png", windows))
    w = np.asarray(ts.state.w)
    post = np.asarray(ro.net.post)
    live = ro.plastic_syn & alive[post]
    pers = np.asarray(ts.persistent) & live
    paths.append(plots.weight_histogram(plot_dir / "weight_histogram.png", w[live], w[pers]))
    pre = np.asarray(ro.net.pre)
    g = spec.n_pops
    proto = np.zeros((g, n_in))
    np.add.at(proto, (ro.pop[post[live]], pre[live]), w[live])
    sizes = np.bincount(ro.pop[out_alive], minlength=g)
    labels = [f"{corpus.domains[ro.pop_dom[p]][:4]}{p - ro.pop_offset[ro.pop_dom[p]]}" for p in range(g)]
    paths.append(plots.knowledge_graph(plot_dir / "knowledge_graph.png", proto, labels, ro.pop_dom, sizes))
    return paths
