"""Generation: top-S sampling, sharpening, conditional sampling and variants (paper Sec. III-B3, B4, B6).

Each function prepares the control signal of a start layer and runs the model's one top-down pass
(:meth:`DCGMM.top_down`, :mod:`dcgmm.topdown`, which also explains top-S and sharpening), in batches:

* :func:`sample` starts at the top GMM layer from its mixing weights pi (unrestricted: see topdown);
* :func:`sample_classes` starts at the classifier with one-hot class codes (its approximate inverse);
* :func:`sample_components` starts at the global top GMM layer with one component fixed (Fig. 2);
* :func:`variants` starts at layer L-hat - 1 from a template's own forward activity there (Eq. 11).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .errors import InputError
from .model import DCGMM
from .topdown import SamplingOptions, Sharpening

DEFAULT_TOP_S = 5
"""Default top-S of :func:`sample`: every position draws among its 5 most likely components. S = 1 (the
paper's top-1) makes each position take its most likely component, so an image is fixed by its top component:
1000 top-1 samples of 2L-c (MNIST 0-4, 25 epochs) hold 36 pictures (0 of 1000 distinct at a mean squared
difference of 1e-3 per pixel), NDB 87 of 100 bins. Measured with that model, 1000 samples against 1000 test
images (benchmarks/sampling.py, docs/sampling.md), noise 0.25 at every layer: top-5 NDB 63, top-2 62,
top-all without noise 60 (864 distinct); 3L-a 50 / 62 / 70, so top-5 is the default."""
DEFAULT_NOISE = 0.3
"""Default noise of :func:`sample` (:func:`sample_classes` has :data:`DEFAULT_CLASS_NOISE`, the same value): the
lowest GMM layer emits its centroid plus 0.3 x its learned standard deviation x N(0, 1). Folding averages the
overlapping windows, so a pixel gets much less than that. Top-5, 1000 samples, seeds 0 and 1, the models of
``dcgmm experiment all`` (top variance floor 0.005), benchmarks/sampling.py's bins: with 0.25 the README main
job's 2L-c gave 979 and 981 distinct samples of 1000 (NDB 67, 64); with 0.3, 1000 and 1000 (NDB 67, 63); 0.35
likewise (66, 64). For 2L-e and 3L-a on MNIST 0-4 and 2L-c, 2L-e, 3L-a on FashionMNIST 0-4 all three give 1000
distinct and NDB within 1 of each other. Earlier (2L-c at floor 0.05, the same noise at every layer): noise 0,
0.1, 0.25 gave NDB 61, 63, 61 and 848, 1000, 1000 distinct."""
DEFAULT_CONTROL_NOISE = 0.0
"""Default noise of :func:`sample` at the GMM layers above the lowest (on the control signals they send
down, in their own learned sigma): none. Top-5, pixel noise 0.25, 1000 samples (benchmarks/sampling.py's
bins): control noise 0 / 0.25 give NDB 65 / 63 for 2L-c, 62 / 47 for 2L-e, 42 / 50 for 3L-a on MNIST 0-4;
57 / 77, 42 / 54, 80 / 78 on FashionMNIST 0-4 — better on average (58 / 62) and in 3 of the 6, and it
keeps the control of conditional sampling on its class (see :data:`DEFAULT_CLASS_CONTROL_NOISE`)."""

DEFAULT_CLASS_TOP_S = None
"""Default top-S of :func:`sample_classes`: no restriction. 2L-c + C(10) on all of MNIST (25 epochs), 100
samples per class, pixel noise 0.25 and no control noise, judged by a logistic regression on raw pixels
(fitted on 20 000 training images in this sweep; benchmarks/conditional.py fits it on all 60 000): top-all
97.5% of the right class with 100 of 100 distinct in every class; top-2 99.9% but class 1 only 35 of 100
distinct, top-3 99.3% (class 1: 81 distinct)."""
DEFAULT_CLASS_NOISE = 0.3
"""Default pixel noise of :func:`sample_classes`. Class 1's control is so peaked that its samples differ
mostly by this noise: with 0.25, 91-93 of 100 per call are distinct (seeds 0, 1; every other class 100) at
95.9-96.2% of the right class; 0.3 gives 100 of 100 in every class at 95.4-95.6%; 0.4 93.4-94.2%."""
DEFAULT_CLASS_CONTROL_NOISE = 0.0
"""Default control noise of :func:`sample_classes`: none. Noise on the control signal spreads a class code's
control over components of other classes: with control noise 0.25 (top-2, the earlier default) 92.0% of the
samples are judged their class, class 1 22%."""

__all__ = ["DEFAULT_CLASS_CONTROL_NOISE", "DEFAULT_CLASS_NOISE", "DEFAULT_CLASS_TOP_S", "DEFAULT_CONTROL_NOISE", "DEFAULT_NOISE", "DEFAULT_TOP_S", "SamplingOptions", "Sharpening", "clamp_range", "sample", "sample_classes", "sample_components", "variants"]


def _options(top_s, noise, control_noise, sharpening, generator, progress, restrict_start: bool) -> SamplingOptions:
    return SamplingOptions(top_s=top_s, noise=noise, control_noise=control_noise, sharpening=sharpening,
                           restrict_start=restrict_start, generator=generator, progress=progress)


def _batches(n: int, batch_size: int):
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1; got {batch_size}")
    for begin in range(0, n, batch_size):
        yield begin, min(n, begin + batch_size)


@torch.no_grad()
def sample(
    model: DCGMM,
    n: int,
    top_s: int | None = DEFAULT_TOP_S,
    noise: float = DEFAULT_NOISE,
    control_noise: float = DEFAULT_CONTROL_NOISE,
    sharpening: Sharpening | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
    progress: bool = False,
) -> torch.Tensor:
    """Draw ``n`` images, shape (n, H, W, C), from the top GMM layer's mixing weights down.

    ``top_s`` restricts every lower GMM layer's random choice to the S largest entries of its control signal
    (None: no restriction; 1: the paper's top-1, one image per top component); ``noise`` adds that many
    learned standard deviations of noise to every centroid the lowest GMM layer emits, ``control_noise`` to
    those of the GMM layers above it; ``sharpening`` (None: off) refines the signals of Folding/Pooling
    layers. The defaults (:data:`DEFAULT_TOP_S`, :data:`DEFAULT_NOISE`, :data:`DEFAULT_CONTROL_NOISE`, no
    sharpening) were chosen from the measurements in docs/sampling.md; the paper's setting is ``top_s=1,
    noise=0, control_noise=0, sharpening=Sharpening()``.
    """
    if n < 1:
        raise InputError(f"number of samples must be at least 1; got {n}")
    options = _options(top_s, noise, control_noise, sharpening, generator, progress, restrict_start=False)
    return torch.cat([model.sample(end - begin, options) for begin, end in _batches(n, batch_size)])


@torch.no_grad()
def sample_classes(
    model: DCGMM,
    labels,
    top_s: int | None = DEFAULT_CLASS_TOP_S,
    noise: float = DEFAULT_CLASS_NOISE,
    control_noise: float = DEFAULT_CLASS_CONTROL_NOISE,
    sharpening: Sharpening | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
    progress: bool = False,
) -> torch.Tensor:
    """Conditional sampling (Sec. III-B4): one image per entry of ``labels`` (N,), shape (N, H, W, C).

    The top classifier's approximate inverse turns each one-hot class code into a control signal for the
    GMM layer below it; top-S applies there too. Defaults: :data:`DEFAULT_CLASS_TOP_S`, :data:`DEFAULT_CLASS_NOISE`,
    :data:`DEFAULT_CLASS_CONTROL_NOISE`.
    """
    classifier = model.classifier
    if classifier is None:
        raise InputError(f"conditional sampling needs a classifier on top (e.g. '... C(10)'); {model.spec} has none")
    options = _options(top_s, noise, control_noise, sharpening, generator, progress, restrict_start=False)
    labels = torch.as_tensor(labels, dtype=torch.long, device=model.device).reshape(-1)
    if len(labels) == 0:
        raise InputError("no class labels given: pass at least one class to sample")
    if labels.min() < 0 or labels.max() >= classifier.n_classes:
        raise InputError(f"classes must lie in 0..{classifier.n_classes - 1} for {classifier.spec()}; got {labels.unique().tolist()}")
    top = len(model.layers) - 1
    out = []
    for begin, end in _batches(len(labels), batch_size):
        codes = F.one_hot(labels[begin:end], classifier.n_classes).to(torch.float32)[:, None, None, :]
        out.append(model.top_down(top, codes, options))
    return torch.cat(out)


@torch.no_grad()
def sample_components(
    model: DCGMM,
    components,
    top_s: int | None = 1,
    noise: float = 0.0,
    control_noise: float = 0.0,
    sharpening: Sharpening | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
) -> torch.Tensor:
    """One image per entry of ``components`` (N,): sampling with the global top GMM layer's component fixed
    (the paper's Fig. 2 illustration), shape (N, H, W, C). Lower layers sample as in :func:`sample`."""
    options = _options(top_s, noise, control_noise, sharpening, generator, False, restrict_start=True)
    top = model.top_gmm
    layer = model.layers[top]
    h, w, k = layer.out_shape
    if h * w != 1:
        raise InputError(f"fixing a top component needs a global top GMM layer (1x1 positions); layer {top} has {h}x{w}")
    components = torch.as_tensor(components, dtype=torch.long, device=model.device).reshape(-1)
    if len(components) == 0 or components.min() < 0 or components.max() >= k:
        raise InputError(f"components must be a non-empty list of indices in 0..{k - 1} of {layer.spec()}")
    out = []
    for begin, end in _batches(len(components), batch_size):
        control = F.one_hot(components[begin:end], k).to(torch.float32)[:, None, None, :]
        out.append(model.top_down(top, control, options))
    return torch.cat(out)


def clamp_range(model: DCGMM) -> tuple[int, int]:
    """Valid ``clamp_layer`` values: 1 (return the template) .. O + 1 (no clamping; O = top GMM, 1-based)."""
    return 1, model.top_gmm + 2


@torch.no_grad()
def variants(
    model: DCGMM,
    templates: torch.Tensor,
    top_s: int | None = 2,
    clamp_layer: int | None = None,
    noise: float = 0.0,
    control_noise: float = 0.0,
    sharpening: Sharpening | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
    progress: bool = False,
) -> torch.Tensor:
    """Variant generation (Sec. III-B6, Eq. 11): images like ``templates`` (N, H, W, C), same shape.

    Each template is forwarded through the stack; sampling then starts from the responsibilities of the
    top GMM layer O. ``clamp_layer`` is the paper's L-hat, counting layers from 1 at the bottom as in
    Table I: the signal every layer L >= L-hat sends down is clamped to the template's forward activity
    A^(L-1), so sampling starts at layer L-hat - 1 from its own forward output. ``clamp_layer = O + 1``
    (the default) clamps nothing; ``clamp_layer = 1`` returns the templates. Smaller ``top_s`` and smaller
    ``clamp_layer`` give variants closer to the template.
    """
    options = _options(top_s, noise, control_noise, sharpening, generator, progress, restrict_start=True)
    templates = torch.as_tensor(templates, dtype=torch.float32, device=model.device)
    if templates.dim() == 3 and model.input_shape[2] == 1:
        templates = templates[..., None]
    if len(templates) == 0:
        raise InputError("no templates given: pass an array of at least one image")
    model.check_images(templates)
    low, high = clamp_range(model)
    clamp_layer = high if clamp_layer is None else int(clamp_layer)
    if not low <= clamp_layer <= high:
        raise InputError(
            f"clamp layer must lie in {low}..{high} for {model.spec} (layers count from 1; {high} clamps nothing); got {clamp_layer}"
        )
    start = clamp_layer - 2  # 0-based index of the layer that receives its own forward output
    if start < 0:
        return templates.clone()
    out = []
    for begin, end in _batches(len(templates), batch_size):
        activities = model(templates[begin:end])
        out.append(model.top_down(start, activities[start], options))
    return torch.cat(out)
