"""In-painting of damaged images: does the model find the damage, and how well does it fill it?

Uses the models of benchmarks/outlier_table.py (trained on MNIST classes 0-4; their run folders under --runs
are reused, or trained here). Each image gets one random square of 10-14 px, filled with uniform noise or
with a constant grey (0.5).

* c and coverage of the automatic damage search are chosen per architecture on 1000 damaged *training*
  images (highest mean IoU on noise squares), then everything is measured on 1000 damaged test images.
* (a) how well the located region matches the true square: IoU per image, averaged;
* (b) mean squared error over the true square after in-painting, against baselines: the training mean
  image pasted into the true square, the model in-painting with the true mask given (with and without
  marginalising the damage), and the damaged input; and the error over whole images, which also charges
  the automatic search for the good pixels it replaced.

Usage: python benchmarks/inpainting.py [--archs 2L-c 2L-e 3L-a] [--n 1000] [--out docs]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset, load_model, save_model
from dcgmm.inpainting import inpaint, occlude
from dcgmm.outliers import fit_statistics
from dcgmm.plots import plot_inpainting

CLASSES = [0, 1, 2, 3, 4]
CS = (0.5, 1.0, 1.5, 2.0, 3.0)
COVERAGES = (0.25, 0.5, 0.75, 1.0)


def iou(found: np.ndarray, truth: np.ndarray) -> float:
    inter = (found & truth).sum((1, 2))
    union = (found | truth).sum((1, 2))
    return float((inter / union).mean())


def region_mse(images: np.ndarray, clean: np.ndarray, masks: np.ndarray) -> float:
    return float(((images - clean) ** 2)[..., 0][masks].mean())


def model_for(arch: str, run: Path, train: np.ndarray) -> DCGMM:
    if (run / "model.safetensors").exists():
        model = load_model(run)
    else:
        model = DCGMM.from_spec(arch)
        Trainer(model, TrainConfig(), train).fit(progress=False)
        save_model(model, run)
    fit_statistics(model, train, source="mnist train classes 0-4")
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["2L-c", "2L-e", "3L-a"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--runs", default="runs/outliers/mnist")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    train, _ = load_dataset("mnist", "train", CLASSES)
    test, _ = load_dataset("mnist", "test", CLASSES)
    rng = np.random.default_rng(0)
    validation = train[rng.choice(len(train), args.n, replace=False)]
    clean = test[: args.n]
    mean_image = train.mean(0)
    report = Path(args.out) / "inpainting.json"
    results = json.loads(report.read_text()) if report.exists() else {}  # other architectures' rows are kept
    for arch in args.archs:
        model = model_for(arch, Path(args.runs) / arch, train)
        damaged_val, masks_val = occlude(validation, fill="noise", seed=1)
        grid = {(c, cov): iou(inpaint(model, damaged_val, c=c, coverage=cov).masks, masks_val) for c in CS for cov in COVERAGES}
        (c, cov), best = max(grid.items(), key=lambda kv: kv[1])
        print(f"{arch}: validation IoU {best:.3f} at c={c}, coverage={cov}", flush=True)
        rows = {"c": c, "coverage": cov, "validation_iou": best}
        for fill in ("noise", 0.5):
            damaged, masks = occlude(clean, fill=fill, seed=2)
            start = time.perf_counter()
            auto = inpaint(model, damaged, c=c, coverage=cov)
            seconds = time.perf_counter() - start
            given = inpaint(model, damaged, mask=masks)
            paper = inpaint(model, damaged, mask=masks, marginalize=False)
            row = {
                "iou": iou(auto.masks, masks),
                "replaced_fraction": float(auto.masks.mean()),
                "true_fraction": float(masks.mean()),
                "mse_auto": region_mse(auto.images, clean, masks),
                "mse_true_mask": region_mse(given.images, clean, masks),
                "mse_true_mask_not_marginalised": region_mse(paper.images, clean, masks),
                "mse_mean_image": region_mse(np.where(masks[..., None], mean_image[None], damaged), clean, masks),
                "mse_damaged": region_mse(damaged, clean, masks),
                "mse_whole_image_auto": float(((auto.images - clean) ** 2).mean()),
                "mse_whole_image_true_mask": float(((given.images - clean) ** 2).mean()),
                "mse_whole_image_damaged": float(((damaged - clean) ** 2).mean()),
                "seconds_auto": seconds,
            }
            rows[f"fill {fill}"] = row
            print(f"  fill {fill}: IoU {row['iou']:.3f}; MSE in the square: auto {row['mse_auto']:.4f}, true mask "
                  f"{row['mse_true_mask']:.4f} (not marginalised {row['mse_true_mask_not_marginalised']:.4f}), "
                  f"mean image {row['mse_mean_image']:.4f}, damaged {row['mse_damaged']:.4f}; whole image: auto "
                  f"{row['mse_whole_image_auto']:.4f}, true mask {row['mse_whole_image_true_mask']:.4f}, damaged "
                  f"{row['mse_whole_image_damaged']:.4f}; {seconds:.1f} s", flush=True)
            plot_inpainting(damaged, auto.masks, auto.images, Path(args.out) / "img" / f"inpainting-{arch}-{fill}.png", clean=clean,
                            title=f"{arch}: damage located by the model (c={c}, coverage={cov}), fill {fill}")
        results[arch] = rows
    report.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
