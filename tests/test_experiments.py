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
