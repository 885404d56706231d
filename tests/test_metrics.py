"""Sample-quality and clustering measures against scipy and naive computations."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import norm

from dcgmm import InputError
from dcgmm.metrics import (Bins, davies_bouldin, dunn_index, js_divergence, ndb_count, near_duplicates,
                           pairwise_distances)


def test_js_divergence_equals_scipy():
    rng = np.random.default_rng(0)
    p, q = rng.random(20), rng.random(20)
    p[3] = 0.0
    p, q = p / p.sum(), q / q.sum()
    assert js_divergence(p, q) == pytest.approx(jensenshannon(p, q) ** 2, rel=1e-10)
    assert js_divergence(p, p) == 0.0
    assert js_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(np.log(2))


def test_ndb_count_equals_a_naive_z_test():
    rng = np.random.default_rng(1)
    p, q = rng.dirichlet(np.ones(30)), rng.dirichlet(np.ones(30))
    n1, n2 = 1000, 800
    expected = 0
    for a, b in zip(p, q):
        pooled = (a * n1 + b * n2) / (n1 + n2)
        z = (a - b) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        expected += abs(z) > norm.ppf(0.975)
    assert ndb_count(p, n1, q, n2) == expected > 0
    assert ndb_count(p, n1, p, n2) == 0


def test_bins_separate_same_from_shifted_distributions(digits):
    images, labels = digits
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    bins = Bins(images[:900], n_bins=20)
    same = bins.compare(images[900:1300], images[1300:1700])
    few_classes = images[900:][labels[900:] < 3]  # a "generator" that only makes 0, 1 and 2
    shifted = bins.compare(few_classes, images[1300:1700])
    assert same.ndb <= 4 and shifted.ndb > 10, (same.ndb, shifted.ndb)
    assert shifted.js > same.js
    assert same.sample_proportions.sum() == pytest.approx(1.0)
    with pytest.raises(InputError, match="at least 20"):
        Bins(images[:10], n_bins=20)


def test_near_duplicates_equals_a_naive_count():
    rng = np.random.default_rng(2)
    x = rng.random((40, 5, 5))
    x[7] = x[3] + 0.01
    x[20] = x[3]
    x[30] = x[31] + 0.5
    naive = sum(
        any(np.sqrt(((x[i] - x[j]) ** 2).mean()) <= 0.02 for j in range(len(x)) if j != i) for i in range(len(x))
    )
    assert near_duplicates(x) == naive == 3


def _points(seed=0, n=60, d=5, k=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    return (rng.normal(size=(n, d)) + 3 * labels[:, None]).astype(np.float32), labels


def test_pairwise_distances_equal_numpy():
    x, _ = _points()
    naive = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(pairwise_distances(x, chunk=7), naive, rtol=1e-6, atol=1e-5)


def test_dunn_index_equals_a_naive_double_loop():
    x, labels = _points()
    separation, diameter = math.inf, 0.0
    for i in range(len(x)):
        for j in range(len(x)):
            d = float(np.linalg.norm(x[i].astype(np.float64) - x[j]))
            if labels[i] == labels[j]:
                diameter = max(diameter, d)
            else:
                separation = min(separation, d)
    assert dunn_index(pairwise_distances(x), labels) == pytest.approx(separation / diameter, rel=1e-5)


def test_davies_bouldin_equals_the_formula():
    x, labels = _points(seed=1)
    ids = np.unique(labels)
    centres = np.stack([x[labels == k].mean(0) for k in ids])
    spread = np.array([np.linalg.norm(x[labels == k] - centres[i], axis=1).mean() for i, k in enumerate(ids)])
    worst = [max((spread[i] + spread[j]) / np.linalg.norm(centres[i] - centres[j]) for j in range(len(ids)) if j != i) for i in range(len(ids))]
    assert davies_bouldin(x, labels) == pytest.approx(np.mean(worst), rel=1e-5)


def test_clustering_measures_refuse_one_cluster_and_wrong_lengths():
    x, labels = _points()
    with pytest.raises(InputError, match="two non-empty clusters"):
        dunn_index(pairwise_distances(x), np.zeros(len(x)))
    with pytest.raises(InputError, match="one cluster label per image"):
        davies_bouldin(x, labels[:-1])


def test_better_separated_clusters_score_better():
    x, labels = _points()
    far = x + 5 * labels[:, None]  # same clusters, moved apart
    assert dunn_index(pairwise_distances(far), labels) > dunn_index(pairwise_distances(x), labels)
    assert davies_bouldin(far, labels) < davies_bouldin(x, labels)
