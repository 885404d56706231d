"""The layer contract every DCGMM layer follows (paper Sec. III, Fig. 1).

A layer knows its input shape ``(H, W, C)`` when it is built and derives its output shape from it.

* Estimation (up): ``forward(x)`` maps ``(N, H, W, C)`` to ``(N, H', W', C')``.
* Sampling (down): ``sample(control)`` maps a control signal shaped like the output, ``(N, H', W', C')``,
  to one shaped like the input, ``(N, H, W, C)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError, SpecError

Shape = tuple[int, int, int]  # (H, W, C)


class Layer(nn.Module):
    """Base class: stores ``in_shape`` / ``out_shape`` and checks inputs against them."""

    #: single-letter code of the layer type in spec strings (F, P, G, C)
    letter: str = "?"

    def __init__(self, in_shape: Shape):
        super().__init__()
        if len(in_shape) != 3 or any(int(s) < 1 for s in in_shape):
            raise SpecError(f"input shape must be (H, W, C) with positive sizes; got {tuple(in_shape)}")
        self.in_shape: Shape = tuple(int(s) for s in in_shape)
        self.out_shape: Shape = self.output_shape(self.in_shape)

    def output_shape(self, in_shape: Shape) -> Shape:
        """Shape ``(H', W', C')`` of the output for an input of shape ``(H, W, C)``."""
        raise NotImplementedError

    def spec(self) -> str:
        """This layer in spec-string notation, e.g. ``F(8,8,2,2)``."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Raise InputError unless ``x`` has shape ``(N, *in_shape)``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise InputError(
                f"{self.spec()} expects input of shape (N, {', '.join(map(str, self.in_shape))}); "
                f"got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Estimation: ``(N, H, W, C)`` -> ``(N, H', W', C')``."""
        raise NotImplementedError

    def sample(self, control: torch.Tensor, **options) -> torch.Tensor:
        """Sampling: control ``(N, H', W', C')`` -> control ``(N, H, W, C)``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.spec()}: {self.in_shape} -> {self.out_shape}"


def scatter_sum(patches: torch.Tensor, size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Put window contents back onto the plane they were cut from, adding where windows overlap.

    Parameters
    ----------
    patches : tensor, shape (N, H', W', ky, kx, C) — the content of every window.
    size : (H, W) of the plane.

    Returns
    -------
    tensor, shape (N, H, W, C). Pixels that no window covers are 0.
    """
    n, hp, wp, ky, kx, c = patches.shape
    tiles = (hp == 1 or stride[0] == ky) and (wp == 1 or stride[1] == kx) and (hp * ky, wp * kx) == tuple(size)
    if tiles:  # the windows tile the plane exactly: no overlap, no gap
        return patches.permute(0, 1, 3, 2, 4, 5).reshape(n, hp * ky, wp * kx, c)
    cols = patches.permute(0, 5, 3, 4, 1, 2).reshape(n, c * ky * kx, hp * wp)  # [N, C*ky*kx, H'*W']
    return F.fold(cols, output_size=size, kernel_size=kernel, stride=stride).permute(0, 2, 3, 1)


def scatter_mean(patches: torch.Tensor, size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Like :func:`scatter_sum`, but averaging where windows overlap: (N, H', W', ky, kx, C) -> (N, H, W, C)."""
    _, hp, wp, ky, kx, _ = patches.shape
    ones = torch.ones(1, ky * kx, hp * wp, dtype=patches.dtype, device=patches.device)
    counts = F.fold(ones, output_size=size, kernel_size=kernel, stride=stride)  # [1, 1, H, W]
    return scatter_sum(patches, size, kernel, stride) / counts.clamp(min=1).permute(0, 2, 3, 1)
