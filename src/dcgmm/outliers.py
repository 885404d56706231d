"""Density estimation and outlier detection (paper Sec. III-B2, Eq. 6).

For every GMM layer and position (h, w), the long-term mean E and variance Var of the log-likelihood
``log p`` over the training data describe what is typical there; a position is an inlier for a given c iff

    log p >= B = E - c * sqrt(Var)                                                   (Eq. 6)

A larger c accepts more. We work with the standardised score ``z = (log p - E) / sqrt(Var)``, so a position is
an inlier iff ``z >= -c``:

* **image level**: the top GMM layer. Table I's top layers are global (one position), where Eq. 6 is one
  condition per image; for a top layer with several positions an image is an inlier iff every position is,
  so its score is the smallest z over the positions;
* **outlier maps**: ``z < -c`` at the positions of a lower GMM layer localise the outlying parts, and
  :func:`pixel_map` carries such a map down to the pixels through the Folding and Pooling layers.

The statistics are computed in one streaming pass over the data with the final parameters (the "later,
stable part of training" the paper asks for is its end), in float64 with a pairwise merge of batch moments,
and are saved inside ``model.safetensors``. Variances are population variances (ddof = 0); standard
deviations are floored at :data:`STD_FLOOR` nats so that positions whose log-likelihood never varies in
training (image corners) still give finite scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .damage import DEFAULT_FALSE_ALARM, DamageCalibration, calibrate, can_locate
from .errors import InputError
from .model import DCGMM
from .progress import progress_bar
from .top_factors import TopFactors, fit_top_factors
from .window_factors import WindowFactors, fit_window_factors

STD_FLOOR = 1e-3
"""Smallest standard deviation (nats) used to standardise a position's log-likelihood."""


