"""Distribution layer: METIS partitioning, splitting a network into parts, sharded multi-device runs, exact
MPI runs (one rank per part) and MPI training."""

from fumjax.distributed.partition import (
    Partition,
    cut_fraction,
    local_synapses,
    merge_states,
    partition,
    partition_from_parts,
    renumbering,
    split,
    split_state,
    symmetric_adjacency,
)

__all__ = [
    "MpiRun",
    "MpiTrainEngine",
    "Partition",
    "ShardedRun",
    "cut_fraction",
    "local_synapses",
    "merge_states",
    "partition",
    "partition_from_parts",
    "renumbering",
    "simulate_sharded",
    "split",
    "split_state",
    "symmetric_adjacency",
]


def __getattr__(name: str):
    """Lazy import of the sharded runner (it builds meshes; partitioning alone does not need it)."""
    if name in ("ShardedRun", "simulate_sharded"):
        from fumjax.distributed import sharded

        return getattr(sharded, name)
    if name == "MpiRun":
        from fumjax.distributed.mpi_runner import MpiRun

        return MpiRun
    if name == "MpiTrainEngine":
        from fumjax.distributed.mpi_train import MpiTrainEngine

        return MpiTrainEngine
    raise AttributeError(f"module 'fumjax.distributed' has no attribute {name!r}")
