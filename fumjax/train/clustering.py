"""Adaptive clustering of neuron activity: k-means with k chosen by silhouette score (scikit-learn).

Clusters give the SIE its states (the most active cluster of a window) and the level at which reward is
averaged. When clusters are recomputed, values learned per cluster (V_states, reward averages) are carried
over by overlap: a new cluster's value is the member-weighted mean of the old clusters' values.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "Clustering",
    "cluster_activity",
    "remap_values",
    "cluster_rates",
    "active_cluster",
    "RewardAverages",
]


@dataclasses.dataclass(frozen=True)
class Clustering:
    """labels: (N,) int32 cluster of each neuron; k clusters; centers: (k, F); silhouette of the chosen k."""

    labels: np.ndarray
    k: int
    centers: np.ndarray
    silhouette: float


def cluster_activity(features: np.ndarray, *, k_min: int = 2, k_max: int = 10, seed: int = 0) -> Clustering:
    """Cluster N neurons by activity features (N, F) (e.g. rates per recent input, Hz); k by best silhouette.

    Silhouette is computed on at most 5000 neurons (a fixed random sample) to stay O(N) for large N.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"features has shape {x.shape}: expected (N, F) with N >= 3")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contains NaN or Inf")
    k_max = min(k_max, x.shape[0] - 1)
    if not 2 <= k_min <= k_max:
        raise ValueError(
            f"k range [{k_min}, {k_max}] is empty for N = {x.shape[0]} (need 2 <= k_min <= k_max < N)"
        )
    rng = np.random.default_rng(seed)
    sample = rng.choice(x.shape[0], size=min(5000, x.shape[0]), replace=False)
    best = None
    for k in range(k_min, k_max + 1):  # a loop over candidate k, not neurons
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
        labels = km.labels_
        if np.unique(labels[sample]).size < 2:
            continue
        score = float(silhouette_score(x[sample], labels[sample]))
        if best is None or score > best.silhouette:
            best = Clustering(labels.astype(np.int32), k, km.cluster_centers_, score)
    if best is None:
        return Clustering(np.zeros(x.shape[0], np.int32), 1, x.mean(0, keepdims=True), 0.0)
    return best


def remap_values(
    old_labels: np.ndarray, new_labels: np.ndarray, values: np.ndarray, k_new: int
) -> np.ndarray:
    """Carry per-cluster values (k_old,) to new clusters (k_new,) by member overlap; empty clusters get 0."""
    old_labels, new_labels = np.asarray(old_labels), np.asarray(new_labels)
    k_old = values.shape[0]
    overlap = np.zeros((k_new, k_old))
    np.add.at(overlap, (new_labels, old_labels), 1.0)
    total = overlap.sum(1)
    return np.where(total > 0, overlap @ values / np.maximum(total, 1.0), 0.0)


def cluster_rates(rates_hz: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean rate (k,) Hz of each cluster's neurons (0 for an empty cluster)."""
    sums = np.bincount(labels, weights=rates_hz, minlength=k)
    counts = np.bincount(labels, minlength=k)
    return sums / np.maximum(counts, 1)


def active_cluster(rates_hz: np.ndarray, labels: np.ndarray, k: int) -> int:
    """The cluster with the highest mean rate: the SIE's state for this window (ties -> lowest index)."""
    return int(np.argmax(cluster_rates(rates_hz, labels, k)))


@dataclasses.dataclass
class RewardAverages:
    """Running mean reward per cluster: avg (k,), count (k,)."""

    avg: np.ndarray
    count: np.ndarray

    @classmethod
    def zeros(cls, k: int) -> RewardAverages:
        return cls(np.zeros(k), np.zeros(k, np.int64))

    def update(self, cluster: int, reward: float) -> None:
        """Fold one window's reward into its cluster's mean."""
        self.count[cluster] += 1
        self.avg[cluster] += (reward - self.avg[cluster]) / self.count[cluster]

    def remap(self, old_labels: np.ndarray, new_labels: np.ndarray, k_new: int) -> RewardAverages:
        """Averages carried to new clusters by overlap; counts restart from the overlap-weighted counts."""
        avg = remap_values(old_labels, new_labels, self.avg, k_new)
        count = np.round(remap_values(old_labels, new_labels, self.count.astype(np.float64), k_new))
        return RewardAverages(avg, count.astype(np.int64))
