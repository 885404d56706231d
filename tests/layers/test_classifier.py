"""Classifier layer C(n) against nn.Linear; its approximate inverse as a control signal."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dcgmm.errors import InputError
from dcgmm.layers import Classifier


def test_classifier_equals_linear():
    layer = Classifier((3, 2, 4), 5)
    with torch.no_grad():
        layer.linear.weight.normal_()
        layer.linear.bias.normal_()
    x = torch.randn(6, 3, 2, 4)
    linear = torch.nn.Linear(24, 5)
    linear.load_state_dict(layer.linear.state_dict())
    torch.testing.assert_close(layer(x)[:, 0, 0], linear(x.reshape(6, -1)))
    labels = torch.randint(0, 5, (6,))
    torch.testing.assert_close(layer.loss(x, labels), F.cross_entropy(linear(x.reshape(6, -1)), labels))
    with pytest.raises(InputError, match="labels"):
        layer.loss(x, torch.full((6,), 7))


def test_classifier_sampling_gives_valid_control():
    layer = Classifier((3, 2, 4), 5)
    with torch.no_grad():
        layer.linear.weight.normal_()
    codes = F.one_hot(torch.arange(5), 5).float()[:, None, None, :]
    control = layer.sample(codes)
    assert control.shape == (5, 3, 2, 4)
    assert (control >= 0).all()
    torch.testing.assert_close(control.sum(-1), torch.ones(5, 3, 2))
    # reference: logits of the 0.99-confident class distribution, minus the bias, through W^T, softmax per position
    w, b = layer.linear.weight.detach().numpy(), layer.linear.bias.detach().numpy()
    control = control.detach()
    for c in range(5):
        target = np.full(5, 0.01 / 5)
        target[c] += 0.99
        signal = ((np.log(target) - b) @ w).reshape(3, 2, 4)
        expected = np.exp(signal - signal.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        np.testing.assert_allclose(control[c].numpy(), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="positive entry"):
        layer.sample(torch.zeros(1, 1, 1, 5))
