"""Generation: top-S sampling, sharpening, conditional sampling and variants (paper Sec. III-B3, B4, B6).

Sampling runs the stack top-down. The top GMM layer draws a component per position from its mixing weights
pi (or from a control signal: classifier codes, a template's responsibilities); every layer below turns the
signal it receives into a signal for the layer below it:

* GMM: draw a component per position from the control signal, restricted to its ``top_s`` largest entries
  (top-S sampling), and emit its centroid (plus ``noise`` x sigma x N(0, 1));
* Folding: put every window back and average the overlaps; Pooling: nearest-neighbour up-sampling;
* Classifier: approximate inverse of its linear map.

**Top-S at the top.** With only pi to go by, the top layer draws from pi unrestricted: restricting it to its
S largest weights would make every top-1 sample of a 1L model the same image, while the paper's Figs. 4-5
show varied top-1 samples (with duplicates). Top-S applies to every signal that comes from above: a layer,
the classifier, or a template's responsibilities.

**Sharpening.** After a Folding or Pooling layer has produced its downward signal, ``steps`` gradient-ascent
steps of size ``rate`` raise the log-likelihood of the GMM layer above it — per image, ``log p`` averaged
over its positions and input dimensions — computed through the layers in between (paper: 1000 steps of
0.1). The paper does not give the scale of the objective; the authors' code averages over the sampling
batch, so its effective step shrinks with the batch size. Per image and per dimension, 1000 steps of 0.1
move a sample by a comparable amount on every architecture, independent of the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .errors import InputError
from .layers import GMM, Folding, Pooling
from .layers.gmm import responsibilities
from .model import DCGMM
from .progress import progress_bar


@dataclass(frozen=True)
class Sharpening:
    """Gradient-ascent refinement of the signals that Folding and Pooling layers send down."""

    steps: int = 1000
    """G, gradient-ascent steps per Folding/Pooling layer (paper: 1000)."""
    rate: float = 0.1
    """Step size epsilon_s (paper: 0.1)."""

    def __post_init__(self):
        if self.steps < 0 or not self.rate > 0:
            raise InputError(f"sharpening needs steps >= 0 and rate > 0; got steps={self.steps}, rate={self.rate}")


def _top_gmm(model: DCGMM) -> int:
    indices = [i for i, _ in model.gmm_layers()]
    if not indices:
        raise InputError(f"{model.spec} has no GMM layer to sample from")
    return indices[-1]


def _gmm_above(model: DCGMM, index: int) -> int | None:
    """Index of the first GMM layer above layer ``index``, if only Folding/Pooling layers lie in between."""
    for j in range(index + 1, len(model.layers)):
        layer = model.layers[j]
        if isinstance(layer, GMM):
            return j
        if not isinstance(layer, (Folding, Pooling)):
            return None
    return None


def _check_top_s(top_s: int | None) -> None:
    if top_s is not None and (not isinstance(top_s, int) or top_s < 1):
        raise InputError(f"top-S must be a positive integer (or None for no restriction); got {top_s!r}")


def log_likelihood_gradient(gmm: GMM, h: torch.Tensor, coefficients: tuple) -> torch.Tensor:
    """Gradient of the mean over positions and input dimensions of ``log p(h)`` for one image, for every image.

    For a diagonal GMM, ``d log p / dh = sum_k gamma_k (2 a_k h + b_k)`` with the responsibilities gamma and
    the coefficients ``a = -tau / 2``, ``b = tau mu`` of :meth:`GMM.coefficients`: four matrix products, no
    autograd graph. ``h``: (N, H, W, D) -> gradient of the same shape.
    """
    a, b, c = coefficients
    n, height, width, d = h.shape
    flat = h.reshape(-1, d)
    gamma = responsibilities(GMM._log_joint_flat(flat, a, b, c), dim=1)  # [P, K]
    grad = torch.addcmul(gamma @ b, flat, gamma @ a, value=2.0)  # [P, D]
    return (grad / (height * width * d)).reshape(h.shape)


def sharpen(
    model: DCGMM,
    signal: torch.Tensor,
    index: int,
    sharpening: Sharpening,
    progress: bool = False,
    fixed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Gradient ascent on the downward signal of Folding/Pooling layer ``index``.

    The objective, per image, is the log-likelihood of the GMM layer above ``index`` averaged over its
    positions and its input dimensions (nats per dimension), computed through the layers in between. The
    per-dimension scale makes one step size fit every architecture and batch size.

    Parameters
    ----------
    signal : tensor, shape (N, *model.layers[index].in_shape) — what layer ``index`` sent down.

    fixed : optional (mask, values), both broadcastable to the signal: entries where ``mask`` is True stay
        at ``values`` (in-painting sharpens only the replaced pixels).

    Returns
    -------
    tensor, same shape: the signal after ``sharpening.steps`` steps of size ``sharpening.rate`` (unchanged if
    no GMM layer lies above ``index``).
    """
    above = _gmm_above(model, index)
    if above is None or sharpening.steps == 0:
        return signal
    gmm: GMM = model.layers[above]
    between = list(model.layers)[index:above]
    with torch.no_grad():
        coefficients = tuple(t.detach() for t in gmm.coefficients())
    x = signal.detach().clone()
    if fixed is not None:
        x = torch.where(fixed[0], fixed[1], x)
    steps = progress_bar(range(sharpening.steps), enabled=progress, desc=f"sharpening layer {index}", leave=False)
    only_folding = all(isinstance(layer, Folding) for layer in between)
    for _ in steps:
        if only_folding:  # linear maps: carry the gradient down with their adjoints, no autograd graph
            h = x
            for layer in between:
                h = layer(h)
            grad = log_likelihood_gradient(gmm, h, coefficients)
            for layer in reversed(between):
                grad = layer.adjoint(grad)
        else:
            with torch.enable_grad():
                x.requires_grad_(True)
                h = x
                for layer in between:
                    h = layer(h)
                grad_h = log_likelihood_gradient(gmm, h.detach(), coefficients)
                (grad,) = torch.autograd.grad(h, x, grad_h)
        x = (x + sharpening.rate * grad).detach()
        if fixed is not None:
            x = torch.where(fixed[0], fixed[1], x)
    return x


