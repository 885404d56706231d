"""Training from a .npy larger than the memory the process may use: `dcgmm train --data` under a memory cap.

Writes a uint8 .npy of 28x28 digits (MNIST training digits, each shifted by a random offset of up to 2
pixels, repeated until the file has --size-gib), then, inside a Linux memory cgroup capped at --limit-mib:

1. `dcgmm train --data FILE` (memory-mapped, a batch at a time): must finish, with outlier statistics
   over the whole file;
2. the control, `numpy.load(FILE)` (the whole array in memory): must be killed by the cap.

Prints the file size, the cap, each command's exit status, peak resident memory and time. Needs root and
the cgroup memory controller (v1 or v2); it says so and stops if either is missing.

Usage: sudo python benchmarks/memmap_limit.py [--size-gib 2] [--limit-mib 1024] [--arch 1L] [--work /tmp/dcgmm-memmap]
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dcgmm import load_dataset

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


def write_digits(path: Path, size_gib: float, seed: int = 0) -> int:
    """A (N, 28, 28) uint8 .npy of shifted MNIST digits, N chosen for size_gib; written chunk by chunk."""
    digits, _ = load_dataset("mnist", "train")
    digits = (digits[..., 0] * 255).round().astype(np.uint8)
    n = int(size_gib * 2**30) // (28 * 28)
    rng = np.random.default_rng(seed)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 28, 28))
    for start in range(0, n, len(digits)):
        block = digits[: min(len(digits), n - start)]
        dy, dx = rng.integers(-2, 3, size=2)
        array[start : start + len(block)] = np.roll(block, (dy, dx), axis=(1, 2))
    array.flush()
    del array
    # written pages stay cached and charged to this process's group: evict them, so the capped run reads the file
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return n


def make_cgroup(name: str, limit: int) -> Path:
    """A memory cgroup capped at ``limit`` bytes (swap included where the kernel accounts it)."""
    if (V1 / "memory.limit_in_bytes").exists():
        group = V1 / name
        group.mkdir(exist_ok=True)
        (group / "memory.limit_in_bytes").write_text(str(limit))
        swap = group / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(limit))
        return group
    if "memory" in (V2 / "cgroup.controllers").read_text().split():
        group = V2 / name
        group.mkdir(exist_ok=True)
        (group / "memory.max").write_text(str(limit))
        (group / "memory.swap.max").write_text("0")
        return group
    raise RuntimeError("no cgroup memory controller")


def run_capped(group: Path, command: list[str]) -> tuple[int, float, float | None]:
    """Run ``command`` inside ``group``; returns exit status, seconds and the group's peak charge in MiB.

    The charge counts the process's memory and the page cache it fills (the pages of the memory-mapped file
    it has read), so it shows the cap at work; the process's own RSS also counts mapped file pages, which
    the kernel drops again under the cap, and says less.
    """
    peak_file = group / ("memory.max_usage_in_bytes" if (group / "memory.max_usage_in_bytes").exists() else "memory.peak")
    if peak_file.name == "memory.max_usage_in_bytes":
        peak_file.write_text("0")
    start = time.perf_counter()

    def enter():
        (group / "cgroup.procs").write_text(str(os.getpid()))

    process = subprocess.run(command, preexec_fn=enter, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    peak = int(peak_file.read_text()) / 2**20 if peak_file.exists() else None
    tail = "\n".join(process.stdout.strip().splitlines()[-4:])
    print(f"  $ {' '.join(command)}\n  exit status {process.returncode}, {seconds:.0f} s\n    " + tail.replace("\n", "\n    "))
    return process.returncode, seconds, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=2.0, help="size of the .npy (default: %(default)s)")
    parser.add_argument("--limit-mib", type=int, default=1024, help="memory cap of the commands (default: %(default)s)")
    parser.add_argument("--arch", default="1L", help="architecture to train (default: %(default)s)")
    parser.add_argument("--work", default="/tmp/dcgmm-memmap", help="folder for the .npy and the run (default: %(default)s)")
    args = parser.parse_args()
    if not args.size_gib * 1024 > args.limit_mib > 0:
        sys.exit(f"--size-gib {args.size_gib} must exceed --limit-mib {args.limit_mib} (both positive): the file must not fit under the cap")
    if os.geteuid() != 0:
        sys.exit("memmap_limit.py needs root to create a memory cgroup; run it with sudo (or as root in a container)")
    try:
        group = make_cgroup("dcgmm-memmap", args.limit_mib * 2**20)
    except (OSError, RuntimeError) as error:
        sys.exit(f"cannot create a memory cgroup ({error}); this benchmark needs the cgroup memory controller")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "digits.npy"
    try:
        ok = measure(args, group, path, work)
    finally:  # the multi-GiB file and the cgroup go, however the run ends
        path.unlink(missing_ok=True)
        group.rmdir()
    sys.exit(0 if ok else 1)


def measure(args, group: Path, path: Path, work: Path) -> bool:
    """Write the file, run both commands under the cap, print the result; True if training finished and the control was killed."""
    n = write_digits(path, args.size_gib)
    size = path.stat().st_size
    print(f"{path}: {n} images, {size / 2**30:.2f} GiB; memory cap {args.limit_mib} MiB ({size / (args.limit_mib * 2**20):.1f}x smaller)")

    print("1. dcgmm train --data (memory-mapped):")
    train = [sys.executable, "-m", "dcgmm.cli", "train", "--data", str(path), "--arch", args.arch, "--epochs", "1",
             "--out", str(work / "run"), "--overwrite", "--quiet"]
    train_status, train_seconds, train_peak = run_capped(group, train)
    print("2. control, numpy.load of the whole file:")
    load = [sys.executable, "-c", f"import numpy as np; a = np.load({str(path)!r}); print('loaded', a.shape, int(a[-1].sum()))"]
    load_status, _, _ = run_capped(group, load)

    print(f"\nresult: training under the {args.limit_mib} MiB cap "
          f"{'finished' if train_status == 0 else f'FAILED (status {train_status})'} in {train_seconds:.0f} s "
          f"(peak memory charged to the cgroup: {'unknown' if train_peak is None else f'{train_peak:.0f} MiB'}); numpy.load "
          f"{'was killed by the cap' if load_status != 0 else 'was NOT stopped by the cap'} (status {load_status})")
    return train_status == 0 and load_status != 0

if __name__ == "__main__":
    main()
