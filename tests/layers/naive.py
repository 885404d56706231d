"""Naive reference computations shared by the layer tests."""

import itertools

import torch


def naive_scatter_mean(control, in_shape, fy, fx, sy, sx):
    h, w, c = in_shape
    n, ho, wo, _ = control.shape
    total = torch.zeros(n, h, w, c, dtype=control.dtype)
    count = torch.zeros(h, w, dtype=control.dtype)
    patches = control.reshape(n, ho, wo, fy, fx, c)
    for a, b, i, j in itertools.product(range(ho), range(wo), range(fy), range(fx)):
        total[:, a * sy + i, b * sx + j] += patches[:, a, b, i, j]
        count[a * sy + i, b * sx + j] += 1
    return total / count.clamp(min=1)[None, :, :, None]
