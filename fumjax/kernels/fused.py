"""Fused backend: XLA FFI custom calls (C++ on CPU, CUDA/HIP on GPU).

`lif_step`: the LIF step, same signature and bit-exact semantics as :func:`fumjax.kernels.reference.lif_step`.
`run_steps`: T whole steps of `fumjax.dynamics._simulate` (LIF, delayed transmission, STDP/eligibility) in
one call, on the CPU bit-identical to the jitted reference backend (on the GPU identical rasters, float state
within a few ulp); it takes a `Network` or a `fumjax.compact.CompactNetwork`.
`window_end`: a window's end (`dynamics._end_window`: reward on the synapses, running rate, intrinsic
plasticity, counters) in one call, on the CPU bit-identical to the jitted reference.
`run_window_gpu`: an rstdp window on the GPU whose end (deferred LTP, eligibility unscaled, reward) runs in
the kernel's last pass over the synapses (`dynamics.run_driven` uses it where `window_end_in_kernel` says the
multi path leaves LTP pending).
The native handlers live in the compiled extensions ``fumjax._core`` (CPU) and, when built
with a GPU toolkit, ``fumjax._core_gpu`` (CUDA or ROCm). Targets are registered lazily,
once per process, on first use.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import os
import sys
import threading
from collections.abc import Sequence
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

# One pre_bucket entry per 2**PRE_SHIFT CSR slots: the kernels' slot -> presynaptic neuron table.
from fumjax.compact import PRE_SHIFT
from fumjax.state import elig_tables, weight_dtype

__all__ = [
    "OPS",
    "TARGET",
    "RUN_STEPS_TARGET",
    "available",
    "gpu_available",
    "lif_step",
    "run_steps",
    "run_steps_supported",
    "run_window_gpu",
    "window_end",
    "window_end_supported",
    "window_end_platforms",
    "window_end_in_kernel",
    "synapse_step",
    "spike_message",
    "spike_message_bytes",
    "max_spike_message_bytes",
    "synapse_step_supported",
    "resolve_threads",
    "bytes_per_synapse",
    "gpu_scratch_shape",
    "gpu_segment_steps",
]

TARGET = "fumjax_lif_step"
RUN_STEPS_TARGET = "fumjax_run_steps"
SYNAPSE_STEP_TARGET = "fumjax_synapse_step"
SPIKE_MESSAGE_TARGET = "fumjax_spike_message"
WINDOW_REWARD_TARGET = "fumjax_window_reward"  # GPU only (hip/run_steps.hip)
WINDOW_END_TARGET = "fumjax_window_end"  # cpp/window_end.cc, hip/run_steps.hip
ALL_FINITE_TARGET = "fumjax_all_finite"  # cpp/all_finite.cc: the API's NaN/Inf scan on the CPU
#: Kernels this backend implements natively (see fumjax.kernels.fused_ops()).
OPS = ("lif_step", "run_steps", "synapse_step", "window_end")

_lock = threading.Lock()
_modules: dict[str, ModuleType | None] = {}
_errors: dict[str, str] = {}
_registered: set[str] = set()
_cpu_targets: set[str] = set()
_gpu_targets: dict[str, set[str]] = {}  # jax platform name (lower case) -> targets registered there


def _load_installed_copy(name: str) -> ModuleType | None:
    """Load ``fumjax.<name>`` from another ``fumjax/`` directory on sys.path.

    When Python runs from a source checkout (e.g. ``python -m pytest`` in the repo root) the
    source ``fumjax/`` shadows the installed package and has no compiled extension; the
    installed copy in site-packages does. Load just the extension module from there.
    """
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full_name = f"fumjax.{name}"
    for entry in sys.path:
        candidate_dir = os.path.join(os.path.abspath(entry or os.getcwd()), "fumjax")
        if not os.path.isdir(candidate_dir) or os.path.samefile(candidate_dir, package_dir):
            continue
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(candidate_dir, name + suffix)
            if os.path.isfile(path):
                loader = importlib.machinery.ExtensionFileLoader(full_name, path)
                spec = importlib.util.spec_from_file_location(full_name, path, loader=loader)
                if spec is None:
                    continue
                module = importlib.util.module_from_spec(spec)
                loader.exec_module(module)
                sys.modules[full_name] = module
                return module
    return None


def _load(name: str) -> ModuleType | None:
    if name in _modules:
        return _modules[name]
    module: ModuleType | None
    try:
        module = importlib.import_module(f"fumjax.{name}")
    except ImportError as err:
        _errors[name] = str(err)
        try:
            module = _load_installed_copy(name)
        except ImportError as err2:  # pragma: no cover - broken installed copy
            module = None
            _errors[name] = str(err2)
        if module is not None:
            del _errors[name]
    _modules[name] = module
    return module


def _register() -> None:
    """Register every FFI target of the available extensions (idempotent, thread-safe)."""
    with _lock:
        core = _load("_core")
        if core is not None and "cpu" not in _registered:
            for target, capsule in core.registrations().items():
                jax.ffi.register_ffi_target(target, capsule, platform="cpu")
                _cpu_targets.add(target)
            _registered.add("cpu")
        gpu = _load("_core_gpu")
        if gpu is not None:
            platform = gpu.platform()
            if platform not in _registered:
                for target, capsule in gpu.registrations().items():
                    jax.ffi.register_ffi_target(target, capsule, platform=platform)
                    _gpu_targets.setdefault(platform.lower(), set()).add(target)
                _registered.add(platform)


def available() -> bool:
    """True when the CPU extension ``fumjax._core`` is importable (targets get registered)."""
    _register()
    return _modules.get("_core") is not None


def spike_codec() -> ModuleType | None:
    """The C++ spike message codec of the MPI exchange (``encode_spikes``, ``decode_spikes``: the same bytes
    and effects as fumjax.distributed.mpi_runner's numpy ones, ~10x faster on cache-cold blocks), or None
    without the extension."""
    _register()
    core = _modules.get("_core")
    return core if core is not None and hasattr(core, "encode_spikes") else None


def max_spike_message_bytes(size: int) -> int:
    """The largest spike message of a block of `size` spikes: the 8-byte header and the block bit-packed
    (events are sent only when smaller)."""
    return 8 + (int(size) + 7) // 8


def spike_message_bytes(size: int) -> int:
    """Length of `spike_message`'s result for a block of `size` spikes: the int32 length, then room for the
    largest message."""
    return 4 + max_spike_message_bytes(size)


def spike_message(spikes: Array, members: Array, step_now: Array, n_total: int) -> Array:
    """The MPI exchange's spike message (fumjax.distributed.mpi_runner.encode_spikes' bytes) of a part's
    (n_p,) or (k, n_p) uint8 spikes, encoded inside the jitted program on the CPU: an array of
    spike_message_bytes(k n_p) uint8: the int32 length, then the message. members: (n_p,) int32 ids."""
    if not available():
        raise RuntimeError(f"spike_message needs the fumjax._core extension: {_errors.get('_core')}")
    out = jax.ShapeDtypeStruct((spike_message_bytes(spikes.size),), jnp.uint8)
    call = jax.ffi.ffi_call(SPIKE_MESSAGE_TARGET, out, vmap_method="sequential")
    return call(
        spikes.astype(jnp.uint8),
        members.astype(jnp.int32),
        jnp.asarray(step_now, jnp.int32),
        n_total=np.int64(n_total),
    )


_FINITE_DTYPES = frozenset(np.dtype(t) for t in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))


def all_finite_supported(xs: Sequence[Array]) -> bool:
    """True when fumjax_all_finite can scan these concrete arrays: the CPU target is registered and every
    array is a float16/bfloat16/float32/float64 jax.Array on CPU devices."""
    if not available() or ALL_FINITE_TARGET not in _cpu_targets:
        return False
    for x in xs:
        if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer) or x.dtype not in _FINITE_DTYPES:
            return False
        if any(d.platform != "cpu" for d in x.devices()):
            return False
    return True


@jax.jit
def all_finite(xs: tuple[Array, ...]) -> Array:
    """(k,) bool: whether each array of xs holds no NaN or Inf, one fumjax_all_finite call over all of them
    (CPU; check all_finite_supported first). Same answer as jnp.isfinite(x).all() per array."""
    flags = jax.ffi.ffi_call(ALL_FINITE_TARGET, jax.ShapeDtypeStruct((len(xs),), jnp.uint8))(*xs)
    return flags.astype(bool)


def gpu_available() -> bool:
    """True when ``fumjax._core_gpu`` is importable and JAX sees a GPU device."""
    _register()
    if _modules.get("_core_gpu") is None:
        return False
    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:
        return False


def _as_float(x, name: str, dtype) -> Array:
    x = jnp.asarray(x)
    if x.dtype != dtype:
        raise TypeError(
            f"fused.lif_step: {name} has dtype {x.dtype} but v_mV has dtype {dtype}; "
            "all float inputs must share v_mV's dtype (float32 or float64)"
        )
    return x


def lif_step(
    v_mV: Array,
    i_mV: Array,
    tau_ms: Array,
    v_th_mV: Array,
    refrac_left: Array,
    *,
    v_rest_mV: float,
    v_reset_mV: float,
    dt_ms: float,
    refractory_steps: int,
) -> tuple[Array, Array, Array]:
    """One forward-Euler LIF step for N neurons, as a single fused custom call.

    v_mV, i_mV, tau_ms, v_th_mV: (N,) float32 or float64 (one dtype); refrac_left: (N,) int32.
    V = V + (dt/tau)(v_rest - V) + I; spike where V >= v_th and not refractory; spiking V -> v_reset.
    A refractory neuron (refrac_left > 0) is held at v_reset and cannot spike.
    Returns (v_mV, spikes (N,) uint8, refrac_left int32), bit-identical to the reference backend.

    v_rest_mV, v_reset_mV, dt_ms and refractory_steps are compile-time constants (FFI attributes):
    pass Python numbers, not traced values. Works under jit, vmap and lax.scan.
    """
    if not available():
        raise RuntimeError(
            "fumjax fused kernels are unavailable: the compiled extension fumjax._core could not be "
            f"imported ({_errors.get('_core', 'unknown error')}). Install fumjax with `pip install .`."
        )
    v = jnp.asarray(v_mV)
    dtype = v.dtype
    if dtype not in (jnp.float32, jnp.float64):
        raise TypeError(f"fused.lif_step: v_mV must be float32 or float64, got {dtype}")
    i = _as_float(i_mV, "i_mV", dtype)
    tau = _as_float(tau_ms, "tau_ms", dtype)
    v_th = _as_float(v_th_mV, "v_th_mV", dtype)
    refrac = jnp.asarray(refrac_left)
    if refrac.dtype != jnp.int32:
        raise TypeError(f"fused.lif_step: refrac_left must be int32, got {refrac.dtype}")

    shape = jnp.broadcast_shapes(v.shape, i.shape, tau.shape, v_th.shape, refrac.shape)
    v, i, tau, v_th, refrac = (jnp.broadcast_to(x, shape) for x in (v, i, tau, v_th, refrac))

    call = jax.ffi.ffi_call(
        TARGET,
        (
            jax.ShapeDtypeStruct(shape, dtype),
            jax.ShapeDtypeStruct(shape, jnp.uint8),
            jax.ShapeDtypeStruct(shape, jnp.int32),
        ),
        vmap_method="broadcast_all",
    )
    v_new, spikes, refrac_new = call(
        v,
        i,
        tau,
        v_th,
        refrac,
        v_rest_mV=np.float64(v_rest_mV),
        v_reset_mV=np.float64(v_reset_mV),
        dt_ms=np.float64(dt_ms),
        refractory_steps=np.int32(refractory_steps),
    )
    return v_new, spikes, refrac_new


_MODE_IDS = {"off": 0, "stdp": 1, "rstdp": 2}
# State fields the kernel updates in place, in operand/result order (operand k aliases result k).
_STATE_FIELDS = (
    "v_mV",
    "refrac_left",
    "x_pre",
    "y_post",
    "ring_mV",
    "w",
    "elig",
    "elig_t0",
    "window_spikes",
    "step",
)


def _pre_codes(net) -> Array:
    """(N,) uint8 per presynaptic neuron: 1 excitatory, 0 inhibitory, 2 static (no STDP on its synapses)."""
    codes = net.excitatory_pre.astype(jnp.uint8)
    plastic = getattr(net, "plastic_pre", None)
    return codes if plastic is None else jnp.where(plastic, codes, jnp.uint8(2))


_SYNAPSE_DTYPES_16 = (jnp.float16, jnp.bfloat16)
#: Synapse indices are uint32 in the kernels: E must stay below this.
MAX_SYNAPSES = 2**32


def run_steps_supported(state, net) -> bool:
    """True when `run_steps` handles this (state, network): a whole network (not one part of a partition;
    a `Network` or a `fumjax.compact.CompactNetwork`), float32 or float64 state with weights and
    eligibility in the state's dtype or float16/bfloat16 with float32 state, E < 2^32 and N < 2^31, CPU
    or a GPU with fumjax._core_gpu built (hip/run_steps.hip), and the compiled extension present.
    Otherwise use the step-by-step path."""
    if not available():
        return False
    on_cpu = jax.default_backend() == "cpu"
    if not on_cpu and not gpu_available():  # GPU: hip/run_steps.hip, same target
        return False
    if not _state_dtypes_ok(state):
        return False
    if net.n_pre != net.n_neurons or state.x_pre.shape[-1] != net.n_neurons:
        return False
    return net.n_synapses < MAX_SYNAPSES and net.n_neurons < 2**31 - 1


def _as_uint32(x) -> Array:
    """Index array as uint32: int32 bits reinterpreted (no E-sized convert in the program), uint32 as is."""
    x = jnp.asarray(x)
    if x.dtype == jnp.uint32:
        return x
    if x.dtype == jnp.int32:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    return x.astype(jnp.uint32)


def _pre_shift(net) -> int:
    """log2 of the CSR slots per pre_bucket entry: net.pre_shift where a network carries one (a
    CompactNetwork; a coarser table from CompactNetwork.with_pre_shift), else PRE_SHIFT."""
    return int(getattr(net, "pre_shift", PRE_SHIFT))


def synapse_operands(net) -> tuple[Array, Array, Array, Array, Array, Array]:
    """The kernels' synapse operands of a Network or a CompactNetwork: (row_ptr uint32 (N+1,), pre_bucket
    int32 ((E-1 >> PRE_SHIFT) + 1,), post int32 (E,), delay int32 ((E,), or (0,) when every delay is 1),
    in_ptr uint32 (N+1,), in_syn uint32 (E,)). A CompactNetwork carries its pre_bucket; a Network's is every
    2**PRE_SHIFT-th entry of its pre (CSR order: the row that holds that slot), a strided slice."""
    bucket = getattr(net, "pre_bucket", None)
    if bucket is None:
        bucket = net.pre[:: 1 << _pre_shift(net)]
    return (
        _as_uint32(net.row_ptr),
        jnp.asarray(bucket, jnp.int32),
        jnp.asarray(net.post, jnp.int32),
        # every delay 1: the empty array says so (an all-ones (E,) constant would be rebuilt in every call)
        jnp.zeros((0,), jnp.int32) if net.max_delay == 1 else jnp.asarray(net.delay_steps, jnp.int32),
        _as_uint32(net.in_ptr),
        _as_uint32(net.in_syn),
    )


_GPU_PATHS = {"auto": 0, "block": 1, "multi": 2, "cluster": 3}


def gpu_path_attrs(cfg=None) -> dict[str, np.int32]:
    """The GPU handler's kernel choice, fixed when the program is traced (a compiled program, or a CUDA graph
    captured from it, always runs the same kernels): cfg.run.gpu_path if the config has one, else
    FUMJAX_GPU_RUN_PATH = auto | block | multi | cluster (auto: one persistent block where the network fits
    its shared memory, else multi); FUMJAX_GPU_CLUSTER (CTAs per cluster, default 8) and
    FUMJAX_GPU_CLUSTER_BODY = auto | event | pull for the cluster path (auto = event where it fits);
    FUMJAX_GPU_SPLIT_TRACES = dyn | plast: which warps of the block path's rstdp split kernel own the traces
    (default dyn, the dynamics warps: 6.6% fewer cycles on an H100, bench/GPU_RUN_STEPS.md).
    Change them, then jax.clear_caches()."""
    path = getattr(getattr(cfg, "run", None), "gpu_path", None) or os.environ.get(
        "FUMJAX_GPU_RUN_PATH", "auto"
    )
    if path not in _GPU_PATHS:
        raise ValueError(f"GPU run path {path!r}: must be one of {', '.join(_GPU_PATHS)}")
    cluster = os.environ.get("FUMJAX_GPU_CLUSTER", "") or "0"
    body = os.environ.get("FUMJAX_GPU_CLUSTER_BODY", "") or "auto"
    if not cluster.isdigit() or not 0 <= int(cluster) <= 16 or body not in ("auto", "event", "pull"):
        raise ValueError(
            f"FUMJAX_GPU_CLUSTER = {cluster!r} (want 0..16) / "
            f"FUMJAX_GPU_CLUSTER_BODY = {body!r} (auto, event or pull)"
        )
    traces = os.environ.get("FUMJAX_GPU_SPLIT_TRACES", "") or "dyn"
    if traces not in ("dyn", "plast"):
        raise ValueError(f"FUMJAX_GPU_SPLIT_TRACES = {traces!r}: must be dyn or plast")
    return dict(
        gpu_path=np.int32(_GPU_PATHS[path]),
        gpu_cluster=np.int32(int(cluster)),
        gpu_cluster_body=np.int32(body == "pull"),
        gpu_split_traces=np.int32(traces == "dyn"),
    )


def resolve_threads(threads: int | None, cfg) -> int:
    """Kernel thread count of a call: the argument, else cfg.run.threads; 0 means automatic (one thread per
    200k synapses, at most the cores this process may use that the load average leaves idle). Results do
    not depend on it."""
    t = getattr(cfg.run, "threads", 0) if threads is None else threads
    if not isinstance(t, (int, np.integer)) or isinstance(t, bool) or t < 0:
        raise ValueError(f"threads = {t!r}: must be an int >= 0 (0 = automatic)")
    return int(t)


# Steps per lazy-LTP segment of the GPU multi path at most (one 64-bit spike word per neuron).
GPU_SEGMENT_MAX = 64


def gpu_segment_steps(k_max: int) -> int:
    """Steps of a deferred-LTP segment of the GPU multi path: L = min(max(k_max, 1), GPU_SEGMENT_MAX)."""
    return min(max(int(k_max), 1), GPU_SEGMENT_MAX)


def gpu_scratch_shape(n_neurons: int, k_max: int, mode: str, dtype) -> tuple[int, int]:
    """Shape of the GPU run_steps handler's scratch result (multi path, hip/run_steps.hip MultiScratch), in
    elements of the state dtype: per neuron a 16-byte post cell {post_yd, segment spike bits}, L rows of
    deferred-LTP history (L = min(max(k_max, 1), 64) steps per segment; none in mode off), the spike list
    (LTP factor, index), two counters and a summary byte."""
    seg = 0 if mode == "off" else gpu_segment_steps(k_max)
    return (16 // jnp.dtype(dtype).itemsize + seg + 3, int(n_neurons) + 2)


def _run_steps_call(state, net, i_ext_mV: Array, cfg, mode: str):
    """Checked operands of a run_steps call: (operands, result types without the GPU scratch, attributes,
    the GPU scratch's type)."""
    if int(net.n_synapses) >= MAX_SYNAPSES:
        raise ValueError(
            f"fused.run_steps: the network has {int(net.n_synapses)} synapses; the kernels index synapses "
            f"with uint32 and take at most {MAX_SYNAPSES - 1}"
        )
    if not run_steps_supported(state, net):
        raise ValueError(
            "fused.run_steps: unsupported state/network (needs the compiled extension, a whole "
            "network, float32/float64 state with w and elig in the same dtype, or float16/bfloat16 "
            "with float32 state); use the reference backend"
        )
    if mode not in _MODE_IDS:
        raise ValueError(f"fused.run_steps: mode = {mode!r}: must be one of {', '.join(_MODE_IDS)}")
    dtype = state.v_mV.dtype
    n = net.n_neurons
    i_ext = jnp.asarray(i_ext_mV).astype(dtype)
    if i_ext.ndim != 2 or i_ext.shape[1] != n:
        raise ValueError(f"fused.run_steps: i_ext_mV has shape {i_ext.shape}, expected ({n}, N = {n})")
    t_steps = i_ext.shape[0]
    nc = cfg.neuron
    gamma_pow, inv_pow = elig_tables(cfg)
    operands = tuple(getattr(state, f) for f in _STATE_FIELDS) + (
        state.tau_ms,
        state.v_th_mV,
        i_ext,
        *synapse_operands(net),
        _pre_codes(net),
        jnp.asarray(gamma_pow, state.elig.dtype),  # the reference rounds gamma^k to the storage dtype
        jnp.asarray(inv_pow, dtype),
    )
    out_types = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in operands[: len(_STATE_FIELDS)]) + (
        jax.ShapeDtypeStruct((t_steps, n), jnp.uint8),
    )
    attrs = dict(
        v_rest_mV=np.float64(nc.v_rest_mV),
        v_reset_mV=np.float64(nc.v_reset_mV),
        dt_ms=np.float64(nc.dt_ms),
        **_synapse_attrs(net, cfg, mode),
        refractory_steps=np.int32(nc.refractory_steps),
    )
    scratch = jax.ShapeDtypeStruct(gpu_scratch_shape(n, len(gamma_pow) - 1, mode, dtype), dtype)
    return operands, out_types, attrs, scratch


