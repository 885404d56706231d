"""Window factors (dcgmm.window_factors): the fill's conditional mean against the textbook Gaussian formulas,
the fit against a direct computation; saving and use by in-painting, for them and the top factors."""

import math
import warnings

import numpy as np
import pytest
import torch

from dcgmm import DCGMM, load_model, save_model, top_factors, window_factors
from dcgmm.errors import CheckpointError
from dcgmm.inpainting import inpaint, occlude
from dcgmm.layers import Folding
from dcgmm.top_factors import NOISE_FLOOR, fit_top_factors
from dcgmm.window_factors import WindowFactors, fit_window_factors, precision_weighted


def random_factors(k=3, dim=6, rank=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(k, dim, generator=g, dtype=torch.float64)
    loadings = 0.5 * torch.randn(k, dim, rank, generator=g, dtype=torch.float64)
    noise = 0.05 + 0.1 * torch.rand(k, generator=g, dtype=torch.float64)
    return WindowFactors(1, means, loadings, noise)


def test_condition_is_the_mixture_of_gaussian_conditionals():
    """p(k | x_o) from each component's marginal Gaussian on the known dimensions (torch.distributions), and the
    conditional mean m_m + C_mo C_oo^-1 (x_o - m_o) and variance diag(C_mm - C_mo C_oo^-1 C_om), with
    C = W W^T + s^2 I — computed directly, row by row; the mixture's mean and variance from them."""
    factors = random_factors()
    k, dim, _ = factors.loadings.shape
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 4, dim, generator=g, dtype=torch.float64)
    known = (torch.rand(2, 3, 4, dim, generator=g) < 0.5).double()
    known[0, 0, 0] = 0  # nothing known: the prior's mixture
    known[0, 0, 1] = 1  # everything known: the window itself
    prior = torch.rand(2, 3, 4, k, generator=g, dtype=torch.float64)
    mean, variance = factors.condition(prior, x, known)
    assert mean.shape == variance.shape == x.shape
    rows = zip(x.reshape(-1, dim), known.reshape(-1, dim).bool(), prior.reshape(-1, k), mean.reshape(-1, dim), variance.reshape(-1, dim))
    for row, o, weights, got_mean, got_variance in rows:
        m = ~o
        log_post, means, variances = [], [], []
        for c in range(k):
            mu, cov = factors.means[c], factors.loadings[c] @ factors.loadings[c].T + factors.noise[c] * torch.eye(dim, dtype=torch.float64)
            full, var = mu.clone(), cov.diagonal().clone()
            log_post.append(math.log(weights[c]))
            if o.any():
                log_post[-1] += torch.distributions.MultivariateNormal(mu[o], cov[o][:, o]).log_prob(row[o]).item()
                full[m] = mu[m] + cov[m][:, o] @ torch.linalg.solve(cov[o][:, o], row[o] - mu[o])
                var[m] = (cov[m][:, m] - cov[m][:, o] @ torch.linalg.solve(cov[o][:, o], cov[o][:, m])).diagonal()
            full[o], var[o] = row[o], 0.0
            means.append(full)
            variances.append(var)
        post = torch.softmax(torch.tensor(log_post, dtype=torch.float64), 0)[:, None]
        expected = (post * torch.stack(means)).sum(0)
        spread = (post * (torch.stack(variances) + torch.stack(means) ** 2)).sum(0) - expected**2
        torch.testing.assert_close(got_mean, expected, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got_variance, spread, rtol=1e-7, atol=1e-9)


