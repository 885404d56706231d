"""Linear classifier layer C(n_classes) (paper Sec. III-A4)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError, SpecError
from .base import Layer, Shape


class Classifier(Layer):
    """Affine map of the flattened input to class logits, trained by cross-entropy on detached input.

    Output shape ``(1, 1, n_classes)``. Sampling approximately inverts the map: ``(T - b) W`` of
    one-hot (or soft) class codes ``T``, made a valid control signal for the GMM layer below
    (clipped at 0 and normalised to sum 1 at every position).
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

    def sample(self, control: torch.Tensor, **options) -> torch.Tensor:
        """Class codes ``(N, 1, 1, n_classes)`` -> control ``(N, H, W, C)``, non-negative, summing to 1 per position."""
        codes = control.reshape(control.shape[0], self.n_classes)
        flat = (codes - self.linear.bias) @ self.linear.weight  # [N, H*W*C]
        signal = flat.reshape(-1, *self.in_shape).clamp(min=0)
        total = signal.sum(dim=-1, keepdim=True)
        uniform = torch.full_like(signal, 1.0 / self.in_shape[2])
        return torch.where(total > 0, signal / total.clamp(min=torch.finfo(signal.dtype).tiny), uniform)
