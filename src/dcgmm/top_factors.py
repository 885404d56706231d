"""Top factors: how the top GMM layer's input varies within each of its components, for the in-painting fill
(beyond the paper).

The top GMM layer is a diagonal GMM over what the layer below it sends up (2L-c: the lowest layer's
responsibilities at its 11 x 11 positions). Given its component ``k`` it predicts every position by the
component's mean, whatever the positions the damage leaves whole show: a digit that is thicker or slanted
differently from its prototype is completed as the prototype. :func:`fit_top_factors` fits every top
component a factor analyser of the inputs it explains, weighted by its responsibilities:
``h ~ N(m_k, W_k W_k^T + Psi_k)`` with mean ``m_k`` (D,), loadings ``W_k`` (D, r) — the probabilistic PCA's
(Tipping & Bishop 1999) — and a diagonal ``Psi_k`` (D,): the variance each dimension keeps beyond them.
In-painting then predicts the top layer's input from the dimensions ``o`` whose receptive field is whole
(:meth:`TopFactors.predict`):

``E[h | h_o] = sum_k q_k (m_k + W_k E[z | h_o, k])``,
``E[z | h_o, k] = (I + W_ko^T Psi_ko^-1 W_ko)^-1 W_ko^T Psi_ko^-1 (h_o - m_ko)``,

with ``q`` the top layer's own posterior given the known pixels. That prediction is the signal the top layer
sends down. On MNIST 0-4 (2L-c with window factors, 1000 held-out test digits, 10-14 px squares given as the
mask) it took the fill's squared error from 0.0634 to 0.0587 (docs/inpainting.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .window_factors import Factors

DEFAULT_RANK = 20
"""Rank r of every top component's factors. Measured on MNIST 0-4 with 2L-c, true masks, 1000 held-out test
images (fill without them 0.0634): rank 10 0.0591, 20 0.0587, 30 0.0588 (docs/inpainting.md)."""
FIT_ELEMENTS = 2**26
"""The factors are fitted on the top-layer inputs of the first images, at most this many numbers of them (22 000
MNIST images for 2L-c, 15 900 for 2L-e)."""
MAX_LOADINGS = 2**23
"""Factors are fitted only when the K x D x r loadings have at most this many elements."""
NOISE_FLOOR = 1e-4
"""Least Psi_kd: dimensions that never vary within a component (positions a component never uses) keep this."""
_MIN_WEIGHT = 1e-3
"""Inputs whose responsibility for a component is below this are left out of its fit."""


@dataclass
class TopFactors(Factors):
    """Factor analysers of the top GMM layer ``layer``'s input, one per component: noise ``Psi_k`` of shape (K, D)."""

    prefix: ClassVar[str] = "top"

    def predict(self, posterior: torch.Tensor, h: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """The expected input ``sum_k q_k E[h | h_o, k]`` (see the module), negative entries 0, observed entries
        their values.

        ``posterior`` (N, H, W, K): the top layer's responsibilities q; ``h`` (N, H, W, D): its input;
        ``observed`` (N, H, W, D): 1 where a dimension is known, 0 where not. Returns (N, H, W, D). A position
        with nothing observed gets ``sum_k q_k m_k``, the top layer's own expectation.
        """
        k, dim, r = self.loadings.shape
        q = posterior.reshape(-1, k)
        values = h.reshape(-1, dim)
        mask = observed.reshape(-1, dim).to(values.dtype)
        eye = torch.eye(r, dtype=values.dtype, device=values.device)
        expected = torch.zeros_like(values)
        for c in range(k):
            m, w, weights = self.means[c], self.loadings[c], mask / self.noise[c]  # weights: Psi_ko^-1 on o, 0 elsewhere
            outer = (w[:, :, None] * w[:, None, :]).reshape(dim, r * r)
            gram = (weights @ outer).reshape(-1, r, r) + eye
            z = torch.linalg.solve(gram, (weights * (values - m)) @ w)  # [P, r]: E[z | h_o, k]
            expected += q[:, c : c + 1] * (m + z @ w.t())
        expected = torch.where(mask > 0, values, expected.clamp_min(0))
        return expected.reshape(h.shape)


def fits(layer, rank: int = DEFAULT_RANK) -> bool:
    """Whether :func:`fit_top_factors` fits factors of ``rank`` for the top GMM layer ``layer``: a rank of at least 1
    (inputs of at least two dimensions), and loadings of at most :data:`MAX_LOADINGS` elements."""
    dim = layer.in_shape[2]
    return min(rank, dim - 1) >= 1 and layer.n_components * dim * min(rank, dim - 1) <= MAX_LOADINGS


@torch.no_grad()
def fit_top_factors(model, images, rank: int = DEFAULT_RANK, batch_size: int = 500,
                    max_elements: int = FIT_ELEMENTS) -> TopFactors | None:
    """Fit :class:`TopFactors` for the top GMM layer of ``model`` on ``images`` (N, H, W, C), read a batch at a
    time, until ``max_elements`` numbers of top-layer input have been gathered (all images if fewer).

    For every component k: the inputs with responsibility at least 1e-3 for it, weighted by it, give the mean
    ``m_k`` and the centred weighted inputs ``C``; the loadings are the probabilistic PCA's from the top
    ``rank`` singular vectors of ``C`` (``W = V_r (lambda_r - s^2)^(1/2)``, ``s^2`` the mean of the other
    eigenvalues), and ``Psi_k`` the weighted variance of every dimension less what ``W_k`` explains, at least
    :data:`NOISE_FLOOR`. The singular vectors are randomised (:func:`torch.svd_lowrank`) with a fixed seed, so the
    fit is reproducible and leaves the global random state alone. A component with less than 5 inputs' weight keeps
    its centroid and gets no loadings (and noise 1). Returns None for a model without a GMM layer below the top
    (its fill is already the exact conditional mean) or when the loadings would exceed :data:`MAX_LOADINGS`.
    """
    top = model.top_gmm
    if not [i for i, _ in model.gmm_layers() if i != top]:
        return None
    layer = model.layers[top]
    if not fits(layer, rank):
        return None
    k, dim = layer.n_components, layer.in_shape[2]
    rank = min(rank, dim - 1)
    inputs, shares, seen = [], [], 0
    for x in model.batches(images, batch_size):
        for below in model.layers[:top]:
            x = below(x)
        inputs.append(x.reshape(-1, dim))
        shares.append(layer(x).reshape(-1, k))
        seen += inputs[-1].numel()
        if seen >= max_elements:
            break
    inputs, shares = torch.cat(inputs), torch.cat(shares).double()  # inputs stay float32: up to 256 MB
    means = torch.zeros(k, dim, dtype=torch.float64, device=inputs.device)
    loadings = torch.zeros(k, dim, rank, dtype=torch.float64, device=inputs.device)
    noise = torch.zeros(k, dim, dtype=torch.float64, device=inputs.device)
    with torch.random.fork_rng(devices=[inputs.device] if inputs.device.type == "cuda" else []):
        torch.manual_seed(0)
        for c in range(k):
            rows = shares[:, c] >= _MIN_WEIGHT
            weight, data = shares[rows, c], inputs[rows].double()
            total = weight.sum()
            if total < 5:  # a component that explains (almost) nothing: its centroid, no loadings (so any noise)
                means[c], noise[c] = layer.centroids[c].double(), 1.0
                continue
            means[c] = weight @ data / total
            centred = (weight / total).sqrt()[:, None] * (data - means[c])
            r = min(rank, len(data) - 1)
            _, singular, vectors = torch.svd_lowrank(centred, q=min(r + 10, *centred.shape), niter=3)
            values = singular[:r] ** 2
            spread = (centred * centred).sum(0)  # per dimension
            s2 = ((spread.sum() - values.sum()) / (dim - r)).clamp_min(0)
            loadings[c, :, :r] = vectors[:, :r] * (values - s2).clamp_min(0).sqrt()
            noise[c] = (spread - (loadings[c] ** 2).sum(1)).clamp_min(NOISE_FLOOR)
    dtype = layer.centroids.dtype
    return TopFactors(top, means.to(dtype), loadings.to(dtype), noise.to(dtype))
