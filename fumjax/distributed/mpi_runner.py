"""Exact (`conservative`) runs across MPI ranks: one rank per METIS part, spikes exchanged every D steps.

Rank p owns the neurons `part.members[p]` (contiguous in the partition's renumbering) and every synapse
whose post neuron it owns, in the whole network's CSR order (`split_part`), so each post neuron sums its
inputs in the same order as the single-process run. Each rank runs the jitted step of its part under
`lax.scan`; a host callback (`buffer_callback`, else an ordered `io_callback`) sends the rank's spike
events (step, global source ids; encoded in the step by `fused.spike_message` where built) to every other
rank and assembles the (N,) presynaptic spike vector of each step (`Exchanger.channel`: one message per
peer, polled against a deadline, so a dead or hung rank is named and the job aborted).
Drive and all randomness are keyed by (seed, global neuron id, step); at a window's end the ranks gather
the (N,) running rates so that every rank computes the SIE reward from the same array as the single
process. Hence, for the same seed, 1, 2 or 4 ranks give the same rasters, weights, eligibility and
thresholds as `fumjax.run_driven`/`fumjax.simulate`, bit for bit.

Spikes are exchanged every D steps, D = the minimum delay of all synapses (the partition's crossing synapses
can only have longer ones; with the config's uniform delay both are the same). A block of D steps first runs
the LIF half of the step (`lif_phase`) for all D steps (every input it needs was sent at least D steps
earlier), exchanges the (D, n_p) spikes once, then runs transmission and STDP (`synapse_phase`) of the D
steps in order: per neuron and synapse the same operations in the same order as `step`, so still exact.
The step runs whole with the exchange inside it where D = 1, and by default in mode stdp with jnp synapse
phases (reference backend): there blocks left 1 weight in 12,500 1 ulp off on 4 ranks (a multiply-add rounded
differently in the two programs). The fused backend's synapse kernel rounds alike in both: it uses blocks.

Checkpoints are coordinated: every rank stops at the same window end, rank 0 gathers the whole-network
state and writes it atomically (`fumjax.train.checkpoint`). A checkpoint holds no partition, so a run
resumes on any number of ranks (re-partition, re-split) and continues exactly.
"""

from __future__ import annotations

import functools
import hashlib
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.experimental import io_callback

try:  # jax >= 0.7: a callback on raw buffers, ~10x cheaper per call than io_callback
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:  # pragma: no cover - older jax
    _buffer_callback = None

from fumjax import sie
from fumjax.config import FumConfig
from fumjax.distributed.exchange import Exchanger
from fumjax.distributed.partition import (
    Partition,
    merge_states,
    part_synapses,
    partition,
    partition_from_parts,
    split_part,
    split_state_part,
)
from fumjax.dynamics import (
    _end_window,
    check_state,
    lif_phase,
    resolve_mode,
    running_rate_hz,
    step,
    synapse_phase,
)
from fumjax.encoders import poisson_background_current
from fumjax.kernels import fused, resolve_backend
from fumjax.network import Network
from fumjax.state import State, init_state
from fumjax.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

__all__ = [
    "MpiRun",
    "network_fingerprint",
    "encode_spikes",
    "decode_spikes",
    "spike_codec",
    "resolve_codec",
    "pack_step",
    "save_on_root",
]

_EVENTS, _BITMASK = 0, 1  # spike message kinds
_MPI_ENVELOPE_BYTES = 64  # rough per-message overhead, for the byte counts only
# the counters behind MpiRun.stats, set aside while measure_speeds runs
_RUN_COUNTERS = (
    "run_s", "cpu_s", "steps_run", "exchange_s", "n_exchanges", "events_sent", "bytes_sent", "exchange_log"
)  # fmt: skip


