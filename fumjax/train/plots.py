"""PNG plots of a training run: spike raster, rates per cluster, reward components, weights, knowledge graph.

Uses matplotlib (Agg backend, no display) and networkx. Every function writes one file and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["spike_raster", "cluster_rates", "reward_components", "weight_histogram", "knowledge_graph"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def spike_raster(path: Path, spikes: np.ndarray, n_in: int, titles: list[str]) -> Path:
    """Rasters of window spikes (W, T, N) uint8 side by side: inputs below the line at n_in, outputs above."""
    plt = _plt()
    w = spikes.shape[0]
    fig, axes = plt.subplots(1, w, figsize=(2.2 * w + 1, 4), sharey=True, squeeze=False)
    for ax, sp, title in zip(axes[0], spikes, titles, strict=True):
        t, n = np.nonzero(sp)
        ax.scatter(t, n, s=1, c=np.where(n < n_in, "0.6", "C3"), marker="|", linewidths=0.6)
        ax.axhline(n_in - 0.5, color="k", lw=0.5)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("step (ms)")
    axes[0][0].set_ylabel("neuron (inputs below the line)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cluster_rates(path: Path, rates_hz: np.ndarray, cluster_of: np.ndarray, k: int, pop_rates: dict) -> Path:
    """Mean rate (Hz) per activity cluster (left) and per domain's populations (right)."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    means = np.array([rates_hz[cluster_of == c].mean() if np.any(cluster_of == c) else 0.0 for c in range(k)])
    sizes = np.bincount(cluster_of, minlength=k)[:k]
    a.bar(np.arange(k), means, color="C0")
    for c in range(k):
        a.text(c, means[c], f"n={sizes[c]}", ha="center", va="bottom", fontsize=7)
    a.set_xlabel("activity cluster (k-means, silhouette k)")
    a.set_ylabel("mean rate over recent windows (Hz)")
    names = list(pop_rates)
    b.bar(np.arange(len(names)), [pop_rates[n] for n in names], color="C1")
    b.set_xticks(np.arange(len(names)), names, rotation=45, ha="right", fontsize=7)
    b.set_ylabel("mean output rate (Hz)")
    b.set_title("output populations, by domain", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reward_components(path: Path, windows: list[dict], smooth: int = 50) -> Path:
    """SIE components per window (moving average over `smooth` windows), phases shaded."""
    plt = _plt()
    keys = ("td", "novelty", "habituation", "self_benefit", "total", "reward")
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(windows))
    kernel = np.ones(smooth) / smooth
    for k in keys:
        v = np.array([r[k] for r in windows], np.float64)
        if v.size >= smooth:
            v = np.convolve(v, kernel, mode="same")
        ax.plot(x, v, lw=1, label=k)
    phase = np.array([r["phase"] for r in windows])
    for p, color in ((1, "0.92"), (2, "white"), (3, "#e8f0ff")):
        sel = np.flatnonzero(phase == p)
        if sel.size:
            ax.axvspan(sel[0], sel[-1], color=color, zorder=0)
            ax.text(sel[0], ax.get_ylim()[1], f" phase {p}", va="top", fontsize=8)
    ax.set_xlabel("window (50 ms each)")
    ax.set_ylabel(f"value (moving average of {smooth})")
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def weight_histogram(path: Path, w_plastic: np.ndarray, w_persistent: np.ndarray) -> Path:
    """Histogram of the alive output neurons' plastic input weights; persistent (tagged) ones overlaid."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, max(float(w_plastic.max(initial=0.0)), 1e-6), 60)
    ax.hist(w_plastic, bins=bins, color="C0", alpha=0.8, label=f"plastic input->output ({w_plastic.size})")
    if w_persistent.size:
        ax.hist(w_persistent, bins=bins, color="C3", alpha=0.8, label=f"persistent ({w_persistent.size})")
    ax.set_yscale("log")
    ax.set_xlabel("weight")
    ax.set_ylabel("synapses")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def knowledge_graph(
    path: Path,
    prototypes: np.ndarray,
    labels: list[str],
    domain_of: np.ndarray,
    sizes: np.ndarray,
    top: int = 3,
) -> Path:
    """The knowledge graph: one node per population (size = alive neurons, colour = domain), edges to its
    `top` most similar populations by cosine similarity of their mean input weight vectors (G, 2D)."""
    import networkx as nx

    plt = _plt()
    p = prototypes / np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
    sim = p @ p.T
    np.fill_diagonal(sim, -np.inf)
    g = nx.Graph()
    for i, lab in enumerate(labels):
        g.add_node(i, label=lab)
    for i in range(sim.shape[0]):  # a loop over populations (G, tens)
        for j in np.argsort(-sim[i])[:top]:
            if np.isfinite(sim[i, j]):
                g.add_edge(i, int(j), weight=float(sim[i, j]))
    pos = nx.spring_layout(g, seed=0, weight="weight")
    fig, ax = plt.subplots(figsize=(9, 7))
    weights = np.array([d["weight"] for _, _, d in g.edges(data=True)])
    nx.draw_networkx_edges(g, pos, ax=ax, width=0.3 + 2.0 * np.clip(weights, 0, 1) ** 4, alpha=0.4)
    nx.draw_networkx_nodes(
        g, pos, ax=ax, node_size=30 + 25 * sizes, node_color=domain_of, cmap="tab10", vmin=0, vmax=9
    )
    nx.draw_networkx_labels(g, pos, {i: labels[i] for i in g.nodes}, font_size=6, ax=ax)
    ax.set_title("knowledge graph: populations linked to their most similar (cosine of learned weights)")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
