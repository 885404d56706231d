"""Command line: ``dcgmm train | eval | sample | variants | stats | outliers | score | inpaint | occlude | experiment | data fetch | info``. A thin shell over the library.

Mistakes a user can fix (bad spec, missing data, wrong shapes, corrupt checkpoint) print one clear line and
exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import __version__, native, threads
from .baselines import iou, knn_fill, mean_fill, region_mse
from .checkpoint import CHECKPOINT_FILE, MODEL_FILE, atomic_write_bytes, atomic_write_text, load_model, save_model
from .data import DATASETS, fetch, load_dataset, load_npy, open_npy, parse_classes, read_array
from .distributed import processes
from .errors import DCGMMError, InputError, TrainingDiverged
from .experiments import STAGES, ExperimentConfig
from .inpainting import inpaint, occlude, per_image_masks
from .model import DCGMM, ModelConfig
from .outliers import ensemble_scores, fit_statistics, image_scores
from .pipeline import Images, layer_report, npy_bytes, report_lines, train_run
from .plots import PICTURE_SUFFIXES
from .runs import clear_run, lock_run, remove_stale_temporaries, writable_file, writable_folder
from .sampling import Sharpening, sample, sample_classes, variants
from .spec import PRESETS, TABLE_I
from .training import TrainConfig, Trainer


def _device(name: str) -> torch.device:
    """``--device``: cpu, cuda or cuda:N (any case); anything else, or a GPU that is not there, is refused."""
    text = name.strip().lower()
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", text):
        raise InputError(f"--device {name}: use cpu, or cuda (cuda:N for GPU N)")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: no CUDA GPU is visible to PyTorch here; use --device cpu")
        if ":" in text and int(text.split(":")[1]) >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device(text)


def _finite(text: str) -> float:
    """argparse type: a finite float (no nan, no inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _positive(text: str) -> float:
    """argparse type: a finite float above 0 (checked before a run folder is made)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0 (a variance floor is a positive variance, e.g. 0.05)")
    return value


def _integer(text: str) -> int:
    """argparse type: an integer written with the digits 0-9."""
    if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (digits 0-9)")
    return int(text)


def _load_images(args, split: str, stream: bool = False):
    """Images (and labels, if known) from --data (memory-mapped with ``stream``) or --dataset/--split/--classes."""
    if args.data is not None:
        if args.classes:
            raise InputError("--classes selects classes of a named dataset; it cannot be used with --data")
        return (open_npy(args.data) if stream else load_npy(args.data)), None
    return load_dataset(args.dataset, split, parse_classes(args.classes), data_dir=args.data_dir)


# ---------------------------------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    with processes(_device(args.device)) as (rank, world, device):
        return _train(args, rank, world, device)


DEFAULT_ARCH = "2L-c64"
"""The architecture `dcgmm train` builds when --arch is not given."""
RESUMED_SETTINGS = ("arch", "batch_size", "seed", "lr", "wait", "variance_floor", "top_variance_floor")
"""Options of `dcgmm train` that a resumed run takes from its checkpoint (giving another value is refused)."""


def _train(args, rank: int, world: int, device: torch.device) -> int:
    """Train (every process of a torchrun group); only rank 0 writes files and prints."""
    out = Path(args.out)
    if rank != 0:
        return _train_in(args, rank, world, device, out)
    writable_folder(out, "--out").mkdir(parents=True, exist_ok=True)
    with lock_run(out):
        remove_stale_temporaries(out)
        return _train_in(args, rank, world, device, out)


def _check_resumed_settings(args, trainer: Trainer, out: Path) -> None:
    saved = {"arch": trainer.model.spec, "batch_size": trainer.config.batch_size, "seed": trainer.config.seed,
             "lr": trainer.config.lr, "wait": trainer.config.wait, "variance_floor": trainer.model.config.variance_floor,
             "top_variance_floor": trainer.model.config.floors[1]}
    for name in RESUMED_SETTINGS:
        given = getattr(args, name)
        if given is None:
            continue
        same = (DCGMM(ModelConfig(given, trainer.model.input_shape)).spec == saved[name]) if name == "arch" else given == saved[name]
        if not same:
            option = "--" + name.replace("_", "-")
            raise InputError(f"--resume continues {out} with the settings it was trained with ({option} {saved[name]}); "
                             f"drop {option}, or start a new run in another --out")


def _train_in(args, rank: int, world: int, device: torch.device, out: Path) -> int:
    say = print if rank == 0 else (lambda *a, **k: None)
    held = [name for name in (MODEL_FILE, CHECKPOINT_FILE) if (out / name).exists()]
    if args.resume:
        if not (out / CHECKPOINT_FILE).is_file():
            raise InputError(f"--resume: {out / CHECKPOINT_FILE} does not exist; start without --resume")
        images, labels = _load_images(args, "train", stream=True)
        trainer = Trainer.resume(out, images, labels, device=device, epochs=args.epochs)
        _check_resumed_settings(args, trainer, out)
        say(f"resuming {out} at epoch {trainer.epoch}/{trainer.config.epochs}")
    else:
        if held and not args.overwrite:
            raise InputError(f"{out} already holds a run ({', '.join(held)}): pass --resume to continue it, --overwrite to replace it, or another --out")
        images, labels = _load_images(args, "train", stream=True)
        model_options = {name: getattr(args, name) for name in ("variance_floor", "top_variance_floor") if getattr(args, name) is not None}
        model = DCGMM(ModelConfig(args.arch or DEFAULT_ARCH, tuple(images.shape[1:]), **model_options))
        settings = {k: getattr(args, k) for k in ("epochs", "batch_size", "seed", "lr", "wait") if getattr(args, k) is not None}
        trainer = Trainer(model, TrainConfig(**settings), images, labels, device=device)
        if args.overwrite and rank == 0:  # only now that every setting was accepted
            clear_run(out)
    model = trainer.model
    processes = f", {world} processes (global batch {trainer.config.batch_size})" if world > 1 else ""
    cpu_threads = f", {torch.get_num_threads()} threads, {native.status()}" if device.type == "cpu" else ""
    say(f"dcgmm {__version__}: training {model.spec} on {len(images)} images {tuple(images.shape[1:])}, device {device}{cpu_threads}{processes}")
    for line in model.layer_summary():
        say("  " + line)
    if rank != 0:
        trainer.fit(progress=False)
        return 0  # rank 0 writes the checkpoint, statistics, pictures and reports
    test, outliers = _evaluation_images(args)
    governor = threads.ThreadGovernor() if args.threads is None and device.type == "cpu" else None
    try:  # every finished epoch is in the checkpoint (a resumed run's first epochs were already there)
        train_run(trainer, out, source=_describe(args, "train"), test=test, outliers=outliers, progress=not args.quiet,
                  on_step=None if governor is None else governor.step)
    except KeyboardInterrupt:
        print(f"dcgmm: interrupted during epoch {trainer.epoch + 1}. {_saved(out, trainer.epoch)}", file=sys.stderr)
        return 130
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"{exc} {_saved(out, trainer.epoch)}") from None
    finally:
        if governor is not None:
            governor.restore()
            note = governor.summary()
            if note is not None:
                print(f"dcgmm: note: {note}", file=sys.stderr)
    return 0


def _evaluation_images(args) -> tuple[Images | None, Images | None]:
    """For a named dataset: its test images of the training classes, and (with --classes) of the others as
    held-out outliers, the paper's protocol. Nothing for --data."""
    if args.data is not None:
        return None, None
    classes = parse_classes(args.classes)
    test, _ = load_dataset(args.dataset, "test", classes, data_dir=args.data_dir)
    test = Images(test, f"{args.dataset} test" + (f" classes {args.classes}" if args.classes else ""))
    others = [c for c in range(10) if classes is not None and c not in classes]
    if not others:
        return test, None
    outliers, _ = load_dataset(args.dataset, "test", others, data_dir=args.data_dir)
    return test, Images(outliers, f"{args.dataset} test classes {','.join(map(str, others))}")


def _saved(out: Path, epoch: int) -> str:
    """Where a stopped training run stands on disk."""
    if not epoch:
        return "No epoch had finished, so no checkpoint was written."
    return f"The checkpoint of epoch {epoch} in {out} is intact: continue with --resume."


def _describe(args, split: str) -> str:
    if args.data is not None:
        return str(args.data)
    return f"{args.dataset} {split}" + (f" classes {args.classes}" if args.classes else "")


def cmd_eval(args) -> int:
    model = load_model(args.model, device=_device(args.device))
    images, _ = _load_images(args, args.split)
    source = Path(args.data).name if args.data else f"{args.dataset}-{args.split}"
    out = writable_file(Path(args.out) if args.out else _default_out(args.model, f"eval-{source}.json"), "--out" if args.out else "the report file")
    report = {
        "model": str(args.model),
        "spec": model.spec,
        "data": str(args.data) if args.data else args.dataset,
        "split": None if args.data else args.split,
        "classes": args.classes,
        "n_images": len(images),
        "layers": layer_report(model, images, args.batch_size),
    }
    atomic_write_text(out, json.dumps(report, indent=1))
    print(f"{model.spec} on {report['data']} ({len(images)} images):")
    for line in report_lines(report["layers"]):
        print(line)
    print(f"written to {out}")
    return 0


def _sharpening(args):
    return Sharpening(steps=args.steps, rate=args.rate) if args.sharpen else None


def _generator(args, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(args.seed)


def _default_out(model_path: str, name: str) -> Path:
    folder = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
    return folder / name


def cmd_sample(args) -> int:
    from .plots import plot_samples

    device = _device(args.device)
    if args.n < 1:
        raise InputError(f"--n must be at least 1; got {args.n}")
    model = load_model(args.model, device=device)
    if args.out and Path(args.out).suffix.lower() == ".npy":
        raise InputError(f"--out {args.out} names the picture of the samples; write the array with --npy {args.out}")
    out = writable_file(Path(args.out) if args.out else _default_out(args.model, "samples.png"), "--out", PICTURE_SUFFIXES)
    if args.npy:
        writable_file(args.npy, "--npy", (".npy",))
    function = sample_classes if args.classes else sample  # each has its own default top-S and control noise
    top_s = _default(function, "top_s") if args.S is None else (None if args.S == 0 else args.S)
    control_noise = _default(function, "control_noise") if args.control_noise is None else args.control_noise
    noise = _default(function, "noise") if args.noise is None else args.noise
    options = dict(top_s=top_s, noise=noise, control_noise=control_noise, sharpening=_sharpening(args), generator=_generator(args, device), progress=not args.quiet)
    start = time.perf_counter()
    if args.classes:
        classes = parse_classes(args.classes)
        labels = np.repeat(classes, args.n)
        images = sample_classes(model, labels, **options)
        row_labels = [f"class {c}" for c in classes]
        ncols = args.n
    else:
        images = sample(model, args.n, **options)
        row_labels, ncols = None, 10
    seconds = time.perf_counter() - start
    images = images.cpu().numpy()
    sharp = f"sharpened {args.steps}x{args.rate}" if args.sharpen else "not sharpened"
    plot_samples(images, out, ncols=ncols, title=f"{model.spec}: top-{top_s or 'all'}, noise {noise:g} (control {control_noise:g}), {sharp}", row_labels=row_labels)
    print(f"{len(images)} samples in {seconds:.1f} s -> {out}")
    if args.npy:
        atomic_write_bytes(Path(args.npy), npy_bytes(images))
        print(f"array {images.shape} -> {args.npy}")
    return 0


def cmd_variants(args) -> int:
    from .plots import plot_samples

    device = _device(args.device)
    model = load_model(args.model, device=device)
    templates = load_npy(args.npy)
    out = writable_folder(args.out, "--out")
    if args.per_template < 1:
        raise InputError(f"--per-template must be at least 1; got {args.per_template}")
    top_s = None if args.S == 0 else args.S
    repeated = torch.from_numpy(np.repeat(templates, args.per_template, axis=0))
    start = time.perf_counter()
    images = variants(
        model, repeated, top_s=top_s, clamp_layer=args.clamp_layer, noise=args.noise, control_noise=args.control_noise,
        sharpening=_sharpening(args),
        generator=_generator(args, device), progress=not args.quiet,
    ).cpu().numpy()
    seconds = time.perf_counter() - start
    atomic_write_bytes(out / "variants.npy", npy_bytes(images.reshape(len(templates), args.per_template, *images.shape[1:])))
    k = args.per_template
    shown = min(len(templates), 20)
    grid = np.concatenate([np.concatenate([templates[i : i + 1], images[i * k : (i + 1) * k]]) for i in range(shown)])
    clamp = "no clamping" if args.clamp_layer is None else f"clamped from layer {args.clamp_layer}"
    plot_samples(grid, out / "variants.png", ncols=k + 1, title=f"{model.spec}: template (left) and variants, top-{args.S or 'all'}, {clamp}")
    print(f"{len(images)} variants of {len(templates)} templates in {seconds:.1f} s -> {out / 'variants.npy'} ({len(templates)}, {k}, ...), {out / 'variants.png'}")
    return 0


def _load_model_for(args):
    return load_model(args.model, device=_device(args.device))


def _load_models_for(args) -> list:
    """The models of ``--model`` (one or several: a seed ensemble)."""
    device = _device(args.device)
    return [load_model(path, device=device) for path in args.model]


def cmd_stats(args) -> int:
    if not 0 <= args.false_alarm < 1:
        raise InputError(f"--false-alarm must lie in [0, 1); got {args.false_alarm}")
    target = Path(args.model)
    if target.is_file() and target.name == CHECKPOINT_FILE:  # never overwrite a resume checkpoint with a model
        target = target.parent
    if target.is_dir():
        writable_file(target / MODEL_FILE, "the model file")
    else:
        writable_file(target, "--model")
    model = _load_model_for(args)
    images, _ = _load_images(args, args.split)
    start = time.perf_counter()
    fit_statistics(model, images, source=_describe(args, args.split), progress=not args.quiet, false_alarm=args.false_alarm)
    save_model(model, target)
    print(f"outlier statistics over {_describe(args, args.split)} ({len(images)} images) in {time.perf_counter() - start:.1f} s, saved with the model")
    damage = model.statistics.damage
    if damage is not None:
        print(f"  damage search for in-painting: threshold {damage.threshold:.3f} nats, areas of at least {damage.min_size} px; "
              f"{damage.measured:.1%} of {damage.count} clean images flagged (allowed {damage.false_alarm:.1%})")
    for index, stats in model.statistics.layers.items():
        print(f"  layer {index} {model.layers[index].spec():<8} positions {stats.mean.shape[0]}x{stats.mean.shape[1]}: "
              f"mean log p {stats.mean.mean():9.2f}, std {np.sqrt(stats.variance).mean():7.2f} (averaged over positions)")
    return 0


def _named_images(args, prefix: str, split: str):
    """Images and their description from --PREFIX-npy, or from --PREFIX-dataset (split ``split``) with
    --PREFIX-classes; ``(None, None)`` when neither is given."""
    npy, dataset, classes = (getattr(args, f"{prefix}_{k}") for k in ("npy", "dataset", "classes"))
    if npy is not None:
        if dataset is not None or classes is not None:
            raise InputError(f"give either --{prefix}-npy or --{prefix}-dataset (with --{prefix}-classes), not both")
        return load_npy(npy), str(npy)
    if dataset is None:
        if classes is not None:
            raise InputError(f"--{prefix}-classes selects classes of --{prefix}-dataset: give that too")
        return None, None
    images, _ = load_dataset(dataset, split, parse_classes(classes), data_dir=args.data_dir)
    return images, f"{dataset} {split}" + (f" classes {classes}" if classes else "")


def _scored_images(args, prefix: str):
    """Images for one side of `dcgmm outliers`: --PREFIX-npy, or --PREFIX-dataset with --PREFIX-classes."""
    images, text = _named_images(args, prefix, args.split)
    if images is None:
        raise InputError(f"say where the {prefix} come from: --{prefix}-dataset NAME [--{prefix}-classes 5-9] or --{prefix}-npy FILE")
    return images, text


def cmd_outliers(args) -> int:
    from .outliers import outlier_curve, require_statistics
    from .plots import plot_outlier_curves

    models = _load_models_for(args)
    for model in models:
        require_statistics(model)
    model = models[0]
    inliers, inlier_text = _scored_images(args, "inliers")
    outliers, outlier_text = _scored_images(args, "outliers")
    out = writable_folder(args.out, "--out")
    scores_in = ensemble_scores(models, inliers, args.batch_size, shifts=args.shifts)
    scores_out = ensemble_scores(models, outliers, args.batch_size, shifts=args.shifts)
    curve = outlier_curve(scores_in, scores_out)
    report = {"model": args.model if len(models) > 1 else args.model[0], "spec": model.spec,
              "statistics": model.statistics.source, "inliers": inlier_text, "outliers": outlier_text, **curve}
    atomic_write_text(out / "outliers.json", json.dumps(report, indent=1))
    buffer = io.BytesIO()
    np.savez(buffer, inliers=scores_in, outliers=scores_out)
    atomic_write_bytes(out / "scores.npz", buffer.getvalue())
    plot_outlier_curves({model.spec: curve}, out / "outliers.png", title=f"inliers {inlier_text} vs outliers {outlier_text}")
    middle = curve["c"].index(0.0)
    ensemble = f" (mean score of {len(models)} models)" if len(models) > 1 else ""
    print(f"{model.spec}{ensemble}: {len(scores_in)} inliers ({inlier_text}) vs {len(scores_out)} outliers ({outlier_text})")
    print(f"  AUROC {curve['auroc']:.4f}; at c=0: {curve['inliers_accepted'][middle]:.1%} of inliers accepted, "
          f"{curve['outliers_rejected'][middle]:.1%} of outliers rejected")
    print(f"  written to {out / 'outliers.json'}, {out / 'outliers.png'}, {out / 'scores.npz'}")
    return 0


def cmd_score(args) -> int:
    from .outliers import is_inlier

    models = _load_models_for(args)
    images = load_npy(args.npy)
    writable_file(args.out, "--out", (".npy",))
    if args.raw:
        if len(models) > 1:
            raise InputError("--raw writes one model's log-likelihood; give one --model (an ensemble averages z-scores)")
        scores = models[0].log_likelihoods(images, args.batch_size)[-1].per_image
        what = "top-layer log-likelihood (nats)"
    else:
        scores = ensemble_scores(models, images, args.batch_size, shifts=args.shifts)
        what = "standardised top-layer log-likelihood z" + (f", mean of {len(models)} models" if len(models) > 1 else "")
    atomic_write_bytes(Path(args.out), npy_bytes(scores.astype(np.float64)))
    print(f"{len(scores)} scores ({what}; higher = more typical) -> {args.out}")
    print(f"  min {scores.min():.3f}  median {np.median(scores):.3f}  max {scores.max():.3f}")
    if not args.raw:
        print(f"  outliers at c={args.c:g} (score < {0.0 - args.c:g}): {int((~is_inlier(scores, args.c)).sum())} of {len(scores)}")
    return 0


def cmd_inpaint(args) -> int:
    from .plots import plot_inpainting

    device = _device(args.device)
    model = load_model(args.model, device=device)
    damaged = load_npy(args.npy)
    mask = None if args.mask is None else _load_mask(args.mask)
    clean = load_npy(args.clean) if args.clean else None
    if clean is not None and clean.shape != damaged.shape:
        raise InputError(f"--clean has shape {clean.shape} but the damaged images have {damaged.shape}")
    truth = None if args.true_mask is None else _true_mask(args.true_mask, damaged.shape[:3], clean)
    train, train_text = _named_images(args, "baseline", "train")
    if train is not None and truth is None:
        raise InputError("--baseline-dataset / --baseline-npy give the training images of the baselines scored on the damaged "
                         "pixels: give --clean and --true-mask too")
    if train is not None and len(train) < KNN_NEIGHBOURS:
        raise InputError(f"the baselines' training images ({train_text}) are {len(train)} images; kNN-5 needs at least {KNN_NEIGHBOURS}")
    if train is not None and train.shape[1:] != damaged.shape[1:]:
        raise InputError(f"the baselines' training images ({train_text}) are {train.shape[1:]} each, the damaged images "
                         f"{damaged.shape[1:]}: give training images of the same size")
    out = writable_folder(args.out, "--out")
    options = dict(c=args.c, coverage=args.coverage, top_s=None if args.S == 0 else args.S, marginalize=args.marginalize,
                   sharpening=_sharpening(args), generator=_generator(args, device), fill=args.fill, locate=args.locate)
    start = time.perf_counter()
    result = inpaint(model, damaged, mask=mask, progress=not args.quiet, **options)
    seconds = time.perf_counter() - start
    atomic_write_bytes(out / "inpainted.npy", npy_bytes(result.images))
    atomic_write_bytes(out / "replaced.npy", npy_bytes(result.masks))
    located = "the calibrated search" if args.locate == "evidence" else f"Eq. 6, c={args.c:g}"
    how = ("given mask" if mask is not None else f"located by the model ({located})") + f", {args.fill} fill"
    plot_inpainting(damaged, result.masks, result.images, out / "inpainting.png", clean=clean, title=f"{model.spec}: in-painting, damage {how}")
    print(f"{len(damaged)} images in-painted in {seconds:.1f} s ({how}); {result.masks.mean():.1%} of pixels replaced")
    if clean is not None:
        report = {"n_images": len(damaged), "replaced_fraction": float(result.masks.mean()),
                  "mse_all_pixels": float(((result.images - clean) ** 2).mean()),
                  "mse_damaged_input": float(((damaged - clean) ** 2).mean())}
        print(f"  mean squared error against --clean: {report['mse_all_pixels']:.4f} (damaged input: {report['mse_damaged_input']:.4f})")
        if truth is not None:
            report.update(iou_replaced_vs_true_mask=iou(result.masks, truth), mse_on_true_mask=region_mse(result.images, clean, truth),
                          mse_on_true_mask_damaged_input=region_mse(damaged, clean, truth),
                          mse_outside_true_mask=region_mse(result.images, clean, ~truth) if not truth.all() else None)
            outside = "" if truth.all() else f", outside it {report['mse_outside_true_mask']:.4f}"
            print(f"  on the damaged pixels of --true-mask: error {report['mse_on_true_mask']:.4f} (damaged input: "
                  f"{report['mse_on_true_mask_damaged_input']:.4f}){outside}; replaced region vs --true-mask: IoU "
                  f"{report['iou_replaced_vs_true_mask']:.3f}")
            if mask is None:  # the same fill where the damage really is: what finding it cost
                given = inpaint(model, damaged, mask=truth, **options)
                report["mse_on_true_mask_given_true_mask"] = region_mse(given.images, clean, truth)
                print(f"  the model's fill given --true-mask as the mask: error {report['mse_on_true_mask_given_true_mask']:.4f}")
            if train is not None:
                report.update(baseline_images=train_text, mse_on_true_mask_mean_image=region_mse(mean_fill(train, damaged, truth), clean, truth),
                              mse_on_true_mask_knn5=region_mse(knn_fill(train, damaged, truth, k=KNN_NEIGHBOURS), clean, truth))
                print(f"  baselines given --true-mask, from {len(train)} images ({train_text}): the mean image pasted in "
                      f"{report['mse_on_true_mask_mean_image']:.4f}, the mean of the 5 nearest on the known pixels (kNN-5) "
                      f"{report['mse_on_true_mask_knn5']:.4f}")
        atomic_write_text(out / "inpainting.json", json.dumps(report, indent=1))
    print(f"  written to {out / 'inpainted.npy'}, {out / 'replaced.npy'}, {out / 'inpainting.png'}")
    return 0


def _load_mask(path: str, option: str = "--mask") -> np.ndarray:
    mask = read_array(path, option)
    if mask.dtype != bool and not (np.issubdtype(mask.dtype, np.number) and np.isin(mask, (0, 1)).all()):
        raise InputError(f"{option} {path} must hold booleans or 0/1 values; got dtype {mask.dtype}")
    return mask.astype(bool)


KNN_NEIGHBOURS = 5
"""The k of the kNN fill `dcgmm inpaint` scores beside the model (``--baseline-dataset``)."""


def _true_mask(path: str, shape: tuple, clean) -> np.ndarray:
    """``--true-mask``: the damaged pixels, to score the result against ``--clean``; (N, H, W) bool."""
    if clean is None:
        raise InputError("--true-mask scores the result against the undamaged images: give --clean too")
    truth = per_image_masks(_load_mask(path, "--true-mask"), shape[0], shape[1:], "--true-mask")
    if not truth.any():
        raise InputError(f"--true-mask {path} marks no pixel as damaged: there is nothing to score")
    return truth


def cmd_occlude(args) -> int:
    if args.n < 1:
        raise InputError(f"--n must be at least 1; got {args.n}")
    low, high = _size_range(args.size)
    fill = args.fill if args.fill == "noise" else _fill_value(args.fill)
    images, _ = _load_images(args, args.split)
    images = images[: args.n]
    out = writable_folder(args.out, "--out")
    damaged, masks = occlude(images, size=(low, high), fill=fill, seed=args.seed)
    for name, array in (("damaged", damaged), ("mask", masks), ("clean", images)):
        atomic_write_bytes(out / f"{name}.npy", npy_bytes(array))
    print(f"{len(images)} images with one {low}-{high} px square ({args.fill}) -> {out}/damaged.npy, mask.npy, clean.npy")
    return 0


def _size_range(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", text)
    if not match or int(match.group(1)) < 1:
        raise InputError(f"--size takes a side or a range like 10-14 (pixels, at least 1); got {text!r}")
    low, high = int(match.group(1)), int(match.group(2) or match.group(1))
    if high < low:
        raise InputError(f"--size {text}: the range is empty; write the smaller side first, e.g. {high}-{low}")
    return low, high


def _fill_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--fill takes 'noise' or a number such as 0.5; got {text!r}") from None
    if not math.isfinite(value):
        raise InputError(f"--fill takes 'noise' or a finite number such as 0.5; got {text}")
    return value


def cmd_experiment(args) -> int:
    from .experiments import Experiment, ExperimentData

    config = ExperimentConfig(seed=args.seed, epochs=args.epochs, reruns=args.reruns)
    if args.archs:
        config.archs = list(args.archs)
    names = ["fashion-mnist" if n == "fashion" else n for n in args.datasets]
    datasets = [ExperimentData.load(name, data_dir=args.data_dir) for name in dict.fromkeys(names)]
    command = (f"dcgmm experiment {args.name} --datasets {' '.join(names)} --out {args.out}"
               + (f" --archs {' '.join(args.archs)}" if args.archs else "")
               + f" --epochs {config.epochs} --reruns {config.reruns} --seed {config.seed}")
    experiment = Experiment(args.out, datasets, config, progress=not args.quiet, command=command)
    start = time.perf_counter()
    times = experiment.run([args.name])
    for stage, seconds in times.items():
        print(f"  {stage:<11} {seconds / 60:6.1f} min")
    print(f"  {'total':<11} {(time.perf_counter() - start) / 60:6.1f} min; report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_data_fetch(args) -> int:
    folder = fetch(args.name, data_dir=args.data_dir, verbose=True)
    for split in ("train", "test"):
        print(f"  {split}: {len(np.load(folder / f'{split}-labels.npy'))} images, checksums verified")
    return 0


def cmd_info(args) -> int:
    model = load_model(args.model)
    floors = [layer.variance_floor for _, layer in model.gmm_layers()]
    top = f", top GMM layer {floors[-1]}" if len(floors) > 1 else ""
    print(f"{model.spec}  input {model.input_shape}  variance floor {floors[0]}{top}")
    for line in model.layer_summary():
        print("  " + line)
    stats = model.statistics
    if stats is None:
        print("no outlier statistics: `dcgmm stats` computes them (outliers, damage search, in-painting fill)")
    else:
        damage = "a calibrated damage search" if stats.damage is not None else "no damage calibration"
        windows = f"window factors of layer {stats.windows.layer} (rank {stats.windows.rank})" if stats.windows is not None else "no window factors"
        top = f"top factors of layer {stats.top_factors.layer} (rank {stats.top_factors.rank})" if stats.top_factors is not None else "no top factors"
        print(f"statistics over {stats.source or 'unnamed images'}: {damage}, {windows}, {top}")
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _default(function, name: str):
    """The default of parameter ``name`` of ``function``: every option's default is written once, in the library."""
    return inspect.signature(function).parameters[name].default


def _add_device(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--threads", type=_integer, help="CPU threads to compute with (default: one per core this process may use; train drops to one while the cores are shared, see dcgmm.threads)")


def _add_quiet(p) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch lines")


def _add_batch_size(p) -> None:
    p.add_argument("--batch-size", type=_integer, default=_default(DCGMM.log_likelihoods, "batch_size"), help="images per batch (default: %(default)s)")


def _add_data_dir(p) -> None:
    p.add_argument("--data-dir", help="folder holding the four standard IDX files (tried before any download)")


def _add_data_options(p, default_dataset: str | None = "mnist") -> None:
    p.add_argument("--dataset", default=default_dataset, choices=sorted(DATASETS) + ["fashion"], help="named dataset (default: %(default)s)")
    p.add_argument("--data", metavar="PATH.npy", help="images in a .npy file (or an .npz of one array), (N,H,W) or (N,H,W,C), or a folder of PNG/JPEG images of one size; uint8 and image files are scaled to [0,1], float taken as is; train reads a .npy memory-mapped, a batch at a time")
    p.add_argument("--classes", help="class subset of a named dataset, e.g. 0-4 or 0,3,7")
    _add_data_dir(p)
    _add_device(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcgmm", description="Deep Convolutional Gaussian Mixture Models")
    parser.add_argument("--version", action="version", version=f"dcgmm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model and write a run folder", description="Train a DCGMM end to end by SGD; writes model, checkpoint, curves, centroid pictures and test log-likelihoods into --out.")
    p.add_argument("--arch", help=f"preset ({', '.join(PRESETS)}) or spec string like 'F(8,8,2,2) G(25) F(11,11,1,1) G(36)' (default: {DEFAULT_ARCH})")
    _add_data_options(p)
    p.add_argument("--epochs", type=_integer, help=f"default: {TrainConfig.epochs}; with --resume, the run's own")
    p.add_argument("--batch-size", type=_integer, help=f"default: {TrainConfig.batch_size}")
    p.add_argument("--seed", type=_integer, help=f"default: {TrainConfig.seed}")
    p.add_argument("--lr", type=_finite, help=f"base learning rate (default: {TrainConfig.lr})")
    p.add_argument("--wait", type=_finite, help=f"fraction of training each higher GMM layer waits before adapting, in [0, 1) (default: {TrainConfig.wait})")
    p.add_argument("--variance-floor", type=_positive, help=f"smallest component variance of every GMM layer but the top one (default: {ModelConfig.variance_floor})")
    p.add_argument("--top-variance-floor", type=_positive, help=f"smallest component variance of the top GMM layer of a deep model, which models the responsibilities below it; the paper uses one floor for all, i.e. the --variance-floor value (default: {ModelConfig.top_variance_floor})")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint, with its own settings")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    _add_quiet(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="log-likelihood of every GMM layer on a dataset", description="Print and write as JSON each GMM layer's mean log-likelihood per image.")
    p.add_argument("--model", required=True, help="run folder (or model file)")
    _add_data_options(p)
    p.add_argument("--split", default="test", choices=["train", "test"], help="default: %(default)s")
    _add_batch_size(p)
    p.add_argument("--out", help="JSON file (default: eval-<data>.json in the run folder)")
    p.set_defaults(func=cmd_eval)

    def add_sampling_options(p, function, conditional=None) -> None:
        """The options of ``function`` (sample, variants or inpaint), with its defaults; ``conditional``: a
        function whose different defaults apply with --classes (sample_classes)."""

        def shown(name: str) -> str:
            values = [_default(f, name) for f in (function, conditional) if f is not None]
            text = ["all" if v is None and name == "top_s" else f"{v:g}" for v in values]
            return text[0] if len(set(text)) == 1 else f"{text[0]}; with --classes {text[1]}"

        p.add_argument("--model", required=True, help="run folder (or model file)")
        p.add_argument("--S", type=_integer, default=_default(function, "top_s"), help=f"top-S sampling: choose among the S largest control values (0 = all; default: {shown('top_s')})")
        p.add_argument("--sharpen", action=argparse.BooleanOptionalAction, default=True, help="gradient-ascent sharpening below Folding/Pooling layers (default: off for sample and inpaint, on for variants)")
        p.add_argument("--steps", type=_integer, default=Sharpening.steps, help="sharpening steps G (default: %(default)s)")
        p.add_argument("--rate", type=_finite, default=Sharpening.rate, help="sharpening step size (default: %(default)s)")
        p.add_argument("--noise", type=_finite, default=_default(function, "noise"), help=f"add noise x sigma x N(0,1) to every centroid the lowest GMM layer emits (default: {shown('noise')}; 0: centroids only)")
        if "control_noise" in inspect.signature(function).parameters:
            p.add_argument("--control-noise", type=_finite, default=_default(function, "control_noise"), help=f"the same for the GMM layers above the lowest, on the control signals they send down (default: {shown('control_noise')})")
        p.add_argument("--seed", type=_integer, default=0, help="seed of the draws (default: %(default)s)")
        _add_device(p)
        _add_quiet(p)

    p = sub.add_parser("sample", help="draw samples (optionally of given classes) into a PNG grid and .npy", description="Sample images top-down from a trained model; with --classes, sample through its top classifier. The paper's setting: --S 1 --noise 0 --control-noise 0 --sharpen. How varied the samples are depends more on the architecture than on these options: where the lowest Folding windows overlap (2L-c) every pixel averages many windows' draws and the samples stay near a few templates; where they tile the image (2L-b) they vary (docs/sampling.md).")
    add_sampling_options(p, sample, conditional=sample_classes)
    p.set_defaults(sharpen=_default(sample, "sharpening") is not None, S=None, noise=None, control_noise=None)  # None: the default of sample / sample_classes
    p.add_argument("--n", type=_integer, default=100, help="number of samples; with --classes, per class (default: %(default)s)")
    p.add_argument("--classes", help="conditional sampling of these classes, e.g. 0,3,7 (needs a model with a C layer)")
    p.add_argument("--out", help="picture of the grid, .png, .jpg, .pdf or .svg (default: samples.png in the run folder)")
    p.add_argument("--npy", help="also write the samples as an (N, H, W, C) .npy array")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("variants", help="generate variants of template images", description="Variant generation (paper Sec. III-B6): forward each template, sample from the top responsibilities; --clamp-layer clamps the signal of layers >= L to the template's activities.")
    add_sampling_options(p, variants)
    p.add_argument("--npy", required=True, help="templates, (N, H, W) or (N, H, W, C) .npy")
    p.add_argument("--clamp-layer", type=_integer, help="the paper's L-hat, layers counted from 1 at the bottom; 1 returns the templates, top GMM + 1 clamps nothing (default)")
    p.add_argument("--per-template", type=_integer, default=8, help="variants per template (default: %(default)s)")
    p.add_argument("--out", required=True, help="folder for variants.npy (N, per-template, H, W, C) and variants.png")
    p.set_defaults(func=cmd_variants)

    p = sub.add_parser("stats", help="compute a model's outlier statistics over its training data", description="Streaming mean and variance of every GMM layer's log-likelihood at every position (paper Eq. 6), saved into the model file. `dcgmm train` does this itself.")
    p.add_argument("--model", required=True, help="run folder (or model file)")
    _add_data_options(p)
    p.add_argument("--split", default="train", choices=["train", "test"], help="default: %(default)s")
    p.add_argument("--false-alarm", type=_finite, default=_default(fit_statistics, "false_alarm"), help="fraction of the clean images allowed to get a false damage region; calibrates in-painting's damage search (default: %(default)s)")
    _add_quiet(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("outliers", help="outlier-detection curve and AUROC of inliers against outliers", description="Score inlier and outlier images with the top GMM layer (Eq. 6), sweep c over [-2, 2] and write a Fig. 3-style curve, the AUROC (JSON) and the scores.")
    p.add_argument("--model", required=True, nargs="+", help="run folder (or model file) with outlier statistics; several: a seed ensemble, the mean of their scores")
    for side, example in (("inliers", "0-4"), ("outliers", "5-9")):
        p.add_argument(f"--{side}-dataset", choices=sorted(DATASETS) + ["fashion"], help=f"named dataset of the {side}")
        p.add_argument(f"--{side}-classes", help=f"class subset of --{side}-dataset, e.g. {example}")
        p.add_argument(f"--{side}-npy", help=f"or: the {side} as a .npy of images")
    p.add_argument("--split", default="test", choices=["train", "test"], help="split of the named datasets (default: %(default)s)")
    _add_data_dir(p)
    _add_batch_size(p)
    _add_device(p)
    p.add_argument("--out", required=True, help="folder for outliers.json, outliers.png and scores.npz")
    p.add_argument("--shifts", type=_integer, default=_default(image_scores, "shifts"), help="best score over the image moved by up to this many pixels (cost: (2s+1)^2 times; default: %(default)s)")
    p.set_defaults(func=cmd_outliers)

    p = sub.add_parser("score", help="per-image typicality scores", description="Standardised top-layer log-likelihood of every image (higher = more typical); an image is an outlier at c iff its score < -c (Eq. 6).")
    p.add_argument("--model", required=True, nargs="+", help="run folder (or model file); several: a seed ensemble, the mean of their z-scores")
    p.add_argument("--npy", required=True, help="images, (N, H, W) or (N, H, W, C) .npy")
    p.add_argument("--out", required=True, help="scores as a (N,) float64 .npy")
    p.add_argument("--raw", action="store_true", help="write the top layer's log-likelihood in nats instead (needs no statistics)")
    p.add_argument("--c", type=_finite, default=0.0, help="report how many images are outliers at this c (default: %(default)s)")
    p.add_argument("--shifts", type=_integer, default=_default(image_scores, "shifts"), help="best score over the image moved by up to this many pixels (cost: (2s+1)^2 times; default: %(default)s)")
    _add_batch_size(p)
    _add_device(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("inpaint", help="in-paint damaged images; the model finds the damage itself", description="In-painting (paper Sec. III-B5, beyond it by default): the model finds the damaged pixels itself — where the top layer's prediction makes them improbable, with a threshold calibrated on clean training images (--locate evidence), or by the paper's outlier maps (--locate outliers) — or --mask gives them; only those pixels are replaced, by their conditional mean given the rest (--fill mean) or by one draw from the top (--fill sample, the paper's).")
    add_sampling_options(p, inpaint)
    p.set_defaults(sharpen=_default(inpaint, "sharpening") is not None)
    p.add_argument("--npy", required=True, help="damaged images, (N, H, W) or (N, H, W, C) .npy")
    p.add_argument("--mask", help="optional .npy of booleans (N, H, W) or (H, W): the damaged pixels; default: found by the model")
    p.add_argument("--locate", choices=["evidence", "outliers"], default=_default(inpaint, "locate"), help="how the model finds the damage without --mask: evidence = pixels improbable under the top layer's prediction, threshold calibrated on clean training images; outliers = the paper's Eq. 6 maps with --c and --coverage (default: %(default)s)")
    p.add_argument("--c", type=_finite, default=_default(inpaint, "c"), help="with --locate outliers: c of Eq. 6; larger replaces less (default: %(default)s)")
    p.add_argument("--coverage", type=_finite, default=_default(inpaint, "coverage"), help="with --locate outliers: replace a pixel when this fraction of the windows over it are outliers (default: %(default)s)")
    p.add_argument("--fill", choices=["mean", "sample"], default=_default(inpaint, "fill"), help="mean: the conditional mean of the damaged pixels given the rest; sample: one draw, the paper's Eq. 10 (default: %(default)s, the better of the two)")
    p.add_argument("--marginalize", action=argparse.BooleanOptionalAction, default=_default(inpaint, "marginalize"), help="compute responsibilities with the replaced pixels marginalised out (default: on)")
    p.add_argument("--clean", help="optional .npy of the undamaged images: report the error and show them")
    p.add_argument("--true-mask", help="optional .npy of booleans (N, H, W) or (H, W), with --clean: the pixels really damaged "
                   "(dcgmm occlude writes them as mask.npy), to report the error on and outside them and the IoU of the "
                   "replaced region; used for scoring only, unlike --mask")
    p.add_argument("--baseline-dataset", choices=sorted(DATASETS) + ["fashion"], help="with --clean and --true-mask: training "
                   "images (this named dataset's train split) for two baselines scored in the same run on the damaged pixels: "
                   "the mean image pasted in, and kNN-5 (the mean of the 5 images nearest on each image's known pixels)")
    p.add_argument("--baseline-classes", help="class subset of --baseline-dataset, e.g. 0-4 (the classes the model was trained on)")
    p.add_argument("--baseline-npy", help="or: the baselines' training images as a .npy")
    _add_data_dir(p)
    p.add_argument("--out", required=True, help="folder for inpainted.npy, replaced.npy, inpainting.png")
    p.set_defaults(func=cmd_inpaint)

    p = sub.add_parser("occlude", help="damage images with a random square (test data for inpaint)", description="Cut one random square per image and fill it with noise or a constant; writes damaged.npy, mask.npy and clean.npy.")
    _add_data_options(p)
    p.add_argument("--split", default="test", choices=["train", "test"], help="default: %(default)s")
    p.add_argument("--n", type=_integer, default=100, help="number of images (default: %(default)s)")
    p.add_argument("--size", default="10-14", help="square side in pixels, or a range (default: %(default)s)")
    p.add_argument("--fill", default=_default(occlude, "fill"), help="'noise' (uniform) or a constant like 0.5 (default: %(default)s)")
    p.add_argument("--seed", type=_integer, default=_default(occlude, "seed"), help="default: %(default)s")
    p.add_argument("--out", required=True, help="folder for damaged.npy, mask.npy, clean.npy")
    p.set_defaults(func=cmd_occlude)

    p = sub.add_parser("experiment", help="reproduce one of the paper's experiments and write a report", description="Run a paper experiment end to end on MNIST and FashionMNIST (Sec. IV): outliers (Fig. 3), clustering (Table II), sampling (Figs. 4-7), in-painting, centroids (Fig. 2), or all; writes report.md with figures, CSV tables and numbers.json into --out.")
    p.add_argument("name", choices=[*STAGES, "all"])
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"], choices=sorted(DATASETS) + ["fashion"], help="default: %(default)s")
    p.add_argument("--out", default="runs/experiments", help="run folder (default: %(default)s); stages already there are kept in the report")
    p.add_argument("--archs", nargs="+", help=f"architectures of the outlier and clustering tables (default: Table I, {', '.join(TABLE_I)})")
    p.add_argument("--epochs", type=_integer, default=ExperimentConfig.epochs, help="epochs of the models trained on classes 0-4 (default: %(default)s)")
    p.add_argument("--reruns", type=_integer, default=ExperimentConfig.reruns, help="clustering reruns per architecture (default: %(default)s)")
    p.add_argument("--seed", type=_integer, default=ExperimentConfig.seed, help="default: %(default)s")
    _add_data_dir(p)
    _add_quiet(p)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("data", help="dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("fetch", help="download (or find), verify and cache a dataset")
    q.add_argument("name", choices=sorted(DATASETS) + ["fashion"])
    _add_data_dir(q)
    q.set_defaults(func=cmd_data_fetch)

    p = sub.add_parser("info", help="print the layers of a saved model")
    p.add_argument("--model", required=True)
    p.set_defaults(func=cmd_info)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, ``dcgmm: warning: ...``, without the source line they came from."""
    print(f"dcgmm: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        threads.use_threads(getattr(args, "threads", None))
        return args.func(args)
    except DCGMMError as exc:
        print(f"dcgmm: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output went away (`dcgmm ... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # what the checks before the work could not foresee (a full disk, a vanished folder)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"dcgmm: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except MemoryError:
        print("dcgmm: error: out of memory: use a smaller --batch-size, fewer images or a smaller model", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dcgmm: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