def test_precision_weighted_windows_average_into_the_product_of_their_predictions():
    fold = Folding((5, 5, 1), 3, 3, 1, 1)
    g = torch.Generator().manual_seed(2)
    mean = torch.rand(2, 3, 3, 9, generator=g, dtype=torch.float64)
    variance = 0.01 + torch.rand(2, 3, 3, 9, generator=g, dtype=torch.float64)
    variance[0, 0, 0, 4] = 0.0  # a known value: weight 1
    got = fold.sample(precision_weighted(mean, variance, fold))
    means, precisions = torch.zeros(2, 5, 5), torch.zeros(2, 5, 5)
    for n in range(2):
        for i in range(3):
            for j in range(3):
                for d in range(9):
                    weight = 1.0 if variance[n, i, j, d] == 0 else 1 / variance[n, i, j, d]
                    means[n, i + d // 3, j + d % 3] += weight * mean[n, i, j, d]
                    precisions[n, i + d // 3, j + d % 3] += weight
    torch.testing.assert_close(got[..., 0], (means / precisions).double(), rtol=1e-6, atol=1e-6)


def test_fit_is_the_ppca_of_the_responsibility_weighted_windows(digits):
    """Means and covariances from the layer's responsibilities, computed directly; the factors' covariance keeps
    the top eigenvalues and replaces the rest by their mean, floored at the variance floor."""
    images = digits[0][:200]
    model = DCGMM.from_spec("F(3,3,1,1) G(3) F(6,6,1,1) G(2)", input_shape=(8, 8, 1))
    factors = fit_window_factors(model, images, rank=4, batch_size=64)
    assert factors.layer == 1 and factors.loadings.shape == (3, 9, 4) and factors.means.shape == (3, 9)
    with torch.no_grad():
        windows = model.layers[0](torch.as_tensor(images)).reshape(-1, 9).double().numpy()
        shares = model.layers[1](model.layers[0](torch.as_tensor(images))).reshape(-1, 3).double().numpy()
    floor = model.layers[1].variance_floor
    for c in range(3):
        weights = shares[:, c] / shares[:, c].sum()
        mean = weights @ windows
        cov = (windows - mean).T @ ((windows - mean) * weights[:, None])
        values = np.sort(np.linalg.eigvalsh(cov))[::-1]
        noise = max(values[4:].mean(), floor)
        np.testing.assert_allclose(factors.means[c].numpy(), mean, atol=1e-5)
        assert factors.noise[c].item() == pytest.approx(noise, rel=1e-4)
        fitted = (factors.loadings[c] @ factors.loadings[c].T).double().numpy() + noise * np.eye(9)
        fitted_values = np.sort(np.linalg.eigvalsh(fitted))[::-1]
        np.testing.assert_allclose(fitted_values, np.r_[np.maximum(values[:4], noise), np.full(5, noise)], rtol=1e-3, atol=1e-6)
        # and the same directions: the covariance's top eigenvectors span the loadings
        vectors = np.linalg.eigh(cov)[1][:, ::-1][:, :4]
        loadings = factors.loadings[c].double().numpy()
        np.testing.assert_allclose(vectors @ (vectors.T @ loadings), loadings, atol=1e-4)
    assert fit_window_factors(DCGMM.from_spec("F(8,8,1,1) G(3)", input_shape=(8, 8, 1)), images) is None  # no layer below the top


@pytest.mark.parametrize("kind", ["windows", "top_factors"])
def test_factors_are_saved_and_used_by_the_fill(kind, trained, digits, tmp_path):
    """Window factors and top factors (dcgmm.top_factors) alike: saved and reloaded, used by the fill (which
    changes without them and warns), no warning with both."""
    model, train = trained
    factors = getattr(model.statistics, kind)
    assert factors is not None
    if kind == "windows":
        assert factors.layer == 1 and bool((factors.noise >= model.layers[1].variance_floor - 1e-7).all())
    else:
        assert factors.layer == model.top_gmm and bool((factors.noise >= NOISE_FLOOR * (1 - 1e-6)).all())
    save_model(model, tmp_path / "m")
    loaded = getattr(load_model(tmp_path / "m").statistics, kind)
    assert type(loaded) is type(factors)
    for name in ("means", "loadings", "noise"):
        torch.testing.assert_close(getattr(loaded, name), getattr(factors, name))
    images, labels = digits
    clean = images[labels < 5][-100:]
    damaged, masks = occlude(clean, size=(3, 4), fill=0.5, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # statistics with both kinds: no warning
        with_factors = inpaint(model, damaged, mask=masks).images
    assert np.isfinite(with_factors).all() and np.array_equal(with_factors[~masks], damaged[~masks])
    setattr(model.statistics, kind, None)
    try:
        with pytest.warns(UserWarning, match="carry no window or top factors"):
            without = inpaint(model, damaged, mask=masks).images
    finally:
        setattr(model.statistics, kind, factors)
    assert not np.allclose(with_factors, without)


@pytest.mark.parametrize("kind", ["windows", "top_factors"])
def test_a_saved_model_with_broken_factors_is_refused(kind, trained, tmp_path):
    model, _ = trained
    factors = getattr(model.statistics, kind)
    setattr(model.statistics, kind, type(factors)(factors.layer, factors.means, factors.loadings, torch.full_like(factors.noise, float("nan"))))
    try:
        save_model(model, tmp_path / "m")
    finally:
        setattr(model.statistics, kind, factors)
    with pytest.raises(CheckpointError, match="statistics hold NaN or inf; recompute them with `dcgmm stats`"):
        load_model(tmp_path / "m")



@pytest.mark.parametrize("kind, module, limit, fit", [
    ("windows", window_factors, "MAX_ELEMENTS", fit_window_factors),
    ("top_factors", top_factors, "MAX_LOADINGS", fit_top_factors),
])
def test_a_layer_too_large_for_factors_gets_none_and_no_warning(kind, module, limit, fit, trained, digits, monkeypatch):
    model, train = trained
    monkeypatch.setattr(module, limit, 10)
    assert fit(model, train) is None
    monkeypatch.setattr(model.statistics, kind, None)
    damaged, masks = occlude(digits[0][:20], size=(3, 4), fill=0.5, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # statistics as complete as this model allows: no warning
        inpaint(model, damaged, mask=masks)


@pytest.mark.parametrize("fit", [fit_window_factors, fit_top_factors])
def test_rank_zero_fits_no_factors(fit, trained):
    model, train = trained
    assert fit(model, train, rank=0) is None and fit(model, train, rank=1) is not None
