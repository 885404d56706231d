"""Clustering measures against naive computations; the experiment runner end to end on the 8x8 digits."""

import json
import math

import numpy as np
import pytest
import torch

from dcgmm import DCGMM, InputError, SpecError, TrainConfig, Trainer
from dcgmm.experiments import Experiment, ExperimentConfig, ExperimentData, top_components, write_report
from dcgmm.metrics import davies_bouldin, dunn_index, pairwise_distances
from dcgmm.sampling import sample_components

ARCHS = ["F(8,8,1,1) G(4)", "F(4,4,2,2) G(4) F(3,3,1,1) G(4)"]


def _points(seed=0, n=60, d=5, k=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    return (rng.normal(size=(n, d)) + 3 * labels[:, None]).astype(np.float32), labels


def test_pairwise_distances_equal_numpy():
    x, _ = _points()
    naive = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(pairwise_distances(x, chunk=7), naive, rtol=1e-6, atol=1e-5)


def test_dunn_index_equals_a_naive_double_loop():
    x, labels = _points()
    separation, diameter = math.inf, 0.0
    for i in range(len(x)):
        for j in range(len(x)):
            d = float(np.linalg.norm(x[i].astype(np.float64) - x[j]))
            if labels[i] == labels[j]:
                diameter = max(diameter, d)
            else:
                separation = min(separation, d)
    assert dunn_index(pairwise_distances(x), labels) == pytest.approx(separation / diameter, rel=1e-5)


def test_davies_bouldin_equals_the_formula():
    x, labels = _points(seed=1)
    ids = np.unique(labels)
    centres = np.stack([x[labels == k].mean(0) for k in ids])
    spread = np.array([np.linalg.norm(x[labels == k] - centres[i], axis=1).mean() for i, k in enumerate(ids)])
    worst = [max((spread[i] + spread[j]) / np.linalg.norm(centres[i] - centres[j]) for j in range(len(ids)) if j != i) for i in range(len(ids))]
    assert davies_bouldin(x, labels) == pytest.approx(np.mean(worst), rel=1e-5)


def test_clustering_measures_refuse_one_cluster_and_wrong_lengths():
    x, labels = _points()
    with pytest.raises(InputError, match="two non-empty clusters"):
        dunn_index(pairwise_distances(x), np.zeros(len(x)))
    with pytest.raises(InputError, match="one cluster label per image"):
        davies_bouldin(x, labels[:-1])


def test_better_separated_clusters_score_better():
    x, labels = _points()
    far = x + 5 * labels[:, None]  # same clusters, moved apart
    assert dunn_index(pairwise_distances(far), labels) > dunn_index(pairwise_distances(x), labels)
    assert davies_bouldin(far, labels) < davies_bouldin(x, labels)


def test_clusters_are_the_top_layers_most_responsible_component(digits):
    images, _ = digits
    model = DCGMM.from_spec("F(8,8,1,1) G(6)", input_shape=(8, 8, 1))
    Trainer(model, TrainConfig(epochs=1), images[:500]).fit(progress=False)
    x = torch.as_tensor(images[:50])
    gmm = model.layers[1]
    expected = gmm.log_joint(model.layers[0](x)).reshape(50, -1).argmax(1).numpy()
    np.testing.assert_array_equal(model.clusters(images[:50], batch_size=16), expected)
    with pytest.raises(InputError, match="global top GMM"):
        DCGMM.from_spec("F(4,4,4,4) G(3)", input_shape=(8, 8, 1)).clusters(images[:5])


def test_sample_components_emits_the_fixed_component(digits):
    model = DCGMM.from_spec("F(8,8,1,1) G(5)", input_shape=(8, 8, 1))
    Trainer(model, TrainConfig(epochs=1), digits[0][:300]).fit(progress=False)
    images = sample_components(model, [3, 1, 3])
    centroids = model.layers[1].centroids.detach()
    torch.testing.assert_close(images.reshape(3, -1), centroids[[3, 1, 3]])
    with pytest.raises(InputError, match="components must be"):
        sample_components(model, [5])


def test_top_components():
    assert top_components("2L-c") == 36 and top_components("3L-a") == 49 and top_components("1L") == 25


def _tiny_config() -> ExperimentConfig:
    return ExperimentConfig(archs=ARCHS, epochs=2, reruns=2, clustering_images=400, clustering_epochs=2, clustering_window=5,
                            clustering_eval_images=200, sampling_archs=ARCHS, sampling_arch=ARCHS[1], top_s=(2,), samples=60,
                            sharpening_steps=3, bins=8, centroid_arch=ARCHS[1], em_components=4, em_max_iter=20)


@pytest.fixture(scope="module")
def digit_data(digits):
    images, labels = digits
    return ExperimentData("digits", images[:1400], labels[:1400], images[1400:], labels[1400:])


def test_experiment_all_writes_a_report_and_reruns_bit_for_bit(digit_data, tmp_path):
    logged = []
    times = Experiment(tmp_path / "a", [digit_data], _tiny_config(), progress=False, log=logged.append).run(["all"])
    assert list(times) == ["outliers", "clustering", "sampling", "centroids"] and all(t > 0 for t in times.values())
    report = (tmp_path / "a" / "report.md").read_text()
    for heading in ("Outlier detection (Fig. 3)", "Clustering (Table II)", "Sampling (Figs. 4-7)", "Centroids (Fig. 2)", "EM flat K=4"):
        assert heading in report
    for stage in times:
        folder = tmp_path / "a" / stage
        assert (folder / "numbers.json").exists() and (folder / "times.json").exists()
        for line in (folder / "section.md").read_text().splitlines():  # every picture the report shows exists
            if line.startswith("!["):
                assert (tmp_path / "a" / line.split("](")[1].rstrip(")")).exists(), line
    numbers = json.loads((tmp_path / "a" / "clustering" / "numbers.json").read_text())["digits"]
    assert len(numbers[ARCHS[0]]) == 2 and numbers["true classes"][0]["ari"] == 1.0
    auroc = json.loads((tmp_path / "a" / "outliers" / "numbers.json").read_text())["digits"]
    assert all(0.0 <= curve["auroc"] <= 1.0 for curve in auroc.values())
    assert (tmp_path / "a" / "models" / "digits").is_dir()
    # the same seed again: every number identical, byte for byte
    Experiment(tmp_path / "b", [digit_data], _tiny_config(), progress=False, log=logged.append).run(["all"])
    for stage in times:
        assert (tmp_path / "a" / stage / "numbers.json").read_bytes() == (tmp_path / "b" / stage / "numbers.json").read_bytes(), stage


def test_a_single_stage_keeps_the_others_in_the_report(digit_data, tmp_path):
    config = _tiny_config()
    config.archs = ARCHS[:1]
    Experiment(tmp_path, [digit_data], config, progress=False, log=lambda _: None).run(["outliers"])
    Experiment(tmp_path, [digit_data], config, progress=False, log=lambda _: None).run(["centroids"])
    report = write_report(tmp_path).read_text()
    assert "Outlier detection" in report and "Centroids" in report and "Clustering" not in report


def test_experiment_refuses_unknown_stages_and_no_data(digit_data, tmp_path):
    with pytest.raises(InputError, match="unknown experiment 'tables'"):
        Experiment(tmp_path, [digit_data], _tiny_config(), progress=False).run(["tables"])
    with pytest.raises(InputError, match="no datasets"):
        Experiment(tmp_path, [], _tiny_config())
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize("change, error, message", [
    (dict(epochs=0), InputError, "epochs must be at least 1"),
    (dict(reruns=0), InputError, "reruns must be at least 1"),
    (dict(archs=["F(9,9,1,1) G(4)"]), SpecError, "larger than its 8x8 input"),
    (dict(centroid_arch="F(4,4,4,4) G(3)"), InputError, "global top GMM layer"),
])
def test_experiment_refuses_bad_settings_before_writing(digit_data, tmp_path, change, error, message):
    config = _tiny_config()
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(error, match=message):
        Experiment(tmp_path / "x", [digit_data], config, progress=False)
    assert not (tmp_path / "x").exists()
