"""Clustering measures against naive computations; the experiment runner end to end on the 8x8 digits."""

import json

import pytest

from dcgmm import InputError, SpecError
from dcgmm.experiments import Experiment, ExperimentConfig, ExperimentData, top_components, write_report

ARCHS = ["F(8,8,1,1) G(4)", "F(4,4,2,2) G(4) F(3,3,1,1) G(4)"]


def test_top_components():
    assert top_components("2L-c") == 36 and top_components("3L-a") == 49 and top_components("1L") == 25


def _tiny_config() -> ExperimentConfig:
    return ExperimentConfig(archs=ARCHS, epochs=2, reruns=2, clustering_images=400, clustering_epochs=2, clustering_window=5,
                            clustering_eval_images=200, sampling_archs=ARCHS, sampling_arch=ARCHS[1], top_s=(2,), samples=60,
                            sharpening_steps=3, bins=8, centroid_arch=ARCHS[1], em_components=4, em_max_iter=20,
                            protocol_arch=ARCHS[1], inpainting_archs=[ARCHS[1]], inpainting_images=40, inpainting_square=(2, 4))


@pytest.fixture(scope="module")
def digit_data(digits):
    images, labels = digits
    return ExperimentData("digits", images[:1400], labels[:1400], images[1400:], labels[1400:])


def test_experiment_all_writes_a_report_and_reruns_bit_for_bit(digit_data, tmp_path):
    logged = []
    times = Experiment(tmp_path / "a", [digit_data], _tiny_config(), progress=False, log=logged.append).run(["all"])
    assert list(times) == ["outliers", "clustering", "sampling", "inpainting", "centroids"] and all(t > 0 for t in times.values())
    report = (tmp_path / "a" / "report.md").read_text()
    for heading in ("Outlier detection (Fig. 3)", "Clustering (Table II)", "Sampling (Figs. 4-7)", "In-painting", "Centroids (Fig. 2)",
                    "EM flat K=4", "about as many parameters", "default (top-5", "its own random subset of 400 training images"):
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
    inpainting = json.loads((tmp_path / "a" / "inpainting" / "numbers.json").read_text())["digits"]
    for row in inpainting.values():
        assert 0.0 <= row["iou"] <= 1.0 and row["damaged"] > 0 and all(v >= 0 for v in row.values())
        assert row["flat_gmm_k"] >= 1 and 0.0 < row["flat_gmm_true_mask"] < row["damaged"]  # the flat GMM's baseline fill
    # the same seed again: every number identical, byte for byte
    Experiment(tmp_path / "b", [digit_data], _tiny_config(), progress=False, log=logged.append).run(["all"])
    for stage in times:
        assert (tmp_path / "a" / stage / "numbers.json").read_bytes() == (tmp_path / "b" / stage / "numbers.json").read_bytes(), stage


def test_clustering_report_says_when_every_run_trains_on_all_images():
    from dcgmm.experiments import _clustering_result

    config = ExperimentConfig(reruns=1)
    text = _clustering_result({}, config, 0.05, [60_000, 60_000]).markdown
    assert "Each run trains" in text and "on all training images of all classes, 25 epochs" in text
    config = ExperimentConfig(reruns=3, clustering_images=20_000)
    assert "Each of the 3 reruns trains" in _clustering_result({}, config, 0.05, [60_000]).markdown


def test_parameter_matched_flat_gmms_have_about_the_dcgmm_parameter_count(digit_data, tmp_path):
    from dcgmm import DCGMM

    experiment = Experiment(tmp_path, [digit_data], _tiny_config(), progress=False)
    for arch in ARCHS:
        params = sum(p.numel() for p in DCGMM.from_spec(arch, input_shape=(8, 8, 1)).parameters())
        k = experiment.matched_k(arch, (8, 8, 1))
        assert abs(k * (2 * 64 + 1) - params) <= (2 * 64 + 1) / 2
    assert experiment.matched_k("2L-c", (28, 28, 1)) == 141  # 221 061 parameters


def test_the_four_outlier_protocols_with_baselines(digits, tmp_path):
    images, labels = digits
    mnist = ExperimentData("mnist", images[:1400], labels[:1400], images[1400:], labels[1400:])
    fashion = ExperimentData("fashion-mnist", 1 - images[:1400], labels[:1400], 1 - images[1400:], labels[1400:])  # inverted
    config = _tiny_config()
    config.archs = ARCHS[1:]
    Experiment(tmp_path, [mnist, fashion], config, progress=False, log=lambda _: None).run(["outliers"])
    protocols = json.loads((tmp_path / "outliers" / "numbers.json").read_text())["protocols"]
    assert set(protocols) == {"MNIST 0-4 vs 5-9", "FashionMNIST 0-4 vs 5-9", "MNIST 1-9 vs 0", "FashionMNIST vs MNIST"}
    for rows in protocols.values():
        assert len(rows) == 4 and f"{ARCHS[1]}, default score" in rows and "kNN-5 on pixels" in rows
        assert "PCA-50 reconstruction" in rows and any(label.startswith("EM flat K=3 (") for label in rows)
        assert all(0.0 <= auroc <= 1.0 for auroc in rows.values())
    assert protocols["FashionMNIST vs MNIST"]["kNN-5 on pixels"] > 0.9  # inverted digits are far from the others
    assert (tmp_path / "models" / "MNIST_1-9_vs_0").is_dir() and "Four protocols" in (tmp_path / "report.md").read_text()


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
    (dict(inpainting_square=(6, 10)), InputError, "do not fit 8x8 images"),
])
def test_experiment_refuses_bad_settings_before_writing(digit_data, tmp_path, change, error, message):
    config = _tiny_config()
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(error, match=message):
        Experiment(tmp_path / "x", [digit_data], config, progress=False)
    assert not (tmp_path / "x").exists()
