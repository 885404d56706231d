"""dcgmm: Deep Convolutional Gaussian Mixture Models (Gepperth & Pfülb) in PyTorch.

Quick start::

    from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset

    images, labels = load_dataset("mnist", "train")          # (N, 28, 28, 1) float32 in [0, 1]
    model = DCGMM.from_spec("2L-c")                           # or "F(8,8,2,2) G(25) F(11,11,1,1) G(36)"
    Trainer(model, TrainConfig(epochs=25), images).fit()
    top = model.log_likelihoods(images[:100])[-1].per_image  # (100,) log-likelihoods of the top layer
"""

__version__ = "0.1.0"

from .checkpoint import load_model, save_model
from .data import fetch, load_dataset, load_npy
from .errors import CheckpointError, DataError, DCGMMError, InputError, SpecError
from .estimator import DeepGaussianMixture
from .model import DCGMM, ModelConfig
from .spec import PRESETS, parse
from .training import TrainConfig, Trainer

__all__ = [
    "CheckpointError",
    "DCGMM",
    "DCGMMError",
    "DataError",
    "DeepGaussianMixture",
    "InputError",
    "ModelConfig",
    "PRESETS",
    "SpecError",
    "TrainConfig",
    "Trainer",
    "fetch",
    "load_dataset",
    "load_model",
    "load_npy",
    "parse",
    "save_model",
]
