"""How the tests launch scripts under mpirun: Open MPI's mpirun with --oversubscribe (more ranks than
cores) and --allow-run-as-root when root (CI runs as root)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from fumjax.distributed.launch import mpirun_prefix

HERE = Path(__file__).resolve().parent


def have_mpi() -> bool:
    """True when mpi4py imports and an `mpirun` is on PATH."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return shutil.which("mpirun") is not None


def mpirun_cmd(n: int, script: str, *args: str) -> list[str]:
    """The command running tests/mpi/<script> on n ranks with this Python."""
    return mpirun_prefix(n) + [sys.executable, str(HERE / script), *args]
