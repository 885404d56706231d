"""The DCGMM stack: input checks, configuration, marginalised estimation, clusters, colour images end to end."""

import copy
import math

import numpy as np
import pytest
import torch

from dcgmm import DCGMM, ModelConfig, TrainConfig, Trainer
from dcgmm.errors import InputError, SpecError

from tolerance import sum_rtol


def test_model_rejects_wrong_images():
    model = DCGMM.from_spec("1L")
    with pytest.raises(InputError, match=r"takes images of shape \(N, 28, 28, 1\)"):
        model.log_likelihoods(torch.rand(2, 28, 27, 1))
    bad = torch.rand(2, 28, 28, 1)
    bad[1, 3, 3, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        model.log_likelihoods(bad)


def test_colour_images_train_sample_score_and_inpaint():
    """32x32x3 images go through everything: training, statistics, sampling with sharpening, in-painting, clusters."""
    from dcgmm import TrainConfig, Trainer
    from dcgmm.inpainting import inpaint
    from dcgmm.outliers import fit_statistics, image_scores
    from dcgmm.sampling import Sharpening, sample

    rng = np.random.default_rng(0)
    base = rng.random((4, 32, 32, 3)).astype(np.float32)
    images = np.clip(base[rng.integers(0, 4, 200)] + 0.05 * rng.standard_normal((200, 32, 32, 3)), 0, 1).astype(np.float32)
    model = DCGMM.from_spec("F(8,8,4,4) G(6) P(2,2) F(3,3,1,1) G(4)", input_shape=(32, 32, 3))
    before = model.log_likelihoods(images[:50])[-1].per_image.mean()
    Trainer(model, TrainConfig(epochs=3, batch_size=20), images).fit(progress=False)
    after = model.log_likelihoods(images[:50])[-1].per_image.mean()
    assert np.isfinite(after) and after > before
    fit_statistics(model, images)
    assert image_scores(model, images[:10]).shape == (10,)
    samples = sample(model, 5, sharpening=Sharpening(steps=5), generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, 32, 32, 3) and torch.isfinite(samples).all()
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:16, 8:16] = True
    result = inpaint(model, images[:3], mask=mask)
    assert result.images.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(result.images[:, ~mask], images[:3][:, ~mask])
    assert model.clusters(images[:7]).shape == (7,)


@pytest.mark.parametrize("options, message", [
    ({"input_shape": "abc"}, "input_shape must be three positive integers"),
    ({"input_shape": (28, 28, 0)}, "input_shape must be three positive integers"),
    ({"input_shape": (28, 28, 1.5)}, "input_shape must be three positive integers"),
    ({"value_range": "xy"}, "value_range must be None or two finite numbers"),
    ({"value_range": (0.0, float("nan"))}, "value_range must be None or two finite numbers"),
    ({"value_range": (1.0, 0.0)}, "min <= max"),
    ({"variance_floor": 0.0}, "variance_floor must be a finite positive number"),
    ({"top_variance_floor": -0.01}, "top_variance_floor must be a finite positive number"),
    ({"mu_init": float("inf")}, "mu_init must be a finite number >= 0"),
])
def test_model_config_validates_every_field(options, message):
    with pytest.raises(SpecError, match=message):
        ModelConfig("2L-c", **options)
    assert ModelConfig("2L-c", input_shape=[28, 28, 1], value_range=[0, 1]).input_shape == (28, 28, 1)  # JSON lists are fine


def test_the_top_gmm_layer_of_a_deep_model_has_its_own_floor():
    model = DCGMM.from_spec("F(8,8,2,2) G(25) F(11,11,1,1) G(36) F(1,1,1,1) G(9) C(10)", variance_floor=0.04, top_variance_floor=0.002)
    floors = [layer.variance_floor for _, layer in model.gmm_layers()]
    assert floors == [0.04, 0.04, 0.002]
    for index, floor in ((1, 0.04), (5, 0.002)):  # variances asked below the floor stop at the layer's own floor
        layer = model.layers[index]
        layer.set_parameters(torch.full((layer.n_components,), 1 / layer.n_components), layer.centroids.detach(),
                             torch.full_like(layer.centroids, 1e-5))
        assert float(layer.variances.detach().min()) == pytest.approx(floor, rel=1e-4)
        assert float(layer.log_precisions.detach().max()) <= -math.log(floor) + 1e-6
    assert [layer.variance_floor for _, layer in DCGMM.from_spec("1L", top_variance_floor=0.002).gmm_layers()] == [0.05]  # one layer: pixels
    same = DCGMM.from_spec("2L-c", variance_floor=0.04, top_variance_floor=None)
    assert [layer.variance_floor for _, layer in same.gmm_layers()] == [0.04, 0.04]  # None: the paper's single floor
    assert ModelConfig("2L-c", top_variance_floor=None).floors == (0.05, 0.05)


def test_estimation_without_missing_pixels_equals_plain_estimation(trained):
    model, train = trained
    # the two paths use different formulas; in float64 their difference is rounding only. Layer 1's log p
    # (2D + 1 = 33 terms of magnitude <= ~110) may differ by sum_rtol(33, float64) * 110 ~ 1e-12, which
    # moves its responsibilities by twice that and layer 3's log p (input terms <= ~20 per dimension, 81
    # dimensions) by ~1e-9: 1e-8 bounds both layers' responsibilities
    double = copy.deepcopy(model).double()
    x = torch.as_tensor(train[:10], dtype=torch.float64)
    plain, _ = double.estimate(x)
    marginal, _ = double.estimate(x, missing=torch.zeros(10, 8, 8, dtype=torch.bool))
    assert sum_rtol(33, np.float64) * 110 * 2 * 20 * 81 < 1e-8
    for a, b in zip(plain, marginal):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)
    x = torch.as_tensor(train[:10])
    everything, _ = model.estimate(x, missing=torch.ones(10, 8, 8, dtype=torch.bool))
    torch.testing.assert_close(everything[1], torch.exp(model.layers[1].log_weights).expand(10, 3, 3, 9))


def test_clusters_are_the_top_layers_most_responsible_component(digits):
    images, _ = digits
    model = DCGMM.from_spec("F(8,8,1,1) G(6)", input_shape=(8, 8, 1))
    Trainer(model, TrainConfig(epochs=1), images[:500]).fit(progress=False)
    x = torch.as_tensor(images[:50])
    gmm = model.layers[1]
    expected = gmm.log_joint(model.layers[0](x)).reshape(50, -1).argmax(1).numpy()
    np.testing.assert_array_equal(model.clusters(images[:50], batch_size=16), expected)
    with pytest.raises(InputError, match="global top GMM"):
        DCGMM.from_spec("F(4,4,4,4) G(3)", input_shape=(8, 8, 1)).clusters(images[:5])
