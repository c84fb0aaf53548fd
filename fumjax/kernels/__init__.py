"""One dispatch point per kernel: `reference` (pure jnp, the truth) or `fused` (C++/GPU through XLA FFI).

The backend is chosen by the call's `backend` argument, else the `FUMJAX_BACKEND` environment variable,
else `reference`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType

from fumjax.kernels import reference

BACKENDS = ("reference", "fused")

__all__ = ["BACKENDS", "get_kernel", "resolve_backend"]


def resolve_backend(backend: str | None = None) -> str:
    """The backend name to use: the argument, else $FUMJAX_BACKEND, else 'reference'."""
    name = backend or os.environ.get("FUMJAX_BACKEND") or "reference"
    if name not in BACKENDS:
        raise ValueError(
            f"backend = {name!r}: must be one of {', '.join(BACKENDS)} (argument or FUMJAX_BACKEND)"
        )
    return name


def get_kernel(name: str, backend: str | None = None) -> Callable:
    """The implementation of kernel `name` (e.g. 'lif_step') in `backend`.

    A backend that does not (yet) implement an operation runs the reference one for it;
    `fused_ops()` lists what the fused backend really fuses.
    """
    if resolve_backend(backend) == "fused":
        fused = _fused_module()
        if hasattr(fused, name):
            return getattr(fused, name)
    return getattr(reference, name)


def fused_ops() -> tuple[str, ...]:
    """Names of the kernels the fused backend implements natively."""
    return tuple(getattr(_fused_module(), "OPS", ()))


def _fused_module() -> ModuleType:
    from fumjax.kernels import fused

    if not fused.available():
        raise RuntimeError(
            "backend 'fused' needs the compiled extension fumjax._core; reinstall with `pip install .`"
        )
    return fused
