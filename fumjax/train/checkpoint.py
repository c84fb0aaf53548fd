"""Atomic, checksummed checkpoints of pytrees (network state, SIE memory, clusters, ...).

A checkpoint is one .npz file: every leaf under its tree path, plus `__meta__`, a JSON record with the format
version, the step, the user's metadata and a SHA-256 over the leaves' names, dtypes, shapes and bytes. It is
written to a temporary file in the same directory, fsynced, then renamed into place, so a crash never leaves a
half-written checkpoint under a real name, and an existing checkpoint is never overwritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "tree_digest"]

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{10})\.npz$")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, of another format, or does not fit the structure asked for."""


def _leaves(tree: Any) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def tree_digest(tree: Any) -> str:
    """SHA-256 of a pytree's leaves (paths, dtypes, shapes, bytes), as a checkpoint records it: two trees
    have the same digest iff they are equal."""
    return _digest(_leaves(tree))


def save_checkpoint(directory: str | Path, tree: Any, *, step: int, meta: dict | None = None) -> Path:
    """Write `tree` (any pytree of arrays) as directory/ckpt-<step>.npz atomically; returns the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt-{step:010d}.npz"
    if path.exists():
        raise CheckpointError(f"{path} already exists: checkpoints are never overwritten")
    arrays = _leaves(tree)
    if "__meta__" in arrays:
        raise CheckpointError("a leaf may not be named __meta__")
    record = {"format": FORMAT_VERSION, "step": int(step), "meta": meta or {}, "sha256": _digest(arrays)}
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(record).encode(), np.uint8), **arrays)
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint with the highest step in `directory`, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = sorted(p for p in directory.iterdir() if _NAME.match(p.name))
    return found[-1] if found else None


def load_checkpoint(path: str | Path, like: Any) -> tuple[Any, dict]:
    """Read a checkpoint into the structure of `like` (same tree paths, shapes, dtypes), checksum verified.

    `path` may be a checkpoint file or a directory (its latest checkpoint). Returns (tree, record).
    """
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no checkpoint in {path}")
        path = found
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # zip/npy parse errors of truncated or damaged files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if "__meta__" not in arrays:
        raise CheckpointError(f"{path}: no __meta__ record")
    record = json.loads(arrays.pop("__meta__").tobytes().decode())
    if record.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format {record.get('format')!r}, expected {FORMAT_VERSION}")
    if _digest(arrays) != record["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch (the file is corrupt)")
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for p, leaf in flat:
        name = jax.tree_util.keystr(p)
        if name not in arrays:
            raise CheckpointError(f"{path}: has no leaf {name}")
        a, ref = arrays[name], np.asarray(leaf)
        if a.shape != ref.shape or a.dtype != ref.dtype:
            raise CheckpointError(
                f"{path}: leaf {name} is {a.dtype}{list(a.shape)}, expected {ref.dtype}{list(ref.shape)}"
            )
        leaves.append(jax.numpy.asarray(a) if isinstance(leaf, jax.Array) else a)
    return jax.tree_util.tree_unflatten(treedef, leaves), record
