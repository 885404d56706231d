"""Fused C loops for the training step of GMM layers, built on first use with the system C compiler.

A training step of 2L-c is ~150 short operations, and most of its time goes to element-wise passes over
memory, not to arithmetic (docs/benchmarks.md). ``native.c`` does six of them in one pass each: the
Gaussian terms of a layer's parameters (:func:`gaussian_terms`), the gradients (:func:`gradients`), the
convolution's input ``[x^2, x]`` (:func:`square_features`), the winners of a log joint's rows with its
responsibilities and the winners' counts (:func:`winners`, which replaces a max, six element-wise passes and a
bincount), the per-component sums of the winners' windows (:func:`window_sums`, which replaces the one-hot map
and the convolution's weight gradient) and of the winners' rows (:func:`winner_sums`, two index-adds). The
PyTorch code in :mod:`dcgmm.layers.gmm` stays the reference (tests/test_native.py compares them) and the
fallback.

Where PyTorch runs on GNU OpenMP (libgomp, as its Linux wheels do), the library is built with ``-fopenmp`` and
links to the libgomp already loaded: the loops then split their work (where it is large enough to pay) over
``torch.get_num_threads()`` threads of PyTorch's own thread pool, so a run never has two pools and
``--threads`` (or the thread governor of :mod:`dcgmm.threads`) limits them as it limits PyTorch. Elsewhere they
run on one thread. (Python threads calling the loops were slower: PyTorch's idle OpenMP threads spin against
them.)

The library is compiled with ``$CC`` (else ``cc``) for this CPU (``-march=native``) into
``~/.cache/dcgmm/native`` (or ``$DCGMM_NATIVE_DIR``), under a name hashed from the source, the flags, the compiler and
the CPU, so that a cache shared between machines never loads a library built for another CPU. Where no
compiler works, or with ``DCGMM_NATIVE=0``, training uses the PyTorch path (same results up to rounding,
slower); :func:`status` says which.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-shared", "-fPIC"]
VECTOR_MATH = ["-DDCGMM_VECTOR_MATH", "-lmvec"]
"""With glibc's vector math library (x86-64 and arm64 Linux); tried first, then without."""
OPENMP = ["-fopenmp"]
"""On PyTorch's OpenMP threads (:func:`_torch_uses_libgomp`); tried first, then without."""
MAX_COMPONENTS = 1024
""":func:`winners` keeps a block of 16 rows on the stack (64 KB at this K); beyond it the PyTorch path."""

_library: ctypes.CDLL | None = None
_status: str | None = None
_disabled = 0


def _cache_folder() -> Path:
    return Path(os.environ.get("DCGMM_NATIVE_DIR") or Path.home() / ".cache" / "dcgmm" / "native").expanduser()


