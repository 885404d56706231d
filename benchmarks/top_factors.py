"""How much of a DCGMM's sampling gap is the top layer's missing within-component correlation?

A DCGMM's top layer is a diagonal GMM over the responsibilities of the layer below it, so given its top
component every lower position draws independently (docs/sampling.md, "Where the loss is"). This benchmark
adds, after training and outside the model, a low-rank Gaussian model of how the top layer's inputs spread
within each top component, and samples through the model's own top-down pass from control signals drawn
from it:

* per component, rank q: the images assigned to top component k (its largest responsibility) give the mean
  of their top-layer inputs and, by SVD, the q directions of largest spread with their variances; a sample
  draws k with the assigned images' frequencies, then ``mean_k + sum_i z_i sqrt(var_ki) v_ki``
  (z ~ N(0, 1)), negative entries set to 0 — extra parameters K q D;
* pooled, rank q: one basis of q directions for all components (SVD of 10 000 within-component residuals)
  with a full q x q covariance per component — extra parameters q D + K q (q + 1) / 2.

The drawn signal goes to the layer below the top GMM layer and down with the default top-S (5), no noise.
Rows computed in the same run: the model's default sampler, real vs real, and flat diagonal EM GMMs
(scikit-learn, reg_covar 0.05, sampled with their noise) with the DCGMM's parameter count and with the
parameter count of the DCGMM plus each sampler's extra parameters. 1000 samples against 1000 test images
of classes 0-4, 100 k-means bins fitted on the training images (the protocol of benchmarks/sampling.py).

Usage: python benchmarks/top_factors.py [--run runs/demo] [--dataset mnist] [--arch 2L-c]
(trains --arch on classes 0-4, 25 epochs, seed 0, into --run when no model is there)
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset, load_model, save_model
from dcgmm.baselines import flat_gmm, matched_components
from dcgmm.metrics import Bins
from dcgmm.sampling import sample
from dcgmm.topdown import SamplingOptions

CLASSES = [0, 1, 2, 3, 4]


@torch.no_grad()
def top_inputs(model: DCGMM, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """The top GMM layer's inputs (N, D), each image's top component (N,), and the input's (H, W, C)."""
    top, inputs, components = model.top_gmm, [], []
    for begin in range(0, len(images), 1000):
        outputs = model(torch.as_tensor(images[begin : begin + 1000]))
        inputs.append(outputs[top - 1].reshape(len(outputs[top - 1]), -1).numpy())
        components.append(outputs[top].reshape(len(outputs[top]), -1).argmax(1).numpy())
    return np.concatenate(inputs), np.concatenate(components), tuple(outputs[top - 1].shape[1:])


@torch.no_grad()
def from_control(model: DCGMM, control: np.ndarray, shape: tuple, seed: int) -> np.ndarray:
    """Images drawn down from ``control`` (N, D) given to the layer below the top GMM layer."""
    options = SamplingOptions(top_s=5, generator=torch.Generator().manual_seed(seed))
    signal = torch.as_tensor(np.clip(control, 0, None), dtype=torch.float32).reshape(len(control), *shape)
    return model.top_down(model.top_gmm - 1, signal, options).numpy()


def per_component(inputs, components, k_top, rank, n, rng) -> tuple[np.ndarray, int]:
    counts = np.bincount(components, minlength=k_top)
    drawn = rng.choice(k_top, size=n, p=counts / counts.sum())
    control = np.empty((n, inputs.shape[1]))
    for k in np.unique(drawn):
        members, chosen = inputs[components == k], drawn == k
        mean = members.mean(0)
        _, s, vt = np.linalg.svd(members - mean, full_matrices=False)
        q = min(rank, len(s))
        z = rng.standard_normal((chosen.sum(), q)) * s[:q] / np.sqrt(max(len(members) - 1, 1))
        control[chosen] = mean + z @ vt[:q]
    return control, k_top * rank * inputs.shape[1]


