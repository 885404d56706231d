"""Which path trains a Folding + GMM pair faster: unfolding the windows, or one convolution?

For every Folding layer followed by a GMM layer in Table I's architectures, on the layer's real input (a
batch of 100 MNIST training digits passed up an untrained model), times one training step of the GMM layer
both ways — ``Folding`` then ``GMM.training_step`` (the windows unfolded into a (positions, fy*fx*C) tensor)
and ``GMM.folded_training_step`` (``dcgmm.layers.gmm.folded_max_component_step``: convolutions, no
unfolded tensor) — alternating the two, median of 9 rounds of 3 steps. Prints both times, the largest
relative difference of the gradients (float32 rounding, and components that tie up to rounding), how many
windows cover a pixel (``fy*fx / (sy*sx)``, the overlap), and which path the trainer takes (``dcgmm.training.fused_layers``).

Usage: python benchmarks/fused_layers.py [--rounds 9]
"""

import argparse
import statistics
import time

import torch

from dcgmm import DCGMM, load_dataset
from dcgmm.layers import Folding
from dcgmm.spec import PRESETS
from dcgmm.training import fused_layers


def timed(step, repeats: int = 3) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats * 1000


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    images, _ = load_dataset("mnist", "train")
    x = torch.as_tensor(images[:100])
    print(f"{'arch':5s} {'fold':14s} {'input':13s} {'overlap':>9s} {'unfolded':>9s} {'convolution':>11s}  grad diff  trainer takes")
    for name, spec in PRESETS.items():
        model = DCGMM.from_spec(spec)
        fused, stack, h = fused_layers(model), model.stack, x
        for index, layer in enumerate(stack):
            if isinstance(layer, Folding) and index + 1 < len(stack) and stack[index + 1].is_mixture:
                gmm, h_in = stack[index + 1], h
                unfolded = lambda: gmm.training_step(layer(h_in), None)
                convolution = lambda: gmm.folded_training_step(h_in, layer, None)
                diff = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                           for a, b in zip(unfolded()[2], convolution()[2]))
                times = {"unfolded": [], "convolution": []}
                for _ in range(args.rounds):
                    times["unfolded"].append(timed(unfolded))
                    times["convolution"].append(timed(convolution))
                (fy, fx), (sy, sx) = layer.kernel, layer.stride
                positions = layer.out_shape[0] * layer.out_shape[1]
                overlap = f"{fy * fx / (sy * sx):.2f}" if positions > 1 else "1 window"
                print(f"{name:5s} {layer.spec():14s} {str(tuple(h_in.shape[1:])):13s} {overlap:>9s} "
                      f"{statistics.median(times['unfolded']):7.3f} ms {statistics.median(times['convolution']):9.3f} ms  "
                      f"{diff:9.1e}  {'convolution' if index + 1 in fused else 'unfolded'}", flush=True)
            h = layer(h)


if __name__ == "__main__":
    main()
