import numpy as np
import pytest

from fumjax.train.clustering import (
    RewardAverages,
    active_cluster,
    cluster_activity,
    cluster_rates,
    remap_values,
)


def test_silhouette_picks_the_true_number_of_groups():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    x = np.concatenate([c + rng.normal(0, 1.0, (40, 2)) for c in centers])
    c = cluster_activity(x, k_min=2, k_max=6, seed=0)
    assert c.k == 3 and c.silhouette > 0.8
    for g in range(3):  # each true group is one cluster
        assert np.unique(c.labels[g * 40 : (g + 1) * 40]).size == 1


def test_remap_by_overlap_by_hand():
    old = np.array([0, 0, 1, 1])
    new = np.array([1, 1, 0, 0])  # the same partition, renamed
    np.testing.assert_allclose(remap_values(old, new, np.array([2.0, 5.0]), 2), [5.0, 2.0])
    new = np.array([0, 0, 0, 1])  # new cluster 0 = {2 of old 0, 1 of old 1}
    np.testing.assert_allclose(remap_values(old, new, np.array([3.0, 6.0]), 3), [4.0, 6.0, 0.0])


def test_cluster_rates_active_cluster_and_reward_averages():
    labels = np.array([0, 0, 1, 2])
    rates = np.array([2.0, 4.0, 10.0, 1.0])
    np.testing.assert_allclose(cluster_rates(rates, labels, 4), [3.0, 10.0, 1.0, 0.0])
    assert active_cluster(rates, labels, 4) == 1
    avg = RewardAverages.zeros(2)
    for r in (1.0, 0.0, 0.5):
        avg.update(1, r)
    assert avg.avg[1] == pytest.approx(0.5) and avg.count.tolist() == [0, 3]


def test_bad_features():
    with pytest.raises(ValueError, match="NaN"):
        cluster_activity(np.array([[0.0], [np.nan], [1.0], [2.0]]))
    with pytest.raises(ValueError, match="expected \\(N, F\\)"):
        cluster_activity(np.zeros(5))
