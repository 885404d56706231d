"""Training speed of 2L-c (or --arch) on full MNIST (batch 100) on this machine, against a naive reference, and stability.

Prints, in one run:

* the naive reference: the same architecture trained the plain PyTorch way — log(pi_k N_k(x)) from the expanded
  square by matrix products (no broadcast tensor), the plain max-component loss (no annealing kernel),
  gradients by autograd, plain SGD, batch 100 — seconds per epoch, trained for ``--naive-epochs`` epochs
  before the dcgmm run and again after it (this machine's speed drifts by up to 2x within minutes; the two
  sides of the ratio are then measured over the same stretch of time);
* seconds per epoch of a default dcgmm training run (25 epochs: the mean, which is the figure that counts,
  and every epoch) and its ratio to the naive reference;
* the GMM layers' achieved GFLOP/s (their matrix products and scatter-adds, counted analytically, over the
  whole epoch time) next to this machine's measured float32 matmul GFLOP/s;
* with --seeds, whether default training from 5 random initialisations stays finite.

``--device cuda`` runs all of it on the GPU (the native C loops are for the CPU; on a GPU the PyTorch path runs).
"""

import argparse
import math
import time

import numpy as np
import torch

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset, native

from naive import MatmulGMM, make_naive


def naive_seconds_per_epoch(arch: str, images, epochs: int, device: torch.device) -> float:
    model = make_naive(DCGMM.from_spec(arch), MatmulGMM)
    history = Trainer(model, TrainConfig(epochs=epochs), images, device=device).fit(progress=False)
    return sum(r.seconds for r in history) / len(history)


def matmul_peak(device: torch.device, n=2048, repeats=5):
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gmm_flops_per_image(model):
    total = 0
    for _, layer in model.gmm_layers():
        h, w, d = layer.in_shape
        positions, k = h * w, layer.n_components
        total += positions * (2 * (2 * d) * k + 2 * d + 3 * d)  # forward product, scatter-add, features
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="2L-c", help="preset or spec (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=0, help="also train this many seeds for 25 epochs and check for NaN")
    parser.add_argument("--naive-epochs", type=int, default=1,
                        help="epochs of the naive reference, before and again after the dcgmm run (default: %(default)s)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible to PyTorch here")
    images, _ = load_dataset("mnist", "train")
    peak = matmul_peak(device)
    naive_before = naive_seconds_per_epoch(args.arch, images, args.naive_epochs, device)
    model = DCGMM.from_spec(args.arch)
    trainer = Trainer(model, TrainConfig(epochs=args.epochs), images, device=device)
    history = trainer.fit(progress=False)
    naive_after = naive_seconds_per_epoch(args.arch, images, args.naive_epochs, device)
    naive = (naive_before + naive_after) / 2
    seconds = sum(r.seconds for r in history) / len(history)
    gflops = gmm_flops_per_image(model) * trainer.steps_per_epoch * 100 / seconds / 1e9
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads; dcgmm.native: {native.status()}"
    print(f"torch {torch.__version__}, {where}")
    print(f"{args.arch}, MNIST 60000, batch 100: {seconds:.2f} s/epoch, mean of {args.epochs} (all: {', '.join(f'{r.seconds:.2f}' for r in history)})")
    print(f"naive reference (matrix products, autograd, no annealing kernel): {naive:.2f} s/epoch ({naive_before:.2f} before, "
          f"{naive_after:.2f} after the dcgmm run, {args.naive_epochs} epoch(s) each); dcgmm / naive = {seconds / naive:.2f}")
    print(f"GMM layers: {gflops:.1f} GFLOP/s achieved; float32 matmul peak measured {peak:.1f} GFLOP/s ({100 * gflops / peak:.0f}%)")
    for seed in range(args.seeds):
        model = DCGMM.from_spec(args.arch)
        hist = Trainer(model, TrainConfig(seed=seed), images, device=device).fit(progress=False)
        finite = all(torch.isfinite(p).all() for p in model.parameters()) and all(
            v is not None and math.isfinite(v) for r in hist for v in r.objective.values())
        top = float(np.mean(model.log_likelihoods(images[:10000])[-1].per_image))
        print(f"seed {seed}: 25 epochs, finite={finite}, top-layer train log-lik {top:.1f}")


if __name__ == "__main__":
    main()
