"""Outlier detection with variants of 3L-a: MNIST, train on classes 0-4, outliers = test classes 5-9.

Each variant is trained from scratch (seed 0 unless it says otherwise) on the 30 596 training images of classes 0-4; the image score
is the top GMM layer's standardised log-likelihood z, as `dcgmm outliers` uses it, and AUROC is computed over the 5139
inlier and 4861 outlier test images. Prints one table row per variant (AUROC, training time).

Usage: python benchmarks/outlier_variants.py [NAME ...]    (default: every variant; --list shows them)
"""

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset
from dcgmm.outliers import fit_statistics, image_scores

LOWER = "F(3,3,1,1) G({k1}) P(2,2) F(4,4,1,1) G({k2}) P(2,2) F(5,5,1,1) G({k3})"

#: name -> (spec, variance floor, TrainConfig overrides)
VARIANTS = {
    "table-I": (LOWER.format(k1=25, k2=25, k3=49), 0.05, {}),
    "top100": (LOWER.format(k1=25, k2=25, k3=100), 0.05, {}),
    "top196": (LOWER.format(k1=25, k2=25, k3=196), 0.05, {}),
    "top100-50-epochs": (LOWER.format(k1=25, k2=25, k3=100), 0.05, {"epochs": 50}),
    "mid49-top100": (LOWER.format(k1=25, k2=49, k3=100), 0.05, {}),
    "first49-mid49-top100": (LOWER.format(k1=49, k2=49, k3=100), 0.05, {}),
    "top100-floor0.1": (LOWER.format(k1=25, k2=25, k3=100), 0.1, {}),
    "top100-floor0.2": (LOWER.format(k1=25, k2=25, k3=100), 0.2, {}),
    "floor0.02": (LOWER.format(k1=25, k2=25, k3=49), 0.02, {"rate_centroids": 0.4}),
    "top100-floor0.03": (LOWER.format(k1=25, k2=25, k3=100), 0.03, {"lr": 0.06}),
    "top100-wait0.2": (LOWER.format(k1=25, k2=25, k3=100), 0.05, {"wait": 0.2}),
    "top100-seed1": (LOWER.format(k1=25, k2=25, k3=100), 0.05, {"seed": 1}),
    "top100-seed2": (LOWER.format(k1=25, k2=25, k3=100), 0.05, {"seed": 2}),
    "top100-batch50": (LOWER.format(k1=25, k2=25, k3=100), 0.05, {"batch_size": 50}),
    "top100-precision-rate50": (LOWER.format(k1=25, k2=25, k3=100), 0.05, {"rate_precisions": 50.0}),
    "top100-lr0.05": (LOWER.format(k1=25, k2=25, k3=100), 0.05, {"lr": 0.05}),
    "top100-phase2-at-0.2": (LOWER.format(k1=25, k2=25, k3=100), 0.05, {"precisions_from": 0.2}),
    "top100-precision-rate500": (LOWER.format(k1=25, k2=25, k3=100), 0.05, {"rate_precisions": 500.0}),
    "top100-floor0.04": (LOWER.format(k1=25, k2=25, k3=100), 0.04, {"lr": 0.08}),
    "no-second-pooling-top49": ("F(3,3,1,1) G(25) P(2,2) F(4,4,1,1) G(25) F(10,10,1,1) G(49)", 0.05, {}),
    "no-second-pooling-top100": ("F(3,3,1,1) G(25) P(2,2) F(4,4,1,1) G(25) F(10,10,1,1) G(100)", 0.05, {}),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    args = parser.parse_args()
    if args.list:
        for name, (spec, floor, overrides) in VARIANTS.items():
            print(f"{name}: {spec}, variance floor {floor}, {overrides or 'defaults'}")
        return
    unknown = [n for n in args.names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; --list shows the names")
    train, train_labels = load_dataset("mnist", "train")
    test, test_labels = load_dataset("mnist", "test")
    train = train[train_labels < 5]
    inliers, outliers = test[test_labels < 5], test[test_labels >= 5]
    truth = np.r_[np.ones(len(inliers)), np.zeros(len(outliers))]
    print("| variant | spec | variance floor | settings | AUROC | training |")
    print("|---|---|---|---|---|---|")
    for name in args.names or VARIANTS:
        spec, floor, overrides = VARIANTS[name]
        model = DCGMM.from_spec(spec, variance_floor=floor)
        start = time.perf_counter()
        Trainer(model, TrainConfig(**overrides), train).fit(progress=False)
        seconds = time.perf_counter() - start
        model.statistics = fit_statistics(model, train)
        auroc = roc_auc_score(truth, np.r_[image_scores(model, inliers), image_scores(model, outliers)])
        print(f"| {name} | `{spec}` | {floor} | {overrides or 'defaults'} | {auroc:.3f} | {seconds:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
