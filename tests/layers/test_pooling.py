"""Pooling layer P(ky,kx[,sy,sx]) against F.max_pool2d; nearest-neighbour sampling."""

import pytest
import torch
from torch.nn import functional as F

from dcgmm.layers import Pooling

from naive import naive_scatter_mean


@pytest.mark.parametrize(
    "shape,args",
    [((9, 7, 3), (2, 2)), ((10, 9, 2), (3, 2, 2, 1)), ((6, 6, 1), (3, 3)), ((7, 8, 2), (1, 3, 1, 2)), ((5, 5, 2), (1, 1))],
)
@pytest.mark.parametrize("tracked", [False, True], ids=["no autograd", "autograd"])
def test_pooling_equals_max_pool2d(shape, args, tracked):
    """Both paths (strided maxima without autograd, max_pool2d with it) give max_pool2d's values."""
    layer = Pooling(shape, *args)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)).requires_grad_(tracked)
    ky, kx = args[:2]
    stride = args[2:] if len(args) == 4 else (ky, kx)
    ref = F.max_pool2d(x.detach().permute(0, 3, 1, 2), (ky, kx), stride).permute(0, 2, 3, 1)
    out = layer(x)
    assert out.requires_grad == tracked and out.shape[1:] == layer.out_shape
    torch.testing.assert_close(out.detach(), ref, rtol=0, atol=0)


def test_pooling_sampling_is_nearest_neighbour():
    layer = Pooling((6, 4, 2), 2, 2)
    control = torch.randn(3, 3, 2, 2)
    torch.testing.assert_close(layer.sample(control), control.repeat_interleave(2, 1).repeat_interleave(2, 2))
    overlapping = Pooling((7, 5, 1), 3, 3, 2, 2)
    c = torch.randn(2, *overlapping.out_shape, dtype=torch.float64)
    spread = c[:, :, :, None, :].expand(-1, -1, -1, 9, -1).reshape(2, *overlapping.out_shape[:2], 9)
    torch.testing.assert_close(overlapping.sample(c), naive_scatter_mean(spread, (7, 5, 1), 3, 3, 2, 2))
