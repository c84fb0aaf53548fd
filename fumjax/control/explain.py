"""Interpretability (FUM E.2): spike-pathway tracing, synaptic contribution, cluster-level reasoning graph.

Given a network, its weights and one input's spike raster (T, N):
- co-activity of synapse e (j -> i, delay d): C_e = sum_t s_j[t - d] s_i[t], the pre spikes that arrived
  when the post neuron fired (FUM's sum(s_i s_j), shifted by the delay a spike takes to arrive);
- contribution: w_e * C_e (FUM's w_ij * co-activity), in units of weight x spike pairs;
- causal tracing: starting from the decoder's output spikes, a spike of i at t is explained by the spikes of
  its excitatory presynaptic neurons j at t - d (those that delivered input at t); marking backwards in time
  gives every spike on a causal chain to the output, and the causal contribution of each synapse (the part of
  w_e * C_e on those chains). Each synapse's share of its post neuron's causal input is a number in (0, 1];
  the pathway to an output neuron is the chain from an externally driven neuron that maximizes the product of
  shares (a shortest path under cost -log share, networkx);
- the cluster graph sums causal contributions between clusters: which clusters drive which.
Analysis runs on the host (numpy; a Python loop over time steps, vectorized over synapses).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "coactivity",
    "causal_contribution",
    "Explanation",
    "explain_raster",
    "draw_explanation",
]


def coactivity(spikes: np.ndarray, pre: np.ndarray, post: np.ndarray, delay: np.ndarray) -> np.ndarray:
    """C_e = sum_t spikes[t - delay_e, pre_e] * spikes[t, post_e] over E synapses; (T, N) -> (E,) int64."""
    s = np.asarray(spikes).astype(bool)
    pre, post, delay = np.asarray(pre), np.asarray(post), np.asarray(delay)
    out = np.zeros(pre.shape[0], np.int64)
    for d in np.unique(delay):  # a loop over distinct delays (few), not synapses
        sel = np.flatnonzero(delay == d)
        if d >= s.shape[0]:
            continue
        for lo in range(0, sel.size, 1 << 16):  # bound the (T, chunk) temporaries
            e = sel[lo : lo + (1 << 16)]
            out[e] = np.count_nonzero(s[: s.shape[0] - d][:, pre[e]] & s[d:][:, post[e]], axis=0)
    return out


def causal_contribution(
    spikes: np.ndarray,
    pre: np.ndarray,
    post: np.ndarray,
    delay: np.ndarray,
    w: np.ndarray,
    targets: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Trace back from the spikes of `targets` (neuron ids): returns (causal (E,) float64: w_e times the
    number of spike pairs of e on a causal chain to a target spike, 0 for w_e <= 0; marked (T, N) bool: the
    spikes on those chains)."""
    s = np.asarray(spikes).astype(bool)
    t_n = s.shape[0]
    pre, post, delay = np.asarray(pre), np.asarray(post), np.asarray(delay)
    w = np.asarray(w, np.float64)
    mark = np.zeros_like(s)
    mark[:, np.asarray(targets)] = s[:, np.asarray(targets)]
    exc = np.flatnonzero(w > 0)
    pairs = np.zeros(pre.shape[0], np.int64)
    for t in range(t_n - 1, 0, -1):  # a loop over time steps, vectorized over synapses
        tp = t - delay[exc]
        ok = tp >= 0
        e = exc[ok]
        hit = mark[t, post[e]] & s[tp[ok], pre[e]]
        e = e[hit]
        pairs[e] += 1
        mark[t - delay[e], pre[e]] = True
    return np.where(w > 0, w * pairs, 0.0), mark


@dataclasses.dataclass
class Explanation:
    """What drove a decision. pathways: per spiking output neuron, the best causal chain (neuron ids, source
    first) with the product of shares; top_synapses: by contribution w * C; clusters: cluster-to-cluster
    causal contribution; prediction: the decoded class (-1 when silent)."""

    prediction: int
    population_counts: list[int]
    pathways: list[dict]
    top_synapses: list[dict]
    cluster_edges: list[dict]
    cluster_names: list[str]
    causal_edges: list[dict]

    def to_json(self) -> dict:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @property
    def pathway(self) -> list[int]:
        """The decision's pathway: the strongest chain into the winning population (empty if none)."""
        return self.pathways[0]["neurons"] if self.pathways else []


