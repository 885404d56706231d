"""Sample-quality measures: NDB and JS divergence over k-means bins (Richardson & Weiss, NeurIPS 2018),
near-duplicate counts; clustering measures: the Dunn index and the Davies-Bouldin score.

NDB ("number of statistically different bins"): k-means (K bins) is fitted on real training images; real
held-out images and generated samples are assigned to their nearest bin centre; a bin counts as different
when a two-proportion z-test rejects equal proportions at significance ``alpha``. A good generator has
few different bins; NDB / K near ``alpha`` is what two samples of the same distribution give. The JS
divergence (natural log, in [0, ln 2]) of the two bin histograms summarises the same comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError


@dataclass
class BinComparison:
    ndb: int
    """Number of bins whose proportions differ significantly."""
    n_bins: int
    js: float
    """Jensen-Shannon divergence of the two bin histograms (nats)."""
    sample_proportions: np.ndarray
    reference_proportions: np.ndarray

    @property
    def ndb_fraction(self) -> float:
        return self.ndb / self.n_bins


def _flat(images, name: str) -> np.ndarray:
    array = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float64)
    if array.ndim < 2 or len(array) == 0:
        raise InputError(f"{name}: expected a non-empty array of images (N, ...); got shape {array.shape}")
    return array.reshape(len(array), -1)


class Bins:
    """k-means bins fitted on real images (N, ...) — fit once, compare many sample sets against them."""

    def __init__(self, train_images, n_bins: int = 100, seed: int = 0):
        from sklearn.cluster import KMeans

        data = _flat(train_images, "bin training images")
        if len(data) < n_bins:
            raise InputError(f"k-means with {n_bins} bins needs at least {n_bins} training images; got {len(data)}")
        self.kmeans = KMeans(n_clusters=n_bins, n_init=1, random_state=seed).fit(data)
        self.n_bins = n_bins

    def proportions(self, images) -> np.ndarray:
        labels = self.kmeans.predict(_flat(images, "images"))
        return np.bincount(labels, minlength=self.n_bins) / len(labels)

    def compare(self, samples, reference, alpha: float = 0.05) -> BinComparison:
        """NDB and JS of ``samples`` against ``reference`` (real held-out images)."""
        p, q = self.proportions(samples), self.proportions(reference)
        n1, n2 = len(samples), len(reference)
        return BinComparison(ndb_count(p, n1, q, n2, alpha), self.n_bins, js_divergence(p, q), p, q)


def ndb_count(p: np.ndarray, n1: int, q: np.ndarray, n2: int, alpha: float = 0.05) -> int:
    """Bins where proportions ``p`` (of ``n1`` items) and ``q`` (of ``n2``) differ: two-sided two-proportion z-test."""
    pooled = (p * n1 + q * n2) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = np.divide(p - q, se, out=np.zeros_like(p), where=se > 0)
    critical = math.sqrt(2) * _erfinv(1 - alpha)
    return int((np.abs(z) > critical).sum())


def _erfinv(y: float) -> float:
    return float(torch.erfinv(torch.tensor(y, dtype=torch.float64)))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence of two discrete distributions, in nats."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = 0.5 * (p + q)

    def kl(a, b):
        mask = a > 0
        return float((a[mask] * np.log(a[mask] / b[mask])).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def near_duplicates(samples, tolerance: float = 0.02) -> int:
    """Number of samples that have another sample within root-mean-square pixel distance ``tolerance``.

    With pixels in [0, 1], 0.02 is about 5 grey levels of 255: visually the same image.
    """
    x = torch.as_tensor(_flat(samples, "samples"))
    n, d = x.shape
    distances = torch.cdist(x, x) / math.sqrt(d)  # RMS distance, float64
    distances.fill_diagonal_(math.inf)
    return int((distances.min(dim=1).values <= tolerance).sum())


# ---------------------------------------------------------------------------------------------- clustering
def pairwise_distances(images, chunk: int = 1000) -> np.ndarray:
    """Euclidean distances between all pairs of images (N, ...), computed in float64, returned as float32 (N, N).

    N = 10 000 takes 400 MB; compute it once and reuse it for every labelling (:func:`dunn_index`).
    """
    x = torch.as_tensor(_flat(images, "images"))
    out = np.empty((len(x), len(x)), dtype=np.float32)
    for begin in range(0, len(x), chunk):
        out[begin : begin + chunk] = torch.cdist(x[begin : begin + chunk], x).numpy()
    return out


def _check_labels(labels, n: int) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != n:
        raise InputError(f"need one cluster label per image: got {len(labels)} labels for {n} images")
    if len(np.unique(labels)) < 2:
        raise InputError("clustering measures need at least two non-empty clusters; all images got the same label")
    return labels


def dunn_index(distances: np.ndarray, labels) -> float:
    """Dunn index (Dunn 1974) of a labelling, higher is better: the smallest distance between two points of
    different clusters divided by the largest distance between two points of the same cluster.

    ``distances``: (N, N) from :func:`pairwise_distances`; ``labels``: (N,) cluster ids, at least two distinct.
    Every cluster a single point (no diameter) gives ``inf``.
    """
    labels = _check_labels(labels, len(distances))
    diameter, separation = 0.0, np.inf
    for k in np.unique(labels):
        members = labels == k
        rows = distances[members]
        diameter = max(diameter, float(rows[:, members].max()))
        separation = min(separation, float(rows[:, ~members].min()))
    return separation / diameter if diameter > 0 else float("inf")


def davies_bouldin(images, labels) -> float:
    """Davies-Bouldin score (Davies & Bouldin 1979) of a labelling of images (N, ...), lower is better:
    the mean over clusters of the largest (s_i + s_j) / d(c_i, c_j), with s the mean distance of a
    cluster's points to its centroid c. scikit-learn's implementation."""
    from sklearn.metrics import davies_bouldin_score

    x = _flat(images, "images")
    return float(davies_bouldin_score(x, _check_labels(labels, len(x))))
