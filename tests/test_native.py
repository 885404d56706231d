"""The fused C loops of dcgmm.native against the PyTorch path they replace, which stays the reference."""

import contextlib
import math

import pytest
import torch

from dcgmm import native
from dcgmm.layers import GMM, Folding
from dcgmm.layers.gmm import TINY_COEFFICIENT, TINY_LOG_RATIO, _gaussian_terms, _gradients, responsibilities, smoothing_kernel

from tolerance import EPS32, sum_rtol

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no native kernels here: {native.status()}")


def random_parameters(k, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight_logits = torch.randn(k, generator=gen)
    centroids = torch.rand(k, d, generator=gen)
    raw = torch.randn(k, d, generator=gen) * 8  # softplus far into both of its tails
    raw[0, :3] = torch.tensor([-40.0, 0.0, 40.0])
    centroids[1, :2] = torch.tensor([1e-25, -3e-22])  # tau * mu below TINY_COEFFICIENT: counts as 0
    return weight_logits, centroids, raw


def test_gaussian_terms_equal_the_pytorch_path():
    weight_logits, centroids, raw = random_parameters(9, 70)
    tau, b, c = native.gaussian_terms(weight_logits, centroids, raw, 0.05, TINY_COEFFICIENT)
    ref_tau, ref_b, ref_c = _gaussian_terms(weight_logits, centroids, raw, 0.05)
    # tau = exp(log tau): a rounding of log tau, absolute ~eps |log tau|, becomes a relative error of tau
    allowed = 4 * EPS32 * (1 + ref_tau.log().abs())
    assert ((tau - ref_tau).abs() <= allowed * ref_tau).all()
    assert ((b - ref_b).abs() <= allowed * ref_b.abs()).all()
    assert (b[1, :2] == 0).all() and (ref_b[1, :2] == 0).all()
    # c: sums of 70 terms each, in another order
    magnitude = float(ref_tau.log().abs().sum(1).max() + 70 * math.log(2 * math.pi))
    torch.testing.assert_close(c, ref_c, rtol=0, atol=sum_rtol(3 * 70) * magnitude)


def test_gaussian_terms_keep_a_nan_visible():
    weight_logits, centroids, raw = random_parameters(3, 5)
    raw[2, 4] = float("nan")
    tau, _, c = native.gaussian_terms(weight_logits, centroids, raw, 0.05, TINY_COEFFICIENT)
    assert math.isnan(tau[2, 4]) and math.isnan(c[2]) and torch.isfinite(c[:2]).all()


def test_gradients_equal_the_pytorch_path():
    weight_logits, centroids, raw = random_parameters(6, 40, seed=1)
    tau, b, _ = _gaussian_terms(weight_logits, centroids, raw, 0.05)
    gen = torch.Generator().manual_seed(2)
    stats_a, stats_b, mass = torch.rand(6, 40, generator=gen), torch.rand(6, 40, generator=gen), torch.rand(6, generator=gen)
    ours = native.gradients(weight_logits, centroids, tau, b, stats_a, stats_b, mass, 0.05)
    reference = _gradients(weight_logits, centroids, tau, b, stats_a, stats_b, mass, 0.05)
    assert (ours[1][b == 0] == 0).all()
    for a, r in zip(ours, reference):  # a handful of float32 products and sums per entry
        torch.testing.assert_close(a, r, rtol=16 * EPS32, atol=16 * EPS32 * float(r.abs().max()))


@pytest.mark.filterwarnings("ignore:.*leaves some pixels uncovered")
@pytest.mark.parametrize("window,stride,channels", [((3, 3), (1, 1), 1), ((4, 4), (2, 2), 3), ((4, 3), (1, 2), 2), ((8, 7), (1, 1), 1)])
def test_window_sums_equal_folding_then_a_sum_per_winner(window, stride, channels):
    gen = torch.Generator().manual_seed(5)
    h = torch.rand(4, 9, 8, channels, generator=gen)
    fold = Folding((9, 8, channels), *window, *stride)
    best = torch.randint(0, 5, (4, *fold.out_shape[:2]), generator=gen)
    sums = native.window_sums(h, best, window, stride, 5)
    assert sums.shape == (5, *window, channels)
    windows = fold(h).reshape(-1, fold.out_shape[2])  # independent: the Folding layer's windows, one loop per component
    for k in range(5):
        reference = windows[best.reshape(-1) == k].sum(0).reshape(*window, channels)
        torch.testing.assert_close(sums[k], reference, rtol=sum_rtol(best.numel()), atol=0)


def test_winner_sums_equal_a_sum_per_winner():
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(300, 37, generator=gen)
    best = torch.randint(0, 6, (300,), generator=gen)
    best[:2] = 5  # component 4 may win nothing; 5 surely wins
    stats_a, stats_b = native.winner_sums(x, best, 7)
    assert stats_a.shape == stats_b.shape == (7, 37) and (stats_a[6] == 0).all()
    for k in range(7):
        torch.testing.assert_close(stats_a[k], (x[best == k] ** 2).sum(0), rtol=sum_rtol(300), atol=0)
        torch.testing.assert_close(stats_b[k], x[best == k].sum(0), rtol=sum_rtol(300), atol=0)
    with pytest.raises(ValueError, match="do not match"):
        native.winner_sums(x, best[:10], 7)
    with pytest.raises(ValueError, match=r"lie in \[0, 5\)"):
        native.winner_sums(x, best, 5)


@pytest.mark.parametrize("channels", [1, 3])
def test_square_features_are_the_squares_then_the_values(channels):
    h = torch.rand(3, 5, 4, channels, generator=torch.Generator().manual_seed(8))
    features = native.square_features(h)
    assert features.shape == (3, 5, 4, 2 * channels)
    assert torch.equal(features[..., :channels], h * h) and torch.equal(features[..., channels:], h)


@contextlib.contextmanager
def threads(count):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("rows,k", [(1, 1), (15, 3), (16, 25), (37, 25), (200, 49), (33, 64)])
@pytest.mark.parametrize("smoothed", [False, True])
def test_winners_equal_max_bincount_and_responsibilities(rows, k, smoothed):
    gen = torch.Generator().manual_seed(rows * k)
    log_joint = torch.randn(rows, k, generator=gen) * 20
    log_joint[0, k // 2] = -1e4  # far below the row's maximum: raised to the floor
    scores = log_joint @ smoothing_kernel(k, 1.5).t() if smoothed and k > 1 else log_joint
    top, best, counts, output = native.winners(scores, log_joint, TINY_LOG_RATIO)
    ref_top, ref_best = scores.max(dim=1)
    assert torch.equal(top, ref_top) and torch.equal(best, ref_best)  # comparisons only: exact
    assert torch.equal(counts, torch.bincount(ref_best, minlength=k))
    # exp by a polynomial (~1 ulp) of the same float32 differences, then a sum of k terms and a division
    torch.testing.assert_close(output, responsibilities(log_joint, dim=1), rtol=0, atol=sum_rtol(k) + 4 * EPS32)
    assert torch.allclose(output.sum(1), torch.ones(rows), atol=sum_rtol(k))


def test_winners_take_the_first_of_equal_maxima_and_keep_a_nan_visible():
    log_joint = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, float("nan"), 5.0, 1.0]])
    top, best, counts, output = native.winners(log_joint, log_joint, TINY_LOG_RATIO)
    assert best[:2].tolist() == [1, 0] and top[:2].tolist() == [3.0, 2.0] and math.isnan(top[2])
    assert counts.sum() == 3 and torch.equal(output[1], torch.full((4,), 0.25))


