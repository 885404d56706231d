"""GMM layer G(K) against torch.distributions, autograd and gradcheck; its sampling and annealing kernel."""

import math

import pytest
import torch
from torch import distributions as D

from dcgmm import DCGMM
from dcgmm.layers import GMM
from dcgmm.layers.gmm import TINY_LOG_RATIO, grid_shape, neighbourhood, responsibilities, smoothing_kernel

from tolerance import sum_rtol


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


def test_responsibilities_in_place_equal_the_softmax_with_its_floor():
    """Without autograd the responsibilities are computed in place; with and without, they are the softmax of the
    log joint raised to 35 below each row's largest value."""
    gen = torch.Generator().manual_seed(3)
    log_joint = torch.randn(50, 7, generator=gen, dtype=torch.float64) * 40  # rows span far more than 35 nats
    floored = torch.maximum(log_joint, log_joint.amax(1, keepdim=True) - TINY_LOG_RATIO)
    reference = torch.softmax(floored, dim=1)
    assert (reference.amin(1) < 1e-14).any() and (log_joint - log_joint.amax(1, keepdim=True) < -TINY_LOG_RATIO).any()
    with torch.no_grad():
        fast = responsibilities(log_joint, dim=1)
        given_max = responsibilities(log_joint, dim=1, row_max=log_joint.amax(1, keepdim=True))
    tracked = log_joint.clone().requires_grad_()
    with_grad = responsibilities(tracked, dim=1)
    assert with_grad.requires_grad
    for ours in (fast, given_max, with_grad.detach()):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-300)
    assert fast.amin() >= math.exp(-TINY_LOG_RATIO) / 7 * (1 - 1e-9)  # the floor: nothing tinier than e^-35 / K


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


def test_marginal_log_joint_against_torch_distributions():
    torch.manual_seed(0)
    model = DCGMM.from_spec("F(3,3,1,1) G(4)", input_shape=(3, 3, 2))
    gmm = model.layers[1]
    with torch.no_grad():
        gmm.centroids.normal_()
        gmm.precision_raw.uniform_(0.1, 2.0)
        gmm.weight_logits.normal_()
    x = torch.randn(2, 1, 1, 18)
    known = torch.rand(2, 1, 1, 18) < 0.6
    got = gmm.marginal_log_joint(x, known)
    normal = torch.distributions.Normal(gmm.centroids, torch.exp(-0.5 * gmm.log_precisions))  # [K, D]
    for n in range(2):
        keep = known[n, 0, 0]
        expected = normal.log_prob(x[n, 0, 0]).detach()[:, keep].sum(1) + gmm.log_weights.detach()
        # float32 sums of 3 terms per dimension over 18 dimensions, taken in other orders by the two formulas
        torch.testing.assert_close(got[n, 0, 0].detach(), expected, rtol=sum_rtol(3 * 18), atol=1e-4)
    torch.testing.assert_close(gmm.marginal_log_joint(x, torch.ones_like(known)), gmm.log_joint(x), rtol=sum_rtol(3 * 18), atol=1e-4)
    torch.testing.assert_close(gmm.marginal_log_joint(x, torch.zeros_like(known))[0, 0, 0], gmm.log_weights)


@pytest.mark.filterwarnings("ignore:.*leaves some pixels uncovered")  # the convolution leaves them out too
@pytest.mark.parametrize("window,stride,channels,sigma", [((3, 3), (1, 1), 1, 0.01), ((4, 4), (2, 2), 3, 0.6), ((4, 3), (1, 2), 2, 3.0)])
def test_folded_training_step_equals_folding_then_the_training_step(window, stride, channels, sigma):
    """The convolution path gives the objective, responsibilities and gradients of Folding + training_step."""
    from dcgmm.layers import Folding

    h = torch.rand(5, 9, 8, channels, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    fold = Folding((9, 8, channels), *window, *stride)
    layer = random_gmm(fold.out_shape, 7, seed=3)
    kernel = smoothing_kernel(7, sigma, dtype=torch.float64)
    objective, output, grads = layer.training_step(fold(h), kernel)
    folded_objective, folded_output, folded_grads = layer.folded_training_step(h, fold, kernel)
    assert folded_output.shape == output.shape == (5, *fold.out_shape[:2], 7)
    # float64 sums of a few hundred terms in another order (convolution vs matrix product): ~1e-14 relative
    torch.testing.assert_close(folded_objective, objective, rtol=1e-12, atol=0)
    torch.testing.assert_close(folded_output, output, rtol=1e-12, atol=1e-15)
    for a, b in zip(folded_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
