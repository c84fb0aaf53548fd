"""One conservative MPI run under mpirun (tests/test_mpi_runner.py); rank 0 writes the result.

mpirun -n P python tests/mpi/conservative_run.py OUT.npz [--n 500] [--windows 6] [--plasticity rstdp]
    [--backend reference] [--ckpt-dir D --ckpt-every W] [--resume FILE] [--timeout 20]
    [--amp 2.25] [--delay 1] [--fault exit|hang --fault-rank R --fault-window K] [--rebalance measured|S,S]
    [--codec native|numpy] [--io-callback]

OUT.npz holds the raster (W, T, N) uint8 of the windows this run did, the rewards, and every field of the
final whole-network state (prefix state_).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402

from fumjax.config import FumConfig  # noqa: E402
from fumjax.distributed.mpi_runner import MpiRun  # noqa: E402
from fumjax.network import Network  # noqa: E402


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--windows", type=int, default=6)
    ap.add_argument("--plasticity", default="rstdp")
    ap.add_argument("--backend", default="reference")
    ap.add_argument("--ckpt-dir")
    ap.add_argument("--ckpt-every", type=int, default=0)
    ap.add_argument("--resume")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument(
        "--amp", type=float, default=2.25, help="drive amplitude mV (4.0: dense, bit-packed spikes)"
    )
    ap.add_argument("--fault", choices=("exit", "hang"))
    ap.add_argument("--fault-rank", type=int, default=1)
    ap.add_argument("--fault-window", type=int, default=1)
    ap.add_argument("--delay", type=int, default=1, help="synaptic delay in steps (all synapses)")
    ap.add_argument(
        "--rebalance",
        help="'measured', or relative rank speeds '1,3': parts sized to them (MpiRun.rebalanced)",
    )
    ap.add_argument(
        "--codec", choices=("native", "numpy"), help="spike message codec (default: native if built)"
    )
    ap.add_argument(
        "--io-callback", action="store_true", help="exchange through io_callback (older jax's path)"
    )
    a = ap.parse_args(argv)
    if a.io_callback:
        import fumjax.distributed.mpi_runner as mpi_runner

        mpi_runner._buffer_callback = None
    cfg = FumConfig().replace(drive={"amp_mV": a.amp})
    net = Network.distance_biased(a.n, seed=0, delay_steps=a.delay)
    run = MpiRun(
        net, config=cfg, plasticity=a.plasticity, backend=a.backend, timeout_s=a.timeout, codec=a.codec
    )
    speeds = None
    if a.rebalance:
        given = None if a.rebalance == "measured" else [float(x) for x in a.rebalance.split(",")]
        first, run = run, run.rebalanced(1, given)
        speeds = first.speeds
    state = run.load_checkpoint(a.resume)[0] if a.resume else run.init_state()
    chunk = a.ckpt_every or (1 if a.fault else a.windows)
    run.compile(state, chunk, record_spikes=True)
    run.ex.barrier("start", timeout_s=120.0)
    rasters, rewards, done = [], [], 0
    while done < a.windows:
        if a.fault and run.rank == a.fault_rank and done == a.fault_window:
            print(f"FAULT {a.fault} rank {run.rank} at {time.time():.3f}", file=sys.stderr, flush=True)
            if a.fault == "exit":
                os._exit(int(os.environ.get("FAULT_EXIT_CODE", "1")))
            time.sleep(3600)
        k = min(chunk, a.windows - done)
        state, spikes, rw = run.run_driven(state, k, record_spikes=True)
        rasters.append(np.asarray(spikes))
        rewards.append(np.asarray(rw))
        done += k
        if a.ckpt_dir and a.ckpt_every:
            run.save_checkpoint(a.ckpt_dir, state)
    raster = run.gather_spikes(np.concatenate(rasters))
    whole = run.gather_state(state)
    stats = run.stats()
    if run.rank == 0:
        fields = {f"state_{f}": np.asarray(getattr(whole, f)) for f in whole.__dataclass_fields__}
        np.savez(
            a.out,
            raster=raster,
            rewards=np.concatenate(rewards),
            cross_min_delay=run.cross_min_delay,
            exchange_share=np.array([s["exchange_share"] for s in stats]),
            exchanges=np.array([s["exchanges"] for s in stats]),
            part_sizes=run.part.sizes,
            speeds=speeds if speeds is not None else np.zeros(0),
            **fields,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