_ALIASES = {k: k for k in range(len(_STATE_FIELDS))}


def _gpu_run_steps(out_types, scratch):
    """The GPU handler's run_steps call: the state, the spikes and the multi path's scratch (an extra result:
    no allocation inside the handler)."""
    return jax.ffi.ffi_call(
        RUN_STEPS_TARGET, out_types + (scratch,), vmap_method="sequential", input_output_aliases=_ALIASES
    )


def run_steps(state, net, i_ext_mV: Array, cfg, mode: str, threads: int | None = None):
    """T steps of `dynamics._simulate` as one FFI call: returns (state, spikes (T, N) uint8).

    Bit-identical to the jitted reference backend (see cpp/run_steps_compute.h for the FMA placements).
    i_ext_mV: (T, N). cfg and mode are static. Works under jit, lax.scan and vmap (sequential); the state
    arrays are updated in place (input_output_aliases), so inside a scan or with donated buffers no
    E-sized copy is made. Needs run_steps_supported(state, net).
    threads: CPU kernel threads (None: cfg.run.threads; 0: automatic); any count gives identical results.
    The GPU handler takes no thread count.
    """
    operands, out_types, attrs, scratch = _run_steps_call(state, net, i_ext_mV, cfg, mode)
    n_threads = resolve_threads(threads, cfg)
    call = jax.ffi.ffi_call(
        RUN_STEPS_TARGET, out_types, vmap_method="sequential", input_output_aliases=_ALIASES
    )
    call_gpu = _gpu_run_steps(out_types, scratch)
    # The CPU handler also takes a thread count; the GPU handler (hip/run_steps.hip) its path instead.
    gpu_attrs = dict(**gpu_path_attrs(cfg), defer_final_flush=np.int32(0))
    results = jax.lax.platform_dependent(
        *operands,
        cpu=lambda *ops: tuple(call(*ops, **attrs, threads=np.int32(n_threads))),
        default=lambda *ops: tuple(call_gpu(*ops, **attrs, **gpu_attrs))[:-1],
    )
    new = state.replace(**dict(zip(_STATE_FIELDS, results[: len(_STATE_FIELDS)], strict=True)))
    return new, results[-1]


