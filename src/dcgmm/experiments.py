"""The paper's experiments (Sec. IV), end to end, each writing a self-contained report into a run folder.

Stages (``dcgmm experiment NAME``; ``all`` runs them in this order and trains shared models once):

* ``outliers``   Fig. 3: every architecture trained on classes 0-4; test classes 0-4 are inliers, 5-9
  outliers; curves over c in [-2, 2] and the AUROC; 2L-c (``protocol_arch``) on four protocols beside kNN-5,
  PCA-50 and a flat GMM of its size.
* ``clustering`` Table II: Dunn index and Davies-Bouldin score of the top layer's clusters, over reruns
  with different seeds; worst case (as in the paper) and mean +- std.
* ``sampling``   Figs. 4-7: the default sampler and the paper's top-1 across architectures, top-S, sharpening;
  NDB/JS against held-out data, and near-duplicates.
* ``inpainting`` located damage and both fills (conditional mean, one draw) against a flat EM GMM's conditional
  mean, the mean image and kNN-5.
* ``centroids``  Fig. 2: the centroids of both GMM layers of 2L-a, and samples with one top component fixed.

Every table has flat-GMM rows fitted by EM (scikit-learn ``GaussianMixture``, diagonal): with the same K, and
with about the parameter count of each DCGMM (:func:`dcgmm.baselines.matched_components`; in-painting has only this one). Each
stage writes ``<out>/<stage>/``: ``section.md`` (its part of the report), ``numbers.json`` (every number,
nothing that depends on the clock: rerunning with the same seed gives the same file), ``times.json``,
``*.csv`` tables and PNG figures; ``<out>/report.md`` is rebuilt from all stages present after each stage.
Models trained on classes 0-4 are saved under ``<out>/models/<dataset>/<arch>/`` (usable with every
``dcgmm`` command).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .baselines import (flat_gmm, gmm_fill, gmm_scorer, iou, knn_fill, knn_scorer, matched_components, mean_fill, pca_scorer,
                        region_mse, standardised)
from .checkpoint import atomic_write_text
from .data import load_dataset
from .errors import InputError
from .inpainting import inpaint, occlude
from .metrics import Bins, davies_bouldin, dunn_index, near_duplicates, pairwise_distances
from .model import DCGMM
from .outliers import image_scores, outlier_curve
from .pipeline import train_run
from .plots import plot_centroids, plot_inpainting, plot_outlier_curves, plot_samples
from .progress import progress_bar
from .sampling import DEFAULT_NOISE, DEFAULT_TOP_S, Sharpening, sample, sample_components
from .spec import TABLE_I, parse
from .training import TrainConfig, Trainer

STAGES = ("outliers", "clustering", "sampling", "inpainting", "centroids")

PAPER_TABLE_II = {
    "mnist": {
        "dunn": {"1L": 0.14, "2L-a": 0.14, "2L-b": 0.13, "2L-c": 0.12, "2L-d": 0.19, "2L-e": None, "3L-a": 0.15, "3L-b": 0.15},
        "db": {"1L": 2.59, "2L-a": 2.73, "2L-b": 3.06, "2L-c": 2.62, "2L-d": 2.57, "2L-e": None, "3L-a": 2.65, "3L-b": 2.53},
    },
    "fashion-mnist": {
        "dunn": {"1L": 0.14, "2L-a": 0.15, "2L-b": 0.16, "2L-c": 0.15, "2L-d": 0.11, "2L-e": 0.11, "3L-a": 0.096, "3L-b": 0.13},
        "db": {"1L": 2.37, "2L-a": 2.77, "2L-b": 2.62, "2L-c": 2.7, "2L-d": 2.40, "2L-e": 2.92, "3L-a": 3.2, "3L-b": 2.35},
    },
}
"""Table II of the paper (worst case over 10 reruns); 2L-e has no MNIST entry there."""


@dataclass
class ExperimentData:
    """One dataset: images (N, H, W, C) float32 and labels (N,) for both splits."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @classmethod
    def load(cls, name: str, data_dir: str | None = None) -> "ExperimentData":
        train = load_dataset(name, "train", data_dir=data_dir)
        test = load_dataset(name, "test", data_dir=data_dir)
        return cls("fashion-mnist" if name == "fashion" else name, *train, *test)

    def images(self, split: str, classes) -> np.ndarray:
        images, labels = (self.train_images, self.train_labels) if split == "train" else (self.test_images, self.test_labels)
        return images[np.isin(labels, list(classes))]


