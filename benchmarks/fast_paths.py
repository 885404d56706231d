"""Do the fast training paths change what training reaches? The library's step against the textbook one, same seed.

Trains ``--arch`` (default 2L-c) on full MNIST with the default settings (25 epochs, seed 0 or ``--seed``) three times in one run:

* **textbook**: every GMM layer's step by autograd — log(pi_k N_k(x)) by matrix products from the raw
  parameters, the annealed max-component objective with the same smoothing kernel, plain softmax
  responsibilities (no floor against subnormal numbers, no zeroing of tiny coefficients);
* **library**: ``GMM.training_step`` — closed-form gradients (``max_component_step``), responsibilities
  floored at exp(-35) of the largest, coefficients ``tau mu`` below 1e-20 treated as 0; Folding + GMM pairs
  whose windows overlap a lot as one convolution (``folded_max_component_step``: 2L-c's first layer, 3L-a's
  two lower ones); the Gaussian terms, winners and responsibilities, gradients and sums by the fused C loops of
  ``dcgmm.native``;
* **library, PyTorch path**: the same step with ``dcgmm.native`` disabled (what runs where no C compiler is
  found).

Same objective, schedule, data order and initial values; the float results part after the first steps. It
prints each run's seconds per epoch and the mean test log-likelihood of every GMM layer (nats per position)
and the library runs' relative differences from the textbook run (the speed issue allows 0.5%).

Usage: python benchmarks/fast_paths.py [--arch 2L-c] [--epochs 25] [--seed 0]
"""

import argparse

import contextlib

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset, native

from naive import MatmulGMM, make_naive


class TextbookGMM(MatmulGMM):
    """Autograd through matrix products, with the annealing kernel: the library's objective, the textbook way."""

    use_kernel = True


def train(arch: str, epochs: int, seed: int, textbook: bool, images, test):
    model = DCGMM.from_spec(arch)
    if textbook:
        make_naive(model, TextbookGMM)
    history = Trainer(model, TrainConfig(epochs=epochs, seed=seed), images).fit(progress=False)
    seconds = sum(r.seconds for r in history) / len(history)
    return seconds, {f"{layer.layer} {layer.spec}": float(layer.per_position.mean()) for layer in model.log_likelihoods(test)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="2L-c")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0, help="initial values and data order (default: %(default)s)")
    args = parser.parse_args()
    images, _ = load_dataset("mnist", "train")
    test, _ = load_dataset("mnist", "test")
    results = {}
    print(f"dcgmm.native: {native.status()}; seed {args.seed}")
    arms = (("textbook (autograd)", True, contextlib.nullcontext), ("library (closed form)", False, contextlib.nullcontext),
            ("library, PyTorch path", False, native.disabled))
    for name, textbook, context in arms:
        with context():
            results[name] = train(args.arch, args.epochs, args.seed, textbook, images, test)
        seconds, lls = results[name]
        print(f"{args.arch} {name}: {seconds:.2f} s/epoch; test log-likelihood " + ", ".join(f"layer {k}: {v:.3f}" for k, v in lls.items()), flush=True)
    _, old = results["textbook (autograd)"]
    for name in ("library (closed form)", "library, PyTorch path"):
        _, new = results[name]
        for key in old:
            print(f"layer {key}: {name} {new[key]:.3f} vs textbook {old[key]:.3f} nats per position, "
                  f"relative difference {(new[key] - old[key]) / abs(old[key]):+.3%}")


if __name__ == "__main__":
    main()
