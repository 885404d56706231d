"""dcgmm: Deep Convolutional Gaussian Mixture Models (Gepperth & Pfülb) in PyTorch.

Quick start::

    from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset

    images, labels = load_dataset("mnist", "train")          # (N, 28, 28, 1) float32 in [0, 1]
    model = DCGMM.from_spec("2L-c")                           # or "F(8,8,2,2) G(25) F(11,11,1,1) G(36)"
    Trainer(model, TrainConfig(epochs=25), images).fit()
    top = model.log_likelihoods(images[:100])[-1].per_image  # (100,) log-likelihoods of the top layer

The names below are imported when first used: ``import dcgmm`` is quick, and PyTorch loads with the first
of them.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "errors", "DataError": "errors", "DCGMMError": "errors", "InputError": "errors", "SpecError": "errors",
    "DCGMM": "model", "ModelConfig": "model", "DeepGaussianMixture": "estimator", "PRESETS": "spec", "TABLE_I": "spec", "parse": "spec",
    "TrainConfig": "training", "Trainer": "training", "fetch": "data", "load_dataset": "data", "load_npy": "data",
    "load_model": "checkpoint", "save_model": "checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dcgmm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
