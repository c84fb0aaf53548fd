"""The `fumjax` command: a thin layer over config that validates at the boundary and prints a summary."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fumjax", description="FUM spiking networks in JAX")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "simulate", help="simulate a distance-biased FUM network under Poisson background drive"
    )
    s.add_argument("--config", help="TOML file of FumConfig sections (command-line flags override it)")
    s.add_argument("--neurons", type=int, help="number of neurons (default 1000)")
    s.add_argument("--steps", type=int, default=10_000, help="steps of dt = 1 ms (default 10000 = 10 s)")
    s.add_argument("--backend", choices=("reference", "fused"), help="kernel backend (default: config/env)")
    s.add_argument(
        "--plasticity",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="STDP + eligibility + reward + intrinsic plasticity (default on)",
    )
    s.add_argument("--seed", type=int, help="seed of network and input streams (default 0)")
    s.add_argument("--json", action="store_true", help="print only a JSON summary line")
    from fumjax.control.realtime import add_realtime_argument

    add_realtime_argument(s)
    from fumjax.distributed.mpi_cli import add_distributed_arguments

    add_distributed_arguments(s)
    s.set_defaults(func=_simulate)
    from fumjax.distributed.partition_cli import add_partition_command

    add_partition_command(sub)
    from fumjax.train.cli_train import add_train_command

    add_train_command(sub).set_defaults(func=_train)
    from fumjax.control.explain_cli import add_explain_command
    from fumjax.control.tune_cli import add_tune_command

    add_tune_command(sub)
    add_explain_command(sub)
    from fumjax.train.scale import add_scale_command

    scale = add_scale_command(sub)
    add_realtime_argument(scale)
    scale.set_defaults(func=_scale)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fumjax` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError) as exc:
        print(f"fumjax: error: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    if args.distributed:
        from fumjax.distributed.mpi_train import train_distributed

        return train_distributed(args)
    from fumjax.train.cli_train import run_train

    return run_train(args)


def _scale(args: argparse.Namespace) -> int:
    from fumjax.train.scale import run_scale

    if not args.realtime:
        return run_scale(args)
    from fumjax.control.realtime import print_paced, run_paced

    def paced(state, net, n_windows, cfg, mode):  # busy fraction, lag, overruns instead of printed groups
        state, run = run_paced(state, net, n_windows, config=cfg, plasticity=mode, backend=cfg.run.backend)
        print_paced(run, quiet=False)
        return state, run.summary()

    return run_scale(args, pace=paced)


def _simulate(args: argparse.Namespace) -> int:
    from fumjax.config import FumConfig

    cfg = FumConfig.from_toml(args.config) if args.config else FumConfig()
    overrides: dict[str, dict] = {}
    if args.neurons is not None:
        overrides["neuron"] = {"n_neurons": args.neurons}
    if args.seed is not None:
        overrides["run"] = {"seed": args.seed}
    if args.backend is not None:
        overrides.setdefault("run", {})["backend"] = args.backend
    if overrides:
        cfg = cfg.replace(**overrides)
    if args.steps <= 0:
        raise ValueError(f"--steps = {args.steps}: must be >= 1")
    if args.realtime:
        if args.distributed or args.checkpoint_dir or args.checkpoint_every or args.resume or args.rebalance:
            raise ValueError("--realtime runs one process without checkpoints: drop the distributed flags")
        if args.steps % cfg.run.window_steps:
            raise ValueError(
                f"--steps = {args.steps} with --realtime: must be a multiple of run.window_steps = "
                f"{cfg.run.window_steps} (the run is paced in chunks of one window)"
            )
    elif args.distributed or args.checkpoint_dir or args.checkpoint_every or args.resume or args.rebalance:
        from fumjax.distributed.mpi_cli import simulate_distributed

        return simulate_distributed(args, cfg)

    import jax
    import numpy as np

    import fumjax
    from fumjax.dynamics import background_current, resolve_mode, run_driven, simulate

    mode = resolve_mode(args.plasticity, cfg)
    t0 = time.perf_counter()
    net = fumjax.build_network(cfg)
    state = fumjax.init_state(net, cfg)
    jax.block_until_ready(state)
    build_s = time.perf_counter() - t0
    n = net.n_neurons
    head = {
        "neurons": n,
        "synapses": net.n_synapses,
        "steps": args.steps,
        "backend": cfg.run.backend,
        "plasticity": mode,
        "seed": cfg.run.seed,
    }

    def finite(st) -> bool:
        return bool(np.isfinite(np.asarray(st.w)).all() and np.isfinite(np.asarray(st.v_mV)).all())

    if args.realtime:
        from fumjax.control.realtime import print_paced, run_paced

        state, paced = run_paced(state, net, args.steps // cfg.run.window_steps, config=cfg, plasticity=mode)
        platform = jax.devices()[0].platform
        summary = {**head, "finite": finite(state), "build_s": round(build_s, 4), "platform": platform}
        summary.update(paced.summary())
        if not args.json:
            print(
                f"fumjax simulate --realtime: {n} neurons, {net.n_synapses} synapses, "
                f"backend {cfg.run.backend}, plasticity {mode}, platform {platform}"
            )
        print_paced(paced, quiet=args.json)
        print(json.dumps(summary))
        return 0

    w_start = np.asarray(state.w, np.float64)

    t_win = cfg.run.window_steps
    n_windows, rest = divmod(args.steps, t_win)

    def run(st):
        spikes, rewards = 0, np.zeros(0)
        if n_windows:
            st, counts, rewards = run_driven(st, net, n_windows, config=cfg, plasticity=mode)
            spikes += int(np.asarray(counts).sum(dtype=np.int64))
        if rest:
            st, sp = simulate(st, net, background_current(st, net, rest, cfg), config=cfg, plasticity=mode)
            spikes += int(np.asarray(sp).sum(dtype=np.int64))
        return jax.block_until_ready(st), int(spikes), np.asarray(rewards, np.float64)

    t0 = time.perf_counter()
    run(state)  # compiles (and runs once); the timed run below is warm
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, spike_count, rewards = run(state)
    wall_s = time.perf_counter() - t0

    w_end = np.asarray(state.w, np.float64)
    summary = {
        **head,
        "spike_count": spike_count,
        "mean_rate_hz": spike_count / (n * args.steps * cfg.neuron.dt_ms / 1000.0),
        "mean_abs_dw": float(np.abs(w_end - w_start).mean()),
        "mean_v_th_mV": float(np.asarray(state.v_th_mV).mean()),
        "mean_reward": float(rewards.mean()) if rewards.size else None,  # SIE total reward per window
        "finite": finite(state),
        "build_s": round(build_s, 4),
        "compile_s": round(compile_s, 4),
        "wall_s": round(wall_s, 4),
        "platform": jax.devices()[0].platform,
    }
    if not args.json:
        print(
            f"fumjax simulate: {n} neurons, {net.n_synapses} synapses, {args.steps} steps, "
            f"backend {cfg.run.backend}, plasticity {mode}"
        )
        print(
            f"  {spike_count} spikes, mean rate {summary['mean_rate_hz']:.2f} Hz, "
            f"mean |dw| {summary['mean_abs_dw']:.4g}, wall {wall_s:.3f} s (build {build_s:.2f} s, "
            f"compile+first run {compile_s:.2f} s)"
        )
    if mode == "rstdp" and rewards.size and not rewards.any():
        print(
            f"fumjax simulate: the reward was 0 in every window (mean rate {summary['mean_rate_hz']:.1f} "
            "Hz), so no weight changed. The reward here is the SIE self-benefit, which is 0 while the rate "
            "variance is far from its target: in the first few windows, while the running rate estimate "
            "settles, or throughout in a saturated network (the default weights saturate networks whose K "
            "is well above 50: lower connectivity.w_exc_max or connectivity.k_per_neuron in --config)",
            file=sys.stderr,
        )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
