"""Two trainings on the same cores: each one's time against one alone, by default and with a fixed thread count.

Runs `dcgmm train --arch 2L-c --dataset mnist` (full MNIST, default settings, --epochs E) as separate processes:
once alone, then twice side by side. By default `dcgmm train` drops to one thread while its cores are shared
(dcgmm.threads.ThreadGovernor); with `--threads N` it keeps N threads whatever happens, as dcgmm did before —
that row (`--fixed`) is slow side by side (~28x), so it is measured only when asked for. Prints the training
time each process reports ("trained in ... s") and the ratio to the same setting alone.

Usage: python benchmarks/shared_machine.py [--epochs 3] [--fixed]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time


def start(out: str, epochs: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "dcgmm.cli", "train", "--arch", "2L-c", "--dataset", "mnist", "--epochs", str(epochs),
               "--out", out, "--quiet", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def seconds(process: subprocess.Popen) -> float:
    output = process.communicate()[0]
    if process.returncode != 0:
        raise SystemExit(f"training failed:\n{output}")
    return float(re.search(r"trained in ([0-9.]+) s", output).group(1))


def measure(epochs: int, extra: list[str], label: str, pair: bool = True) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        alone = seconds(start(f"{tmp}/alone", epochs, extra))
        if not pair:
            print(f"{label}: alone {alone:.1f} s", flush=True)
            return alone
        processes = [start(f"{tmp}/a", epochs, extra), start(f"{tmp}/b", epochs, extra)]
        both = [seconds(p) for p in processes]
    print(f"{label}: alone {alone:.1f} s; side by side {both[0]:.1f} s and {both[1]:.1f} s = "
          f"{both[0] / alone:.2f}x and {both[1] / alone:.2f}x", flush=True)
    return alone


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fixed", action="store_true", help="also run the fixed-thread pair (slow: ~28x)")
    args = parser.parse_args()
    start_time = time.perf_counter()
    cores = len(os.sched_getaffinity(0))
    print(f"2L-c on full MNIST, {args.epochs} epochs per run, {cores} cores", flush=True)
    governed = measure(args.epochs, [], "default (threads follow the load)")
    fixed = measure(args.epochs, ["--threads", str(cores)], f"--threads {cores} (fixed)", pair=args.fixed)
    print(f"a run alone, default against fixed threads: {governed / fixed:.2f}x")
    print(f"total {time.perf_counter() - start_time:.0f} s")


if __name__ == "__main__":
    main()
