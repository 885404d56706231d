"""Outlier statistics (streaming moments, Eq. 6), scores, maps between positions and pixels, the CLI of stats/score/outliers."""

import json

import numpy as np
import pytest
import torch

from dcgmm import DCGMM, PRESETS, InputError, TrainConfig, Trainer, load_model, save_model
from dcgmm.cli import main
from dcgmm.inpainting import occlude
from dcgmm.outliers import (STD_FLOOR, RunningMoments, fit_statistics, image_scores, is_inlier, outlier_curve,
                            outlier_maps, pixel_map, position_mask, translate, zscores)

from tolerance import sum_rtol, variance_atol

SMALL = "F(4,4,2,2) G(9) F(3,3,1,1) G(4)"


# ---------------------------------------------------------------------------------------------- statistics
def test_running_moments_equal_numpy_and_do_not_depend_on_batching():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, (1000, 4, 5))
    one_shot = RunningMoments((4, 5))
    one_shot.update(data)
    np.testing.assert_allclose(one_shot.mean, data.mean(0), rtol=1e-13)
    np.testing.assert_allclose(one_shot.variance, data.var(0), rtol=1e-12)  # population variance, ddof = 0
    streamed = RunningMoments((4, 5))
    for chunk in np.array_split(data, [1, 7, 300, 301, 999]):  # uneven batches, one of size 1
        streamed.update(chunk)
    assert streamed.count == 1000
    np.testing.assert_allclose(streamed.mean, one_shot.mean, rtol=1e-13)
    np.testing.assert_allclose(streamed.variance, one_shot.variance, rtol=1e-11)


def test_running_moments_are_stable_for_a_large_offset():
    rng = np.random.default_rng(1)
    small = rng.normal(0.0, 1e-3, (5000, 3))
    moments = RunningMoments((3,))
    for chunk in np.array_split(1e8 + small, 50):
        moments.update(chunk)
    # E[x^2] - E[x]^2 in float64 would lose every digit here (1e16 vs a variance of 1e-6)
    np.testing.assert_allclose(moments.variance, small.var(0), rtol=1e-5)
    with pytest.raises(InputError, match="no data"):
        RunningMoments((2,)).variance