@dataclass
class ExperimentConfig:
    """What the experiments train and measure. Every model is trained with the library's defaults; the
    protocol is the paper's where it fits the 2-hour budget of ``all`` on a 2-core CPU — each clustering run has
    the paper's full schedule, but there is one run per architecture instead of ten (see ``reruns``)."""

    archs: list[str] = field(default_factory=lambda: list(TABLE_I))
    """Architectures of the outlier and clustering tables."""
    epochs: int = 25
    """Training epochs of the models on classes 0-4 (outliers, sampling, centroids)."""
    seed: int = 0
    inliers: tuple[int, ...] = (0, 1, 2, 3, 4)
    outliers: tuple[int, ...] = (5, 6, 7, 8, 9)
    reruns: int = 1
    """Clustering reruns per architecture (seeds seed .. seed + reruns - 1); the paper has 10, which at the full
    schedule would take ~5.5 h on 2 cores (each rerun of all architectures on both datasets: 33 min in
    docs/results.md)."""
    clustering_images: int = 60_000
    """Training images (all classes, a random subset drawn per rerun if the training set is larger) of each
    clustering run: all of MNIST's and FashionMNIST's, as in the paper."""
    clustering_epochs: int = 25
    clustering_window: int = 100
    """Annealing window (steps) of the clustering runs (100: the training default). Shorter schedules leave the
    deep models' top components unused (3L-a: 3 of 49 after 10 epochs on 10 000 images with a window of 20)."""
    clustering_eval_images: int = 10_000
    """Test images (all classes) the clustering measures are computed on."""
    sampling_archs: list[str] = field(default_factory=lambda: ["1L", "2L-d", "2L-c", "2L-e", "3L-a"])
    sampling_arch: str = "2L-c"
    """The architecture of the top-S and sharpening rows (Figs. 6-7)."""
    top_s: tuple[int, ...] = (2, 5, 10)
    samples: int = 1000
    """Samples per row of the sampling table (and held-out reference images)."""
    sharpening_steps: int = 1000
    bins: int = 100
    """k-means bins of NDB/JS."""
    centroid_arch: str = "2L-a"
    em_components: int = 25
    """K of the flat EM baselines of the outlier and sampling tables (the K of 1L)."""
    em_reg_covar: tuple[float, ...] = (1e-6, 0.05)
    """reg_covar of the EM baselines: scikit-learn's default, and our variance floor."""
    em_max_iter: int = 100
    protocol_arch: str = "2L-c"
    """The architecture of the four-protocol outlier table (the README's default)."""
    inpainting_archs: list[str] = field(default_factory=lambda: ["2L-c", "2L-e", "3L-a"])
    inpainting_images: int = 1000
    """Damaged test images per in-painting row."""
    inpainting_square: tuple[int, int] = (10, 14)
    """Smallest and largest side (pixels) of the damaged squares."""


def _check_config(c: "ExperimentConfig", shapes: set) -> None:
    """Refuse settings that could only fail midway, after earlier stages have written their results."""
    counts = {"epochs": c.epochs, "reruns": c.reruns, "clustering_images": c.clustering_images,
              "clustering_epochs": c.clustering_epochs, "clustering_window": c.clustering_window,
              "clustering_eval_images": c.clustering_eval_images, "samples": c.samples, "bins": c.bins,
              "em_components": c.em_components, "inpainting_images": c.inpainting_images}
    for name, value in counts.items():
        if value < 1:
            raise InputError(f"experiment setting {name} must be at least 1; got {value}")
    low, high = c.inpainting_square
    for shape in shapes:
        if not 1 <= low <= high <= min(shape[:2]):
            raise InputError(f"in-painting squares of {low}-{high} px do not fit {shape[0]}x{shape[1]} images: "
                             f"choose sides between 1 and {min(shape[:2])}")
    if not c.archs or not c.sampling_archs:
        raise InputError("name at least one architecture for the tables and one for sampling")
    for arch in dict.fromkeys([*c.archs, *c.sampling_archs, c.sampling_arch, c.centroid_arch, c.protocol_arch, *c.inpainting_archs]):
        for shape in shapes:
            model = DCGMM.from_spec(arch, input_shape=shape)  # SpecError if the windows do not fit
            h, w, _ = model.layers[[i for i, _ in model.gmm_layers()][-1]].out_shape
            if h * w != 1:
                raise InputError(f"architecture {arch!r} ends in a GMM layer with {h}x{w} positions on {shape} images; "
                                 "the experiments need a global top GMM layer (1x1), as in every Table I architecture")


def top_components(arch: str) -> int:
    """K of the top GMM layer of an architecture."""
    return [layer.args[0] for layer in parse(arch) if layer.letter == "G"][-1]


def machine() -> str:
    """One line: CPU, cores, torch version and threads, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {platform.system()}")


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _clean(value):
    """JSON-safe copy: NaN/inf become None, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass
class StageResult:
    markdown: str
    numbers: dict
    tables: dict[str, tuple[list[str], list[list]]] = field(default_factory=dict)
    """CSV files to write: name -> (header, rows)."""