def _in_place_call(target: str, operands: tuple, n_state: int, aliased: tuple[int, ...] | None = None):
    """An ffi_call of `target` (vmap: sequential) whose results are its first n_state operands, updated in
    place: result k aliases operand k for k in `aliased` (default all n_state)."""
    out_types = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in operands[:n_state])
    aliased = range(n_state) if aliased is None else aliased
    return jax.ffi.ffi_call(
        target, out_types, vmap_method="sequential", input_output_aliases={k: k for k in aliased}
    )


# State fields fumjax_window_end updates, in operand/result order. Result k aliases operand k except the two
# counters (2, 7): the GPU kernel's threads read them while one thread writes the new values.
_WINDOW_END_FIELDS = ("w", "elig", "elig_t0", "tau_ms", "v_th_mV", "rate_hz", "window_spikes", "window_start")
_WINDOW_END_ALIASED = (0, 1, 3, 4, 5, 6)


def window_end_platforms() -> tuple[str, ...]:
    """The jax platforms ("cpu", "cuda", "rocm") with a fumjax_window_end handler registered."""
    if not available():
        return ()
    gpu = tuple(p for p, targets in sorted(_gpu_targets.items()) if WINDOW_END_TARGET in targets)
    return (("cpu",) if WINDOW_END_TARGET in _cpu_targets else ()) + gpu


