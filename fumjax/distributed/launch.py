"""Launching MPI ranks: Open MPI's mpirun command, and the environment of CPU ranks (JAX on the CPU, one
XLA thread)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

__all__ = ["ONE_THREAD_XLA_FLAGS", "cpu_rank_env", "mpirun_prefix"]

# no multi-threaded Eigen, one intra-op thread; XLA's thread pool follows the CPU affinity (bind_to_core)
ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def cpu_rank_env(env: Mapping[str, str], *, xla_flags: str | None = None) -> dict[str, str]:
    """A copy of env for CPU ranks: JAX_PLATFORMS=cpu (also on a GPU host) and XLA_FLAGS = xla_flags if given,
    else env's own, else ONE_THREAD_XLA_FLAGS. JAX reads JAX_PLATFORMS when it is imported: set it first."""
    out = dict(env, JAX_PLATFORMS="cpu")
    out["XLA_FLAGS"] = xla_flags if xla_flags is not None else env.get("XLA_FLAGS", ONE_THREAD_XLA_FLAGS)
    return out


def mpirun_prefix(n: int, *, bind_to_core: bool = False) -> list[str]:
    """`mpirun -n n --oversubscribe [--allow-run-as-root]` (more ranks than cores; root as on CI), to put
    before a command. bind_to_core: one core per rank (`--bind-to core --map-by core`) where n ranks fit the
    cores this process may use, else the oversubscribed form."""
    cmd = [shutil.which("mpirun") or "mpirun", "-n", str(n)]
    # Binding is what gives one thread per rank: XLA's CPU thread pool is sized by the process's CPU affinity,
    # whatever XLA_FLAGS say (unbound, each rank ran ~2.6 busy threads on a 16-core host).
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if bind_to_core and n <= usable:
        cmd += ["--bind-to", "core", "--map-by", "core"]
    else:
        cmd.append("--oversubscribe")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd
