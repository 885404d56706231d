"""Training throughput of every Table I architecture against a naive reference, and how time scales.

1. For every architecture, images per second of SGD training (batch 100, random MNIST-sized images, after
   warm-up steps), with our GMM layers and with a naive reference in the same process: the reference builds
   log(pi_k N_k(x)) by broadcasting (x - mu)^2 over a (positions, K, D) tensor and differentiates it by
   autograd, the textbook way. Printed side by side with the ratio.
2. Time per training step of 2L-c-like models as a function of batch size, of K (both GMM layers), and of
   image size (the same windows on larger images); a plot.

Usage: python benchmarks/throughput.py [--steps 20] [--plot docs/img/scaling.png] [--json docs/throughput.json]
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dcgmm import DCGMM, PRESETS, TrainConfig, Trainer  # noqa: E402
from naive import BroadcastGMM, make_naive  # noqa: E402


def seconds_per_step(spec: str, shape=(28, 28, 1), batch: int = 100, steps: int = 20, naive: bool = False) -> float:
    images = torch.rand(batch * (steps + 3), *shape)
    model = DCGMM.from_spec(spec, input_shape=shape)
    if naive:
        make_naive(model, BroadcastGMM)
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=batch), images)
    torch.set_flush_denormal(True)
    for b in range(3):  # warm-up
        trainer.train_step(images[b * batch : (b + 1) * batch], None)
    start = time.perf_counter()
    for b in range(3, steps + 3):
        trainer.train_step(images[b * batch : (b + 1) * batch], None)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--plot", default="docs/img/scaling.png")
    parser.add_argument("--json", default="docs/throughput.json")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch 100, random 28x28x1 images")
    print("| architecture | ours (images/s) | naive reference (images/s) | speed-up |")
    print("|---|---|---|---|")
    table = {}
    for name in PRESETS:
        ours = 100 / seconds_per_step(name, steps=args.steps)
        naive = 100 / seconds_per_step(name, steps=max(3, args.steps // 4), naive=True)
        table[name] = {"ours": ours, "naive": naive}
        print(f"| {name} | {ours:,.0f} | {naive:,.0f} | {ours / naive:.1f}x |", flush=True)

    spec = "F(8,8,2,2) G({k}) F(11,11,1,1) G({k2})"
    scaling = {"batch": {}, "K": {}, "size": {}}
    for batch in (25, 50, 100, 200, 400, 800):
        scaling["batch"][batch] = seconds_per_step(spec.format(k=25, k2=36), batch=batch, steps=args.steps) / batch * 1e3
    for k in (9, 16, 25, 49, 100):
        scaling["K"][k] = seconds_per_step(spec.format(k=k, k2=k), steps=args.steps) / 100 * 1e3
    for size in (28, 42, 56, 84):
        fold = (size - 8) // 2 + 1  # the top fold covers the whole map, as 11x11 does on 28x28
        shape_spec = f"F(8,8,2,2) G(25) F({fold},{fold},1,1) G(36)"
        scaling["size"][size] = seconds_per_step(shape_spec, shape=(size, size, 1), steps=args.steps) / 100 * 1e3
    for key, values in scaling.items():
        print(f"ms per image vs {key}: " + ", ".join(f"{x}: {v:.3f}" for x, v in values.items()))

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    labels = {"batch": "batch size", "K": "K of both GMM layers", "size": "image side (pixels)"}
    for ax, (key, values) in zip(axes, scaling.items()):
        ax.plot(list(values), list(values.values()), marker="o")
        ax.set(xlabel=labels[key], ylabel="ms per image (training)", title=f"2L-c-like, vs {labels[key]}")
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log", base=2)
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    Path(args.json).write_text(json.dumps({"throughput": table, "ms_per_image": scaling}, indent=1))
    print(f"plot: {args.plot}; numbers: {args.json}")


if __name__ == "__main__":
    main()
