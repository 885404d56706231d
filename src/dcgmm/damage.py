"""Finding damaged pixels: the top layer says *what* the image should be, the lowest layer *where* it is not.

Beyond the paper. Its Eq. 6 flags a position of a lower GMM layer when that layer's own log-likelihood is
low; but a lower layer explains almost any small patch, a constant grey one included (2L-c on MNIST: IoU 0.18
with grey squares). Here the evidence at a pixel is how probable its value is under the *prediction from
above*:

1. The top GMM layer's posterior over its components, given the image, is carried down in expectation to
   the lowest GMM layer: at every position a prior over that layer's components (what the top layer expects
   there).
2. Each pixel is scored by ``log sum_k prior_k N(x_d; mu_kd, sigma_kd^2)`` — the one-dimensional marginal of
   the mixture at the pixel's place ``d`` in the window — averaged over all windows that cover it
   (:func:`pixel_evidence`, nats).
3. Pixels whose evidence is below a threshold are candidates; a morphological closing (3x3) fills the holes
   that noise leaves, and an opening with a ``min_size`` x ``min_size`` square keeps only areas at least that
   wide, so the thin strokes where a digit departs from the top layer's prototype drop out.
4. Repair, compare, re-locate: the area found is left out of the top layer's posterior, steps 1-3 run again
   on that cleaner prediction, and a pixel is damaged where both rounds agree (:func:`locate_damage`).
5. A corruption model: the area found is a patch with statistics of its own, and pixels that do not share
   them are strokes of the image that touch the patch. A constant patch (a blank-out, a sticker): at least
   half of the area has one value (one of :data:`VALUE_BINS` bins over the image's value range); pixels whose
   value is rare in it (their bin holds less than :data:`RARE_VALUE` of the dominant bin's count) are
   dropped (:func:`drop_rare_values`). A noise patch: the area's median :func:`roughness` is at least
   :data:`NOISY_PATCH`; pixels less than :data:`SMOOTH` times as rough are dropped (:func:`drop_smooth_pixels`).
   An area that overlaps a noise patch of step 6 and is not a constant patch is a noise patch too, with the
   overlap's median roughness: where the search overshot into the thick strokes around a noise square, the
   strokes' smoothness set the area's median (2L-c64, MNIST 0-4, 1000 held-out noise squares: 0.096 in the
   worst images, with 190 pixels outside the square each; located error 0.0593 -> 0.0588).
   The opening of step 3 then runs again.
6. Patches of their own kind, found without the model's prediction. A constant patch on a part of the image
   with values like its own (a grey square on a grey garment) is plausible pixel by pixel, but not as a
   whole: every ``min_size`` x ``min_size`` window whose values span at most :data:`FLAT_RANGE` of the
   image's value range, that is not of the image's background value, and whose mean evidence is below a
   second threshold is damage, all its pixels (:func:`flat_patches`). A blank-out in the background's own
   value merges with the background; flat windows of that value whose mean evidence is below a third
   threshold are damage too (the top layer expected something else there). A noise patch is rough everywhere:
   pixels far from the median of their 3x3 neighbourhood (:func:`residual`, at least a fourth threshold),
   closed and opened as in step 3, are damage (:func:`rough_patches`). Clean MNIST and FashionMNIST images
   almost never have flat windows that are not background, or noise. Flat and noise patches are also left
   out of the second round's posterior in step 4; blank-outs are judged on the second round's evidence where
   there is one (a grey square nearby makes the first round's prediction of the background worse).
7. A last round where step 6 found a patch: the top layer's posterior leaves out the patches only, and of
   the area of steps 1-4 only what this round finds too is kept. A patch can fool the first posterior (a
   black square on a shirt reads as another garment), which makes most of the image improbable; the second
   round then leaves most of the image out and cannot correct it, this one sees all of it but the patch
   (FashionMNIST 0-4, 2L-c, black squares: IoU 0.728 -> 0.837, error outside the square 0.0114 -> 0.0022;
   `benchmarks/inpainting.py --fills 0.0 1.0`).
8. The edge of a noise area, peeled (:func:`peel_smooth_edges`). Where a stroke runs along a noise square,
   its pixels next to the noise are rough by step 5's 3x3 measure and stay; on their own they lie on a smooth
   line (:func:`line_residual`), which noise rarely does. Smooth pixels on the area's edge are dropped, three
   times over (MNIST 0-4, 2L-c, noise squares, 1000 held-out test images: IoU 0.906 -> 0.941, error on the
   square 0.0727 -> 0.0697, outside it 0.0019 -> 0.0009).
9. The lines a noise area missed, added (:func:`add_noise_lines`). The opening of step 3 is harsh on an
   area's edge: where a few noise pixels of the outermost row happen to be plausible, the row has a gap, no
   ``min_size`` square fits over it and the whole row drops out (2L-c64, MNIST 0-4, 1000 held-out noise
   squares: 189 whole edge lines missed). A straight line just outside a noise area whose mean
   :func:`line_residual` is high is noise too (edge lines of noise squares: 1% quantile 0.22; the clean lines
   beside them: 95% quantile 0.21) and joins it (located error 0.0631 -> 0.0593, IoU 0.940 -> 0.949); so
   does the corner two such lines leave out, unless it lies on a smooth line (after step 10 below: 0.0582 ->
   0.0579).
10. Small noise patches where nothing was found. A noise square only a little wider than ``min_size`` (10 px
   against 9) is lost whole when a few of its pixels break every ``min_size`` square over it, in the
   evidence and in step 6 alike (2L-c64, 1000 held-out noise squares: MNIST 4, FashionMNIST 26 squares
   missed whole). Where steps 1-9 found nothing, the noise patches of step 6 at :func:`small_size`
   (:data:`SMALL_PATCH` pixels narrower than ``min_size``), with a residual threshold calibrated for that
   size, are the damage, peeled and completed as in steps 8 and 9 at that size.

The thresholds are calibrated on the model's own clean training images (:func:`calibrate`, run by
:func:`dcgmm.outliers.fit_statistics`): first those of step 6, each so that at most :data:`PATCH_SHARE` of
``false_alarm`` of clean images get such a patch; then the largest evidence threshold at which at most
``false_alarm`` of clean images get any pixel flagged by steps 1-4, 6, 7 and 10 together (steps 5, 7
and 8 only drop pixels; step 9 adds pixels next to an area only). They are saved with the outlier statistics.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from .errors import InputError

DEFAULT_FALSE_ALARM = 0.1
"""Fraction of clean training images allowed to have any pixel flagged. On MNIST 0-4 with 2L-c (1000 test
images, docs/inpainting.md) 5% starts to miss grey squares (IoU 0.794 vs 0.982) and 15-30% gain nothing."""
CLOSING = 3
"""Side of the square that closes holes in the candidate pixels before the opening."""
CALIBRATION_IMAGES = 2000
"""At most this many training images calibrate the threshold."""
VALUE_BINS = 10
"""Bins over an image's value range in which :func:`drop_rare_values` counts the values of the area found."""
DOMINANT_VALUE = 0.5
"""An area found is a constant patch when at least this fraction of its pixels fall in one value bin."""
RARE_VALUE = 0.3
"""In a constant patch, pixels whose value bin holds less than this fraction of the dominant bin's count are dropped."""
NOISY_PATCH = 0.1
"""An area found is a noise patch when its median :func:`roughness` is at least this (in units of the image's value range)."""
SMOOTH = 0.25
"""In a noise patch, pixels with less than this fraction of the area's median roughness are dropped."""
EDGE_SMOOTH = 0.03
"""On the edge of a noise area, pixels whose :func:`line_residual` is below this are dropped (step 8)."""
EDGE_ROUNDS = 3
"""Times step 8 peels the edge of a noise area."""
NOISE_LINE = 0.25
"""A straight line just outside a noise area joins it when its mean :func:`line_residual` is at least this (step 9)."""
SMALL_PATCH = 2
"""Step 10 looks for noise patches this many pixels narrower than ``min_size``."""
FLAT_RANGE = 0.01
"""A window is flat when its values (mean over channels) span at most this fraction of the image's value range."""
PATCH_SHARE = 0.2
"""Share of the false-alarm budget that each threshold of step 6 of the module docstring may use."""
_ELEMENTS = 2**20
"""Bound on the (windows x components x dimensions) elements :func:`pixel_evidence` holds at a time: small
enough for the temporaries to stay in the CPU's caches (2L-c64, 500 MNIST images: 2**24 elements 2.99 s,
2**22 1.00 s, 2**20 0.45 s, 2**18 0.43 s; the same results to the bit)."""


