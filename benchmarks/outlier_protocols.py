"""Outlier detection on four protocols, the library's default model and scores against plain baselines in one run.

Protocols (train on the first, score test images; higher score = more typical):

* ``mnist 0-4 vs 5-9``: train MNIST 0-4; inliers test 0-4, outliers test 5-9 (the paper's);
* ``fashion 0-4 vs 5-9``: the same on FashionMNIST;
* ``mnist 1-9 vs 0``: train MNIST 1-9; inliers test 1-9, outliers test 0 (the authors' follow-up);
* ``fashion vs mnist``: train all of FashionMNIST; inliers its test set, outliers the MNIST test set.

Rows: the default architecture (2L-c64, 25 epochs, default settings; ``--arch``: another) with the default score (the top layer's z)
and with ``shifts=1``; kNN-5 (minus the mean distance to the 5 nearest training images on raw pixels); PCA-50
(minus the reconstruction error); a flat diagonal GMM fitted by EM with K = 100 and variance floor 0.05
(scikit-learn; its log-likelihood). Every baseline score is standardised by its mean and standard deviation
over 2000 training images, so the c sweep means the same for all. Reported: ROC AUC and the authors' curve
area (inliers kept against outliers rejected for c in [-2, 2], trapezoids over the 41 points), and the
seconds of training and of scoring.

Usage: python benchmarks/outlier_protocols.py [--protocols ...] [--arch 2L-c64] [--runs runs/protocols] [--out docs]
(models are kept in --runs/ARCH/PROTOCOL and reused)
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset, load_model, save_model
from dcgmm.baselines import flat_gmm_scorer, knn_scorer, pca_scorer, standardised
from dcgmm.outliers import fit_statistics, image_scores, outlier_curve

PROTOCOLS = {
    "mnist 0-4 vs 5-9": (("mnist", range(5)), ("mnist", range(5)), ("mnist", range(5, 10))),
    "fashion 0-4 vs 5-9": (("fashion-mnist", range(5)), ("fashion-mnist", range(5)), ("fashion-mnist", range(5, 10))),
    "mnist 1-9 vs 0": (("mnist", range(1, 10)), ("mnist", range(1, 10)), ("mnist", [0])),
    "fashion vs mnist": (("fashion-mnist", None), ("fashion-mnist", None), ("mnist", None)),
}


def curve_area(curve: dict) -> float:
    """Area under inliers accepted (y) over outliers rejected (x), c in [-2, 2]."""
    x, y = np.asarray(curve["outliers_rejected"]), np.asarray(curve["inliers_accepted"])
    order = np.argsort(x)
    return float(np.trapezoid(y[order], x[order]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--arch", default="2L-c64")
    parser.add_argument("--runs", default="runs/protocols")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)  # before the runs, not after 15 minutes of them
    results = {}
    for name in args.protocols:
        (train_set, train_classes), (in_set, in_classes), (out_set, out_classes) = PROTOCOLS[name]
        train, _ = load_dataset(train_set, "train", None if train_classes is None else list(train_classes))
        inliers, _ = load_dataset(in_set, "test", None if in_classes is None else list(in_classes))
        outliers, _ = load_dataset(out_set, "test", None if out_classes is None else list(out_classes))
        sample = train[np.random.default_rng(0).choice(len(train), 2000, replace=False)]
        rows = {}

        def add(row: str, score, seconds_train: float | None):
            start = time.perf_counter()
            curve = outlier_curve(score(inliers), score(outliers))
            seconds = time.perf_counter() - start
            rows[row] = {"auroc": curve["auroc"], "curve_area": curve_area(curve), "seconds_train": seconds_train,
                         "seconds_score_per_1000": 1000 * seconds / (len(inliers) + len(outliers))}
            train_text = "" if seconds_train is None else f", fit {seconds_train:.0f} s"
            print(f"{name} | {row}: AUROC {curve['auroc']:.4f}, curve area {rows[row]['curve_area']:.4f}{train_text}, "
                  f"scoring {rows[row]['seconds_score_per_1000']:.2f} s / 1000 images", flush=True)

        run = Path(args.runs) / args.arch / name.replace(" ", "_")
        start, trained = time.perf_counter(), None  # None: a model of an earlier run was reused
        if (run / "model.safetensors").exists():
            model = load_model(run)
        else:
            model = DCGMM.from_spec(args.arch)
            Trainer(model, TrainConfig(), train).fit(progress=False)
            fit_statistics(model, train, source=name)
            save_model(model, run)
            trained = time.perf_counter() - start
        add(f"dcgmm {args.arch}, default score", lambda x: image_scores(model, x), trained)
        add(f"dcgmm {args.arch}, shifts=1", lambda x: image_scores(model, x, shifts=1), None)
        add("kNN-5 on pixels", standardised(knn_scorer(train), sample, skip_self=True), 0.0)
        start = time.perf_counter()
        reconstruction = pca_scorer(train)
        add("PCA-50 reconstruction", standardised(reconstruction, sample), time.perf_counter() - start)
        start = time.perf_counter()
        likelihood = flat_gmm_scorer(train)
        add("flat EM GMM K=100, var. floor 0.05", standardised(likelihood, sample), time.perf_counter() - start)
        results[name] = rows
    (Path(args.out) / "outlier_protocols.json").write_text(json.dumps(results, indent=1))
    names = list(next(iter(results.values())))
    print("\n| score | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for row in names:
        print(f"| {row} | " + " | ".join(f"{results[p][row]['auroc']:.3f} / {results[p][row]['curve_area']:.3f}" for p in results) + " |")


if __name__ == "__main__":
    main()
