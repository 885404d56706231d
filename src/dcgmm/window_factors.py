"""Window factors: a low-rank Gaussian of the windows each component of the lowest GMM layer explains, for the
in-painting fill (beyond the paper).

The lowest GMM layer's components are diagonal Gaussians: given some pixels of its window, a component
predicts the others by its centroid alone, whatever the known ones show — a stroke that enters the window
from the known side is not continued into the missing side. After training, :func:`fit_window_factors` fits
every component ``k`` a probabilistic PCA (Tipping & Bishop 1999) of the windows it explains, weighted by its
responsibilities: windows ``~ N(m_k, W_k W_k^T + s_k^2 I)`` with mean ``m_k`` (D,), loadings ``W_k`` (D, r)
and noise ``s_k^2`` (at least the layer's variance floor). In-painting then conditions every window on its
known dimensions ``o`` (:meth:`WindowFactors.condition`):

* ``p(k | x_o) ∝ prior_k N(x_o; m_ko, W_ko W_ko^T + s_k^2 I)``, the prior being the signal from the layer
  above;
* ``E[x | x_o, k] = m_k + W_k E[z | x_o, k]`` with ``E[z | x_o, k] = M^-1 W_ko^T (x_o - m_ko)`` and
  ``M = W_ko^T W_ko + s_k^2 I`` (r x r: the Woodbury identity keeps all algebra at the rank);

and the windows' expectations ``sum_k p(k | x_o) E[x | x_o, k]`` are combined at every pixel weighted by their
precision (:func:`precision_weighted`): a window that sees the pixel's surroundings predicts it more surely
than one that does not. On MNIST 0-4 (2L-c, 1000 held-out test digits, 10-14 px squares given as the mask) the
factors took the fill's squared error from 0.0750 to 0.0643 at rank 10, the weighting to 0.0634;
docs/inpainting.md has the measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

DEFAULT_RANK = 10
"""Rank r of every component's factors (at most D - 1). Measured on MNIST 0-4 with 2L-c, true masks, before the
precision weighting: held-out test images rank 5 0.0651, 10 0.0643; the benchmark's images rank 10 0.0632, 20
0.0633 (docs/inpainting.md)."""
FIT_WINDOWS = 2**20
"""The factors are fitted on the windows of the first images, until at least this many windows (about 8700
MNIST images for 2L-c, 1600 for 3L-a)."""
MAX_ELEMENTS = 2**26
"""Factors are fitted only when the K x D x D second moments have at most this many elements."""
_PRODUCT_ELEMENTS = 2**20
"""Bound on the (windows x K x D) products formed at a time while fitting (2L-c64, 4000 MNIST images: 2**24
5.2 s, 2**20 2.6 s, 2**18 3.1 s; loadings equal within 1e-6)."""
_CONDITION_ELEMENTS = 2**19
"""Bound on the (windows x K x D) elements of a chunk of windows conditioned at once: small enough for the
temporaries to stay in the CPU's caches (2L-c64, 500 MNIST images with the true mask: 2048 windows at a time
9.3-11.9 s, 128 windows (2**19 elements) 5.8-6.8 s; 2L-c 3.1 s -> 2.6 s; the same results to the bit)."""


@dataclass
class Factors:
    """Low-rank Gaussians of a GMM layer's input, one per component, as saved with a model's statistics."""

    prefix: ClassVar[str] = ""
    """Name prefix of the tensors in the safetensors file."""
    layer: int
    """Index of the GMM layer in the stack."""
    means: torch.Tensor
    """m_k, shape (K, D)."""
    loadings: torch.Tensor
    """W_k, shape (K, D, r)."""
    noise: torch.Tensor
    """The noise variances: (K,) for an isotropic noise s_k^2, (K, D) for a diagonal one."""

    @property
    def rank(self) -> int:
        return self.loadings.shape[2]

    def to(self, device):
        return type(self)(self.layer, self.means.to(device), self.loadings.to(device), self.noise.to(device))

    def finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in (self.means, self.loadings, self.noise))

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and JSON metadata for a safetensors file."""
        tensors = {f"{self.prefix}.{name}": getattr(self, name) for name in ("means", "loadings", "noise")}
        return {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, {"layer": self.layer}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict):
        return cls(int(meta["layer"]), *(tensors[f"{cls.prefix}.{name}"] for name in ("means", "loadings", "noise")))