def encode_spikes(
    spikes_local: np.ndarray, members: np.ndarray, step_now: int, n_total: int = 0
) -> np.ndarray:
    """A part's spike message for steps step_now.. : uint8 bytes of int32 (step, kind) then the events or,
    when that is smaller (more than 1/32 of the block fired), the block bit-packed.

    spikes_local: (n_p,) one step or (k, n_p) k steps; an event is the int32 k_row * n_total + global id
    (n_total = N, only needed for k > 1).
    """
    block = spikes_local.reshape(-1, spikes_local.shape[-1])
    if 32 * np.count_nonzero(block) > block.size:  # counting first: nonzero() alone costs more than packing
        head = np.array([step_now, _BITMASK], np.int32).view(np.uint8)
        return np.concatenate([head, np.packbits(block.reshape(-1).astype(bool))])
    flat = block.reshape(-1).astype(np.uint8, copy=False).view(bool)  # 0/1 spikes; nonzero 4x faster on bool
    rows, cols = np.divmod(np.flatnonzero(flat), block.shape[1])
    msg = np.empty(2 + rows.shape[0], np.int32)
    msg[0], msg[1] = step_now, _EVENTS
    np.add(rows * n_total if block.shape[0] > 1 else 0, members[cols], out=msg[2:], casting="unsafe")
    return msg.view(np.uint8)


def decode_spikes(msg: np.ndarray, members: np.ndarray, spikes_pre: np.ndarray) -> int:
    """Set the spikes of a message from the part with `members` in spikes_pre ((N,) or (k, N), k steps; a
    bit-packed message writes the part's columns whole); returns the message's first step."""
    step_now, kind = msg[:8].view(np.int32)
    flat = spikes_pre.reshape(-1)
    if kind == _EVENTS:
        flat[msg[8:].view(np.int32)] = 1
    else:
        n = spikes_pre.shape[-1]
        k = flat.shape[0] // n
        bits = np.unpackbits(msg[8:], count=k * members.shape[0]).reshape(k, members.shape[0])
        flat.reshape(k, n)[:, members] = bits  # one assignment: 7x faster than scattering the ones
    return int(step_now)


def resolve_codec(name: str | None = None) -> str:
    """The spike codec's name: the argument, else "native" where the C++ extension is built, else "numpy"."""
    if name is None:
        return "native" if fused.spike_codec() is not None else "numpy"
    return name


def spike_codec(name: str | None = None) -> tuple:
    """(encode, decode) with the signatures of encode_spikes / decode_spikes (n_total required): name
    "numpy" (these functions, the format's definition) or "native" (the C++ codec of fumjax._core, the same
    bytes; default where the extension is built)."""
    name = resolve_codec(name)
    if name == "numpy":
        return encode_spikes, decode_spikes
    if name != "native":
        raise ValueError(f"spike codec {name!r}: must be 'numpy' or 'native'")
    native = fused.spike_codec()
    if native is None:
        raise RuntimeError("spike codec 'native' needs the fumjax._core extension (not built here)")
    return native.encode_spikes, native.decode_spikes


def pack_step(spikes: Array, step_now: Array) -> Array:
    """(n_p,) or (k, n_p) uint8 spikes and the int32 step -> one flat uint8 array, the spikes then the step's
    4 bytes: the exchange callback gets one operand (each costs ~30 us of conversion per call)."""
    step_bytes = jax.lax.bitcast_convert_type(jnp.asarray(step_now, jnp.int32).reshape(1), jnp.uint8)
    return jnp.concatenate([spikes.reshape(-1).astype(jnp.uint8), step_bytes.reshape(-1)])


def network_fingerprint(net: Network) -> str:
    """SHA-256 of a network's structure and initial parameters (to refuse resuming on another network)."""
    h = hashlib.sha256()
    for name in ("pre", "post", "delay_steps", "w0", "excitatory", "tau_ms", "v_th_mV"):
        a = np.ascontiguousarray(np.asarray(getattr(net, name)))
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_on_root(ex: Exchanger, directory: str | Path, tree: Any, *, step: int, meta: dict) -> Path:
    """Rank 0 of `ex` writes `tree` (given there; None elsewhere is fine) as directory/ckpt-<step>.npz
    (`fumjax.train.checkpoint.save_checkpoint`, atomic); every rank calls it and gets the path back, or
    CheckpointError on every rank if writing failed."""
    result: tuple[str, str] = ("", "")
    if ex.rank == 0:
        try:
            result = (str(save_checkpoint(directory, tree, step=step, meta=meta)), "")
        except (OSError, CheckpointError) as exc:
            result = ("", f"{type(exc).__name__}: {exc}")
    path, error = ex.allgather_obj(result, f"checkpoint at step {step}")[0]
    if error:
        raise CheckpointError(f"rank 0 could not write the checkpoint: {error}")
    return Path(path)


