"""Plain baselines that every quality figure of the library is reported beside, on raw pixels.

* :func:`knn_scorer`: minus the mean Euclidean distance to the k nearest training images (outlier score);
* :func:`pca_scorer`: minus the PCA reconstruction error (outlier score);
* :func:`flat_gmm`: a flat diagonal GMM fitted by EM (scikit-learn), :func:`gmm_scorer` /
  :func:`flat_gmm_scorer` its log-likelihood, and :func:`matched_components`, the K at which it has about as many parameters as a DCGMM;
* :func:`standardised`: a score standardised by its mean and deviation on training images, so that the c of
  Eq. 6 means the same for every score;
* :func:`knn_fill`: in-painting by the mean of the k training images nearest on the known pixels;
* :func:`gmm_fill`: in-painting by a flat GMM's conditional mean of the damaged pixels given the known ones;
* :func:`iou` and :func:`region_mse`: how well damage was located and repaired.

Images are (N, H, W, C) arrays; they are flattened here.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .errors import InputError


def _flat(images) -> np.ndarray:
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float32)


def knn_scorer(train, k: int = 5, chunk: int = 500) -> Callable:
    """Minus the mean distance to the ``k`` nearest of ``train`` (N, H, W, C): higher = more typical.

    The returned ``score(images, skip_self=False)`` gives shape (M,); ``skip_self`` leaves out the nearest
    neighbour (the image itself, when scoring training images).
    """
    if not 1 <= k <= len(train) - 1:
        raise InputError(f"k must lie in 1..{len(train) - 1} for {len(train)} training images; got {k}")
    t = torch.as_tensor(_flat(train))
    norms = (t * t).sum(1)

    def score(images, skip_self: bool = False) -> np.ndarray:
        x_all, out = _flat(images), []
        for start in range(0, len(x_all), chunk):
            x = torch.as_tensor(x_all[start : start + chunk])
            d = ((x * x).sum(1, keepdim=True) - 2 * x @ t.T + norms).clamp_min(0).sqrt()
            nearest = d.topk(k + int(skip_self), dim=1, largest=False).values[:, int(skip_self) :]
            out.append(-nearest.mean(1))
        return torch.cat(out).numpy()

    return score


def pca_scorer(train, components: int = 50, seed: int = 0) -> Callable:
    """Minus the squared error of the reconstruction from the first ``components`` principal components."""
    from sklearn.decomposition import PCA

    pca = PCA(components, random_state=seed).fit(_flat(train))

    def score(images) -> np.ndarray:
        x = _flat(images)
        return -((pca.inverse_transform(pca.transform(x)) - x) ** 2).sum(1)

    return score


def flat_gmm(train, k: int, reg_covar: float = 0.05, seed: int = 0, max_iter: int = 100):
    """A flat diagonal GMM with ``k`` components fitted by EM (scikit-learn, k-means initialisation) on the
    flattened images; ``reg_covar`` acts as a variance floor (0.05: the DCGMM's)."""
    from sklearn.mixture import GaussianMixture

    if not 1 <= k <= len(train):
        raise InputError(f"a flat GMM needs 1 <= K <= {len(train)} (the number of images); got K = {k}")
    return GaussianMixture(k, covariance_type="diag", reg_covar=reg_covar, max_iter=max_iter, random_state=seed).fit(
        np.asarray(train, dtype=np.float64).reshape(len(train), -1))


def gmm_scorer(gmm) -> Callable:
    """The log-likelihood of images (N, H, W, C) under a fitted flat GMM (:func:`flat_gmm`), shape (N,)."""
    return lambda images: gmm.score_samples(np.asarray(images, dtype=np.float64).reshape(len(images), -1))


def flat_gmm_scorer(train, k: int = 100, reg_covar: float = 0.05, seed: int = 0) -> Callable:
    """The log-likelihood of images under :func:`flat_gmm` fitted on ``train`` (outlier score)."""
    return gmm_scorer(flat_gmm(train, k, reg_covar=reg_covar, seed=seed))


def matched_components(parameters: int, dimensions: int) -> int:
    """K of a flat diagonal GMM on ``dimensions`` pixels with about ``parameters`` parameters (a mean and a
    variance per dimension and a weight per component: K (2D + 1))."""
    return max(1, round(parameters / (2 * dimensions + 1)))


def standardised(score: Callable, train_sample, **kwargs) -> Callable:
    """``score`` minus its mean over ``train_sample``, divided by its standard deviation there."""
    values = score(train_sample, **kwargs)
    mean, std = float(values.mean()), max(float(values.std()), 1e-6)
    return lambda images: (score(images) - mean) / std


def mean_fill(train, damaged, masks) -> np.ndarray:
    """Paste the mean training image into each image's mask.

    ``train`` (N, H, W, C), ``damaged`` (M, H, W, C), ``masks`` bool (M, H, W) with True = damaged. Returns the
    filled images (M, H, W, C), equal to ``damaged`` outside the masks.
    """
    damaged, masks = np.asarray(damaged), np.asarray(masks, dtype=bool)
    if masks.shape != damaged.shape[:3]:
        raise InputError(f"masks must have shape {damaged.shape[:3]} (one per image); got {masks.shape}")
    mean_image = np.mean(train, axis=0, dtype=np.float64).astype(damaged.dtype)
    return np.where(masks[..., None], mean_image[None], damaged)


def knn_fill(train, damaged, masks, k: int = 5, chunk: int = 250) -> np.ndarray:
    """Paste the mean of the ``k`` training images nearest on each image's known pixels into its mask.

    ``train`` (N, H, W, C), ``damaged`` (M, H, W, C), ``masks`` bool (M, H, W) with True = damaged. Returns the
    filled images (M, H, W, C), equal to ``damaged`` outside the masks.
    """
    damaged, masks = np.asarray(damaged), np.asarray(masks, dtype=bool)
    if masks.shape != damaged.shape[:3]:
        raise InputError(f"masks must have shape {damaged.shape[:3]} (one per image); got {masks.shape}")
    if not 1 <= k <= len(train):
        raise InputError(f"k must lie in 1..{len(train)} for {len(train)} training images; got {k}")
    t = torch.as_tensor(_flat(train), dtype=torch.float64)
    filled = damaged.copy()
    for start in range(0, len(damaged), chunk):
        block = slice(start, start + chunk)
        x = torch.as_tensor(_flat(damaged[block]), dtype=torch.float64)
        m = masks[block]
        known = torch.as_tensor(np.repeat(~m[..., None], damaged.shape[3], -1).reshape(len(x), -1), dtype=torch.float64)
        distances = (known * x * x).sum(1, keepdim=True) - 2 * (known * x) @ t.T + known @ (t * t).T  # (B, N)
        nearest = distances.topk(k, dim=1, largest=False).indices
        fill = t[nearest].mean(1).reshape(-1, *damaged.shape[1:]).numpy()
        filled[block] = np.where(m[..., None], fill, damaged[block])
    return filled


def gmm_fill(gmm, damaged, masks, chunk: int = 250) -> np.ndarray:
    """Paste a flat diagonal GMM's conditional mean of the damaged pixels given the known ones into each mask.

    ``gmm``: a fitted diagonal :class:`sklearn.mixture.GaussianMixture` (:func:`flat_gmm`) on the flattened
    images. With diagonal covariances the missing pixels drop out of every component's density, so
    ``E[x_missing | x_known] = sum_k p(k | x_known) mu_k`` with ``p(k | x_known)`` from the known pixels only.
    ``damaged`` (M, H, W, C), ``masks`` bool (M, H, W) with True = damaged. Returns the filled images
    (M, H, W, C), equal to ``damaged`` outside the masks.
    """
    damaged, masks = np.asarray(damaged), np.asarray(masks, dtype=bool)
    if masks.shape != damaged.shape[:3]:
        raise InputError(f"masks must have shape {damaged.shape[:3]} (one per image); got {masks.shape}")
    if getattr(gmm, "covariance_type", None) != "diag" or gmm.means_.shape[1] != np.prod(damaged.shape[1:]):
        raise InputError(f"gmm_fill needs a diagonal GMM fitted on {np.prod(damaged.shape[1:])} pixels (flat_gmm)")
    mu, var = torch.as_tensor(gmm.means_, dtype=torch.float64), torch.as_tensor(gmm.covariances_, dtype=torch.float64)
    log_w, tau = torch.log(torch.as_tensor(gmm.weights_, dtype=torch.float64)), 1.0 / var
    per_dim = mu * mu * tau + torch.log(2 * np.pi * var)  # [K, D]
    filled = damaged.copy()
    for start in range(0, len(damaged), chunk):
        block = slice(start, start + chunk)
        x = torch.as_tensor(_flat(damaged[block]), dtype=torch.float64)
        known = torch.as_tensor(np.repeat(~masks[block][..., None], damaged.shape[3], -1).reshape(len(x), -1), dtype=torch.float64)
        log_joint = log_w - 0.5 * ((known * x * x) @ tau.T - 2 * (known * x) @ (mu * tau).T + known @ per_dim.T)  # [B, K]
        fill = (torch.softmax(log_joint, dim=1) @ mu).reshape(-1, *damaged.shape[1:]).numpy()
        filled[block] = np.where(masks[block][..., None], fill, damaged[block])
    return filled


def iou(found: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two bool masks (N, H, W), per image, averaged (an empty union counts 0)."""
    inter = (found & truth).sum((1, 2))
    union = np.maximum((found | truth).sum((1, 2)), 1)
    return float((inter / union).mean())


def region_mse(images: np.ndarray, clean: np.ndarray, region: np.ndarray) -> float:
    """Mean squared difference of ``images`` and ``clean`` (N, H, W, C) over the pixels where ``region`` (N, H, W)
    is True."""
    return float(((images - clean) ** 2)[region].mean())
