"""The built-in training corpus (8 balanced domains, one of them real data) and user corpora from JSONL.

Every item is an input pattern x in [0, 1]^64 (one shared input layer) and a target class within its domain.
Domains: digits (scikit-learn's handwritten digits, real data), letters, shapes, logic, comparison,
arithmetic, sequence, tones. Synthetic domains are generated from a seed with noise, so items differ.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

__all__ = ["Corpus", "CorpusError", "builtin_corpus", "load_jsonl", "INPUT_DIM", "DOMAINS"]

INPUT_DIM = 64
DOMAINS = ("digits", "letters", "shapes", "logic", "comparison", "arithmetic", "sequence", "tones")
MAX_SKEW = 0.15


class CorpusError(ValueError):
    """A corpus file or corpus content is malformed (the message names the line or the problem)."""


@dataclasses.dataclass(frozen=True)
class Corpus:
    """M items: x (M, D) float32 in [0, 1], target (M,) int32 class within the item's domain,
    domain (M,) int32 index into `domains`, n_classes (len(domains),) int32 classes per domain."""

    x: np.ndarray
    target: np.ndarray
    domain: np.ndarray
    domains: tuple[str, ...]
    n_classes: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx: np.ndarray) -> Corpus:
        """Items idx (in that order)."""
        return dataclasses.replace(self, x=self.x[idx], target=self.target[idx], domain=self.domain[idx])

    def domain_skew(self) -> float:
        """max |count_d - mean count| / mean count over domains (0 = perfectly balanced)."""
        counts = np.bincount(self.domain, minlength=len(self.domains)).astype(np.float64)
        return float(np.abs(counts - counts.mean()).max() / counts.mean())

    def split(self, *, val_fraction: float = 0.2, seed: int = 0) -> tuple[Corpus, Corpus]:
        """Shuffled (train, validation) split, stratified by (domain, target)."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction = {val_fraction}: must be in (0, 1)")
        rng = np.random.default_rng(seed)
        key = self.domain.astype(np.int64) * 1000 + self.target
        val = np.zeros(len(self), bool)
        for k in np.unique(key):  # loop over (domain, class) groups, not items
            idx = rng.permutation(np.flatnonzero(key == k))
            val[idx[: int(round(val_fraction * idx.size))]] = True
        return self.subset(rng.permutation(np.flatnonzero(~val))), self.subset(
            rng.permutation(np.flatnonzero(val))
        )


def builtin_corpus(*, items_per_domain: int = 150, seed: int = 0) -> Corpus:
    """The 8-domain corpus, items_per_domain items each (balanced over classes where possible), shuffled."""
    if items_per_domain < 10:
        raise ValueError(f"items_per_domain = {items_per_domain}: must be >= 10")
    rng = np.random.default_rng(seed)
    xs, ys, ds, ncls = [], [], [], []
    for d, name in enumerate(DOMAINS):
        x, y, k = _GENERATORS[name](items_per_domain, rng)
        xs.append(np.clip(x, 0.0, 1.0).astype(np.float32))
        ys.append(y.astype(np.int32))
        ds.append(np.full(items_per_domain, d, np.int32))
        ncls.append(k)
    corpus = Corpus(
        np.concatenate(xs), np.concatenate(ys), np.concatenate(ds), DOMAINS, np.array(ncls, np.int32)
    )
    skew = corpus.domain_skew()
    if skew >= MAX_SKEW:  # pragma: no cover - generators are balanced by construction
        raise CorpusError(f"domain skew {skew:.3f} >= {MAX_SKEW}")
    return corpus.subset(rng.permutation(len(corpus)))