@dataclass
class DamageCalibration:
    """The damage search's settings, calibrated on clean images (:func:`calibrate`)."""

    threshold: float
    """Pixels with evidence (nats) below this are candidates."""
    min_size: int
    """Side in pixels of the smallest square area reported as damage (odd)."""
    false_alarm: float
    """The fraction of clean images allowed to get a flagged pixel."""
    measured: float
    """The fraction of the calibration images that got one at ``threshold``."""
    count: int
    """Number of calibration images."""
    flat_threshold: float | None = None
    """Flat windows that are not background with mean evidence (nats) below this are damage (step 6); +inf
    when too few calibration images had one to set a bound; None in statistics computed before step 6
    existed, which search without it."""
    rough_threshold: float | None = None
    """Areas of pixels with :func:`residual` at least this are damage (step 6); None as for ``flat_threshold``."""
    blank_threshold: float | None = None
    """Flat windows of the background's value with mean evidence below this are damage (step 6); None as for
    ``flat_threshold``."""
    small_rough_threshold: float | None = None
    """Noise patches :func:`small_size` wide with :func:`residual` at least this are damage where nothing else
    is (step 10); None in statistics computed before step 10 existed, which search without it."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DamageCalibration":
        optional = [values.get(key) for key in ("flat_threshold", "rough_threshold", "blank_threshold", "small_rough_threshold")]
        return cls(float(values["threshold"]), int(values["min_size"]), float(values["false_alarm"]),
                   float(values["measured"]), int(values["count"]), *(None if v is None else float(v) for v in optional))


def default_min_size(model) -> int:
    """A third of the image's shorter side, made odd, at least 3 (9 for 28x28 images)."""
    side = max(3, round(min(model.input_shape[:2]) / 3))
    return side if side % 2 else side + 1