def window_end_supported(state) -> bool:
    """True when `window_end` takes this state on some platform (window_end_platforms), float32/float64
    state with w and elig in its dtype or float16/bfloat16 with float32 state."""
    return bool(window_end_platforms()) and _state_dtypes_ok(state)


def window_end(state, coef: Array, cfg, mode: str, threads: int | None = None):
    """A window's end (`dynamics._end_window`) in one FFI call (C++ on the CPU, one kernel on a GPU).

    mode rstdp: the eligibility unscaled (e = e_hat * gamma^(step - elig_t0), storage dtype) and
    w = clip(w + coef * e, -w_clip, w_clip), one pass over E; every mode: the running rate estimate with the
    window's spikes, intrinsic plasticity from it, elig_t0 = window_start = step, window_spikes = 0.
    coef: () the reward coefficient eta_eff(R) * R (`plasticity.reward_coefficient`, float32, or float64
    with float64 weights). Bit-identical to the jitted reference on the CPU; on the platforms of
    window_end_platforms() only (the caller routes others to XLA). Returns the state. threads: the CPU
    handler's, as in `run_steps` (the pass over E is split; results do not depend on it)."""
    if not window_end_supported(state):
        raise ValueError(
            "fused.window_end: unsupported state (needs the compiled extension and float32/float64 state "
            "with w and elig in its dtype, or float16/bfloat16 with float32 state); use the reference backend"
        )
    if mode not in _MODE_IDS:
        raise ValueError(f"fused.window_end: mode = {mode!r}: must be one of {', '.join(_MODE_IDS)}")
    coef_dtype = jnp.promote_types(state.w.dtype, jnp.float32)
    coef = jnp.asarray(coef)
    if coef.shape != () or coef.dtype != coef_dtype:
        raise ValueError(
            f"fused.window_end: coef has shape {coef.shape} and dtype {coef.dtype}, need () {coef_dtype}"
        )
    gamma_pow, _ = elig_tables(cfg)
    operands = tuple(getattr(state, f) for f in _WINDOW_END_FIELDS) + (
        state.step,
        jnp.asarray(gamma_pow, state.elig.dtype),  # the reference rounds gamma^k to the storage dtype
        coef,
    )
    nc, ip = cfg.neuron, cfg.intrinsic
    call = _in_place_call(WINDOW_END_TARGET, operands, len(_WINDOW_END_FIELDS), _WINDOW_END_ALIASED)
    results = call(
        *operands,
        w_clip=np.float64(cfg.connectivity.w_clip),
        dt_ms=np.float64(nc.dt_ms),
        rate_ema=np.float64(ip.rate_ema),
        target_rate_min_hz=np.float64(ip.target_rate_min_hz),
        target_rate_max_hz=np.float64(ip.target_rate_max_hz),
        v_th_step_mV=np.float64(ip.v_th_step_mV),
        tau_step_ms=np.float64(ip.tau_step_ms),
        v_th_min_mV=np.float64(nc.v_th_min_mV),
        v_th_max_mV=np.float64(nc.v_th_max_mV),
        tau_min_ms=np.float64(nc.tau_min_ms),
        tau_max_ms=np.float64(nc.tau_max_ms),
        mode=np.int32(_MODE_IDS[mode]),
        intrinsic=np.int32(bool(ip.enabled)),
        threads=np.int32(resolve_threads(threads, cfg)),
    )
    return state.replace(**dict(zip(_WINDOW_END_FIELDS, results, strict=True)))