def load_jsonl(path: str | Path) -> Corpus:
    """A user corpus, one JSON object per line: {"domain": str, "input": [floats in [0,1]], "target": int}."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise CorpusError(f"corpus file not found: {path}") from None
    xs, ys, names = [], [], []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{no}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict) or set(item) != {"domain", "input", "target"}:
            raise CorpusError(f"{where}: expected an object with keys domain, input, target")
        dom, x, y = item["domain"], item["input"], item["target"]
        if not isinstance(dom, str) or not dom:
            raise CorpusError(f"{where}: domain must be a non-empty string")
        if not isinstance(y, int) or isinstance(y, bool) or y < 0:
            raise CorpusError(f"{where}: target must be an integer >= 0, got {y!r}")
        if not isinstance(x, list) or not x or not all(isinstance(v, (int, float)) for v in x):
            raise CorpusError(f"{where}: input must be a non-empty list of numbers")
        arr = np.asarray(x, np.float64)
        if xs and arr.shape != xs[0].shape:
            raise CorpusError(f"{where}: input has {arr.size} values, earlier lines have {xs[0].size}")
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise CorpusError(f"{where}: input values must be finite and within [0, 1]")
        xs.append(arr)
        ys.append(y)
        names.append(dom)
    if not xs:
        raise CorpusError(f"{path}: no items")
    domains = tuple(dict.fromkeys(names))
    domain = np.array([domains.index(n) for n in names], np.int32)
    target = np.array(ys, np.int32)
    n_classes = np.array([target[domain == d].max() + 1 for d in range(len(domains))], np.int32)
    return Corpus(np.stack(xs).astype(np.float32), target, domain, domains, n_classes)


# ---- domain generators: (n, rng) -> (x (n, 64), target (n,), n_classes) ------------------------------------


def _balanced_labels(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % k)


def _flip(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    flips = rng.random(x.shape) < p
    return np.where(flips, 1.0 - x, x)


def _thermo(v: np.ndarray, units: int) -> np.ndarray:
    """Thermometer code of integers v (n,) into (n, units) plus its complement (n, units)."""
    code = (np.arange(units)[None, :] < v[:, None]).astype(np.float64)
    return np.concatenate([code, 1.0 - code], axis=1)


def _digits(n: int, rng: np.random.Generator):
    from sklearn.datasets import load_digits

    data = load_digits()
    y = _balanced_labels(n, 10, rng)
    idx = np.array([rng.choice(np.flatnonzero(data.target == c)) for c in range(10)])  # fallback per class
    pick = np.empty(n, np.int64)
    for c in range(10):  # sample without replacement within each class
        pool = rng.permutation(np.flatnonzero(data.target == c))
        sel = np.flatnonzero(y == c)
        pick[sel] = pool[: sel.size] if sel.size <= pool.size else idx[c]
    return data.data[pick] / 16.0, y, 10


_FONT = {  # 5x7 bitmaps, rows top to bottom
    "A": ["01110", "10001", "10001", "11111", "10001", "10001", "10001"],
    "E": ["11111", "10000", "10000", "11110", "10000", "10000", "11111"],
    "I": ["01110", "00100", "00100", "00100", "00100", "00100", "01110"],
    "O": ["01110", "10001", "10001", "10001", "10001", "10001", "01110"],
    "U": ["10001", "10001", "10001", "10001", "10001", "10001", "01110"],
}


def _place(glyphs: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Put (k, h, w) glyphs[y] at a random offset inside 8x8 images: (n, 64)."""
    k, h, w = glyphs.shape
    n = y.size
    img = np.zeros((n, 8, 8))
    oy = rng.integers(0, 8 - h + 1, n)
    ox = rng.integers(0, 8 - w + 1, n)
    rows = oy[:, None, None] + np.arange(h)[None, :, None]
    cols = ox[:, None, None] + np.arange(w)[None, None, :]
    img[np.arange(n)[:, None, None], rows, cols] = glyphs[y]
    return img.reshape(n, 64)


def _letters(n: int, rng: np.random.Generator):
    glyphs = np.array([[[int(c) for c in row] for row in _FONT[ch]] for ch in "AEIOU"], np.float64)
    y = _balanced_labels(n, 5, rng)
    return _flip(_place(glyphs, y, rng), 0.04, rng), y, 5


