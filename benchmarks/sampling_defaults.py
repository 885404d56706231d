"""Sample quality of the sampling defaults against the paper's setting and flat EM GMMs, in one run.

Trains 2L-c (the README main job's model until 2026-12-03) on MNIST digits 0-4, 25 epochs, seed 0 (or reuses --model), draws
1000 samples per setting and compares them with 1000 test images of 0-4 over 100 k-means bins fitted on the
training images (NDB: bins whose proportions differ at alpha = 0.05; JS divergence). "distinct": samples with
no other sample within a mean squared difference of 1e-3 per pixel. Rows in the same run: real vs real (1000
training images), flat diagonal EM GMMs (scikit-learn, reg_covar 0.05, samples clipped to [0, 1]) with K = 25
and with about the DCGMM's parameter count.

Usage: python benchmarks/sampling_defaults.py [--model runs/demo]
"""

import argparse
import time

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset, load_model
from dcgmm.metrics import Bins
from dcgmm.sampling import DEFAULT_NOISE, DEFAULT_TOP_S, Sharpening, sample
from sampling import distinct


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a run folder of 2L-c trained on MNIST 0-4 (default: train one here)")
    args = parser.parse_args()
    train, _ = load_dataset("mnist", "train", [0, 1, 2, 3, 4])
    test, _ = load_dataset("mnist", "test", [0, 1, 2, 3, 4])
    if args.model:
        model = load_model(args.model)
    else:
        model = DCGMM.from_spec("2L-c")
        Trainer(model, TrainConfig(epochs=25, seed=0), train).fit(progress=False)
    bins = Bins(train, 100, seed=0)
    reference = test[np.random.default_rng(0).choice(len(test), 1000, replace=False)]
    n_params = sum(p.numel() for p in model.parameters())
    matched = round(n_params / (2 * 784 + 1))

    def row(name, samples, seconds=None):
        c = bins.compare(samples, reference)
        extra = "" if seconds is None else f"  ({seconds:.1f} s)"
        print(f"{name:52s} NDB {c.ndb:3d}  JS {c.js:.3f}  distinct {distinct(samples):4d}{extra}", flush=True)

    print(f"{model.spec} ({n_params:,} parameters); 1000 samples vs 1000 test images of 0-4, 100 bins")
    row("real vs real (1000 training images)", train[np.random.default_rng(1).choice(len(train), 1000, replace=False)])
    flat = train.reshape(len(train), -1).astype(np.float64)
    for k in (25, matched):
        start = time.perf_counter()
        em = GaussianMixture(k, covariance_type="diag", reg_covar=0.05, max_iter=100, random_state=0).fit(flat)
        samples = em.sample(1000)[0].clip(0, 1).reshape(-1, 28, 28, 1)
        row(f"flat EM GMM K={k} ({k * (2 * 784 + 1):,} parameters)", samples, time.perf_counter() - start)
    settings = [
        (f"default: top-{DEFAULT_TOP_S}, noise {DEFAULT_NOISE}", dict()),
        ("paper: top-1, no noise, sharpened", dict(top_s=1, noise=0.0, control_noise=0.0, sharpening=Sharpening())),
        ("top-1, no noise", dict(top_s=1, noise=0.0, control_noise=0.0)),
        ("top-all, no noise", dict(top_s=None, noise=0.0, control_noise=0.0)),
        (f"top-{DEFAULT_TOP_S}, noise {DEFAULT_NOISE}, sharpened", dict(sharpening=Sharpening())),
    ]
    for name, options in settings:
        start = time.perf_counter()
        samples = sample(model, 1000, generator=torch.Generator().manual_seed(0), **options).numpy().clip(0, 1)
        row(name, samples, time.perf_counter() - start)


if __name__ == "__main__":
    main()
