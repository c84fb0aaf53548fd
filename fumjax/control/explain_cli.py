"""`fumjax explain CHECKPOINT INPUT`: trace what carried one input to the decoder's answer.

The checkpoint is an explainable snapshot (`save_explainable`): the network's synapses (CSR order) and
neuron parameters as trained, the decoder (class of each output neuron), the input code and the config, in
`fumjax.train.checkpoint`'s atomic, checksummed format. INPUT is `digits:IDX` (item IDX of scikit-learn
digits' fixed 25% test split) or a .npy / .json file of intensities in [0, 1], one per input channel pair.
Writes PREFIX.json and PREFIX.png; prints a summary and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fumjax.config import FumConfig
from fumjax.control.explain import Explanation, draw_explanation, explain_raster
from fumjax.network import Network
from fumjax.state import State
from fumjax.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["KIND", "save_explainable", "load_explainable", "explain_checkpoint", "add_explain_command"]

KIND = "fumjax-explainable/1"


def save_explainable(
    directory: str | Path,
    net: Network,
    state: State,
    population: np.ndarray,
    *,
    config: FumConfig,
    encoding: dict,
    step: int,
    clusters: np.ndarray | None = None,
) -> Path:
    """Snapshot what `fumjax explain` needs: synapses with the state's weights, thresholds and time constants,
    population (N,) decoder, encoding {"n_in", "p_max", "in_amp_mV", "encoding", "seed"} of on/off input."""
    tree = {
        "pre": np.asarray(net.pre),
        "post": np.asarray(net.post),
        "delay_steps": np.asarray(net.delay_steps),
        "w": np.asarray(state.w, np.float32),
        "tau_ms": np.asarray(state.tau_ms, np.float32),
        "v_th_mV": np.asarray(state.v_th_mV, np.float32),
        "excitatory": np.asarray(net.excitatory),
        "plastic_pre": np.asarray(net.plastic_pre),
        "population": np.asarray(population, np.int32),
    }
    if clusters is not None:
        tree["clusters"] = np.asarray(clusters, np.int32)
    layout = {k: [list(v.shape), v.dtype.str] for k, v in tree.items()}
    meta = {"kind": KIND, "config": config.to_dict(), "encoding": dict(encoding), "layout": layout}
    return save_checkpoint(directory, tree, step=step, meta=meta)


def load_explainable(path: str | Path) -> tuple[dict, dict]:
    """Read an explainable snapshot (file, or directory: its latest); returns (arrays, meta)."""
    _, record = load_checkpoint(path, {})  # the record (and checksum) first: it says what the leaves are
    meta = record.get("meta", {})
    if meta.get("kind") != KIND:
        raise CheckpointError(
            f"{path}: not an explainable snapshot (kind {meta.get('kind')!r}); make one with "
            "fumjax.control.explain_cli.save_explainable"
        )
    like = {k: np.zeros(shape, np.dtype(dt)) for k, (shape, dt) in meta["layout"].items()}
    arrays, _ = load_checkpoint(path, like)  # a directory resolves to its latest checkpoint both times
    return arrays, meta


def _input_intensities(spec: str, n_pixels: int) -> tuple[np.ndarray, int | None]:
    """(intensities (P,), target label or None) from 'digits:IDX' or a .npy/.json file."""
    if spec.startswith("digits:"):
        from fumjax.train.digits import load_digits_split

        try:
            idx = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"input {spec!r}: expected digits:IDX with an integer IDX") from None
        _, x_te, _, y_te = load_digits_split()
        if not 0 <= idx < len(x_te):
            raise ValueError(f"input {spec!r}: IDX must be in [0, {len(x_te)})")
        x, target = x_te[idx], int(y_te[idx])
    else:
        p = Path(spec)
        if not p.exists():
            raise ValueError(f"input {spec!r}: no such file (give digits:IDX, a .npy or a .json file)")
        x = np.load(p) if p.suffix == ".npy" else np.asarray(json.loads(p.read_text()), np.float64)
        target = None
    x = np.asarray(x, np.float32).ravel()
    if x.shape != (n_pixels,):
        raise ValueError(f"input has {x.size} values, the checkpoint's input code expects {n_pixels}")
    if not (np.all(np.isfinite(x)) and x.min() >= 0 and x.max() <= 1):
        raise ValueError("input intensities must be finite and within [0, 1]")
    return x, target


def explain_checkpoint(checkpoint: str | Path, input_spec: str) -> tuple[Explanation, dict]:
    """Run the snapshot's network on one input (plasticity off, from rest) and explain its answer."""
    import jax.numpy as jnp

    import fumjax
    from fumjax.train.digits import encode_item

    a, meta = load_explainable(checkpoint)
    cfg = FumConfig.from_dict(meta["config"])
    enc = meta["encoding"]
    n_in = int(enc["n_in"])
    x, target = _input_intensities(input_spec, n_in // 2)
    net = Network.from_arrays(
        a["pre"],
        a["post"],
        a["w"],
        a["tau_ms"],
        a["v_th_mV"],
        a["excitatory"],
        delay_steps=a["delay_steps"],
        plastic_pre=a["plastic_pre"],
    )
    state = fumjax.init_state(net, cfg)
    t_win = cfg.run.window_steps
    spk = encode_item(
        jnp.asarray(x),
        seed=int(enc["seed"]),
        first_step=0,
        n_steps=t_win,
        p_max=float(enc["p_max"]),
        encoding=enc["encoding"],
    )
    i_ext = jnp.zeros((t_win, net.n_neurons), jnp.float32).at[:, :n_in].set(spk * float(enc["in_amp_mV"]))
    _, spikes = fumjax.simulate(state, net, i_ext, config=cfg, plasticity="off")
    sources = np.flatnonzero(np.asarray(spk).any(0))
    ex = explain_raster(
        np.asarray(spikes),
        a["pre"],
        a["post"],
        a["delay_steps"],
        a["w"],
        a["population"],
        sources,
        clusters=a.get("clusters"),
    )
    info = {
        "input": input_spec,
        "target": target,
        "correct": None if target is None else ex.prediction == target,
    }
    return ex, info


def add_explain_command(sub: argparse._SubParsersAction) -> None:
    """Register `fumjax explain` on the CLI's subparsers."""
    p = sub.add_parser(
        "explain", help="trace the spike pathway that carried one input to the decoder's answer"
    )
    p.add_argument("checkpoint", help="explainable snapshot (file or directory: its latest)")
    p.add_argument(
        "input", help="digits:IDX (digits test split) or a .npy/.json file of intensities in [0, 1]"
    )
    p.add_argument(
        "--out", default="explain", help="output prefix: PREFIX.json and PREFIX.png (default explain)"
    )
    p.add_argument("--force", action="store_true", help="overwrite existing PREFIX.json / PREFIX.png")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out_json, out_png = Path(args.out + ".json"), Path(args.out + ".png")
    for f in (out_json, out_png):
        if f.exists() and not args.force:
            raise ValueError(f"{f} exists: choose another --out or pass --force")
    ex, info = explain_checkpoint(args.checkpoint, args.input)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({**info, **ex.to_json()}, indent=1))
    title = f"{args.input}: predicted {ex.prediction}" + (
        f", target {info['target']}" if info["target"] is not None else ""
    )
    draw_explanation(ex, str(out_png), title=title)
    print(f"fumjax explain: {title}; population spikes {ex.population_counts}")
    for pw in ex.pathways[:3]:
        chain = " -> ".join(map(str, pw["neurons"]))
        print(
            f"  pathway to output {pw['output']} ({pw['spikes']} spikes): {chain}"
            f"  (share product {pw['share_product']:.3f})"
        )
    for e in ex.cluster_edges[:5]:
        print(f"  {e['from']} -> {e['to']}: causal {e['causal']:.3f}")
    summary = {
        **info,
        "prediction": ex.prediction,
        "pathway": ex.pathway,
        "json": str(out_json),
        "png": str(out_png),
    }
    print(json.dumps(summary))
    return 0
