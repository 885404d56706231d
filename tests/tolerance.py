"""Tolerances for comparing floating-point results that were reached along different paths.

The rule used by every test: a quantity computed in a dtype with machine epsilon ``eps`` as a sum of ``n``
terms is off by at most ``n * eps / 2`` times the sum of the terms' magnitudes (Higham's bound gamma_n with
unit round-off eps / 2). Two such results reached along different paths — other batch shapes, thread
counts, CPU kernels (AVX-512 vs AVX2 matrix products), devices — may therefore differ by up to ``n * eps``
times that magnitude, and a test allows exactly that. Results reached along the same path (a rerun with
the same seed, a model saved and loaded) are compared exactly.
"""

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
"""1.19e-7: machine epsilon of float32, the precision every model computes in."""


def sum_rtol(n_terms: int, dtype=np.float32) -> float:
    """Relative tolerance between two results of a sum of ``n_terms`` terms taken in different orders."""
    return n_terms * float(np.finfo(dtype).eps)


def variance_atol(std: np.ndarray, value_error: np.ndarray) -> np.ndarray:
    """How far a variance can move when every value it is computed from moves by up to ``value_error``.

    ``Var`` of values shifted by ``d_i`` with ``|d_i| <= e`` changes by at most ``2 std e + e**2``.
    """
    return 2 * std * value_error + value_error**2
