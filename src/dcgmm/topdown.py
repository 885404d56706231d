"""The one top-down pass of a DCGMM (paper Sec. III-B3 to B6): sampling, conditional sampling, variants and
in-painting all run it.

From a start layer that receives a control signal, every layer below turns the signal it gets into one for
the layer below it (:meth:`Layer.sample`): a GMM draws a component per position, restricted to the ``top_s``
largest entries of its control signal (top-S), and emits its centroid plus noise of its learned sigma: ``noise``
x sigma x N(0, 1) at the lowest GMM layer (the one that emits pixels), ``control_noise`` x sigma x N(0, 1) at
the GMM layers above it (their emissions are control signals for the layers below);
Folding puts every window back and averages overlaps; Pooling up-samples; a classifier inverts its map.

**Top-S at the start.** With only the mixing weights pi to go by, a top layer draws from pi unrestricted:
restricting it to its S largest weights would make every top-1 sample of a 1L model the same image. Top-S
applies to every signal that comes from above (a layer, the classifier, a template's responsibilities);
``restrict_start`` says whether the start layer's own signal is one.

**Sharpening.** After a Folding or Pooling layer has produced its downward signal, ``steps`` gradient-ascent
steps of size ``rate`` raise the log-likelihood of the GMM layer above it — per image, ``log p`` averaged
over its positions and input dimensions — computed through the layers in between (paper: 1000 steps of
0.1). The paper does not give the scale of the objective; the authors' code averages over the sampling
batch, so its effective step shrinks with the batch size. Per image and per dimension, 1000 steps of 0.1
move a sample by a comparable amount on every architecture, independent of the batch size.

**Hooks.** ``fuse(index, control)`` may replace the signal a layer receives before it samples (in-painting's
Eq. 10 keeps the forward activity at inlier positions); ``keep = (mask, values)`` holds pixels at given values
(in-painting's known part, Eq. 8), also while the lowest signal is sharpened.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from .errors import InputError
from .layers.gmm import GMM, responsibilities
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


@dataclass(frozen=True)
class SamplingOptions:
    """How a top-down pass draws: the same object for sampling, conditional sampling, variants and in-painting."""

    top_s: int | None = 1
    """Every GMM layer chooses among the S largest entries of its control signal (None: no restriction)."""
    noise: float = 0.0
    """The lowest GMM layer emits ``centroid + noise x sigma x N(0, 1)`` instead of its centroid."""
    control_noise: float = 0.0
    """The same for the GMM layers above the lowest: noise on the control signals they send down."""
    sharpening: Sharpening | None = None
    """Refine the signals of Folding/Pooling layers (None: off)."""
    restrict_start: bool = False
    """Apply top-S at the start layer too (its signal came from above: a classifier, a template)."""
    generator: torch.Generator | None = None
    """Random numbers of every draw."""
    mean: bool = False
    """Emit expectations instead of draws: every GMM layer the mean of its centroids under its (normalised)
    control signal, so the pass computes an expected image (in-painting's conditional mean)."""
    progress: bool = False
    """Progress bars of the sharpening loops (drawn on a terminal only)."""

    def __post_init__(self):
        if self.top_s is not None and (isinstance(self.top_s, bool) or not isinstance(self.top_s, int) or self.top_s < 1):
            raise InputError(f"top-S must be a positive integer (or None for no restriction); got {self.top_s!r}")
        for name in ("noise", "control_noise"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name.replace('_', ' ')} must be >= 0; got {getattr(self, name)}")


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


def mixture_above(layers, index: int) -> int | None:
    """Index of the first GMM layer above layer ``index``, if only Folding/Pooling layers lie in between."""
    for j in range(index + 1, len(layers)):
        if layers[j].is_mixture:
            return j
        if not layers[j].moves_positions:
            return None
    return None


def sharpen(
    layers,
    signal: torch.Tensor,
    index: int,
    sharpening: Sharpening,
    progress: bool = False,
    fixed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Gradient ascent on the downward signal of Folding/Pooling layer ``index`` of the stack ``layers``.

    The objective, per image, is the log-likelihood of the GMM layer above ``index`` averaged over its
    positions and its input dimensions (nats per dimension), computed through the layers in between. The
    per-dimension scale makes one step size fit every architecture and batch size.

    Parameters
    ----------
    signal : tensor, shape (N, *layers[index].in_shape) — what layer ``index`` sent down.
    fixed : optional (mask, values), both broadcastable to the signal: entries where ``mask`` is True stay
        at ``values`` (in-painting sharpens only the replaced pixels).

    Returns
    -------
    tensor, same shape: the signal after ``sharpening.steps`` steps of size ``sharpening.rate`` (unchanged if
    no GMM layer lies above ``index``).
    """
    above = mixture_above(layers, index)
    if above is None or sharpening.steps == 0:
        return signal
    gmm: GMM = layers[above]
    between = list(layers)[index:above]
    with torch.no_grad():
        coefficients = tuple(t.detach() for t in gmm.coefficients())
    x = signal.detach().clone()
    if fixed is not None:
        x = torch.where(fixed[0], fixed[1], x)
    linear = all(layer.is_linear for layer in between)
    for _ in progress_bar(range(sharpening.steps), enabled=progress, desc=f"sharpening layer {index}", leave=False):
        if linear:  # linear maps: carry the gradient down with their adjoints, no autograd graph
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


Fuse = Callable[[int, torch.Tensor], torch.Tensor]
Emit = Callable[[int, torch.Tensor], "torch.Tensor | None"]


@torch.no_grad()
def top_down(
    layers,
    start: int,
    control: torch.Tensor,
    options: SamplingOptions,
    fuse: Fuse | None = None,
    keep: tuple[torch.Tensor, torch.Tensor] | None = None,
    emit: Emit | None = None,
) -> torch.Tensor:
    """Run the stack ``layers`` top-down from layer ``start``, which receives ``control``; returns the images.

    Parameters
    ----------
    start : index of the layer that receives ``control`` (shaped like its output, ``(N, H', W', C')``).
    options : how to draw (:class:`SamplingOptions`).
    fuse : ``fuse(index, control) -> control``, called with the signal every layer below ``start`` receives,
        before it samples.
    keep : ``(hold, values)``, bool ``(N, H, W, 1)`` and ``(N, H, W, C)``: pixels where ``hold`` is True are
        held at ``values`` in the result and while the lowest signal is sharpened.
    emit : with ``options.mean``, ``emit(index, control) -> signal``: the signal layer ``index`` sends down in
        place of its expectation (in-painting's window factors, :mod:`dcgmm.window_factors`); None keeps it.

    Returns
    -------
    tensor, shape (N, H, W, C) of the stack's input.
    """
    unrestricted = options if options.restrict_start else replace(options, top_s=None)
    lowest = min(i for i, layer in enumerate(layers) if layer.is_mixture)
    for index in range(start, -1, -1):
        layer = layers[index]
        if fuse is not None and index != start:
            control = fuse(index, control)
        draw = options if index != start else unrestricted
        if options.mean:
            signal = None if emit is None else emit(index, control)
            control = layer.expected(control) if signal is None else signal
        else:
            noise = draw.noise if index == lowest else draw.control_noise
            control = layer.sample(control, top_s=draw.top_s, noise=noise, generator=draw.generator)
        if options.sharpening is not None and layer.moves_positions:
            fixed = keep if index == 0 else None
            control = sharpen(layers, control, index, options.sharpening, options.progress, fixed=fixed)
    if keep is not None:
        control = torch.where(keep[0], keep[1], control)
    return control
