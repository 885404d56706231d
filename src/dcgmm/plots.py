"""Pictures: GMM centroids (paper Fig. 2) and training curves. Written as PNG files with matplotlib (Agg)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .checkpoint import atomic_write_bytes  # noqa: E402
from .errors import InputError  # noqa: E402
from .layers import GMM, Folding  # noqa: E402
from .layers.gmm import grid_shape  # noqa: E402
from .model import DCGMM  # noqa: E402


PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
"""File formats every picture can be written in, named by the file's suffix."""


def _save(fig, path: Path) -> Path:
    """Write ``fig`` in the format that ``path``'s suffix names (PNG when it names none of :data:`PICTURE_SUFFIXES`)."""
    suffix = path.suffix.lower()
    kind = suffix.lstrip(".") if suffix in PICTURE_SUFFIXES else "png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format=kind, dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def centroid_images(model: DCGMM, index: int) -> np.ndarray:
    """The centroids of GMM layer ``index`` as pictures, shape (K, rows, cols, channels) for colour or
    (K, rows, cols, 1) for grey.

    If the layer's input comes from a Folding of the images, each centroid is an image patch. Otherwise each
    centroid is a pattern of responsibilities of the GMM layer below, one small tile (the lower layer's K
    on its component grid) per position of the fold window.
    """
    layer = model.layers[index]
    if not isinstance(layer, GMM):
        raise InputError(f"layer {index} is {layer.spec()}, not a GMM layer; pick the index of a G(K) layer")
    mu = layer.centroids.detach().cpu().numpy()  # [K, D]
    below = model.layers[index - 1] if index > 0 else None
    if index == 0:  # a GMM on the pixels themselves: each centroid is one pixel's value (1x1xC)
        return mu.reshape(-1, 1, 1, layer.in_shape[2])
    if isinstance(below, Folding) and index == 1:
        fy, fx = below.kernel
        return mu.reshape(-1, fy, fx, below.in_shape[2])
    fy, fx = below.kernel if isinstance(below, Folding) else (1, 1)
    channels = layer.in_shape[2] // (fy * fx)
    rows, cols = grid_shape(channels)
    tiles = mu.reshape(-1, fy, fx, rows, cols)  # [K, fy, fx, r, c]
    pad = np.full((len(mu), fy, fx, rows + 1, cols + 1), np.nan)
    pad[:, :, :, :rows, :cols] = tiles
    return pad.transpose(0, 1, 3, 2, 4).reshape(len(mu), fy * (rows + 1), fx * (cols + 1), 1)


def plot_centroids(model: DCGMM, index: int, path: str | Path) -> Path:
    """Write a grid of the centroids of GMM layer ``index`` to ``path`` (PNG)."""
    images = centroid_images(model, index)
    k = len(images)
    rows, cols = grid_shape(k)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.1 + 0.4), squeeze=False)
    for ax, image in zip(axes.flat, images):
        if image.shape[-1] == 3:
            ax.imshow(np.clip(image, 0, 1))
        else:
            ax.imshow(image[..., 0], cmap="gray", interpolation="nearest")
        ax.set_axis_off()
    layer = model.layers[index]
    fig.suptitle(f"layer {index} {layer.spec()} centroids (input {layer.in_shape[0]}x{layer.in_shape[1]}x{layer.in_shape[2]})", fontsize=9)
    return _save(fig, Path(path))


def plot_history(history: list, path: str | Path) -> Path:
    """Training curves: every GMM layer's objective per epoch, and its annealing radius."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = [r["epoch"] for r in history]
    layers = list(history[0]["sigma"]) if history else []
    for key in layers:
        obj = [r["objective"][key] for r in history]
        ax1.plot(epochs, [np.nan if v is None else v for v in obj], marker=".", label=f"layer {key}")
        ax2.semilogy(epochs, [r["sigma"][key] for r in history], marker=".", label=f"layer {key}")
    ax1.set(xlabel="epoch", ylabel="objective (max-component log-lik.)", title="training objective")
    ax2.set(xlabel="epoch", ylabel="annealing radius sigma", title="annealing")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_samples(images, path: str | Path, ncols: int = 10, title: str | None = None, row_labels: list[str] | None = None) -> Path:
    """Write images (N, H, W, C), values shown clipped to [0, 1], as a grid of ``ncols`` columns to ``path`` (PNG)."""
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise InputError(f"expected a non-empty array of images (N, H, W, C); got shape {images.shape}")
    n, h, w, c = images.shape
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    grid = np.ones((nrows * (h + 1) - 1, ncols * (w + 1) - 1, c), dtype=np.float64)
    for i, image in enumerate(np.clip(images, 0, 1)):
        r, q = divmod(i, ncols)
        grid[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = image
    scale = 0.9 * max(1.0, 28 / max(h, w)) / 28
    fig, ax = plt.subplots(figsize=(max(2.0, grid.shape[1] * scale * 0.9), max(1.0, grid.shape[0] * scale * 0.9) + 0.3))
    ax.imshow(grid if c == 3 else grid[..., 0], cmap=None if c == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
    if row_labels is not None:
        ax.set_yticks([r * (h + 1) + h / 2 for r in range(len(row_labels))], row_labels, fontsize=8)
        ax.set_xticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    else:
        ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, Path(path))


def plot_outlier_curves(curves: dict[str, dict], path: str | Path, title: str | None = None) -> Path:
    """Fig. 3-style curves: for c swept over [-2, 2], inliers accepted against outliers rejected.

    ``curves``: {label: result of :func:`dcgmm.outliers.outlier_curve`}; the legend shows each AUROC.
    """
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for label, curve in curves.items():
        ax.plot(curve["outliers_rejected"], curve["inliers_accepted"], marker=".", markersize=4, label=f"{label} (AUROC {curve['auroc']:.3f})")
    ax.plot([0, 1], [1, 0], color="grey", lw=0.8, ls=":", label="chance")
    ax.set(xlabel="outliers rejected", ylabel="inliers accepted", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.set_title(title or "outlier detection, c from -2 (left) to 2", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, Path(path))


def plot_inpainting(damaged, masks, inpainted, path: str | Path, clean=None, n: int = 10, title: str | None = None) -> Path:
    """Columns of examples; rows: damaged input, replaced pixels (red), in-painted, and the clean image if given.

    ``damaged``, ``inpainted``, ``clean``: (N, H, W, C); ``masks``: bool (N, H, W).
    """
    damaged, inpainted, masks = np.asarray(damaged), np.asarray(inpainted), np.asarray(masks)
    n = min(n, len(damaged))
    rows = [("damaged", damaged[:n]), ("replaced", None), ("in-painted", inpainted[:n])]
    if clean is not None:
        rows.append(("clean", np.asarray(clean)[:n]))
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 0.95 + 0.3), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            if images is None:
                grey = np.clip(damaged[i].mean(-1), 0, 1)
                overlay = np.stack([grey, grey, grey], -1) * 0.6
                overlay[masks[i]] = (1.0, 0.15, 0.15)
                ax.imshow(overlay, interpolation="nearest")
            elif images.shape[-1] == 3:
                ax.imshow(np.clip(images[i], 0, 1), interpolation="nearest")
            else:
                ax.imshow(images[i, ..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.2)
    return _save(fig, Path(path))
