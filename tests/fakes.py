"""Files the tests make: IDX datasets and folders of PNG images."""

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes holding ``array``."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_pngs(folder, images):
    """Write uint8 images (N, H, W) or (N, H, W, 3) into a new ``folder`` as img0000.png, img0001.png, ..."""
    from PIL import Image

    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img{i:04d}.png")
