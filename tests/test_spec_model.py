import pytest
import numpy as np
import torch

from dcgmm import DCGMM, PRESETS, ModelConfig
from dcgmm.errors import InputError, SpecError
from dcgmm.spec import build_layers, parse

EXPECTED_TOP = {"1L": (1, 1, 25), "2L-a": (1, 1, 36), "2L-b": (1, 1, 36), "2L-c": (1, 1, 36), "2L-d": (1, 1, 36),
                "2L-e": (1, 1, 36), "3L-a": (1, 1, 49), "3L-b": (1, 1, 25)}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_table_one_preset_builds_and_runs(name):
    model = DCGMM.from_spec(name)
    assert model.layers[-1].out_shape == EXPECTED_TOP[name]
    x = torch.rand(3, 28, 28, 1)
    outputs = model(x)
    assert outputs[-1].shape == (3, *EXPECTED_TOP[name])
    lls = model.log_likelihoods(x)
    assert [ll.per_position.shape[1:] for ll in lls] == [model.layers[ll.layer].out_shape[:2] for ll in lls]
    assert all(torch.isfinite(torch.as_tensor(ll.per_image)).all() for ll in lls)


def test_spec_string_round_trip_and_case():
    spec = "F(8,8,2,2) G(25) F(11,11,1,1) G(36) C(10)"
    model = DCGMM.from_spec(spec)
    assert model.spec == spec
    assert DCGMM.from_spec("2l-c").spec == PRESETS["2L-c"]
    assert [str(s) for s in parse("f(3, 3, 1, 1)  g(4)  p(2,2)")] == ["F(3,3,1,1)", "G(4)", "P(2,2)"]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("F(8,8,2) G(25)", "has 3 argument"),
        ("X(3) G(2)", "unknown layer type"),
        ("F(8,8,2,2) G(25", "cannot read"),
        ("", "unknown architecture"),
        ("F(a,b,1,1) G(2)", "must be integers"),
        ("C(10) G(25)", "must be the last layer"),
        ("F(28,28,1,1)", "no GMM layer"),
        ("F(30,30,1,1) G(2)", "larger than its 28x28 input"),
        ("F(8,8,2,2) G(0)", "must be positive"),
        ("F(8,8,2,2) + G(5)", "cannot read '\\+'"),
        ("2L-z", "unknown architecture"),
    ],
)
def test_malformed_specs_are_rejected_clearly(spec, message):
    with pytest.raises(SpecError, match=message):
        build_layers(spec, (28, 28, 1))


def test_non_square_and_colour_inputs():
    with pytest.warns(UserWarning, match="leaves some pixels uncovered"):
        model = DCGMM(ModelConfig("F(4,3,2,2) G(9) F(5,4,1,1) G(4)", (13, 11, 3)))
    assert [l.out_shape for l in model.layers] == [(5, 5, 36), (5, 5, 9), (1, 2, 180), (1, 2, 4)]
    assert model(torch.rand(2, 13, 11, 3))[-1].shape == (2, 1, 2, 4)


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
    ({"mu_init": float("inf")}, "mu_init must be a finite number >= 0"),
])
def test_model_config_validates_every_field(options, message):
    with pytest.raises(SpecError, match=message):
        ModelConfig("2L-c", **options)
    assert ModelConfig("2L-c", input_shape=[28, 28, 1], value_range=[0, 1]).input_shape == (28, 28, 1)  # JSON lists are fine