def explain_raster(
    spikes: np.ndarray,
    pre: np.ndarray,
    post: np.ndarray,
    delay: np.ndarray,
    w: np.ndarray,
    population: np.ndarray,
    sources: np.ndarray,
    *,
    clusters: np.ndarray | None = None,
    cluster_names: Sequence[str] | None = None,
    top_k: int = 20,
) -> Explanation:
    """Explain one input's raster (T, N) for a decoder given by population (N,) (class of each output neuron,
    -1 elsewhere; the class with most spikes wins). sources: ids of the externally driven neurons.
    clusters (N,) int and names: the grouping of the cluster graph (default: "input" for sources, "class c"
    for output neurons, "hidden" for the rest)."""
    import networkx as nx

    s = np.asarray(spikes).astype(bool)
    pop = np.asarray(population)
    n = s.shape[1]
    if pop.shape != (n,):
        raise ValueError(f"population has shape {pop.shape}, expected ({n},) to match the raster")
    n_classes = int(pop.max()) + 1 if (pop >= 0).any() else 0
    counts = s.sum(0)
    pop_counts = np.bincount(pop[pop >= 0], weights=counts[pop >= 0], minlength=n_classes).astype(int)
    pred = int(np.argmax(pop_counts)) if n_classes and pop_counts.sum() > 0 else -1
    winners = np.flatnonzero((pop == pred) & (counts > 0)) if pred >= 0 else np.zeros(0, int)
    causal, _ = causal_contribution(s, pre, post, delay, w, winners)
    co = coactivity(s, pre, post, delay)
    contrib = np.asarray(w, np.float64) * co

    into = np.bincount(np.asarray(post), weights=causal, minlength=n)
    live = np.flatnonzero(causal > 0)
    g = nx.DiGraph()
    for e in live:
        j, i = int(pre[e]), int(post[e])
        share = causal[e] / into[i]
        if g.has_edge(j, i):  # parallel synapses between one pair: their shares add
            share += g[j][i]["share"]
        g.add_edge(j, i, share=share, cost=-math.log(min(share, 1.0)))
    src = set(np.asarray(sources).tolist())
    for j in src & set(g.nodes):
        g.add_edge("in", j, share=1.0, cost=0.0)
    pathways = []
    for i in sorted(winners.tolist(), key=lambda x: (-counts[x], x)):
        if "in" not in g or i not in g or not nx.has_path(g, "in", i):
            continue
        path = nx.shortest_path(g, "in", i, weight="cost")[1:]
        strength = math.prod(g[a][b]["share"] for a, b in zip(path[:-1], path[1:], strict=True))
        pathways.append({"output": i, "spikes": int(counts[i]), "neurons": path, "share_product": strength})

    order = np.argsort(-np.abs(contrib), kind="stable")[:top_k]
    top = [
        {
            "pre": int(pre[e]),
            "post": int(post[e]),
            "w": float(w[e]),
            "coactivity": int(co[e]),
            "contribution": float(contrib[e]),
            "causal": float(causal[e]),
        }
        for e in order
        if contrib[e] != 0
    ]

    if clusters is None:
        lab = np.where(pop >= 0, 2 + np.maximum(pop, 0), 1)
        lab[np.asarray(sources, int)] = 0
        names = ["input", "hidden"] + [f"class {c}" for c in range(n_classes)]
    else:
        lab = np.asarray(clusters)
        names = (
            list(cluster_names)
            if cluster_names is not None
            else [f"cluster {c}" for c in range(lab.max() + 1)]
        )
    k = len(names)
    flow = np.zeros((k, k))
    np.add.at(flow, (lab[np.asarray(pre)[live]], lab[np.asarray(post)[live]]), causal[live])
    cl_edges = [
        {"from": names[a], "to": names[b], "causal": float(flow[a, b])}
        for a, b in sorted(zip(*np.nonzero(flow), strict=True), key=lambda ab: -flow[ab])
    ]
    causal_edges = [
        {"pre": int(pre[e]), "post": int(post[e]), "causal": float(causal[e])}
        for e in live[np.argsort(-causal[live], kind="stable")]
    ]
    return Explanation(pred, pop_counts.tolist(), pathways, top, cl_edges, names, causal_edges)


def draw_explanation(ex: Explanation, path: str, *, max_edges: int = 60, title: str = "") -> None:
    """PNG: left, the strongest causal synapses with the decision's pathway in red; right, the cluster graph
    (edge width ~ causal contribution)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 6))
    g = nx.DiGraph()
    for e in ex.causal_edges[:max_edges]:
        g.add_edge(e["pre"], e["post"], weight=e["causal"])
    on_path = set(zip(ex.pathway[:-1], ex.pathway[1:], strict=True)) if ex.pathway else set()
    for a, b in on_path:
        if not g.has_edge(a, b):
            g.add_edge(a, b, weight=0.0)
    if g.number_of_nodes():
        pos = nx.spring_layout(g, seed=0)
        wmax = max((d["weight"] for *_, d in g.edges(data=True)), default=1.0) or 1.0
        colors = ["tab:red" if (a, b) in on_path else "0.6" for a, b in g.edges]
        widths = [0.5 + 3.0 * d["weight"] / wmax for *_, d in g.edges(data=True)]
        node_col = ["tab:red" if v in ex.pathway else "tab:blue" for v in g.nodes]
        nx.draw_networkx(
            g,
            pos,
            ax=ax1,
            node_color=node_col,
            edge_color=colors,
            width=widths,
            node_size=160,
            font_size=6,
            arrowsize=8,
        )
    ax1.set_title(f"causal synapses (pathway in red): {' -> '.join(map(str, ex.pathway))}", fontsize=9)
    ax1.axis("off")
    cg = nx.DiGraph()
    cg.add_nodes_from(ex.cluster_names)
    for e in ex.cluster_edges:
        cg.add_edge(e["from"], e["to"], weight=e["causal"])
    if cg.number_of_edges():
        pos = nx.circular_layout(cg)
        cmax = max(d["weight"] for *_, d in cg.edges(data=True)) or 1.0
        nx.draw_networkx(
            cg,
            pos,
            ax=ax2,
            node_color="tab:green",
            node_size=900,
            font_size=8,
            width=[0.5 + 5.0 * d["weight"] / cmax for *_, d in cg.edges(data=True)],
            connectionstyle="arc3,rad=0.1",
        )
    ax2.set_title("cluster-level reasoning graph (causal contribution)", fontsize=9)
    ax2.axis("off")
    fig.suptitle(title or f"prediction: class {ex.prediction}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