def pooled(inputs, components, k_top, rank, n, rng) -> tuple[np.ndarray, int]:
    counts = np.bincount(components, minlength=k_top)
    means = np.stack([inputs[components == k].mean(0) if counts[k] else inputs.mean(0) for k in range(k_top)])
    residuals = inputs - means[components]
    basis = np.linalg.svd(residuals[rng.permutation(len(residuals))[:10_000]], full_matrices=False)[2][:rank]
    drawn = rng.choice(k_top, size=n, p=counts / counts.sum())
    control = np.empty((n, inputs.shape[1]))
    for k in np.unique(drawn):
        chosen = drawn == k
        coordinates = residuals[components == k] @ basis.T
        covariance = np.atleast_2d(np.cov(coordinates.T)) if len(coordinates) > 2 else np.zeros((rank, rank))
        control[chosen] = means[k] + rng.multivariate_normal(np.zeros(rank), covariance, size=chosen.sum()) @ basis
    return control, rank * inputs.shape[1] + k_top * rank * (rank + 1) // 2


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo", help="model folder (--arch trained on classes 0-4 if absent)")
    parser.add_argument("--arch", default="2L-c", help="architecture trained when --run holds no model")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    train, _ = load_dataset(args.dataset, "train", CLASSES)
    test, _ = load_dataset(args.dataset, "test", CLASSES)
    if not 1 <= args.n <= len(test):
        parser.error(f"--n must be between 1 and {len(test)} (the test images of classes 0-4); got {args.n}")
    run = Path(args.run)
    if (run / "model.safetensors").exists():
        model = load_model(run)
    else:
        model = DCGMM.from_spec(args.arch, input_shape=train.shape[1:])
        start = time.perf_counter()
        Trainer(model, TrainConfig(seed=0), train).fit(progress=False)
        save_model(model, run)
        print(f"trained {model.spec} in {time.perf_counter() - start:.0f} s", flush=True)
    bins = Bins(train, 100, seed=0)
    reference = test[np.random.default_rng(0).choice(len(test), args.n, replace=False)]
    n_params = sum(p.numel() for p in model.parameters())
    dims = int(np.prod(train.shape[1:]))
    flat = {}

    def row(name, images, parameters, seconds):
        result = bins.compare(np.clip(images, 0, 1), reference)
        print(f"{name:58s} {parameters:>9,d} parameters  NDB {result.ndb:3d}  JS {result.js:.3f}  {seconds:6.1f} s", flush=True)

    def flat_row(parameters):
        k = matched_components(parameters, dims)
        if k not in flat:
            start = time.perf_counter()
            gmm = flat_gmm(train, k, seed=0)
            flat[k] = True
            row(f"flat EM GMM K={k}", gmm.sample(args.n)[0].reshape(-1, *train.shape[1:]), k * (2 * dims + 1), time.perf_counter() - start)

    row("real vs real (training images)", train[np.random.default_rng(1).choice(len(train), args.n, replace=False)], 0, 0.0)
    start = time.perf_counter()
    row(f"{model.spec}: default sampler", sample(model, args.n, generator=torch.Generator().manual_seed(0)).numpy(), n_params,
        time.perf_counter() - start)
    flat_row(n_params)
    inputs, components, shape = top_inputs(model, train)
    print(f"top layer: inputs of dimension {inputs.shape[1]}, {len(np.unique(components))} of "
          f"{model.layers[model.top_gmm].n_components} components hold training images", flush=True)
    k_top = model.layers[model.top_gmm].n_components
    for name, fit, rank in [("per component", per_component, 1), ("per component", per_component, 2),
                            ("per component", per_component, 5), ("pooled", pooled, 20)]:
        start = time.perf_counter()
        control, extra = fit(inputs, components, k_top, rank, args.n, np.random.default_rng(0))
        row(f"top factors, {name}, rank {rank}", from_control(model, control, shape, seed=0), n_params + extra,
            time.perf_counter() - start)
        flat_row(n_params + extra)


if __name__ == "__main__":
    main()
