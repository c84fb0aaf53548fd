"""`mpirun -n P fumjax train --distributed`: the phase trainer with its network split over MPI ranks, exact.

`MpiTrainEngine` is a `fumjax.train.phases.Engine`: `phases.train` runs unchanged on every rank, and only
its three engine calls differ from the single process.

- run_chunk: each rank runs the chunk's windows on its METIS part (`MpiRun`, conservative mode: spikes
  exchanged every step inside the jitted scan). At each window's end one all-gather gives every rank every
  neuron's spike counts (and the output spikes per step), so decoding, the external reward, the SIE (TD
  over activity clusters, novelty, habituation, self-benefit of all rates) and the population rewards are
  computed from the same arrays as in the single process; the weight and threshold updates touch only the
  rank's own neurons and the synapses onto them (`fumjax.train.readout.chunk_window`). After the chunk the
  parts' states are all-gathered into the whole-network state, so the host-side mechanisms between chunks
  (growth, pruning, persistence tags, decay, k-means re-clustering, SOC) run on identical inputs on every
  rank: the trainer state is replicated (a digest compared at every checkpoint proves it).
- predict (validation accuracy): the items are split in contiguous slices over the ranks, each rank answers
  its slice with the frozen whole network (item i keeps its encoding counter), and the answers are
  all-gathered.
- save_checkpoint: coordinated (every rank at the same unit); rank 0 writes the same file `fumjax train`
  writes, so a run resumes on any number of ranks, or in one process, and continues exactly.

The steps run the reference kernels (the single process's fused `run_steps` gives bit-identical rasters and
states on the trainer's network). Memory per rank is the whole network's (the trainer's readout is small);
the per-step work is the part's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from fumjax.config import FumConfig
from fumjax.distributed.exchange import Exchanger
from fumjax.distributed.mpi_runner import MpiRun, save_on_root
from fumjax.network import Network
from fumjax.state import State
from fumjax.train import phases, readout
from fumjax.train.checkpoint import tree_digest

__all__ = ["MpiTrainEngine", "train_distributed"]


class MpiTrainEngine:
    """The engine of `phases.train` on one rank of an MPI communicator (see the module docstring)."""

    def __init__(self, comm: Any = None, *, timeout_s: float = 60.0, partition_seed: int = 0) -> None:
        """comm: default COMM_WORLD. timeout_s: how long any exchange waits for a peer before naming it and
        aborting the job. partition_seed: METIS seed (rank 0 partitions, every rank gets its parts)."""
        if comm is None:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
        self.ex = Exchanger(comm, timeout_s)
        self.rank, self.size = self.ex.rank, self.ex.size
        self.timeout_s = float(timeout_s)
        self._compile_timeout_s = max(self.timeout_s, 600.0)  # ranks compile at different speeds
        self.partition_seed = int(partition_seed)
        self.run: MpiRun | None = None
        self._net: Network | None = None
        self._programs: dict = {}
        self._predicted: set[int] = set()  # item counts answered before
        self.sync_s = 0.0  # all-gathering the parts' states after each chunk
        self.predict_s = 0.0  # this rank's share of the validation answers, and gathering them
        self.chunks = 0

    def engine(self) -> phases.Engine:
        """This engine as the `engine` argument of `phases.train`."""
        return phases.Engine(
            run_chunk=self.run_chunk, predict=self.predict, save_checkpoint=self.save_checkpoint
        )

    # ---- Engine calls -------------------------------------------------------------------------------

    def run_chunk(self, carry, consts: dict, items: dict, seed, *, cfg: FumConfig, spec: readout.ReadoutSpec):
        """`readout.run_chunk` with the network split over the ranks; same arguments and result (the
        whole-network carry and the log, on every rank)."""
        state, sie, v_th0, prev_c = carry
        run = self._mpi_run(consts["net"], cfg)
        local = (run.split_state(state), sie, jnp.take(v_th0, jnp.asarray(run.members)), prev_c)
        args = (run.local, jnp.asarray(run.members), jnp.asarray(run.syn), local, consts, items, seed)
        key = (cfg, spec, items["x"].shape)
        if key not in self._programs:
            self._programs[key] = self._chunk_program(cfg, spec).lower(*args).compile()
            self.ex.barrier("compiling the chunk program", timeout_s=self._compile_timeout_s)
        n_steps = items["x"].shape[0] * cfg.run.window_steps
        (part_state, sie, _, prev_c), log = run.timed(lambda: self._programs[key](*args), n_steps)
        t0 = time.perf_counter()
        whole = run.gather_state(part_state, root=None)
        self.sync_s += time.perf_counter() - t0
        self.chunks += 1
        return (whole, sie, v_th0, prev_c), log

    def predict(self, state: State, consts: dict, x, dom, seed, first=0, *, cfg: FumConfig, spec):
        """`readout.predict`, the items split over the ranks: the (M,) answers on every rank."""
        t0 = time.perf_counter()
        m = int(x.shape[0])
        bounds = [m * q // self.size for q in range(self.size + 1)]
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        mine = np.zeros(0, np.int32)
        if hi > lo:
            mine = np.asarray(
                readout.predict(state, consts, x[lo:hi], dom[lo:hi], seed, first + lo, cfg=cfg, spec=spec),
                np.int32,
            )
        first_call = m not in self._predicted  # then a rank may still be compiling its slice's program
        self._predicted.add(m)
        timeout_s = self._compile_timeout_s if first_call else None
        got = self.ex.allgather_bytes(mine, f"answers on {m} items", timeout_s=timeout_s)
        self.predict_s += time.perf_counter() - t0
        return np.concatenate([g.view(np.int32) for g in got])

    def save_checkpoint(
        self, directory: str | Path, tree: Any, *, step: int, meta: dict | None = None
    ) -> Path:
        """Coordinated checkpoint of the replicated trainer state: every rank checks that its state equals
        rank 0's (RuntimeError naming the ranks that differ), rank 0 writes it, every rank gets the path."""
        digests = self.ex.allgather_obj(tree_digest(tree), f"the trainer state digest at unit {step}")
        differ = [q for q, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise RuntimeError(f"trainer state of rank(s) {differ} differs from rank 0's at unit {step}")
        return save_on_root(self.ex, directory, tree, step=step, meta={**(meta or {}), "ranks": self.size})

    # ---- statistics ---------------------------------------------------------------------------------

    def summary(self) -> dict:
        """Every rank's timing (collective: all ranks call it): ranks, cut fraction, per-rank step time and
        exchange share of the chunks, state-sync and validation seconds."""
        mine = {"sync_s": self.sync_s, "predict_s": self.predict_s}
        every = self.ex.allgather_obj(mine, "train statistics")
        stats = self.run.stats() if self.run is not None else []
        return {
            "ranks": self.size,
            "cut_fraction": round(self.run.part.cut_fraction, 5) if self.run is not None else None,
            "step_ms_per_rank": [round(s["step_ms"], 4) for s in stats],
            "exchange_share_per_rank": [round(s["exchange_share"], 4) for s in stats],
            "state_sync_s_per_rank": [round(e["sync_s"], 3) for e in every],
            "eval_s_per_rank": [round(e["predict_s"], 3) for e in every],
        }

    # ---- internals ----------------------------------------------------------------------------------

    def _mpi_run(self, net: Network, cfg: FumConfig) -> MpiRun:
        if self.run is None or net is not self._net:
            if self.run is not None:
                self.run.close()  # its posted receives; the new run exchanges on its own communicator
            self.run = MpiRun(
                net,
                self.ex.comm,
                config=cfg,
                plasticity="rstdp",
                backend="reference",
                partition_seed=self.partition_seed,
                timeout_s=self.timeout_s,
            )
            self._net = net
            self._programs = {}  # they hold the previous part
        return self.run

    def _chunk_program(self, cfg: FumConfig, spec: readout.ReadoutSpec):
        run = self.run
        assert run is not None
        is_out = np.asarray(run.members) >= spec.n_in
        n, t_win = run.net.n_neurons, cfg.run.window_steps
        out_spec = jax.ShapeDtypeStruct((n + t_win,), jnp.int32)

        def gather_counts(local_counts: np.ndarray, out_steps: np.ndarray) -> np.ndarray:
            """This rank's counts (n_p,) and output spikes per step (T,) -> every neuron's counts (N,)
            followed by all output spikes per step (T,)."""
            t0 = time.perf_counter()
            msg = np.concatenate([np.asarray(local_counts), np.asarray(out_steps)]).astype(np.int32)
            got = self.ex.allgather_bytes(msg, "the window's spike counts")
            total = np.zeros(n + t_win, np.int32)
            for q, raw in enumerate(got):
                vals = raw.view(np.int32)
                total[run.part.members[q]] = vals[:-t_win]
                total[n:] += vals[-t_win:]
            run.count_exchange(t0)
            return total

        def program(net_p: Network, members, syn, carry, consts, items, seed):
            local = readout.learning_arrays(consts, spec, (members, syn, net_p))

            def simulate(s: State, i_ext):
                s, spikes = run.steps(net_p, s, jnp.take(i_ext, members, axis=1))
                counts = spikes.sum(0, dtype=jnp.int32)
                out_steps = jnp.where(is_out[None, :], spikes, 0).sum(1, dtype=jnp.int32)
                total = io_callback(gather_counts, out_spec, counts, out_steps, ordered=True)
                return s, counts, total[:n], total[n:]

            window = readout.chunk_window(consts, seed, cfg, spec, simulate, local)
            return jax.lax.scan(window, carry, items)

        return jax.jit(program)


def train_distributed(args: argparse.Namespace) -> int:
    """`fumjax train --distributed` (args as parsed by the train command) on this MPI rank."""
    from fumjax.train.cli_train import run_train

    if args.timeout <= 0:
        raise ValueError(f"--timeout = {args.timeout}: must be > 0")
    return run_train(args, engine=MpiTrainEngine(timeout_s=args.timeout))
