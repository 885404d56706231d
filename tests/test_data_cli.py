import gzip
import hashlib
import json

import numpy as np
import pytest

from dcgmm import data
from dcgmm import load_model
from dcgmm.cli import main
from dcgmm.errors import DataError, InputError


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def toy_dataset(monkeypatch, tmp_path):
    """A fake dataset 'toy' with its IDX files in a folder and matching checksums; no network involved."""
    rng = np.random.default_rng(0)
    arrays = {("train", "images"): rng.integers(0, 256, (30, 28, 28)), ("train", "labels"): rng.integers(0, 10, 30),
              ("test", "images"): rng.integers(0, 256, (10, 28, 28)), ("test", "labels"): rng.integers(0, 10, 10)}
    folder = tmp_path / "idx"
    folder.mkdir()
    sha = {}
    for (split, part), array in arrays.items():
        stem = data._IDX_NAMES[(split, part)]
        (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        flat = array.astype(np.uint8).reshape(len(array), -1) if array.ndim > 1 else array.astype(np.uint8)
        sha[(split, part)] = hashlib.sha256(np.ascontiguousarray(flat).tobytes()).hexdigest()
    monkeypatch.setitem(data.DATASETS, "toy", data.DatasetInfo("toy", mirrors=(), sha256=sha))
    monkeypatch.setenv("DCGMM_DATA_DIR", str(tmp_path / "cache"))
    return folder, arrays


def test_idx_decoding_round_trip():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(data.decode_idx(idx_bytes(array)), array)
    np.testing.assert_array_equal(data.decode_idx(gzip.compress(idx_bytes(array))), array)
    with pytest.raises(DataError, match="truncated"):
        data.decode_idx(idx_bytes(array)[:-1])
    with pytest.raises(DataError, match="magic"):
        data.decode_idx(b"\x00\x00\x0d\x01rest")


def test_fetch_from_idx_folder_verifies_and_caches(toy_dataset):
    folder, arrays = toy_dataset
    data.fetch("toy", data_dir=folder)
    images, labels = data.load_dataset("toy", "test")  # now from the cache, without data_dir
    assert images.shape == (10, 28, 28, 1) and images.dtype == np.float32
    np.testing.assert_allclose(images[..., 0], arrays[("test", "images")] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(labels, arrays[("test", "labels")])
    subset_images, subset_labels = data.load_dataset("toy", "train", classes=[1, 2])
    assert set(subset_labels) <= {1, 2} and len(subset_images) == np.isin(arrays[("train", "labels")], [1, 2]).sum()


def test_checksum_mismatch_and_unreachable_data_are_reported(toy_dataset, tmp_path):
    folder, _ = toy_dataset
    stem = data._IDX_NAMES[("test", "labels")]
    (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(10, np.uint8))))
    with pytest.raises(DataError) as err:
        data.fetch("toy", data_dir=folder)
    message = str(err.value)
    assert "could not obtain toy" in message and "checksum" in message and "--data-dir" in message


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        data.dataset_info("cifar")


@pytest.mark.parametrize("text,expected", [("0-4", [0, 1, 2, 3, 4]), ("0,3,7", [0, 3, 7]), ("0-2, 5", [0, 1, 2, 5]), (None, None)])
def test_parse_classes(text, expected):
    assert data.parse_classes(text) == expected


@pytest.mark.parametrize("text", ["a-b", "4-2", "1;2"])
def test_parse_classes_rejects(text):
    with pytest.raises(InputError):
        data.parse_classes(text)


def test_as_images_layouts_and_rejections():
    u8 = np.full((2, 5, 4), 255, np.uint8)
    out = data.as_images(u8)
    assert out.shape == (2, 5, 4, 1) and out.dtype == np.float32 and out.max() == 1.0
    floats = np.full((2, 5, 4, 3), 7.5, np.float64)
    assert data.as_images(floats).max() == 7.5  # floats are taken as they are
    with pytest.raises(InputError, match="shape"):
        data.as_images(np.zeros((5, 4)))
    with pytest.raises(InputError, match="empty"):
        data.as_images(np.zeros((0, 5, 4)))
    with pytest.raises(InputError, match="dtype int64"):
        data.as_images(np.zeros((2, 5, 4), np.int64))
    bad = np.zeros((3, 5, 4), np.float32)
    bad[1, 0, 0] = np.inf
    with pytest.raises(InputError, match="NaN or inf values in 1 image"):
        data.as_images(bad)


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def digits_npy(tmp_path, digits):
    images, _ = digits
    path = tmp_path / "digits.npy"
    np.save(path, images[:400])
    return path


def test_cli_train_eval_info(tmp_path, digits_npy, capsys):
    run = tmp_path / "run"
    args = ["train", "--arch", "F(4,4,2,2) G(9) F(3,3,1,1) G(4)", "--data", str(digits_npy), "--epochs", "2", "--batch-size", "50", "--out", str(run), "--quiet"]
    assert main(args) == 0
    for name in ["model.safetensors", "checkpoint.safetensors", "history.json", "training.png", "centroids_layer1.png", "centroids_layer3.png", "samples.png", "samples.npy"]:
        assert (run / name).is_file(), name
    assert main(args) == 2  # refuses to overwrite an existing run
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--data", str(digits_npy), "--epochs", "3", "--batch-size", "50", "--out", str(run), "--resume", "--quiet"]) == 0
    assert len(json.loads((run / "history.json").read_text())) == 3
    assert main(["eval", "--model", str(run), "--data", str(digits_npy)]) == 0
    report = json.loads((run / "eval-digits.npy.json").read_text())
    assert set(report["layers"]) == {"layer_1", "layer_3"}
    assert np.isfinite(report["layers"]["layer_3"]["mean_loglik_per_image"])
    assert main(["info", "--model", str(run)]) == 0
    assert load_model(run).statistics.layers[3].count == 400  # outlier statistics saved with the model


