"""The paper's experiments (Sec. IV), end to end, each writing a self-contained report into a run folder.

Stages (``dcgmm experiment NAME``; ``all`` runs them in this order and trains shared models once):

* ``outliers``   Fig. 3: every architecture trained on classes 0-4; test classes 0-4 are inliers, 5-9
  outliers; curves over c in [-2, 2] and the AUROC.
* ``clustering`` Table II: Dunn index and Davies-Bouldin score of the top layer's clusters, over reruns
  with different seeds; worst case (as in the paper) and mean +- std.
* ``sampling``   Figs. 4-7: top-1 samples across architectures, top-S, sharpening; NDB/JS against held-out
  data, and near-duplicates.
* ``centroids``  Fig. 2: the centroids of both GMM layers of 2L-a, and samples with one top component fixed.

Every table has flat-GMM rows fitted by EM (scikit-learn ``GaussianMixture``, diagonal, the same K). Each
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

from .checkpoint import atomic_write_text
from .data import load_dataset
from .errors import InputError
from .metrics import Bins, davies_bouldin, dunn_index, near_duplicates, pairwise_distances
from .model import DCGMM
from .outliers import RunningMoments, image_scores, outlier_curve
from .pipeline import train_run
from .plots import plot_centroids, plot_outlier_curves, plot_samples
from .progress import progress_bar
from .sampling import Sharpening, sample, sample_components
from .spec import PRESETS, parse
from .training import TrainConfig, Trainer

STAGES = ("outliers", "clustering", "sampling", "centroids")

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
    """What the experiments train and measure. The defaults are the paper's protocol where it fits the
    2-hour budget of ``all`` on a 2-core CPU; the clustering reruns are shortened (see ``clustering_*``)."""

    archs: list[str] = field(default_factory=lambda: list(PRESETS))
    """Architectures of the outlier and clustering tables."""
    epochs: int = 25
    """Training epochs of the models on classes 0-4 (outliers, sampling, centroids)."""
    seed: int = 0
    inliers: tuple[int, ...] = (0, 1, 2, 3, 4)
    outliers: tuple[int, ...] = (5, 6, 7, 8, 9)
    reruns: int = 10
    """Clustering reruns per architecture (seeds seed .. seed + reruns - 1)."""
    clustering_images: int = 10_000
    """Training images (all classes, a random subset drawn per rerun) of each clustering run."""
    clustering_epochs: int = 10
    clustering_window: int = 20
    """Annealing window (steps) of the clustering runs: short runs need a faster annealing schedule."""
    clustering_eval_images: int = 10_000
    """Test images (all classes) the clustering measures are computed on."""
    sampling_archs: list[str] = field(default_factory=lambda: ["1L", "2L-d", "2L-c", "2L-e"])
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


def _check_config(c: "ExperimentConfig", shapes: set) -> None:
    """Refuse settings that could only fail midway, after earlier stages have written their results."""
    counts = {"epochs": c.epochs, "reruns": c.reruns, "clustering_images": c.clustering_images,
              "clustering_epochs": c.clustering_epochs, "clustering_window": c.clustering_window,
              "clustering_eval_images": c.clustering_eval_images, "samples": c.samples, "bins": c.bins,
              "em_components": c.em_components}
    for name, value in counts.items():
        if value < 1:
            raise InputError(f"experiment setting {name} must be at least 1; got {value}")
    if not c.archs or not c.sampling_archs:
        raise InputError("name at least one architecture for the tables and one for sampling")
    for arch in dict.fromkeys([*c.archs, *c.sampling_archs, c.sampling_arch, c.centroid_arch]):
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
        key = (data.name, arch)
        if key not in self._models:
            c = self.config
            images = data.images("train", c.inliers)
            start = time.perf_counter()
            model = DCGMM.from_spec(arch, input_shape=images.shape[1:])
            trainer = Trainer(model, TrainConfig(epochs=c.epochs, seed=c.seed), images)
            train_run(trainer, self.out / "models" / data.name / _slug(arch), source=f"{data.name} train classes {_classes(c.inliers)}",
                      samples=0, pictures=False, progress=False, extra={"experiment": "inlier classes " + _classes(c.inliers)},
                      log=lambda line: None)
            self._train_seconds[key] = time.perf_counter() - start
            self._models[key] = model
        return self._models[key]

    def em(self, images: np.ndarray, k: int, seed: int, reg_covar: float, cache_key=None):
        """A flat diagonal GMM with ``k`` components fitted by EM (k-means initialisation) on flattened images."""
        from sklearn.mixture import GaussianMixture

        key = (cache_key, k, seed, reg_covar)
        if cache_key is not None and key in self._em:  # the same images under the same name: fitted already
            return self._em[key]
        gmm = GaussianMixture(k, covariance_type="diag", reg_covar=reg_covar, max_iter=self.config.em_max_iter, random_state=seed)
        gmm.fit(_flat64(images))
        if cache_key is not None:
            self._em[key] = gmm
        return gmm

    # ------------------------------------------------------------------------------------------ stages
    def outliers(self) -> StageResult:
        c = self.config
        bar = self._bar("outliers", len(self.datasets) * (len(c.archs) + len(c.em_reg_covar)))
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
            for reg in c.em_reg_covar:
                bar.set_postfix_str(f"{data.name} EM reg {reg:g}")
                gmm = self.em(train, c.em_components, c.seed, reg, cache_key=(data.name, "inliers"))
                moments = RunningMoments(())
                moments.update(gmm.score_samples(_flat64(train)))
                std = float(np.sqrt(max(float(moments.variance), 1e-12)))
                z = lambda x: (gmm.score_samples(_flat64(x)) - float(moments.mean)) / std
                curves[f"EM flat K={gmm.n_components}, reg {reg:g}"] = outlier_curve(z(inliers), z(outliers))
                bar.update()
            numbers[data.name] = curves
            for label, curve in curves.items():
                rows.setdefault(label, {})[data.name] = curve["auroc"]
            path = plot_outlier_curves(curves, self.out / "outliers" / f"outliers-{data.name}.png",
                                       title=f"{data.name}: train {_classes(c.inliers)}, outliers = test {_classes(c.outliers)}")
            figures.append(path.name)
        bar.close()
        names = [d.name for d in self.datasets]
        header = ["model"] + [f"AUROC {n}" for n in names]
        table = [[label] + [_fmt(values.get(n), 4) for n in names] for label, values in rows.items()]
        md = [
            "## Outlier detection (Fig. 3)",
            f"Each architecture is trained on the training images of classes {_classes(c.inliers)} ({c.epochs} epochs, "
            f"seed {c.seed}); its outlier statistics (mean and variance of the top layer's log-likelihood) come from "
            f"the same images. Inliers: test images of classes {_classes(c.inliers)}; outliers: test images of classes "
            f"{_classes(c.outliers)}. The score is the standardised top-layer log-likelihood (Eq. 6); an image is an "
            "inlier at c when its score is at least -c. AUROC: area under the full ROC of that score. EM rows: a flat "
            "diagonal GMM fitted by scikit-learn on the same images, scored the same way.",
            "",
            _table(header, table),
            "",
        ] + [f"![{f}](outliers/{f})" for f in figures]
        csv_rows = [[label] + [values.get(n) for n in names] for label, values in rows.items()]
        return StageResult("\n".join(md) + "\n", numbers, {"auroc": (header, csv_rows)})

    def clustering(self) -> StageResult:
        c = self.config
        ks = sorted({top_components(a) for a in c.archs})
        bar = self._bar("clustering", len(self.datasets) * (len(c.archs) + len(ks)) * c.reruns)
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
                    result[arch].append({"seed": seed, **_cluster_measures(distances, evaluation, model.clusters(evaluation), truth)})
                    bar.update()
            for k in ks:
                label = f"EM flat K={k}"
                result[label] = []
                for r in range(c.reruns):
                    bar.set_postfix_str(f"{data.name} {label} rerun {r + 1}")
                    seed = c.seed + r
                    gmm = self.em(_subset(data.train_images, c.clustering_images, seed), k, seed, reg)
                    result[label].append({"seed": seed, **_cluster_measures(distances, evaluation, gmm.predict(_flat64(evaluation)), truth)})
                    bar.update()
            numbers[data.name] = result
        bar.close()
        return _clustering_result(numbers, c, reg)

    def sampling(self) -> StageResult:
        c = self.config
        configs = [(arch, 1, False) for arch in c.sampling_archs]
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
                sharpening = Sharpening(steps=c.sharpening_steps) if sharp else None
                generator = torch.Generator().manual_seed(c.seed + top_s)
                images = sample(model, n, top_s=top_s, sharpening=sharpening, generator=generator).numpy()
                label = f"{arch}, top-{top_s}" + (", sharpened" if sharp else "")
                rows[label] = _sample_row(bins, images, reference)
                name = f"{data.name}-{_slug(arch)}-S{top_s}{'-sharp' if sharp else ''}.png"
                plot_samples(images[:50], self.out / "sampling" / name, title=f"{data.name} {_classes(c.inliers)}: {label}")
                figures.setdefault(data.name, []).append((label, name))
                bar.update()
            bar.set_postfix_str(f"{data.name} EM")
            k = c.em_components
            gmm = self.em(train, k, c.seed, c.em_reg_covar[-1], cache_key=(data.name, "inliers"))
            rng = np.random.default_rng(c.seed)
            draws = rng.choice(k, size=n, p=gmm.weights_)
            centroids = gmm.means_[draws]
            noisy = centroids + rng.standard_normal(centroids.shape) * np.sqrt(gmm.covariances_[draws])
            for suffix, flat in (("centroids", centroids), ("centroid + noise", noisy)):
                images = flat.reshape(n, *train.shape[1:]).astype(np.float32)
                label = f"EM flat K={k}, {suffix}"
                rows[label] = _sample_row(bins, images, reference)
                name = f"{data.name}-em-{'noise' if 'noise' in suffix else 'centroids'}.png"
                plot_samples(images[:50], self.out / "sampling" / name, title=f"{data.name} {_classes(c.inliers)}: {label}")
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
            f"Sharpening: {c.sharpening_steps} gradient steps of 0.1. EM rows: a flat GMM (K={c.em_components}) fitted by EM; "
            "'centroids' emits the chosen component's mean as our top-1 sampling does, 'centroid + noise' draws from it.",
            "",
            _table(header, md_rows),
            "",
        ]
        for name, items in figures.items():
            md.append(f"### {name}")
            md += [f"**{label}**\n\n![{label}](sampling/{file})\n" for label, file in items]
        return StageResult("\n".join(md) + "\n", numbers, {"sampling": (["dataset", "samples", "ndb", "bins", "js", "near_duplicates"], csv_rows)})

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


def _clustering_result(numbers: dict, c: ExperimentConfig, reg: float) -> StageResult:
    md = [
        "## Clustering (Table II)",
        f"Cluster of an image: the component of the top GMM layer with the largest responsibility (EM rows: the "
        f"flat GMM's most probable component). The measures are computed on {c.clustering_eval_images} test images "
        "of all ten classes (a fixed random subset if the test set is larger), in pixel space (Euclidean distance "
        "between the flattened images in [0, 1]), with these cluster labels — the true classes are not used, except "
        "in the 'true classes' row (the ten real classes as clusters, for scale) and in the ARI column (adjusted Rand "
        "index of clusters against true classes, 0 = chance, 1 = the classes).",
        "",
        f"Each of the {c.reruns} reruns trains from random initial values with its own seed on its own random subset "
        f"of {c.clustering_images} training images of all classes, {c.clustering_epochs} epochs with an annealing "
        f"window of {c.clustering_window} steps (shortened from the paper's 25 epochs on all data, to fit the time "
        f"budget). 'worst' is the worst case over the reruns, as in the paper. EM rows: scikit-learn GaussianMixture, "
        f"diagonal, reg_covar {reg:g}, k-means initialisation, the same subsets and seeds.",
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
                         f"{min(used)}-{max(used)}" if min(used) != max(used) else str(used[0]), _fmt(ari),
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
