"""Run one bounded-skew simulation under mpirun and dump each rank's logs (tests/test_bounded_skew.py).

mpirun -n P python tests/mpi/skew_run.py OUT_DIR [--n 300] [--steps 1000] [--max-skew 10]
    [--sync-every 1000] [--slow-rank R --slow-ms MS] [--structural] [--plasticity rstdp]
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import pickle
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

from mpi4py import MPI  # noqa: E402

from fumjax.config import FumConfig  # noqa: E402
from fumjax.distributed.bounded_skew import BoundedSkewRunner, SkewConfig  # noqa: E402
from fumjax.distributed.clock import sync_clocks  # noqa: E402
from fumjax.distributed.partition import partition  # noqa: E402
from fumjax.network import Network  # noqa: E402


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--max-skew", type=int, default=10)
    ap.add_argument("--sync-every", type=int, default=1000)
    ap.add_argument("--no-sync-on-cap", action="store_true")
    ap.add_argument("--slow-rank", type=int, default=-1)
    ap.add_argument("--slow-ms", type=float, default=0.0)
    ap.add_argument("--structural", action="store_true")
    ap.add_argument("--plasticity", default="rstdp")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if os.environ.get("FUMJAX_WATCHDOG_S"):  # a hung run dumps every rank's stack and exits
        faulthandler.dump_traceback_later(float(os.environ["FUMJAX_WATCHDOG_S"]), exit=True)
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    clock = sync_clocks(comm, 32, trust_host_ptp=False)
    cfg = FumConfig()
    net = Network.distance_biased(a.n, seed=a.seed)
    part = partition(net, comm.Get_size(), seed=0)
    sk = SkewConfig(max_skew=a.max_skew, sync_every=a.sync_every, sync_on_cap=not a.no_sync_on_cap)
    slow = a.slow_ms / 1000.0 if rank == a.slow_rank else 0.0
    runner = BoundedSkewRunner(
        comm, net, part, config=cfg, skew=sk, plasticity_mode=a.plasticity, clock=clock, slow_s=slow
    )
    runner.warmup()
    if a.structural:  # every rank but the last asks for the lock at the first sync; rank 0 twice

        def change(r):
            time.sleep(0.01)  # a "structural change" that takes a while under the lock

        for _ in range(2 if rank == 0 else (1 if rank < comm.Get_size() - 1 else 0)):
            runner.request_structural(change)
    comm.Barrier()
    t0 = time.perf_counter()
    logs = runner.run(a.steps)
    logs["wall_s"] = time.perf_counter() - t0
    logs["clock"] = {"offset_ns": clock.offset_ns, "delay_ns": clock.delay_ns, "source": clock.source}
    logs["members"] = runner.members
    logs["rank"], logs["size"] = rank, comm.Get_size()
    # outside a sync point the lock must refuse
    try:
        with runner.lock:
            pass
        logs["lock_outside_refused"] = False
    except RuntimeError:
        logs["lock_outside_refused"] = True
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(logs, f)


if __name__ == "__main__":
    main(sys.argv[1:])
