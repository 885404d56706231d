import numpy as np
import pytest
from sklearn.datasets import load_digits


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled 8x8 digits as float32 (N, 8, 8, 1) in [0, 1], and labels."""
    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[..., None], data.target.astype(np.int64)