def test_winners_and_window_sums_do_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(9)
    log_joint = torch.randn(1000, 25, generator=gen) * 10
    h = torch.rand(7, 12, 12, 4, generator=gen)
    best = torch.randint(0, 6, (7, 10, 10), generator=gen)
    results = []
    for count in (1, 2, 3, 8):  # 8 threads for 7 images: some get none
        with threads(count):
            results.append((native.winners(log_joint, log_joint, TINY_LOG_RATIO), native.window_sums(h, best, (3, 3), (1, 1), 6)))
    (reference, reference_sums), others = results[0], results[1:]
    for winners, sums in others:  # rows are computed one by one: bit for bit; totals are added in another order
        assert all(torch.equal(a, r) for a, r in zip(winners, reference))
        torch.testing.assert_close(sums, reference_sums, rtol=sum_rtol(700), atol=0)


def test_winners_refuse_what_they_cannot_take():
    with pytest.raises(ValueError, match="one shape"):
        native.winners(torch.zeros(4, 3), torch.zeros(4, 2), TINY_LOG_RATIO)
    with pytest.raises(ValueError, match="K from 1 to 1024"):
        native.winners(torch.zeros(4, 1025), torch.zeros(4, 1025), TINY_LOG_RATIO)
    with pytest.raises(ValueError, match="float32 tensors on the CPU; got torch.float64"):
        native.winners(torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, 3), TINY_LOG_RATIO)


