"""Fixtures shared by the test modules: data the tests generate or that scikit-learn bundles, never a download."""

import gzip
import hashlib

import numpy as np
import pytest
from sklearn.datasets import load_digits

from dcgmm import DCGMM, TrainConfig, Trainer, data
from dcgmm.outliers import fit_statistics

from fakes import idx_bytes

SMALL = "F(4,4,2,2) G(9) F(3,3,1,1) G(4)"
"""The two-layer model of the ``trained`` fixture."""


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled 8x8 digits as float32 (N, 8, 8, 1) in [0, 1], and labels."""
    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[..., None], data.target.astype(np.int64)


@pytest.fixture
def toy_dataset(monkeypatch, tmp_path):
    """A fake dataset 'toy' with its IDX files in a folder and matching checksums; no network involved."""
    rng = np.random.default_rng(0)
    arrays = {("train", "images"): rng.integers(0, 256, (30, 28, 28)), ("train", "labels"): rng.integers(0, 10, 30),
              ("test", "images"): rng.integers(0, 256, (10, 28, 28)), ("test", "labels"): rng.integers(0, 10, 10)}
    folder = tmp_path / "idx"
    folder.mkdir()
    sha = {}
    for (split, part), array in arrays.items():
        stem = data._IDX_NAMES[(split, part)]
        (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        flat = array.astype(np.uint8).reshape(len(array), -1) if array.ndim > 1 else array.astype(np.uint8)
        sha[(split, part)] = hashlib.sha256(np.ascontiguousarray(flat).tobytes()).hexdigest()
    monkeypatch.setitem(data.DATASETS, "toy", data.DatasetInfo("toy", mirrors=(), sha256=sha))
    monkeypatch.setenv("DCGMM_DATA_DIR", str(tmp_path / "cache"))
    return folder, arrays


@pytest.fixture(scope="module")
def trained(digits):
    """A small two-layer model trained on the 8x8 digits 0-4, with outlier statistics over its training data."""
    images, labels = digits
    train = images[labels < 5]
    model = DCGMM.from_spec(SMALL, input_shape=(8, 8, 1))
    Trainer(model, TrainConfig(epochs=8, batch_size=50, window=10), train).fit(progress=False)
    fit_statistics(model, train, source="digits 0-4")
    return model, train
