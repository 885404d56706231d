"""In-painting: occlusion, known pixels kept, repairs better than the damage, the conditional mean, bad input."""

import numpy as np
import pytest
import torch

from dcgmm import DCGMM, InputError
from dcgmm.inpainting import inpaint, occlude
from dcgmm.outliers import fit_statistics, image_scores

from tolerance import sum_rtol


def test_occlude_draws_squares_in_the_size_range(digits):
    images, _ = digits
    damaged, masks = occlude(images[:50], size=(3, 5), fill=0.5, seed=0)
    sides = np.sqrt(masks.sum((1, 2)))
    assert np.all((sides >= 3) & (sides <= 5)) and np.all(sides == np.round(sides))
    assert np.array_equal(damaged[~masks], images[:50][~masks]) and np.all(damaged[masks] == 0.5)
    noisy, noise_masks = occlude(images[:50], size=(3, 5), seed=0)
    assert np.array_equal(noise_masks, masks) and noisy[noise_masks].std() > 0.2


def test_inpainting_keeps_known_pixels_and_beats_the_damage(trained, digits):
    model, _ = trained
    images, labels = digits
    clean = images[labels < 5][-100:]
    damaged, masks = occlude(clean, size=(3, 4), fill="noise", seed=1)
    given = inpaint(model, damaged, mask=masks)
    assert np.array_equal(given.masks, masks)
    assert np.array_equal(given.images[~masks], damaged[~masks])  # x1 is clamped
    err = lambda x: ((x - clean) ** 2)[..., 0][masks].mean()
    assert err(given.images) < 0.5 * err(damaged)
    for auto in (inpaint(model, damaged), inpaint(model, damaged, locate="outliers", c=1.0)):
        assert np.array_equal(auto.images[~auto.masks], damaged[~auto.masks])
        assert auto.position_masks[1].shape == (100, 3, 3)
        precision = (auto.masks & masks).sum() / auto.masks.sum()
        assert precision > 1.5 * masks.mean()  # the located pixels are damaged more often than pixels at random
    # nothing is an outlier for a huge c: the image comes back unchanged
    assert np.array_equal(inpaint(model, damaged, locate="outliers", c=1e9).images, damaged)


