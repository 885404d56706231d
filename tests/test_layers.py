import numpy as np
"""Reference tests of the four layers against independent computations (torch.distributions, F.unfold, ...)."""

import itertools
import math

import pytest
import torch
from torch import distributions as D
from torch.nn import functional as F

from dcgmm.errors import InputError, SpecError
from dcgmm.layers import GMM, Classifier, Folding, Pooling
from dcgmm.layers.gmm import grid_shape, neighbourhood, smoothing_kernel


def random_gmm(in_shape, k, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    layer = GMM(in_shape, k).to(dtype)
    with torch.no_grad():
        layer.weight_logits.copy_(torch.randn(k, generator=gen, dtype=dtype))
        layer.centroids.copy_(torch.rand(k, in_shape[2], generator=gen, dtype=dtype))
        layer.precision_raw.copy_(torch.randn(k, in_shape[2], generator=gen, dtype=dtype) * 2)
    return layer


def reference_mixture(layer: GMM) -> D.MixtureSameFamily:
    components = D.Independent(D.Normal(layer.centroids, layer.variances.sqrt()), 1)
    return D.MixtureSameFamily(D.Categorical(logits=layer.weight_logits), components)


# ---------------------------------------------------------------------------------------------- GMM
def test_gmm_log_likelihood_equals_mixture_same_family():
    layer = random_gmm((5, 3, 6), 7)
    x = torch.rand(4, 5, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = layer.log_likelihood(x)
    assert ours.shape == (4, 5, 3)
    reference = reference_mixture(layer).log_prob(x.reshape(-1, 6)).reshape(4, 5, 3)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


def test_gmm_responsibilities_are_posteriors():
    layer = random_gmm((3, 4, 5), 6)
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    resp = layer(x)
    assert resp.shape == (2, 3, 4, 6)
    mix = reference_mixture(layer)
    joint = mix.component_distribution.log_prob(x.reshape(-1, 1, 5)) + mix.mixture_distribution.logits.log_softmax(-1)
    torch.testing.assert_close(resp.reshape(-1, 6), torch.softmax(joint, -1))
    torch.testing.assert_close(resp.sum(-1), torch.ones(2, 3, 4, dtype=torch.float64))


def test_gmm_parameters_stay_valid_for_any_raw_value():
    layer = GMM((1, 1, 4), 3, variance_floor=0.05)
    with torch.no_grad():
        layer.precision_raw.copy_(torch.tensor([[-1e6, 0.0, 1e6, 50.0]] * 3))
        layer.weight_logits.copy_(torch.tensor([1e4, -1e4, 0.0]))
    log_tau = layer.log_precisions
    assert torch.isfinite(log_tau).all() and (log_tau <= math.log(1 / 0.05)).all()
    assert not torch.isnan(layer.variances).any() and (layer.variances >= 0.05 * (1 - 1e-6)).all()
    assert torch.isfinite(layer.log_weights).all()
    assert torch.isfinite(layer.log_likelihood(torch.rand(2, 1, 1, 4))).all()


def test_set_parameters_round_trip():
    layer = GMM((1, 1, 3), 2, variance_floor=0.05).double()
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    mu = torch.rand(2, 3, dtype=torch.float64)
    var = torch.tensor([[0.1, 0.5, 2.0], [0.06, 1.0, 0.3]], dtype=torch.float64)
    layer.set_parameters(w, mu, var)
    torch.testing.assert_close(torch.exp(layer.log_weights), w)
    torch.testing.assert_close(layer.variances, var)


@pytest.mark.parametrize("sigma", [0.01, 0.6, 3.0])
def test_training_step_matches_autograd_reference(sigma):
    """The closed-form SGD step has the value and parameter gradients of the plain differentiable loss."""
    layer = random_gmm((3, 5, 4), 9, seed=2)
    x = torch.rand(6, 3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    loss_ref = layer.loss(x, sigma)
    grads_ref = torch.autograd.grad(loss_ref, [layer.weight_logits, layer.centroids, layer.precision_raw])
    kernel = smoothing_kernel(9, sigma, dtype=torch.float64)
    assert (kernel is None) == (sigma == 0.01)
    objective, output, grads = layer.training_step(x, kernel)
    assert float(objective) == pytest.approx(-loss_ref.item(), rel=1e-12)
    torch.testing.assert_close(output, layer(x).detach())
    for a, b in zip(grads_ref, grads):
        torch.testing.assert_close(a, b)


class _Loss(torch.nn.Module):
    """GMM.loss as a module, so torch.func can substitute its parameters."""

    def __init__(self, layer, sigma):
        super().__init__()
        self.layer, self.sigma = layer, sigma

    def forward(self, x):
        return self.layer.loss(x, self.sigma)


@pytest.mark.parametrize("sigma", [None, 0.8])
def test_gmm_loss_gradcheck(sigma):
    layer = random_gmm((2, 3, 3), 4, seed=5)
    x = torch.rand(2, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    names = [f"layer.{n}" for n, _ in layer.named_parameters()]
    module = _Loss(layer, sigma)

    def loss(*params):
        return torch.func.functional_call(module, dict(zip(names, params)), (x,))

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in layer.parameters())
    assert torch.autograd.gradcheck(loss, inputs)


def test_neighbourhood_kernel():
    g = neighbourhood(25, 1.0, dtype=torch.float64)
    assert g.shape == (25, 25)
    torch.testing.assert_close(g.sum(1), torch.ones(25, dtype=torch.float64))
    torch.testing.assert_close(g, g.t())  # toroidal grid: distances are symmetric
    assert torch.equal(neighbourhood(25, 0.01), torch.eye(25))
    assert float(g[0, 1] / g[0, 0]) == pytest.approx(math.exp(-0.5))  # grid neighbour at distance 1
    assert g[0, 4] == g[0, 1]  # wraps around the torus
    assert grid_shape(36) == (6, 6) and grid_shape(10) == (2, 5) and grid_shape(7) == (1, 7)


def test_gmm_sample_with_top_one_returns_the_best_centroid():
    layer = random_gmm((2, 3, 4), 5, dtype=torch.float32)
    control = torch.rand(3, 2, 3, 5)
    out = layer.sample(control, top_s=1)
    torch.testing.assert_close(out, layer.centroids.detach()[control.argmax(-1)])


def test_gmm_sample_never_leaves_the_top_s():
    layer = GMM((1, 1, 5), 8)
    with torch.no_grad():
        layer.centroids.copy_(torch.arange(8.0)[:, None].expand(8, 5))
    control = torch.rand(400, 1, 1, 8, generator=torch.Generator().manual_seed(0))
    out = layer.sample(control, top_s=3, generator=torch.Generator().manual_seed(1))
    chosen = out[:, 0, 0, 0].long()
    top3 = control[:, 0, 0].topk(3, dim=-1).indices
    assert (chosen[:, None] == top3).any(1).all()


# ---------------------------------------------------------------------------------------------- Folding
@pytest.mark.parametrize("shape,window", [((9, 7, 2), (3, 2, 2, 1)), ((10, 8, 3), (4, 4, 2, 2)), ((5, 6, 1), (5, 6, 1, 1))])
def test_folding_equals_unfold(shape, window):
    fy, fx, sy, sx = window
    layer = Folding(shape, *window)
    x = torch.randn(3, *shape)
    ours = layer(x)
    h, w, c = shape
    ho, wo, co = layer.out_shape
    assert ours.shape == (3, ho, wo, co) and co == fy * fx * c
    ref = F.unfold(x.permute(0, 3, 1, 2), (fy, fx), stride=(sy, sx))  # [N, C*fy*fx, L], channel order (c, i, j)
    ref = ref.reshape(3, c, fy, fx, ho, wo).permute(0, 4, 5, 2, 3, 1).reshape(3, ho, wo, co)  # ours: (i, j, c)
    torch.testing.assert_close(ours, ref)


def naive_scatter_mean(control, in_shape, fy, fx, sy, sx):
    h, w, c = in_shape
    n, ho, wo, _ = control.shape
    total = torch.zeros(n, h, w, c, dtype=control.dtype)
    count = torch.zeros(h, w, dtype=control.dtype)
    patches = control.reshape(n, ho, wo, fy, fx, c)
    for a, b, i, j in itertools.product(range(ho), range(wo), range(fy), range(fx)):
        total[:, a * sy + i, b * sx + j] += patches[:, a, b, i, j]
        count[a * sy + i, b * sx + j] += 1
    return total / count.clamp(min=1)[None, :, :, None]


def test_folding_sampling_averages_overlaps_exactly():
    layer = Folding((9, 7, 2), 3, 3, 2, 1)
    control = torch.randn(2, *layer.out_shape, dtype=torch.float64)
    torch.testing.assert_close(layer.sample(control), naive_scatter_mean(control, (9, 7, 2), 3, 3, 2, 1))


@pytest.mark.parametrize("shape,window", [((9, 7, 2), (3, 2, 2, 1)), ((8, 6, 3), (4, 3, 4, 3)), ((5, 6, 2), (5, 6, 1, 1))])
def test_folding_adjoint_equals_autograd(shape, window):
    layer = Folding(shape, *window)
    x = torch.randn(2, *shape, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, *layer.out_shape, dtype=torch.float64)
    (expected,) = torch.autograd.grad((layer(x) * upstream).sum(), x)
    torch.testing.assert_close(layer.adjoint(upstream), expected)


def test_folding_inverse_is_identity_for_non_overlapping_windows():
    layer = Folding((8, 6, 3), 4, 3, 4, 3)
    x = torch.arange(2 * 8 * 6 * 3, dtype=torch.float32).reshape(2, 8, 6, 3)
    torch.testing.assert_close(layer.sample(layer(x)), x)


def test_folding_rejects_large_windows_and_warns_on_gaps():
    with pytest.raises(SpecError, match="larger than"):
        Folding((5, 5, 1), 6, 2, 1, 1)
    with pytest.warns(UserWarning, match="uncovered"):
        Folding((10, 10, 1), 3, 3, 4, 4)


def test_folding_gradcheck():
    layer = Folding((5, 4, 2), 2, 3, 1, 1)
    x = torch.randn(2, 5, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


# ---------------------------------------------------------------------------------------------- Pooling
@pytest.mark.parametrize("shape,args", [((9, 7, 3), (2, 2)), ((10, 9, 2), (3, 2, 2, 1)), ((6, 6, 1), (3, 3))])
def test_pooling_equals_max_pool2d(shape, args):
    layer = Pooling(shape, *args)
    x = torch.randn(2, *shape)
    ky, kx = args[:2]
    stride = args[2:] if len(args) == 4 else (ky, kx)
    ref = F.max_pool2d(x.permute(0, 3, 1, 2), (ky, kx), stride).permute(0, 2, 3, 1)
    torch.testing.assert_close(layer(x), ref)
    assert layer(x).shape[1:] == layer.out_shape


def test_pooling_sampling_is_nearest_neighbour():
    layer = Pooling((6, 4, 2), 2, 2)
    control = torch.randn(3, 3, 2, 2)
    torch.testing.assert_close(layer.sample(control), control.repeat_interleave(2, 1).repeat_interleave(2, 2))
    overlapping = Pooling((7, 5, 1), 3, 3, 2, 2)
    c = torch.randn(2, *overlapping.out_shape, dtype=torch.float64)
    spread = c[:, :, :, None, :].expand(-1, -1, -1, 9, -1).reshape(2, *overlapping.out_shape[:2], 9)
    torch.testing.assert_close(overlapping.sample(c), naive_scatter_mean(spread, (7, 5, 1), 3, 3, 2, 2))


# ---------------------------------------------------------------------------------------------- Classifier
def test_classifier_equals_linear():
    layer = Classifier((3, 2, 4), 5)
    with torch.no_grad():
        layer.linear.weight.normal_()
        layer.linear.bias.normal_()
    x = torch.randn(6, 3, 2, 4)
    linear = torch.nn.Linear(24, 5)
    linear.load_state_dict(layer.linear.state_dict())
    torch.testing.assert_close(layer(x)[:, 0, 0], linear(x.reshape(6, -1)))
    labels = torch.randint(0, 5, (6,))
    torch.testing.assert_close(layer.loss(x, labels), F.cross_entropy(linear(x.reshape(6, -1)), labels))
    with pytest.raises(InputError, match="labels"):
        layer.loss(x, torch.full((6,), 7))


def test_classifier_sampling_gives_valid_control():
    layer = Classifier((3, 2, 4), 5)
    with torch.no_grad():
        layer.linear.weight.normal_()
    codes = F.one_hot(torch.arange(5), 5).float()[:, None, None, :]
    control = layer.sample(codes)
    assert control.shape == (5, 3, 2, 4)
    assert (control >= 0).all()
    torch.testing.assert_close(control.sum(-1), torch.ones(5, 3, 2))
    # reference: logits of the 0.99-confident class distribution, minus the bias, through W^T, softmax per position
    w, b = layer.linear.weight.detach().numpy(), layer.linear.bias.detach().numpy()
    control = control.detach()
    for c in range(5):
        target = np.full(5, 0.01 / 5)
        target[c] += 0.99
        signal = ((np.log(target) - b) @ w).reshape(3, 2, 4)
        expected = np.exp(signal - signal.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        np.testing.assert_allclose(control[c].numpy(), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="positive entry"):
        layer.sample(torch.zeros(1, 1, 1, 5))


def test_layers_reject_wrong_input_shape():
    with pytest.raises(InputError, match=r"expects input of shape \(N, 6, 5, 1\)"):
        Folding((6, 5, 1), 2, 2, 1, 1)(torch.zeros(2, 5, 6, 1))
