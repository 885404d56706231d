"""Conditional sampling through a top classifier, judged by an independent classifier.

Trains 2L-c with a linear classifier on top, "F(8,8,2,2) G(25) F(11,11,1,1) G(36) C(10)", on all ten MNIST
classes (25 epochs, default settings; reuses --run if it holds a model), draws --n samples per class through
the classifier's inverse with the library's defaults (dcgmm.sampling.sample_classes: unrestricted draws, 0.3
sigma of noise on the pixel layer, none above it; --S, --noise, --control-noise, --sharpen for other settings), and labels them with scikit-learn logistic regression trained
on the raw pixels of the MNIST training split — a classifier that is no part of the model. Prints the
accuracy per class and overall, how many samples of each class are distinct (no other sample of the class
within a mean squared difference of 1e-3 per pixel), and the time that sharpening 100 samples with G = 1000
takes.
Usage: python benchmarks/conditional.py [--S 0] [--noise 0.3] [--control-noise 0] [--sharpen] [--n 100] [--run runs/conditional]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset, load_model, save_model
from dcgmm.plots import plot_samples
from dcgmm.sampling import DEFAULT_CLASS_CONTROL_NOISE, DEFAULT_CLASS_NOISE, DEFAULT_CLASS_TOP_S, Sharpening, sample, sample_classes
from sampling import distinct

SPEC = "F(8,8,2,2) G(25) F(11,11,1,1) G(36) C(10)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--S", type=int, default=DEFAULT_CLASS_TOP_S, help="top-S, 0 = all (default: the library's, %(default)s = all)")
    parser.add_argument("--noise", type=float, default=DEFAULT_CLASS_NOISE, help="pixel noise (default: the library's, %(default)s)")
    parser.add_argument("--control-noise", type=float, default=DEFAULT_CLASS_CONTROL_NOISE, help="noise of the upper GMM layers (default: the library's, %(default)s)")
    parser.add_argument("--sharpen", action="store_true", help="sharpen (1000 steps of 0.1), the paper's setting")
    parser.add_argument("--n", type=int, default=100, help="samples per class")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--spec", default=SPEC, help="architecture, ending in C(10) (default: %(default)s)")
    parser.add_argument("--run", default="runs/conditional")
    args = parser.parse_args()
    run = Path(args.run)
    top_s = None if args.S == 0 else args.S
    train, train_labels = load_dataset("mnist", "train")
    test, test_labels = load_dataset("mnist", "test")
    if (run / "model.safetensors").exists():
        model = load_model(run)
        print(f"reusing {run}")
    else:
        start = time.perf_counter()
        model = DCGMM.from_spec(args.spec)
        Trainer(model, TrainConfig(epochs=args.epochs), train, train_labels).fit(progress=False)
        save_model(model, run / "model.safetensors")
        print(f"trained {args.spec} in {time.perf_counter() - start:.0f} s")
    print(f"the model's own classifier: test accuracy {(model.predict(test) == test_labels).mean():.4f}")

    start = time.perf_counter()
    judge = LogisticRegression(max_iter=300).fit(train.reshape(len(train), -1), train_labels)
    print(f"independent judge (logistic regression on raw pixels): test accuracy "
          f"{judge.score(test.reshape(len(test), -1), test_labels):.4f} ({time.perf_counter() - start:.0f} s)")

    wanted = np.repeat(np.arange(10), args.n)
    start = time.perf_counter()
    how = (f"top-{top_s or 'all'}, noise {args.noise:g}, control noise {args.control_noise:g}, "
           f"{'sharpened' if args.sharpen else 'not sharpened'}")
    samples = sample_classes(model, wanted, top_s=top_s, noise=args.noise, control_noise=args.control_noise, sharpening=Sharpening() if args.sharpen else None,
                             generator=torch.Generator().manual_seed(0)).clamp(0, 1)
    print(f"{len(wanted)} conditional samples, {how}: {time.perf_counter() - start:.1f} s")
    predicted = judge.predict(samples.numpy().reshape(len(samples), -1))
    for c in range(10):
        print(f"  class {c}: accuracy {(predicted[wanted == c] == c).mean():.3f}, distinct {distinct(samples[wanted == c])} of {args.n}")
    print(f"overall accuracy of conditional samples: {(predicted == wanted).mean():.4f}")
    plot_samples(samples.numpy().reshape(10, args.n, 28, 28, 1)[:, :10].reshape(100, 28, 28, 1), run / f"conditional-S{top_s or 0}.png",
                 title=f"{model.spec}: conditional samples, {how}", row_labels=[f"class {c}" for c in range(10)])

    times = []
    for repeat in range(3):
        start = time.perf_counter()
        sample(model, 100, top_s=1, sharpening=Sharpening(steps=1000, rate=0.1), generator=torch.Generator().manual_seed(repeat))
        times.append(time.perf_counter() - start)
    print(f"sampling + sharpening 100 samples of {model.spec}, G = 1000: {min(times):.2f} s (best of 3: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
