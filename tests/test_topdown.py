"""The one top-down pass: sharpening against hand-written and autograd gradients, the hooks, the options."""

import pytest
import torch

from dcgmm import DCGMM, InputError, TrainConfig, Trainer
from dcgmm.sampling import sample
from dcgmm.topdown import SamplingOptions, Sharpening, log_likelihood_gradient, mixture_above, sharpen

SMALL = "F(4,4,2,2) G(9) F(3,3,1,1) G(4)"


@pytest.fixture(scope="module")
def small_model(digits):
    images, labels = digits
    model = DCGMM.from_spec(SMALL, input_shape=(8, 8, 1))
    Trainer(model, TrainConfig(epochs=6, batch_size=50, window=10), images).fit(progress=False)
    return model


def test_sharpening_raises_the_upper_layers_log_likelihood(small_model):
    model = small_model
    unsharpened = sample(model, 100, top_s=1, generator=torch.Generator().manual_seed(1))
    sharpened = sharpen(model.layers, unsharpened, 0, Sharpening())  # the paper's 1000 steps of 0.1
    with torch.no_grad():
        before = model.layers[1].log_likelihood(model.layers[0](unsharpened)).mean(dim=(1, 2))  # per image
        after = model.layers[1].log_likelihood(model.layers[0](sharpened)).mean(dim=(1, 2))
    assert after.mean() > before.mean() + 0.05, (before.mean(), after.mean())
    assert (after >= before - 1e-4).float().mean() > 0.9
    assert torch.isfinite(sharpened).all()
    # zero steps change nothing; a layer with no GMM above is left alone
    torch.testing.assert_close(sharpen(model.layers, unsharpened, 0, Sharpening(steps=0)), unsharpened)


def test_sharpening_matches_a_hand_written_gradient_step():
    model = DCGMM.from_spec("F(2,2,1,1) G(3)", input_shape=(2, 2, 1))
    x = torch.rand(4, 2, 2, 1)
    gmm = model.layers[1]
    tau, mu = torch.exp(gmm.log_precisions).detach(), gmm.centroids.detach()
    flat = x.reshape(4, 4)
    resp = torch.softmax(gmm.log_joint(x.reshape(4, 1, 1, 4)).reshape(4, 3).detach(), dim=1)
    grad = (resp[:, :, None] * tau * (mu - flat[:, None, :])).sum(1)  # d log p / dx for a diagonal GMM
    expected = (flat + 0.05 * grad / 4).reshape(4, 2, 2, 1)  # objective: per input dimension (D = 4)
    torch.testing.assert_close(sharpen(model.layers, x, 0, Sharpening(steps=1, rate=0.05)), expected)


def test_log_likelihood_gradient_equals_autograd():
    gmm = DCGMM.from_spec("F(3,2,1,1) G(5)", input_shape=(5, 4, 2)).layers[1].double()
    with torch.no_grad():
        gmm.centroids.normal_()
        gmm.precision_raw.uniform_(-1, 2)
        gmm.weight_logits.normal_()
    h = torch.randn(3, 3, 3, 12, dtype=torch.float64, requires_grad=True)
    objective = gmm.log_likelihood(h).mean(dim=(1, 2)).sum() / 12
    (expected,) = torch.autograd.grad(objective, h)
    with torch.no_grad():
        got = log_likelihood_gradient(gmm, h.detach(), tuple(t.detach() for t in gmm.coefficients()))
    torch.testing.assert_close(got, expected)


def test_mixture_above_skips_only_folding_and_pooling():
    model = DCGMM.from_spec("F(3,3,1,1) G(4) P(2,2) F(2,2,1,1) G(3)", input_shape=(9, 9, 1))
    assert [mixture_above(model.layers, i) for i in range(5)] == [1, 4, 4, 4, None]


def test_options_are_checked():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="top-S must be a positive integer"):
            SamplingOptions(top_s=bad)
    with pytest.raises(InputError, match="noise must be >= 0"):
        SamplingOptions(noise=-0.1)
    with pytest.raises(Exception):  # frozen: one options object is shared by every batch
        SamplingOptions().top_s = 2


def test_fuse_sees_every_layer_below_the_start_and_keep_holds_pixels(small_model):
    model = small_model
    top = model.top_gmm
    seen = []

    def fuse(index, control):
        seen.append((index, tuple(control.shape)))
        return control

    control = torch.exp(model.layers[top].log_weights).expand(5, *model.layers[top].out_shape)
    hold = torch.zeros(5, 8, 8, 1, dtype=torch.bool)
    hold[:, :4] = True
    values = torch.full((5, 8, 8, 1), 0.25)
    options = SamplingOptions(generator=torch.Generator().manual_seed(0))
    images = model.top_down(top, control, options, fuse=fuse, keep=(hold, values))
    assert seen == [(2, (5, 1, 1, 81)), (1, (5, 3, 3, 9)), (0, (5, 3, 3, 16))]
    assert images.shape == (5, 8, 8, 1) and bool((images[:, :4] == 0.25).all())
    plain = model.top_down(top, control, SamplingOptions(generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(images[:, 4:], plain[:, 4:])  # holding pixels changes nothing else (no sharpening)


def test_fuse_replaces_the_signal_a_gmm_layer_draws_from(small_model):
    model = small_model
    top = model.top_gmm
    forced = torch.zeros(3, 3, 3, 9)
    forced[..., 4] = 1.0  # component 4 everywhere

    def fuse(index, control):
        return forced if index == 1 else control

    control = torch.exp(model.layers[top].log_weights).expand(3, *model.layers[top].out_shape)
    images = model.top_down(top, control, SamplingOptions(), fuse=fuse)
    expected = model.layers[0].sample(model.layers[1].centroids[4].expand(3, 3, 3, 16))
    torch.testing.assert_close(images, expected)


def test_the_start_layer_is_unrestricted_unless_asked(small_model):
    model = small_model
    top = model.top_gmm
    weights = torch.zeros(2000, 1, 1, 4)
    weights[..., :] = torch.tensor([0.4, 0.3, 0.2, 0.1])
    draws = []
    layer = model.layers[top]
    original = layer.sample

    def spy(control, top_s=None, noise=0.0, generator=None):
        draws.append(top_s)
        return original(control, top_s=top_s, noise=noise, generator=generator)

    layer.sample = spy
    try:
        model.top_down(top, weights, SamplingOptions(top_s=1))
        model.top_down(top, weights, SamplingOptions(top_s=1, restrict_start=True))
    finally:
        del layer.sample
    assert draws == [None, 1]


