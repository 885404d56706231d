"""Outlier detection with the paper's protocol (Sec. IV-B, Fig. 3) for every Table I architecture.

For each dataset: train every architecture on the training images of classes 0-4 (25 epochs, default
settings, seed 0; a run folder under --runs that already holds a model is reused), compute its outlier
statistics over those training images, and score the test images: classes 0-4 are inliers, 5-9 outliers.
Prints the AUROC table (Markdown) and writes the Fig. 3-style curves (c swept over [-2, 2]) and all numbers.

Baseline rows: a flat diagonal GMM with K = 25 fitted by EM (scikit-learn GaussianMixture, k-means
initialisation), scored by its log-likelihood standardised with the same statistics; once with
reg_covar = 1e-6 (scikit-learn's default) and once with reg_covar = 0.05 (our variance floor).

Usage: python benchmarks/outlier_table.py [--datasets mnist fashion-mnist] [--archs 1L 2L-c] [--out docs]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.mixture import GaussianMixture

from dcgmm import DCGMM, PRESETS, TrainConfig, Trainer, load_dataset, load_model, save_model
from dcgmm.outliers import RunningMoments, fit_statistics, image_scores, outlier_curve
from dcgmm.plots import plot_outlier_curves

INLIERS, OUTLIERS = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]


def dcgmm_curve(arch: str, dataset: str, run: Path, train: np.ndarray, inliers, outliers, epochs: int) -> dict:
    if (run / "model.safetensors").exists():
        model, trained = load_model(run), None
    else:
        start = time.perf_counter()
        model = DCGMM.from_spec(arch)
        Trainer(model, TrainConfig(epochs=epochs), train).fit(progress=False)
        trained = time.perf_counter() - start
    start = time.perf_counter()
    fit_statistics(model, train, source=f"{dataset} train classes 0-4")
    save_model(model, run)
    curve = outlier_curve(image_scores(model, inliers), image_scores(model, outliers))
    curve["seconds_train"] = trained
    curve["seconds_statistics_and_scoring"] = time.perf_counter() - start
    return curve


def em_curve(train: np.ndarray, inliers, outliers, reg_covar: float) -> dict:
    start = time.perf_counter()
    flat = lambda x: x.reshape(len(x), -1).astype(np.float64)
    gmm = GaussianMixture(25, covariance_type="diag", reg_covar=reg_covar, max_iter=100, random_state=0).fit(flat(train))
    moments = RunningMoments(())
    moments.update(gmm.score_samples(flat(train)))
    std = np.sqrt(max(moments.variance, 1e-6))
    z = lambda x: (gmm.score_samples(flat(x)) - moments.mean) / std
    curve = outlier_curve(z(inliers), z(outliers))
    curve["seconds_train"] = time.perf_counter() - start
    return curve


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--archs", nargs="+", default=list(PRESETS))
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--runs", default="runs/outliers", help="run folders, one per dataset and architecture")
    parser.add_argument("--out", default="docs", help="writes img/outliers-<dataset>.png and outliers.json here")
    parser.add_argument("--no-em", action="store_true", help="skip the EM baselines")
    args = parser.parse_args()
    out = Path(args.out)
    report = out / "outliers.json"
    results = json.loads(report.read_text()) if report.exists() else {}  # other datasets' results are kept
    for dataset in args.datasets:
        train, _ = load_dataset(dataset, "train", INLIERS)
        inliers, _ = load_dataset(dataset, "test", INLIERS)
        outliers, _ = load_dataset(dataset, "test", OUTLIERS)
        curves = {}
        for arch in args.archs:
            curves[arch] = dcgmm_curve(arch, dataset, Path(args.runs) / dataset / arch, train, inliers, outliers, args.epochs)
            print(f"{dataset} {arch}: AUROC {curves[arch]['auroc']:.4f}", flush=True)
        if not args.no_em:
            for reg in (1e-6, 0.05):
                name = f"EM flat K=25, reg {reg:g}"
                curves[name] = em_curve(train, inliers, outliers, reg)
                print(f"{dataset} {name}: AUROC {curves[name]['auroc']:.4f} ({curves[name]['seconds_train']:.0f} s)", flush=True)
        results[dataset] = curves
        plot_outlier_curves(curves, out / "img" / f"outliers-{dataset}.png", title=f"{dataset}: train 0-4, inliers test 0-4, outliers test 5-9")
    report.write_text(json.dumps(results, indent=1))
    names = list(next(iter(results.values())))
    print("\n| architecture | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{results[d][name]['auroc']:.3f}" if name in results[d] else "" for d in results) + " |")


if __name__ == "__main__":
    main()
