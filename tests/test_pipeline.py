"""The train-a-model job: what a run folder holds after `train_run`, in Python."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dcgmm import DCGMM, TrainConfig, Trainer, load_model
from dcgmm.pipeline import Images, layer_report, train_run


def test_train_run_fills_the_run_folder(digits, tmp_path):
    images, labels = digits
    inliers, others = images[labels < 5], images[labels >= 5]
    model = DCGMM.from_spec("F(4,4,2,2) G(4) F(3,3,1,1) G(4)", input_shape=(8, 8, 1))
    trainer = Trainer(model, TrainConfig(epochs=2, batch_size=50), inliers[:600])
    lines = []
    result = train_run(trainer, tmp_path, source="digits 0-4", test=Images(inliers[600:], "test 0-4"),
                       outliers=Images(others[:200], "test 5-9"), samples=12, progress=False, log=lines.append)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "checkpoint.safetensors", "history.json", "training.png", "centroids_layer1.png",
            "centroids_layer3.png", "samples.png", "samples.npy", "eval.json", "outliers.json", "outliers.png"} <= names
    assert np.load(tmp_path / "samples.npy").shape == (12, 8, 8, 1)
    loaded = load_model(tmp_path)
    assert loaded.statistics.source == "digits 0-4" and loaded.statistics.layers[3].count == 600
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["layers"] == layer_report(loaded, inliers[600:]) == result["eval"]
    outlier_report = json.loads((tmp_path / "outliers.json").read_text())
    assert 0 <= result["auroc"] <= 1 and outlier_report["auroc"] == result["auroc"]
    # the baseline beside it, on the same images: kNN-5 on the training pixels, checked against a direct computation
    def knn_score(image):
        return -np.sort(np.sqrt(((inliers[:600] - image) ** 2).sum((1, 2, 3))))[:5].mean()
    direct = roc_auc_score(np.r_[np.ones(len(inliers) - 600), np.zeros(200)],
                           [knn_score(image) for image in np.concatenate([inliers[600:], others[:200]])])
    assert result["knn5_auroc"] == outlier_report["baselines"]["kNN-5 on pixels"]["auroc"] == pytest.approx(direct, abs=2e-3)
    assert any("kNN-5 on pixels (no model), same images" in line for line in lines)
    assert any(line.startswith("trained in") for line in lines) and len(json.loads((tmp_path / "history.json").read_text())) == 2


def test_train_run_without_pictures_or_samples(digits, tmp_path):
    model = DCGMM.from_spec("F(8,8,1,1) G(4)", input_shape=(8, 8, 1))
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=50), digits[0][:200])
    result = train_run(trainer, tmp_path, source="digits", samples=0, pictures=False, progress=False, extra={"note": "x"}, log=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "history.json", "model.safetensors"]
    assert result["eval"] is None and result["auroc"] is None
