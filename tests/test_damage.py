"""The damage search: evidence against a naive computation, calibration's false-alarm rate, located squares."""

import math

import numpy as np
import pytest
import torch

from dcgmm import DCGMM, InputError, load_model, save_model
from dcgmm.damage import (
    DamageCalibration, _search, calibrate, check_calibration, flags, clean_up, default_min_size, drop_rare_values, drop_smooth_pixels,
    add_noise_lines, flat_patches, flat_threshold, flat_window_evidence, line_residual, locate_damage, peel_smooth_edges, pixel_evidence, residual,
    rough_patches, rough_threshold, roughness, small_size,
)
from dcgmm.inpainting import inpaint, occlude
from dcgmm.outliers import fit_statistics


def naive_evidence(model, image: torch.Tensor) -> torch.Tensor:
    """One image (H, W, 1) of a F G F G model, by loops: the top posterior, the prior at every lower position,
    and per pixel the mean over covering windows of log sum_k prior_k N(x; mu_kd, sigma_kd^2)."""
    fold, gmm, top_fold, top = model.layers
    (fy, fx), (sy, sx) = fold.kernel, fold.stride
    hp, wp, _ = gmm.in_shape
    windows = torch.stack([torch.stack([image[i * sy : i * sy + fy, j * sx : j * sx + fx, 0].reshape(-1) for j in range(wp)]) for i in range(hp)])
    responsibilities = torch.softmax(gmm.log_joint(windows[None])[0], -1)  # [H', W', K]
    top_in = responsibilities.reshape(1, 1, 1, -1)  # F(H',W',1,1): the whole map, channels last
    posterior = torch.softmax(top.log_joint(top_in)[0, 0, 0], -1)  # [T]
    prior = (posterior[:, None] * top.centroids).sum(0).reshape(hp, wp, -1).clamp_min(0)
    prior = prior / prior.sum(-1, keepdim=True)
    normal = torch.distributions.Normal(gmm.centroids, gmm.variances.sqrt())  # [K, D]
    total, count = torch.zeros(image.shape[:2], dtype=torch.float64), torch.zeros(image.shape[:2], dtype=torch.float64)
    for i in range(hp):
        for j in range(wp):
            log_p = normal.log_prob(windows[i, j][None])  # [K, D]
            per_dim = torch.logsumexp(torch.log(prior[i, j])[:, None] + log_p, 0).reshape(fy, fx)
            total[i * sy : i * sy + fy, j * sx : j * sx + fx] += per_dim.double()
            count[i * sy : i * sy + fy, j * sx : j * sx + fx] += 1
    return (total / count.clamp_min(1)).float()


def test_pixel_evidence_equals_a_naive_computation(trained):
    model, train = trained
    x = torch.as_tensor(train[:3])
    with torch.no_grad():
        fast = pixel_evidence(model, x)
        naive = torch.stack([naive_evidence(model, image) for image in x])
    assert fast.shape == (3, 8, 8) and torch.isfinite(fast).all()
    torch.testing.assert_close(fast, naive, rtol=1e-4, atol=1e-4)  # float32 sums of up to K terms, different order


def test_clean_up_keeps_areas_and_drops_thin_lines():
    candidates = torch.zeros(1, 12, 12, dtype=torch.bool)
    candidates[0, 2:7, 2:7] = True  # a 5x5 area with a hole
    candidates[0, 4, 4] = False
    candidates[0, 10, :] = True  # a line one pixel thick, 3 rows away
    kept = clean_up(candidates, 3)[0]
    expected = torch.zeros(12, 12, dtype=torch.bool)
    expected[2:7, 2:7] = True
    assert torch.equal(kept, expected)


def test_a_constant_patch_drops_the_strokes_that_touch_it_and_noise_keeps_its_area():
    images = torch.zeros(3, 16, 16, 1)
    images[:, 3:8, 2:14] = 1.0  # a thick stroke
    found = torch.zeros(3, 16, 16, dtype=torch.bool)
    found[:, 7:14, 4:12] = True  # the area found: the patch and the stroke row above it
    images[0, 8:14, 4:12] = 0.5  # image 0: a constant grey patch under the stroke
    images[1, 8:14, 4:12] = torch.rand(6, 8, 1, generator=torch.Generator().manual_seed(0))  # image 1: noise
    images[2, 8:14, 4:12] = torch.linspace(0, 0.9, 8)[None, :, None]  # image 2: no value dominates
    kept = drop_rare_values(found, images)
    expected = found.clone()
    expected[0, 7] = False  # 8 stroke pixels (value 1) against the patch's 48 (< 0.3 x 48): rare in it
    assert torch.equal(kept, expected)
    assert torch.equal(drop_rare_values(torch.zeros_like(found), images), torch.zeros_like(found))


