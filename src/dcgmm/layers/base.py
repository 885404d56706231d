"""The layer contract every DCGMM layer follows (paper Sec. III, Fig. 1).

A layer knows its input shape ``(H, W, C)`` when it is built and derives its output shape from it.

* Estimation (up): ``forward(x)`` maps ``(N, H, W, C)`` to ``(N, H', W', C')``; ``estimate(x)`` also returns
  the log-likelihood per position of a density layer, ``estimate_known(x, known)`` the same with unknown
  input dimensions marginalised out.
* Sampling (down): ``sample(control, top_s, noise, generator)`` maps a control signal shaped like the
  output, ``(N, H', W', C')``, to one shaped like the input, ``(N, H, W, C)``.
* Maps of positions: ``carry_map_down`` / ``carry_map_up`` move a one-channel map ``(N, H, W, 1)`` between a
  layer's output positions and its input positions (outlier maps down to the pixels, damaged pixels up).

What the algorithms need to know about a layer, it says itself: ``is_mixture`` (a GMM: a density at every
position, sampled by drawing components), ``moves_positions`` (Folding and Pooling: their downward signal
is what sharpening refines) and ``is_linear`` (Folding: ``adjoint`` carries gradients down exactly).
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
    #: a GMM layer: a density at every position, its output the responsibilities
    is_mixture: bool = False
    #: Folding and Pooling: they rearrange positions, and sharpening refines the signal they send down
    moves_positions: bool = False
    #: the forward map is linear and ``adjoint`` is its transpose
    is_linear: bool = False

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

    def estimate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Estimation with the density kept: ``(output, log p per position (N, H', W') or None)``."""
        return self(x), None

    def estimate_known(self, x: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Estimation from the known input dimensions only: ``(output, which output dimensions are known)``.

        ``known`` is 0/1 of the shape of ``x``. A layer that only moves values carries the flags as it
        carries the values.
        """
        return self(x), self(known)

    def sample(
        self, control: torch.Tensor, top_s: int | None = None, noise: float = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sampling: control ``(N, H', W', C')`` -> control ``(N, H, W, C)``.

        ``top_s``, ``noise`` and ``generator`` matter to layers that draw (GMM); the others ignore them.
        """
        raise NotImplementedError

    def expected(self, control: torch.Tensor) -> torch.Tensor:
        """The expectation of what :meth:`sample` emits for ``control``: the same map for layers that do not draw."""
        return self.sample(control)

    def carry_map_down(self, signal: torch.Tensor) -> torch.Tensor:
        """A map over the output positions ``(N, H', W', 1)`` onto the input positions ``(N, H, W, 1)``."""
        return signal

    def carry_map_up(self, signal: torch.Tensor) -> torch.Tensor:
        """A map over the input positions ``(N, H, W, 1)`` onto the output positions ``(N, H', W', 1)``."""
        return signal

    def extra_repr(self) -> str:
        return f"{self.spec()}: {self.in_shape} -> {self.out_shape}"


class SpatialLayer(Layer):
    """A layer that rearranges positions (Folding, Pooling): position maps travel with its windows."""

    moves_positions = True

    def carry_map_down(self, signal: torch.Tensor) -> torch.Tensor:
        """Every input position gets the mean of the map over the windows that cover it (0 where none does):
        ``(N, H', W', 1)`` -> ``(N, H, W, 1)``."""
        return self.sample(signal.expand(*signal.shape[:3], self.out_shape[2])).mean(-1, keepdim=True)

    def carry_map_up(self, signal: torch.Tensor) -> torch.Tensor:
        """Every output position gets the largest value of the map within its window: ``(N, H, W, 1)`` ->
        ``(N, H', W', 1)``."""
        return self(signal.expand(*signal.shape[:3], self.in_shape[2])).amax(-1, keepdim=True)


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