@dataclass
class WindowFactors(Factors):
    """Probabilistic PCA of every component's windows, for the GMM layer ``layer`` (the lowest one): noise
    ``s_k^2`` of shape (K,)."""

    prefix: ClassVar[str] = "windows"

    def condition(self, prior: torch.Tensor, x: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The expected window given its known dimensions, ``sum_k p(k | x_o) E[x | x_o, k]``, and its variance.

        ``prior`` (N, H, W, K): non-negative component weights from above (normalised here); ``x`` (N, H, W, D):
        the layer's input; ``known`` (N, H, W, D): 1 where a dimension is known, 0 where not. Returns the mean
        and the variance, (N, H, W, D) each: on the missing dimensions those of the mixture of the components'
        Gaussian conditionals (``Var[x | x_o, k] = s_k^2 (I + W_k M^-1 W_k^T)`` on the diagonal), on the known
        ones their values and variance 0. A window without a known dimension gets the prior's mixture.
        """
        k, dim = self.means.shape
        flat_prior = prior.reshape(-1, k).clamp(min=0)
        total = flat_prior.sum(1, keepdim=True)
        flat_prior = torch.where(total > 0, flat_prior / total.clamp_min(1e-30), torch.full_like(flat_prior, 1.0 / k))
        mask = known.reshape(-1, dim).to(x.dtype)
        values = x.reshape(-1, dim)
        mean = flat_prior @ self.means  # [P, D]: windows without a known dimension
        second = (self.noise[:, None] + (self.loadings**2).sum(-1) + self.means**2)  # [K, D]: E[x^2 | k]
        variance = (flat_prior @ second - mean * mean).clamp_min(0)
        partly = torch.nonzero((mask.amax(1) > 0) & (mask.amin(1) == 0)).flatten()  # some known, some missing
        for chunk in partly.split(max(1, _CONDITION_ELEMENTS // (k * dim))):
            mean[chunk], variance[chunk] = self._condition_rows(flat_prior[chunk], values[chunk], mask[chunk])
        mean = torch.where(mask > 0, values, mean)
        variance = torch.where(mask > 0, torch.zeros_like(variance), variance)
        return mean.reshape(x.shape), variance.reshape(x.shape)

    def _condition_rows(self, prior: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of :meth:`condition` for rows: prior (B, K), x and mask (B, D) -> (B, D) twice."""
        m, w, s2 = self.means, self.loadings, self.noise
        k, dim, r = w.shape
        outer = (w[:, :, :, None] * w[:, :, None, :]).reshape(k, dim, r * r)  # W_kd W_kd^T
        gram = (mask @ outer.permute(1, 0, 2).reshape(dim, k * r * r)).reshape(-1, k, r, r) + s2[:, None, None] * torch.eye(r, dtype=x.dtype, device=x.device)
        observed = mask * x
        flat_w = w.permute(1, 0, 2).reshape(dim, k * r)
        proj = (observed @ flat_w - mask @ (m[:, :, None] * w).permute(1, 0, 2).reshape(dim, k * r)).reshape(-1, k, r)  # W_ko^T (x_o - m_ko)
        chol = torch.linalg.cholesky(gram)
        z = torch.cholesky_solve(proj[..., None], chol)[..., 0]  # [B, K, r]: E[z | x_o, k]
        count = mask.sum(1, keepdim=True)
        residual = (observed * x).sum(1, keepdim=True) - 2 * observed @ m.t() + mask @ (m * m).t()  # |x_o - m_ko|^2
        quad = (residual - (proj * z).sum(-1)) / s2
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1) + (count - r) * torch.log(s2)
        log_lik = -0.5 * (quad + log_det + count * math.log(2 * math.pi))  # [B, K]
        post = torch.softmax(torch.log(prior.clamp_min(1e-30)) + log_lik, dim=1)
        means = torch.bmm(w, z.permute(1, 2, 0)).permute(2, 0, 1) + m  # [B, K, D]: E[x | x_o, k]
        inverse = torch.cholesky_inverse(chol).reshape(-1, k, r * r).permute(1, 2, 0)  # [K, r*r, B]
        spread = torch.bmm(outer, inverse).permute(2, 0, 1)  # [B, K, D]: diag(W_k M^-1 W_k^T)
        mean = (post[:, :, None] * means).sum(1)
        second = (post[:, :, None] * (s2[None, :, None] * (1 + spread) + means * means)).sum(1)
        return mean, (second - mean * mean).clamp_min(0)