class RunningMoments:
    """Mean and population variance over the first axis of a stream of batches, in float64.

    Batches are merged with the pairwise update of Chan, Golub and LeVeque: each batch's own mean and sum
    of squared deviations are combined with the running ones, so no large sums of squares are ever
    subtracted (no cancellation, unlike ``E[x^2] - E[x]^2``) and the result does not depend on how the
    stream is cut into batches (up to rounding).
    """

    def __init__(self, shape: tuple[int, ...]):
        self.count = 0
        self.mean = np.zeros(shape, dtype=np.float64)
        self.m2 = np.zeros(shape, dtype=np.float64)

    def update(self, batch: np.ndarray) -> None:
        """Add a batch of shape (n, *shape)."""
        batch = np.asarray(batch, dtype=np.float64)
        if batch.shape[1:] != self.mean.shape:
            raise InputError(f"batch of shape {batch.shape} does not match moments of shape {self.mean.shape}")
        n = len(batch)
        if n == 0:
            return
        batch_mean = batch.mean(axis=0)
        batch_m2 = ((batch - batch_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        if self.count == 0:
            raise InputError("no data seen yet: update the moments with at least one batch")
        return self.m2 / self.count


@dataclass
class LayerStatistics:
    """Long-term log-likelihood statistics of one GMM layer, per position."""

    layer: int
    """Index of the GMM layer in the stack (0-based)."""
    count: int
    """Number of images the statistics were computed on."""
    mean: np.ndarray
    """E_n log p at every position, shape (H, W), float64."""
    variance: np.ndarray
    """Var_n log p at every position, shape (H, W), float64."""

    @property
    def std(self) -> np.ndarray:
        """sqrt(Var), floored at :data:`STD_FLOOR`; shape (H, W)."""
        return np.sqrt(np.maximum(self.variance, STD_FLOOR**2))

    def bound(self, c: float) -> np.ndarray:
        """The bound B of Eq. 6 for this c: ``E - c sqrt(Var)``, shape (H, W)."""
        return self.mean - c * self.std

    def zscores(self, log_p: np.ndarray) -> np.ndarray:
        """Standardised log-likelihoods ``(log p - E) / sqrt(Var)``: (N, H, W) -> (N, H, W)."""
        return (np.asarray(log_p, dtype=np.float64) - self.mean) / self.std


@dataclass
class OutlierStatistics:
    """The statistics of every GMM layer of a model, and a note on the data they came from."""

    layers: dict[int, LayerStatistics]
    source: str = ""
    """What data the statistics describe, e.g. ``mnist train classes 0-4``."""
    damage: DamageCalibration | None = None
    """The damage search's threshold, calibrated on the same images (:func:`dcgmm.damage.calibrate`)."""
    windows: WindowFactors | None = None
    """The in-painting fill's window factors, fitted on the same images (:func:`dcgmm.window_factors.fit_window_factors`);
    None for a model without a GMM layer below the top, and in statistics computed before they existed."""
    top_factors: TopFactors | None = None
    """The in-painting fill's top factors, fitted on the same images (:func:`dcgmm.top_factors.fit_top_factors`);
    None where the windows' are, for a top layer too large for them, and in statistics computed before they existed."""

    @property
    def top(self) -> int:
        return max(self.layers)

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and JSON metadata for a safetensors file."""
        tensors = {}
        for index, stats in self.layers.items():
            tensors[f"statistics.{index}.mean"] = torch.from_numpy(np.ascontiguousarray(stats.mean))
            tensors[f"statistics.{index}.variance"] = torch.from_numpy(np.ascontiguousarray(stats.variance))
        meta = {"source": self.source, "counts": {str(i): s.count for i, s in self.layers.items()}}
        if self.damage is not None:
            meta["damage"] = self.damage.to_dict()
        if self.windows is not None:
            window_tensors, meta["windows"] = self.windows.to_tensors()
            tensors.update(window_tensors)
        if self.top_factors is not None:
            top_tensors, meta["top_factors"] = self.top_factors.to_tensors()
            tensors.update(top_tensors)
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "OutlierStatistics":
        layers = {
            int(i): LayerStatistics(
                int(i), int(count), tensors[f"statistics.{i}.mean"].double().numpy(), tensors[f"statistics.{i}.variance"].double().numpy()
            )
            for i, count in meta["counts"].items()
        }
        damage = DamageCalibration.from_dict(meta["damage"]) if "damage" in meta else None
        windows = WindowFactors.from_tensors(tensors, meta["windows"]) if "windows" in meta else None
        top_factors = TopFactors.from_tensors(tensors, meta["top_factors"]) if "top_factors" in meta else None
        return cls(layers, meta.get("source", ""), damage, windows, top_factors)


# ---------------------------------------------------------------------------------------------- fitting
def fit_statistics(model: DCGMM, images, batch_size: int = 500, source: str = "", progress: bool = False,
                   false_alarm: float = DEFAULT_FALSE_ALARM) -> OutlierStatistics:
    """Compute the per-position log-likelihood statistics of every GMM layer over ``images`` and attach them.

    Parameters
    ----------
    images : array, memmap or tensor, shape (N, H, W, C): typically the training data. Read one batch at a
        time, so a memory-mapped array larger than RAM works.
    source : a note on what the images are, stored with the statistics.

    Also calibrates the damage search of in-painting on the first images (:func:`dcgmm.damage.calibrate`,
    at most ``false_alarm`` of them flagged) where the model allows one, and fits the in-painting fill's
    window factors and top factors on them (:func:`dcgmm.window_factors.fit_window_factors`,
    :func:`dcgmm.top_factors.fit_top_factors`).

    Returns
    -------
    The statistics; also stored as ``model.statistics`` (and saved with the model by ``save_model``).
    """
    moments = {i: RunningMoments(layer.out_shape[:2]) for i, layer in model.gmm_layers()}
    batches = model.batches(images, batch_size)
    batches = progress_bar(batches, enabled=progress, total=-(-len(images) // batch_size), desc="outlier statistics", leave=False)
    for x in batches:
        for i, log_p in model.estimate(x)[1].items():
            moments[i].update(log_p.cpu().numpy())
    damage = calibrate(model, images, false_alarm=false_alarm, batch_size=batch_size) if can_locate(model) else None
    windows = fit_window_factors(model, images, batch_size=batch_size)
    top_factors = fit_top_factors(model, images, batch_size=batch_size)
    stats = OutlierStatistics(
        {i: LayerStatistics(i, m.count, m.mean, m.variance) for i, m in moments.items()}, source, damage, windows, top_factors
    )
    model.statistics = stats
    return stats


def require_statistics(model: DCGMM) -> OutlierStatistics:
    """``model.statistics``, or a clear error saying how to compute them."""
    if model.statistics is None:
        raise InputError(
            "this model has no outlier statistics: compute them over its training data with "
            "`dcgmm stats --model RUN --dataset ...` (or dcgmm.outliers.fit_statistics)"
        )
    return model.statistics


# ---------------------------------------------------------------------------------------------- scoring
def zscores(model: DCGMM, images, batch_size: int = 500) -> dict[int, np.ndarray]:
    """Standardised log-likelihood ``z`` of every GMM layer at every position: ``{index: (N, H', W')}``."""
    stats = require_statistics(model)
    out = {i: [] for i in stats.layers}
    for x in model.batches(images, batch_size):
        for i, log_p in model.estimate(x)[1].items():
            out[i].append(stats.layers[i].zscores(log_p.cpu().numpy()))
    return {i: np.concatenate(chunks) for i, chunks in out.items()}


def image_scores(model: DCGMM, images, batch_size: int = 500, shifts: int = 0) -> np.ndarray:
    """Per-image score, shape (N,): the top GMM layer's z (the smallest over its positions if it has several).

    Higher is more typical; an image is an inlier for a given c iff its score is >= -c (Eq. 6).

    ``shifts`` (beyond the paper): the best score over the image translated by up to ``shifts`` pixels in
    each direction (zeros moved in), so a digit a pixel off its usual place is not taken for an outlier. On
    MNIST 0-4 vs 5-9 with 2L-c, ``shifts=1`` (9 translations, 9x the cost) raised the AUROC from
    0.913 to 0.925 (docs/outliers.md).
    """
    stats = require_statistics(model)
    h, w = model.input_shape[:2]
    if not 0 <= shifts < min(h, w):
        raise InputError(f"shifts must lie in 0..{min(h, w) - 1} for {h}x{w} images (it costs (2 shifts + 1)^2 scorings); got {shifts}")
    if shifts == 0:
        top = zscores(model, images, batch_size)[stats.top]
        return top.reshape(len(top), -1).min(axis=1)
    out = []
    for x in model.batches(images, batch_size):
        scores = [image_scores(model, translate(x, dy, dx), batch_size) for dy in range(-shifts, shifts + 1) for dx in range(-shifts, shifts + 1)]
        out.append(np.max(scores, axis=0))
    return np.concatenate(out)


def ensemble_scores(models, images, batch_size: int = 500, shifts: int = 0) -> np.ndarray:
    """Per-image score of a seed ensemble, shape (N,): the mean of :func:`image_scores` over ``models``.

    Beyond the paper (deep-ensemble style): models of the same data trained from different seeds misjudge
    different images, and every model's score is a z standardised on its own training data, so their mean
    is on the same scale as one model's (higher is more typical; Eq. 6 applies unchanged). Measurements
    in docs/outliers.md.
    """
    models = list(models)
    if not models:
        raise InputError("an ensemble needs at least one model")
    shapes = {tuple(m.input_shape) for m in models}
    if len(shapes) > 1:
        raise InputError(f"the models of an ensemble must take the same images; their input shapes are {sorted(shapes)}")
    return np.mean([image_scores(m, images, batch_size, shifts=shifts) for m in models], axis=0)


def translate(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``images`` (N, H, W, C) moved ``dy`` pixels down and ``dx`` right; the pixels moved in are 0."""
    out = torch.zeros_like(images)
    h, w = images.shape[1:3]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    return out


def is_inlier(scores: np.ndarray, c: float) -> np.ndarray:
    """Eq. 6 on standardised scores: True where ``score >= -c``; same shape as ``scores``."""
    return np.asarray(scores) >= -c


def outlier_maps(model: DCGMM, images, c: float, batch_size: int = 500) -> dict[int, np.ndarray]:
    """Boolean outlier maps ``{index: (N, H', W')}`` of every GMM layer: True where Eq. 6 fails for this c."""
    return {i: ~is_inlier(z, c) for i, z in zscores(model, images, batch_size).items()}


def _below(model: DCGMM, index: int) -> list:
    if not model.layers[index].is_mixture:
        raise InputError(f"layer {index} of {model.spec} is {model.layers[index].spec()}, not a GMM layer")
    return list(model.layers)[:index]


def pixel_map(model: DCGMM, index: int, position_map: torch.Tensor) -> torch.Tensor:
    """Carry a map over the positions of GMM layer ``index`` down to the pixels.

    Every pixel gets the mean of the map over the positions whose receptive field covers it (Folding layers
    average overlapping windows, Pooling layers copy), so a 0/1 outlier map becomes the fraction of outlying
    windows at each pixel; pixels that no window covers get 0.

    ``position_map``: (N, H', W') -> (N, H, W) float.
    """
    signal = position_map.to(torch.float32)[..., None]
    for layer in reversed(_below(model, index)):
        signal = layer.carry_map_down(signal)
    return signal[..., 0]


def position_mask(model: DCGMM, index: int, pixels: torch.Tensor) -> torch.Tensor:
    """The positions of GMM layer ``index`` whose receptive field touches a True pixel.

    ``pixels``: bool (N, H, W) -> bool (N, H', W').
    """
    signal = pixels.to(torch.float32)[..., None]
    for layer in _below(model, index):
        signal = layer.carry_map_up(signal)
    return signal[..., 0] > 0


# ---------------------------------------------------------------------------------------------- curves
C_RANGE = (-2.0, 2.0)
"""The range of c the paper sweeps (Fig. 3)."""


def outlier_curve(inlier_scores: np.ndarray, outlier_scores: np.ndarray, cs: np.ndarray | None = None) -> dict:
    """The Fig. 3-style curve and the area under the full ROC.

    For every c in ``cs`` (default: 41 values over [-2, 2]): the fraction of inliers accepted
    (``score >= -c``) and the fraction of outliers rejected. ``auroc`` is the area under the ROC over all
    thresholds (the probability that a random inlier scores above a random outlier, ties counting half).
    """
    from sklearn.metrics import roc_auc_score

    inlier_scores, outlier_scores = np.asarray(inlier_scores), np.asarray(outlier_scores)
    if len(inlier_scores) == 0 or len(outlier_scores) == 0:
        raise InputError("an outlier curve needs at least one inlier and one outlier image")
    cs = np.linspace(*C_RANGE, 41) if cs is None else np.asarray(cs, dtype=np.float64)
    labels = np.r_[np.ones(len(inlier_scores)), np.zeros(len(outlier_scores))]
    return {
        "c": cs.round(6).tolist(),
        "inliers_accepted": [float(is_inlier(inlier_scores, c).mean()) for c in cs],
        "outliers_rejected": [float((~is_inlier(outlier_scores, c)).mean()) for c in cs],
        "auroc": float(roc_auc_score(labels, np.r_[inlier_scores, outlier_scores])),
        "n_inliers": len(inlier_scores),
        "n_outliers": len(outlier_scores),
    }