def test_inpainting_and_scoring_reject_bad_input(trained):
    model, train = trained
    with pytest.raises(InputError, match=r"shape \(N, 8, 8, 1\)"):
        image_scores(model, np.zeros((2, 28, 28, 1), np.float32))
    with pytest.raises(InputError, match="far outside"):
        image_scores(model, train[:4] * 255)
    bad = train[:4].copy()
    bad[1, 2, 3, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        inpaint(model, bad)
    with pytest.raises(InputError, match="no images"):
        image_scores(model, train[:0])
    with pytest.raises(InputError, match="mask must have shape"):
        inpaint(model, train[:4], mask=np.zeros((4, 5, 5), bool))
    single = DCGMM.from_spec("F(8,8,1,1) G(5)", input_shape=(8, 8, 1))
    fit_statistics(single, train[:50])
    with pytest.raises(InputError, match="single GMM layer"):
        inpaint(single, train[:4], locate="outliers")
    assert inpaint(single, train[:4]).images.shape == (4, 8, 8, 1)  # the calibrated search needs no lower layer
    with pytest.raises(InputError, match="locate must be"):
        inpaint(model, train[:4], locate="median")


def test_conditional_mean_of_a_flat_gmm_equals_the_closed_form():
    """One GMM layer over the whole image: E[x_missing | x_known] = sum_k p(k | x_known) mu_k,missing."""
    model = DCGMM.from_spec("F(3,3,1,1) G(4)", input_shape=(3, 3, 1))
    gmm = model.layers[1]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        gmm.centroids.copy_(torch.rand(4, 9, generator=generator))
        gmm.precision_raw.copy_(torch.rand(4, 9, generator=generator) + 0.5)
        gmm.weight_logits.copy_(torch.randn(4, generator=generator))
    images = torch.rand(6, 3, 3, 1, generator=generator)
    mask = np.zeros((6, 3, 3), bool)
    mask[:, 1, 1] = True  # the centre pixel is damaged
    mask[3:, 0, :] = True  # and a whole row of the last three
    result = inpaint(model, images.numpy(), mask=mask, fill="mean")
    centroids = gmm.centroids.detach().double()
    normal = torch.distributions.Normal(centroids, gmm.variances.detach().double().sqrt())  # [K, D], in float64
    # the model computes in float32: log joints of ~50 nats summed over 9 dimensions may be off by
    # sum_rtol(27) * 50 ~ 2e-4; a softmax moves each weight by at most twice that, relative, and the means
    # (of centroids in [0, 1]) by no more
    tolerance = 2 * sum_rtol(27) * 50
    for n in range(6):
        x, known = images[n].reshape(9).double(), ~torch.from_numpy(mask[n].reshape(9))
        log_post = normal.log_prob(x)[:, known].sum(1) + gmm.log_weights.detach().double()
        expected = torch.softmax(log_post, 0) @ centroids  # [D]
        got = torch.from_numpy(result.images[n].reshape(9)).double()
        torch.testing.assert_close(got[~known], expected[~known], rtol=0, atol=tolerance)
        torch.testing.assert_close(got[known], x[known], rtol=0, atol=0)  # known pixels kept


def test_posterior_and_expectation_of_a_gmm_layer():
    gmm = DCGMM.from_spec("F(2,2,1,1) G(3)", input_shape=(2, 2, 1)).layers[1].double()
    with torch.no_grad():
        gmm.centroids.normal_()
    x = torch.rand(5, 1, 1, 4, dtype=torch.float64)
    known = (torch.rand(5, 1, 1, 4) < 0.5).double()
    prior = torch.rand(5, 1, 1, 3, dtype=torch.float64)
    normal = torch.distributions.Normal(gmm.centroids.detach(), gmm.variances.detach().sqrt())
    for n in range(5):
        keep = known[n, 0, 0].bool()
        expected = torch.softmax(torch.log(prior[n, 0, 0]) + normal.log_prob(x[n, 0, 0]).detach()[:, keep].sum(1), 0)
        torch.testing.assert_close(gmm.posterior(prior, x, known)[n, 0, 0].detach(), expected)
    torch.testing.assert_close(gmm.posterior(prior, x, torch.zeros_like(known)).detach(), prior / prior.sum(-1, keepdim=True))
    weights = torch.tensor([[[[1.0, 3.0, 0.0]]]], dtype=torch.float64)
    torch.testing.assert_close(gmm.expected(weights).detach(), (0.25 * gmm.centroids[0] + 0.75 * gmm.centroids[1]).detach()[None, None, None])
    torch.testing.assert_close(gmm.expected(torch.zeros_like(weights)).detach(), gmm.centroids.mean(0).detach()[None, None, None])


def test_mean_fill_keeps_known_pixels_and_needs_no_random_numbers(trained, digits):
    model, _ = trained
    images, labels = digits
    clean = images[labels < 5][-150:]
    damaged, masks = occlude(clean, size=(3, 4), fill=0.5, seed=1)
    first = inpaint(model, damaged, mask=masks, fill="mean", generator=torch.Generator().manual_seed(1))
    second = inpaint(model, damaged, mask=masks, fill="mean", generator=torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(first.images, second.images)  # an expectation: no draw involved
    np.testing.assert_array_equal(first.images[~masks], damaged[~masks])
    filled = first.images[masks]
    assert np.isfinite(filled).all() and filled.min() >= -0.05 and filled.max() <= 1.05  # means of centroids of [0, 1] data
    error = float(((first.images - clean) ** 2)[..., 0][masks].mean())
    assert error < float(((damaged - clean) ** 2)[..., 0][masks].mean())
    with pytest.raises(InputError, match="fill must be 'mean'"):
        inpaint(model, damaged, mask=masks, fill="median")
    with pytest.raises(InputError, match="needs marginalize=True"):
        inpaint(model, damaged, mask=masks, fill="mean", marginalize=False)