def _shapes(n: int, rng: np.random.Generator):
    g = np.zeros((6, 5, 5))
    g[0, 2, :] = 1  # horizontal line
    g[1, :, 2] = 1  # vertical line
    g[2] = np.eye(5)  # diagonal
    g[3] = np.eye(5)[::-1]  # anti-diagonal
    g[4, [0, 4], :] = 1
    g[4, :, [0, 4]] = 1  # square outline
    g[5, 2, :] = 1
    g[5, :, 2] = 1  # cross
    y = _balanced_labels(n, 6, rng)
    return _flip(_place(g, y, rng), 0.04, rng), y, 6


def _logic(n: int, rng: np.random.Generator):
    a, b, op = rng.integers(0, 2, n), rng.integers(0, 2, n), rng.integers(0, 3, n)  # AND, OR, NAND
    out = np.select([op == 0, op == 1], [a & b, a | b], 1 - (a & b))
    bits = lambda v: np.repeat(np.stack([v, 1 - v], 1), 8, axis=1)  # noqa: E731 - 16 units per bit
    ops = np.repeat(np.eye(3)[op], 8, axis=1)
    x = np.concatenate([bits(a), bits(b), ops, np.zeros((n, 8))], axis=1)
    return _flip(x, 0.03, rng), out, 2


def _comparison(n: int, rng: np.random.Generator):
    y = _balanced_labels(n, 3, rng)  # 0: a < b, 1: a == b, 2: a > b
    u = rng.random(n)
    a = np.where(
        y == 0, rng.integers(0, 7, n), np.where(y == 2, rng.integers(1, 8, n), rng.integers(0, 8, n))
    )
    b = np.where(y == 0, a + 1 + np.floor(u * (7 - a)), np.where(y == 2, np.floor(u * a), a)).astype(np.int64)
    x = np.concatenate([_thermo(a * 2, 16), _thermo(b * 2, 16)], axis=1)
    return _flip(x, 0.03, rng), y, 3


def _arithmetic(n: int, rng: np.random.Generator):
    a, b = rng.integers(0, 4, n), rng.integers(0, 4, n)
    x = np.concatenate([_thermo(a * 4, 16), _thermo(b * 4, 16)], axis=1)
    return _flip(x, 0.03, rng), a + b, 7


def _sequence(n: int, rng: np.random.Generator):
    y = _balanced_labels(n, 4, rng)  # ascending, descending, constant, alternating
    start = rng.integers(0, 3, n)
    t = np.arange(4)[None, :]
    seqs = np.select(
        [y[:, None] == 0, y[:, None] == 1, y[:, None] == 2],
        [start[:, None] + 2 * t, 7 - start[:, None] - 2 * t, np.repeat(start[:, None] + 3, 4, 1)],
        start[:, None] + 4 * (t % 2),
    )
    x = np.concatenate([_thermo(np.clip(seqs[:, i], 0, 8), 8) for i in range(4)], axis=1)
    return _flip(x, 0.03, rng), y, 4


def _tones(n: int, rng: np.random.Generator):
    y = _balanced_labels(n, 5, rng)
    f = 6 + 12 * y + rng.integers(-1, 2, n)
    bins = np.arange(64)[None, :]
    spec = np.exp(-0.5 * ((bins - f[:, None]) / 1.5) ** 2) + 0.4 * np.exp(
        -0.5 * ((bins - 2 * f[:, None]) / 2.0) ** 2
    )
    return spec + 0.1 * rng.random((n, 64)), y, 5


_GENERATORS = {
    "digits": _digits,
    "letters": _letters,
    "shapes": _shapes,
    "logic": _logic,
    "comparison": _comparison,
    "arithmetic": _arithmetic,
    "sequence": _sequence,
    "tones": _tones,
}
