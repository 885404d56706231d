"""In-painting with the library's defaults: does the model find the damage, and does it fill it better than baselines?

For every architecture (default: 2L-c64, the library's default and the README's, then 2L-c, 2L-e and 3L-a) and dataset (MNIST and
FashionMNIST, classes 0-4), a model trained with the defaults (25 epochs; run folders under --runs are
reused) in-paints 1000 test images, each with one 10-14 px square at a random place, filled with uniform
noise or with grey 0.5 (``--fills``: other values, e.g. 0 for blank-outs). ``inpaint`` runs with its defaults: the calibrated damage search and the
conditional-mean fill. The thresholds of the damage search's step 5 (dcgmm.damage) were chosen on the default
images (the first 1000 test images of 0-4, squares drawn with seed 2); ``--start 1000 --n 2000
--squares-seed 7`` measures on images they were not chosen on. Those of steps 8-10 and of step 5's rule for
overshoots were chosen on test images 1000-1999 with squares of seed 7, so for them the default images are the
held-out ones. Printed per case, and written to
``--out/inpainting.json``:

* IoU of the located region with the true square (per image, averaged), also for the paper's search and fill
  (``locate="outliers"``, Eq. 6 with c = 1, coverage 0.75, and one draw: the library's default before the
  calibrated search);
* mean squared error over the true square (pixels in [0, 1]) for: the located damage filled by the model; the
  paper's search and draw;
  the true mask filled by the model; the conditional mean of a flat EM GMM with about the model's parameter count
  given the true mask; the training mean image pasted into the true square; the mean of the 5 training images
  nearest on the known pixels (kNN-5) pasted into the true square; the damaged input;
* the error outside the square (the good pixels the search replaced pay for it there);
* seconds for the located in-painting of the 1000 images.

Usage: python benchmarks/inpainting.py [--archs 2L-c64 2L-c 2L-e 3L-a] [--datasets mnist fashion-mnist] [--n 1000]
       [--start 0] [--squares-seed 2] [--fills noise 0.5] [--out docs]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset, load_model, save_model
from dcgmm.baselines import flat_gmm, gmm_fill, iou, knn_fill, matched_components, mean_fill, region_mse
from dcgmm.inpainting import inpaint, occlude
from dcgmm.outliers import fit_statistics
from dcgmm.plots import plot_inpainting

CLASSES = [0, 1, 2, 3, 4]
FILLS = ["noise", "0.5"]


def fill_kind(text: str) -> str:
    """An argparse type: 'noise' or a grey value in [0, 1], kept as the text that names the case."""
    if text != "noise":
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"a fill is 'noise' or a grey value in [0, 1]; got {text!r}")
    return text


def model_for(arch: str, run: Path, train: np.ndarray, source: str) -> tuple[DCGMM, float]:
    start = time.perf_counter()
    if (run / "model.safetensors").exists():
        model = load_model(run)
    else:
        model = DCGMM.from_spec(arch)
        Trainer(model, TrainConfig(), train).fit(progress=False)
    fit_statistics(model, train, source=source)  # also calibrates the damage search on the training images
    save_model(model, run)
    return model, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["2L-c64", "2L-c", "2L-e", "3L-a"])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--start", type=int, default=0, help="index of the first test image of classes 0-4 (default: %(default)s)")
    parser.add_argument("--squares-seed", type=int, default=2, help="seed of the squares' sizes, places and noise (default: %(default)s)")
    parser.add_argument("--fills", nargs="+", type=fill_kind, default=FILLS, help="'noise' or a grey value in [0, 1] per kind of square (default: %(default)s)")
    parser.add_argument("--runs", default="runs/inpainting")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    report = Path(args.out) / "inpainting.json"
    results = {}
    for dataset in args.datasets:
        train, _ = load_dataset(dataset, "train", CLASSES)
        test, _ = load_dataset(dataset, "test", CLASSES)
        clean = test[args.start : args.start + args.n]
        cases = {fill: occlude(clean, fill=fill if fill == "noise" else float(fill), seed=args.squares_seed) for fill in args.fills}
        baselines = {}
        for fill, (damaged, masks) in cases.items():
            baselines[fill] = {
                "mean_image": region_mse(mean_fill(train, damaged, masks), clean, masks),
                "knn5_true_mask": region_mse(knn_fill(train, damaged, masks), clean, masks),
                "damaged": region_mse(damaged, clean, masks),
            }
        for arch in args.archs:
            model, train_seconds = model_for(arch, Path(args.runs) / dataset / arch, train, f"{dataset} train classes 0-4")
            damage = model.statistics.damage
            print(f"{dataset} {arch}: model ready in {train_seconds:.0f} s; damage search calibrated at threshold "
                  f"{damage.threshold:.3f}, min size {damage.min_size} px, {damage.measured:.1%} of {damage.count} clean "
                  f"training images flagged", flush=True)
            k = matched_components(sum(p.numel() for p in model.parameters()), int(np.prod(train.shape[1:])))
            start = time.perf_counter()
            flat = flat_gmm(train, k)
            print(f"  flat EM GMM K={k} (its parameter count) fitted in {time.perf_counter() - start:.0f} s", flush=True)
            rows = {"calibration": damage.to_dict(), "flat_gmm_k": k}
            for fill, (damaged, masks) in cases.items():
                start = time.perf_counter()
                auto = inpaint(model, damaged)
                seconds = time.perf_counter() - start
                given = inpaint(model, damaged, mask=masks)
                paper = inpaint(model, damaged, locate="outliers", fill="sample")
                row = {
                    "iou": iou(auto.masks, masks),
                    "iou_paper": iou(paper.masks, masks),
                    "mse_located": region_mse(auto.images, clean, masks),
                    "mse_paper": region_mse(paper.images, clean, masks),
                    "mse_true_mask": region_mse(given.images, clean, masks),
                    "mse_flat_gmm_true_mask": region_mse(gmm_fill(flat, damaged, masks), clean, masks),
                    **{f"mse_{k}": v for k, v in baselines[fill].items()},
                    "mse_outside_located": region_mse(auto.images, clean, ~masks),
                    "replaced_fraction": float(auto.masks.mean()),
                    "true_fraction": float(masks.mean()),
                    "seconds_located": seconds,
                }
                rows[f"fill {fill}"] = row
                print(f"  {fill}: IoU {row['iou']:.3f} (paper's search {row['iou_paper']:.3f}); MSE in the square: located "
                      f"{row['mse_located']:.4f}, paper's search and draw {row['mse_paper']:.4f}, true mask "
                      f"{row['mse_true_mask']:.4f}, flat EM GMM K={k} (true mask) {row['mse_flat_gmm_true_mask']:.4f}, mean image {row['mse_mean_image']:.4f}, kNN-5 (true mask) "
                      f"{row['mse_knn5_true_mask']:.4f}, damaged {row['mse_damaged']:.4f}; outside the square "
                      f"{row['mse_outside_located']:.4f}; {seconds:.1f} s for {len(damaged)} images", flush=True)
                plot_inpainting(damaged[:16], auto.masks[:16], auto.images[:16],
                                Path(args.out) / "img" / f"inpainting-{dataset}-{arch}-{fill}.png", clean=clean[:16],
                                title=f"{dataset} {arch}: damage located by the model, conditional-mean fill ({fill} squares)")
            results[f"{dataset} {arch}"] = rows
    report.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
