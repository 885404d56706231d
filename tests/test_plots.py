"""Pictures: centroid tiles of every kind of GMM layer, and the formats a picture is written in."""

import numpy as np
import pytest

from dcgmm import DCGMM
from dcgmm.plots import centroid_images, plot_centroids, plot_samples


@pytest.mark.parametrize("spec, shape, expected", [
    ("F(4,4,2,2) G(6) F(3,3,1,1) G(4)", (8, 8, 1), {1: (6, 4, 4, 1), 3: (4, 3 * 3, 3 * 4, 1)}),  # patches; tiles of 2x3 grids
    ("G(5) G(3)", (8, 8, 1), {0: (5, 1, 1, 1), 1: (3, 2, 6, 1)}),  # a GMM on the pixels, one on its responsibilities
    ("F(4,4,2,2) G(4) P(3,3) G(2)", (10, 10, 2), {1: (4, 4, 4, 2), 3: (2, 3, 3, 1)}),
])
def test_centroid_images_of_every_kind_of_layer(spec, shape, expected, tmp_path):
    model = DCGMM.from_spec(spec, input_shape=shape)
    for index, picture_shape in expected.items():
        assert centroid_images(model, index).shape == picture_shape
        assert plot_centroids(model, index, tmp_path / f"c{index}.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("name, head", [("a.png", b"\x89PNG"), ("a.jpg", b"\xff\xd8\xff"), ("a.pdf", b"%PDF"), ("a.svg", b"<?xml")])
def test_pictures_are_written_in_the_format_their_name_says(tmp_path, name, head):
    plot_samples(np.random.default_rng(0).random((4, 8, 8, 1)), tmp_path / name)
    assert (tmp_path / name).read_bytes().startswith(head)
