"""SGD really trains: 1L (a vanilla GMM, K=25) by SGD on full MNIST vs EM with the same K and variance floor.

Prints both test log-likelihoods per image and their ratio. Usage: python benchmarks/sgd_vs_em.py [--epochs 25]
"""

import argparse
import time

import torch

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset
from dcgmm.em import fit_em


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, _ = load_dataset("mnist", "train")
    test, _ = load_dataset("mnist", "test")

    start = time.perf_counter()
    model = DCGMM.from_spec("1L")
    Trainer(model, TrainConfig(epochs=args.epochs, seed=args.seed), train).fit(progress=False)
    sgd_seconds = time.perf_counter() - start
    sgd = float(model.log_likelihoods(test)[0].per_image.mean())

    start = time.perf_counter()
    em = fit_em(torch.from_numpy(train.reshape(len(train), -1)), 25, model.config.variance_floor, seed=args.seed)
    em_seconds = time.perf_counter() - start
    layer = em.to_layer(model.config.variance_floor).double()
    with torch.no_grad():
        em_test = float(layer.log_likelihood(torch.from_numpy(test.reshape(-1, 1, 1, 784)).double()).mean())

    print(f"1L = F(28,28,1,1) G(25), MNIST, variance floor {model.config.variance_floor}")
    print(f"SGD {args.epochs} epochs ({sgd_seconds:.0f} s): test log-likelihood {sgd:8.2f} nats/image")
    print(f"EM  {len(em.history)} iterations ({em_seconds:.0f} s, converged={em.converged}): test log-likelihood {em_test:8.2f} nats/image")
    print(f"SGD / EM = {sgd / em_test:.4f}  (SGD is {100 * (em_test - sgd) / abs(em_test):.2f}% below EM)")


if __name__ == "__main__":
    main()
