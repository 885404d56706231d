"""Sample quality of 1L, 2L-d, 2L-c and 2L-e (paper Figs. 4-7), measured instead of judged by eye.

For each dataset, each architecture is trained on classes 0-4 (25 epochs, default settings; a trained run
folder under --runs is reused). Then, for S in {1, 2, 5, 10}, with and without sharpening (1000 steps of
0.1), 1000 samples are compared with 1000 held-out test images of classes 0-4: NDB and JS divergence over
K = 100 k-means bins fitted on training images (Richardson & Weiss 2018), and the number of near-duplicate
samples (another sample within RMS distance 0.02). A row "held-out data" compares 1000 other real test
images with the same reference: the floor a perfect generator would reach.

Writes results.json, table.md and sample grids into --out; prints the table.
Usage: python benchmarks/sampling_quality.py [--datasets mnist fashion-mnist] [--out runs/sampling]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset, load_model, save_model
from dcgmm.metrics import Bins, near_duplicates
from dcgmm.plots import plot_samples
from dcgmm.sampling import Sharpening, sample

ARCHS = ["1L", "2L-d", "2L-c", "2L-e"]
S_VALUES = [1, 2, 5, 10]


def trained(arch: str, dataset: str, images: np.ndarray, runs: Path, epochs: int) -> DCGMM:
    folder = runs / f"{dataset}-{arch}"
    if (folder / "model.safetensors").exists():
        print(f"  reusing {folder}")
        return load_model(folder)
    start = time.perf_counter()
    model = DCGMM.from_spec(arch)
    Trainer(model, TrainConfig(epochs=epochs), images).fit(progress=False)
    save_model(model, folder / "model.safetensors")
    print(f"  trained {arch} on {dataset} 0-4 in {time.perf_counter() - start:.0f} s")
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--steps", type=int, default=1000, help="sharpening steps")
    parser.add_argument("--runs", default="runs/sampling-models", help="trained models are kept (and reused) here")
    parser.add_argument("--out", default="runs/sampling")
    args = parser.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for dataset in args.datasets:
        train, _ = load_dataset(dataset, "train", classes=[0, 1, 2, 3, 4])
        test, _ = load_dataset(dataset, "test", classes=[0, 1, 2, 3, 4])
        order = np.random.default_rng(0).permutation(len(test))
        reference, other = test[order[: args.n]], test[order[args.n : 2 * args.n]]
        start = time.perf_counter()
        bins = Bins(train[np.random.default_rng(1).permutation(len(train))[:20000]], n_bins=100, seed=0)
        print(f"{dataset}: k-means bins in {time.perf_counter() - start:.0f} s")
        floor = bins.compare(other, reference)
        rows.append(dict(dataset=dataset, arch="held-out data", S=None, sharpen=None, ndb=floor.ndb, js=floor.js,
                         duplicates=near_duplicates(other), seconds=0.0))
        for arch in args.archs:
            model = trained(arch, dataset, train, runs, args.epochs)
            for top_s in S_VALUES:
                for sharpen in (False, True):
                    generator = torch.Generator().manual_seed(top_s)
                    start = time.perf_counter()
                    sharpening = Sharpening(steps=args.steps) if sharpen else None
                    images = sample(model, args.n, top_s=top_s, sharpening=sharpening, generator=generator).numpy()
                    seconds = time.perf_counter() - start
                    result = bins.compare(images, reference)
                    row = dict(dataset=dataset, arch=arch, S=top_s, sharpen=sharpen, ndb=result.ndb, js=result.js,
                               duplicates=near_duplicates(images), seconds=seconds)
                    rows.append(row)
                    print(f"  {arch:5s} S={top_s:2d} sharpen={sharpen!s:5s}: NDB {row['ndb']:3d}/100  JS {row['js']:.4f}  "
                          f"duplicates {row['duplicates']:4d}  ({seconds:.1f} s)")
                    name = f"{dataset}-{arch}-S{top_s}-{'sharp' if sharpen else 'plain'}.png"
                    plot_samples(images[:100], out / name, title=f"{dataset} 0-4, {arch}, top-{top_s}, {'sharpened' if sharpen else 'not sharpened'}")
        (out / "results.json").write_text(json.dumps(rows, indent=1))

    lines = ["| dataset | architecture | S | sharpening | NDB (of 100) ↓ | JS ↓ | near-duplicates (of 1000) ↓ |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = "–" if r["S"] is None else r["S"]
        sh = "–" if r["sharpen"] is None else ("on" if r["sharpen"] else "off")
        lines.append(f"| {r['dataset']} | {r['arch']} | {s} | {sh} | {r['ndb']} | {r['js']:.4f} | {r['duplicates']} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
