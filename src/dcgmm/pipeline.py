"""The "train a model" job, in one place: ``dcgmm train`` and ``dcgmm experiment`` both run it.

:func:`train_run` trains a prepared :class:`~dcgmm.training.Trainer` and fills a run folder:

* ``checkpoint.safetensors`` and ``model.safetensors`` after every epoch (resume with ``Trainer.resume``);
* ``history.json`` and ``training.png`` (objective and annealing radius per epoch), ``centroids_layer*.png``;
* the outlier statistics over the training images, saved inside ``model.safetensors``;
* ``samples.png`` / ``samples.npy``: samples with the library's defaults (:func:`dcgmm.sampling.sample`);
* with test images, ``eval.json``: every GMM layer's mean log-likelihood per image;
* with held-out outlier images, ``outliers.json`` / ``outliers.png``: the Fig. 3 curve and AUROC of the test
  images (inliers) against them, and beside them, on the same images, those of a baseline with no model:
  kNN-5 on the pixels of the training images (:func:`dcgmm.baselines.knn_scorer`, standardised like the
  model's scores over 2000 of the training images).

Interrupting it (KeyboardInterrupt) or a diverging run (:class:`~dcgmm.errors.TrainingDiverged`) leaves the
checkpoint of the last finished epoch; the exception reaches the caller.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .baselines import knn_scorer, standardised
from .checkpoint import atomic_write_bytes, atomic_write_text, save_model
from .data import ImageSource
from .model import DCGMM
from .outliers import fit_statistics, image_scores, outlier_curve
from .sampling import DEFAULT_NOISE, DEFAULT_TOP_S, sample
from .training import Trainer

KNN_LABEL = "kNN-5 on pixels"
"""The outlier baseline :func:`train_run` reports beside the model."""
BASELINE_SAMPLE = 2000
"""About this many training images standardise the baseline's scores."""


@dataclass
class Images:
    """Images for a report, and what they are (e.g. ``mnist test classes 0-4``)."""

    images: object
    """Array, memmap, tensor or ImageSource, (N, H, W, C)."""
    description: str


def layer_report(model: DCGMM, images, batch_size: int = 500) -> dict:
    """Every GMM layer's log-likelihood on ``images``: ``{"layer_i": {spec, positions, mean/std per image, ...}}``."""
    return {
        f"layer_{ll.layer}": {
            "spec": ll.spec,
            "positions": list(ll.per_position.shape[1:]),
            "mean_loglik_per_image": float(ll.per_image.mean()),
            "std_loglik_per_image": float(ll.per_image.std()),
            "mean_loglik_per_position": float(ll.per_position.mean()),
        }
        for ll in model.log_likelihoods(images, batch_size=batch_size)
    }


def report_lines(layers: dict) -> list[str]:
    """:func:`layer_report` as one line per layer."""
    return [
        f"  {key:<8} {row['spec']:<8} positions {row['positions'][0]}x{row['positions'][1]}: "
        f"mean log-likelihood per image {row['mean_loglik_per_image']:10.2f}  (per position {row['mean_loglik_per_position']:.3f})"
        for key, row in layers.items()
    ]


