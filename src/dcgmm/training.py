"""End-to-end SGD training of a DCGMM (paper Sec. III-B1).

Every GMM layer is trained on its own loss of its detached input, all layers at the same time, by plain
SGD from random initial values:

* loss: the max-component approximation with annealed smoothing (:meth:`GMM.loss`), one
  :class:`~dcgmm.annealing.Annealing` controller per layer; its gradients come in closed form
  (:meth:`GMM.training_step`), without autograd;
* two phases per layer: first only the centroids adapt; once the layer's annealing has reached its floor
  (or a given fraction of training has passed) the precisions and mixing weights adapt too;
* per-parameter rate factors; layers above the first may wait a fraction of training before they adapt;
* a top classifier, if present, trains alongside on cross-entropy.

The schedule (starts, annealing, phases, learning rates) is :class:`dcgmm.schedule.Schedule`; data come
through :class:`dcgmm.data.ImageSource` (in memory or memory-mapped). Data-parallel training: inside a
``torch.distributed`` process group (e.g. started by ``torchrun``), every process takes its share of each
global batch (``batch_size`` images, split evenly by rank), and the gradients and the objectives that drive
the annealing are averaged over all processes (:mod:`dcgmm.distributed`), so every process anneals
identically and all hold the same parameters: the run equals a single process with the same global batch
and seed, up to the order of floating-point sums.

Training changes no global state: initial values and data order come from generators seeded by
``config.seed``, and nothing else of the process (RNG, flush-denormal mode) is touched.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import CHECKPOINT_FILE, _model_tensors, model_from_tensors, read_file, save_file, save_model
from .data import ImageSource
from .distributed import average_tensors, average_values, process_group
from .errors import CheckpointError, InputError, TrainingDiverged
from .layers import Folding
from .layers.gmm import convolution_pays, smoothing_kernel
from .model import DCGMM
from .progress import progress_bar, write_line
from .schedule import Schedule


def centroid_rate(model: DCGMM, layer, rate_centroids: float) -> float:
    """Rate factor of ``layer``'s centroids: ``rate_centroids``, scaled down by the layer's variance floor
    relative to the model's ``variance_floor``, so that a layer with a finer floor (the top layer of a deep
    model, ``top_variance_floor``) takes steps no larger, relative to its precision, than the others."""
    return rate_centroids * min(1.0, layer.variance_floor / model.config.variance_floor)


def fused_layers(model: DCGMM) -> set[int]:
    """Indices of the GMM layers whose training step runs together with the Folding layer below them, as one
    convolution (:func:`dcgmm.layers.gmm.convolution_pays`: where the windows overlap a lot)."""
    stack = model.stack
    return {
        index for index in range(1, len(stack))
        if stack[index].is_mixture and isinstance(stack[index - 1], Folding)
        and convolution_pays(stack[index - 1].kernel, stack[index - 1].stride, stack[index].in_shape[0] * stack[index].in_shape[1])
    }


def _check_step_size(model: DCGMM, config: "TrainConfig") -> None:
    """Refuse centroid learning rates that overshoot.

    A component that wins a fraction m of the positions moves its centroid by ``lr * rate * m * tau``
    times its distance to their mean, with precisions tau up to ``1 / variance_floor``; above a factor 2 the
    step overshoots by more than the distance and the centroid diverges (a variance floor of 0.01 at lr 0.1
    ends with log-likelihoods of -5000 per position). The defaults sit exactly at 2; layers with a finer floor
    than the first get a proportionally smaller rate (:func:`centroid_rate`).
    """
    for index, layer in model.gmm_layers():
        rate = centroid_rate(model, layer, config.rate_centroids)
        gain = config.lr * rate / layer.variance_floor
        if gain > 2 * (1 + 1e-9):
            limit = 2 * layer.variance_floor / rate
            raise InputError(
                f"layer {index} {layer.spec()}: learning rate {config.lr} with variance floor {layer.variance_floor} lets "
                f"centroid steps overshoot and diverge (lr x rate_centroids / variance_floor = {gain:.3g} > 2): "
                f"use a learning rate of at most {limit:.3g}, or a larger variance floor"
            )


def _far_from_unit(low: float, high: float) -> bool:
    """True when a value range lies far outside [0, 1], the scale the default settings are made for."""
    return low < -1.0 or high > 2.0


def _warn_about_range(value_range: tuple[float, float]) -> None:
    low, high = value_range
    if _far_from_unit(low, high):
        warnings.warn(
            f"the training images have values in [{low:.3g}, {high:.3g}]; the defaults (variance floor 0.05, learning "
            f"rate 0.1) are made for images in [0, 1]: divide 0-255 values by 255 (uint8 arrays are scaled for you)",
            stacklevel=3,
        )


@dataclass
class TrainConfig:
    """Training settings. The defaults train the Table I architectures well on MNIST and FashionMNIST."""

    epochs: int = 25
    """Passes over the training data."""
    batch_size: int = 100
    """Images per SGD step."""
    lr: float = 0.1
    """Base learning rate epsilon of every GMM layer."""
    lr_min: float = 0.05
    """The learning rate shrinks with the annealing radius, but never below this (or below ``lr`` if smaller)."""
    rate_centroids: float = 1.0
    """Rate factor of the centroids (multiplies lr)."""
    rate_precisions: float = 200.0
    """Rate factor of the precision parameters (multiplies lr)."""
    rate_weights: float = 0.2
    """Rate factor of the mixing-weight logits (multiplies lr)."""
    classifier_lr: float = 0.1
    """Learning rate of a top classifier layer."""
    sigma_start: float | None = None
    """Initial annealing radius; None means 0.25 * sqrt(2K) per layer."""
    sigma_min: float = 0.01
    """Annealing floor; at this radius the loss is the plain max-component log-likelihood."""
    gamma: float = 0.9
    """Factor applied to radius and learning rate at each annealing step."""
    window: int = 100
    """Steps per averaging window of the annealing controller (1/alpha)."""
    delta: float = 0.05
    """Plateau threshold of the annealing controller."""
    precisions_from: float | None = 0.04
    """Phase 2 (precisions and weights adapt too) starts at this fraction of training, or, with None, when
    the layer's annealing reaches its floor. Early is much better: precisions that start late, after the
    components have organised at unit variance, let the first component to sharpen take over all data
    (see docs/training.md)."""
    wait: float = 0.0
    """Fraction of training that each GMM layer waits after the one below it starts."""
    seed: int = 0
    """Seed of initial values and data order."""

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def validate(self) -> None:
        """Raise InputError on settings that cannot work."""
        if self.epochs < 1:
            raise InputError(f"epochs must be at least 1; got {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1; got {self.batch_size}")
        for name in ("lr", "lr_min", "classifier_lr", "sigma_min"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be positive; got {getattr(self, name)}")
        if not 0 < self.gamma < 1:
            raise InputError(f"gamma must lie in (0, 1); got {self.gamma}")
        for name in ("wait", "precisions_from"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 <= value < 1):
                raise InputError(f"{name} is a fraction of training and must lie in [0, 1); got {value}")


@dataclass
class EpochRecord:
    """What one epoch did, per GMM layer (keyed by layer index)."""

    epoch: int
    seconds: float
    objective: dict = field(default_factory=dict)
    sigma: dict = field(default_factory=dict)
    phase: dict = field(default_factory=dict)
    lr: dict = field(default_factory=dict)
    classifier_loss: float | None = None


    def line(self) -> str:
        """The epoch as one log line."""
        parts = [f"epoch {self.epoch:3d} {self.seconds:6.2f}s"]
        for index in self.sigma:
            obj = self.objective[index]
            parts.append(f"L{index} obj {'wait' if obj is None else f'{obj:9.2f}'} sigma {self.sigma[index]:.3f} phase {self.phase[index]}")
        if self.classifier_loss is not None:
            parts.append(f"ce {self.classifier_loss:.4f}")
        return " | ".join(parts)

    @classmethod
    def from_dict(cls, values: dict) -> "EpochRecord":
        """Inverse of ``asdict`` after a JSON round trip (layer keys come back as strings)."""
        per_layer = {k: {int(i): v for i, v in values[k].items()} for k in ("objective", "sigma", "phase", "lr")}
        return cls(**{**values, **per_layer})


class Trainer:
    """Trains a :class:`DCGMM` on images; see the module docstring for the method.

    Parameters
    ----------
    model : the model; its parameters are re-initialised from ``config.seed`` unless resuming.
    config : training settings.
    images : float32 array or tensor, shape (N, H, W, C), a memory-mapped ``.npy``
        (:func:`dcgmm.data.open_npy`, uint8 or float) or an :class:`~dcgmm.data.ImageSource`; arrays are read
        and converted one batch at a time.
    labels : int array, shape (N,), needed only if the model has a classifier.
    """

    def __init__(self, model: DCGMM, config: TrainConfig, images, labels=None, device: str | torch.device = "cpu"):
        config.validate()
        self.model = model.to(device)
        self.config = config
        self.device = torch.device(device)
        self.images = ImageSource(images)
        model.check_images(self.images.take(torch.arange(1), self.device))
        if model.config.value_range is None:  # inputs far outside it are refused later
            model.config.value_range = self.images.value_range()
        _warn_about_range(model.config.value_range)
        if len(self.images) < config.batch_size:
            raise InputError(f"{len(self.images)} training images are fewer than one batch of {config.batch_size}: lower --batch-size")
        _check_step_size(model, config)
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if model.classifier is not None and self.labels is None:
            raise InputError(f"model {model.spec!r} has a classifier C(n) and needs labels; give a labelled dataset")
        self.rank, self.world = process_group()
        if config.batch_size % self.world:
            raise InputError(f"batch size {config.batch_size} does not split evenly over {self.world} processes: use a multiple of {self.world}")
        gmm_count = sum(1 for _ in model.gmm_layers())
        if config.wait * (gmm_count - 1) >= 1:
            raise InputError(
                f"wait {config.wait} per layer makes GMM layer {gmm_count} of {model.spec} start after "
                f"{config.wait * (gmm_count - 1):.0%} of training, so it would never train: use a wait below {1 / (gmm_count - 1):.3g}"
            )
        self.steps_per_epoch = len(self.images) // config.batch_size
        self.total_steps = self.steps_per_epoch * config.epochs
        self.epoch = 0
        self.step = 0
        self.history: list[EpochRecord] = []
        self.data_generator = torch.Generator().manual_seed(config.seed + 1)
        init_generator = torch.Generator().manual_seed(config.seed)
        for _, layer in model.gmm_layers():
            layer.reset_parameters(init_generator)
        self._fused = fused_layers(model)
        self.schedule = Schedule({i: layer.n_components for i, layer in model.gmm_layers()}, config, self.total_steps)
        self.optimizer = torch.optim.SGD(self._param_groups(), lr=config.lr)
        self._apply_phases()

    # ------------------------------------------------------------------------------------------ setup
    def _param_groups(self) -> list[dict]:
        c = self.config
        groups = []
        for index, layer in self.model.gmm_layers():
            groups += [
                {"params": [layer.centroids], "layer": index, "rate": centroid_rate(self.model, layer, c.rate_centroids)},
                {"params": [layer.precision_raw], "layer": index, "rate": c.rate_precisions},
                {"params": [layer.weight_logits], "layer": index, "rate": c.rate_weights},
            ]
        if self.model.classifier is not None:
            groups.append({"params": list(self.model.classifier.parameters()), "layer": None, "rate": 1.0})
        for group in groups:
            group["lr"] = self.config.classifier_lr if group["layer"] is None else self.config.lr * group["rate"]
        return groups

    def _apply_phases(self) -> None:
        """Phase 1 freezes precisions and weights; learning rates follow each layer's schedule."""
        for index, layer in self.model.gmm_layers():
            state = self.schedule.layers[index]
            layer.precision_raw.requires_grad_(state.phase == 2)
            layer.weight_logits.requires_grad_(state.phase == 2)
        for group in self.optimizer.param_groups:
            if group["layer"] is not None:
                group["lr"] = self.schedule.layers[group["layer"]].lr * group["rate"]

    # ------------------------------------------------------------------------------------------ steps
    def train_step(self, x: torch.Tensor, y: torch.Tensor | None) -> dict:
        """One SGD step on a batch ``x`` (B, H, W, C).

        Returns each active GMM layer's objective (higher is better), keyed by layer index, and the
        classifier's cross-entropy under ``"classifier"``. Raises :class:`TrainingDiverged` before the step
        when an objective is not finite.
        """
        if len(x) == 0:
            raise InputError("train_step got an empty batch: give at least one image")
        kernels = {}
        for index, layer in self.model.gmm_layers():
            if self.schedule.active(index, self.step):
                kernels[index] = smoothing_kernel(layer.n_components, self.schedule.sigma(index), self.device, layer.centroids.dtype)
        self.optimizer.zero_grad(set_to_none=True)
        objectives, grads, h = {}, {}, x
        stack, fused = self.model.stack, self._fused
        with torch.no_grad():  # GMM layers: gradients in closed form (GMM.training_step), no autograd
            index = 0
            while index < len(stack):
                if index + 1 in fused and index + 1 in kernels:  # Folding + GMM as one convolution
                    objectives[index + 1], h, grads[index + 1] = stack[index + 1].folded_training_step(h, stack[index], kernels[index + 1])
                    index += 2
                    continue
                if index in kernels:
                    objectives[index], h, grads[index] = stack[index].training_step(h, kernels[index])
                else:
                    h = stack[index](h)
                index += 1
        for index, (grad_w, grad_mu, grad_p) in grads.items():
            layer = self.model.layers[index]
            layer.centroids.grad = grad_mu
            if self.schedule.layers[index].phase == 2:
                layer.precision_raw.grad, layer.weight_logits.grad = grad_p, grad_w
        values = dict(zip(objectives, torch.stack(list(objectives.values())).tolist())) if objectives else {}
        if self.model.classifier is not None:
            loss = self.model.classifier.loss(h, y)
            loss.backward()
            values["classifier"] = float(loss.detach())
        if self.world > 1 and values:
            values = average_values(values, self.world, self.device)  # every process sees the same values, and stops alike
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:  # before the step: the parameters stay those of the last finite step
            raise TrainingDiverged(self._divergence_message(bad[0], values[bad[0]]))
        if values:
            if self.world > 1:
                average_tensors([p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None], self.world)
            self.optimizer.step()
        for index, value in values.items():
            if index != "classifier" and self.schedule.record(index, value, self.step):
                self._apply_phases()
        self.step += 1
        return values

    def _divergence_message(self, key, value: float) -> str:
        what = "the classifier's cross-entropy" if key == "classifier" else f"layer {key} {self.model.layers[key].spec()}'s objective"
        low, high = self.model.config.value_range or (0.0, 1.0)
        hint = (f"the training images have values in [{low:.3g}, {high:.3g}]: scale them to [0, 1]"
                if _far_from_unit(low, high) else "lower the learning rate or raise the variance floor")
        return (f"training diverged: {what} became {value} at epoch {self.epoch + 1}, step {self.step + 1} (stopped "
                f"before that step; the parameters are those of the step before). {hint[0].upper()}{hint[1:]}.")

    def fit(self, progress: bool = True, on_epoch_end: Callable[["Trainer"], None] | None = None,
            on_step: Callable[["Trainer"], None] | None = None) -> list[EpochRecord]:
        """Train until ``config.epochs``; call ``on_epoch_end(self)`` after every epoch (e.g. to checkpoint) and
        ``on_step(self)`` after every step.

        ``progress``: a bar per epoch on a terminal, and a line per epoch (:meth:`EpochRecord.line`).
        """
        c = self.config
        self.model.train()
        self.model.statistics = None  # outlier statistics describe the old parameters; recompute after training
        while self.epoch < c.epochs:
            start = time.perf_counter()
            order = torch.randperm(len(self.images), generator=self.data_generator)
            sums: dict = {}
            bar = progress_bar(range(self.steps_per_epoch), enabled=progress, desc=f"epoch {self.epoch + 1}/{c.epochs}", leave=False)
            for b in bar:
                idx = order[b * c.batch_size : (b + 1) * c.batch_size][self.rank :: self.world]
                x = self.images.take(idx, self.device)
                y = None if self.labels is None else self.labels[idx].to(self.device)
                values = self.train_step(x, y)
                if on_step is not None:
                    on_step(self)
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                if not bar.disable and b % 20 == 0:
                    bar.set_postfix_str(self._status(values))
            bar.close()
            record = EpochRecord(self.epoch + 1, time.perf_counter() - start)
            for index, state in self.schedule.layers.items():
                record.objective[index] = sums[index] / self.steps_per_epoch if index in sums else None
                record.sigma[index] = state.annealing.sigma
                record.phase[index] = state.phase
                record.lr[index] = state.lr
            if "classifier" in sums:
                record.classifier_loss = sums["classifier"] / self.steps_per_epoch
            self.history.append(record)
            self.epoch += 1
            if progress:
                write_line(record.line())
            if on_epoch_end is not None:
                on_epoch_end(self)
        return self.history

    def _status(self, values: dict) -> str:
        parts = []
        for index, state in self.schedule.layers.items():
            value = values.get(index)
            text = "wait" if value is None else f"{value:.1f}"
            parts.append(f"L{index}:{text} s={state.annealing.sigma:.2f} p{state.phase}")
        if "classifier" in values:
            parts.append(f"ce={values['classifier']:.3f}")
        return " ".join(parts)

    # ------------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, folder: str | Path) -> Path:
        """Write ``checkpoint.safetensors`` (resume state) and then ``model.safetensors`` into ``folder``, each
        atomically. A process killed between the two leaves a checkpoint one epoch ahead of the model file;
        resuming starts from the checkpoint."""
        folder = Path(folder)
        tensors = _model_tensors(self.model)
        optimizer = self.optimizer.state_dict()
        for param, state in optimizer["state"].items():
            for key, value in state.items():
                tensors[f"optim.{param}.{key}"] = value.detach().cpu().contiguous()
        tensors["rng.data"] = self.data_generator.get_state()
        metadata = {
            "model_config": self.model.config.to_dict(),
            "train_config": asdict(self.config),
            "optimizer": {"param_groups": optimizer["param_groups"], "state": {str(p): sorted(s) for p, s in optimizer["state"].items()}},
            "trainer": {
                "epoch": self.epoch,
                "step": self.step,
                "layers": self.schedule.state_dict(),
                "history": [asdict(r) for r in self.history],
            },
        }
        save_file(folder / CHECKPOINT_FILE, tensors, metadata)
        save_model(self.model, folder, extra={"train_config": asdict(self.config), "epochs_trained": self.epoch})
        return folder / CHECKPOINT_FILE

    @classmethod
    def resume(cls, folder: str | Path, images, labels=None, device="cpu", epochs: int | None = None) -> "Trainer":
        """Rebuild a trainer from ``folder/checkpoint.safetensors`` so that training continues exactly.

        ``epochs`` (at least the epochs already trained) extends or keeps the run's length. A run extended this
        way continues its own schedule: the annealing goes on where it was, each layer's start step (``wait``)
        stays where it was planned, and a layer still in phase 1 enters phase 2 at ``precisions_from`` of the
        new total. It therefore differs from a run planned that long from the start, whose fractions are of
        the longer total; with the defaults (phase 2 after 4% of training, no wait) the one difference is the
        step at which phase 2 began.
        """
        file = Path(folder) / CHECKPOINT_FILE
        tensors, metadata = read_file(file)
        if "trainer" not in metadata or "train_config" not in metadata:
            raise CheckpointError(f"{file} is a model file, not a training checkpoint; it cannot be resumed")
        model = model_from_tensors(tensors, metadata, file)
        config = TrainConfig.from_dict(metadata["train_config"])
        done = metadata["trainer"]["epoch"]
        if epochs is not None:
            if epochs < done:
                raise InputError(f"{file} has already trained {done} epochs: pass --epochs {done} or more to resume it")
            config.epochs = epochs
        trainer = cls(model, config, images, labels, device=device)
        # the constructor re-initialised the parameters; put the saved ones back
        trainer.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        state = metadata["trainer"]
        trainer.epoch, trainer.step = state["epoch"], state["step"]
        trainer.schedule.load_state_dict(state["layers"])
        trainer.history = [EpochRecord.from_dict(r) for r in state["history"]]
        if "optimizer" in metadata:  # checkpoints of plain SGD before 0.2 held no optimizer state at all
            saved = metadata["optimizer"]
            optimizer_state = {
                int(p): {key: tensors[f"optim.{p}.{key}"].to(trainer.device) for key in keys} for p, keys in saved["state"].items()
            }
            trainer.optimizer.load_state_dict({"state": optimizer_state, "param_groups": saved["param_groups"]})
        trainer._apply_phases()
        trainer.data_generator.set_state(tensors["rng.data"])
        return trainer
