"""The four layer types of the paper behind one contract (see :mod:`dcgmm.layers.base`)."""

from .base import Layer
from .classifier import Classifier
from .folding import Folding
from .gmm import GMM
from .pooling import Pooling

__all__ = ["Classifier", "Folding", "GMM", "Layer", "Pooling"]
