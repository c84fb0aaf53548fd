"""`mpirun -n P fumjax simulate --distributed ...`: the simulate command as an exact conservative MPI run.

Every rank builds the same network from the config's seed, runs its METIS part (`MpiRun`), writes
coordinated checkpoints every --checkpoint-every steps (window ends) and, with --resume, continues from the
latest one (written by any number of ranks). Rank 0 prints a summary line with every rank's step time and
the share of it spent in the spike exchange, then the JSON summary line of `fumjax simulate`.
"""

from __future__ import annotations

import argparse
import json
import time

__all__ = ["add_distributed_arguments", "simulate_distributed"]


def add_distributed_arguments(p: argparse.ArgumentParser) -> None:
    """The --distributed options of `fumjax simulate`."""
    g = p.add_argument_group("distributed (under mpirun: one rank per METIS part, exact conservative mode)")
    g.add_argument("--distributed", action="store_true", help="run over the MPI ranks of COMM_WORLD")
    g.add_argument("--checkpoint-dir", help="directory of coordinated checkpoints (rank 0 writes them)")
    g.add_argument(
        "--checkpoint-every", type=int, default=0, help="steps between checkpoints (a multiple of the window)"
    )
    g.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --checkpoint-dir"
    )
    g.add_argument(
        "--rebalance",
        type=int,
        default=0,
        metavar="W",
        help="time W windows first, then size each rank's part to its measured speed (0: equal parts)",
    )
    g.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for a rank before naming it and aborting"
    )


def simulate_distributed(args: argparse.Namespace, cfg) -> int:
    """Run `fumjax simulate` over MPI (args as parsed by the simulate command, cfg with its overrides)."""
    if not args.distributed:
        raise ValueError(
            "--checkpoint-dir, --checkpoint-every, --resume and --rebalance need --distributed (under mpirun)"
        )
    t_win = cfg.run.window_steps
    if args.checkpoint_every < 0 or args.checkpoint_every % t_win:
        raise ValueError(
            f"--checkpoint-every = {args.checkpoint_every}: must be a multiple of the window ({t_win} steps)"
        )
    if args.rebalance < 0:
        raise ValueError(f"--rebalance = {args.rebalance}: must be >= 0 (windows to time; 0: equal parts)")
    if (args.checkpoint_every or args.resume) and not args.checkpoint_dir:
        raise ValueError("--checkpoint-every and --resume need --checkpoint-dir")

    import jax
    import numpy as np

    import fumjax
    from fumjax.distributed.mpi_runner import MpiRun
    from fumjax.dynamics import resolve_mode

    mode = resolve_mode(args.plasticity, cfg)
    t0 = time.perf_counter()
    net = fumjax.build_network(cfg)
    run = MpiRun(net, config=cfg, plasticity=mode, timeout_s=args.timeout)
    if args.rebalance:
        run = run.rebalanced(args.rebalance)
    build_s = time.perf_counter() - t0
    state = run.init_state()
    w0 = np.asarray(state.w, np.float64)
    if args.resume:
        state = run.load_checkpoint(args.checkpoint_dir)[0]
    start = int(state.step)
    if start % t_win:
        raise ValueError(f"the checkpoint is at step {start}, not at a window end (window {t_win} steps)")
    if args.steps <= start:
        raise ValueError(f"--steps = {args.steps}: the run is already at step {start}")
    n_windows, rest = divmod(args.steps - start, t_win)
    chunk = (args.checkpoint_every // t_win) or n_windows
    chunks = [min(chunk, n_windows - k) for k in range(0, n_windows, chunk)] if n_windows else []

    t0 = time.perf_counter()
    for k in sorted(set(chunks)):
        run.compile(state, k)
    run.compile(state, n_steps=rest)
    compile_s = time.perf_counter() - t0
    run.ex.barrier("start", timeout_s=max(args.timeout, 600.0))  # ranks compile at different speeds

    spikes, checkpoints = 0, []
    t0 = time.perf_counter()
    for k in chunks:
        state, counts, _ = run.run_driven(state, k)
        spikes += int(np.asarray(counts).sum(dtype=np.int64))
        if args.checkpoint_dir and args.checkpoint_every:
            checkpoints.append(str(run.save_checkpoint(args.checkpoint_dir, state)))
    if rest:
        state, sp = run.run(state, run.background_current(state, rest))
        spikes += int(np.asarray(sp).sum(dtype=np.int64))
    jax.block_until_ready(state)
    wall_s = time.perf_counter() - t0

    w = np.asarray(state.w, np.float64)
    local = {
        "spikes": spikes,
        "abs_dw": float(np.abs(w - w0).sum()),
        "v_th": float(np.asarray(state.v_th_mV, np.float64).sum()),
        "finite": bool(np.isfinite(w).all() and np.isfinite(np.asarray(state.v_mV)).all()),
    }
    every = run.ex.allgather_obj(local, "the summary")
    stats = run.stats()
    if run.rank != 0:
        return 0
    n, steps = net.n_neurons, args.steps - start
    spike_count = sum(x["spikes"] for x in every)
    summary = {
        "neurons": n,
        "synapses": net.n_synapses,
        "steps": steps,
        "first_step": start,
        "backend": run.backend,
        "plasticity": mode,
        "seed": cfg.run.seed,
        "spike_count": spike_count,
        "mean_rate_hz": spike_count / (n * steps * cfg.neuron.dt_ms / 1000.0),
        "mean_abs_dw": sum(x["abs_dw"] for x in every) / max(net.n_synapses, 1),
        "mean_v_th_mV": sum(x["v_th"] for x in every) / n,
        "finite": all(x["finite"] for x in every),
        "build_s": round(build_s, 4),
        "compile_s": round(compile_s, 4),
        "wall_s": round(wall_s, 4),
        "platform": jax.devices()[0].platform,
        "ranks": run.size,
        "cut_fraction": round(run.part.cut_fraction, 5),
        "cross_min_delay": run.cross_min_delay,
        "exchange_every": run.exchange_every,
        "step_ms_per_rank": [round(s["step_ms"], 4) for s in stats],
        "exchange_share_per_rank": [round(s["exchange_share"], 4) for s in stats],
        "events_sent_per_rank": [s["events_sent"] for s in stats],
        "checkpoints": checkpoints,
    }
    if not args.json:
        per_rank = ", ".join(
            f"rank {s['rank']} {s['step_ms']:.3f} ms/step ({100 * s['exchange_share']:.1f}% exchange)"
            for s in stats
        )
        print(
            f"fumjax simulate --distributed: {run.size} ranks, {n} neurons, {net.n_synapses} synapses, "
            f"steps {start}..{args.steps}, cut {run.part.cut_fraction:.4f}: {per_rank}"
        )
    print(json.dumps(summary))
    return 0