def precision_weighted(mean: torch.Tensor, variance: torch.Tensor, fold) -> torch.Tensor:
    """Windows that the Folding layer ``fold`` averages (its ``sample``) into the precision-weighted mean of the
    windows' predictions of every pixel: ``sum_p mean_p / var_p / sum_p 1 / var_p`` over the windows p that cover
    it — the product of their Gaussian predictions. ``mean``, ``variance`` (N, H', W', D) -> (N, H', W', D).
    Dimensions of variance 0 (known values) get weight 1, as every window over a known pixel knows it."""
    weight = torch.where(variance > 0, 1 / variance.clamp_min(1e-12), torch.ones_like(variance))
    total = fold(fold.adjoint(weight))  # per window dimension: the weights of all windows over its pixel
    count = fold(fold.adjoint(torch.ones_like(weight)))  # and how many windows cover it
    return mean * weight / total * count


def fits(layer, rank: int = DEFAULT_RANK) -> bool:
    """Whether :func:`fit_window_factors` fits factors of ``rank`` for the GMM layer ``layer``: a rank of at least
    1 (windows of at least two dimensions), and second moments of at most :data:`MAX_ELEMENTS` elements."""
    k, dim = layer.n_components, layer.in_shape[2]
    return min(rank, dim - 1) >= 1 and k * dim * dim <= MAX_ELEMENTS


@torch.no_grad()
def fit_window_factors(model, images, rank: int = DEFAULT_RANK, batch_size: int = 500,
                       max_windows: int = FIT_WINDOWS) -> WindowFactors | None:
    """Fit :class:`WindowFactors` for the lowest GMM layer below the top of ``model`` on ``images`` (N, H, W, C),
    read a batch at a time, until ``max_windows`` windows have been seen (all images if fewer).

    Every component's mean and covariance are its responsibility-weighted first and second moments of the
    layer's inputs (summed in float64); the factors are the top ``rank`` eigenvectors, scaled so that
    ``W W^T + s^2 I`` is the covariance's best fit (Tipping & Bishop), with ``s^2`` the mean of the other
    eigenvalues but at least the layer's variance floor. A component that explains no window keeps its
    centroid, no factors and its mean variance. Returns None for a model without a GMM layer below the top,
    for windows of one dimension, or when the second moments would exceed :data:`MAX_ELEMENTS`.
    """
    lower = [i for i, _ in model.gmm_layers() if i != model.top_gmm]
    if not lower:
        return None
    index = lower[0]
    layer = model.layers[index]
    if not fits(layer, rank):
        return None
    k, dim = layer.n_components, layer.in_shape[2]
    rank = min(rank, dim - 1)
    weight = torch.zeros(k, dtype=torch.float64, device=model.device)
    first = torch.zeros(k, dim, dtype=torch.float64, device=model.device)
    second = torch.zeros(k, dim, dim, dtype=torch.float64, device=model.device)
    seen, rows = 0, max(1, _PRODUCT_ELEMENTS // (k * dim))
    for x in model.batches(images, batch_size):
        for below in model.layers[:index]:
            x = below(x)
        shares = layer(x).reshape(-1, k)
        windows = x.reshape(-1, dim)
        weight += shares.sum(0, dtype=torch.float64)
        first += (shares.t() @ windows).double()
        for block in range(0, len(windows), rows):
            w, r = windows[block : block + rows], shares[block : block + rows]
            second += ((r[:, :, None] * w[:, None, :]).reshape(len(w), k * dim).t() @ w).reshape(k, dim, dim).double()
        seen += len(windows)
        if seen >= max_windows:
            break
    alive = weight > 1e-6 * weight.sum()
    means = torch.where(alive[:, None], first / weight.clamp_min(1e-300)[:, None], layer.centroids.detach().double())
    covariances = second / weight.clamp_min(1e-300)[:, None, None] - means[:, :, None] * means[:, None, :]
    values, vectors = torch.linalg.eigh(covariances)  # ascending
    values, vectors = values.flip(-1), vectors.flip(-1)
    noise = values[:, rank:].mean(1).clamp_min(layer.variance_floor)
    loadings = vectors[:, :, :rank] * (values[:, :rank] - noise[:, None]).clamp_min(0).sqrt()[:, None, :]
    dead_noise = layer.variances.detach().double().mean(1)
    noise = torch.where(alive, noise, dead_noise)
    loadings = torch.where(alive[:, None, None], loadings, torch.zeros_like(loadings))
    dtype = layer.centroids.dtype
    return WindowFactors(index, means.to(dtype), loadings.to(dtype), noise.to(dtype))