class Experiment:
    """Runs stages into ``out`` for one or more datasets; models trained on the inlier classes are shared
    between stages of one run."""

    def __init__(self, out: str | Path, datasets: list[ExperimentData], config: ExperimentConfig | None = None,
                 progress: bool = True, log: Callable[[str], None] = print, command: str | None = None):
        if not datasets:
            raise InputError("no datasets given: name at least one (mnist, fashion-mnist)")
        self.out = Path(out)
        self.datasets = datasets
        self.config = config or ExperimentConfig()
        _check_config(self.config, {tuple(d.train_images.shape[1:]) for d in datasets})
        self.progress = progress
        self.log = log
        self.command = command or " ".join(sys.argv)
        self._models: dict[tuple[str, str], DCGMM] = {}
        self._train_seconds: dict[tuple[str, str], float] = {}
        self._em: dict[tuple, object] = {}

    # ------------------------------------------------------------------------------------------ running
    def run(self, stages) -> dict[str, float]:
        """Run ``stages`` (names from STAGES, or ["all"]) in order; returns seconds per stage."""
        stages = list(STAGES) if list(stages) == ["all"] else list(stages)
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise InputError(f"unknown experiment {unknown[0]!r}: choose one of {', '.join(STAGES)} or all")
        times = {}
        for stage in stages:
            start = time.perf_counter()
            result = getattr(self, stage)()
            times[stage] = time.perf_counter() - start
            self._write_stage(stage, result, times[stage])
            self.log(f"{stage}: done in {times[stage]:.0f} s -> {self.out / stage}")
        return times

    def _bar(self, stage: str, total: int):
        return progress_bar(enabled=self.progress, total=total, desc=stage)

    def _write_stage(self, stage: str, result: StageResult, seconds: float) -> None:
        folder = self.out / stage
        for name, (header, rows) in result.tables.items():
            atomic_write_text(folder / f"{name}.csv", _csv(header, rows))
        atomic_write_text(folder / "numbers.json", json.dumps(_clean(result.numbers), indent=1, sort_keys=True))
        atomic_write_text(folder / "times.json", json.dumps({
            "seconds": seconds, "command": self.command, "machine": machine(),
            "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "train_seconds": {f"{d}/{a}": s for (d, a), s in self._train_seconds.items()},
            "config": _clean(asdict(self.config)),
        }, indent=1))
        atomic_write_text(folder / "section.md", result.markdown)
        write_report(self.out)

    # ------------------------------------------------------------------------------------------ shared
    def inlier_model(self, data: ExperimentData, arch: str) -> DCGMM:
        """``arch`` trained on the inlier classes (epochs and seed of the config), with outlier statistics;
        trained once per run and saved under models/."""
        c = self.config
        return self.trained_model((data.name, arch), arch, data.images("train", c.inliers),
                                  self.out / "models" / data.name / _slug(arch),
                                  f"{data.name} train classes {_classes(c.inliers)}", "inlier classes " + _classes(c.inliers))

    def trained_model(self, key: tuple, arch: str, images: np.ndarray, folder: Path, source: str, what: str) -> DCGMM:
        """``arch`` trained with the library's defaults (the config's epochs and seed) on ``images``, with outlier
        statistics and the calibrated damage search; trained once per run under ``key`` and saved in ``folder``."""
        if key not in self._models:
            c = self.config
            start = time.perf_counter()
            model = DCGMM.from_spec(arch, input_shape=images.shape[1:])
            trainer = Trainer(model, TrainConfig(epochs=c.epochs, seed=c.seed), images)
            train_run(trainer, folder, source=source, samples=0, pictures=False, progress=False,
                      extra={"experiment": what}, log=lambda line: None)
            self._train_seconds[key] = time.perf_counter() - start
            self._models[key] = model
        return self._models[key]

    def em(self, images: np.ndarray, k: int, seed: int, reg_covar: float, cache_key=None):
        """A flat diagonal GMM with ``k`` components fitted by EM (k-means initialisation) on flattened images."""
        key = (cache_key, k, seed, reg_covar)
        if cache_key is not None and key in self._em:  # the same images under the same name: fitted already
            return self._em[key]
        gmm = flat_gmm(images, k, reg_covar=reg_covar, seed=seed, max_iter=self.config.em_max_iter)
        if cache_key is not None:
            self._em[key] = gmm
        return gmm

    # ------------------------------------------------------------------------------------------ stages
    def matched_k(self, arch: str, shape: tuple) -> int:
        """K of a flat diagonal GMM with about as many parameters as ``arch`` on images of ``shape``."""
        model = DCGMM.from_spec(arch, input_shape=shape)
        return matched_components(sum(p.numel() for p in model.parameters()), int(np.prod(shape)))

    def em_sizes(self, archs: list[str], shape: tuple, same: list[int]) -> dict[int, list[str]]:
        """The K of the flat EM rows: ``same`` (the K of the DCGMMs' top layers) and, for every architecture,
        the K with about its parameter count — the nearest of ``same`` when that is within 10% of it, so
        near-equal sizes share one fit. Returns K -> the architectures whose parameter count it matches."""
        sizes = {k: [] for k in same}
        for arch in archs:
            k = self.matched_k(arch, shape)
            near = [s for s in same if abs(k - s) <= 0.1 * s]
            sizes.setdefault(min(near, key=lambda s: abs(k - s)) if near else k, []).append(arch)
        return dict(sorted(sizes.items()))

    def outliers(self) -> StageResult:
        c = self.config
        sizes = {d.name: self.em_sizes(c.archs, tuple(d.train_images.shape[1:]), [c.em_components]) for d in self.datasets}
        protocols = self._protocols()
        n_em = sum(len(k) + len(c.em_reg_covar) - 1 for k in sizes.values())
        bar = self._bar("outliers", len(self.datasets) * len(c.archs) + n_em + len(protocols))
        numbers, rows, figures = {}, {}, []
        for data in self.datasets:
            train = data.images("train", c.inliers)
            inliers, outliers = data.images("test", c.inliers), data.images("test", c.outliers)
            curves = {}
            for arch in c.archs:
                bar.set_postfix_str(f"{data.name} {arch}")
                model = self.inlier_model(data, arch)
                curves[arch] = outlier_curve(image_scores(model, inliers), image_scores(model, outliers))
                bar.update()
            sample = _subset(train, 2000, c.seed)
            fits = [(c.em_components, reg, []) for reg in c.em_reg_covar[:-1]]
            fits += [(k, c.em_reg_covar[-1], archs) for k, archs in sizes[data.name].items()]
            for k, reg, archs in fits:
                bar.set_postfix_str(f"{data.name} EM K={k} reg {reg:g}")
                gmm = self.em(train, k, c.seed, reg, cache_key=(data.name, "inliers"))
                score = standardised(gmm_scorer(gmm), sample)
                curves[f"EM flat K={k}, reg {reg:g}" + _size_note(archs)] = outlier_curve(score(inliers), score(outliers))
                bar.update()
            numbers[data.name] = curves
            for label, curve in curves.items():
                rows.setdefault(label, {})[data.name] = curve["auroc"]
            path = plot_outlier_curves(curves, self.out / "outliers" / f"outliers-{data.name}.png",
                                       title=f"{data.name}: train {_classes(c.inliers)}, outliers = test {_classes(c.outliers)}")
            figures.append(path.name)
        protocol_numbers = {}
        for name, (train, inliers, outliers, model, cache) in protocols.items():
            bar.set_postfix_str(f"protocol {name}")
            protocol_numbers[name] = self._protocol_row(train, inliers, outliers, model(), cache)
            bar.update()
        numbers["protocols"] = protocol_numbers
        bar.close()
        names = [d.name for d in self.datasets]
        header = ["model"] + [f"AUROC {n}" for n in names]
        table = [[label] + [_fmt(values.get(n), 4) for n in names] for label, values in rows.items()]
        md = [
            "## Outlier detection (Fig. 3)",
            f"Each architecture is trained with the library's defaults on the training images of classes "
            f"{_classes(c.inliers)} ({c.epochs} epochs, seed {c.seed}); its outlier statistics (mean and variance of the "
            f"top layer's log-likelihood) come from the same images. Inliers: test images of classes {_classes(c.inliers)}; "
            f"outliers: test images of classes {_classes(c.outliers)}. The score is the standardised top-layer "
            "log-likelihood (Eq. 6, the library's default score); an image is an inlier at c when its score is at least -c. "
            "AUROC: area under the full ROC of that score. EM rows: a flat diagonal GMM fitted by scikit-learn on the same "
            f"images, its log-likelihood standardised over 2000 of them — with K = {c.em_components} (the K of 1L), and "
            "with K chosen so that it has about as many parameters as the named architectures (K (2D + 1) parameters).",
            "",
            _table(header, table),
            "",
        ] + [f"![{f}](outliers/{f})" for f in figures]
        tables = {"auroc": (header, [[label] + [values.get(n) for n in names] for label, values in rows.items()])}
        if protocol_numbers:
            labels = list(next(iter(protocol_numbers.values())))
            protocol_header = ["score"] + list(protocol_numbers)
            md += [
                "",
                f"### Four protocols, {c.protocol_arch}",
                f"{c.protocol_arch} trained with the library's defaults on each protocol's training images, scored by the "
                "default score, beside plain baselines on raw pixels fitted on the same images: kNN-5 (minus the mean "
                "distance to the 5 nearest training images), PCA-50 (minus the reconstruction error) and a flat diagonal "
                f"EM GMM with about {c.protocol_arch}'s parameter count (reg {c.em_reg_covar[-1]:g}). AUROC; rows that "
                "share an inlier set share its training images.",
                "",
                _table(protocol_header, [[label] + [_fmt(protocol_numbers[p][label], 4) for p in protocol_numbers] for label in labels]),
                "",
            ]
            tables["protocols"] = (protocol_header, [[label] + [protocol_numbers[p][label] for p in protocol_numbers] for label in labels])
        return StageResult("\n".join(md) + "\n", numbers, tables)

    def _protocols(self) -> dict:
        """The four outlier protocols whose datasets are loaded: name -> (training images, inliers, outliers,
        a function returning the trained model of the protocol architecture, the key of its EM fits)."""
        c, found = self.config, {d.name: d for d in self.datasets}
        everything = range(10)
        specs = {"MNIST 0-4 vs 5-9": ("mnist", c.inliers, "mnist", c.outliers),
                 "FashionMNIST 0-4 vs 5-9": ("fashion-mnist", c.inliers, "fashion-mnist", c.outliers),
                 "MNIST 1-9 vs 0": ("mnist", range(1, 10), "mnist", [0]),
                 "FashionMNIST vs MNIST": ("fashion-mnist", everything, "mnist", everything)}
        protocols = {}
        for name, (inlier_set, inlier_classes, outlier_set, outlier_classes) in specs.items():
            if inlier_set not in found or outlier_set not in found:
                continue
            data = found[inlier_set]
            train = data.images("train", inlier_classes)
            cache = (data.name, "inliers") if tuple(inlier_classes) == tuple(c.inliers) else name
            if tuple(inlier_classes) == tuple(c.inliers):
                model = lambda data=data: self.inlier_model(data, c.protocol_arch)
            else:
                key, folder = (name, c.protocol_arch), self.out / "models" / _slug(name.replace(" ", "_")) / _slug(c.protocol_arch)
                model = lambda key=key, train=train, folder=folder, name=name: self.trained_model(key, c.protocol_arch, train, folder, name, name)
            protocols[name] = (train, data.images("test", inlier_classes), found[outlier_set].images("test", outlier_classes), model, cache)
        return protocols

    def _protocol_row(self, train: np.ndarray, inliers: np.ndarray, outliers: np.ndarray, model: DCGMM, cache) -> dict:
        c = self.config
        sample = _subset(train, 2000, c.seed)
        k = self.matched_k(c.protocol_arch, tuple(train.shape[1:]))
        scores = {
            f"{c.protocol_arch}, default score": lambda x: image_scores(model, x),
            "kNN-5 on pixels": standardised(knn_scorer(train), sample, skip_self=True),
            "PCA-50 reconstruction": standardised(pca_scorer(train, seed=c.seed), sample),
            f"EM flat K={k} ({c.protocol_arch}'s parameters)": standardised(gmm_scorer(self.em(train, k, c.seed, c.em_reg_covar[-1], cache_key=cache)), sample),
        }
        return {label: outlier_curve(score(inliers), score(outliers))["auroc"] for label, score in scores.items()}

    def clustering(self) -> StageResult:
        c = self.config
        ks = sorted({top_components(a) for a in c.archs})
        sizes = {d.name: self.em_sizes(c.archs, tuple(d.train_images.shape[1:]), ks) for d in self.datasets}
        n_em = sum(len(k) for k in sizes.values())
        bar = self._bar("clustering", (len(self.datasets) * len(c.archs) + n_em) * c.reruns)
        numbers = {}
        reg = c.em_reg_covar[-1]
        for data in self.datasets:
            rng = np.random.default_rng(c.seed)
            pick = rng.permutation(len(data.test_images))[: c.clustering_eval_images]
            evaluation, truth = data.test_images[pick], data.test_labels[pick]
            distances = pairwise_distances(evaluation)
            result = {"true classes": [_cluster_measures(distances, evaluation, truth, truth)]}
            for arch in c.archs:
                result[arch] = []
                for r in range(c.reruns):
                    bar.set_postfix_str(f"{data.name} {arch} rerun {r + 1}")
                    seed = c.seed + r
                    images = _subset(data.train_images, c.clustering_images, seed)
                    model = DCGMM.from_spec(arch, input_shape=images.shape[1:])
                    config = TrainConfig(epochs=c.clustering_epochs, window=c.clustering_window, seed=seed)
                    Trainer(model, config, images).fit(progress=False)
                    result[arch].append({"seed": seed, "components": top_components(arch),
                                         **_cluster_measures(distances, evaluation, model.clusters(evaluation), truth)})
                    bar.update()
            for k, archs in sizes[data.name].items():
                label = f"EM flat K={k}" + _size_note(archs)
                result[label] = []
                for r in range(c.reruns):
                    bar.set_postfix_str(f"{data.name} {label} rerun {r + 1}")
                    seed = c.seed + r
                    gmm = self.em(_subset(data.train_images, c.clustering_images, seed), k, seed, reg)
                    result[label].append({"seed": seed, "components": k,
                                          **_cluster_measures(distances, evaluation, gmm.predict(_flat64(evaluation)), truth)})
                    bar.update()
            numbers[data.name] = result
        bar.close()
        return _clustering_result(numbers, c, reg, [len(d.train_images) for d in self.datasets])

    def sampling(self) -> StageResult:
        c = self.config
        configs = [(arch, None, False) for arch in c.sampling_archs]  # None: the library's default sampler
        configs += [(arch, 1, False) for arch in c.sampling_archs]
        configs += [(c.sampling_arch, s, False) for s in c.top_s] + [(c.sampling_arch, 1, True)]
        bar = self._bar("sampling", len(self.datasets) * (len(configs) + 2))
        numbers, md_rows, csv_rows, figures = {}, [], [], {}
        for data in self.datasets:
            train, test = data.images("train", c.inliers), data.images("test", c.inliers)
            order = np.random.default_rng(c.seed).permutation(len(test))
            n = min(c.samples, len(test) // 2)
            reference, other = test[order[:n]], test[order[n : 2 * n]]
            bar.set_postfix_str(f"{data.name} k-means bins")
            bins = Bins(_subset(train, 20_000, c.seed), n_bins=min(c.bins, n), seed=c.seed)
            rows = {"held-out test images": _sample_row(bins, other, reference)}
            bar.update()
            for arch, top_s, sharp in configs:
                bar.set_postfix_str(f"{data.name} {arch} S={top_s}{' sharpened' if sharp else ''}")
                model = self.inlier_model(data, arch)
                if top_s is None:
                    generator = torch.Generator().manual_seed(c.seed)
                    images = sample(model, n, generator=generator).numpy()
                    label = f"{arch}, default (top-{DEFAULT_TOP_S}, noise {DEFAULT_NOISE:g})"
                    name = f"{data.name}-{_slug(arch)}-default.png"
                else:  # the paper's sampler: top-S draws of the centroids, no noise
                    sharpening = Sharpening(steps=c.sharpening_steps) if sharp else None
                    generator = torch.Generator().manual_seed(c.seed + top_s)
                    images = sample(model, n, top_s=top_s, noise=0.0, control_noise=0.0, sharpening=sharpening, generator=generator).numpy()
                    label = f"{arch}, top-{top_s}" + (", sharpened" if sharp else "")
                    name = f"{data.name}-{_slug(arch)}-S{top_s}{'-sharp' if sharp else ''}.png"
                rows[label] = _sample_row(bins, images, reference)
                plot_samples(images[:50], self.out / "sampling" / name, title=f"{data.name} {_classes(c.inliers)}: {label}")
                figures.setdefault(data.name, []).append((label, name))
                bar.update()
            bar.set_postfix_str(f"{data.name} EM")
            shape = tuple(train.shape[1:])
            for k, archs in self.em_sizes(c.sampling_archs, shape, [c.em_components]).items():
                gmm = self.em(train, k, c.seed, c.em_reg_covar[-1], cache_key=(data.name, "inliers"))
                rng = np.random.default_rng(c.seed)
                draws = rng.choice(k, size=n, p=gmm.weights_)
                centroids = gmm.means_[draws]
                noisy = centroids + rng.standard_normal(centroids.shape) * np.sqrt(gmm.covariances_[draws])
                size = _size_note(archs)
                for suffix, flat in (("centroids", centroids), ("centroid + noise", noisy)):
                    if suffix == "centroids" and k != c.em_components:
                        continue
                    images = flat.reshape(n, *shape).astype(np.float32)
                    label = f"EM flat K={k}, {suffix}{size}"
                    rows[label] = _sample_row(bins, images, reference)
                    name = f"{data.name}-em-K{k}-{'noise' if 'noise' in suffix else 'centroids'}.png"
                    plot_samples(images[:50], self.out / "sampling" / name, title=f"{data.name} {_classes(c.inliers)}: EM flat K={k}, {suffix}")
                    figures[data.name].append((label, name))
            bar.update()
            numbers[data.name] = rows
            for label, row in rows.items():
                md_rows.append([data.name, label, f"{row['ndb']}/{row['bins']}", _fmt(row["js"], 4), row["duplicates"]])
                csv_rows.append([data.name, label, row["ndb"], row["bins"], row["js"], row["duplicates"]])
        bar.close()
        header = ["dataset", "samples", "NDB ↓", "JS ↓", f"near-duplicates (of {c.samples}) ↓"]
        md = [
            "## Sampling (Figs. 4-7)",
            f"Models trained on classes {_classes(c.inliers)} ({c.epochs} epochs). {c.samples} samples per row are "
            f"compared with {c.samples} held-out test images of the same classes: NDB = number of the {c.bins} k-means "
            "bins (fitted on training images) whose proportions differ significantly (two-proportion z-test, 5%), JS = "
            "Jensen-Shannon divergence of the bin histograms (nats); the row 'held-out test images' is what real data "
            "scores, the floor. Near-duplicates: samples with another sample within RMS pixel distance 0.02. "
            f"'default': the library's sampler with no options (top-{DEFAULT_TOP_S} draws at every layer, "
            f"{DEFAULT_NOISE:g} learned standard deviations of pixel noise); 'top-S': the paper's "
            f"sampler (centroids, no noise). Sharpening: {c.sharpening_steps} gradient steps of 0.1. EM rows: a flat "
            f"diagonal GMM fitted by EM, with K={c.em_components} and with about the parameter count of the named "
            "architectures; 'centroids' emits the chosen component's mean as top-1 sampling does, 'centroid + noise' "
            "draws from it.",
            "",
            _table(header, md_rows),
            "",
        ]
        for name, items in figures.items():
            md.append(f"### {name}")
            md += [f"**{label}**\n\n![{label}](sampling/{file})\n" for label, file in items]
        return StageResult("\n".join(md) + "\n", numbers, {"sampling": (["dataset", "samples", "ndb", "bins", "js", "near_duplicates"], csv_rows)})

    def inpainting(self) -> StageResult:
        c = self.config
        fills = ("noise", 0.5)
        bar = self._bar("inpainting", len(self.datasets) * len(c.inpainting_archs) * len(fills))
        numbers, md_rows, csv_rows, figures = {}, [], [], []
        for data in self.datasets:
            train, clean = data.images("train", c.inliers), data.images("test", c.inliers)[: c.inpainting_images]
            numbers[data.name] = {}
            matched = {arch: k for k, archs in self.em_sizes(c.inpainting_archs, tuple(train.shape[1:]), [c.em_components]).items()
                       for arch in archs}
            for fill in fills:
                damaged, masks = occlude(clean, size=c.inpainting_square, fill=fill, seed=c.seed + 2)
                baselines = {
                    "mean_image": region_mse(mean_fill(train, damaged, masks), clean, masks),
                    "knn5_true_mask": region_mse(knn_fill(train, damaged, masks), clean, masks),
                    "damaged": region_mse(damaged, clean, masks),
                }
                for arch in c.inpainting_archs:
                    bar.set_postfix_str(f"{data.name} {arch} {fill}")
                    model = self.inlier_model(data, arch)
                    draw = lambda: torch.Generator().manual_seed(c.seed)
                    located = inpaint(model, damaged)
                    located_draw = inpaint(model, damaged, fill="sample", generator=draw())
                    given = inpaint(model, damaged, mask=masks)
                    given_draw = inpaint(model, damaged, mask=masks, fill="sample", generator=draw())
                    paper = inpaint(model, damaged, locate="outliers", fill="sample", generator=draw())
                    flat = self.em(train, matched[arch], c.seed, c.em_reg_covar[-1], cache_key=(data.name, "inliers"))
                    row = {"iou": iou(located.masks, masks), "iou_paper": iou(paper.masks, masks),
                           "located_mean": region_mse(located.images, clean, masks),
                           "located_sample": region_mse(located_draw.images, clean, masks),
                           "true_mask_mean": region_mse(given.images, clean, masks),
                           "true_mask_sample": region_mse(given_draw.images, clean, masks),
                           "paper": region_mse(paper.images, clean, masks), "flat_gmm_k": matched[arch],
                           "flat_gmm_true_mask": region_mse(gmm_fill(flat, damaged, masks), clean, masks), **baselines,
                           "outside": region_mse(located.images, clean, ~masks)}
                    numbers[data.name][f"{arch}, {fill}"] = row
                    what = "noise" if fill == "noise" else f"grey {fill:g}"
                    md_rows.append([data.name, arch, what, _fmt(row["iou"]), _fmt(row["iou_paper"])]
                                   + [_fmt(row[k], 4) for k in _INPAINTING_COLUMNS])
                    csv_rows.append([data.name, arch, what, row["iou"], row["iou_paper"]] + [row[k] for k in _INPAINTING_COLUMNS])
                    if arch == c.inpainting_archs[0]:
                        name = f"{data.name}-{_slug(arch)}-{'noise' if fill == 'noise' else 'grey'}.png"
                        plot_inpainting(damaged[:12], located.masks[:12], located.images[:12], self.out / "inpainting" / name,
                                        clean=clean[:12], n=12, title=f"{data.name} {arch}: damage located by the model, conditional-mean fill")
                        figures.append(name)
                    bar.update()
        bar.close()
        header = ["dataset", "model", "squares", "IoU ↑", "IoU, paper's search", "located, mean fill ↓", "located, draw",
                  "true mask, mean fill", "true mask, draw", "paper's search + draw", "flat EM GMM of its size (true mask)",
                  "mean image", "kNN-5 (true mask)",
                  "damaged input", "outside the square ↓"]
        md = [
            "## In-painting (Sec. III-B5, and beyond)",
            f"Models of the outlier stage (classes {_classes(c.inliers)}); the first {c.inpainting_images} test images of "
            f"those classes, each with one square of {c.inpainting_square[0]}-{c.inpainting_square[1]} px at a random "
            "place, filled with uniform noise or with grey "
            "0.5. `inpaint` with its defaults finds the damage itself (the calibrated search) and fills it with the "
            "conditional mean; 'draw' is the paper's one sample (Eq. 10) in the same region; 'paper's search' is Eq. 6 "
            "(c = 1, coverage 0.75). IoU of the located region with the true square; mean squared error over the true "
            "square (pixels in [0, 1]) for each fill, beside the conditional mean of a flat EM GMM with about the model's "
            "parameter count (given the true mask), pasting the training mean image and the mean of the 5 "
            "training images nearest on the known pixels (kNN-5, given the true mask); the last column is the error "
            "outside the square (good pixels the search replaced).",
            "",
            _table(header, md_rows),
            "",
        ] + [f"![{f}](inpainting/{f})" for f in figures]
        csv_header = ["dataset", "model", "squares", "iou", "iou_paper", *_INPAINTING_COLUMNS]
        return StageResult("\n".join(md) + "\n", numbers, {"inpainting": (csv_header, csv_rows)})

    def centroids(self) -> StageResult:
        c = self.config
        bar = self._bar("centroids", len(self.datasets))
        md = [
            "## Centroids (Fig. 2)",
            f"{c.centroid_arch} trained on classes {_classes(c.inliers)}. Lower layer: each centroid is an image patch. "
            "Top layer: each centroid is a pattern of lower-layer responsibilities, one small tile per position of its "
            "fold window (bright = that lower component is responsible). Samples: the top component with the largest "
            "mixing weight fixed, lower layers drawn by top-2 sampling.",
            "",
        ]
        numbers = {}
        for data in self.datasets:
            bar.set_postfix_str(data.name)
            model = self.inlier_model(data, c.centroid_arch)
            gmms = [i for i, _ in model.gmm_layers()]
            files = []
            for index in gmms:
                path = plot_centroids(model, index, self.out / "centroids" / f"{data.name}-layer{index}.png")
                files.append((f"layer {index} {model.layers[index].spec()}", path.name))
            top = model.layers[gmms[-1]]
            chosen = int(torch.argmax(top.log_weights.reshape(-1)))
            generator = torch.Generator().manual_seed(c.seed)
            images = sample_components(model, [chosen] * 20, top_s=2, generator=generator).numpy()
            path = plot_samples(images, self.out / "centroids" / f"{data.name}-component{chosen}.png", title=f"top component {chosen} fixed")
            files.append((f"samples of top component {chosen}", path.name))
            numbers[data.name] = {"chosen_component": chosen, "weights": torch.exp(top.log_weights.reshape(-1)).tolist(),
                                  "sample_checksum": float(images.astype(np.float64).sum())}
            md.append(f"### {data.name}")
            md += [f"**{label}**\n\n![{label}](centroids/{file})\n" for label, file in files]
            bar.update()
        bar.close()
        return StageResult("\n".join(md) + "\n", numbers)


# ---------------------------------------------------------------------------------------------- helpers
def _classes(classes) -> str:
    classes = sorted(classes)
    if classes == list(range(classes[0], classes[-1] + 1)) and len(classes) > 2:
        return f"{classes[0]}-{classes[-1]}"
    return ",".join(map(str, classes))


def _slug(arch: str) -> str:
    """A folder name for a preset or spec string."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in arch).strip("_")


_INPAINTING_COLUMNS = ("located_mean", "located_sample", "true_mask_mean", "true_mask_sample", "paper", "flat_gmm_true_mask",
                       "mean_image", "knn5_true_mask", "damaged", "outside")


def _size_note(archs: list[str]) -> str:
    """The label suffix of a flat EM row whose K matches the parameter count of ``archs``."""
    return f" (about the parameters of {', '.join(archs)})" if archs else ""


def _flat64(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.float64).reshape(len(images), -1)


def _subset(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` images drawn without replacement by ``seed`` (all of them, shuffled, if there are fewer)."""
    return images[np.random.default_rng(seed).permutation(len(images))[:n]]


def _cluster_measures(distances: np.ndarray, images: np.ndarray, clusters: np.ndarray, truth: np.ndarray) -> dict:
    from sklearn.metrics import adjusted_rand_score

    used = len(np.unique(clusters))
    if used < 2:  # one cluster: the measures are undefined
        return {"dunn": None, "davies_bouldin": None, "clusters_used": used, "ari": 0.0}
    return {"dunn": dunn_index(distances, clusters), "davies_bouldin": davies_bouldin(images, clusters),
            "clusters_used": used, "ari": float(adjusted_rand_score(truth, clusters))}


def _summary(runs: list[dict], key: str, worst) -> dict:
    values = np.array([r[key] for r in runs if r[key] is not None], dtype=np.float64)
    if len(values) == 0:
        return {"worst": None, "mean": None, "std": None}
    return {"worst": float(worst(values)), "mean": float(values.mean()), "std": float(values.std())}


def _clustering_result(numbers: dict, c: ExperimentConfig, reg: float, train_sizes: list[int]) -> StageResult:
    """The clustering section; ``train_sizes``: the number of training images of each dataset."""
    md = [
        "## Clustering (Table II)",
        f"Cluster of an image: the component of the top GMM layer with the largest responsibility (EM rows: the "
        f"flat GMM's most probable component). The measures are computed on {c.clustering_eval_images} test images "
        "of all ten classes (a fixed random subset if the test set is larger), in pixel space (Euclidean distance "
        "between the flattened images in [0, 1]), with these cluster labels — the true classes are not used, except "
        "in the 'true classes' row (the ten real classes as clusters, for scale) and in the ARI column (adjusted Rand "
        "index of clusters against true classes, 0 = chance, 1 = the classes).",
        "",
        ("Each run trains" if c.reruns == 1 else f"Each of the {c.reruns} reruns trains")
        + " with the library's defaults from random initial values with its own seed on "
        + ("all training images" if c.clustering_images >= max(train_sizes) else
           f"its own random subset of {c.clustering_images} training images") + f" of all classes, {c.clustering_epochs} epochs with an annealing window "
        f"of {c.clustering_window} steps (the paper: 10 reruns of 25 epochs on all 60 000 images"
        + ("; ten reruns do not fit the 2-hour budget of `all` on 2 cores" if c.reruns < 10 else "") + "). 'worst' is the worst case over the reruns, as in the paper; "
        "'clusters used': how many of the top layer's components hold at least one evaluation image (range over the "
        f"reruns). EM rows: scikit-learn GaussianMixture, diagonal, reg_covar {reg:g}, k-means initialisation, the same "
        "training images and seeds; with the K of the DCGMMs' top layers and with about their parameter counts.",
        "",
    ]
    header = ["dataset", "model", "Dunn worst ↑", "Dunn mean ± std", "DB worst ↓", "DB mean ± std", "clusters used", "ARI mean", "paper Dunn", "paper DB"]
    rows, csv_rows = [], []
    for dataset, result in numbers.items():
        paper = PAPER_TABLE_II.get(dataset, {})
        for label, runs in result.items():
            dunn, db = _summary(runs, "dunn", np.min), _summary(runs, "davies_bouldin", np.max)
            used = [r["clusters_used"] for r in runs]
            ari = float(np.mean([r["ari"] for r in runs]))
            rows.append([dataset, label, _fmt(dunn["worst"]), f"{_fmt(dunn['mean'])} ± {_fmt(dunn['std'])}",
                         _fmt(db["worst"], 2), f"{_fmt(db['mean'], 2)} ± {_fmt(db['std'], 2)}",
                         (f"{min(used)}-{max(used)}" if min(used) != max(used) else str(used[0]))
                         + (f" of {runs[0]['components']}" if "components" in runs[0] else ""), _fmt(ari),
                         _fmt(paper.get("dunn", {}).get(label)), _fmt(paper.get("db", {}).get(label), 2)])
            csv_rows.append([dataset, label, dunn["worst"], dunn["mean"], dunn["std"], db["worst"], db["mean"], db["std"],
                             min(used), max(used), ari, paper.get("dunn", {}).get(label), paper.get("db", {}).get(label)])
    md += [_table(header, rows), ""]
    csv_header = ["dataset", "model", "dunn_worst", "dunn_mean", "dunn_std", "db_worst", "db_mean", "db_std",
                  "clusters_used_min", "clusters_used_max", "ari_mean", "paper_dunn", "paper_db"]
    return StageResult("\n".join(md) + "\n", numbers, {"table2": (csv_header, csv_rows)})


def _sample_row(bins: Bins, images: np.ndarray, reference: np.ndarray) -> dict:
    result = bins.compare(images, reference)
    return {"ndb": result.ndb, "bins": result.n_bins, "js": result.js, "duplicates": near_duplicates(images)}


def write_report(out: str | Path) -> Path:
    """(Re)build ``<out>/report.md`` from the sections of all stages present in ``out``."""
    out = Path(out)
    present = [s for s in STAGES if (out / s / "section.md").exists()]
    times = {s: json.loads((out / s / "times.json").read_text()) for s in present}
    lines = ["# DCGMM experiments", ""]
    if present:
        last = max(present, key=lambda s: times[s]["finished"])
        lines += [
            f"Machine: {times[last]['machine']}.",
            "",
            _table(["stage", "command", "finished", "time"],
                   [[s, f"`{times[s]['command']}`", times[s]["finished"], f"{times[s]['seconds'] / 60:.1f} min"] for s in present]),
            "",
            f"Total: {sum(t['seconds'] for t in times.values()) / 60:.1f} min. Raw numbers: `<stage>/numbers.json` "
            "(bit-for-bit the same when rerun with the same seed on the same machine), tables as CSV beside them; "
            "the settings of each stage in `<stage>/times.json`.",
            "",
        ]
        lines += [(out / s / "section.md").read_text() for s in present]
    else:
        lines.append("No stage has finished yet.")
    atomic_write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"
