"""Under mpirun: every rank syncs its clock with rank 0 and writes (offset, delay) to OUT/rank{r}.json."""

import json
import os
import sys

from mpi4py import MPI

from fumjax.distributed.clock import host_clock_sync_state, sync_clocks

comm = MPI.COMM_WORLD
out = sys.argv[1]
res = {}
for clock in ("time", "perf_counter"):
    c = sync_clocks(comm, 128, clock=clock, trust_host_ptp=False)  # more samples: robust to load
    res[clock] = {"offset_ns": c.offset_ns, "delay_ns": c.delay_ns, "source": c.source}
c = sync_clocks(comm, 4, trust_host_ptp=True)
res["trusted"] = {"offset_ns": c.offset_ns, "source": c.source}
res["host"] = host_clock_sync_state()
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, f"rank{comm.Get_rank()}.json"), "w") as f:
    json.dump(res, f)