class MpiRun:
    """One rank's part of a network run in `conservative` mode across the ranks of an MPI communicator.

    States handled here are the rank's local States (neurons `members`, synapses `syn`); `gather_state`
    and `split_state` convert to and from whole-network States.
    """

    def __init__(
        self,
        net: Network,
        comm: Any = None,
        *,
        config: FumConfig | None = None,
        plasticity: bool | str | None = None,
        backend: str | None = None,
        part: Partition | None = None,
        partition_seed: int = 0,
        timeout_s: float = 60.0,
        exchange_every: int | None = None,
        codec: str | None = None,
    ) -> None:
        """Partition `net` over the ranks of comm (default COMM_WORLD; METIS on rank 0, broadcast) and split
        out this rank's part. timeout_s: how long an exchange waits for a peer before naming it and
        aborting the job. exchange_every: steps between spike exchanges, at most (and by default) the
        minimum synaptic delay D; 1 by default in mode stdp and with the fused backend (see below). codec:
        the spike messages' encoder ("native" C++ where built, else "numpy"; see `spike_codec`)."""
        if comm is None:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
        self.ex = Exchanger(comm, timeout_s)
        #: the spike messages' codec ("native" or "numpy", see `spike_codec`)
        self.codec = resolve_codec(codec)
        self._encode, self._decode = spike_codec(self.codec)
        #: spike messages encoded inside the jitted step (the FFI target), not by the exchange callback
        self.encode_in_program = self.codec == "native" and jax.default_backend() == "cpu"
        self._options = dict(
            comm=comm,
            config=config,
            plasticity=plasticity,
            backend=backend,
            partition_seed=partition_seed,
            timeout_s=timeout_s,
            exchange_every=exchange_every,
            codec=codec,
        )
        self.rank, self.size = self.ex.rank, self.ex.size
        self.cfg = config or FumConfig()
        self.mode = resolve_mode(plasticity, self.cfg)
        self.backend = resolve_backend(backend or self.cfg.run.backend)
        if part is None:
            parts = partition(net, self.size, seed=partition_seed).parts if self.rank == 0 else None
            part = partition_from_parts(net, self.ex.comm.bcast(parts, root=0), self.size)
        if part.n_parts != self.size:
            raise ValueError(f"partition has {part.n_parts} parts for {self.size} MPI ranks")
        self.net, self.part = net, part
        self.syn = part_synapses(net, part, self.rank)
        self.local = split_part(net, part, self.rank, self.syn)
        self.members = part.members[self.rank]
        self._ids = jnp.asarray(self.members)
        cross = part.parts[np.asarray(net.pre)] != part.parts[np.asarray(net.post)]
        delays = np.asarray(net.delay_steps)[cross]
        #: minimum delay of the synapses that cross parts (None if none cross)
        self.cross_min_delay = int(delays.min()) if delays.size else None
        #: steps between exchanges: the minimum delay of all synapses (<= cross_min_delay), so that no
        #: spike of a block of that many steps is input to the block
        self.exchange_every = int(np.asarray(net.delay_steps).min()) if net.n_synapses else 1
        if exchange_every is None and self.mode == "stdp" and not self._kernel_synapses():
            # Measured: in mode stdp (weights change every step) blocks of jnp synapse phases left 1 of 12,500
            # weights 1 ulp off the single process on 4 ranks (XLA rounds a multiply-add differently in the
            # two programs); the whole step with the exchange inside matched in every test. The fused
            # synapse kernel does the same arithmetic in both.
            exchange_every = 1
        if exchange_every is not None:
            if not 1 <= exchange_every <= self.exchange_every:
                raise ValueError(
                    f"exchange_every = {exchange_every}: must be in [1, {self.exchange_every}] "
                    "(the minimum synaptic delay)"
                )
            self.exchange_every = int(exchange_every)
        if self.exchange_every * net.n_neurons >= 2**31:
            raise ValueError(f"exchange_every = {self.exchange_every}: events of a block need int32 ids")
        n_max = max(m.shape[0] for m in part.members)  # the largest message: a block of the largest part
        self._spikes = self.ex.channel(fused.max_spike_message_bytes(self.exchange_every * n_max))
        self.n_exchanges = 0
        self.exchange_s = 0.0  # time in exchanges (incl. waiting for slower ranks)
        #: None, or a list that gets (enter, exit) perf_counter seconds of every exchange (bench diagnostics:
        #: `fumjax.distributed.exchange.sync_wait` splits the waiting into imbalance and jitter)
        self.exchange_log: list[tuple[float, float]] | None = None
        self.run_s = 0.0  # time in run / run_driven
        self.cpu_s = 0.0  # CPU time of this process in run / run_driven (< run_s: the rank waited or was
        # descheduled)
        self.steps_run = 0
        self.events_sent = 0
        self.bytes_sent = 0  # spike messages to all peers, payload + envelope estimate
        self._compiled: dict = {}

    def _kernel_synapses(self) -> bool:
        """Whether this rank's synapse phases run the fused kernel (fused backend, supported state)."""
        if self.backend != "fused":
            return False
        return fused.synapse_step_supported(jax.eval_shape(self.init_state), self.local)  # dtypes only

    # ---- load balance -------------------------------------------------------------------------------

    def measure_speeds(self, n_windows: int = 2) -> np.ndarray:
        """(P,) neurons per second of work each rank does in this partition: its part's neurons over the
        median time between two of its exchanges (robust to the odd slow step), timed over n_windows driven
        windows of a throwaway initial state after the same program ran once (compiled, buffers touched);
        the same array on every rank. Collective."""
        if n_windows < 1:
            raise ValueError(f"n_windows = {n_windows}: must be >= 1")
        saved = {k: getattr(self, k) for k in _RUN_COUNTERS}  # the timing runs leave the counters alone
        state, *_ = self.run_driven(self.init_state(), n_windows)
        self.exchange_log = []
        self.run_driven(state, n_windows)
        times = np.asarray(self.exchange_log)
        for k, v in saved.items():
            setattr(self, k, v)
        busy_s = float(np.median(times[1:, 0] - times[:-1, 1]))
        speed = self.local.n_neurons / max(busy_s, 1e-12)
        return np.asarray(self.ex.allgather_obj(speed, "the measured rank speeds"), np.float64)

    def rebalanced(
        self, n_windows: int = 2, speeds: np.ndarray | list[float] | None = None, min_gain: float = 0.05
    ) -> MpiRun:
        """A new MpiRun of the same network, options and communicator whose parts are sized in proportion
        to the ranks' speeds (P,): given (e.g. known relative node speeds), else measured
        (`measure_speeds` over n_windows), so that ranks on slower cores get fewer neurons; or this run
        itself when that would shorten the slowest rank's work per step by less than min_gain (measured
        speeds of equal cores differ by noise). Results stay bit-identical to the single-process run (any
        partition does). Collective."""
        if speeds is None:
            speeds = self.measure_speeds(n_windows)
        #: the speeds the parts were (or would have been) sized to
        self.speeds = np.asarray(speeds, np.float64)
        if self.speeds.shape != (self.size,) or not (
            np.isfinite(self.speeds).all() and (self.speeds > 0).all()
        ):
            raise ValueError(f"speeds = {self.speeds.tolist()}: need {self.size} finite values > 0")
        work_now = (self.part.sizes / self.speeds).max()  # the slowest rank's time per neuron-step unit
        work_balanced = self.part.sizes.sum() / self.speeds.sum()
        #: predicted fraction of the slowest rank's work per step that rebalancing saves
        self.rebalance_gain = float(1.0 - work_balanced / work_now)
        if self.rebalance_gain < min_gain:
            return self
        opts = dict(self._options)
        seed = opts.pop("partition_seed")
        shares = self.speeds  # partition() normalizes them
        parts = partition(self.net, self.size, seed=seed, shares=shares).parts if self.rank == 0 else None
        part = partition_from_parts(self.net, self.ex.comm.bcast(parts, root=0), self.size, shares)
        self.close()
        return MpiRun(self.net, part=part, partition_seed=seed, **opts)

    def close(self) -> None:
        """Cancel this run's posted spike receives (for a run that will not step again, e.g. after
        `rebalanced`)."""
        self._spikes.close()

    # ---- states -------------------------------------------------------------------------------------

    def init_state(self) -> State:
        """This rank's part of `init_state(net, cfg)`."""
        return init_state(self.local, self.cfg)

    def split_state(self, whole: State) -> State:
        """This rank's part of a whole-network State."""
        check_state(whole, self.net, self.cfg)
        return split_state_part(whole, self.part, self.rank, self.syn)

    def gather_state(self, state: State, root: int | None = 0) -> State | None:
        """The whole-network State on `root` (None on the other ranks), or on every rank if root is None."""
        local = {f: np.asarray(getattr(state, f)) for f in state.__dataclass_fields__}
        what, ex = f"state at step {int(state.step)}", self.ex
        got = ex.allgather_obj(local, what) if root is None else ex.gather_obj(local, what, root=root)
        if got is None:
            return None
        states = [State(**{f: jnp.asarray(v) for f, v in d.items()}) for d in got]
        return merge_states(states, self.net, self.part)

    def gather_spikes(self, spikes: Array, root: int = 0) -> np.ndarray | None:
        """This rank's spikes (..., n_p) -> every neuron's (..., N) in original order on `root`."""
        got = self.ex.gather_obj(np.asarray(spikes), "spike rasters", root=root)
        if got is None:
            return None
        out = np.zeros(got[0].shape[:-1] + (self.net.n_neurons,), got[0].dtype)
        for q, x in enumerate(got):
            out[..., self.part.members[q]] = x
        return out

    def allreduce_sum(self, x: float | int) -> float | int:
        """Sum of a scalar over the ranks (exact for ints)."""
        return sum(self.ex.allgather_obj(x, "a sum"))

    # ---- running ------------------------------------------------------------------------------------

    def background_current(self, state: State, n_steps: int) -> Array:
        """The default drive of this rank's neurons for n_steps from state.step: (T, n_p) mV."""
        dc = self.cfg.drive
        return poisson_background_current(
            seed=state.seed,
            n_neurons=self.local.n_neurons,
            first_step=state.step,
            n_steps=n_steps,
            n_inputs=dc.n_inputs,
            rate_hz=dc.rate_hz,
            amp_mV=dc.amp_mV,
            dt_ms=self.cfg.neuron.dt_ms,
            neuron_ids=self._ids,
        ).astype(state.v_mV.dtype)

    def run(self, state: State, i_ext_mV: Array) -> tuple[State, Array]:
        """T steps of this rank's part. i_ext_mV: (T, n_p) mV of its neurons.

        Returns (state, spikes (T, n_p) uint8)."""
        i_ext_mV = jnp.asarray(i_ext_mV, state.v_mV.dtype)
        n_p = self.local.n_neurons
        if i_ext_mV.ndim != 2 or i_ext_mV.shape[1] != n_p or i_ext_mV.shape[0] == 0:
            raise ValueError(
                f"i_ext_mV has shape {i_ext_mV.shape}, expected (T >= 1, {n_p}) for rank {self.rank}"
            )
        fn = self._call(("run", i_ext_mV.shape[0]), self._run_program(), self.local, state, i_ext_mV)
        state, spikes = self.timed(fn, i_ext_mV.shape[0])
        return state, spikes

    def end_window(self, state: State, reward: float | Array) -> State:
        """Close a window on this rank (every rank must pass the same reward)."""
        return _end_window(state, jnp.asarray(reward, state.v_mV.dtype), self.cfg, self.mode)

    def run_driven(
        self, state: State, n_windows: int, *, record_spikes: bool = False
    ) -> tuple[State, Array, Array]:
        """`fumjax.run_driven` on this rank's part: n_windows windows of Poisson background drive, SIE
        self-benefit reward from the gathered (N,) rates. Returns (state, this rank's spikes (W, T, n_p)
        uint8 if record_spikes else its spike counts (W, T) int32, rewards (W,), the same on every rank)."""
        if n_windows <= 0:
            raise ValueError(f"n_windows = {n_windows}: must be >= 1")
        prog = self._driven_program(n_windows, record_spikes)
        fn = self._call(("driven", n_windows, record_spikes), prog, self.local, state)
        state, (out, rewards) = self.timed(fn, n_windows * self.cfg.run.window_steps)
        return state, out, rewards

    def compile(
        self, state: State, n_windows: int = 0, *, n_steps: int = 0, record_spikes: bool = False
    ) -> None:
        """Compile run_driven(state, n_windows) and/or run(state, (n_steps, n_p) input) ahead of time (nothing
        runs, nothing is exchanged), so that ranks start the run together and timings exclude compiling."""
        if n_windows:
            prog = self._driven_program(n_windows, record_spikes)
            self._call(("driven", n_windows, record_spikes), prog, self.local, state)
        if n_steps:
            i_ext = jax.ShapeDtypeStruct((n_steps, self.local.n_neurons), state.v_mV.dtype)
            self._call(("run", n_steps), self._run_program(), self.local, state, i_ext)

    def stats(self) -> list[dict]:
        """Every rank's run statistics: a list by rank of dicts with keys rank, steps, run_s, step_ms,
        cpu_ms_per_step, exchange_s, exchange_share, events_sent, bytes_sent, exchanges."""
        mine = {
            "rank": self.rank,
            "steps": self.steps_run,
            "run_s": self.run_s,
            "step_ms": 1e3 * self.run_s / max(self.steps_run, 1),
            "cpu_ms_per_step": 1e3 * self.cpu_s / max(self.steps_run, 1),
            "exchange_s": self.exchange_s,
            "exchange_share": self.exchange_s / self.run_s if self.run_s else 0.0,
            "events_sent": self.events_sent,
            "bytes_sent": self.bytes_sent,
            "exchanges": self.n_exchanges,
        }
        return self.ex.allgather_obj(mine, "run statistics")

    # ---- checkpoints --------------------------------------------------------------------------------

    def save_checkpoint(self, directory: str | Path, state: State, meta: dict | None = None) -> Path:
        """Write the whole-network state as directory/ckpt-<step>.npz (rank 0, atomic); every rank calls it
        at the same step and gets the path back. Raises CheckpointError on every rank if writing failed."""
        whole = self.gather_state(state)
        record = {**self._meta(), **(meta or {})}
        return save_on_root(self.ex, directory, whole, step=int(state.step), meta=record)

    def load_checkpoint(self, path: str | Path) -> tuple[State, dict]:
        """This rank's part of a checkpoint (a file, or a directory: its latest), written by any number of
        ranks. Returns (local state, record). Raises CheckpointError if it belongs to another network."""
        path = Path(path)
        if path.is_dir():
            found = self.ex.allgather_obj(latest_checkpoint(path), "choosing the checkpoint")[0]
            if found is None:
                raise CheckpointError(f"no checkpoint in {path}")
            path = found
        whole, record = load_checkpoint(path, init_state(self.net, self.cfg))
        mine, theirs = self._meta(), record.get("meta", {})
        for key in ("n_neurons", "n_synapses", "network_sha256"):
            if theirs.get(key) != mine[key]:
                raise CheckpointError(
                    f"{path}: {key} = {theirs.get(key)!r}, this run has {mine[key]!r} (another network)"
                )
        return self.split_state(whole), record

    def _meta(self) -> dict:
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = network_fingerprint(self.net)
        return {
            "n_neurons": self.net.n_neurons,
            "n_synapses": self.net.n_synapses,
            "network_sha256": self._fingerprint,
            "mode": self.mode,
            "backend": self.backend,
            "n_ranks": self.size,
        }

    # ---- exchange callbacks (run on the host inside the jitted scan) --------------------------------

    def _outgoing(self, spikes: Array, step_now: Array) -> Array:
        """What the exchange callback gets for this part's spikes (n_p,) or (k, n_p) of steps step_now..:
        the encoded message (`fused.spike_message`) or, without it, the spikes packed with the step."""
        if self.encode_in_program:
            return fused.spike_message(spikes, self._ids, step_now, self.net.n_neurons)
        return pack_step(spikes, step_now)

    def _exchange_spikes(self, outgoing: np.ndarray, rows: int = 0) -> np.ndarray:
        """The exchange as an io_callback: `_outgoing(spikes, step_now)` of this part's spikes of step
        step_now (rows 0) or of steps step_now.. (rows of them) -> every neuron's (N,) or (rows, N)."""
        n = self.net.n_neurons
        spikes_pre = np.empty((rows, n) if rows else (n,), np.uint8)
        # callbacks may receive jax Arrays: numpy here, or every reshape below dispatches (and compiles) an op
        self._exchange_into(np.asarray(outgoing), spikes_pre, rows)
        return spikes_pre

    def _exchange_call(self, rows: int = 0):
        """outgoing -> spikes_pre (N,) or (rows, N) inside a jitted program: a buffer_callback (~5 us a call
        on the CPU, measured: the exchange fills XLA's output buffer in place) where jax has it, else an
        ordered io_callback (~47 us: it wraps buffers as jax Arrays and copies the result)."""
        n = self.net.n_neurons
        spec = jax.ShapeDtypeStruct((rows, n) if rows else (n,), jnp.uint8)
        if _buffer_callback is None:
            fn = functools.partial(self._exchange_spikes, rows=rows)
            return lambda outgoing: io_callback(fn, spec, outgoing, ordered=True)

        def fill(ctx, out, outgoing) -> None:
            self._exchange_into(np.asarray(outgoing), np.asarray(out), rows)

        return _buffer_callback(fill, spec, has_side_effect=True)

    def _exchange_into(self, outgoing: np.ndarray, spikes_pre: np.ndarray, rows: int) -> None:
        """Send this part's message, receive every other part's, and write every neuron's spikes to
        spikes_pre ((N,) or (rows, N), overwritten whole)."""
        t0 = time.perf_counter()
        n = self.net.n_neurons
        if self.encode_in_program:
            msg = outgoing[4 : 4 + int(outgoing[:4].view(np.int32)[0])]
        else:
            n_p = self.local.n_neurons
            spikes_local = outgoing[:-4].reshape(rows, n_p) if rows else outgoing[:-4]
            msg = self._encode(spikes_local, self.members, int(outgoing[-4:].view(np.int32)[0]), n)
        step_now, kind = msg[:8].view(np.int32).tolist()
        events = (msg.shape[0] - 8) // 4 if kind == _EVENTS else int(np.unpackbits(msg[8:]).sum())
        got = self._spikes.allgather(msg, f"the spikes of step {step_now}")
        spikes_pre.fill(0)
        for q, raw in enumerate(got):
            sent_step = self._decode(raw, self.part.members[q], spikes_pre)
            if sent_step != step_now:
                raise RuntimeError(
                    f"rank {self.rank}: rank {q} sent spikes of step {sent_step} at step {step_now}"
                )
        self.events_sent += events
        self.bytes_sent += (len(got[self.rank]) + _MPI_ENVELOPE_BYTES) * (self.size - 1)
        self.n_exchanges += 1
        self.count_exchange(t0)

    def _gather_rates(self, rates_local: np.ndarray, step_now: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        rates_local = np.asarray(rates_local)
        got = self.ex.allgather_bytes(rates_local, f"the rates at step {int(step_now)}")
        rates = np.empty(self.net.n_neurons, rates_local.dtype)
        for q, raw in enumerate(got):
            rates[self.part.members[q]] = raw.view(rates_local.dtype)
        self.count_exchange(t0)
        return rates

    def count_exchange(self, t0: float) -> None:
        """Count an exchange that started at perf_counter() == t0 and ends now in the statistics."""
        t1 = time.perf_counter()
        self.exchange_s += t1 - t0
        if self.exchange_log is not None:
            self.exchange_log.append((t0, t1))

    # ---- compiled programs --------------------------------------------------------------------------

    def steps(self, net: Network, state: State, i_ext: Array) -> tuple[State, Array]:
        """T = i_ext.shape[0] steps of this part (net: its Network, i_ext: (T, n_p) mV), one exchange per
        exchange_every steps; traceable (inside a jitted program). Returns (state, spikes (T, n_p))."""
        if self.exchange_every == 1:
            cfg, mode, backend = self.cfg, self.mode, self.backend
            call = self._exchange_call()

            def body(s: State, i_t: Array) -> tuple[State, Array]:
                def exchange(spikes: Array) -> Array:
                    return call(self._outgoing(spikes, s.step))

                return step(s, net, i_t, cfg, mode, backend, exchange=exchange)

            return jax.lax.scan(body, state, i_ext)
        d, (t, n_p) = self.exchange_every, i_ext.shape
        n_full, rest = divmod(t, d)
        spikes = []
        if n_full:
            blocks = i_ext[: n_full * d].reshape(n_full, d, n_p)
            state, sp = jax.lax.scan(lambda s, i_blk: self._block(net, s, i_blk), state, blocks)
            spikes.append(sp.reshape(n_full * d, n_p))
        if rest:
            state, sp = self._block(net, state, i_ext[n_full * d :])
            spikes.append(sp)
        return state, jnp.concatenate(spikes) if len(spikes) > 1 else spikes[0]

    def _block(self, net: Network, state: State, i_blk: Array) -> tuple[State, Array]:
        """k <= D steps with one exchange: LIF for all k (every delay is >= D, so no spike of the block is
        input to it), exchange the (k, n_p) spikes, then transmission and STDP of the k steps in order.
        Per neuron and synapse these are the operations of `step`, in the same order."""
        cfg, mode, backend = self.cfg, self.mode, self.backend
        t0 = state.step

        def lif(s: State, i_t: Array) -> tuple[State, Array]:
            s, sp = lif_phase(s, net, i_t, cfg, backend)
            return s.replace(step=s.step + 1), sp

        state, spikes = jax.lax.scan(lif, state, i_blk)
        spikes_pre = self._exchange_call(rows=i_blk.shape[0])(self._outgoing(spikes, t0))

        def synapses(s: State, sp: tuple[Array, Array]) -> tuple[State, None]:
            s = synapse_phase(s, net, sp[0], sp[1], cfg, mode, backend)
            return s.replace(step=s.step + 1), None

        state, _ = jax.lax.scan(synapses, state.replace(step=t0), (spikes_pre, spikes))
        return state, spikes

    @functools.cache  # noqa: B019 - one program per MpiRun
    def _run_program(self):
        return jax.jit(self.steps)

    @functools.cache  # noqa: B019
    def _driven_program(self, n_windows: int, record_spikes: bool):
        cfg, mode, t_win = self.cfg, self.mode, self.cfg.run.window_steps

        def program(net: Network, state: State):
            def window(s: State, _):
                drive = self.background_current(s, t_win)
                s, spikes = self.steps(net, s, drive)
                local_rates = running_rate_hz(s, cfg)
                spec = jax.ShapeDtypeStruct((self.net.n_neurons,), local_rates.dtype)
                rates = io_callback(self._gather_rates, spec, local_rates, s.step, ordered=True)
                reward = cfg.sie.w_self_benefit * sie.self_benefit(rates, target_var=cfg.sie.target_rate_var)
                s = _end_window(s, reward, cfg, mode)
                return s, (spikes if record_spikes else spikes.sum(1, dtype=jnp.int32), reward)

            return jax.lax.scan(window, state, None, length=n_windows)

        return jax.jit(program)

    def _call(self, key: tuple, prog, *args):
        if key not in self._compiled:
            self._compiled[key] = prog.lower(*args).compile()
        return functools.partial(self._compiled[key], *args)

    def timed(self, fn, n_steps: int):
        """fn() (a compiled run of n_steps steps of this part) run to completion, its wall and CPU time
        counted in the statistics."""
        t0, c0 = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(fn())
        self.run_s += time.perf_counter() - t0
        self.cpu_s += time.process_time() - c0
        self.steps_run += n_steps
        return out
