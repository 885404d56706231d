"""GMM layer G(K) (paper Sec. III-A3, Eqs. 4-5; SGD training after Gepperth & Pfülb, ref. [7]).

A diagonal-covariance Gaussian mixture whose parameters are shared by all positions of its input
(convolutional). Everything is computed in log space, and the Gaussian terms with matrix products::

    sum_d tau_kd (x_d - mu_kd)^2 = x^2 . tau_k - 2 x . (tau_k mu_k) + sum_d tau_kd mu_kd^2

so no ``(N, H, W, K, D)`` tensor is ever built.

Parameterisation (always valid, never clipped after a step):

* weights ``pi = softmax(weight_logits)``;
* precisions ``tau = 1 / sigma^2`` through ``log tau = log tau_max - softplus(precision_raw)``, so
  ``0 < tau < tau_max = 1 / variance_floor`` whatever value SGD gives ``precision_raw``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

from .. import native
from ..errors import SpecError
from .base import Layer, Shape


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def grid_shape(n_components: int) -> tuple[int, int]:
    """Rows and columns of the toroidal grid the K components sit on: the most square factorisation of K."""
    rows = max(r for r in range(1, int(math.isqrt(n_components)) + 1) if n_components % r == 0)
    return rows, n_components // rows


@functools.lru_cache(maxsize=64)
def neighbourhood(n_components: int, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """Smoothing kernel ``g`` of the annealed max-component loss, shape (K, K), rows summing to 1.

    ``g[k, j] ∝ exp(-d(k, j)^2 / (2 sigma^2))`` with ``d`` the distance of components ``k`` and ``j`` on a
    toroidal grid (:func:`grid_shape`). For small sigma, ``g`` is the identity.
    """
    rows, cols = grid_shape(n_components)
    index = torch.arange(n_components, device=device)
    r, c = index // cols, index % cols
    dr = (r[:, None] - r[None, :]).abs()
    dc = (c[:, None] - c[None, :]).abs()
    dr = torch.minimum(dr, rows - dr).to(dtype)
    dc = torch.minimum(dc, cols - dc).to(dtype)
    logits = -(dr**2 + dc**2) / (2.0 * sigma**2)
    return torch.softmax(logits, dim=1)


TINY_LOG_RATIO = 35.0
"""Log-responsibilities more than 35 below the largest at a position are raised to that floor."""
TINY_COEFFICIENT = 1e-20
"""Coefficients ``tau * mu`` below this in magnitude are treated as exactly 0 (centroid entries below ~5e-22)."""


def responsibilities(log_joint: torch.Tensor, dim: int = -1, row_max: torch.Tensor | None = None) -> torch.Tensor:
    """softmax over ``dim``, with no responsibility below ~exp(-35) / K of the largest.

    Arithmetic on subnormal floats (below 1e-38) runs 10-100x slower on CPUs, and ``torch.set_flush_denormal``
    does not reach PyTorch's worker threads. Far-away components would get such responsibilities, or products
    of tiny responsibilities with tiny coefficients would. Raising log-values to 35 below the largest keeps
    every responsibility and, with :data:`TINY_COEFFICIENT`, every product in normal range; responsibilities
    of ~1e-16 instead of smaller change nothing that matters.

    ``row_max``: the maximum of ``log_joint`` over ``dim`` (keepdim), if already known.

    Without autograd it is computed in place, ``exp(max(log_joint - row_max, -35))`` normalised: one new tensor of
    the input's size instead of two, and the maximum ``torch.softmax`` would find again is reused (0.84-0.88 of
    the time on (67 600, 25), (12 100, 25) and (10 000, 25), paired timings; docs/benchmarks.md).
    """
    if row_max is None:  # max, not amax: on real log joints (3L-a's first layer) 0.61 of amax's time, paired
        row_max = log_joint.detach().max(dim=dim, keepdim=True).values
    if torch.is_grad_enabled() and log_joint.requires_grad:
        return torch.softmax(torch.maximum(log_joint, row_max - TINY_LOG_RATIO), dim=dim)
    shares = torch.sub(log_joint, row_max).clamp_(min=-TINY_LOG_RATIO).exp_()
    return shares.div_(shares.sum(dim, keepdim=True))


class GMM(Layer):
    """K diagonal Gaussians shared over all positions; output: responsibilities ``(N, H, W, K)``.

    Parameters
    ----------
    in_shape : (H, W, D) of the input.
    n_components : K.
    variance_floor : smallest variance a component can reach (default 0.05, i.e. sigma >= 0.224; the
        authors' ``sigmaUpperBound`` 20 on the precision).
    mu_init : centroids start uniform in ``[-mu_init, mu_init]`` (paper: 0.01).
    """

    letter = "G"
    has_loss = True
    is_mixture = True

    def __init__(self, in_shape: Shape, n_components: int, variance_floor: float = 0.05, mu_init: float = 0.01):
        self.n_components = int(n_components)
        if self.n_components < 1:
            raise SpecError(f"G({n_components}): a GMM layer needs at least one component")
        if not variance_floor > 0:
            raise SpecError(f"variance_floor must be positive; got {variance_floor}")
        super().__init__(in_shape)
        self.variance_floor = float(variance_floor)
        self.mu_init = float(mu_init)
        k, d = self.n_components, self.in_shape[2]
        self.weight_logits = nn.Parameter(torch.zeros(k))
        self.centroids = nn.Parameter(torch.empty(k, d))
        self.precision_raw = nn.Parameter(torch.empty(k, d))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Paper init: pi = 1/K, mu ~ U[-mu_init, mu_init], unit variances."""
        with torch.no_grad():
            self.weight_logits.zero_()
            self.centroids.copy_((torch.rand(self.centroids.shape, generator=generator) * 2 - 1) * self.mu_init)
            self.precision_raw.fill_(_inverse_softplus(self.log_precision_max))

    def output_shape(self, in_shape: Shape) -> Shape:
        return (in_shape[0], in_shape[1], self.n_components)

    def spec(self) -> str:
        return f"G({self.n_components})"

    # ------------------------------------------------------------------------------------------ parameters
    @property
    def log_precision_max(self) -> float:
        return -math.log(self.variance_floor)

    @property
    def log_weights(self) -> torch.Tensor:
        """log pi, shape (K,)."""
        return F.log_softmax(self.weight_logits, dim=0)

    @property
    def log_precisions(self) -> torch.Tensor:
        """log tau = -log sigma^2, shape (K, D); always below log(1 / variance_floor)."""
        return self.log_precision_max - F.softplus(self.precision_raw)

    @property
    def variances(self) -> torch.Tensor:
        """sigma^2, shape (K, D); always above ``variance_floor``."""
        return torch.exp(-self.log_precisions)

    def set_parameters(self, weights: torch.Tensor, centroids: torch.Tensor, variances: torch.Tensor) -> None:
        """Set pi (K,), mu (K, D) and sigma^2 (K, D); variances are raised to just above the floor if needed."""
        with torch.no_grad():
            self.weight_logits.copy_(torch.log(weights.clamp(min=1e-30)))
            self.centroids.copy_(centroids)
            log_tau = -torch.log(variances.clamp(min=self.variance_floor * (1 + 1e-6)))
            gap = (self.log_precision_max - log_tau).clamp(min=1e-6)
            self.precision_raw.copy_(gap + torch.log(-torch.expm1(-gap)))  # inverse softplus

    # ------------------------------------------------------------------------------------------ estimation
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, D)`` -> ``(N*H*W, D)``, one row per position."""
        self.check_input(x)
        return x.reshape(-1, self.in_shape[2])

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``log(pi_k N_k(x)) = x^2 . a_k + x . b_k + c_k``: returns a, b (K, D) and c (K,).

        Entries of ``b = tau * mu`` below :data:`TINY_COEFFICIENT` count as 0: centroid entries on dimensions
        the data never use decay geometrically under SGD and would otherwise end as subnormal floats that
        slow every product they enter; their gradient stops at that point instead.
        """
        tau, b, c = self._terms()
        return -0.5 * tau, b, c

    def _terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tau (K, D), b (K, D) and c (K,) of :meth:`coefficients` (whose ``a`` is ``-tau / 2``)."""
        return _gaussian_terms(self.weight_logits, self.centroids, self.precision_raw, self.variance_floor)

    @staticmethod
    def _log_joint_flat(flat: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``(P, D)`` -> ``(P, K)``: two matrix products, no ``(P, K, D)`` tensor."""
        return torch.addmm(c, flat * flat, a.t()).addmm_(flat, b.t())

    def log_joint(self, x: torch.Tensor, coefficients: tuple | None = None) -> torch.Tensor:
        """log(pi_k N_k(x)) at every position: ``(N, H, W, D)`` -> ``(N, H, W, K)``.

        ``coefficients``: the result of :meth:`coefficients`, to reuse when the parameters do not change.
        """
        coefficients = self.coefficients() if coefficients is None else coefficients
        return self._log_joint_flat(self._flat(x), *coefficients).reshape(*x.shape[:3], self.n_components)

    def marginal_log_joint(self, x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """log(pi_k N_k(x_o)) over the known input dimensions o only (missing ones marginalised out).

        With diagonal covariances, marginalising a dimension drops its factor from N_k, so this is the log
        joint summed over the known dimensions; a position with no known dimension gets log pi_k.
        ``x``, ``known`` (bool or 0/1): (N, H, W, D) -> (N, H, W, K).
        """
        flat = self._flat(x)
        mask = known.reshape(flat.shape).to(flat.dtype)
        log_tau = self.log_precisions  # [K, D]
        tau, mu = torch.exp(log_tau), self.centroids
        per_dim = 0.5 * (log_tau - math.log(2 * math.pi) - tau * mu * mu)  # [K, D]
        observed = mask * flat
        out = (observed * flat) @ (-0.5 * tau).t() + observed @ (tau * mu).t() + mask @ per_dim.t() + self.log_weights
        return out.reshape(*x.shape[:3], self.n_components)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Responsibilities softmax_k(log pi_k + log N_k(x)) (Eq. 4): ``(N, H, W, D)`` -> ``(N, H, W, K)``."""
        return responsibilities(self.log_joint(x))

    def estimate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Responsibilities ``(N, H, W, K)`` and the exact log p(x) per position ``(N, H, W)``, from one log joint."""
        log_joint = self.log_joint(x)
        return responsibilities(log_joint), torch.logsumexp(log_joint, dim=-1)

    def estimate_known(self, x: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Responsibilities p(z | x_o) from the known dimensions o (:meth:`marginal_log_joint`); a position
        with no known dimension counts as unknown in the layer above. ``(N, H, W, D)`` -> ``(N, H, W, K)`` twice."""
        output = responsibilities(self.marginal_log_joint(x, known))
        return output, known.amax(-1, keepdim=True).expand(output.shape)

    def log_likelihood(self, x: torch.Tensor, coefficients: tuple | None = None) -> torch.Tensor:
        """Exact log p(x) = logsumexp_k log(pi_k N_k(x)) per position: ``(N, H, W, D)`` -> ``(N, H, W)``."""
        return torch.logsumexp(self.log_joint(x, coefficients), dim=-1)

    def loss(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        """Negative training objective of input ``x`` ``(N, H, W, D)``; see :meth:`loss_from_log_joint`."""
        return self.loss_from_log_joint(self.log_joint(x), sigma)

    def loss_from_log_joint(self, log_joint: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        """Negative training objective from ``log_joint`` ``(N, H, W, K)``, averaged over positions and batch (Eq. 5).

        With ``sigma`` (the annealing radius), the max-component approximation with annealed smoothing of
        ref. [7]: ``-max_k sum_j g_kj log(pi_j N_j(x))``. With ``sigma=None``, the exact negative
        log-likelihood ``-logsumexp_k log(pi_k N_k(x))``.
        """
        if sigma is None:
            return -torch.logsumexp(log_joint, dim=-1).mean()
        g = smoothing_kernel(self.n_components, sigma, device=log_joint.device, dtype=log_joint.dtype)
        smoothed = log_joint if g is None else log_joint @ g.t()  # [N, H, W, K]
        best = smoothed.detach().argmax(dim=-1, keepdim=True)
        return -smoothed.gather(-1, best).mean()

    def training_step(self, x: torch.Tensor, kernel: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """Objective, output and parameter gradients of one SGD step on ``x`` ``(N, H, W, D)``, without autograd.

        ``kernel``: the smoothing kernel of the annealing radius sigma, :func:`smoothing_kernel`
        (``None`` once it is the identity). See :func:`max_component_step`; the gradients are those of
        ``loss(x, sigma)`` with respect to ``(weight_logits, centroids, precision_raw)``, and the output is
        ``forward(x)``, shape ``(N, H, W, K)``.
        """
        objective, output, grads = max_component_step(
            self._flat(x), self.weight_logits.detach(), self.centroids.detach(), self.precision_raw.detach(), kernel, self.variance_floor
        )
        return objective, output.reshape(*x.shape[:3], self.n_components), grads

    def folded_training_step(self, h: torch.Tensor, fold, kernel: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """:meth:`training_step` on ``fold(h)`` without unfolding ``h`` (N, H, W, C): the Folding layer ``fold``
        below this layer and this layer as one convolution (:func:`folded_max_component_step`). Output (N, H', W', K)."""
        if fold.out_shape != self.in_shape:
            raise ValueError(f"{fold.spec()} gives {fold.out_shape}, not this layer's input {self.in_shape}")
        return folded_max_component_step(
            h, fold.kernel, fold.stride, self.weight_logits.detach(), self.centroids.detach(), self.precision_raw.detach(),
            kernel, self.variance_floor,
        )

    # ------------------------------------------------------------------------------------------ sampling
    def sample(
        self,
        control: torch.Tensor,
        top_s: int | None = None,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw a component per position and emit its centroid (plus ``noise`` x sigma x N(0, 1)).

        Parameters
        ----------
        control : tensor, shape (N, H, W, K) — non-negative selection weights (pi at the top of a stack,
            the signal from the layer above otherwise).
        top_s : restrict the choice at each position to the ``top_s`` largest control values.

        Returns
        -------
        tensor, shape (N, H, W, D).
        """
        weights = control.reshape(-1, self.n_components).clamp(min=0)
        if top_s is not None and top_s < self.n_components:
            kept = torch.zeros_like(weights, dtype=torch.bool).scatter_(1, weights.topk(top_s, dim=1).indices, True)
            weights = weights * kept
        empty = weights.sum(1, keepdim=True) <= 0
        weights = torch.where(empty, torch.ones_like(weights), weights)
        choice = torch.multinomial(weights, 1, generator=generator)[:, 0]  # [N*H*W]
        out = self.centroids[choice]
        if noise:
            eps = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
            out = out + noise * torch.exp(-0.5 * self.log_precisions[choice]) * eps
        return out.reshape(*control.shape[:3], self.in_shape[2])


    def expected(self, control: torch.Tensor) -> torch.Tensor:
        """Mean of the emitted centroid when components are drawn in proportion to ``control``:
        ``sum_k w_k mu_k`` with ``w`` the control normalised per position. ``(N, H, W, K)`` -> ``(N, H, W, D)``."""
        weights = control.clamp(min=0)
        total = weights.sum(-1, keepdim=True)
        weights = torch.where(total > 0, weights / total.clamp_min(1e-30), torch.full_like(weights, 1.0 / self.n_components))
        return weights @ self.centroids

    def posterior(self, prior: torch.Tensor, x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """p(component | known input dimensions, prior): ``prior_k N_k(x_o) / sum_j prior_j N_j(x_o)``.

        ``prior`` (N, H, W, K): component probabilities from above (used in place of pi); ``x``, ``known``
        (N, H, W, D): the input and which of its dimensions are known. Without a known dimension the posterior
        is the prior. Returns (N, H, W, K), rows summing to 1.
        """
        log_likelihood = self.marginal_log_joint(x, known) - self.log_weights  # log N_k(x_o)
        return torch.softmax(torch.log(prior.clamp_min(1e-30)) + log_likelihood, dim=-1)


def _gaussian_terms(weight_logits, centroids, precision_raw, variance_floor: float) -> tuple[torch.Tensor, ...]:
    """tau, b = tau mu (K, D) and c (K,) of :meth:`GMM.coefficients`, from the raw parameters."""
    log_tau = -math.log(variance_floor) - F.softplus(precision_raw)  # [K, D]
    tau = torch.exp(log_tau)
    b = tau * centroids
    b.masked_fill_(b.abs() < TINY_COEFFICIENT, 0.0)
    dim = centroids.shape[1]
    c = F.log_softmax(weight_logits, dim=0) + 0.5 * (log_tau.sum(1) - dim * math.log(2 * math.pi) - torch.linalg.vecdot(b, centroids))
    return tau, b, c


@functools.lru_cache(maxsize=64)
def smoothing_kernel(n_components: int, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor | None:
    """:func:`neighbourhood` for the training step: ``None`` where it is the identity in floating point."""
    g = neighbourhood(n_components, sigma, device=device, dtype=dtype)
    return None if bool((g.diagonal() == 1).all()) else g


def max_component_step(
    flat: torch.Tensor,
    weight_logits: torch.Tensor,
    centroids: torch.Tensor,
    precision_raw: torch.Tensor,
    kernel: torch.Tensor | None,
    variance_floor: float,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The annealed max-component objective of a GMM layer, its responsibilities and its gradients in closed form.

    A pure function of tensors, no autograd; :meth:`GMM.training_step` calls it with the layer's parameters.

    Once the winning component ``k*(p) = argmax_k sum_j g_kj log(pi_j N_j(x_p))`` of every position is fixed,
    the loss ``-mean_p sum_j g_k*j log(pi_j N_j(x_p))`` is linear in ``(a, b, c)`` of
    :meth:`GMM.coefficients`, with coefficients the per-component sums ``S_a``, ``S_b`` of ``x^2`` and ``x``
    and the mass ``m``, each weighted by ``g[k*(p)]`` and divided by the number of positions ``n``. With
    ``tau = exp(log tau_max - softplus(precision_raw))`` and ``b = tau mu`` (0 below
    :data:`TINY_COEFFICIENT`):

    * ``dL/dmu = [b != 0] tau (m mu - S_b)``
    * ``dL/dlog tau = (S_a tau - m + b (m mu - 2 S_b)) / 2``, and ``dlog tau/dprecision_raw =
      -sigmoid(precision_raw) = tau / tau_max - 1``
    * ``dL/dweight_logits = pi sum(m) - m``

    tests/layers/test_gmm.py checks value and gradients against autograd through :meth:`GMM.loss`. On the CPU in
    float32, the terms, the sums and the gradients are computed by the fused C loops of :mod:`dcgmm.native` where
    they are available (tests/test_native.py compares the two paths).

    Parameters
    ----------
    flat : (P, D) — one row per position.
    weight_logits (K,), centroids (K, D), precision_raw (K, D) : the layer's parameters (detached).
    kernel : (K, K) smoothing kernel g, or None for the identity (plain max-component loss).

    Returns
    -------
    objective : scalar tensor, higher is better (the loss is its negative).
    output : (P, K) responsibilities.
    grads : gradients of the loss with respect to (weight_logits, centroids, precision_raw).
    """
    fast = native.usable(flat, centroids)
    tau, b, c = _step_terms(weight_logits, centroids, precision_raw, variance_floor, fast)
    squares = flat * flat
    log_joint = torch.addmm(c, squares, tau.t(), alpha=-0.5).addmm_(flat, b.t())  # [P, K]
    n = len(flat)
    top, best, counts, output = _winners(log_joint, kernel, fast)
    if fast:
        stats_a, stats_b = (stats.div_(n) for stats in native.winner_sums(flat, best, len(centroids)))  # [K, D]
    else:
        stats_a = torch.zeros_like(tau).index_add_(0, best, squares).div_(n)  # [K, D]
        stats_b = torch.zeros_like(tau).index_add_(0, best, flat).div_(n)
    mass = counts.to(flat.dtype).div_(n)
    if kernel is not None:  # position p counts g[k*(p), j] towards component j
        stats_a, stats_b, mass = kernel.t() @ stats_a, kernel.t() @ stats_b, kernel.t() @ mass
    return top.mean(), output, _step_gradients(weight_logits, centroids, tau, b, stats_a, stats_b, mass, variance_floor, fast)


def folded_max_component_step(
    h: torch.Tensor,
    window: tuple[int, int],
    stride: tuple[int, int],
    weight_logits: torch.Tensor,
    centroids: torch.Tensor,
    precision_raw: torch.Tensor,
    kernel: torch.Tensor | None,
    variance_floor: float,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`max_component_step` of a GMM layer on the windows of a Folding layer, without unfolding them.

    The two matrix products with ``x^2`` and ``x`` are then convolutions of ``[h^2, h]`` with ``a`` and ``b``
    reshaped as filters, and the per-component sums ``S_a``, ``S_b`` are that convolution's weight gradient
    for the output gradient "position p counts towards its winner" — so the ``(P, fy*fx*C)`` tensor of
    windows never exists. Where windows overlap a lot (each pixel in many of them) this moves far less
    memory (:func:`convolution_pays`). Same results as Folding followed by :func:`max_component_step`, up to
    rounding (tests/layers/test_gmm.py). With :mod:`dcgmm.native` (CPU, float32), the sums are added up window by
    window instead (:func:`dcgmm.native.window_sums`): no one-hot map, no dense weight gradient.

    Parameters
    ----------
    h : (N, H, W, C) — the Folding layer's input.
    window, stride : the Folding layer's (fy, fx) and (sy, sx); the window's dimensions are ordered (row,
        column, channel), as :class:`~dcgmm.layers.Folding` orders them.
    weight_logits (K,), centroids (K, D), precision_raw (K, D) : the GMM layer's parameters, D = fy*fx*C.
    kernel : (K, K) smoothing kernel, or None for the identity.

    Returns
    -------
    objective : scalar tensor; output : (N, H', W', K) responsibilities; grads : as :func:`max_component_step`.
    """
    (fy, fx), k, channels = window, len(centroids), h.shape[3]
    fast = native.usable(h, centroids)
    tau, b, c = _step_terms(weight_logits, centroids, precision_raw, variance_floor, fast)
    if fast:
        features = native.square_features(h).permute(0, 3, 1, 2)  # [N, 2C, H, W], channels-last in memory
    else:
        x = h.permute(0, 3, 1, 2)  # [N, C, H, W], channels-last in memory
        features = torch.cat([x * x, x], 1).contiguous(memory_format=torch.channels_last)  # [N, 2C, H, W]; oneDNN wants
        # input and output gradient in one memory format (2x slower otherwise), and the latter is channels-last
    filters = torch.cat([(-0.5 * tau).reshape(k, fy, fx, channels), b.reshape(k, fy, fx, channels)], 3).permute(0, 3, 1, 2)
    log_joint_map = F.conv2d(features, filters, c, stride=stride)  # [N, K, H', W']
    n_images, _, rows, cols = log_joint_map.shape
    log_joint = log_joint_map.permute(0, 2, 3, 1).reshape(-1, k)  # [P, K]
    n = len(log_joint)
    top, best, counts, output = _winners(log_joint, kernel, fast)
    mass = counts.to(log_joint.dtype).div_(n)
    if fast:  # the winners' windows added up directly: for 2L-c, 12 100 windows of 128 values instead of a weight gradient
        stats = native.window_sums(features.permute(0, 2, 3, 1), best.reshape(n_images, rows, cols), window, stride, k).div_(n)
    else:
        share = torch.zeros_like(log_joint).scatter_(1, best[:, None], 1.0 / n)  # [P, K]: p counts 1/n towards k*(p)
        grad_map = share.reshape(n_images, rows, cols, k).permute(0, 3, 1, 2)
        stats = torch.nn.grad.conv2d_weight(features, filters.shape, grad_map, stride=stride).permute(0, 2, 3, 1)  # [K, fy, fx, 2C]
    stats = stats.reshape(k, fy * fx, 2 * channels)
    if kernel is not None:  # position p counts g[k*(p), j] towards component j: the sums are linear in the shares
        stats, mass = (kernel.t() @ stats.reshape(k, -1)).reshape(stats.shape), kernel.t() @ mass
    stats_a, stats_b = stats[..., :channels].reshape(k, -1), stats[..., channels:].reshape(k, -1)
    grads = _step_gradients(weight_logits, centroids, tau, b, stats_a, stats_b, mass, variance_floor, fast)
    return top.mean(), output.reshape(n_images, rows, cols, k), grads


CONVOLUTION_OVERLAP = 8
"""A Folding + GMM pair trains as a convolution (:func:`folded_max_component_step`) when every pixel lies in
at least this many windows (``fy*fx / (sy*sx)``) and there is more than one window."""


def convolution_pays(window: tuple[int, int], stride: tuple[int, int], positions: int) -> bool:
    """Whether :func:`folded_max_component_step` is the faster path for a Folding with this window and stride.

    Measured (``benchmarks/fused_layers.py``, 2-core CPU, a batch of 100 MNIST digits, every Folding + GMM pair of
    Table I, one run): the unfolded path wins where windows do not overlap or one window covers the whole
    input (the convolution takes 1.4-3.2x as long there), the two tie at 4 windows per pixel (2L-e's
    F(4,4,2,2): 1.33 vs 1.34 ms), and the convolution wins or ties from 9 (2L-c's F(8,8,2,2): 2.07 vs 1.80 ms;
    3L-a's F(3,3,1,1): 13.3 vs 13.6 ms in that run, 6.1 vs 4.4 ms in an earlier one; its F(4,4,1,1) on 25
    channels: 16.7 vs 4.1 ms). This machine's speed drifts, so only each row's ratio counts.
    """
    overlap = window[0] * window[1] / (stride[0] * stride[1])
    return positions > 1 and overlap >= CONVOLUTION_OVERLAP


def _winners(log_joint: torch.Tensor, kernel: torch.Tensor | None, fast: bool) -> tuple[torch.Tensor, ...]:
    """The winning (smoothed) log joint (P,) and component (P,) of every row of ``log_joint`` (P, K), how many rows
    each component won (K,), and the responsibilities (P, K); by :func:`dcgmm.native.winners` when ``fast``."""
    smoothed = log_joint if kernel is None else log_joint @ kernel.t()
    if fast and log_joint.shape[1] <= native.MAX_COMPONENTS:
        return native.winners(smoothed, log_joint, TINY_LOG_RATIO)
    top, best = smoothed.max(dim=1)  # [P]: the winning component k*(p)
    counts = torch.bincount(best, minlength=log_joint.shape[1])
    return top, best, counts, responsibilities(log_joint, dim=1, row_max=top[:, None] if kernel is None else None)


def _step_terms(weight_logits, centroids, precision_raw, variance_floor: float, fast: bool) -> tuple[torch.Tensor, ...]:
    """:func:`_gaussian_terms`, by the fused C loop of :mod:`dcgmm.native` when ``fast``."""
    if fast:
        return native.gaussian_terms(weight_logits, centroids, precision_raw, variance_floor, TINY_COEFFICIENT)
    return _gaussian_terms(weight_logits, centroids, precision_raw, variance_floor)


def _step_gradients(weight_logits, centroids, tau, b, stats_a, stats_b, mass, variance_floor: float, fast: bool) -> tuple[torch.Tensor, ...]:
    """:func:`_gradients`, by the fused C loop of :mod:`dcgmm.native` when ``fast``."""
    if fast:
        return native.gradients(weight_logits, centroids, tau, b, stats_a, stats_b, mass, variance_floor)
    return _gradients(weight_logits, centroids, tau, b, stats_a, stats_b, mass, variance_floor)


def _gradients(weight_logits, centroids, tau, b, stats_a, stats_b, mass, variance_floor: float) -> tuple[torch.Tensor, ...]:
    """The gradients of :func:`max_component_step` from the per-component sums ``S_a``, ``S_b`` (K, D) and mass (K,)."""
    m_mu = centroids * mass[:, None]
    grad_mu = torch.sub(m_mu, stats_b).mul_(tau).masked_fill_(b == 0, 0.0)
    grad_p = torch.add(m_mu, stats_b, alpha=-2.0).mul_(b).addcmul_(stats_a, tau).sub_(mass[:, None])
    grad_p.mul_(torch.mul(tau, 0.5 * variance_floor).sub_(0.5))
    grad_w = torch.softmax(weight_logits, dim=0) * mass.sum() - mass
    return grad_w, grad_mu, grad_p
