"""In-painting: occlusion, known pixels kept, repairs better than the damage, bad input refused."""


import numpy as np
import pytest

from dcgmm import DCGMM, InputError
from dcgmm.inpainting import inpaint, occlude
from dcgmm.outliers import fit_statistics, image_scores


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
    auto = inpaint(model, damaged, c=1.0)
    assert np.array_equal(auto.images[~auto.masks], damaged[~auto.masks])
    assert auto.position_masks[1].shape == (100, 3, 3)
    precision = (auto.masks & masks).sum() / auto.masks.sum()
    assert precision > 1.5 * masks.mean()  # the located pixels are damaged more often than pixels at random
    # nothing is an outlier for a huge c: the image comes back unchanged
    assert np.array_equal(inpaint(model, damaged, c=1e9).images, damaged)


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
        inpaint(single, train[:4])