def test_fit_statistics_equals_numpy_over_the_log_likelihoods(trained, tmp_path):
    model, train = trained
    stats = model.statistics
    for layer in model.log_likelihoods(train):
        np.testing.assert_allclose(stats.layers[layer.layer].mean, layer.per_position.astype(np.float64).mean(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(stats.layers[layer.layer].variance, layer.per_position.astype(np.float64).var(0), rtol=1e-5, atol=1e-6)
        assert stats.layers[layer.layer].count == len(train)
    # streaming in batches of 7 from a memory-mapped file gives the same statistics
    np.save(tmp_path / "train.npy", train)
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    copy = DCGMM.from_spec(SMALL, input_shape=(8, 8, 1))
    copy.load_state_dict(model.state_dict())
    streamed = fit_statistics(copy, mapped, batch_size=7)
    for index, layer_stats in stats.layers.items():
        # other batch shapes take the float32 matrix products of log p in another order (and differently on
        # other CPUs): each log p, a sum of 2D + 1 terms per component, may move by sum_rtol(2D + 1) |log p|
        dims = model.layers[index].in_shape[2]
        error = sum_rtol(2 * dims + 1) * np.abs(layer_stats.mean).max()
        np.testing.assert_allclose(streamed.layers[index].mean, layer_stats.mean, rtol=0, atol=error)
        atol = variance_atol(np.sqrt(layer_stats.variance), error)
        assert (np.abs(streamed.layers[index].variance - layer_stats.variance) <= atol).all()


def test_statistics_are_saved_with_the_model_and_dropped_by_training(trained, tmp_path):
    model, train = trained
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.statistics.source == "digits 0-4"
    for index, layer_stats in model.statistics.layers.items():
        assert np.array_equal(loaded.statistics.layers[index].mean, layer_stats.mean)
        assert np.array_equal(loaded.statistics.layers[index].variance, layer_stats.variance)
    np.testing.assert_array_equal(image_scores(loaded, train[:20]), image_scores(model, train[:20]))
    fresh = DCGMM.from_spec(SMALL, input_shape=(8, 8, 1))
    fresh.statistics = loaded.statistics
    Trainer(fresh, TrainConfig(epochs=1, batch_size=50), train).fit(progress=False)
    assert fresh.statistics is None  # the parameters changed: the old statistics no longer describe them
    with pytest.raises(InputError, match="no outlier statistics.*dcgmm stats"):
        image_scores(fresh, train[:5])


# ---------------------------------------------------------------------------------------------- decisions
def test_threshold_is_equation_six(trained):
    model, train = trained
    top = model.statistics.layers[model.statistics.top]
    raw = model.log_likelihoods(train[:200])[-1].per_position
    scores = image_scores(model, train[:200])
    for c in (-2.0, -0.5, 0.0, 1.0, 2.0):
        bound = top.mean - c * np.sqrt(np.maximum(top.variance, STD_FLOOR**2))  # B of Eq. 6, computed by hand
        np.testing.assert_array_equal(is_inlier(scores, c), raw[:, 0, 0] >= bound[0, 0] - 1e-9 * abs(bound[0, 0]))
        np.testing.assert_allclose(top.bound(c), bound)
    accepted = [is_inlier(scores, c).mean() for c in np.linspace(-2, 2, 9)]
    assert accepted == sorted(accepted)  # a larger c is less restrictive


def test_image_score_of_a_multi_position_top_layer_is_its_worst_position(digits):
    images, _ = digits
    model = DCGMM.from_spec("F(4,4,2,2) G(6)", input_shape=(8, 8, 1))
    Trainer(model, TrainConfig(epochs=2, batch_size=50), images).fit(progress=False)
    fit_statistics(model, images)
    z = zscores(model, images[:30])[1]
    assert z.shape == (30, 3, 3)
    np.testing.assert_array_equal(image_scores(model, images[:30]), z.reshape(30, -1).min(1))


def test_outlier_curve_auroc_equals_a_pairwise_count():
    rng = np.random.default_rng(2)
    inliers, outliers = rng.normal(0.5, 1, 300), rng.normal(-0.5, 1, 200)
    outliers[:10] = inliers[:10]  # some ties
    curve = outlier_curve(inliers, outliers)
    pairs = (inliers[:, None] > outliers[None, :]).mean() + 0.5 * (inliers[:, None] == outliers[None, :]).mean()
    assert curve["auroc"] == pytest.approx(pairs, abs=1e-12)
    assert curve["c"][0] == -2.0 and curve["c"][-1] == 2.0 and len(curve["c"]) == 41
    assert curve["inliers_accepted"] == sorted(curve["inliers_accepted"])
    assert curve["outliers_rejected"] == sorted(curve["outliers_rejected"], reverse=True)
    assert curve["inliers_accepted"][20] == pytest.approx((inliers >= 0).mean())
    with pytest.raises(InputError, match="at least one"):
        outlier_curve(inliers, [])


@pytest.mark.parametrize("arch", list(PRESETS))
def test_map_shapes_for_every_table_one_architecture(arch):
    model = DCGMM.from_spec(arch)
    images = torch.rand(6, 28, 28, 1).numpy()
    fit_statistics(model, images)
    maps = outlier_maps(model, images[:3], c=1.0)
    for index, layer in model.gmm_layers():
        assert maps[index].shape == (3, *layer.out_shape[:2]) and maps[index].dtype == bool
        pixels = pixel_map(model, index, torch.as_tensor(maps[index]))
        assert pixels.shape == (3, 28, 28) and 0 <= pixels.min() and pixels.max() <= 1
        assert position_mask(model, index, pixels > 0).shape == (3, *layer.out_shape[:2])
    assert image_scores(model, images[:3]).shape == (3,)


def test_pixel_map_and_position_mask_against_naive_windows():
    with pytest.warns(UserWarning, match="leaves some pixels uncovered"):  # the last row and column: pixel_map gives them 0
        model = DCGMM.from_spec("F(4,4,2,2) G(5) F(2,2,1,1) G(3)", input_shape=(9, 9, 1))
    rng = np.random.default_rng(3)
    positions = rng.random((2, 3, 3)) < 0.4  # layer 1 has 3x3 windows of 4x4 pixels, stride 2
    expected = np.zeros((2, 9, 9))
    counts = np.zeros((9, 9))
    for i in range(3):
        for j in range(3):
            expected[:, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4] += positions[:, i, j, None, None]
            counts[2 * i : 2 * i + 4, 2 * j : 2 * j + 4] += 1
    expected = np.divide(expected, counts, out=np.zeros_like(expected), where=counts > 0)  # row/column 8: no window
    np.testing.assert_allclose(pixel_map(model, 1, torch.as_tensor(positions)).numpy(), expected, atol=1e-6)

    pixels = rng.random((2, 9, 9)) < 0.05
    naive = np.array([[[pixels[n, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4].any() for j in range(3)] for i in range(3)] for n in range(2)])
    np.testing.assert_array_equal(position_mask(model, 1, torch.as_tensor(pixels)).numpy(), naive)
    # the top layer (2x2 windows over the 3x3 positions) sees a pixel if any of its layer-1 windows does
    top = np.array([[[naive[n, i : i + 2, j : j + 2].any() for j in range(2)] for i in range(2)] for n in range(2)])
    np.testing.assert_array_equal(position_mask(model, 3, torch.as_tensor(pixels)).numpy(), top)


# ---------------------------------------------------------------------------------------------- in-painting


def test_cli_stats_score_outliers_inpaint(trained, digits, tmp_path, capsys):
    model, train = trained
    images, labels = digits
    run = tmp_path / "run"
    stripped = DCGMM.from_spec(SMALL, input_shape=(8, 8, 1))
    stripped.load_state_dict(model.state_dict())
    stripped.config.value_range = (0.0, 1.0)
    save_model(stripped, run)  # no statistics yet
    np.save(tmp_path / "train.npy", train)
    np.save(tmp_path / "inliers.npy", images[labels < 5][-100:])
    np.save(tmp_path / "outliers.npy", images[labels >= 5][-100:])
    assert main(["score", "--model", str(run), "--npy", str(tmp_path / "inliers.npy"), "--out", str(tmp_path / "s.npy")]) == 2
    assert "no outlier statistics" in capsys.readouterr().err
    assert main(["stats", "--model", str(run), "--data", str(tmp_path / "train.npy"), "--quiet"]) == 0
    assert load_model(run).statistics.layers[1].count == len(train)

    assert main(["score", "--model", str(run), "--npy", str(tmp_path / "inliers.npy"), "--out", str(tmp_path / "s.npy")]) == 0
    scores = np.load(tmp_path / "s.npy")
    np.testing.assert_allclose(scores, image_scores(model, images[labels < 5][-100:]), rtol=1e-6)

    out = tmp_path / "curve"
    assert main(["outliers", "--model", str(run), "--inliers-npy", str(tmp_path / "inliers.npy"),
                 "--outliers-npy", str(tmp_path / "outliers.npy"), "--out", str(out)]) == 0
    report = json.loads((out / "outliers.json").read_text())
    assert 0 <= report["auroc"] <= 1 and (out / "outliers.png").stat().st_size > 0
    assert main(["outliers", "--model", str(run), "--inliers-npy", str(tmp_path / "inliers.npy"), "--out", str(out)]) == 2
    assert "outliers come from" in capsys.readouterr().err

    damaged, masks = occlude(images[labels < 5][-20:], size=(3, 4), seed=0)
    np.save(tmp_path / "damaged.npy", damaged)
    np.save(tmp_path / "mask.npy", masks)
    np.save(tmp_path / "wrong.npy", np.zeros((20, 28, 28), np.float32))
    assert main(["inpaint", "--model", str(run), "--npy", str(tmp_path / "damaged.npy"), "--mask", str(tmp_path / "mask.npy"),
                 "--out", str(tmp_path / "inp"), "--quiet"]) == 0
    result = np.load(tmp_path / "inp" / "inpainted.npy")
    assert result.shape == damaged.shape and np.array_equal(result[~masks], damaged[~masks])
    assert (tmp_path / "inp" / "inpainting.png").stat().st_size > 0
    assert main(["inpaint", "--model", str(run), "--npy", str(tmp_path / "wrong.npy"), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "shape (N, 8, 8, 1)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # nothing half-written


def test_scores_over_shifted_images(trained):
    model, train = trained
    images = train[:40].copy()
    images[:, 0] = images[:, -1] = images[:, :, 0] = images[:, :, -1] = 0.0  # empty borders: a shift back is exact
    plain = image_scores(model, images)
    np.testing.assert_array_equal(image_scores(model, images, shifts=0), plain)
    best = image_scores(model, images, shifts=1)
    assert best.shape == (40,) and np.isfinite(best).all()
    assert (best >= plain - 1e-6).all()  # the unshifted image is one of the 9 candidates
    moved = translate(torch.from_numpy(images), 1, -1).numpy()  # one pixel down and left
    recovered = image_scores(model, moved, shifts=1)
    # moving it back is one of the candidates; float32 log p of other batch compositions may differ by
    # sum_rtol(2D + 1) |log p| (D = 81 at the top), which in z units stays below 1e-3 here
    assert (recovered >= plain - 1e-3).all()
    np.testing.assert_allclose(image_scores(model, images, batch_size=7, shifts=1), best, rtol=0, atol=1e-3)
    for bad in (-1, 8):
        with pytest.raises(InputError, match=r"shifts must lie in 0\.\.7 for 8x8 images"):
            image_scores(model, images, shifts=bad)


def test_translate_moves_pixels_and_fills_zeros():
    x = torch.arange(9.0).reshape(1, 3, 3, 1)
    down_right = translate(x, 1, 1)[0, :, :, 0]
    torch.testing.assert_close(down_right, torch.tensor([[0.0, 0, 0], [0, 0, 1], [0, 3, 4]]))
    torch.testing.assert_close(translate(translate(x, 0, -1), 0, 1)[0, :, 1:, 0], x[0, :, 1:, 0])  # column 0 was lost


def test_ensemble_scores_average_the_models_z(trained, tmp_path, capsys):
    from dcgmm.outliers import ensemble_scores

    model, train = trained
    other = DCGMM.from_spec(SMALL, input_shape=(8, 8, 1))
    Trainer(other, TrainConfig(epochs=8, batch_size=50, window=10, seed=1), train).fit(progress=False)
    fit_statistics(other, train, source="digits 0-4")
    images = train[:60]
    one, two = image_scores(model, images), image_scores(other, images)
    assert not np.allclose(one, two)  # different seeds judge differently
    np.testing.assert_array_equal(ensemble_scores([model], images), one)
    both = ensemble_scores([model, other], images)
    assert both.shape == (60,) and np.isfinite(both).all()
    np.testing.assert_allclose(both, (one + two) / 2, rtol=1e-12)
    # the same model twice is that model
    np.testing.assert_allclose(ensemble_scores([model, model], images), one, rtol=1e-12)
    np.testing.assert_allclose(ensemble_scores([model, other], images, batch_size=7), both, rtol=0, atol=1e-3)
    shifted = ensemble_scores([model, other], images, shifts=1)
    np.testing.assert_allclose(shifted, (image_scores(model, images, shifts=1) + image_scores(other, images, shifts=1)) / 2, rtol=1e-12)
    with pytest.raises(InputError, match="at least one model"):
        ensemble_scores([], images)
    wide = DCGMM.from_spec("F(4,4,2,2) G(9) F(3,4,1,1) G(4)", input_shape=(8, 10, 1))
    with pytest.raises(InputError, match="same images"):
        ensemble_scores([model, wide], images)
    # the CLI takes several models
    for name, m in (("a", model), ("b", other)):
        save_model(m, tmp_path / name)
    np.save(tmp_path / "x.npy", images)
    assert main(["score", "--model", str(tmp_path / "a"), str(tmp_path / "b"), "--npy", str(tmp_path / "x.npy"), "--out", str(tmp_path / "s.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), both, rtol=1e-6)
    assert "mean of 2 models" in capsys.readouterr().out
    assert main(["score", "--model", str(tmp_path / "a"), str(tmp_path / "b"), "--npy", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r.npy"), "--raw"]) == 2
    assert "give one --model" in capsys.readouterr().err