def _in_memory(images) -> np.ndarray:
    """Images of any kind :class:`~dcgmm.data.ImageSource` reads, as one float32 array (N, H, W, C)."""
    return np.concatenate([chunk.cpu().numpy() for chunk in ImageSource(images).chunks(10_000)])


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def train_run(
    trainer: Trainer,
    out: str | Path,
    source: str,
    test: Images | None = None,
    outliers: Images | None = None,
    samples: int = 100,
    pictures: bool = True,
    progress: bool = True,
    extra: dict | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[Trainer], None] | None = None,
) -> dict:
    """Train ``trainer`` to its last epoch and write the run folder ``out`` (see the module docstring).

    Parameters
    ----------
    source : what the training images are, stored with the outlier statistics.
    test : test images for ``eval.json`` (and the inliers of the outlier curve).
    outliers : held-out images for the outlier curve (needs ``test``); the kNN-5 baseline beside it reads all
        training images into memory at once.
    samples : how many samples to draw into ``samples.png``/``.npy`` (0: none).
    pictures : write ``training.png`` and the centroid pictures.
    extra : more metadata for ``model.safetensors``.
    log : where the one-line progress reports go.
    on_step : called after every training step (e.g. :meth:`dcgmm.threads.ThreadGovernor.step`).

    Returns
    -------
    ``{"seconds": training time, "eval": layer report or None, "auroc": float or None}``, with held-out outliers
    also ``"knn5_auroc"``, the baseline's.
    """
    from .plots import plot_centroids, plot_history, plot_outlier_curves, plot_samples

    out = Path(out)
    model = trainer.model
    start = time.perf_counter()
    trainer.fit(progress=progress, on_epoch_end=lambda t: t.save_checkpoint(out), on_step=on_step)
    seconds = time.perf_counter() - start
    history = [asdict(r) for r in trainer.history]
    atomic_write_text(out / "history.json", json.dumps(history, indent=1))
    if pictures:
        plot_history(json.loads(json.dumps(history)), out / "training.png")
        for index, _ in model.gmm_layers():
            plot_centroids(model, index, out / f"centroids_layer{index}.png")
    log(f"trained in {seconds:.1f} s; model and checkpoint in {out}")

    start = time.perf_counter()
    fit_statistics(model, trainer.images, source=source, progress=progress)
    save_model(model, out, extra={"train_config": asdict(trainer.config), "epochs_trained": trainer.epoch, **(extra or {})})
    log(f"outlier statistics over {source} ({len(trainer.images)} images) in {time.perf_counter() - start:.1f} s, saved with the model")

    if samples:
        start = time.perf_counter()
        generator = torch.Generator(device=model.device).manual_seed(trainer.config.seed)
        drawn = sample(model, samples, generator=generator, progress=progress).cpu().numpy()
        atomic_write_bytes(out / "samples.npy", npy_bytes(drawn))
        how = f"top-{DEFAULT_TOP_S} draws, noise {DEFAULT_NOISE:g} sigma"
        plot_samples(drawn, out / "samples.png", title=f"{model.spec}: samples ({how})")
        log(f"{samples} samples ({how}) in {time.perf_counter() - start:.1f} s -> {out / 'samples.png'}")

    result = {"seconds": seconds, "eval": None, "auroc": None}
    if test is not None:
        layers = layer_report(model, test.images)
        report = {"data": test.description, "n_images": len(test.images), "layers": layers}
        atomic_write_text(out / "eval.json", json.dumps(report, indent=1))
        log(f"test-set log-likelihoods ({len(test.images)} images), written to {out / 'eval.json'}:")
        for line in report_lines(layers):
            log(line)
        result["eval"] = layers
    if outliers is not None and test is not None:
        curve = outlier_curve(image_scores(model, test.images), image_scores(model, outliers.images))
        train = _in_memory(trainer.images)
        knn = standardised(knn_scorer(train), train[:: max(1, len(train) // BASELINE_SAMPLE)], skip_self=True)
        baseline = outlier_curve(knn(_in_memory(test.images)), knn(_in_memory(outliers.images)))
        report = {"model": model.spec, "inliers": test.description, "outliers": outliers.description, **curve,
                  "baselines": {KNN_LABEL: baseline}}
        atomic_write_text(out / "outliers.json", json.dumps(report, indent=1))
        plot_outlier_curves({model.spec: curve, KNN_LABEL: baseline}, out / "outliers.png",
                            title=f"{test.description} vs {outliers.description}, c from -2 to 2")
        log(f"outlier detection, {test.description} vs {outliers.description}: AUROC {curve['auroc']:.3f}; {KNN_LABEL} "
            f"(no model), same images: {baseline['auroc']:.3f} -> {out / 'outliers.png'}")
        result["auroc"], result["knn5_auroc"] = curve["auroc"], baseline["auroc"]
    return result