def window_end_in_kernel(state, net, cfg) -> bool:
    """Whether an rstdp window on the GPU ends in fumjax_window_reward (run_window_gpu): where run_steps
    takes the multi path, whose last segment's LTP is still pending at the window's end and is applied in
    the same pass over E. Where the network runs as one block (gpu_path auto, block or cluster, and it fits:
    asked of the handler's own planner, `_core_gpu.block_path_fits`) nothing is pending, and the window ends
    in fumjax_window_end (dynamics._end_window) without this kernel's fixed cost (FUM-1k full learning:
    fumjax_window_reward 3.23-3.29 against XLA's end 3.05 ms per 1000 steps on an H200; fumjax_window_end
    2.571 against XLA's 2.601 on an H100, bench/RESULTS.md). Decided when the program is traced, like
    gpu_path_attrs."""
    if int(gpu_path_attrs(cfg)["gpu_path"]) == _GPU_PATHS["multi"]:
        return True
    gpu = _load("_core_gpu")
    if gpu is None:
        raise RuntimeError(
            "fused.window_end_in_kernel: the GPU extension fumjax._core_gpu is not built "
            f"({_errors.get('_core_gpu', 'not found')})"
        )
    return not gpu.block_path_fits(int(net.n_neurons), int(net.n_synapses), state.v_mV.dtype.itemsize)