def naive_residual(x: torch.Tensor) -> np.ndarray:
    """|v - median of the 3x3 neighbourhood (edges replicated)| / value range, v the mean over channels, by loops."""
    v = x.mean(-1).numpy()
    n, h, w = v.shape
    out = np.zeros((n, h, w))
    for k in range(n):
        padded = np.pad(v[k], 1, mode="edge")
        out[k] = [[abs(v[k, i, j] - np.median(padded[i : i + 3, j : j + 3])) for j in range(w)] for i in range(h)]
        out[k] /= v[k].max() - v[k].min()
    return out


def test_residual_and_roughness_equal_a_naive_computation():
    x = torch.rand(2, 6, 7, 3, generator=torch.Generator().manual_seed(2)) * 2.0
    expected = naive_residual(x)
    np.testing.assert_allclose(residual(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    padded = np.pad(expected, ((0, 0), (1, 1), (1, 1)), mode="edge")
    averaged = np.array([[[padded[k, i : i + 3, j : j + 3].mean() for j in range(7)] for i in range(6)] for k in range(2)])
    np.testing.assert_allclose(roughness(x).numpy(), averaged, rtol=1e-5, atol=1e-6)


def test_rough_patches_are_noise_areas_at_least_min_size_wide():
    g = torch.Generator().manual_seed(3)
    x = torch.zeros(2, 20, 20, 1)
    x[:, 2:6, 2:18] = 1.0  # a smooth thick stroke
    x[0, 8:16, 5:12] = torch.rand(8, 7, 1, generator=g)  # image 0: a 8x7 noise patch
    x[1, 8:16, 5:8] = torch.rand(8, 3, 1, generator=g)  # image 1: a noise strip too thin for min size 5
    found = rough_patches(x, 0.1, 5)
    assert not found[1].any() and not found[0, :7].any()  # no thin strip, no stroke
    truth = torch.zeros(20, 20, dtype=torch.bool)
    truth[8:16, 5:12] = True
    assert (found[0] & truth).sum() >= 0.8 * truth.sum() and (found[0] & ~truth).sum() <= 0.1 * truth.sum()
    assert not rough_patches(x, None, 5).any()
    # calibrated on these two images, a share of 0.5 lets image 0 be flagged and 0 flags neither
    assert rough_threshold(x, 0.5, 5) == pytest.approx(0.1)
    assert not rough_patches(x, rough_threshold(x, 0.0, 5), 5).any()
    dot = torch.zeros(1, 9, 9, 1)
    dot[0, 4, 4] = 1.0  # residual 1, the largest there is: at size 1 no threshold keeps it out but +inf
    assert rough_threshold(dot, 0.0, 1) == math.inf and not rough_patches(dot, math.inf, 1).any()


def test_a_noise_patch_drops_the_smooth_strokes_that_touch_it_and_a_smooth_area_is_kept():
    images = torch.zeros(2, 16, 16, 1)
    images[:, 3:8, 2:14] = 1.0  # a thick stroke
    images[0, 8:15, 4:12] = torch.rand(7, 8, 1, generator=torch.Generator().manual_seed(1))  # image 0: noise
    images[1, 8:15, 4:12] = 0.5  # image 1: a constant patch, smooth everywhere
    found = torch.zeros(2, 16, 16, dtype=torch.bool)
    found[:, 4:15, 4:12] = True  # the patch and four stroke rows above it
    kept = drop_smooth_pixels(found, images)
    assert torch.equal(kept[1], found[1])
    assert not kept[0, 4:7].any()  # the stroke's smooth rows, away from the noise
    assert kept[0, 9:14, 4:12].all()  # the noise patch
    assert torch.equal(kept & ~found, torch.zeros_like(found))


def test_an_area_mostly_of_strokes_counts_as_noise_where_step_6_found_a_noise_patch():
    images = torch.zeros(1, 20, 20, 1)
    images[0, 1:19, 1:19] = 1.0  # a thick stroke all around
    images[0, 12:18, 12:18] = torch.rand(6, 6, 1, generator=torch.Generator().manual_seed(2))  # a small noise patch
    found = torch.zeros(1, 20, 20, dtype=torch.bool)
    found[0, 1:19, 1:19] = True  # the area overshoots: its median roughness is the stroke's, about 0
    assert torch.equal(drop_smooth_pixels(found, images), found)  # judged by its roughness: not noise, kept
    patch = torch.zeros_like(found)
    patch[0, 12:18, 12:18] = True  # as step 6 finds it
    kept = drop_smooth_pixels(found, images, noise=patch)
    assert not kept[0, 3:10, 3:10].any()  # the stroke inside, away from the noise, dropped (its corners are rough)
    assert kept[0, 13:17, 13:17].all()  # the noise kept
    assert torch.equal(kept & ~found, torch.zeros_like(found))


def test_line_residual_matches_a_loop_over_the_four_lines():
    images = torch.rand(2, 7, 6, 2, generator=torch.Generator().manual_seed(3))
    v = images.mean(-1).numpy().astype(np.float64)
    expected = np.zeros(v.shape)
    for n in range(2):
        span = v[n].max() - v[n].min()
        at = lambda i, j: v[n, min(max(i, 0), 6), min(max(j, 0), 5)]  # edges replicated
        for i in range(7):
            for j in range(6):
                lines = [max(abs(v[n, i, j] - at(i + dy, j + dx)), abs(v[n, i, j] - at(i - dy, j - dx))) for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1))]
                expected[n, i, j] = min(lines) / span
    np.testing.assert_allclose(line_residual(images).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_peeling_a_noise_area_drops_the_stroke_along_its_edge_and_keeps_the_noise_and_smooth_areas():
    images = torch.zeros(2, 20, 20, 1)
    images[0, 4:15, 4:14] = torch.rand(11, 10, 1, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1  # noise
    images[0, 2:18, 14] = 1.0  # a vertical stroke along the noise's right edge
    images[1, 4:15, 4:14] = 0.5  # a constant patch, smooth everywhere
    images[1, 2:18, 14] = 1.0
    found = torch.zeros(2, 20, 20, dtype=torch.bool)
    found[:, 4:15, 4:15] = True  # the patch and the stroke beside it
    peeled = peel_smooth_edges(found, images, 5)
    assert not peeled[0, :, 14].any()  # the stroke: its neighbours along the column match it
    assert peeled[0, 4:15, 4:14].float().mean() >= 0.95  # the noise: an edge pixel lies on a smooth line by chance only
    assert torch.equal(peeled[1], found[1])  # not a noise area: kept as it is
    assert torch.equal(peeled & ~found, torch.zeros_like(found))


def test_noise_lines_join_a_noise_area_and_clean_lines_beside_it_do_not():
    images = torch.zeros(3, 20, 20, 1)
    noise = torch.rand(3, 11, 10, 1, generator=torch.Generator().manual_seed(1))
    images[:2, 4:15, 4:14] = noise[:2]  # a noise patch, rows 4-14, columns 4-13
    images[:2, 2:18, 15] = 1.0  # a stroke one column right of it
    images[2, 4:15, 4:14] = 0.5  # a constant patch
    found = torch.zeros(3, 20, 20, dtype=torch.bool)
    found[:, 4:14, 4:13] = True  # the area misses the patch's last row and last column
    found[1, 4:15, 4:14] = True  # the whole patch
    completed = add_noise_lines(found, images, 5)
    assert completed[0, 4:15, 4:14].all()  # the missed row and column joined, and the corner they leave out
    patch = torch.zeros(20, 20, dtype=torch.bool)
    patch[4:15, 4:14] = True
    assert not (completed[0] & ~patch).any()  # nothing outside the patch (the stroke beyond a clean column least of all)
    assert torch.equal(completed[1], found[1])  # the clean lines beside it and the stroke stay out
    assert torch.equal(completed[2], found[2])  # not a noise area: kept as it is
    empty = torch.zeros_like(found)
    assert torch.equal(add_noise_lines(empty, images, 5), empty)


def naive_flat_window_evidence(image: np.ndarray, evidence: np.ndarray, size: int, background: bool) -> np.ndarray:
    """One image (H, W, C) by loops: the mean evidence of each flat window not of the border's most common value
    (``background``: of it)."""
    v = image.mean(-1)
    low, span = v.min(), max(v.max() - v.min(), 1e-12)
    border = np.concatenate([v[0], v[-1], v[1:-1, 0], v[1:-1, -1]])
    counts = np.bincount(np.minimum(((border - low) / span * 100).astype(int), 99), minlength=100)
    common = low + (counts.argmax() + 0.5) / 100 * span
    h, w = v.shape
    out = np.full((h - size + 1, w - size + 1), np.inf)
    for i in range(h - size + 1):
        for j in range(w - size + 1):
            window = v[i : i + size, j : j + size]
            if window.max() - window.min() <= 0.01 * span and (abs(window.mean() - common) <= 0.01 * span) == background:
                out[i, j] = evidence[i : i + size, j : j + size].mean()
    return out


def test_flat_window_evidence_equals_a_naive_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(3, 12, 13, 2)
    x[:, 2:6, 1:9] = torch.rand(3, 4, 8, 2, generator=g)  # texture
    x[0, 5:11, 4:10] = 0.5  # image 0: a constant patch on the texture and the black background
    x[1, 6:12, 0:7] = torch.tensor([0.3, 0.7])  # image 1: constant after the mean over channels
    x[2] += 1.0  # image 2: the most common value is 1 now, the windows of 1 are background
    evidence = torch.randn(3, 12, 13, generator=g)
    for background in (False, True):
        fast = flat_window_evidence(x, evidence, 3, background)
        naive = np.stack([naive_flat_window_evidence(x[n].numpy(), evidence[n].numpy(), 3, background) for n in range(3)])
        assert fast.shape == (3, 10, 11)
        assert np.array_equal(np.isinf(fast.numpy()), np.isinf(naive))
        np.testing.assert_allclose(fast.numpy()[np.isfinite(naive)], naive[np.isfinite(naive)], rtol=1e-5, atol=1e-6)
        if not background:
            assert np.isfinite(naive[0]).sum() == 16 and np.isfinite(naive[1]).sum() == 20 and np.isfinite(naive[2]).sum() == 0


def test_flat_patches_are_the_whole_constant_patch_and_only_where_the_evidence_is_low():
    x = torch.rand(2, 16, 16, 1, generator=torch.Generator().manual_seed(1))  # texture everywhere
    x[:, 4:11, 3:9] = 0.5  # a constant 7x6 patch
    evidence = torch.zeros(2, 16, 16)
    evidence[1, 4:11, 3:9] = 2.0  # image 1: the model finds the patch probable
    found = flat_patches(x, evidence, 1.0, 5)
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:11, 3:9] = True
    assert torch.equal(found[0], expected) and not found[1].any()
    assert not flat_patches(x, evidence, None, 5).any()  # statistics from before step 6


def test_a_blank_out_is_found_where_the_model_expected_something_else():
    x = torch.zeros(2, 16, 16, 1)
    x[:, 2:14, 3:5] = 1.0  # a stroke ...
    x[0, 6:13, 2:9] = 0.0  # ... that image 0 has blanked out, in the background's value
    evidence = torch.ones(2, 16, 16)
    evidence[0, 6:13, 3:5] = -10.0  # the model expected ink there
    found = flat_patches(x, evidence, 0.0, 5, background=True)
    assert found[0, 6:13, 3:5].all() and not found[1].any()
    assert not flat_patches(x, evidence, 0.0, 5).any()  # not a flat patch of its own value


def test_a_last_round_without_the_patch_undoes_a_posterior_the_patch_fooled(monkeypatch):
    """Step 7: a blank-out makes the first posterior wrong, so most of the image is improbable in the first
    two rounds; a round that leaves out only the blank-out sees the image as it is and keeps the patch."""
    x = torch.zeros(2, 16, 16, 1)
    x[:, 2:14, 2:14] = torch.linspace(0.3, 0.9, 12)[:, None, None]  # a textured "garment" on black
    x[0, 5:10, 5:10] = 0.0  # image 0: blanked out in the background's value
    square = torch.zeros(16, 16, dtype=torch.bool)
    square[5:10, 5:10] = True
    calls = []

    def fake_evidence(model, images, missing=None):
        calls.append(None if missing is None else missing.clone())
        evidence = torch.ones(images.shape[:3])
        fooled = missing is None or missing.flatten(1).sum(1).max() > square.sum()
        evidence[:, 2:14, 2:14] = -1.0 if fooled else 1.0  # a wrong posterior: the whole garment improbable
        evidence[:, 5:10, 5:10] = -1.0  # the model never expects black inside the garment
        return evidence

    monkeypatch.setattr("dcgmm.damage.pixel_evidence", fake_evidence)
    calibration = DamageCalibration(0.0, 3, 0.1, 0.1, 100, None, None, 0.0)
    found, patches, _ = _search(None, x, calibration, None)
    assert torch.equal(patches[0], square) and not patches[1].any()
    assert torch.equal(found[0], square)  # the last round drops the garment the fooled rounds flagged
    assert found[1, 2:14, 2:14].all()  # image 1 has no patch: no last round, the rounds' area stays
    assert torch.equal(calls[-1][0], square) and len(calls[-1]) == 1  # the last round left out the patch only


def test_a_noise_square_too_small_for_the_search_is_found_where_nothing_else_is(monkeypatch):
    """Step 10: a noise square 8 px wide is missed by a search whose areas must be 9 px wide; where the search
    finds nothing, noise patches 7 px wide are the damage. An image where the search found something keeps it."""
    x = torch.zeros(3, 24, 24, 1)
    noise = torch.rand(3, 8, 8, 1, generator=torch.Generator().manual_seed(4)) * 0.8 + 0.1
    x[:2, 6:14, 6:14] = noise[:2]  # images 0 and 1: the small noise square; image 2: clean
    square = torch.zeros(24, 24, dtype=torch.bool)
    square[6:14, 6:14] = True
    found_elsewhere = torch.zeros(3, 24, 24, dtype=torch.bool)
    found_elsewhere[1, 15:24, 15:24] = True  # image 1: the rounds found an area of their own

    def fake_search(model, images, calibration, evidence):
        nothing = torch.zeros_like(found_elsewhere[: len(images)])
        return found_elsewhere[: len(images)].clone(), nothing, nothing

    monkeypatch.setattr("dcgmm.damage._search", fake_search)
    calibration = DamageCalibration(0.0, 9, 0.1, 0.1, 100, math.inf, 0.1, -math.inf, 0.1)
    assert small_size(9) == 7 and small_size(1) == 1
    located = locate_damage(None, x, calibration)
    assert located[0, 6:14, 6:14].float().mean() >= 0.9 and not (located[0] & ~square).any()
    assert torch.equal(located[1], found_elsewhere[1])  # step 10 only where nothing else was found
    assert not located[2].any()
    old = DamageCalibration(0.0, 9, 0.1, 0.1, 100, math.inf, 0.1, -math.inf)  # statistics from before step 10
    assert not locate_damage(None, x, old)[0].any()
    assert flags(None, x, calibration).tolist() == [True, True, False] and flags(None, x, old).tolist() == [False, True, False]


def test_the_flat_threshold_allows_the_stated_share_of_images():
    lowest = torch.tensor([math.inf, 0.5, 0.1, math.inf, 0.2])
    assert flat_threshold(lowest, 0.2) == pytest.approx(0.2)  # one image of five (0.1) lies below
    assert flat_threshold(lowest, 0.0) == pytest.approx(0.1)  # none below
    assert flat_threshold(lowest, 0.6) == math.inf  # only three images have a flat window at all
    assert flat_threshold(torch.full((4,), math.inf), 0.1) == math.inf


def test_statistics_from_before_the_flat_search_still_search_and_say_so(trained):
    model, _ = trained
    old = model.statistics.damage.to_dict()
    del old["flat_threshold"], old["rough_threshold"], old["blank_threshold"]
    calibration = DamageCalibration.from_dict(old)
    assert calibration.flat_threshold is None and calibration.rough_threshold is None and calibration.blank_threshold is None
    with pytest.warns(UserWarning, match="flat, noise and blanked-out patches"):
        check_calibration(model, calibration)
    assert not locate_damage(model, torch.as_tensor(np.zeros((2, 8, 8, 1), np.float32)), calibration).any()
    before_step_10 = model.statistics.damage.to_dict()
    del before_step_10["small_rough_threshold"]
    with pytest.warns(UserWarning, match="small noise patches"):
        check_calibration(model, DamageCalibration.from_dict(before_step_10))


def test_calibration_gives_the_stated_false_alarm_rate_on_clean_images(trained, digits):
    model, train = trained
    images, labels = digits
    held_out = images[labels < 5][-300:]  # the fixture trained on all of digits 0-4; calibrate on other images
    calibration = calibrate(model, held_out[:150], false_alarm=0.2)
    assert calibration.min_size == default_min_size(model) == 3 and calibration.count == 150
    assert calibration.measured <= 0.2  # the largest admissible threshold on the calibration images
    assert calibration.flat_threshold is not None and calibration.rough_threshold >= 0.1 and calibration.blank_threshold is not None
    rest = torch.as_tensor(held_out[150:])
    searched = flags(model, rest, calibration)
    tolerance = 3 * math.sqrt(0.2 * 0.8 / 150) + 0.05  # binomial spread of both halves + the threshold grid
    assert abs(float(searched.float().mean()) - 0.2) < tolerance
    flagged = locate_damage(model, rest, calibration).flatten(1).any(1)
    assert not (flagged & ~searched).any()  # the later steps drop pixels, or add them next to an area
    assert calibrate(model, held_out[:150], false_alarm=0.0).measured == 0.0
    with pytest.raises(InputError, match="false_alarm"):
        calibrate(model, held_out, false_alarm=1.5)
    with pytest.raises(InputError, match="odd"):
        calibrate(model, held_out, min_size=4)
    with pytest.raises(InputError, match="larger than the images"):
        calibrate(model, held_out, min_size=9)


def test_the_search_finds_constant_squares_better_than_the_papers_maps(trained, digits):
    """Constant white 4-5 px squares on the 8x8 digits (grey 0.5 is everywhere in these blurry digits; on
    MNIST, benchmarks/inpainting.py measures grey squares)."""
    model, _ = trained
    images, labels = digits
    clean = images[labels < 5][-200:]
    damaged, masks = occlude(clean, size=(4, 5), fill=1.0, seed=3)
    iou = lambda found: float(((found & masks).sum((1, 2)) / np.maximum((found | masks).sum((1, 2)), 1)).mean())
    ours = iou(inpaint(model, damaged).masks)
    paper = max(iou(inpaint(model, damaged, locate="outliers", c=c).masks) for c in (0.5, 1.0, 2.0))
    assert ours > paper + 0.05 and ours > 0.5  # measured: 0.65 vs 0.48


def test_calibration_is_saved_with_the_model_and_old_statistics_get_a_clear_error(trained, tmp_path):
    model, train = trained
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.statistics.damage == model.statistics.damage
    loaded.statistics.damage = None  # statistics written before the calibration existed
    with pytest.raises(InputError, match="no damage calibration"):
        inpaint(loaded, train[:2])
    assert inpaint(loaded, train[:2], locate="outliers").images.shape == (2, 8, 8, 1)


def test_masks_that_cover_everything_or_nothing(trained):
    model, train = trained
    images = train[:5]
    nothing = inpaint(model, images, mask=np.zeros((8, 8), bool))
    assert np.array_equal(nothing.images, images) and not nothing.masks.any()
    everything = inpaint(model, images, mask=np.ones((8, 8), bool))
    assert everything.masks.all() and np.isfinite(everything.images).all()
    # with no pixel known, every image gets the same fill: the model's mean image under its mixing weights
    np.testing.assert_allclose(everything.images, np.broadcast_to(everything.images[:1], images.shape), atol=1e-6)


def test_a_model_the_search_cannot_work_on_says_so(digits):
    images, _ = digits
    pooled = DCGMM.from_spec("P(2,2) F(4,4,1,1) G(3)", input_shape=(8, 8, 1))
    fit_statistics(pooled, images[:60])
    assert pooled.statistics.damage is None
    with pytest.raises(InputError, match="through Folding layers only"):
        inpaint(pooled, images[:2])
