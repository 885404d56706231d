"""Sample quality of the sampling defaults, per architecture and dataset, beside flat EM GMMs in the same run.

For every architecture (default: 2L-c, the paper's counterpart of the library's default 2L-c64 and the README's
main model until 2026-12-03; 2L-b, the README's sampling model, whose lowest windows do not overlap; then 2L-e
and 3L-a) and dataset (MNIST and
FashionMNIST, classes 0-4), a model trained with the defaults (25 epochs, seed 0; run folders under --runs
are reused) draws 1000 samples with ``dcgmm.sampling.sample``'s defaults and with other top-S / noise
settings. Samples (clipped to [0, 1]) are compared with 1000 held-out test images of 0-4 over 100 k-means
bins fitted on the training images (NDB, Richardson & Weiss 2018: bins whose proportions differ at
alpha = 0.05; JS divergence of the bin histograms); "distinct": samples with no other sample within a mean
squared difference of 1e-3 per pixel. Rows computed in the same run:

* real vs real: 1000 training images (the floor);
* flat diagonal EM GMMs (scikit-learn, ``reg_covar`` 0.05, samples drawn with their noise) with K = 25 and
  with about each DCGMM's parameter count;
* two diagnostics of where a DCGMM loses: "lower codec" passes 1000 training images up to the lowest GMM
  layer and samples back down from their own responsibilities there (what the lower layers can express);
  "top replay" draws a top component from the top layer's weights pi and shows a random training image
  whose top component it is (what the top layer's partition can express, if the lower layers reproduced
  the variety of real images within a component).

Written to ``--out/sampling.json`` with grids ``--out/img/sampling-{dataset}-{arch}.png``.

Usage: python benchmarks/sampling.py [--archs 2L-c 2L-b 2L-e 3L-a] [--datasets mnist fashion-mnist]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset, load_model, save_model
from dcgmm.metrics import Bins
from dcgmm.plots import plot_samples
from dcgmm.sampling import DEFAULT_CONTROL_NOISE, DEFAULT_NOISE, DEFAULT_TOP_S, sample, variants

CLASSES = [0, 1, 2, 3, 4]
SETTINGS = [
    (f"default (top-{DEFAULT_TOP_S}, noise {DEFAULT_NOISE}, control noise {DEFAULT_CONTROL_NOISE})", dict()),
    ("top-1, no noise (the paper's, unsharpened)", dict(top_s=1, noise=0.0, control_noise=0.0)),
    (f"top-{DEFAULT_TOP_S}, noise 0.25 at every GMM layer (an earlier default)", dict(noise=0.25, control_noise=0.25)),
    ("top-2, noise 0.25 at every GMM layer", dict(top_s=2, noise=0.25, control_noise=0.25)),
    ("top-all, no noise", dict(top_s=None, noise=0.0, control_noise=0.0)),
]


def distinct(samples: np.ndarray) -> int:
    """Samples with no other sample within a mean squared difference of 1e-3 per pixel."""
    x = torch.as_tensor(samples.reshape(len(samples), -1), dtype=torch.float64)
    d = torch.cdist(x, x) ** 2 / x.shape[1]
    d.fill_diagonal_(float("inf"))
    return int((d.min(1).values > 1e-3).sum())


def model_for(arch: str, run: Path, train: np.ndarray) -> tuple[DCGMM, float]:
    if (run / "model.safetensors").exists():
        return load_model(run), 0.0
    start = time.perf_counter()
    model = DCGMM.from_spec(arch)
    Trainer(model, TrainConfig(seed=0), train).fit(progress=False)
    save_model(model, run)
    return model, time.perf_counter() - start


@torch.no_grad()
def top_assignments(model: DCGMM, images: np.ndarray) -> np.ndarray:
    top = model.top_gmm
    k = model.layers[top].n_components
    return np.concatenate([
        model(torch.as_tensor(images[b : b + 2000]))[top].reshape(-1, k).argmax(1).numpy() for b in range(0, len(images), 2000)
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["2L-c", "2L-b", "2L-e", "3L-a"])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--n", type=int, default=1000, help="samples per row and held-out images")
    parser.add_argument("--runs", default="runs/sampling", help="model folders: reused when present")
    parser.add_argument("--out", default="docs", help="folder of sampling.json and img/")
    args = parser.parse_args()
    out = Path(args.out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    results = {}
    for dataset in args.datasets:
        train, _ = load_dataset(dataset, "train", CLASSES)
        test, _ = load_dataset(dataset, "test", CLASSES)
        bins = Bins(train, 100, seed=0)
        reference = test[np.random.default_rng(0).choice(len(test), args.n, replace=False)]
        real = train[np.random.default_rng(1).choice(len(train), args.n, replace=False)]
        rows = results[dataset] = {}

        def row(name, samples, seconds, **extra):
            samples = samples.numpy() if isinstance(samples, torch.Tensor) else samples
            samples = samples.clip(0, 1)
            c = bins.compare(samples, reference)
            rows[name] = dict(ndb=c.ndb, js=round(c.js, 4), distinct=distinct(samples), seconds=round(seconds, 2), **extra)
            tail = "  ".join(f"{k} {v}" for k, v in extra.items())
            print(f"{dataset:13s} {name:62s} NDB {c.ndb:3d}  JS {c.js:.3f}  distinct {rows[name]['distinct']:4d}  {seconds:6.1f} s  {tail}", flush=True)

        row("real vs real (training images)", real, 0.0)
        flat = train.reshape(len(train), -1).astype(np.float64)

        def flat_row(k, what):
            start = time.perf_counter()
            em = GaussianMixture(k, covariance_type="diag", reg_covar=0.05, max_iter=100, random_state=0).fit(flat)
            samples = em.sample(args.n)[0].reshape(-1, *train.shape[1:])
            row(f"flat EM GMM K={k} ({what})", samples, time.perf_counter() - start, parameters=k * (2 * flat.shape[1] + 1))

        flat_row(25, "K = 25")
        for arch in args.archs:
            model, train_seconds = model_for(arch, Path(args.runs) / dataset / arch, train)
            n_params = sum(p.numel() for p in model.parameters())
            matched = round(n_params / (2 * flat.shape[1] + 1))
            assign = top_assignments(model, train)
            k_top = model.layers[model.top_gmm].n_components
            used = len(np.unique(assign))
            print(f"{dataset:13s} {arch} = {model.spec}: {n_params:,} parameters, top components used {used} of {k_top}"
                  + (f", trained in {train_seconds:.0f} s" if train_seconds else ""), flush=True)
            flat_row(matched, f"{arch}'s parameter count")
            for name, options in SETTINGS:
                start = time.perf_counter()
                samples = sample(model, args.n, generator=torch.Generator().manual_seed(0), **options)
                row(f"{arch} {name}", samples, time.perf_counter() - start, parameters=n_params, top_used=used)
                if not options:
                    plot_samples(samples[:100].clamp(0, 1), out / "img" / f"sampling-{dataset}-{arch}.png",
                                 title=f"{arch} on {dataset} 0-4, default sampling")
            start = time.perf_counter()
            codec = variants(model, torch.as_tensor(real), top_s=None, clamp_layer=min(g for g, _ in model.gmm_layers()) + 2,
                             generator=torch.Generator().manual_seed(0))
            row(f"{arch} diagnostic: lower codec (real images, top-all)", codec, time.perf_counter() - start)
            rng = np.random.default_rng(2)
            pi = torch.exp(model.layers[model.top_gmm].log_weights).detach().numpy().astype(np.float64)
            members = {k: np.flatnonzero(assign == k) for k in np.unique(assign)}
            drawn = rng.choice(k_top, args.n, p=pi / pi.sum())
            replay = [rng.choice(members.get(k, np.arange(len(train)))) for k in drawn]
            row(f"{arch} diagnostic: top replay (real images by top component)", train[replay], 0.0)
    (out / "sampling.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {out / 'sampling.json'}")


if __name__ == "__main__":
    main()