def run_window_gpu(state, net, i_ext_mV: Array, cfg, reward_of):
    """An rstdp window on the GPU in two FFI calls: run_steps without its final flush, then
    fumjax_window_reward, which applies the pending LTP, unscales the eligibility (e = e_hat *
    gamma^(n - t0)) and applies the reward w = clip(w + coef * e) in one pass over E (instead of the flush's
    pass and XLA's second pass over w and elig).

    reward_of(state) -> (reward, coef) with coef = eta_eff(R) * R in the state dtype; it is called on the
    state after the steps, whose eligibility still lacks the deferred LTP: it may read neuron state only.
    Returns (state with w and elig updated (elig_t0 not: the caller's end of window sets it), spikes (T, N)
    uint8, reward). GPU only (lower it under a platform_dependent branch for GPUs)."""
    operands, out_types, attrs, scratch = _run_steps_call(state, net, i_ext_mV, cfg, "rstdp")
    t_steps = int(out_types[-1].shape[0])
    if t_steps < 1:
        raise ValueError("fused.run_window_gpu: i_ext_mV has 0 steps; a window needs at least one")
    call = _gpu_run_steps(out_types, scratch)
    results = call(*operands, **attrs, **gpu_path_attrs(cfg), defer_final_flush=np.int32(1))
    after = state.replace(**dict(zip(_STATE_FIELDS, results[: len(_STATE_FIELDS)], strict=True)))
    reward, coef = reward_of(after)
    row_ptr, _, post, _, _, _, codes, gamma, inv = operands[len(_STATE_FIELDS) + 3 :]
    reward_call = jax.ffi.ffi_call(
        WINDOW_REWARD_TARGET,
        tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (state.w, state.elig)),
        vmap_method="sequential",
        input_output_aliases={0: 0, 1: 1},
    )
    w, elig = reward_call(
        after.w,
        after.elig,
        state.step,
        state.elig_t0,
        row_ptr,
        post,
        codes,
        gamma,
        inv,
        results[-1],
        jnp.asarray(coef, state.v_mV.dtype),
        w_clip=np.float64(cfg.connectivity.w_clip),
        t_steps=np.int32(t_steps),
    )
    return after.replace(w=w, elig=elig), results[-2], reward


