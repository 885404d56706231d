"""Top factors (dcgmm.top_factors): the prediction against the textbook Gaussian conditional, the fit against a
direct computation, the map of whole inputs against a loop over windows (saving, use by in-painting and
layers too large for factors: tests/test_window_factors.py)."""

import numpy as np
import torch

from dcgmm import DCGMM
from dcgmm.inpainting import whole_inputs
from dcgmm.top_factors import NOISE_FLOOR, TopFactors, fit_top_factors


def test_predict_is_the_posterior_mixture_of_gaussian_conditionals():
    """For every component, E[h_m | h_o, k] = m_m + C_mo C_oo^-1 (h_o - m_o) with C = W W^T + diag(Psi), computed
    directly row by row; mixed by the given posterior, negative entries 0, observed entries their values."""
    g = torch.Generator().manual_seed(0)
    k, dim, rank = 3, 7, 2
    factors = TopFactors(3, torch.rand(k, dim, generator=g, dtype=torch.float64),
                         0.4 * torch.randn(k, dim, rank, generator=g, dtype=torch.float64),
                         0.02 + 0.1 * torch.rand(k, dim, generator=g, dtype=torch.float64))
    h = torch.rand(2, 2, 3, dim, generator=g, dtype=torch.float64)
    observed = (torch.rand(2, 2, 3, dim, generator=g) < 0.5).double()
    observed[0, 0, 0] = 0  # nothing observed: the top layer's own expectation
    observed[0, 0, 1] = 1  # everything observed: the input itself
    posterior = torch.softmax(torch.randn(2, 2, 3, k, generator=g, dtype=torch.float64), -1)
    got = factors.predict(posterior, h, observed)
    assert got.shape == h.shape
    for row, o, q, value in zip(h.reshape(-1, dim), observed.reshape(-1, dim).bool(), posterior.reshape(-1, k), got.reshape(-1, dim)):
        expected = torch.zeros(dim, dtype=torch.float64)
        for c in range(k):
            m, w = factors.means[c], factors.loadings[c]
            cov = w @ w.T + torch.diag(factors.noise[c])
            conditional = m.clone()
            if o.any():
                conditional[~o] = m[~o] + cov[~o][:, o] @ torch.linalg.solve(cov[o][:, o], row[o] - m[o])
            expected += q[c] * conditional
        expected = torch.where(o, row, expected.clamp_min(0))
        torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got[0, 0, 0], (posterior[0, 0, 0] @ factors.means).clamp_min(0))


def test_fit_is_the_weighted_factor_analysis_of_each_components_inputs(digits):
    """Means from the top layer's responsibilities (inputs with at least 1e-3), computed directly; the loadings
    span the weighted covariance's top eigenvectors with the probabilistic PCA's scale, and Psi is the variance
    they leave per dimension. Reproducible, and the global random state is left alone."""
    images = digits[0][:300]
    model = DCGMM.from_spec("F(4,4,2,2) G(3) F(3,3,1,1) G(2)", input_shape=(8, 8, 1))  # top input: 27 dimensions
    torch.manual_seed(5)
    state = torch.get_rng_state()
    factors = fit_top_factors(model, images, rank=3, batch_size=64)
    assert torch.equal(torch.get_rng_state(), state)
    again = fit_top_factors(model, images, rank=3, batch_size=100)
    torch.testing.assert_close(again.loadings, factors.loadings, rtol=1e-4, atol=1e-6)
    assert factors.layer == 3 and factors.loadings.shape == (2, 27, 3) and factors.noise.shape == (2, 27)
    with torch.no_grad():
        h = torch.as_tensor(images)
        for layer in model.layers[:3]:
            h = layer(h)
        shares = model.layers[3](h).reshape(-1, 2).double().numpy()
        inputs = h.reshape(-1, 27).double().numpy()
    for c in range(2):
        rows = shares[:, c] >= 1e-3
        weights = shares[rows, c] / shares[rows, c].sum()
        mean = weights @ inputs[rows]
        cov = (inputs[rows] - mean).T @ ((inputs[rows] - mean) * weights[:, None])
        values, vectors = np.linalg.eigh(cov)
        values, vectors = values[::-1], vectors[:, ::-1]
        s2 = values[3:].mean()
        np.testing.assert_allclose(factors.means[c].numpy(), mean, atol=1e-5)
        loadings = factors.loadings[c].double().numpy()
        np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(loadings @ loadings.T))[::-1][:3], np.maximum(values[:3] - s2, 0), rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(vectors[:, :3] @ (vectors[:, :3].T @ loadings), loadings, atol=1e-4)
        np.testing.assert_allclose(factors.noise[c].numpy(), np.maximum(np.diag(cov) - (loadings**2).sum(1), NOISE_FLOOR), rtol=1e-3, atol=1e-6)
    assert fit_top_factors(DCGMM.from_spec("F(8,8,1,1) G(3)", input_shape=(8, 8, 1)), images) is None  # no layer below the top


def test_whole_inputs_are_those_whose_windows_miss_every_damaged_pixel():
    model = DCGMM.from_spec("F(4,4,2,2) G(3) F(2,2,1,1) G(2)", input_shape=(8, 8, 1))  # 3x3 windows of 4x4 px; top sees 2x2 of them
    rng = np.random.default_rng(0)
    pixels = torch.as_tensor(rng.random((3, 8, 8)) < 0.05)
    pixels[0] = False
    got = whole_inputs(model, pixels)
    assert got.shape == (3, 2, 2, 12)
    for n in range(3):
        for i in range(2):
            for j in range(2):
                for d in range(12):
                    wy, wx = i + d // 6, j + (d // 3) % 2  # the lower window this dimension reads: (dy, dx, component)
                    touched = bool(pixels[n, 2 * wy : 2 * wy + 4, 2 * wx : 2 * wx + 4].any())
                    assert got[n, i, j, d].item() == (0.0 if touched else 1.0)
    assert bool((got[0] == 1).all())

