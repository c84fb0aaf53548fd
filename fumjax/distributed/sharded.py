"""One part of a partitioned network per device: `shard_map` over a 1-D mesh, spikes exchanged each step.

Every part is padded to n_max neurons and e_max synapses so all devices hold equal shapes. Pad neurons
never spike (threshold DISABLED_V_TH_MV, no input); pad synapses have w = 0 and end on a pad neuron, so
they deliver nothing and get dw = 0 (LTP needs a post spike, LTD reads the pad's y_post = 0). Each step,
the devices' spike vectors (n_max,) are all-gathered and permuted back to original neuron ids, giving the
(N,) presynaptic spike vector every part's `dynamics.step` needs. Since each part sums its synapses in the
whole network's CSR order, a sharded run is bit-identical to `fumjax.simulate` on the whole network.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fumjax import sie
from fumjax.config import FumConfig
from fumjax.distributed.partition import Partition, local_synapses, partition, split
from fumjax.dynamics import _end_window, check_state, resolve_mode, running_rate_hz, step
from fumjax.encoders import poisson_background_current
from fumjax.kernels import resolve_backend
from fumjax.network import Network
from fumjax.plasticity import DISABLED_V_TH_MV
from fumjax.state import State

__all__ = ["ShardedRun", "simulate_sharded", "AXIS"]

AXIS = "parts"  # name of the mesh axis (one part per device)

_NEURON_FIELDS = ("v_mV", "refrac_left", "y_post", "ring_mV", "tau_ms", "v_th_mV", "window_spikes", "rate_hz")
_SYNAPSE_FIELDS = ("w", "elig")
_SHARED_FIELDS = ("x_pre", "elig_t0", "step", "window_start", "seed")

try:  # jax >= 0.6
    _shard_map = jax.shard_map
except AttributeError:  # pragma: no cover - older jax
    from jax.experimental.shard_map import shard_map as _shard_map


def _pad_part(local: Network, n_max: int, e_max: int, max_delay: int) -> Network:
    """A part's network padded to n_max neurons and e_max synapses (pads appended, CSR order kept)."""
    n_p, e_p = local.n_neurons, local.n_synapses
    n_pad, e_pad = n_max - n_p, e_max - e_p
    last_pre = local.n_pre - 1  # pads sort after every real synapse: (pre, post) = (N - 1, first pad)
    plastic = getattr(local, "plastic_pre", None)
    extra = {} if plastic is None else {"plastic_pre": np.asarray(plastic)}
    padded = local._from_csr_numpy(
        np.concatenate([np.asarray(local.pre), np.full(e_pad, last_pre, np.int32)]),
        np.concatenate([np.asarray(local.post), np.full(e_pad, n_p, np.int32)]),
        np.concatenate([np.asarray(local.w0), np.zeros(e_pad, np.float32)]),
        np.concatenate([np.asarray(local.delay_steps), np.full(e_pad, max_delay, np.int32)]),
        np.concatenate([np.asarray(local.excitatory), np.zeros(n_pad, bool)]),
        np.concatenate([np.asarray(local.tau_ms), np.full(n_pad, 20.0, np.float32)]),
        np.concatenate([np.asarray(local.v_th_mV), np.full(n_pad, DISABLED_V_TH_MV, np.float32)]),
        np.arange(e_max, dtype=np.int32),
        excitatory_pre=np.asarray(local.excitatory_pre),
        **extra,
    )
    return dataclasses.replace(padded, max_delay=max_delay)


def _varying_like(new: Array, old: Array) -> Array:
    """`new` typed as varying over the mesh axes `old` varies over: an FFI call's results (the fused
    backend's kernels) carry no such type, and the scan carry must keep its input's."""
    missing = tuple(sorted(_varying_axes(old) - _varying_axes(new)))
    return jax.lax.pcast(new, missing, to="varying") if missing else new


def _varying_axes(x: Array) -> set[str]:
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)  # jax 0.10; older: aval.vma
    return set(mat.varying) if mat is not None else set(getattr(aval, "vma", ()))


