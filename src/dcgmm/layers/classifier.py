"""Linear classifier layer C(n_classes) (paper Sec. III-A4)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError, SpecError
from .base import Layer, Shape
from .gmm import responsibilities


class Classifier(Layer):
    """Affine map of the flattened input to class logits, trained by cross-entropy on detached input.

    Output shape ``(1, 1, n_classes)``. Sampling approximately inverts the map: ``(T - b) W`` of the
    logits ``T`` of one-hot (or soft) class codes, made a valid control signal for the GMM layer below by
    a softmax at every position (see :meth:`sample`).
    """

    letter = "C"
    has_loss = True

    def __init__(self, in_shape: Shape, n_classes: int):
        self.n_classes = int(n_classes)
        if self.n_classes < 2:
            raise SpecError(f"C({n_classes}): a classifier needs at least 2 classes")
        super().__init__(in_shape)
        h, w, c = self.in_shape
        self.linear = nn.Linear(h * w * c, self.n_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def output_shape(self, in_shape: Shape) -> Shape:
        return (1, 1, self.n_classes)

    def spec(self) -> str:
        return f"C({self.n_classes})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, C)`` -> logits ``(N, 1, 1, n_classes)``."""
        self.check_input(x)
        return self.linear(x.reshape(x.shape[0], -1))[:, None, None, :]

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the logits for ``x`` ``(N, H, W, C)`` against integer ``labels`` ``(N,)``."""
        if labels.min() < 0 or labels.max() >= self.n_classes:
            raise InputError(f"labels must lie in 0..{self.n_classes - 1} for {self.spec()}")
        return F.cross_entropy(self.forward(x)[:, 0, 0, :], labels)

    def sample(self, control: torch.Tensor, top_s=None, noise: float = 0.0, generator=None, confidence: float = 0.99) -> torch.Tensor:
        """Class codes ``(N, 1, 1, n_classes)`` -> control ``(N, H, W, C)``: non-negative, summing to 1 per position.

        The approximate inverse of Sec. III-A4, ``T' = (T - b) W``, applied to logit targets: each code
        (one-hot or any non-negative class weights) becomes the class distribution that puts ``confidence``
        on it and spreads the rest evenly, and ``T`` is its log — the logits that would produce it, up to a
        constant. A component then gets a large value when its weight is high for the wanted class and low
        for the others. A softmax over the channels of every position makes ``T'`` a valid control signal.
        """
        if not 0 < confidence < 1:
            raise InputError(f"confidence must lie strictly between 0 and 1; got {confidence}")
        codes = control.reshape(control.shape[0], self.n_classes).clamp(min=0)
        total = codes.sum(dim=1, keepdim=True)
        if bool((total <= 0).any()):
            raise InputError("every class code needs a positive entry (one-hot codes, or class weights)")
        target = confidence * codes / total + (1 - confidence) / self.n_classes
        signal = (torch.log(target) - self.linear.bias) @ self.linear.weight  # [N, H*W*C]
        return responsibilities(signal.reshape(-1, *self.in_shape))
