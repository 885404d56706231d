"""A scikit-learn estimator around the DCGMM: ``fit``, ``score_samples``, ``predict``, ``sample``.

:class:`DeepGaussianMixture` follows scikit-learn's conventions for density estimators (like
``sklearn.mixture.GaussianMixture``): every constructor argument is a parameter (``get_params`` /
``set_params``, ``clone``), ``fit`` returns the estimator, learned state ends in ``_``, and it works in a
``Pipeline`` or ``GridSearchCV``. :class:`dcgmm.DCGMM` (the ``nn.Module``) stays the PyTorch face; the fitted
one is ``estimator.model_``.

What the scores are: ``score_samples`` is the log-likelihood that the **top GMM layer** gives its input
(the responsibilities of the layers below), summed over its positions — the density the paper's outlier
detection uses. It is a density of the top layer's input, not of the pixels: values of different
architectures (different top-layer inputs) are not comparable, so a grid search over ``arch`` ranks
architectures by a number that does not measure the same thing for each; over training settings of one
architecture (``n_epochs``, ``learning_rate``) it compares like with like.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from scipy import sparse
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import InputError
from .model import DCGMM, ModelConfig
from .sampling import DEFAULT_CONTROL_NOISE, DEFAULT_NOISE, DEFAULT_TOP_S, sample_components
from .training import TrainConfig, Trainer


class DeepGaussianMixture(DensityMixin, BaseEstimator):
    """Deep Convolutional Gaussian Mixture Model as a scikit-learn density estimator.

    Parameters
    ----------
    arch : preset name (``"2L-c64"``, the default, ``"2L-c"`` ...) or spec string, for images of ``image_shape``.
    image_shape : ``(H, W)`` or ``(H, W, C)`` of the images when ``X`` is flat ``(N, D)``; None takes ``X`` as
        it comes: ``(N, H, W)`` or ``(N, H, W, C)`` images, and a flat ``(N, D)`` as one position with ``D``
        channels (fit it with e.g. ``arch="G(10)"``, a plain diagonal GMM).
    n_epochs, batch_size, learning_rate, variance_floor, top_variance_floor : training settings (:class:`~dcgmm.TrainConfig`,
        :class:`~dcgmm.ModelConfig`); the batch size is capped at the number of training images.
    random_state : seed of the initial values, the data order and :meth:`sample`.
    device : ``"cpu"`` or ``"cuda"``.
    verbose : progress bars and a line per epoch while fitting.

    Attributes
    ----------
    model_ : the fitted :class:`~dcgmm.DCGMM`.
    image_shape_ : ``(H, W, C)`` the model takes.
    n_features_in_ : ``H * W * C``.
    n_components_ : components of the top GMM layer.
    history_ : one :class:`~dcgmm.training.EpochRecord` per epoch.
    """

    def __init__(self, arch="2L-c64", image_shape=None, n_epochs=25, batch_size=100, learning_rate=0.1,
                 variance_floor=0.05, top_variance_floor=0.005, random_state=0, device="cpu", verbose=False):
        self.arch = arch
        self.image_shape = image_shape
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.variance_floor = variance_floor
        self.top_variance_floor = top_variance_floor
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # ------------------------------------------------------------------------------------------ data
    def _images(self, X, fitting: bool = False) -> tuple[np.ndarray, bool]:
        """``X`` as float32 ``(N, H, W, C)``, and whether it came flat.

        The flat form ``(N, H*W*C)`` goes through scikit-learn's ``validate_data`` (numeric, finite, dense,
        2-D, and on later calls the number of features seen in ``fit``).
        """
        shape = None
        if not sparse.issparse(X):
            X = np.asarray(X)
            if X.ndim in (3, 4):
                shape = X.shape[1:] if X.ndim == 4 else (*X.shape[1:], 1)
                X = X.reshape(len(X), -1)
            elif X.ndim > 4:
                raise ValueError(f"X must be (N, D), (N, H, W) or (N, H, W, C); got shape {X.shape}")
        X = validate_data(self, X, reset=fitting, dtype="numeric")
        scaled = X.astype(np.float32) / 255.0 if X.dtype == np.uint8 else X.astype(np.float32)
        flat = shape is None
        if flat:
            shape = self._flat_shape(X.shape[1]) if fitting else self.image_shape_
            if math.prod(shape) != X.shape[1]:
                raise ValueError(f"X has {X.shape[1]} features; images of shape {tuple(shape)} need {math.prod(shape)}")
        elif not fitting and tuple(shape) != self.image_shape_:
            raise ValueError(f"X has images of shape {tuple(shape)}; this estimator was fitted on {self.image_shape_}")
        return scaled.reshape(len(scaled), *shape), flat

    def _flat_shape(self, features: int) -> tuple[int, int, int]:
        if self.image_shape is None:
            return (1, 1, features)
        shape = tuple(int(s) for s in self.image_shape)
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3:
            raise ValueError(f"image_shape must be (H, W) or (H, W, C); got {self.image_shape!r}")
        return shape

    # ------------------------------------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        """Train on ``X`` (and labels ``y`` if ``arch`` ends in a classifier ``C(n)``); returns ``self``."""
        images, flat = self._images(X, fitting=True)
        self.image_shape_ = tuple(images.shape[1:])
        self.n_features_in_ = int(math.prod(self.image_shape_))
        self._flat_input = flat
        model = DCGMM(ModelConfig(self.arch, self.image_shape_, variance_floor=self.variance_floor,
                                  top_variance_floor=self.top_variance_floor))
        config = TrainConfig(epochs=self.n_epochs, batch_size=min(self.batch_size, len(images)),
                             lr=self.learning_rate, seed=self.random_state)
        labels = None if y is None or model.classifier is None else np.asarray(y)
        trainer = Trainer(model, config, images, labels, device=self.device)
        self.history_ = trainer.fit(progress=self.verbose)
        model.eval()
        self.model_ = model
        self.n_components_ = model.layers[model.top_gmm].n_components
        return self

    # ------------------------------------------------------------------------------------------ scoring
    def score_samples(self, X) -> np.ndarray:
        """Log-likelihood of every sample, shape (N,): the top GMM layer's log-likelihood of its input, summed
        over its positions (see the module docstring for what it is and is not)."""
        check_is_fitted(self, "model_")
        images, _ = self._images(X)
        return self.model_.log_likelihoods(images)[-1].per_image.astype(np.float64)

    def score(self, X, y=None) -> float:
        """Mean of :meth:`score_samples` (higher is better)."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X) -> np.ndarray:
        """Responsibilities of the top GMM layer's components, shape (N, K); rows sum to 1. Needs a global
        top layer (one position), as in every Table I architecture."""
        check_is_fitted(self, "model_")
        images, _ = self._images(X)
        top = self.model_.top_gmm
        h, w, k = self.model_.layers[top].out_shape
        if h * w != 1:
            raise InputError(f"the top GMM layer of {self.model_.spec} has {h}x{w} positions: predict needs a global one (1x1)")
        out = [self.model_.estimate(x)[0][top].reshape(len(x), k).cpu().numpy() for x in self.model_.batches(images)]
        return np.concatenate(out).astype(np.float64)

    def predict(self, X) -> np.ndarray:
        """The top GMM layer's most responsible component of every sample, shape (N,), as mixtures in
        scikit-learn do (not a class: for a top classifier use ``model_.predict``)."""
        return self.predict_proba(X).argmax(axis=1)

    # ------------------------------------------------------------------------------------------ sampling
    def sample(self, n_samples: int = 1):
        """Draw ``n_samples``: returns ``(X, components)``, X in the layout ``fit`` was given (flat ``(n, D)``
        or images ``(n, H, W, C)``) and the top component each sample was drawn from, shape (n,). Below the top,
        components are drawn as :func:`dcgmm.sampling.sample` does by default (top-5, 0.25 sigma of noise on the pixel layer)."""
        check_is_fitted(self, "model_")
        if n_samples < 1:
            raise InputError(f"n_samples must be at least 1; got {n_samples}")
        top = self.model_.layers[self.model_.top_gmm]
        h, w, _ = top.out_shape
        if h * w != 1:
            raise InputError(f"the top GMM layer of {self.model_.spec} has {h}x{w} positions: sample needs a global one (1x1)")
        generator = torch.Generator(device=self.model_.device).manual_seed(self.random_state)
        weights = torch.exp(top.log_weights.detach())
        components = torch.multinomial(weights, n_samples, replacement=True, generator=generator)
        images = sample_components(self.model_, components, top_s=DEFAULT_TOP_S, noise=DEFAULT_NOISE, control_noise=DEFAULT_CONTROL_NOISE,
                                   generator=generator).cpu().numpy()
        X = images.reshape(n_samples, -1) if self._flat_input else images
        return X.astype(np.float64), components.cpu().numpy()
