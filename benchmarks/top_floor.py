"""The variance floor of the top GMM layer (`top_variance_floor`) against outlier AUROC, kNN-5 in the same run.

MNIST, train on classes 0-4 (30 596 images), inliers the test images of classes 0-4, outliers those of 5-9. For
each top floor and seed, 2L-c (the default architecture until 2026-12-03; ``--arch``) is trained with the default settings otherwise
(`ModelConfig(top_variance_floor=F)`, `TrainConfig(seed=S)`), and scored by the default score (the top layer's z)
and with ``shifts=1``. A floor of 0.05 is the paper's (the same floor as the pixels). Also printed: how many of
the top layer's components win at least one training image, and the training time.

``--validation`` chooses without the test split: it trains on the training images of classes 0-4 less 5000
held out (a fixed random choice), and scores those 5000 against 5000 training images of classes 5-9.

Usage: python benchmarks/top_floor.py [--floors 0.05 0.01 0.005 0.002] [--seeds 0 1 2] [--arch 2L-c] [--validation]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset
from dcgmm.baselines import knn_scorer
from dcgmm.outliers import fit_statistics, image_scores, outlier_curve


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--floors", nargs="+", type=float, default=[0.05, 0.01, 0.005, 0.002])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--arch", default="2L-c")
    parser.add_argument("--validation", action="store_true", help="score held-out training images, not the test split")
    parser.add_argument("--out", help="JSON file (default: docs/top_floor.json, or docs/top_floor_validation.json)")
    args = parser.parse_args()
    out = args.out or ("docs/top_floor_validation.json" if args.validation else "docs/top_floor.json")
    train, _ = load_dataset("mnist", "train", list(range(5)))
    if args.validation:
        rng = np.random.default_rng(0)
        order = rng.permutation(len(train))
        train, inliers = train[order[5000:]], train[order[:5000]]
        others, _ = load_dataset("mnist", "train", list(range(5, 10)))
        outliers = others[rng.choice(len(others), 5000, replace=False)]
    else:
        inliers, _ = load_dataset("mnist", "test", list(range(5)))
        outliers, _ = load_dataset("mnist", "test", list(range(5, 10)))
    knn = knn_scorer(train)
    baseline = outlier_curve(knn(inliers), knn(outliers))["auroc"]
    print(f"kNN-5 on pixels: AUROC {baseline:.4f}", flush=True)
    rows = []
    for floor in args.floors:
        for seed in args.seeds:
            model = DCGMM.from_spec(args.arch, top_variance_floor=floor)
            start = time.perf_counter()
            Trainer(model, TrainConfig(seed=seed), train).fit(progress=False)
            seconds = time.perf_counter() - start
            fit_statistics(model, train)
            used = len(np.unique(model.clusters(train)))
            top = max(i for i, _ in model.gmm_layers())
            row = {"top_floor": floor, "seed": seed, "seconds_train": seconds, "used": used,
                   "components": model.layers[top].n_components,
                   "auroc": outlier_curve(image_scores(model, inliers), image_scores(model, outliers))["auroc"],
                   "auroc_shifts1": outlier_curve(image_scores(model, inliers, shifts=1), image_scores(model, outliers, shifts=1))["auroc"]}
            rows.append(row)
            print(f"top floor {floor}, seed {seed}: AUROC {row['auroc']:.4f}, shifts=1 {row['auroc_shifts1']:.4f}, "
                  f"{used}/{row['components']} top components used, training {seconds:.0f} s", flush=True)
    Path(out).write_text(json.dumps({"arch": args.arch, "validation": args.validation, "knn5": baseline, "runs": rows}, indent=1))
    split = "held-out training images" if args.validation else "test images"
    print(f"\n{args.arch}, MNIST 0-4 vs 5-9 ({split}); kNN-5 on pixels {baseline:.4f} in the same run\n")
    print("| top floor | AUROC per seed | mean | `shifts=1` per seed | mean | top components used | training |")
    print("|---|---|---:|---|---:|---|---|")
    for floor in args.floors:
        mine = [r for r in rows if r["top_floor"] == floor]
        plain, shifted = [r["auroc"] for r in mine], [r["auroc_shifts1"] for r in mine]
        print(f"| {floor} | {' / '.join(f'{a:.4f}' for a in plain)} | {np.mean(plain):.4f} | "
              f"{' / '.join(f'{a:.4f}' for a in shifted)} | {np.mean(shifted):.4f} | "
              f"{' / '.join(str(r['used']) for r in mine)} of {mine[0]['components']} | "
              f"{min(r['seconds_train'] for r in mine):.0f}–{max(r['seconds_train'] for r in mine):.0f} s |")


if __name__ == "__main__":
    main()
