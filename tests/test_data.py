"""Datasets and user data: IDX decoding, fetching with checksums, class selections, arrays, folders of images."""

import gzip

import numpy as np
import pytest

from dcgmm import data
from dcgmm.errors import DataError, InputError

from fakes import idx_bytes, write_pngs


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


# ---------------------------------------------------------------------------------------------- image folders
def test_image_folders_that_do_not_fit_are_refused(tmp_path):
    from PIL import Image

    grey = np.zeros((8, 8), np.uint8)
    mixed = tmp_path / "mixed"
    write_pngs(mixed, [grey, grey])
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(mixed / "img0005.png")
    with pytest.raises(InputError, match=r"img0005.png is 8x9 grey, but img0000.png \(the first image\) is 8x8 grey"):
        data.load_images(mixed)
    colour = tmp_path / "colour"
    write_pngs(colour, [grey])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(colour / "img0001.jpg")
    with pytest.raises(InputError, match="img0001.jpg is 8x8 RGB, but img0000.png"):
        data.load_images(colour)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no PNG or JPEG images"):
        data.load_images(tmp_path / "empty")
    broken = tmp_path / "broken"
    write_pngs(broken, [grey])
    (broken / "img0001.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="img0001.png cannot be read as an image"):
        data.load_images(broken)
    alpha = tmp_path / "alpha"
    alpha.mkdir()
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(alpha / "a.png")
    with pytest.raises(InputError, match=r"^\S*/a\.png is a RGBA image: use grey \(L\) or RGB images"):
        data.load_images(alpha)


def test_open_npy_refuses_bad_files(tmp_path):
    from dcgmm.data import open_npy

    np.save(tmp_path / "ints.npy", np.zeros((3, 8, 8), dtype=np.int32))
    np.save(tmp_path / "flat.npy", np.zeros((3, 64), dtype=np.float32))
    with pytest.raises(InputError, match="dtype int32"):
        open_npy(tmp_path / "ints.npy")
    with pytest.raises(InputError, match=r"\(N, H, W\)"):
        open_npy(tmp_path / "flat.npy")
    with pytest.raises(InputError, match="does not exist"):
        open_npy(tmp_path / "missing.npy")