def _sample_down(
    model: DCGMM,
    start: int,
    control: torch.Tensor,
    top_s: int | None,
    noise: float,
    sharpening: Sharpening | None,
    generator: torch.Generator | None,
    restrict_start: bool,
    progress: bool,
) -> torch.Tensor:
    """Run sampling mode from layer ``start`` (receiving ``control``) down to the images."""
    for index in range(start, -1, -1):
        layer = model.layers[index]
        if isinstance(layer, GMM):
            s = top_s if (index != start or restrict_start) else None
            control = layer.sample(control, top_s=s, noise=noise, generator=generator)
        else:
            control = layer.sample(control)
            if sharpening is not None and isinstance(layer, (Folding, Pooling)):
                control = sharpen(model, control, index, sharpening, progress)
    return control


def _batches(n: int, batch_size: int):
    for begin in range(0, n, batch_size):
        yield begin, min(n, begin + batch_size)


@torch.no_grad()
def sample(
    model: DCGMM,
    n: int,
    top_s: int | None = 1,
    noise: float = 0.0,
    sharpening: Sharpening | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
    progress: bool = False,
) -> torch.Tensor:
    """Draw ``n`` images, shape (n, H, W, C), from the top GMM layer's mixing weights down.

    ``top_s`` restricts every lower GMM layer's choice to the S largest entries of its control signal
    (None: no restriction); ``sharpening`` (None: off) refines the signals of Folding/Pooling layers.
    """
    if n < 1:
        raise InputError(f"number of samples must be at least 1; got {n}")
    _check_top_s(top_s)
    top = _top_gmm(model)
    layer = model.layers[top]
    h, w, k = layer.out_shape
    out = []
    for begin, end in _batches(n, batch_size):
        control = torch.exp(layer.log_weights).expand(end - begin, h, w, k)
        out.append(_sample_down(model, top, control, top_s, noise, sharpening, generator, False, progress))
    return torch.cat(out)


@torch.no_grad()
def sample_classes(
    model: DCGMM,
    labels,
    top_s: int | None = 1,
    noise: float = 0.0,
    sharpening: Sharpening | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
    progress: bool = False,
) -> torch.Tensor:
    """Conditional sampling (Sec. III-B4): one image per entry of ``labels`` (N,), shape (N, H, W, C).

    The top classifier's approximate inverse turns each one-hot class code into a control signal for the
    GMM layer below it; top-S applies there too.
    """
    classifier = model.classifier
    if classifier is None:
        raise InputError(f"conditional sampling needs a classifier on top (e.g. '... C(10)'); {model.spec} has none")
    _check_top_s(top_s)
    labels = torch.as_tensor(labels, dtype=torch.long, device=model.device).reshape(-1)
    if len(labels) == 0:
        raise InputError("no class labels given: pass at least one class to sample")
    if labels.min() < 0 or labels.max() >= classifier.n_classes:
        raise InputError(f"classes must lie in 0..{classifier.n_classes - 1} for {classifier.spec()}; got {labels.unique().tolist()}")
    top = len(model.layers) - 1
    out = []
    for begin, end in _batches(len(labels), batch_size):
        codes = F.one_hot(labels[begin:end], classifier.n_classes).to(torch.float32)[:, None, None, :]
        control = classifier.sample(codes)
        out.append(_sample_down(model, top - 1, control, top_s, noise, sharpening, generator, True, progress))
    return torch.cat(out)


@torch.no_grad()
def sample_components(
    model: DCGMM,
    components,
    top_s: int | None = 1,
    noise: float = 0.0,
    sharpening: Sharpening | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
) -> torch.Tensor:
    """One image per entry of ``components`` (N,): sampling with the global top GMM layer's component fixed
    (the paper's Fig. 2 illustration), shape (N, H, W, C). Lower layers sample as in :func:`sample`."""
    _check_top_s(top_s)
    top = _top_gmm(model)
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
        out.append(_sample_down(model, top, control, top_s, noise, sharpening, generator, True, False))
    return torch.cat(out)


def clamp_range(model: DCGMM) -> tuple[int, int]:
    """Valid ``clamp_layer`` values: 1 (return the template) .. O + 1 (no clamping; O = top GMM, 1-based)."""
    return 1, _top_gmm(model) + 2


@torch.no_grad()
def variants(
    model: DCGMM,
    templates: torch.Tensor,
    top_s: int | None = 2,
    clamp_layer: int | None = None,
    noise: float = 0.0,
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
    _check_top_s(top_s)
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
        out.append(_sample_down(model, start, activities[start], top_s, noise, sharpening, generator, True, progress))
    return torch.cat(out)