def small_size(min_size: int) -> int:
    """The width of the small noise patches of step 10 of the module docstring: :data:`SMALL_PATCH` less than
    ``min_size``, at least 1."""
    return max(1, min_size - SMALL_PATCH)


def can_locate(model) -> bool:
    """Whether the lowest GMM layer sees the pixels through Folding layers only, as the search needs."""
    low = min(i for i, _ in model.gmm_layers())
    return all(model.layers[i].is_linear for i in range(low))


def _lowest_gmm(model) -> int:
    if not can_locate(model):
        raise InputError(
            f"{model.spec}: the damage search needs the lowest GMM layer to see the pixels through Folding layers only; "
            "pass a mask, or locate='outliers' (--locate outliers)"
        )
    return min(i for i, _ in model.gmm_layers())


@torch.no_grad()
def pixel_evidence(model, x: torch.Tensor, missing: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probability (nats) of every pixel under the prediction from the top layer; see the module docstring.

    ``x``: images (N, H, W, C) on the model's device; ``missing``: optional bool (N, H, W) of pixels to leave
    out of the top layer's posterior. Returns (N, H, W): the mean over channels and over the lowest GMM
    layer's windows that cover the pixel (0 where no window does).
    """
    layers, top, low = model.layers, model.top_gmm, _lowest_gmm(model)
    if missing is None:
        outputs, _ = model.estimate(x)
    else:
        outputs, _ = model.estimate_known(x, missing)
    control = outputs[top]
    for index in range(top, low, -1):  # the top layer's expectation, carried down to the lowest GMM layer
        control = layers[index].expected(control) if layers[index].is_mixture else layers[index].sample(control)
    prior = control.clamp_min(0)
    log_prior = torch.log((prior / prior.sum(-1, keepdim=True).clamp_min(1e-30)).clamp_min(1e-30))  # [N, H', W', K]
    h = x
    for index in range(low):
        h = layers[index](h)  # [N, H', W', D]
    gmm = layers[low]
    log_tau, mu = gmm.log_precisions, gmm.centroids  # [K, D]
    half_log_norm = 0.5 * (log_tau - math.log(2 * math.pi))
    tau = torch.exp(log_tau)
    flat_h, flat_prior = h.reshape(-1, h.shape[-1]), log_prior.reshape(-1, log_prior.shape[-1])
    step = max(1, _ELEMENTS // (mu.numel()))
    per_dim = torch.cat([
        torch.logsumexp(flat_prior[i : i + step, :, None] + half_log_norm - 0.5 * tau * (flat_h[i : i + step, None, :] - mu) ** 2, dim=1)
        for i in range(0, len(flat_h), step)
    ]).reshape(h.shape)  # [N, H', W', D]
    for index in range(low - 1, -1, -1):
        per_dim = layers[index].sample(per_dim)  # Folding: every window back, overlaps averaged
    return per_dim.mean(-1)


def _dilate(mask: torch.Tensor, size: int, outside: bool = False) -> torch.Tensor:
    """Max over a size x size square; pixels outside the image count as ``outside``."""
    padded = F.pad(mask[:, None].to(torch.float32), (size // 2,) * 4, value=float(outside))
    return F.max_pool2d(padded, size, 1)[:, 0] > 0.5


def _erode(mask: torch.Tensor, size: int, outside: bool) -> torch.Tensor:
    return ~_dilate(~mask, size, outside=not outside)


def clean_up(candidates: torch.Tensor, min_size: int) -> torch.Tensor:
    """Close 3x3 holes, then keep only areas a ``min_size`` x ``min_size`` square fits in (opening).

    The closing does not shrink areas at the image's edge (outside counts as candidate there); the opening
    keeps an area at the edge only if the square fits inside the image. ``candidates``: bool (N, H, W) ->
    bool (N, H, W). ``min_size`` must be odd.
    """
    closed = _erode(_dilate(candidates, CLOSING), CLOSING, outside=True)
    return _dilate(_erode(closed, min_size, outside=False), min_size)


def _grey(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images ``x`` (N, H, W, C) as their mean over channels (N, 1, H, W), with each image's lowest value and
    value range (N,), the range at least 1e-12."""
    v = x.mean(-1)[:, None]
    low = v.amin((1, 2, 3))
    return v, low, (v.amax((1, 2, 3)) - low).clamp_min(1e-12)


def drop_rare_values(found: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Step 5 of the module docstring: in an area found that is a constant patch, drop the pixels of rare values.

    ``found``: bool (N, H, W); ``x``: the images (N, H, W, C), compared by their mean over channels. An image
    whose area has no value bin with :data:`DOMINANT_VALUE` of its pixels (noise, say) keeps its area as it is.
    Returns bool (N, H, W), a subset of ``found``.
    """
    bins, counts = _value_bins(found, x)
    top = counts.amax(1, keepdim=True)
    rare = (counts.gather(1, bins) < RARE_VALUE * top) & is_constant(found, x)[:, None]
    return found & ~rare.reshape(found.shape)


def _value_bins(found: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The value bin of every pixel of images ``x`` (N, H, W, C) (their mean over channels), (N, H*W), and the
    count of the area ``found`` (N, H, W) in each of the :data:`VALUE_BINS` bins, (N, VALUE_BINS)."""
    v, low, span = _grey(x)
    bins = ((v.flatten(1) - low[:, None]) / span[:, None] * VALUE_BINS).long().clamp_(0, VALUE_BINS - 1)
    counts = torch.zeros(len(x), VALUE_BINS, device=x.device).scatter_add_(1, bins, found.flatten(1).to(torch.float32))
    return bins, counts


def is_constant(found: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Whether the area ``found`` (N, H, W) of images ``x`` (N, H, W, C) is a constant patch (N,): at least
    :data:`DOMINANT_VALUE` of its pixels in one value bin (step 5 of the module docstring)."""
    counts = _value_bins(found, x)[1]
    return counts.amax(1) >= DOMINANT_VALUE * counts.sum(1).clamp_min(1)


def flat_window_evidence(x: torch.Tensor, evidence: torch.Tensor, size: int, background: bool = False) -> torch.Tensor:
    """Mean evidence of every flat ``size`` x ``size`` window of images ``x`` (N, H, W, C) that is not
    background (``background=True``: that is); +inf for the other windows.

    A window is flat when its values (the mean over channels) span at most :data:`FLAT_RANGE` of the image's
    value range; it is background when its mean lies within :data:`FLAT_RANGE` of the range from the most
    common value of the image's outermost pixels (the fullest of ``1 / FLAT_RANGE`` bins over the image's
    range; the black around a digit), which a patch inside the image does not change.
    ``evidence``: (N, H, W), :func:`pixel_evidence`. Returns (N, H - size + 1, W - size + 1), indexed by the
    window's top-left pixel.
    """
    v, low, span = _grey(x)  # [N, 1, H, W], [N], [N]
    bins = round(1 / FLAT_RANGE)
    frame = torch.cat([v[:, 0, 0], v[:, 0, -1], v[:, 0, 1:-1, 0], v[:, 0, 1:-1, -1]], 1)  # [N, 2W + 2H - 4]
    index = ((frame - low[:, None]) / span[:, None] * bins).long().clamp_(0, bins - 1)
    counts = torch.zeros(len(v), bins, device=v.device).scatter_add_(1, index, torch.ones_like(frame))
    common = low + (counts.argmax(1) + 0.5) / bins * span  # [N]
    span, common = span[:, None, None], common[:, None, None]
    spread = (F.max_pool2d(v, size, 1) + F.max_pool2d(-v, size, 1))[:, 0] / span
    is_background = (F.avg_pool2d(v, size, 1)[:, 0] - common).abs() <= FLAT_RANGE * span
    mean = F.avg_pool2d(evidence[:, None], size, 1)[:, 0]
    return torch.where((spread <= FLAT_RANGE) & (is_background == background), mean, torch.inf)


def flat_patches(x: torch.Tensor, evidence: torch.Tensor, threshold: float | None, size: int, background: bool = False) -> torch.Tensor:
    """Step 6 of the module docstring: the pixels of flat ``size`` x ``size`` windows, not of the background's
    value (``background=True``: of it), whose mean evidence is below ``threshold`` (None: none). ``x`` (N, H,
    W, C), ``evidence`` (N, H, W) -> bool (N, H, W)."""
    if threshold is None:
        return torch.zeros(evidence.shape, dtype=torch.bool, device=evidence.device)
    hit = (flat_window_evidence(x, evidence, size, background) < threshold).to(torch.float32)[:, None]
    covered = F.max_pool2d(F.pad(hit, (size - 1,) * 4), size, 1)  # any window over the pixel
    return covered[:, 0] > 0.5


def rough_patches(x: torch.Tensor, threshold: float | None, size: int) -> torch.Tensor:
    """Step 6 of the module docstring: areas at least ``size`` wide (after a 3x3 closing, :func:`clean_up`) of
    pixels whose :func:`residual` is at least ``threshold`` (None: none). ``x`` (N, H, W, C) -> bool (N, H, W)."""
    if threshold is None:
        return torch.zeros(x.shape[:3], dtype=torch.bool, device=x.device)
    return clean_up(residual(x) >= threshold, size)


def _search(model, x: torch.Tensor, calibration: DamageCalibration, evidence: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-4, 6 and 7 of the module docstring: the rounds' area, the patches of step 6 and, of them, the
    noise patches, bool (N, H, W) each."""
    evidence = pixel_evidence(model, x) if evidence is None else evidence
    noise = rough_patches(x, calibration.rough_threshold, calibration.min_size)
    patches = flat_patches(x, evidence, calibration.flat_threshold, calibration.min_size) | noise
    first = clean_up(evidence < calibration.threshold, calibration.min_size)
    found = (first | patches).flatten(1).any(1)
    if found.any():
        again = pixel_evidence(model, x[found], missing=(first | patches)[found])
        first[found] &= clean_up(again < calibration.threshold, calibration.min_size)
        evidence = evidence.clone()
        evidence[found] = again
    patches |= flat_patches(x, evidence, calibration.blank_threshold, calibration.min_size, background=True)
    redo = patches.flatten(1).any(1) & first.flatten(1).any(1)
    if redo.any():  # a last round that leaves out the patches only: the posterior sees the rest of the image
        last = pixel_evidence(model, x[redo], missing=patches[redo])
        first[redo] &= clean_up(last < calibration.threshold, calibration.min_size)
    return first, patches, noise


def residual(x: torch.Tensor) -> torch.Tensor:
    """``|v - median of v's 3x3 neighbourhood|`` of the mean ``v`` over channels of images ``x`` (N, H, W, C),
    divided by the image's value range; edges replicated. -> (N, H, W)."""
    v, _, span = _grey(x)  # [N, 1, H, W], [N]
    neighbours = F.unfold(F.pad(v, (1, 1, 1, 1), mode="replicate"), 3).reshape(len(v), 9, *v.shape[2:])
    return (v - neighbours.median(1, keepdim=True).values).abs()[:, 0] / span[:, None, None]


def roughness(x: torch.Tensor) -> torch.Tensor:
    """Local roughness of images ``x`` (N, H, W, C): :func:`residual` averaged over 3x3 (edges replicated). -> (N, H, W)."""
    return F.avg_pool2d(F.pad(residual(x)[:, None], (1, 1, 1, 1), mode="replicate"), 3, 1)[:, 0]


def line_residual(x: torch.Tensor) -> torch.Tensor:
    """How far the mean ``v`` over channels of images ``x`` (N, H, W, C) is from lying on a smooth line: the
    smallest, over the four lines through a pixel (row, column, two diagonals), of the larger difference to
    its two neighbours on that line, divided by the image's value range; edges replicated. -> (N, H, W).

    A pixel of a stroke or of the background has a line along which its neighbours match it (the stroke's
    direction); a pixel of uniform noise rarely does: for neighbours that are noise too, the chance that both
    lie within ``t`` of it along one given line is about ``(2t)^2``.
    """
    v, _, span = _grey(x)  # [N, 1, H, W], [N]
    height, width = v.shape[2:]
    padded = F.pad(v, (1, 1, 1, 1), mode="replicate")

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return padded[:, :, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    lines = [torch.maximum((v - shifted(dy, dx)).abs(), (v - shifted(-dy, -dx)).abs()) for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1))]
    return torch.stack(lines).amin(0)[:, 0] / span[:, None, None]


def _noise_areas(found: torch.Tensor, rough: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's typical :func:`roughness` (N,) and whether its area ``found`` (N, H, W) is a noise patch (N,).

    Typical is the median of ``rough`` (N, H, W) over the area (NaN: nothing found), or over the part of the
    area in the noise patches ``noise`` (N, H, W) of step 6 where there is one; the area is a noise patch when
    that median is at least :data:`NOISY_PATCH`, or when it overlaps a noise patch.
    """
    typical = torch.where(found.flatten(1), rough.flatten(1), torch.nan).nanmedian(1).values
    noisy = typical >= NOISY_PATCH
    if noise is None:
        return typical, noisy
    overlap = (noise & found).flatten(1)
    has = overlap.any(1)
    patch = torch.where(overlap, rough.flatten(1), torch.nan).nanmedian(1).values
    return torch.where(has, patch, typical), noisy | has


def peel_smooth_edges(found: torch.Tensor, x: torch.Tensor, min_size: int, rough: torch.Tensor | None = None) -> torch.Tensor:
    """Step 8 of the module docstring: drop the smooth pixels on the edge of an area that is a noise patch.

    Where a stroke touches a noise square, the 3x3 :func:`roughness` of the stroke's pixels next to the noise
    is high, so step 5 keeps them; their own :func:`line_residual` is low. :data:`EDGE_ROUNDS` times, the
    pixels on the area's edge (a 3x3 erosion removes them) with a line residual below :data:`EDGE_SMOOTH` are
    dropped; then the opening of step 3 runs again. ``found``: bool (N, H, W); ``x``: the images
    (N, H, W, C); ``rough``: their :func:`roughness`, if already computed. Areas whose median roughness is
    below :data:`NOISY_PATCH` are kept as they are. Returns bool (N, H, W), a subset of ``found``.
    """
    noisy = _noise_areas(found, roughness(x) if rough is None else rough, None)[1][:, None, None]
    smooth = (line_residual(x) < EDGE_SMOOTH) & noisy
    area = found
    for _ in range(EDGE_ROUNDS):
        edge = area & ~_erode(area, CLOSING, outside=True)
        area = area & ~(edge & smooth)
    return torch.where(noisy, clean_up(area, min_size) & area, found)


def _shifted(mask: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``mask`` (N, H, W) moved ``dy`` rows down and ``dx`` columns right, False where it moved in from outside."""
    out = torch.zeros_like(mask)
    height, width = mask.shape[1:]
    out[:, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = \
        mask[:, max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)]
    return out


def add_noise_lines(found: torch.Tensor, x: torch.Tensor, min_size: int, rough: torch.Tensor | None = None) -> torch.Tensor:
    """Step 9 of the module docstring: add the noisy straight lines just outside the edges of a noise area.

    For each of the four directions, the pixels just outside the area on that side are grouped by row (above,
    below) or column (left, right); a group of at least ``min_size`` pixels whose mean :func:`line_residual`
    is at least :data:`NOISE_LINE` joins the area. Then the notches: a pixel outside the area with a
    neighbour in it both along its row and along its column (the corner that two added lines leave out) joins
    it unless it lies on a smooth line (:data:`EDGE_SMOOTH`, as in step 8). ``found``: bool (N, H, W); ``x``:
    the images (N, H, W, C); ``rough``: their :func:`roughness`, if already computed. Areas whose median
    roughness is below :data:`NOISY_PATCH` are kept as they are. Returns bool (N, H, W), a superset of ``found``.
    """
    noisy = _noise_areas(found, roughness(x) if rough is None else rough, None)[1][:, None, None]
    smoothness = line_residual(x)
    added = torch.zeros_like(found)
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        outside = _shifted(found, dy, dx) & ~found
        along = -1 if dy else -2  # a group runs along a row for the pixels above or below, along a column otherwise
        count = outside.sum(along, keepdim=True)
        mean = (outside * smoothness).sum(along, keepdim=True) / count.clamp_min(1)
        added |= outside & (mean >= NOISE_LINE) & (count >= min_size)
    area = found | (added & noisy)
    along_row = _shifted(area, 0, 1) | _shifted(area, 0, -1)
    along_column = _shifted(area, 1, 0) | _shifted(area, -1, 0)
    return area | (along_row & along_column & ~area & (smoothness >= EDGE_SMOOTH) & noisy)


def drop_smooth_pixels(found: torch.Tensor, x: torch.Tensor, noise: torch.Tensor | None = None,
                       rough: torch.Tensor | None = None) -> torch.Tensor:
    """Step 5 of the module docstring: in an area found that is a noise patch, drop the smooth pixels.

    ``found``: bool (N, H, W); ``x``: the images (N, H, W, C). An area whose median :func:`roughness` is
    below :data:`NOISY_PATCH` is kept as it is, unless it overlaps one of the noise patches ``noise``
    (N, H, W) of step 6: then the area is a noise patch, and pixels less than :data:`SMOOTH` times as rough as
    the median of the overlap are dropped (a search that overshot into the strokes around a noise square has
    the strokes' roughness as its median). ``rough``: the images' :func:`roughness`, if already computed.
    Returns bool (N, H, W), a subset of ``found``.
    """
    rough = roughness(x) if rough is None else rough
    typical, noisy = _noise_areas(found, rough, noise)
    smooth = (rough < SMOOTH * typical[:, None, None]) & noisy[:, None, None]
    return found & ~smooth


@torch.no_grad()
def locate_damage(model, x: torch.Tensor, calibration: DamageCalibration, evidence: torch.Tensor | None = None) -> torch.Tensor:
    """Damaged pixels of images ``x`` (N, H, W, C): bool (N, H, W). See the module docstring.

    Two rounds: the pixels found in the first are left out of the top layer's posterior, the evidence is
    computed again from that cleaner prediction, and a pixel is damaged if both rounds say so (and, where
    step 6 found a patch, a third round that leaves out only the patches; see the module docstring). Then pixels
    that do not share the area's statistics are dropped — values rare in a constant patch
    (:func:`drop_rare_values`), smooth pixels in a noise patch (:func:`drop_smooth_pixels`) — and the opening
    runs again; then the smooth pixels on the edge of a noise area go (:func:`peel_smooth_edges`) and the noisy
    lines just outside it join it (:func:`add_noise_lines`). In an image where all this finds nothing, small
    noise patches are the damage (step 10 of the module docstring).
    ``evidence``: the first round's :func:`pixel_evidence` of ``x``, if already computed.
    """
    found, patches, noise = _search(model, x, calibration, evidence)
    rough = roughness(x)
    kept = drop_smooth_pixels(drop_rare_values(found, x), x, noise & ~is_constant(found, x)[:, None, None], rough)
    peeled = peel_smooth_edges((clean_up(kept, calibration.min_size) & kept) | patches, x, calibration.min_size, rough)
    area = add_noise_lines(peeled, x, calibration.min_size, rough)
    empty = ~area.flatten(1).any(1)
    if empty.any():  # step 10: small noise patches where nothing else was found
        size, rest, rest_rough = small_size(calibration.min_size), x[empty], rough[empty]
        small = rough_patches(rest, calibration.small_rough_threshold, size)
        area[empty] = add_noise_lines(peel_smooth_edges(small, rest, size, rest_rough), rest, size, rest_rough)
    return area


def flags(model, x: torch.Tensor, calibration: DamageCalibration, evidence: torch.Tensor | None = None) -> torch.Tensor:
    """Whether the search flags any pixel of images ``x`` (N, H, W, C), (N,) bool: steps 1-4, 6, 7 and 10 of
    the module docstring. :func:`locate_damage` reports damage in no other image (its other steps drop pixels
    or add them next to an area). ``evidence``: the first round's :func:`pixel_evidence`, if already computed."""
    found, patches, _ = _search(model, x, calibration, evidence)
    small = rough_patches(x, calibration.small_rough_threshold, small_size(calibration.min_size))
    return (found | patches | small).flatten(1).any(1)


def _flagged_images(model, images: torch.Tensor, evidence: torch.Tensor, calibration: DamageCalibration,
                    batch_size: int) -> float:
    flagged = 0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(model.device)
        flagged += int(flags(model, x, calibration, evidence[start : start + batch_size].to(model.device)).sum())
    return flagged / len(images)


def flat_threshold(lowest: torch.Tensor, allowed: float) -> float:
    """The largest threshold at which at most ``allowed`` of the images get a flat patch, given each image's
    lowest :func:`flat_window_evidence` ``lowest`` (N,) (+inf: no such window).

    +inf when fewer images than that have such a window at all: then every such window is damage, whatever
    its evidence (on MNIST and FashionMNIST 0-4, 0 and 1 of 2000 training images have a flat window that is
    not background).
    """
    finite = torch.sort(lowest[torch.isfinite(lowest)]).values
    count = int(allowed * len(lowest))  # images that may be flagged; "below" is strict
    return float(finite[count]) if count < len(finite) else math.inf


def rough_threshold(images: torch.Tensor, allowed: float, size: int) -> float:
    """The smallest :func:`residual` threshold, at least :data:`NOISY_PATCH`, at which at most ``allowed`` of
    the ``images`` (N, H, W, C) get a rough patch (:func:`rough_patches`); candidates in steps of 0.005 up to 1,
    found by bisection (fewer images get one as the threshold rises). +inf (no rough patches at all) when even 1,
    the largest residual there is, flags too many."""
    values = residual(images)
    rate = lambda t: float(clean_up(values >= t, size).flatten(1).any(1).float().mean())
    grid = [round(NOISY_PATCH + 0.005 * i, 3) for i in range(round((1 - NOISY_PATCH) / 0.005))] + [1.0, math.inf]
    return grid[_first_true(len(grid) - 1, lambda i: rate(grid[i]) <= allowed)]


def _first_true(count: int, predicate) -> int:
    """The smallest ``i`` in ``range(count)`` with ``predicate(i)``, for a predicate false up to some index and
    true from there on (``count`` when it is never true), by bisection."""
    low, high = -1, count  # predicate(low) false (-1: before the start), predicate(high) true (count: past the end)
    while high - low > 1:
        mid = (low + high) // 2
        if predicate(mid):
            high = mid
        else:
            low = mid
    return high


@torch.no_grad()
def calibrate(model, images, false_alarm: float = DEFAULT_FALSE_ALARM, min_size: int | None = None,
              batch_size: int = 500) -> DamageCalibration:
    """The search's thresholds, calibrated on the clean ``images`` (N, H, W, C); the first
    :data:`CALIBRATION_IMAGES` are used.

    First the thresholds of steps 6 and 10 of the module docstring: at most :data:`PATCH_SHARE` of
    ``false_alarm`` of the images get a flat patch, as many a rough one, as many a blank-out (judged here on
    the first round's evidence) and as many a small rough one. Then the largest evidence threshold at which at
    most ``false_alarm`` of the images get any pixel flagged by the rounds (steps 1-4 and 7) and the patches
    of steps 6 and 10 together (:func:`flags`; the other steps of :func:`locate_damage` drop pixels of the
    area, or add pixels next to it, so the search as a whole flags at most that fraction of images).

    Candidate thresholds are the evidence quantiles 0.001, 0.002, ... 0.5 of the clean pixels; a bisection
    over them finds the largest admissible one (the flagged fraction grows with the threshold; the second
    round makes that nearly, not strictly, so).
    """
    if not 0 <= false_alarm < 1:
        raise InputError(f"false_alarm must lie in [0, 1); got {false_alarm}")
    min_size = default_min_size(model) if min_size is None else int(min_size)
    if min_size < 1 or min_size % 2 == 0:
        raise InputError(f"min_size must be an odd number of pixels; got {min_size}")
    if min_size > min(model.input_shape[:2]):
        raise InputError(f"min_size {min_size} is larger than the images ({model.input_shape[0]}x{model.input_shape[1]}): use a smaller odd number")
    kept, evidence, count = [], [], 0
    for x in model.batches(images, batch_size):
        kept.append(x[: CALIBRATION_IMAGES - count])
        evidence.append(pixel_evidence(model, kept[-1]))
        count += len(kept[-1])
        if count >= CALIBRATION_IMAGES:
            break
    clean, evidence = torch.cat(kept), torch.cat(evidence)
    lowest = lambda background: flat_window_evidence(clean, evidence, min_size, background).flatten(1).amin(1)
    flat, blank = (flat_threshold(lowest(background), PATCH_SHARE * false_alarm) for background in (False, True))
    rough = rough_threshold(clean, PATCH_SHARE * false_alarm, min_size)
    small = rough_threshold(clean, PATCH_SHARE * false_alarm, small_size(min_size))
    flagged = lambda threshold: _flagged_images(
        model, clean, evidence, DamageCalibration(threshold, min_size, 0.0, 0.0, 0, flat, rough, blank, small), batch_size
    )
    levels = torch.arange(1, 501, dtype=torch.float64) / 1000
    sample = evidence.flatten()[:: max(1, evidence.numel() // 1_000_000)].to(torch.float64)
    thresholds = torch.quantile(sample, levels).tolist()
    low = _first_true(len(thresholds), lambda i: flagged(thresholds[i]) > false_alarm) - 1  # the last admissible
    threshold = thresholds[low] if low >= 0 else -math.inf
    measured = flagged(threshold)
    return DamageCalibration(float(threshold), min_size, float(false_alarm), measured, len(evidence), flat, rough, blank, small)


def check_calibration(model, calibration: DamageCalibration | None) -> DamageCalibration:
    """The calibration, or a clear error when the model cannot have one or its statistics predate it."""
    _lowest_gmm(model)  # a model the search cannot work on says so, not that its statistics are old
    if calibration is None:
        raise InputError(
            "this model's outlier statistics carry no damage calibration (they were computed by an older dcgmm): "
            "recompute them with `dcgmm stats --model RUN --dataset ...`, or pass a mask"
        )
    if None in (calibration.flat_threshold, calibration.rough_threshold, calibration.blank_threshold):
        warnings.warn(
            "this model's damage calibration predates the search for flat, noise and blanked-out patches (a constant "
            "square on a part of the image with values like its own goes unfound): recompute the statistics with "
            "`dcgmm stats --model RUN --dataset ...`", stacklevel=3,
        )
    elif calibration.small_rough_threshold is None:
        warnings.warn(
            "this model's damage calibration predates the search for small noise patches (a noise square little wider "
            "than the search's min_size can go unfound): recompute the statistics with `dcgmm stats --model RUN "
            "--dataset ...`", stacklevel=3,
        )
    return calibration
