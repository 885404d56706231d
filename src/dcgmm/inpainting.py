"""In-painting that finds the damage itself (paper Sec. III-B5, Eqs. 7-10, and beyond).

A corrupted image is forwarded in estimation mode. Sampling then starts at the top GMM layer O from its
responsibilities A^(O) (Eq. 9) and runs the model's one top-down pass (:mod:`dcgmm.topdown`), whose
``fuse`` hook makes every lower GMM layer L fuse the signal T^(L) from above with its own forward
activities A^(L) (Eq. 10): it keeps A^(L) at positions that are inliers and takes T^(L) at positions that
are outliers. The model locates the damage on its own — by default with the calibrated search of
:mod:`dcgmm.damage` (pixels improbable under the top layer's prediction), or, as in the paper, by Eq. 6 with
the statistics of :mod:`dcgmm.outliers` (``locate="outliers"``); a mask given by the user replaces that search.
The default fill is the conditional mean of the damaged pixels given the rest (``fill="mean"``), the paper's
one draw is ``fill="sample"``.

At the pixels, the known part is clamped (Eq. 8: x1 is kept): the result equals the input outside the
replaced region. With ``locate="outliers"`` the replaced region is the lowest GMM layer's outlier map carried
down to the pixels (:func:`dcgmm.outliers.pixel_map`): a pixel is replaced when at least ``coverage`` of the
windows that cover it are outliers. With sharpening, the gradient ascent below the lowest Folding layer moves only the
replaced pixels and keeps the others at their input values.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .damage import check_calibration, locate_damage
from .errors import InputError
from .layers import Folding
from .model import DCGMM
from .outliers import pixel_map, position_mask, require_statistics
from . import top_factors, window_factors
from .top_factors import TopFactors
from .topdown import SamplingOptions, Sharpening
from .window_factors import WindowFactors, precision_weighted


DEFAULT_C = 1.0
"""Default c of Eq. 6 for the outlier maps (benchmarks/inpainting.py: best 0.5 for 2L-c, 1.5 for 2L-e on MNIST)."""
DEFAULT_COVERAGE = 0.75
"""Default fraction of outlying windows over a pixel for it to be replaced (best for 2L-c and 2L-e on MNIST)."""


@dataclass
class Inpainted:
    """The result of :func:`inpaint`."""

    images: np.ndarray
    """In-painted images, shape (N, H, W, C); equal to the input outside ``masks``."""
    masks: np.ndarray
    """Replaced pixels, bool (N, H, W): the located damage (or the given mask)."""
    position_masks: dict[int, np.ndarray]
    """Outlier positions used in Eq. 10, bool (N, H', W') for every GMM layer below the top."""


def _as_batch_tensor(array, dtype, device) -> torch.Tensor:
    array = np.asarray(array)
    if not array.flags.writeable:  # a broadcast mask or a memmap: torch wants memory it may own
        array = array.copy()
    return torch.as_tensor(array, dtype=dtype, device=device)


@torch.no_grad()
def per_image_masks(mask, n: int, size: tuple[int, int], name: str = "the mask") -> np.ndarray:
    """``mask`` (N, H, W), or one (H, W) for all ``n`` images, as (N, H, W) with (H, W) = ``size``; an
    :class:`InputError` naming ``name`` for any other shape."""
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = np.broadcast_to(mask, (n, *mask.shape))
    if mask.shape != (n, *size):
        raise InputError(f"{name} must have shape (N, H, W) = {(n, *size)} or (H, W); got {mask.shape}")
    return mask


def inpaint(
    model: DCGMM,
    images,
    mask=None,
    c: float = DEFAULT_C,
    coverage: float = DEFAULT_COVERAGE,
    top_s: int | None = 1,
    marginalize: bool = True,
    noise: float = 0.0,
    sharpening: Sharpening | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
    progress: bool = False,
    fill: str = "mean",
    locate: str = "evidence",
) -> Inpainted:
    """Complete corrupted images, locating the damage unless ``mask`` is given (see ``locate``).

    Parameters
    ----------
    images : array or tensor, shape (N, H, W, C), the corrupted images.
    mask : optional bool array (N, H, W) or (H, W): True marks damaged pixels. Without it the model finds
        them, as ``locate`` says.
    locate : ``"evidence"`` (default): pixels improbable under the top layer's prediction, in areas at least
        ``min_size`` wide, with the threshold calibrated on clean training images (:mod:`dcgmm.damage`).
        ``"outliers"``: the paper's way — positions with ``z < -c`` in every GMM layer below the top are
        outliers (Eq. 6), carried down to the pixels with ``coverage``.
    c : the c of Eq. 6 for ``locate="outliers"`` (larger: fewer positions count as damaged).
    coverage : for ``locate="outliers"``, a pixel is replaced when at least this fraction of the lowest GMM
        layer's windows over it are outliers.
    top_s : top-S restriction of every component choice (1: the most responsible component).
    marginalize : compute the activities A that sampling starts from (Eq. 9) and keeps at inliers (Eq. 10)
        with the replaced pixels marginalised out (``DCGMM.estimate(x, missing)``), i.e. from p(z | x1) as
        in Eq. 8. False: from the corrupted image as it is, as the paper describes for DCGMMs (``fill="sample"``
        only).
    fill : ``"mean"`` (default): the conditional mean of the replaced pixels given the known ones — the top
        layer's posterior given the known pixels, and at every lower GMM position the posterior over its
        components given the signal from above (as prior) and the known pixels of its window; every layer emits
        expectations; where the model's statistics carry window factors (:mod:`dcgmm.window_factors`, beyond
        the paper), the lowest GMM layer's windows are conditioned on their known pixels by them and combined
        by precision; where they carry top factors (:mod:`dcgmm.top_factors`), the top layer sends down its
        input predicted at the dimensions the damage touches from those it leaves whole, instead of its
        components' means. ``"sample"``: the paper's Eq. 10, one draw. On MNIST 0-4 with 2L-c (10-14 px squares,
        1000 test images) the mean was the better of the two already without window factors, both with the
        true mask (squared error 0.074 vs 0.081) and with the located damage (0.084 vs 0.090 on noise squares,
        0.074 vs 0.081 on grey ones; ``dcgmm experiment inpainting``); with the window factors 0.063 given the true
        mask, with both kinds of factors 0.059 (docs/inpainting.md).

    Returns
    -------
    :class:`Inpainted` with the images, the replaced pixels and the outlier positions.
    """
    if fill not in ("mean", "sample"):
        raise InputError(f"fill must be 'mean' (the conditional mean) or 'sample' (a draw, Eq. 10); got {fill!r}")
    if fill == "mean" and not marginalize:
        raise InputError("fill='mean' conditions on the known pixels, which needs marginalize=True")
    options = SamplingOptions(top_s=top_s, noise=noise, sharpening=sharpening, restrict_start=True,
                              generator=generator, progress=progress, mean=fill == "mean")
    if not 0 < coverage <= 1:
        raise InputError(f"coverage must lie in (0, 1]; got {coverage}")
    if locate not in ("evidence", "outliers"):
        raise InputError(f"locate must be 'evidence' (the calibrated search) or 'outliers' (the paper's Eq. 6); got {locate!r}")
    top = model.top_gmm
    lower = [i for i, _ in model.gmm_layers() if i != top]
    factors, tops = fill_factors(model) if fill == "mean" and lower else (None, None)
    if mask is None:
        stats = require_statistics(model)
        if locate == "evidence":
            calibration = check_calibration(model, stats.damage)
        elif not lower:
            raise InputError(
                f"{model.spec} has a single GMM layer, which cannot localise damage: pass a mask, or use a model "
                "with a GMM layer below the top (e.g. 2L-c)"
            )
    else:
        mask = per_image_masks(mask, len(images), model.input_shape[:2])
    device = model.device
    out_images, out_masks, out_positions = [], [], {i: [] for i in lower}
    batches = zip(range(0, len(images), batch_size), model.batches(images, batch_size))
    for begin, x in batches:
        if (mask is None and locate == "outliers") or not marginalize:  # the plain forward pass
            outputs, log_p = model.estimate(x)
        if mask is None and locate == "evidence":
            pixels = locate_damage(model, x, calibration)
            positions = {i: position_mask(model, i, pixels) for i in lower}
        elif mask is None:
            positions = {
                i: torch.as_tensor(stats.layers[i].zscores(log_p[i].cpu().numpy()) < -c, device=device) for i in lower
            }
            pixels = pixel_map(model, lower[0], positions[lower[0]]) >= coverage
        else:
            pixels = _as_batch_tensor(mask[begin : begin + len(x)], torch.bool, device)
            positions = {i: position_mask(model, i, pixels) for i in lower}
        if marginalize:
            outputs, knowns = model.estimate_known(x, missing=pixels)

        def fuse(index: int, control: torch.Tensor) -> torch.Tensor:
            if index not in positions or (factors is not None and index == factors.layer):  # emit() conditions there
                return control
            if fill == "mean":  # the posterior given the prior from above and the window's known pixels
                return model.layers[index].posterior(control, x if index == 0 else outputs[index - 1], knowns[index])
            return torch.where(positions[index][..., None], control, outputs[index])  # Eq. 10: forward activity at inliers

        def emit(index: int, control: torch.Tensor) -> torch.Tensor | None:
            if tops is not None and index == tops.layer:  # the top layer's input predicted from its whole part
                return tops.predict(control, outputs[index - 1], whole_inputs(model, pixels))
            if factors is None or index != factors.layer:
                return None
            mean, variance = factors.condition(control, x if index == 0 else outputs[index - 1], knowns[index])
            below = model.layers[index - 1] if index > 0 else None
            return precision_weighted(mean, variance, below) if isinstance(below, Folding) else mean

        result = model.top_down(top, outputs[top], options, fuse=fuse, keep=(~pixels[..., None], x), emit=emit)
        out_images.append(result.cpu().numpy())
        out_masks.append(pixels.cpu().numpy())
        for i in lower:
            out_positions[i].append(positions[i].cpu().numpy())
    return Inpainted(
        np.concatenate(out_images), np.concatenate(out_masks), {i: np.concatenate(v) for i, v in out_positions.items()}
    )


def fill_factors(model: DCGMM) -> tuple[WindowFactors | None, TopFactors | None]:
    """The fill's window factors and top factors saved with ``model``'s statistics (on the model's device), each
    or None — with a warning when the statistics predate them."""
    stats = model.statistics
    if stats is None:
        return None, None
    lowest = min(i for i, _ in model.gmm_layers())  # the caller has a GMM layer below the top
    missing_windows = stats.windows is None and window_factors.fits(model.layers[lowest])
    if missing_windows or (stats.top_factors is None and top_factors.fits(model.layers[model.top_gmm])):
        warnings.warn(
            "this model's statistics carry no window or top factors (they were computed by an older dcgmm), so the "
            "fill predicts the damaged pixels by component means alone, which is worse: recompute them with "
            "`dcgmm stats --model RUN --dataset ...`", stacklevel=3,
        )
    windows, tops = stats.windows, stats.top_factors
    return (None if windows is None else windows.to(model.device)), (None if tops is None else tops.to(model.device))


@torch.no_grad()
def whole_inputs(model: DCGMM, pixels: torch.Tensor) -> torch.Tensor:
    """1 where a dimension of the top GMM layer's input has no ``pixels`` (bool (N, H, W)) in its receptive
    field, 0 where it has: (N, H', W', D) of that input's shape."""
    below = max(i for i, _ in model.gmm_layers() if i != model.top_gmm)
    touched = position_mask(model, below, pixels).to(torch.float32)[..., None]
    touched = touched.expand(*touched.shape[:3], model.layers[below].n_components)
    for layer in model.layers[below + 1 : model.top_gmm]:  # Folding and Pooling: a dimension is touched if any of its inputs is
        touched = layer(touched)
    return (touched == 0).to(torch.float32)


def occlude(
    images: np.ndarray,
    size: tuple[int, int] = (10, 14),
    fill: str | float = "noise",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Damage every image with one random square, for testing in-painting.

    Parameters
    ----------
    images : (N, H, W, C) float.
    size : the square's side is drawn uniformly from ``size[0]..size[1]`` pixels; its position uniformly
        such that it lies inside the image.
    fill : ``"noise"`` (uniform in the images' value range) or a constant value.

    Returns
    -------
    (damaged images (N, H, W, C), bool masks (N, H, W) of the damaged pixels).
    """
    images = np.asarray(images, dtype=np.float32)
    n, h, w, ch = images.shape
    if not 1 <= size[0] <= size[1] <= min(h, w):
        raise InputError(f"square sizes {size} do not fit {h}x{w} images")
    if fill != "noise" and not isinstance(fill, (int, float)):
        raise InputError(f"fill must be 'noise' or a number; got {fill!r}")
    squares, noise = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])  # same squares for every fill
    low, high = float(images.min()), float(images.max())
    damaged, masks = images.copy(), np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        side = int(squares.integers(size[0], size[1] + 1))
        top, left = int(squares.integers(0, h - side + 1)), int(squares.integers(0, w - side + 1))
        masks[i, top : top + side, left : left + side] = True
        if fill == "noise":
            damaged[i, top : top + side, left : left + side] = noise.uniform(low, high, (side, side, ch))
        else:
            damaged[i, top : top + side, left : left + side] = float(fill)
    return damaged, masks
