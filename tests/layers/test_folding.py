"""Folding layer F(fy,fx,sy,sx) against F.unfold, a naive scatter, autograd and gradcheck."""

import pytest
import torch
from torch.nn import functional as F

from dcgmm.errors import SpecError
from dcgmm.layers import Folding

from naive import naive_scatter_mean


@pytest.mark.parametrize("shape,window", [((9, 7, 2), (3, 2, 2, 1)), ((10, 8, 3), (4, 4, 2, 2)), ((5, 6, 1), (5, 6, 1, 1))])
def test_folding_equals_unfold(shape, window):
    fy, fx, sy, sx = window
    layer = Folding(shape, *window)
    x = torch.randn(3, *shape)
    ours = layer(x)
    h, w, c = shape
    ho, wo, co = layer.out_shape
    assert ours.shape == (3, ho, wo, co) and co == fy * fx * c
    ref = F.unfold(x.permute(0, 3, 1, 2), (fy, fx), stride=(sy, sx))  # [N, C*fy*fx, L], channel order (c, i, j)
    ref = ref.reshape(3, c, fy, fx, ho, wo).permute(0, 4, 5, 2, 3, 1).reshape(3, ho, wo, co)  # ours: (i, j, c)
    torch.testing.assert_close(ours, ref)


def test_folding_sampling_averages_overlaps_exactly():
    layer = Folding((9, 7, 2), 3, 3, 2, 1)
    control = torch.randn(2, *layer.out_shape, dtype=torch.float64)
    torch.testing.assert_close(layer.sample(control), naive_scatter_mean(control, (9, 7, 2), 3, 3, 2, 1))


@pytest.mark.parametrize("shape,window", [((9, 7, 2), (3, 2, 2, 1)), ((8, 6, 3), (4, 3, 4, 3)), ((5, 6, 2), (5, 6, 1, 1))])
def test_folding_adjoint_equals_autograd(shape, window):
    layer = Folding(shape, *window)
    x = torch.randn(2, *shape, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, *layer.out_shape, dtype=torch.float64)
    (expected,) = torch.autograd.grad((layer(x) * upstream).sum(), x)
    torch.testing.assert_close(layer.adjoint(upstream), expected)


def test_folding_inverse_is_identity_for_non_overlapping_windows():
    layer = Folding((8, 6, 3), 4, 3, 4, 3)
    x = torch.arange(2 * 8 * 6 * 3, dtype=torch.float32).reshape(2, 8, 6, 3)
    torch.testing.assert_close(layer.sample(layer(x)), x)


def test_folding_rejects_large_windows_and_warns_on_gaps():
    with pytest.raises(SpecError, match="larger than"):
        Folding((5, 5, 1), 6, 2, 1, 1)
    with pytest.warns(UserWarning, match="uncovered"):
        Folding((10, 10, 1), 3, 3, 4, 4)


def test_folding_gradcheck():
    layer = Folding((5, 4, 2), 2, 3, 1, 1)
    x = torch.randn(2, 5, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