def _synapse_attrs(net, cfg, mode: str) -> dict:
    """FFI attributes of a step's synapse half: g_syn, STDP amplitudes and decays, clip, mode, pre_shift."""
    cc, sc, dt = cfg.connectivity, cfg.stdp, cfg.neuron.dt_ms
    return dict(
        g_syn_mV=np.float64(cc.g_syn_mV),
        a_plus=np.float64(sc.a_plus),
        a_minus=np.float64(sc.a_minus),
        w_clip=np.float64(cc.w_clip),
        # The reference's decay factors: Python math.exp in float64, rounded to the dtype by jnp.
        decay_x=np.float64(math.exp(-dt / sc.tau_plus_ms)),
        decay_y=np.float64(math.exp(-dt / sc.tau_minus_ms)),
        mode=np.int32(_MODE_IDS[mode]),
        pre_shift=np.int32(_pre_shift(net)),
    )


# State fields synapse_step updates in place, in operand/result order.
_SYNAPSE_STATE_FIELDS = ("ring_mV", "w", "elig", "elig_t0", "x_pre", "y_post")


def synapse_step_supported(state, net) -> bool:
    """True when `synapse_step` handles this (state, network), a whole network or one part of a partition:
    the CPU extension with the target, JAX on the CPU, float32/float64 state with w and elig in its dtype
    or float16/bfloat16 with float32 state, E < 2^32. Otherwise `dynamics.synapse_phase` runs the reference
    kernels."""
    if not available() or SYNAPSE_STEP_TARGET not in _cpu_targets or jax.default_backend() != "cpu":
        return False
    return _state_dtypes_ok(state) and net.n_synapses < MAX_SYNAPSES and net.n_pre < 2**31 - 1


def _state_dtypes_ok(state) -> bool:
    """float32/float64 state, w and elig in its dtype or float16/bfloat16 with float32 state."""
    dtype = jnp.dtype(state.v_mV.dtype)
    w_dtype = jnp.dtype(state.w.dtype)
    w_ok = w_dtype == dtype or (dtype == jnp.float32 and w_dtype in _SYNAPSE_DTYPES_16)
    return dtype in (jnp.float32, jnp.float64) and w_ok and jnp.dtype(state.elig.dtype) == w_dtype


