"""The DCGMM stack: a list of layers built from a spec string, estimation up and sampling down."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .layers import GMM, Classifier
from .layers.gmm import responsibilities
from .spec import build_layers, resolve


@dataclass
class ModelConfig:
    """Everything needed to rebuild a DCGMM (saved inside every checkpoint)."""

    spec: str
    """Layers in spec notation, e.g. ``"F(8,8,2,2) G(25) F(11,11,1,1) G(36)"``, or a preset name."""
    input_shape: tuple[int, int, int] = (28, 28, 1)
    """(H, W, C) of the images."""
    variance_floor: float = 0.05
    """Smallest variance of any GMM component (precision bound 1/floor = 20 as in the authors' code)."""
    mu_init: float = 0.01
    """GMM centroids start uniform in [-mu_init, mu_init] (paper Sec. III-B1)."""

    def __post_init__(self):
        self.spec = resolve(self.spec)
        self.input_shape = tuple(int(s) for s in self.input_shape)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayerLikelihood:
    """Log-likelihoods of one GMM layer on a dataset."""

    layer: int
    """Index of the GMM layer in the stack (0-based)."""
    spec: str
    per_position: np.ndarray = field(repr=False)
    """log p at every position, shape (N, H, W)."""

    @property
    def per_image(self) -> np.ndarray:
        """Sum over positions, shape (N,): the log-likelihood of all of an image's patches at this layer."""
        return self.per_position.reshape(len(self.per_position), -1).sum(axis=1)


class DCGMM(nn.Module):
    """A Deep Convolutional Gaussian Mixture Model.

    Build it from a preset or spec string::

        model = DCGMM(ModelConfig("2L-c"))
        model = DCGMM.from_spec("F(8,8,2,2) G(25) F(11,11,1,1) G(36) C(10)", input_shape=(28, 28, 1))
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            build_layers(config.spec, config.input_shape, config.variance_floor, config.mu_init)
        )

    @classmethod
    def from_spec(cls, spec: str, input_shape=(28, 28, 1), **options) -> "DCGMM":
        """Build from a spec string or preset name; ``options`` go to :class:`ModelConfig`."""
        return cls(ModelConfig(spec, tuple(input_shape), **options))

    # ------------------------------------------------------------------------------------------ structure
    @property
    def spec(self) -> str:
        return " ".join(layer.spec() for layer in self.layers)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.config.input_shape

    def gmm_layers(self) -> Iterator[tuple[int, GMM]]:
        """(index, layer) of every GMM layer, bottom to top."""
        return ((i, layer) for i, layer in enumerate(self.layers) if isinstance(layer, GMM))

    @property
    def classifier(self) -> Classifier | None:
        last = self.layers[-1]
        return last if isinstance(last, Classifier) else None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_images(self, x: torch.Tensor) -> None:
        """Raise InputError unless ``x`` is a finite float tensor of shape ``(N, *input_shape)``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            h, w, c = self.input_shape
            raise InputError(
                f"this model takes images of shape (N, {h}, {w}, {c}); got {tuple(x.shape)}. "
                f"Resize the images or train a model for this size"
            )
        if not torch.isfinite(x).all():
            raise InputError("images contain NaN or inf values: clean or drop them first")

    # ------------------------------------------------------------------------------------------ estimation
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Estimation through the whole stack: the output of every layer, bottom to top.

        ``x``: images ``(N, H, W, C)``. Every layer sees its input detached (layers train on their own losses).
        """
        outputs = []
        for layer in self.layers:
            x = layer(x.detach())
            outputs.append(x)
        return outputs

    @torch.no_grad()
    def log_likelihoods(self, images: np.ndarray | torch.Tensor, batch_size: int = 500) -> list[LayerLikelihood]:
        """Exact log-likelihood (log-sum-exp) of every GMM layer at every position.

        Parameters
        ----------
        images : array, shape (N, H, W, C), float.

        Returns
        -------
        One :class:`LayerLikelihood` per GMM layer, bottom to top, each with ``per_position`` (N, H', W').
        """
        images = torch.as_tensor(images)
        self.check_images(images)
        gmm_index = [i for i, _ in self.gmm_layers()]
        chunks: dict[int, list[np.ndarray]] = {i: [] for i in gmm_index}
        device = self.device
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device, torch.float32)
            for i, layer in enumerate(self.layers):
                if isinstance(layer, GMM):
                    log_joint = layer.log_joint(x)
                    chunks[i].append(torch.logsumexp(log_joint, dim=-1).cpu().numpy())
                    x = responsibilities(log_joint)
                elif i < gmm_index[-1]:
                    x = layer(x)
        return [LayerLikelihood(i, self.layers[i].spec(), np.concatenate(chunks[i])) for i in gmm_index]

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, batch_size: int = 500) -> np.ndarray:
        """Class predictions of the top classifier, shape (N,); needs a C(n) layer."""
        if self.classifier is None:
            raise InputError(f"model {self.spec!r} has no classifier layer C(n): add one to the spec to predict classes")
        images = torch.as_tensor(images)
        self.check_images(images)
        preds = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(self.device, torch.float32)
            preds.append(self.forward(x)[-1].reshape(len(x), -1).argmax(1).cpu().numpy())
        return np.concatenate(preds)

    # ------------------------------------------------------------------------------------------ sampling
    def sample(self, n: int, top_s: int | None = 1, **options) -> torch.Tensor:
        """Draw ``n`` images ``(n, H, W, C)``; see :func:`dcgmm.sampling.sample` for the options."""
        from .sampling import sample

        return sample(self, n, top_s=top_s, **options)

    # ------------------------------------------------------------------------------------------ I/O
    def layer_summary(self) -> list[str]:
        """One line per layer: spec, input and output shape, parameter count."""
        return [
            f"{i:2d} {layer.spec():<16} {str(layer.in_shape):>14} -> {str(layer.out_shape):<14} "
            f"{sum(p.numel() for p in layer.parameters()):>9,d} params"
            for i, layer in enumerate(self.layers)
        ]
