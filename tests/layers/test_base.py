"""The layer contract shared by all layers: inputs of the wrong shape are refused."""

import pytest
import torch

from dcgmm.errors import InputError
from dcgmm.layers import Folding

# ---------------------------------------------------------------------------------------------- GMM


# ---------------------------------------------------------------------------------------------- Folding


# ---------------------------------------------------------------------------------------------- Pooling


# ---------------------------------------------------------------------------------------------- Classifier


def test_layers_reject_wrong_input_shape():
    with pytest.raises(InputError, match=r"expects input of shape \(N, 6, 5, 1\)"):
        Folding((6, 5, 1), 2, 2, 1, 1)(torch.zeros(2, 5, 6, 1))