def synapse_step(state, net, spikes_pre: Array, spikes: Array, cfg, mode: str):
    """`dynamics.synapse_phase` as one FFI call, event-driven: only the rows of spiking pre and the in-lists
    of spiking posts are visited (plus the dense eligibility renormalization once per K steps).

    spikes_pre: (N_pre,) uint8 spikes of the neurons `net.pre` names (a part's: from the exchange), spikes:
    (N,) this network's. Bit-identical to the jitted reference. Returns the state with ring_mV, w, elig,
    elig_t0, x_pre and y_post updated (in place under scan or donation). Needs synapse_step_supported.
    """
    if not synapse_step_supported(state, net):
        raise ValueError(
            "fused.synapse_step: unsupported state/network (needs the compiled extension with "
            f"{SYNAPSE_STEP_TARGET}, JAX on the CPU, float32/float64 state with w and elig in the same dtype "
            "or float16/bfloat16 with float32 state); use the reference backend"
        )
    if mode not in _MODE_IDS:
        raise ValueError(f"fused.synapse_step: mode = {mode!r}: must be one of {', '.join(_MODE_IDS)}")
    n, n_pre = net.n_neurons, net.n_pre
    spikes_pre, spikes = jnp.asarray(spikes_pre, jnp.uint8), jnp.asarray(spikes, jnp.uint8)
    if spikes_pre.shape != (n_pre,) or spikes.shape != (n,):
        raise ValueError(
            f"fused.synapse_step: spikes_pre {spikes_pre.shape} and spikes {spikes.shape}: expected "
            f"({n_pre},) (N_pre) and ({n},) (N)"
        )
    gamma_pow, inv_pow = elig_tables(cfg)
    row_ptr, bucket, post, delay, in_ptr, in_syn = synapse_operands(net)
    # A Network's per-synapse pre names each in-list entry's pre directly (a CompactNetwork has none: the
    # kernel then bisects row_ptr between pre_bucket entries)
    pre = getattr(net, "pre", None)
    pre = jnp.zeros((0,), jnp.int32) if pre is None else jnp.asarray(pre, jnp.int32)
    operands = tuple(getattr(state, f) for f in _SYNAPSE_STATE_FIELDS) + (
        state.step,
        spikes_pre,
        spikes,
        row_ptr,
        bucket,
        pre,
        post,
        delay,
        in_ptr,
        in_syn,
        _pre_codes(net),
        jnp.asarray(gamma_pow, state.elig.dtype),
        jnp.asarray(inv_pow, state.v_mV.dtype),
    )
    call = _in_place_call(SYNAPSE_STEP_TARGET, operands, len(_SYNAPSE_STATE_FIELDS))
    results = call(*operands, **_synapse_attrs(net, cfg, mode))
    return state.replace(**dict(zip(_SYNAPSE_STATE_FIELDS, results, strict=True)))


# Bytes of each array the kernels read per synapse (uint32/int32 indices), by role.
def bytes_per_synapse(net, cfg, mode: str | None = None) -> dict[str, float]:
    """Storage of the fused kernels (CPU and GPU) per synapse, counted from the arrays they hold for `net`
    (a Network or a CompactNetwork) under `cfg`.

    Per synapse: w and elig in the synapse dtype (weight_dtype(cfg): float32, float64, float16 or bfloat16;
    elig only in mode rstdp), post (int32, transmission), delay (int32, only when the network has a delay
    above 1) and, for plastic modes, the in-list (in_syn, uint32). No per-synapse pre: the kernels find a
    synapse's presynaptic neuron from row_ptr and pre_bucket (int32, one per 2**PRE_SHIFT slots). Per
    neuron: row_ptr and in_ptr (uint32, in_ptr only when plastic), spread over the synapses.
    Returns {name: bytes per synapse} with 'plastic_total' (what a plastic synapse costs: 12 with 16-bit
    w and elig in rstdp), 'per_neuron_share', 'pre_bucket', 'total' (all three), 'call_scratch' (what one
    CPU call of >= 32 plastic steps allocates for its duration: each in-list entry's pre, int32, plus
    the learning in-list itself when some presynaptic neurons are static; 0 otherwise), and
    'process_total': everything a run holds per synapse, i.e. the state's w and elig plus every array of
    the network (a Network also keeps pre, w0, input_order and int32 delays for the reference backend).
    mode: None -> cfg.plasticity.mode.
    """
    mode = cfg.plasticity.mode if mode is None else mode
    if mode not in _MODE_IDS:
        raise ValueError(f"mode = {mode!r}: must be one of {', '.join(_MODE_IDS)}")
    e = max(int(net.n_synapses), 1)
    n = int(net.n_neurons)
    wb = float(jnp.dtype(weight_dtype(cfg)).itemsize)
    plastic = mode != "off"
    parts = {
        "w": wb,
        "elig": wb if mode == "rstdp" else 0.0,
        "post": 4.0,
        "delay": 4.0 if int(net.max_delay) > 1 else 0.0,
        "in_syn": 4.0 if plastic else 0.0,
    }
    parts["plastic_total"] = sum(parts.values())
    parts["per_neuron_share"] = 4.0 * (n + 1) * (2 if plastic else 1) / e
    parts["pre_bucket"] = 4.0 * ((((e - 1) >> PRE_SHIFT) + 1) if plastic else 0) / e
    parts["total"] = parts["plastic_total"] + parts["per_neuron_share"] + parts["pre_bucket"]
    static = bool(np.any(~np.asarray(net.plastic_pre))) if plastic else False
    parts["call_scratch"] = (8.0 if static else 4.0) if plastic else 0.0
    parts["process_total"] = (parts["w"] + parts["elig"]) + sum(net.nbytes.values()) / e
    return parts
