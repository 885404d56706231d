"""Where a training step's time goes: a torch.profiler table of one architecture's steps on MNIST, batch 100.

Trains ``--arch`` (default 2L-c) with the default settings on the first 5 000 MNIST training images for
``--warm`` steps (by default 4 500, past the annealing kernel and into phase 2 for 2L-c and 3L-a), times
3 × 200 more, then profiles ``--steps`` more (default 300) and prints every operator's self time per step (microseconds) with its
calls per step, largest first. The C loops of ``dcgmm.native`` are called through ctypes, which the profiler does
not see: they are wrapped here in ``record_function`` and show as ``native::<name>``. ``--shapes`` groups the
rows by input shape (the profiler's bookkeeping then inflates the times).

Usage: python benchmarks/profile_step.py [--arch 2L-c] [--warm 4500] [--steps 300] [--rows 30] [--shapes]
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from dcgmm import DCGMM, TrainConfig, Trainer, load_dataset, native

LOOPS = ("gaussian_terms", "gradients", "square_features", "winners", "window_sums", "winner_sums")


def wrap_native_loops() -> None:
    for name in LOOPS:
        loop = getattr(native, name)

        def timed(*args, _loop=loop, _name=name, **kwargs):
            with record_function(f"native::{_name}"):
                return _loop(*args, **kwargs)

        setattr(native, name, timed)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="2L-c")
    parser.add_argument("--warm", type=int, default=4500, help="steps before timing (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=300, help="steps profiled (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--shapes", action="store_true", help="one row per operator and input shape")
    args = parser.parse_args()
    if args.warm < 0 or args.steps < 1 or args.rows < 1:
        parser.error("--warm must be 0 or more, --steps and --rows 1 or more")
    wrap_native_loops()
    images, _ = load_dataset("mnist", "train")
    batches = torch.as_tensor(images[:5000]).float().split(100)
    trainer = Trainer(DCGMM.from_spec(args.arch), TrainConfig(epochs=25), images)
    step = 0

    def run(steps: int) -> None:
        nonlocal step
        for _ in range(steps):
            trainer.train_step(batches[step % len(batches)], None)
            step += 1

    run(args.warm)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        run(200)
        timings.append((time.perf_counter() - start) / 200 * 1e3)
    print(f"{args.arch}, torch {torch.__version__}, {torch.get_num_threads()} threads; dcgmm.native: {native.status()}")
    print(f"after {args.warm} steps: {', '.join(f'{t:.2f}' for t in timings)} ms per step (3 x 200 steps, not profiled)")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as profiler:
        run(args.steps)
    events = sorted(profiler.key_averages(group_by_input_shape=args.shapes), key=lambda e: -e.self_cpu_time_total)
    print(f"{'operator':34s} {'us/step':>9s} {'calls/step':>10s}" + ("  input shapes" if args.shapes else ""))
    for event in events[: args.rows]:
        shapes = f"  {event.input_shapes}" if args.shapes else ""
        print(f"{event.key:34s} {event.self_cpu_time_total / args.steps:9.1f} {event.count / args.steps:10.1f}{shapes}")
    print(f"{'all operators':34s} {sum(e.self_cpu_time_total for e in events) / args.steps:9.1f}")


if __name__ == "__main__":
    main()
