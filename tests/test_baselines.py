"""The plain baselines against loop-by-loop computations."""

import numpy as np
import pytest
import torch

from dcgmm import InputError
from dcgmm.baselines import (flat_gmm, gmm_fill, gmm_scorer, iou, knn_fill, knn_scorer, matched_components, mean_fill, pca_scorer,
                             region_mse, standardised)


@pytest.fixture
def split(digits):
    images, _ = digits
    return images[:300], images[300:340]


def test_knn_score_is_minus_the_mean_distance_to_the_k_nearest(split):
    train, test = split
    scores = knn_scorer(train, k=3, chunk=7)(test)
    for image, score in zip(test, scores):
        distances = np.sort(np.sqrt(((train - image) ** 2).sum((1, 2, 3))))
        assert score == pytest.approx(-distances[:3].mean(), rel=1e-4, abs=1e-4)  # float32 Gram-matrix distances


def test_knn_score_can_leave_out_the_image_itself(split):
    train, _ = split
    scores = knn_scorer(train, k=2)(train[:5], skip_self=True)
    for image, score in zip(train[:5], scores):
        distances = np.sort(np.sqrt(((train - image) ** 2).sum((1, 2, 3))))
        assert distances[0] == pytest.approx(0, abs=1e-3)
        assert score == pytest.approx(-distances[1:3].mean(), rel=1e-4, abs=1e-3)


def test_pca_score_is_minus_the_reconstruction_error_outside_the_subspace(split):
    train, test = split
    flat = train.reshape(len(train), -1).astype(np.float64)
    mean = flat.mean(0)
    _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
    basis = vt[:10]
    x = test.reshape(len(test), -1) - mean
    expected = -((x - x @ basis.T @ basis) ** 2).sum(1)
    np.testing.assert_allclose(pca_scorer(train, components=10)(test), expected, rtol=1e-3, atol=1e-3)


def test_standardised_scores_have_mean_0_and_deviation_1_on_the_sample(split):
    train, test = split
    score = standardised(knn_scorer(train), train[:100], skip_self=True)
    values = knn_scorer(train)(train[:100], skip_self=True)
    np.testing.assert_allclose(score(test), (knn_scorer(train)(test) - values.mean()) / values.std(), rtol=1e-5)


def test_flat_gmm_and_matched_components(split):
    train, _ = split
    gmm = flat_gmm(train, 3, seed=0, max_iter=20)
    assert gmm.means_.shape == (3, 64) and gmm.covariances_.min() >= 0.05
    np.testing.assert_array_equal(gmm_scorer(gmm)(train[:5]), gmm.score_samples(train[:5].reshape(5, -1).astype(np.float64)))
    assert matched_components(3 * (2 * 64 + 1), 64) == 3 and matched_components(10, 784) == 1
    with pytest.raises(InputError, match="1 <= K <= 300"):
        flat_gmm(train, 301)


def test_knn_fill_pastes_the_mean_of_the_nearest_on_the_known_pixels(split):
    train, test = split
    train = train + np.random.default_rng(0).uniform(0, 0.01, train.shape).astype(np.float32)  # no tied distances
    masks = np.zeros(test.shape[:3], dtype=bool)
    masks[:, 2:5, 3:7] = True
    damaged = np.where(masks[..., None], 0.5, test).astype(np.float32)
    filled = knn_fill(train, damaged, masks, k=4, chunk=9)
    for image, mask, result in zip(damaged, masks, filled):
        distances = (((train - image) ** 2)[:, ~mask]).sum((1, 2))
        expected = train[np.argsort(distances)[:4]].mean(0)
        np.testing.assert_allclose(result[mask], expected[mask], atol=1e-6)
        np.testing.assert_array_equal(result[~mask], image[~mask])
    with pytest.raises(InputError, match="masks must have shape"):
        knn_fill(train, damaged, masks[:, :4])
    with pytest.raises(InputError, match="k must lie in 1..3 for 3 training images; got 4"):
        knn_fill(train[:3], damaged, masks, k=4)


def test_mean_fill_pastes_the_mean_training_image(split):
    train, test = split
    masks = np.zeros(test.shape[:3], dtype=bool)
    masks[:, 4:, :2] = True
    damaged = np.where(masks[..., None], 1.0, test).astype(np.float32)
    filled = mean_fill(train, damaged, masks)
    expected = sum(image.astype(np.float64) for image in train) / len(train)
    for image, mask, result in zip(damaged, masks, filled):
        np.testing.assert_allclose(result[mask], expected[mask], atol=1e-6)
        np.testing.assert_array_equal(result[~mask], image[~mask])
    with pytest.raises(InputError, match="masks must have shape"):
        mean_fill(train, damaged, masks[:3])


def test_gmm_fill_is_the_conditional_mean_given_the_known_pixels(split):
    train, test = split
    gmm = flat_gmm(train, 4, seed=0, max_iter=10)
    masks = np.zeros(test.shape[:3], dtype=bool)
    masks[:, 1:6, 2:5] = True
    masks[0] = False  # nothing damaged: the image comes back as it is
    damaged = np.where(masks[..., None], 0.5, test).astype(np.float32)
    filled = gmm_fill(gmm, damaged, masks, chunk=7)
    np.testing.assert_array_equal(filled[0], damaged[0])
    for image, mask, result in zip(damaged[1:], masks[1:], filled[1:]):
        known = ~mask.reshape(-1)
        x = torch.as_tensor(image.reshape(-1)[known], dtype=torch.float64)
        log_joint = torch.stack([
            np.log(w) + torch.distributions.Normal(torch.as_tensor(m[known]), torch.as_tensor(np.sqrt(v[known]))).log_prob(x).sum()
            for w, m, v in zip(gmm.weights_, gmm.means_, gmm.covariances_)
        ])
        expected = (torch.softmax(log_joint, 0).numpy() @ gmm.means_).reshape(image.shape)
        np.testing.assert_allclose(result[mask], expected[mask], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(result[~mask], image[~mask])
    with pytest.raises(InputError, match="masks must have shape"):
        gmm_fill(gmm, damaged, masks[:, :4])
    with pytest.raises(InputError, match="diagonal GMM fitted on 16 pixels"):
        gmm_fill(gmm, damaged[:, :4, :4], masks[:, :4, :4])


def test_iou_and_region_mse():
    a = np.zeros((2, 4, 4), dtype=bool)
    b = np.zeros((2, 4, 4), dtype=bool)
    a[0, :2, :2], b[0, :2, :] = True, True  # 4 of 8
    a[1, 0, 0] = True  # no overlap
    assert iou(a, b) == pytest.approx((0.5 + 0.0) / 2)
    images, clean = np.ones((2, 4, 4, 1)), np.zeros((2, 4, 4, 1))
    images[0, 0, 0] = 3.0
    assert region_mse(images, clean, a) == pytest.approx((9 + 1 + 1 + 1 + 1) / 5)
