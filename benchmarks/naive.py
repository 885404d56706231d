"""Naive references for the speed benchmarks: GMM layers trained the textbook way, by autograd.

Both compute log(pi_k N_k(x)) from the parameters and differentiate the max-component loss by autograd; they
differ in how the squared distances are formed. Swap them into a model with :func:`make_naive`.
"""

import math

import torch

from dcgmm.layers import GMM


class BroadcastGMM(GMM):
    """(x - mu)^2 by broadcasting over a (positions, K, D) tensor; the annealing kernel is applied."""

    use_kernel = True

    @staticmethod
    def squared(flat, centroids, tau):
        return ((flat[:, None, :] - centroids[None]) ** 2 * tau[None]).sum(-1)  # [P, K]

    def training_step(self, x, kernel):
        flat = self._flat(x.detach())  # [P, D]
        params = [p.detach().requires_grad_() for p in (self.weight_logits, self.centroids, self.precision_raw)]
        weight_logits, centroids, precision_raw = params
        with torch.enable_grad():
            log_tau = self.log_precision_max - torch.nn.functional.softplus(precision_raw)  # [K, D]
            norm = 0.5 * (log_tau.sum(1) - flat.shape[1] * math.log(2 * math.pi))
            log_joint = torch.log_softmax(weight_logits, 0) + norm - 0.5 * self.squared(flat, centroids, torch.exp(log_tau))
            smoothed = log_joint if kernel is None or not self.use_kernel else log_joint @ kernel.t()
            loss = -smoothed.max(dim=1).values.mean()
            grads = torch.autograd.grad(loss, params)
        output = torch.softmax(log_joint.detach(), dim=-1).reshape(*x.shape[:3], self.n_components)
        return -loss.detach(), output, grads

    def folded_training_step(self, h, fold, kernel):
        """No convolution path: the naive reference always unfolds the windows."""
        return self.training_step(fold(h), kernel)


class MatmulGMM(BroadcastGMM):
    """x^2 tau - 2 x tau mu + tau mu^2 by matrix products (no broadcast tensor); no annealing kernel."""

    use_kernel = False

    @staticmethod
    def squared(flat, centroids, tau):
        return (flat * flat) @ tau.t() - 2 * flat @ (tau * centroids).t() + (tau * centroids * centroids).sum(1)


def make_naive(model, kind=BroadcastGMM):
    """Turn every GMM layer of ``model`` into the naive reference ``kind``, in place; returns the model."""
    for _, layer in model.gmm_layers():
        layer.__class__ = kind
    return model
