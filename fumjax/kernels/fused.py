"""Fused backend: the LIF step as one XLA FFI custom call (C++ on CPU, CUDA/HIP on GPU).

Same signature and bit-exact semantics as :func:`fumjax.kernels.reference.lif_step`.
The native handlers live in the compiled extensions ``fumjax._core`` (CPU) and, when built
with a GPU toolkit, ``fumjax._core_gpu`` (CUDA or ROCm). Targets are registered lazily,
once per process, on first use.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import threading
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

__all__ = ["OPS", "TARGET", "available", "gpu_available", "lif_step"]

TARGET = "fumjax_lif_step"
#: Kernels this backend implements natively (see fumjax.kernels.fused_ops()).
OPS = ("lif_step",)

_lock = threading.Lock()
_modules: dict[str, ModuleType | None] = {}
_errors: dict[str, str] = {}
_registered: set[str] = set()


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
            _registered.add("cpu")
        gpu = _load("_core_gpu")
        if gpu is not None:
            platform = gpu.platform()
            if platform not in _registered:
                for target, capsule in gpu.registrations().items():
                    jax.ffi.register_ffi_target(target, capsule, platform=platform)
                _registered.add(platform)


def available() -> bool:
    """True when the CPU extension ``fumjax._core`` is importable (targets get registered)."""
    _register()
    return _modules.get("_core") is not None


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