def test_window_sums_refuse_winners_that_do_not_fit():
    h = torch.rand(2, 6, 6, 1)
    with pytest.raises(ValueError, match="do not match"):
        native.window_sums(h, torch.zeros(2, 3, 3, dtype=torch.int64), (3, 3), (1, 1), 4)
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        native.window_sums(h, torch.full((2, 4, 4), 4), (3, 3), (1, 1), 4)
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        native.window_sums(h, torch.full((2, 4, 4), -1), (3, 3), (1, 1), 4)
    with pytest.raises(ValueError, match="int64 tensors on the CPU; got torch.int32"):
        native.window_sums(h, torch.zeros(2, 4, 4, dtype=torch.int32), (3, 3), (1, 1), 4)
    with pytest.raises(ValueError, match="float32 tensors on the CPU; got torch.float64"):
        native.window_sums(h.double(), torch.zeros(2, 4, 4, dtype=torch.int64), (3, 3), (1, 1), 4)


def random_layer(in_shape, k, seed):
    layer = GMM(in_shape, k)
    weight_logits, centroids, raw = random_parameters(k, in_shape[2], seed)
    with torch.no_grad():
        layer.weight_logits.copy_(weight_logits)
        layer.centroids.copy_(centroids)
        layer.precision_raw.copy_(raw / 4)
    return layer


@pytest.mark.filterwarnings("ignore:.*leaves some pixels uncovered")
@pytest.mark.parametrize("sigma", [0.01, 0.8])
def test_training_steps_with_and_without_native_kernels_agree(sigma):
    """Folding + GMM as one step (window sums) and the unfolded step (terms, gradients): same results as the
    PyTorch path up to float32 rounding."""
    gen = torch.Generator().manual_seed(7)
    h = torch.rand(6, 12, 11, 2, generator=gen)
    fold = Folding((12, 11, 2), 4, 4, 2, 1)
    layer = random_layer(fold.out_shape, 8, seed=3)
    kernel = smoothing_kernel(8, sigma)
    with torch.no_grad():
        fast = [layer.folded_training_step(h, fold, kernel), layer.training_step(fold(h), kernel)]
        with native.disabled():
            slow = [layer.folded_training_step(h, fold, kernel), layer.training_step(fold(h), kernel)]
    n_terms = fold.out_shape[2] * 3
    for (objective, output, grads), (ref_objective, ref_output, ref_grads) in zip(fast, slow):
        torch.testing.assert_close(objective, ref_objective, rtol=sum_rtol(n_terms), atol=0)
        torch.testing.assert_close(output, ref_output, rtol=0, atol=sum_rtol(n_terms) * float(ref_objective.abs()))
        for a, r in zip(grads, ref_grads):  # sums over all 6 x 9 x 10 positions
            torch.testing.assert_close(a, r, rtol=sum_rtol(540), atol=sum_rtol(540) * float(r.abs().max()))


def test_status_names_the_path(monkeypatch, tmp_path):
    assert native.status().startswith("native kernels")
    monkeypatch.setattr(native, "_status", None)
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("DCGMM_NATIVE", "0")
    assert native.library() is None and native.status() == "PyTorch path (DCGMM_NATIVE=0)"
    assert not native.usable(torch.zeros(1))
    monkeypatch.setattr(native, "_status", None)
    monkeypatch.delenv("DCGMM_NATIVE")
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    monkeypatch.setenv("DCGMM_NATIVE_DIR", str(tmp_path))
    assert native.library() is None and "could not build" in native.status()
    assert list(tmp_path.rglob("*.so")) == []  # no half-written library left behind


def test_the_loops_share_pytorchs_openmp_threads_where_it_runs_on_libgomp():
    on_threads = "on PyTorch's OpenMP threads" in native.status()
    assert on_threads == native._torch_uses_libgomp()
    assert ("-fopenmp" in sum(native._variants(), [])) == on_threads


def test_a_variant_that_does_not_build_gives_way_to_the_next(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_status", None)
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("DCGMM_NATIVE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_variants", lambda: [["-fno-such-option"], []])
    assert native.library() is not None and "on one thread, built now" in native.status()
    assert len(list(tmp_path.glob("*.so"))) == 1


def test_a_library_without_the_loops_falls_back(monkeypatch):
    """A cached file that loads but lacks the loops (another build, a damaged cache) leaves the PyTorch path."""
    import ctypes.util

    other = ctypes.util.find_library("m") or ctypes.util.find_library("c")
    if other is None:
        pytest.skip("no system library to stand in for a foreign build")
    monkeypatch.setattr(native, "_status", None)
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_build", lambda compiler, version, extra: (other, ""))
    assert native.library() is None and "failed to load" in native.status()