def test_cli_train_on_classes_writes_the_held_out_outlier_curve(toy_dataset, tmp_path):
    folder, arrays = toy_dataset
    run = tmp_path / "run"
    args = ["train", "--arch", "F(7,7,7,7) G(4) F(4,4,1,1) G(3)", "--dataset", "toy", "--data-dir", str(folder),
            "--classes", "0-4", "--epochs", "1", "--batch-size", "5", "--out", str(run), "--quiet"]
    assert main(args) == 0
    report = json.loads((run / "outliers.json").read_text())
    test_labels = arrays[("test", "labels")]
    assert report["n_inliers"] == (test_labels < 5).sum() and report["n_outliers"] == (test_labels >= 5).sum()
    assert 0 <= report["auroc"] <= 1 and (run / "outliers.png").is_file()
    assert "classes 0-4" in load_model(run).statistics.source


def test_cli_errors_are_one_clear_line(tmp_path, digits_npy, capsys):
    def error(args):
        assert main(args) == 2
        return capsys.readouterr().err

    assert "unknown layer type" in error(["train", "--arch", "Q(3) G(2)", "--data", str(digits_npy), "--out", str(tmp_path / "a")])
    assert "larger than its 8x8 input" in error(["train", "--arch", "1L", "--data", str(digits_npy), "--out", str(tmp_path / "b")])
    assert "holds no model.safetensors" in error(["eval", "--model", str(tmp_path), "--data", str(digits_npy)])
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 28, 28), np.float32))
    run = tmp_path / "run"
    assert main(["train", "--arch", "F(8,8,1,1) G(4)", "--data", str(digits_npy), "--epochs", "1", "--batch-size", "50", "--out", str(run), "--quiet"]) == 0
    assert "takes images of shape (N, 8, 8, 1)" in error(["eval", "--model", str(run), "--data", str(wrong)])
    nan = tmp_path / "nan.npy"
    arr = np.zeros((3, 8, 8), np.float32)
    arr[0, 0, 0] = np.nan
    np.save(nan, arr)
    assert "NaN" in error(["eval", "--model", str(run), "--data", str(nan)])
    assert "does not exist" in error(["eval", "--model", str(run), "--data", str(tmp_path / "missing.npy")])
    (run / "model.safetensors").write_bytes(b"\x00" * 20)
    assert "corrupt" in error(["eval", "--model", str(run), "--data", str(digits_npy)])


# ---------------------------------------------------------------------------------------------- image folders
def _write_pngs(folder, images):
    from PIL import Image

    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img{i:04d}.png")


def test_train_and_eval_on_a_folder_of_pngs(tmp_path, digits, capsys):
    images = (digits[0][:500, :, :, 0] * 255).round().astype(np.uint8)
    folder = tmp_path / "pngs"
    _write_pngs(folder, images)
    (folder / "notes.txt").write_text("not an image")  # skipped
    loaded = data.load_images(folder)
    assert loaded.shape == (500, 8, 8, 1) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded[..., 0], images)  # PNG is lossless, files in name order
    run = tmp_path / "run"
    assert main(["train", "--arch", "F(4,4,2,2) G(4) F(3,3,1,1) G(4)", "--data", str(folder), "--epochs", "1",
                 "--batch-size", "50", "--out", str(run), "--quiet"]) == 0
    assert main(["eval", "--model", str(run), "--data", str(folder)]) == 0
    report = json.loads((run / "eval-pngs.json").read_text())
    assert report["n_images"] == 500 and np.isfinite(report["layers"]["layer_3"]["mean_loglik_per_image"])
    assert load_model(run).config.value_range == (0.0, 1.0)  # bytes scaled as for uint8 arrays


def test_image_folders_that_do_not_fit_are_refused(tmp_path):
    from PIL import Image

    grey = np.zeros((8, 8), np.uint8)
    mixed = tmp_path / "mixed"
    _write_pngs(mixed, [grey, grey])
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(mixed / "img0005.png")
    with pytest.raises(InputError, match=r"img0005.png is 8x9 grey, but img0000.png \(the first image\) is 8x8 grey"):
        data.load_images(mixed)
    colour = tmp_path / "colour"
    _write_pngs(colour, [grey])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(colour / "img0001.jpg")
    with pytest.raises(InputError, match="img0001.jpg is 8x8 RGB, but img0000.png"):
        data.load_images(colour)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no PNG or JPEG images"):
        data.load_images(tmp_path / "empty")
    broken = tmp_path / "broken"
    _write_pngs(broken, [grey])
    (broken / "img0001.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="img0001.png cannot be read as an image"):
        data.load_images(broken)
    alpha = tmp_path / "alpha"
    alpha.mkdir()
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(alpha / "a.png")
    with pytest.raises(InputError, match="is a RGBA image: use grey"):
        data.load_images(alpha)