class ShardedRun:
    """A network split over a 1-D device mesh, ready to run many times without re-splitting.

    States live as "stacked" States: every leaf has a leading (n_parts,) axis sharded over the mesh
    (neuron fields padded to n_max, synapse fields to e_max). `shard`/`gather` convert whole-network
    States to and from that form; `run`, `run_driven` and `end_window` advance it.
    """

    def __init__(
        self,
        net: Network,
        part: Partition | None = None,
        *,
        n_devices: int | None = None,
        mesh: Mesh | None = None,
        config: FumConfig | None = None,
        plasticity: bool | str | None = None,
        backend: str = "reference",
    ) -> None:
        """Split `net` by `part` (computed with METIS if None) onto mesh (default: the first n_devices)."""
        if mesh is None:
            n_dev = n_devices or (part.n_parts if part is not None else jax.device_count())
            if n_dev > jax.device_count():
                raise ValueError(
                    f"n_devices = {n_dev} but only {jax.device_count()} devices are visible "
                    "(on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=K before importing jax)"
                )
            mesh = Mesh(np.array(jax.devices()[:n_dev]), (AXIS,))
        if mesh.axis_names != (AXIS,):
            raise ValueError(f"mesh must be 1-D with axis name {AXIS!r}, got axes {mesh.axis_names}")
        n_dev = mesh.devices.size
        part = partition(net, n_dev) if part is None else part
        if part.n_parts != n_dev:
            raise ValueError(f"partition has {part.n_parts} parts for a mesh of {n_dev} devices")
        self.cfg = config or FumConfig()
        self.mode = resolve_mode(plasticity, self.cfg)
        self.backend = resolve_backend(backend)
        self.net, self.part, self.mesh = net, part, mesh
        self.n_parts, self.n_neurons, self.n_synapses = n_dev, net.n_neurons, net.n_synapses
        locals_ = split(net, part)
        syns = local_synapses(net, part)
        # +1: every part has a pad neuron for its pad synapses to end on
        self.n_max = int(part.sizes.max()) + 1
        self.e_max = max(1, max(s.shape[0] for s in syns))
        padded = [_pad_part(q, self.n_max, self.e_max, net.max_delay) for q in locals_]
        n, e = net.n_neurons, net.n_synapses
        # padded-global position of each original neuron / synapse, and the inverse (pads -> n / e)
        self.pos_of_neuron = np.empty(n, np.int32)
        self.neuron_of_pos = np.full(n_dev * self.n_max, n, np.int32)
        self.slot_of_synapse = np.empty(e, np.int64 if e >= 2**31 else np.int32)
        self.synapse_of_slot = np.full(n_dev * self.e_max, e, self.slot_of_synapse.dtype)
        for p, (m, s) in enumerate(zip(part.members, syns, strict=True)):
            self.pos_of_neuron[m] = p * self.n_max + np.arange(m.shape[0], dtype=np.int32)
            self.neuron_of_pos[p * self.n_max : p * self.n_max + m.shape[0]] = m
            self.slot_of_synapse[s] = p * self.e_max + np.arange(s.shape[0])
            self.synapse_of_slot[p * self.e_max : p * self.e_max + s.shape[0]] = s
        self._sharded = NamedSharding(mesh, P(AXIS))
        self._replicated = NamedSharding(mesh, P())
        stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *padded)
        self.stacked_net = jax.device_put(stacked, self._sharded)
        self._pos = jax.device_put(self.pos_of_neuron, self._replicated)
        ids = np.where(self.neuron_of_pos < n, self.neuron_of_pos, 0).reshape(n_dev, self.n_max)
        self._ids = jax.device_put(ids, self._sharded)  # drive ids (pads: 0, masked)
        real = (self.neuron_of_pos < n).reshape(n_dev, self.n_max)
        self._real = jax.device_put(real, self._sharded)

    # ---- whole <-> stacked --------------------------------------------------------------------------

    def shard(self, state: State) -> State:
        """Whole-network State -> stacked padded State, sharded over the mesh (leading axis n_parts).

        Host-side numpy gathers (no compilation), then one device_put per field.
        """
        check_state(state, self.net, self.cfg)
        d, nm, em = self.n_parts, self.n_max, self.e_max
        pad_value = {"v_mV": self.cfg.neuron.v_rest_mV, "tau_ms": 20.0, "v_th_mV": DISABLED_V_TH_MV}
        changes = {}
        for f in _NEURON_FIELDS:
            x = np.asarray(getattr(state, f))
            fill = np.full(x.shape[:-1] + (1,), pad_value.get(f, 0), x.dtype)
            x = np.concatenate([x, fill], axis=-1)[..., self.neuron_of_pos]
            changes[f] = np.moveaxis(x.reshape(x.shape[:-1] + (d, nm)), -2, 0)
        for f in _SYNAPSE_FIELDS:
            x = np.asarray(getattr(state, f))
            changes[f] = np.concatenate([x, np.zeros(1, x.dtype)])[self.synapse_of_slot].reshape(d, em)
        for f in _SHARED_FIELDS:
            x = np.asarray(getattr(state, f))
            changes[f] = np.broadcast_to(x, (d,) + x.shape)
        return jax.device_put(state.replace(**changes), self._sharded)

    def gather(self, stacked: State) -> State:
        """Stacked padded State -> whole-network State (x_pre, step, ... from device 0)."""
        changes = {}
        for f in _NEURON_FIELDS:
            x = np.moveaxis(np.asarray(getattr(stacked, f)), 0, -2)
            changes[f] = jnp.asarray(x.reshape(x.shape[:-2] + (-1,))[..., self.pos_of_neuron])
        for f in _SYNAPSE_FIELDS:
            changes[f] = jnp.asarray(np.asarray(getattr(stacked, f)).reshape(-1)[self.slot_of_synapse])
        for f in _SHARED_FIELDS:
            changes[f] = jnp.asarray(np.asarray(getattr(stacked, f))[0])
        return stacked.replace(**changes)

    def spikes_to_global(self, spikes: Array) -> Array:
        """Per-device spikes (n_parts, T, n_max) -> (T, N) in original neuron order."""
        spikes = np.asarray(spikes)
        t = spikes.shape[1]
        flat = np.moveaxis(spikes, 0, 1).reshape(t, self.n_parts * self.n_max)
        return jnp.asarray(flat[:, self.pos_of_neuron])

    def input_to_parts(self, i_ext_mV: Array) -> Array:
        """External input (T, N) -> (n_parts, T, n_max) in the devices' layout (pads get 0), sharded."""
        i_ext_mV = np.asarray(i_ext_mV)
        if i_ext_mV.ndim != 2 or i_ext_mV.shape[1] != self.n_neurons:
            raise ValueError(f"i_ext_mV has shape {i_ext_mV.shape}, expected (T, {self.n_neurons})")
        if not np.issubdtype(i_ext_mV.dtype, np.floating) or not np.all(np.isfinite(i_ext_mV)):
            raise ValueError("i_ext_mV must be floating point and finite")
        t = i_ext_mV.shape[0]
        ext = np.concatenate([i_ext_mV, np.zeros((t, 1), i_ext_mV.dtype)], axis=1)
        x = ext[:, self.neuron_of_pos].reshape(t, self.n_parts, self.n_max)
        return jax.device_put(np.ascontiguousarray(np.moveaxis(x, 1, 0)), self._sharded)

    # ---- running ------------------------------------------------------------------------------------

    def run(self, stacked: State, i_ext_mV: Array) -> tuple[State, Array]:
        """T steps on all devices. i_ext_mV: (T, N) mV (original order). Returns (stacked, spikes (T, N))."""
        i_ext_mV = np.asarray(i_ext_mV)
        if i_ext_mV.ndim == 2 and i_ext_mV.shape[0] == 0:
            raise ValueError("i_ext_mV has 0 steps: give at least one row (shape (T, N), T >= 1)")
        i_parts = self.input_to_parts(i_ext_mV)
        stacked, spikes = self._scan_fn()(self.stacked_net, stacked, i_parts, self._pos)
        return stacked, self.spikes_to_global(spikes)

    def end_window(self, stacked: State, reward: float | Array) -> State:
        """Close a window on every part (reward via eligibility in rstdp mode, intrinsic plasticity)."""
        reward = jnp.asarray(reward, stacked.v_mV.dtype)
        return self._end_fn()(stacked, reward)

    def run_driven(self, stacked: State, n_windows: int) -> tuple[State, Array, Array]:
        """Like `fumjax.run_driven`: n_windows windows of Poisson background drive (by original neuron id)
        and SIE self-benefit reward. Returns (stacked, spike counts (n_windows, T) int32, rewards (W,))."""
        if n_windows <= 0:
            raise ValueError(f"n_windows = {n_windows}: must be >= 1")
        stacked, counts, rewards = self._driven_fn(n_windows)(
            self.stacked_net, stacked, self._ids, self._real, self._pos
        )
        return stacked, counts[0], rewards[0]

    # ---- compiled per-device programs ---------------------------------------------------------------

    def _exchange(self, pos: Array):
        def exchange(spikes: Array) -> Array:  # (n_max,) local -> (N,) original order
            return jnp.take(jax.lax.all_gather(spikes, AXIS, tiled=True), pos)

        return exchange

    def _steps(self, net: Network, state: State, i_ext: Array, pos: Array) -> tuple[State, Array]:
        exchange = self._exchange(pos)

        def body(s: State, i_t: Array) -> tuple[State, Array]:
            new, spikes = step(s, net, i_t, self.cfg, self.mode, self.backend, exchange=exchange)
            return jax.tree.map(_varying_like, new, s), spikes

        return jax.lax.scan(body, state, i_ext)

    @functools.cache  # noqa: B019 - one compiled program per ShardedRun
    def _scan_fn(self):
        def per_device(net, state, i_ext, pos):
            net, state = _unstack(net), _unstack(state)
            state, spikes = self._steps(net, state, i_ext[0], pos)
            return _stack(state), spikes[None]

        return jax.jit(
            _shard_map(
                per_device,
                mesh=self.mesh,
                in_specs=(P(AXIS), P(AXIS), P(AXIS), P()),
                out_specs=(P(AXIS), P(AXIS)),
            )
        )

    @functools.cache  # noqa: B019
    def _end_fn(self):
        cfg, mode = self.cfg, self.mode

        def per_device(state, reward):
            return _stack(_end_window(_unstack(state), reward, cfg, mode))

        return jax.jit(_shard_map(per_device, mesh=self.mesh, in_specs=(P(AXIS), P()), out_specs=P(AXIS)))

    @functools.cache  # noqa: B019
    def _driven_fn(self, n_windows: int):
        cfg, t_win = self.cfg, self.cfg.run.window_steps
        dc = cfg.drive

        def per_device(net, state, ids, real, pos):
            net, state, ids, real = _unstack(net), _unstack(state), ids[0], real[0]

            def window(s: State, _):
                drive = poisson_background_current(
                    seed=s.seed,
                    n_neurons=ids.shape[0],
                    first_step=s.step,
                    n_steps=t_win,
                    n_inputs=dc.n_inputs,
                    rate_hz=dc.rate_hz,
                    amp_mV=dc.amp_mV,
                    dt_ms=cfg.neuron.dt_ms,
                    neuron_ids=ids,
                ).astype(s.v_mV.dtype)
                drive = jnp.where(real[None, :], drive, jnp.zeros((), drive.dtype))
                s, spikes = self._steps(net, s, drive, pos)
                rates = jnp.take(jax.lax.all_gather(running_rate_hz(s, cfg), AXIS, tiled=True), pos)
                reward = cfg.sie.w_self_benefit * sie.self_benefit(rates, target_var=cfg.sie.target_rate_var)
                s = _end_window(s, reward, cfg, self.mode)
                counts = jax.lax.psum(spikes.sum(1, dtype=jnp.int32), AXIS)
                return s, (counts, reward)

            state, (counts, rewards) = jax.lax.scan(window, state, None, length=n_windows)
            return _stack(state), counts[None], rewards[None]

        return jax.jit(
            _shard_map(
                per_device,
                mesh=self.mesh,
                in_specs=(P(AXIS), P(AXIS), P(AXIS), P(AXIS), P()),
                out_specs=(P(AXIS), P(AXIS), P(AXIS)),
            )
        )


def _unstack(tree):
    return jax.tree.map(lambda x: x[0], tree)


def _stack(tree):
    return jax.tree.map(lambda x: x[None], tree)


def simulate_sharded(
    state: State,
    net: Network,
    i_ext_mV: Array,
    *,
    n_devices: int,
    config: FumConfig | None = None,
    plasticity: bool | str | None = None,
    partition: Partition | None = None,
) -> tuple[State, Array]:
    """`fumjax.simulate` on n_devices devices, one part each: whole State and i_ext (T, N) mV in,
    (whole State, spikes (T, N) uint8) out, bit-identical to the single-device run (reference backend)."""
    run = ShardedRun(net, partition, n_devices=n_devices, config=config, plasticity=plasticity)
    stacked, spikes = run.run(run.shard(state), i_ext_mV)
    return run.gather(stacked), spikes
