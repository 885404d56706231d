"""How many threads a training run computes with: all its cores when they are free, one when they are shared.

PyTorch's CPU kernels run on OpenMP threads, and an idle OpenMP thread spins for a while before it sleeps. A
GMM training step is ~150 short operations, so a run keeps every core it uses busy; two runs on the same
cores then take turns at every spin and slow each other down ~28x (2 epochs of 2L-c on MNIST 0-4: 3.7 s
alone, 104.6 s each side by side on 2 cores). Limiting the spinning (``GOMP_SPINCOUNT=2000``) brings two
runs to ~2x each but costs a run alone 17-30%.

:class:`ThreadGovernor` keeps the full speed of a run alone and gives way when the cores are shared: it
compares the process's CPU time with the wall time of its threads over windows of at least a quarter second;
when they get less than 3/4 of the cores they run on, it drops to one thread (no parallel regions, so no
spinning against the other process), and it goes back to all threads once a core has been idle over a
window. ``dcgmm train`` uses it unless ``--threads N`` fixes the count (docs/benchmarks.md: two default runs
side by side each take ~1.6x their time alone), and says at the end when it changed the count: a run reproduces
bit for bit with the same seed only at one thread count.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch

from .errors import InputError


def use_threads(count: int | None) -> int:
    """Compute with ``count`` threads (None: keep PyTorch's choice, one per core); returns the number in use."""
    if count is not None:
        if count < 1:
            raise InputError(f"--threads must be at least 1; got {count}")
        torch.set_num_threads(count)
    return torch.get_num_threads()


def idle_cores_seconds() -> float:
    """Idle time summed over all cores since boot, in seconds (``/proc/stat``; 0 where there is none)."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
        return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")  # idle + iowait
    except (OSError, ValueError, IndexError):
        return 0.0


class ThreadGovernor:
    """Call :meth:`step` after every training step; it sets ``torch.set_num_threads`` as described above.

    ``wall``, ``cpu`` and ``idle`` are the clocks (seconds): wall time, this process's CPU time, idle time of
    all cores — replaceable for tests.
    """

    WINDOW = 0.25
    """Shortest measuring window, seconds."""
    SHARED = 0.75
    """Below this fraction of CPU time per thread and wall second, the cores count as shared."""
    FREE = 0.8
    """Idle cores (averaged over a window) above which a core counts as free again."""

    def __init__(self, wall: Callable[[], float] = time.perf_counter, cpu: Callable[[], float] = time.process_time,
                 idle: Callable[[], float] = idle_cores_seconds):
        self.wall, self.cpu, self.idle = wall, cpu, idle
        self.full = torch.get_num_threads()
        self.changes: list[tuple[str, int]] = []
        """(``"down"`` or ``"up"``, thread count) for every change made."""
        self._mark()

    def _mark(self) -> None:
        self._wall, self._cpu, self._idle = self.wall(), self.cpu(), self.idle()

    def step(self, *_) -> None:
        wall = self.wall() - self._wall
        if wall < self.WINDOW:
            return
        cpu, idle = self.cpu() - self._cpu, (self.idle() - self._idle) / wall
        threads = torch.get_num_threads()
        if threads > 1 and cpu / (wall * threads) < self.SHARED:
            torch.set_num_threads(1)
            self.changes.append(("down", 1))
        elif threads == 1 and self.full > 1 and idle > self.FREE:
            torch.set_num_threads(self.full)
            self.changes.append(("up", self.full))
        self._mark()

    def summary(self) -> str | None:
        """What a user should know about the changes made, or None when there were none: with another thread
        count, sums are added in another order, so the run is not bit-for-bit reproducible."""
        if not self.changes:
            return None
        downs = sum(1 for direction, _ in self.changes if direction == "down")
        return (
            f"another process competed for the cores, so the run changed its thread count {len(self.changes)} time(s) "
            f"({downs} down to 1 thread): its floating-point sums ran in more than one order, and the same seed may "
            "not reproduce it bit for bit; `--threads N` fixes the count"
        )

    def restore(self) -> None:
        """Back to the thread count the governor started with."""
        torch.set_num_threads(self.full)
