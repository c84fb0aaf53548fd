"""Distal reward (Izhikevich 2007) on fumjax's LIF network; saves the weight-trajectory plot, prints JSON.

    python bench/bench_distal_reward.py [--seeds 0 1 2] [--minutes 60] [--plot bench/plots/distal_reward.png]

1000 neurons (800 excitatory), 100 synapses each; one random excitatory->excitatory synapse is rewarded
1-3 s after each pre-then-post pairing (post within 20 ms). Criterion: within one hour of model time its
weight reaches >= 90% of w_max while 99% of the other plastic (excitatory) synapses stay below 50% of it.
Runs on the fused CPU backend (one FFI call per 10-step window; reward through fumjax.end_window).
The recipe is fumjax.train.distal_reward.distal_config / DistalProtocol plus the flags below.
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
from pathlib import Path

from fumjax.train.distal_reward import DistalProtocol, criterion_minutes, distal_config, run_distal_reward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--minutes", type=float, default=60.0, help="model time per seed")
    ap.add_argument("--plot", default="bench/plots/distal_reward.png", help="PNG path ('' = no plot)")
    ap.add_argument("--eta", type=float, default=None, help="plasticity.eta (default: distal_config's)")
    ap.add_argument("--tau-elig-ms", type=float, default=None)
    ap.add_argument("--a-minus-ratio", type=float, default=None)
    ap.add_argument("--baseline-dopamine", type=float, default=None)
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args()
    cfg_kw = {
        k: v
        for k, v in (
            ("eta", args.eta),
            ("tau_elig_ms", args.tau_elig_ms),
            ("a_minus_ratio", args.a_minus_ratio),
        )
        if v is not None
    }
    protocol = DistalProtocol(
        **({} if args.baseline_dopamine is None else {"baseline_dopamine": args.baseline_dopamine})
    )
    t0 = time.perf_counter()
    runs, trajectories = [], {}
    for seed in args.seeds:
        cfg = distal_config(seed=seed, **cfg_kw)
        r = run_distal_reward(cfg, protocol, minutes=args.minutes, progress=not args.quiet)
        w_max = cfg.connectivity.w_clip
        t_crit = criterion_minutes(r["t_min"], r["w_syn"], r["w_p99"], w_max=w_max)
        runs.append(
            {
                "seed": seed,
                "criterion_met": t_crit is not None,
                "minutes_to_criterion": t_crit,
                "final": {
                    "w_syn": round(float(r["w_syn"][-1]) / w_max, 4),
                    "others_p99": round(float(r["w_p99"][-1]) / w_max, 4),
                    "others_p50": round(float(r["w_p50"][-1]) / w_max, 4),
                    "criterion_holds": bool(r["w_syn"][-1] >= 0.9 * w_max and r["w_p99"][-1] < 0.5 * w_max),
                },
                "max_others_p99": round(float(r["w_p99"].max()) / w_max, 4),
                "synapse": {"index": r["synapse"], "pre": r["synapse_pre"], "post": r["synapse_post"]},
                "pairings": int(r["n_pairings"][-1]),
                "rewards": int(r["n_rewards"][-1]),
                "rewards_dropped": r["n_dropped"],
                "rate_exc_hz": round(float(r["rate_exc_hz"].mean()), 3),
                "rate_inh_hz": round(float(r["rate_inh_hz"].mean()), 3),
                "wall_s": round(r["wall_s"], 1),
            }
        )
        trajectories[seed] = r
        if not args.quiet:
            print(f"seed {seed}: criterion at {t_crit} min", file=sys.stderr, flush=True)
    if args.plot:
        save_plot(trajectories, args.plot, w_max=w_max)
    out = {
        "benchmark": "distal reward (Izhikevich 2007 protocol), fused CPU backend",
        "criterion": "w_syn >= 0.9 w_max and others' 99th percentile < 0.5 w_max within 60 min",
        "all_met": all(r["criterion_met"] for r in runs),
        "runs": runs,
        "minutes": args.minutes,
        "protocol": protocol.__dict__,
        "config": {k: cfg.to_dict()[k] for k in ("connectivity", "stdp", "plasticity", "intrinsic", "run")},
        "plot": args.plot or None,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "load_average": os.getloadavg(),
        "machine": {"node": platform.node(), "cpus_available": len(os.sched_getaffinity(0))},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
    }
    print(json.dumps(out, indent=1))


def save_plot(trajectories: dict, path: str, *, w_max: float) -> None:
    """One panel per seed: the rewarded weight and the others' percentiles (fractions of w_max) over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(trajectories)
    fig, axes = plt.subplots(1, len(seeds), figsize=(4.5 * len(seeds), 3.6), sharey=True, squeeze=False)
    for ax, seed in zip(axes[0], seeds, strict=True):
        r = trajectories[seed]
        t = r["t_min"]
        ax.fill_between(t, r["w_p50"] / w_max, r["w_p99"] / w_max, color="0.85", label="others p50-p99")
        ax.plot(t, r["w_p99"] / w_max, color="0.4", lw=1, label="others p99")
        ax.plot(t, r["w_p99.9"] / w_max, color="0.6", lw=0.8, ls=":", label="others p99.9")
        ax.plot(t, r["w_syn"] / w_max, color="C3", lw=1.6, label="rewarded synapse")
        ax.axhline(0.9, color="C3", ls="--", lw=0.7)
        ax.axhline(0.5, color="0.3", ls="--", lw=0.7)
        ax.set_title(f"seed {seed}")
        ax.set_xlabel("model time (min)")
    axes[0, 0].set_ylabel("weight / w_max")
    axes[0, 0].set_ylim(0, 1.02)
    axes[0, -1].legend(loc="center right", fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
