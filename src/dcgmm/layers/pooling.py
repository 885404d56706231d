"""Pooling layer P(ky, kx, sy, sx) (paper Sec. III-A2)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import SpecError
from .base import Shape, SpatialLayer, scatter_mean


class Pooling(SpatialLayer):
    """Max pooling over ``ky x kx`` windows with strides ``sy, sx`` (default: the kernel size), no padding.

    Sampling is nearest-neighbour up-sampling: every output value is copied to the pixels of its
    window, averaged where windows overlap.
    """

    letter = "P"

    def __init__(self, in_shape: Shape, ky: int, kx: int, sy: int | None = None, sx: int | None = None):
        self.kernel = (int(ky), int(kx))
        self.stride = (int(sy if sy is not None else ky), int(sx if sx is not None else kx))
        if min(self.kernel) < 1 or min(self.stride) < 1:
            raise SpecError(f"{self.spec()}: kernel sizes and strides must be positive integers")
        super().__init__(in_shape)

    def output_shape(self, in_shape: Shape) -> Shape:
        h, w, c = in_shape
        (ky, kx), (sy, sx) = self.kernel, self.stride
        if ky > h or kx > w:
            raise SpecError(
                f"{self.spec()}: the {ky}x{kx} pooling window is larger than its {h}x{w} input; "
                f"use a window of at most {h}x{w}"
            )
        return (1 + (h - ky) // sy, 1 + (w - kx) // sx, c)

    def spec(self) -> str:
        (ky, kx), (sy, sx) = self.kernel, self.stride
        return f"P({ky},{kx})" if (sy, sx) == (ky, kx) else f"P({ky},{kx},{sy},{sx})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, C)`` -> ``(N, H', W', C)``."""
        self.check_input(x)
        if torch.is_grad_enabled() and x.requires_grad:  # max_pool2d's gradient: one winner per window at ties
            pooled = F.max_pool2d(x.permute(0, 3, 1, 2), self.kernel, self.stride)  # [N, C, H', W']
            return pooled.permute(0, 2, 3, 1)
        return separable_max(x, self.kernel, self.stride, self.out_shape[:2])

    def sample(self, control: torch.Tensor, top_s=None, noise: float = 0.0, generator=None) -> torch.Tensor:
        """``(N, H', W', C)`` -> ``(N, H, W, C)`` by nearest-neighbour up-sampling."""
        n, hp, wp, c = control.shape
        patches = control[:, :, :, None, None, :].expand(n, hp, wp, *self.kernel, c)
        return scatter_mean(patches, self.in_shape[:2], self.kernel, self.stride)


def separable_max(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], out_size: tuple[int, int]) -> torch.Tensor:
    """Max over ``ky x kx`` windows, rows first and then columns, by ``torch.maximum`` of strided slices:
    ``(N, H, W, C)`` -> ``(N, H', W', C)``, the values of ``F.max_pool2d``.

    Channels-last as it is, with ``ky + kx - 2`` element-wise maxima: on 3L-a's (100, 26, 26, 25) responsibilities
    4x faster than ``max_pool2d`` on the permuted tensor (2-core CPU, medians of 200 calls: 0.10 vs 0.41 ms).
    """
    (ky, kx), (sy, sx), (rows, cols) = kernel, stride, out_size
    last_row, last_col = sy * (rows - 1) + 1, sx * (cols - 1) + 1
    pooled = x[:, :last_row:sy]
    for dy in range(1, ky):
        pooled = torch.maximum(pooled, x[:, dy : dy + last_row : sy])
    out = pooled[:, :, :last_col:sx]
    for dx in range(1, kx):
        out = torch.maximum(out, pooled[:, :, dx : dx + last_col : sx])
    return out