def _cpu_signature() -> str:
    """The CPU's model and feature flags (``-march=native`` depends on them)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _torch_uses_libgomp() -> bool:
    """Whether the OpenMP runtime in this process is GNU's libgomp alone (PyTorch's Linux wheels bring one, loaded
    with torch): a library built with ``-fopenmp`` then shares it instead of starting a second thread pool."""
    try:
        with open("/proc/self/maps") as handle:
            names = {Path(line.split()[-1]).name for line in handle if line.rstrip().endswith(".so") or ".so." in line}
    except OSError:
        return False
    runtimes = {name for name in names if re.match(r"lib(g|i)?omp", name)}
    return bool(runtimes) and all(name.startswith("libgomp") for name in runtimes)


def _compiler() -> str | None:
    name = os.environ.get("CC", "cc").split()[0]
    return shutil.which(name)


def _variants() -> list[list[str]]:
    """Extra flags to try, best first."""
    threads = [OPENMP] if _torch_uses_libgomp() else []
    return [*(t + VECTOR_MATH for t in threads), *threads, VECTOR_MATH, []]


def _build(compiler: str, version: str, extra: list[str]) -> tuple[Path | None, str]:
    """Compile native.c with ``extra`` flags (or reuse the cached build): the library's path and whether it was
    built now, or None and the compiler's last line of error."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join(s.encode() for s in [version, _cpu_signature(), " ".join(FLAGS + extra)]) + source)
    target = _cache_folder() / f"native-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target, ""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:  # built aside, then renamed into place
        partial = Path(scratch) / target.name
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(partial), *extra, "-lm"],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            return None, (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        os.replace(partial, target)
    return target, "built now"


def library() -> ctypes.CDLL | None:
    """The loaded C library, or None (then :func:`status` says why); built and loaded once per process: the first
    of :func:`_variants` that builds and loads."""
    global _library, _status
    if _status is not None:
        return _library
    if os.environ.get("DCGMM_NATIVE", "1") == "0":
        _status = "PyTorch path (DCGMM_NATIVE=0)"
        return None
    compiler = _compiler()
    if compiler is None:
        _status = "PyTorch path: no C compiler (set CC, or install one, for the faster native kernels)"
        return None
    error = "no variant"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
        for extra in _variants():
            path, note = _build(compiler, version, extra)
            if path is None:
                error = f"{compiler} could not build {SOURCE.name}: {note}"
                continue
            try:
                _library = _load(path)
            except (OSError, AttributeError) as failure:  # AttributeError: a library without a loop
                error = f"the native kernels failed to load ({failure})"
                continue
            threads = "on PyTorch's OpenMP threads" if OPENMP[0] in extra else "on one thread"
            _status = f"native kernels {threads}{', built now' if note else ''} ({path})"
            return _library
    except (OSError, subprocess.SubprocessError) as failure:
        error = f"the native kernels failed to build ({failure})"
    _status = f"PyTorch path: {error}"
    return None


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    p, i, f, n = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.gaussian_terms.argtypes = [p, p, p, i, i, f, f, n, p, p, p]
    lib.gmm_gradients.argtypes = [p, p, p, p, p, p, p, i, i, f, n, p, p, p]
    lib.winners.argtypes = [p, p, i, i, f, n, p, p, p, p]
    lib.window_sums.argtypes = [p, i, i, i, i, p, i, i, i, i, i, i, i, n, p, p]
    lib.winner_sums.argtypes = [p, i, i, p, i, p, p]
    lib.square_features.argtypes = [p, i, i, n, p]
    for function in (lib.gaussian_terms, lib.gmm_gradients, lib.winners, lib.square_features):
        function.restype = None
    lib.window_sums.restype = lib.winner_sums.restype = ctypes.c_int
    return lib


def status() -> str:
    """Which path the training step takes, and why."""
    library()
    return _status


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the native kernels can take these tensors: the library loaded, not :func:`disabled`, and all of them
    float32 on the CPU."""
    return not _disabled and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and library() is not None


@contextlib.contextmanager
def disabled():
    """Within this block the training step takes the PyTorch path (for comparisons of the two)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


def _pointer(tensor: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def _inputs(*tensors: torch.Tensor, dtype=torch.float32) -> list[torch.Tensor]:
    """The tensors as the C loops read them (contiguous); refuses any not of ``dtype`` on the CPU."""
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.dtype != dtype:
            raise ValueError(f"the native kernels take {dtype} tensors on the CPU; got {tensor.dtype} on {tensor.device}")
    return [tensor.contiguous() for tensor in tensors]


def gaussian_terms(weight_logits: torch.Tensor, centroids: torch.Tensor, precision_raw: torch.Tensor,
                   variance_floor: float, tiny: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tau (K, D), b = tau mu (K, D) with entries below ``tiny`` in magnitude as 0, and c (K,) of
    :meth:`dcgmm.layers.GMM.coefficients`, from weight_logits (K,), centroids and precision_raw (K, D)."""
    weight_logits, centroids, precision_raw = _inputs(weight_logits, centroids, precision_raw)
    k, d = centroids.shape
    tau, b, c = torch.empty(k, d), torch.empty(k, d), torch.empty(k)
    library().gaussian_terms(_pointer(weight_logits), _pointer(centroids), _pointer(precision_raw), k, d,
                             -math.log(variance_floor), tiny, torch.get_num_threads(), _pointer(tau), _pointer(b), _pointer(c))
    return tau, b, c


def gradients(weight_logits, centroids, tau, b, stats_a, stats_b, mass, variance_floor: float) -> tuple[torch.Tensor, ...]:
    """The gradients of :func:`dcgmm.layers.gmm.max_component_step` with respect to (weight_logits, centroids,
    precision_raw), from the parameters, the terms ``tau``, ``b`` and the sums ``S_a``, ``S_b`` (K, D), mass (K,)."""
    inputs = _inputs(weight_logits, centroids, tau, b, stats_a, stats_b, mass)
    k, d = centroids.shape
    grad_w, grad_mu, grad_raw = torch.empty(k), torch.empty(k, d), torch.empty(k, d)
    library().gmm_gradients(*map(_pointer, inputs), k, d, variance_floor, torch.get_num_threads(), _pointer(grad_w), _pointer(grad_mu), _pointer(grad_raw))
    return grad_w, grad_mu, grad_raw


def square_features(h: torch.Tensor) -> torch.Tensor:
    """``[h^2, h]`` along the channels: (N, H, W, C) -> (N, H, W, 2C), squares first."""
    (h,) = _inputs(h)
    features = torch.empty(*h.shape[:3], 2 * h.shape[3])
    library().square_features(_pointer(h), h.numel() // h.shape[3], h.shape[3], torch.get_num_threads(), _pointer(features))
    return features


def _check_winners(code: int, n_components: int) -> None:
    """Raise for the return code -1 of the C sums: a winner outside [0, K); they stop before writing anywhere else."""
    if code != 0:
        raise ValueError(f"winners must lie in [0, {n_components})")


def winners(scores: torch.Tensor, log_joint: torch.Tensor, floor: float) -> tuple[torch.Tensor, ...]:
    """The winner of every row of ``scores`` (P, K) and the responsibilities of ``log_joint`` (P, K).

    Returns ``top`` (P,), the row maxima of ``scores`` (NaN where a row holds one), ``best`` (P,) int64 their first
    indices, ``counts`` (K,) int64 how many rows each component won, and the softmax of ``log_joint``'s rows with
    every entry raised to ``floor`` below the row's maximum (:func:`dcgmm.layers.gmm.responsibilities`); ``scores``
    is ``log_joint`` itself or its smoothing. K at most :data:`MAX_COMPONENTS`.
    """
    scores, log_joint = _inputs(scores) * 2 if log_joint is scores else _inputs(scores, log_joint)
    if scores.dim() != 2 or scores.shape != log_joint.shape or not 0 < scores.shape[1] <= MAX_COMPONENTS:
        raise ValueError(f"winners takes scores and log joint of one shape (P, K), K from 1 to {MAX_COMPONENTS}; "
                         f"got {tuple(scores.shape)} and {tuple(log_joint.shape)}")
    p, k = scores.shape
    top, best, output, counts = torch.empty(p), torch.empty(p, dtype=torch.int64), torch.empty(p, k), torch.zeros(k, dtype=torch.int64)
    library().winners(_pointer(scores), _pointer(log_joint), p, k, floor, torch.get_num_threads(), _pointer(top),
                      _pointer(best), _pointer(output), _pointer(counts))
    return top, best, counts, output


def winner_sums(x: torch.Tensor, best: torch.Tensor, n_components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-component sums of the rows of ``x`` (P, D) and of their squares, each row counted towards its winner
    ``best`` (P,) int64: returns ``S_a``, ``S_b`` (K, D)."""
    (x,), (best,) = _inputs(x), _inputs(best, dtype=torch.int64)
    if best.shape != x.shape[:1]:
        raise ValueError(f"winners {tuple(best.shape)} do not match the rows of {tuple(x.shape)}")
    stats_a, stats_b = torch.zeros(n_components, x.shape[1]), torch.zeros(n_components, x.shape[1])
    code = library().winner_sums(_pointer(x), x.shape[0], x.shape[1], _pointer(best), n_components, _pointer(stats_a), _pointer(stats_b))
    _check_winners(code, n_components)
    return stats_a, stats_b


def window_sums(features: torch.Tensor, best: torch.Tensor, window: tuple[int, int], stride: tuple[int, int],
                n_components: int) -> torch.Tensor:
    """Per-component sums of the winners' windows.

    ``features`` (N, H, W, C); ``best`` (N, H', W') int64, the winning component of each window position of a
    Folding with ``window`` (fy, fx) and ``stride`` (sy, sx). Returns (K, fy, fx, C): ``sums[k]`` is the sum of
    the windows whose winner is k.
    """
    (features,), (best,) = _inputs(features), _inputs(best, dtype=torch.int64)
    (n, h, w, c), (_, rows, cols) = features.shape, best.shape
    (fy, fx), (sy, sx) = window, stride
    if rows != (h - fy) // sy + 1 or cols != (w - fx) // sx + 1 or len(best) != n:
        raise ValueError(f"winners {tuple(best.shape)} do not match the windows {window}, stride {stride} of {tuple(features.shape)}")
    threads = torch.get_num_threads()
    sums = torch.zeros(n_components, fy, fx, c, dtype=torch.float64)  # kept in double, see native.c
    scratch = torch.empty(threads - 1, sums.numel(), dtype=torch.float64)  # the other threads' totals
    code = library().window_sums(_pointer(features), n, h, w, c, _pointer(best), rows, cols, fy, fx, sy, sx, n_components,
                                 threads, _pointer(sums), _pointer(scratch))
    _check_winners(code, n_components)
    return sums.float()
