"""Expectation-Maximisation for a flat diagonal GMM: the reference that SGD training is measured against.

Scikit-learn style (k-means++ seeding, then EM on responsibilities) with one difference that makes the
comparison fair: variances are bounded below by the same ``variance_floor`` the GMM layers use (the
constrained M-step is exactly ``max(variance, floor)``, dimension by dimension).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layers import GMM


@dataclass
class EMResult:
    """Fitted parameters and the mean log-likelihood per sample after every iteration."""

    weights: torch.Tensor  # (K,)
    centroids: torch.Tensor  # (K, D)
    variances: torch.Tensor  # (K, D)
    history: list[float]
    converged: bool

    def to_layer(self, variance_floor: float) -> GMM:
        """A 1x1 GMM layer ``G(K)`` holding these parameters, for scoring with the library's code."""
        k, d = self.centroids.shape
        layer = GMM((1, 1, d), k, variance_floor=variance_floor)
        layer.set_parameters(self.weights, self.centroids, self.variances)
        return layer


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: ``k`` rows of ``x`` (N, D), each drawn with probability ∝ squared distance to the chosen ones."""
    first = torch.randint(len(x), (1,), generator=generator)
    centers = [x[first[0]]]
    dist = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        pick = torch.multinomial(dist / dist.sum(), 1, generator=generator)[0]
        centers.append(x[pick])
        dist = torch.minimum(dist, ((x - x[pick]) ** 2).sum(1))
    return torch.stack(centers)


def fit_em(
    x: torch.Tensor,
    n_components: int,
    variance_floor: float = 0.05,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int = 0,
) -> EMResult:
    """Fit a diagonal GMM to ``x`` (N, D) by EM; stop when the mean log-likelihood gains less than ``tol``."""
    x = x.to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    centroids = kmeans_plus_plus(x, n_components, generator)
    # hard assignment to the seeds gives the first responsibilities, as scikit-learn's k-means init does
    resp = torch.nn.functional.one_hot(torch.cdist(x, centroids).argmin(1), n_components).to(x.dtype)
    layer = GMM((1, 1, x.shape[1]), n_components, variance_floor=variance_floor).to(torch.float64)
    history, converged = [], False
    for _ in range(max_iter):
        counts = resp.sum(0) + 1e-10  # [K]
        centroids = resp.t() @ x / counts[:, None]
        variances = (resp.t() @ (x * x) / counts[:, None] - centroids**2).clamp(min=variance_floor)
        layer.set_parameters(counts / counts.sum(), centroids, variances)
        with torch.no_grad():
            log_joint = layer.log_joint(x[:, None, None, :])[:, 0, 0, :]  # [N, K]
        history.append(float(torch.logsumexp(log_joint, 1).mean()))
        resp = torch.softmax(log_joint, dim=1)
        if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
            converged = True
            break
    return EMResult(counts / counts.sum(), centroids, variances, history, converged)
