"""Folding layer F(fy, fx, sy, sx) (paper Sec. III-A1)."""

from __future__ import annotations

import warnings

import torch

from ..errors import SpecError
from .base import Shape, SpatialLayer, scatter_mean, scatter_sum


class Folding(SpatialLayer):
    """Gather every ``fy x fx`` window (strides ``sy, sx``, no padding) into the channel axis.

    Output channel order is (patch row, patch column, input channel): the content of window
    ``(h, w)`` at offset ``(i, j)`` and input channel ``c`` lands in channel ``(i * fx + j) * C + c``.
    Sampling scatters every window back and averages where windows overlap.
    """

    letter = "F"
    is_linear = True

    def __init__(self, in_shape: Shape, fy: int, fx: int, sy: int = 1, sx: int = 1):
        self.kernel = (int(fy), int(fx))
        self.stride = (int(sy), int(sx))
        if min(self.kernel) < 1 or min(self.stride) < 1:
            raise SpecError(f"F({fy},{fx},{sy},{sx}): window sizes and strides must be positive integers")
        super().__init__(in_shape)
        h, w, _ = self.in_shape
        if (h - fy) % sy or (w - fx) % sx or sy > fy or sx > fx:
            warnings.warn(
                f"{self.spec()} on a {h}x{w} input leaves some pixels uncovered; sampling cannot fill them",
                stacklevel=2,
            )

    def output_shape(self, in_shape: Shape) -> Shape:
        h, w, c = in_shape
        (fy, fx), (sy, sx) = self.kernel, self.stride
        if fy > h or fx > w:
            raise SpecError(
                f"F({fy},{fx},{sy},{sx}): the {fy}x{fx} window is larger than its {h}x{w} input; "
                f"use a window of at most {h}x{w} or a larger input"
            )
        return (1 + (h - fy) // sy, 1 + (w - fx) // sx, fy * fx * c)

    def spec(self) -> str:
        return f"F({self.kernel[0]},{self.kernel[1]},{self.stride[0]},{self.stride[1]})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, C)`` -> ``(N, H', W', fy*fx*C)``."""
        self.check_input(x)
        (fy, fx), (sy, sx) = self.kernel, self.stride
        windows = x.unfold(1, fy, sy).unfold(2, fx, sx)  # [N, H', W', C, fy, fx]
        return windows.permute(0, 1, 2, 4, 5, 3).reshape(x.shape[0], *self.out_shape)

    def sample(self, control: torch.Tensor, top_s=None, noise: float = 0.0, generator=None) -> torch.Tensor:
        """``(N, H', W', fy*fx*C)`` -> ``(N, H, W, C)``, averaging overlapping windows."""
        h, w, c = self.in_shape
        patches = control.reshape(control.shape[0], *self.out_shape[:2], *self.kernel, c)
        return scatter_mean(patches, (h, w), self.kernel, self.stride)

    def adjoint(self, grad: torch.Tensor) -> torch.Tensor:
        """Transpose of the (linear) forward map: ``(N, H', W', fy*fx*C)`` -> ``(N, H, W, C)``, summing overlaps.

        It carries a gradient with respect to the output back to the input, without autograd.
        """
        h, w, c = self.in_shape
        patches = grad.reshape(grad.shape[0], *self.out_shape[:2], *self.kernel, c)
        return scatter_sum(patches, (h, w), self.kernel, self.stride)
