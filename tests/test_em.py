"""EM for flat diagonal GMMs (the baselines): the log-likelihood never decreases."""

import numpy as np
import torch

from dcgmm.em import fit_em


def test_em_log_likelihood_never_decreases(digits):
    images, _ = digits
    em = fit_em(torch.from_numpy(images.reshape(len(images), -1)), 8, 0.05, max_iter=30)
    assert np.all(np.diff(em.history) > -1e-9)
