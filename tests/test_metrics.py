import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import norm

from dcgmm import InputError
from dcgmm.metrics import Bins, js_divergence, ndb_count, near_duplicates


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
