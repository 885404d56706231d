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

Data-parallel training: inside a ``torch.distributed`` process group (e.g. started by ``torchrun``), every
process takes its share of each global batch (``batch_size`` images, split evenly by rank), and in each
step the gradients are averaged over all processes with one all-reduce, as DDP does. The per-step
objectives that drive the annealing are all-reduced too, so every process anneals identically and all
hold the same parameters: the run equals a single process with the same global batch and seed, up to the
order of floating-point sums.
"""

from __future__ import annotations

import math
import mmap
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import distributed as dist

from .annealing import Annealing
from .checkpoint import CHECKPOINT_FILE, _model_tensors, model_from_tensors, read_file, save_file, save_model
from .data import as_images
from .errors import CheckpointError, InputError, TrainingDiverged
from .layers import Classifier
from .layers.gmm import smoothing_kernel
from .model import DCGMM
from .progress import progress_bar, write_line


def _advise_random_access(images: np.memmap) -> None:
    """Tell the kernel that batches hit the file in random order, so it reads only the pages asked for.

    With its default read-ahead, every image of a random batch pulls in its whole neighbourhood (128 KiB or
    more for a 784-byte image); for a file larger than the page cache that multiplies the disk reads ~100x.
    """
    mapping = getattr(images, "_mmap", None)  # numpy keeps the mmap object of a memmap here
    if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)


def _check_step_size(model: DCGMM, config: "TrainConfig") -> None:
    """Refuse centroid learning rates that overshoot.

    A component that wins a fraction m of the positions moves its centroid by ``lr * rate_centroids * m * tau``
    times its distance to their mean, with precisions tau up to ``1 / variance_floor``; above a factor 2 the
    step overshoots by more than the distance and the centroid diverges (a variance floor of 0.01 at lr 0.1
    ends with log-likelihoods of -5000 per position). The defaults sit exactly at 2.
    """
    for index, layer in model.gmm_layers():
        gain = config.lr * config.rate_centroids / layer.variance_floor
        if gain > 2 * (1 + 1e-9):
            limit = 2 * layer.variance_floor / config.rate_centroids
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


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised ``torch.distributed`` process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
class LayerState:
    """Training state of one GMM layer."""

    annealing: Annealing
    start_step: int
    phase: int = 1
    lr: float = 0.0

    def state_dict(self) -> dict:
        return {"annealing": self.annealing.state_dict(), "start_step": self.start_step, "phase": self.phase, "lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        self.annealing.load_state_dict(state["annealing"])
        self.start_step, self.phase, self.lr = state["start_step"], state["phase"], state["lr"]


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


class Trainer:
    """Trains a :class:`DCGMM` on an image array; see the module docstring for the method.

    Parameters
    ----------
    model : the model; its parameters are re-initialised from ``config.seed`` unless resuming.
    config : training settings.
    images : float32 array or tensor, shape (N, H, W, C), or a memory-mapped ``.npy``
        (:func:`dcgmm.data.open_npy`, uint8 or float), read one batch at a time.
    labels : int array, shape (N,), needed only if the model has a classifier.
    """

    def __init__(self, model: DCGMM, config: TrainConfig, images, labels=None, device: str | torch.device = "cpu"):
        config.validate()
        self.model = model.to(device)
        self.config = config
        self.device = torch.device(device)
        # a memory-mapped array (dcgmm.data.open_npy) stays on disk: batches are read and converted one at a time
        self.images = images if isinstance(images, np.memmap) else torch.as_tensor(images)
        if isinstance(images, np.memmap):
            _advise_random_access(images)
        model.check_images(self._batch(torch.arange(1)))
        if model.config.value_range is None:
            model.config.value_range = self._value_range()
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

        torch.manual_seed(config.seed)
        init_generator = torch.Generator().manual_seed(config.seed)
        self.states: dict[int, LayerState] = {}
        for rank, (index, layer) in enumerate(model.gmm_layers()):
            layer.reset_parameters(init_generator)
            sigma0 = config.sigma_start if config.sigma_start is not None else 0.25 * math.sqrt(2 * layer.n_components)
            annealing = Annealing(sigma0, config.sigma_min, config.gamma, config.window, config.delta)
            start = int(round(rank * config.wait * self.total_steps))
            self.states[index] = LayerState(annealing, start, phase=1, lr=config.lr)
        self.optimizer = torch.optim.SGD(self._param_groups(), lr=config.lr)
        self._apply_phases()
        self._stack = [layer for layer in model.layers if not isinstance(layer, Classifier)]  # what trains without autograd

    # ------------------------------------------------------------------------------------------ setup
    def _batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Images ``idx`` as float32 (B, H, W, C) on the training device."""
        if isinstance(self.images, torch.Tensor):
            return self.images[idx].to(self.device, torch.float32, non_blocking=True)
        return torch.from_numpy(as_images(self.images[idx.numpy()])).to(self.device)

    def _value_range(self, chunk: int = 10_000) -> tuple[float, float]:
        if isinstance(self.images, torch.Tensor):
            return float(self.images.min()), float(self.images.max())
        low, high = np.inf, -np.inf
        for start in range(0, len(self.images), chunk):
            block = as_images(np.array(self.images[start : start + chunk]))
            low, high = min(low, float(block.min())), max(high, float(block.max()))
        return low, high

    def _param_groups(self) -> list[dict]:
        c = self.config
        groups = []
        for index, layer in self.model.gmm_layers():
            groups += [
                {"params": [layer.centroids], "layer": index, "rate": c.rate_centroids},
                {"params": [layer.precision_raw], "layer": index, "rate": c.rate_precisions},
                {"params": [layer.weight_logits], "layer": index, "rate": c.rate_weights},
            ]
        if self.model.classifier is not None:
            groups.append({"params": list(self.model.classifier.parameters()), "layer": None, "rate": 1.0})
        for group in groups:
            group["lr"] = self.config.classifier_lr if group["layer"] is None else self.config.lr * group["rate"]
        return groups

    def _apply_phases(self) -> None:
        """Phase 1 freezes precisions and weights; set learning rates from each layer's state."""
        for index, layer in self.model.gmm_layers():
            state = self.states[index]
            layer.precision_raw.requires_grad_(state.phase == 2)
            layer.weight_logits.requires_grad_(state.phase == 2)
        for group in self.optimizer.param_groups:
            if group["layer"] is not None:
                group["lr"] = self.states[group["layer"]].lr * group["rate"]

    def _update_phase(self, index: int) -> None:
        state, c = self.states[index], self.config
        if state.phase == 2:
            return
        if c.precisions_from is None:
            trigger = state.annealing.done
        else:
            trigger = self.step >= c.precisions_from * self.total_steps
        if trigger:
            state.phase = 2
            self._apply_phases()

    # ------------------------------------------------------------------------------------------ steps
    def train_step(self, x: torch.Tensor, y: torch.Tensor | None) -> dict:
        """One SGD step on a batch ``x`` (B, H, W, C).

        Returns each active GMM layer's objective (higher is better), keyed by layer index, and the
        classifier's cross-entropy under ``"classifier"``.
        """
        if len(x) == 0:
            raise InputError("train_step got an empty batch: give at least one image")
        kernels = {}
        for index, layer in self.model.gmm_layers():
            state = self.states[index]
            if self.step >= state.start_step:
                kernels[index] = smoothing_kernel(layer.n_components, state.annealing.sigma, self.device, layer.centroids.dtype)
        self.optimizer.zero_grad(set_to_none=True)
        objectives, grads, h = {}, {}, x
        with torch.no_grad():  # GMM layers: gradients in closed form (GMM.training_step), no autograd
            for index, layer in enumerate(self._stack):
                if index in kernels:
                    objectives[index], h, grads[index] = layer.training_step(h, kernels[index])
                else:
                    h = layer(h)
        for index, (grad_w, grad_mu, grad_p) in grads.items():
            layer = self.model.layers[index]
            layer.centroids.grad = grad_mu
            if self.states[index].phase == 2:
                layer.precision_raw.grad, layer.weight_logits.grad = grad_p, grad_w
        values = dict(zip(objectives, torch.stack(list(objectives.values())).tolist())) if objectives else {}
        if self.model.classifier is not None:
            loss = self.model.classifier.loss(h, y)
            loss.backward()
            values["classifier"] = float(loss.detach())
        if self.world > 1 and values:
            values = self._average_objectives(values)  # every process sees the same values, and stops alike
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:  # before the step: the parameters stay those of the last finite step
            raise TrainingDiverged(self._divergence_message(bad[0], values[bad[0]]))
        if values:
            if self.world > 1:
                self._average_gradients()
            self.optimizer.step()
        for index, value in values.items():
            if index == "classifier":
                continue
            state = self.states[index]
            if state.annealing.update(value):
                state.lr = max(state.lr * self.config.gamma, min(self.config.lr_min, self.config.lr))
                self._apply_phases()
            self._update_phase(index)
        self.step += 1
        return values

    def _divergence_message(self, key, value: float) -> str:
        what = "the classifier's cross-entropy" if key == "classifier" else f"layer {key} {self.model.layers[key].spec()}'s objective"
        low, high = self.model.config.value_range or (0.0, 1.0)
        hint = (f"the training images have values in [{low:.3g}, {high:.3g}]: scale them to [0, 1]"
                if _far_from_unit(low, high) else "lower the learning rate or raise the variance floor")
        return (f"training diverged: {what} became {value} at epoch {self.epoch + 1}, step {self.step + 1} (stopped "
                f"before that step; the parameters are those of the step before). {hint[0].upper()}{hint[1:]}.")

    def _average_gradients(self) -> None:
        """All-reduce (mean) every gradient over the process group, in one flat buffer."""
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _average_objectives(self, objectives: dict) -> dict:
        """The global objectives: every process's values averaged (all processes then anneal alike)."""
        keys = list(objectives)
        values = torch.tensor([objectives[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.world).tolist()))

    def fit(self, progress: bool = True, on_epoch_end: Callable[["Trainer"], None] | None = None) -> list[EpochRecord]:
        """Train until ``config.epochs``; call ``on_epoch_end(self)`` after every epoch (e.g. to checkpoint)."""
        c = self.config
        self.model.train()
        self.model.statistics = None  # outlier statistics describe the old parameters; recompute after training
        # responsibilities far below 1e-38 are subnormal floats, which make CPU arithmetic up to 10x slower;
        # flushing them to zero changes no result that matters (they are exp of less than -87)
        torch.set_flush_denormal(True)
        while self.epoch < c.epochs:
            start = time.perf_counter()
            order = torch.randperm(len(self.images), generator=self.data_generator)
            sums: dict = {}
            bar = progress_bar(range(self.steps_per_epoch), enabled=progress, desc=f"epoch {self.epoch + 1}/{c.epochs}", leave=False)
            for b in bar:
                idx = order[b * c.batch_size : (b + 1) * c.batch_size][self.rank :: self.world]
                x = self._batch(idx)
                y = None if self.labels is None else self.labels[idx].to(self.device)
                values = self.train_step(x, y)
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                if not bar.disable and b % 20 == 0:
                    bar.set_postfix_str(self._status(values))
            bar.close()
            record = EpochRecord(self.epoch + 1, time.perf_counter() - start)
            for index, state in self.states.items():
                record.objective[index] = sums[index] / self.steps_per_epoch if index in sums else None
                record.sigma[index] = state.annealing.sigma
                record.phase[index] = state.phase
                record.lr[index] = state.lr
            if "classifier" in sums:
                record.classifier_loss = sums["classifier"] / self.steps_per_epoch
            self.history.append(record)
            self.epoch += 1
            if progress:
                write_line(self._epoch_line(record))
            if on_epoch_end is not None:
                on_epoch_end(self)
        return self.history

    def _status(self, values: dict) -> str:
        parts = []
        for index, state in self.states.items():
            value = values.get(index)
            text = "wait" if value is None else f"{value:.1f}"
            parts.append(f"L{index}:{text} s={state.annealing.sigma:.2f} p{state.phase}")
        if "classifier" in values:
            parts.append(f"ce={values['classifier']:.3f}")
        return " ".join(parts)

    def _epoch_line(self, r: EpochRecord) -> str:
        parts = [f"epoch {r.epoch:3d} {r.seconds:6.2f}s"]
        for index in r.sigma:
            obj = r.objective[index]
            parts.append(f"L{index} obj {'wait' if obj is None else f'{obj:9.2f}'} sigma {r.sigma[index]:.3f} phase {r.phase[index]}")
        if r.classifier_loss is not None:
            parts.append(f"ce {r.classifier_loss:.4f}")
        return " | ".join(parts)

    # ------------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, folder: str | Path) -> Path:
        """Write ``checkpoint.safetensors`` (resume state) and ``model.safetensors`` into ``folder``, atomically."""
        folder = Path(folder)
        tensors = _model_tensors(self.model)
        for i, group in enumerate(self.optimizer.param_groups):
            for j, param in enumerate(group["params"]):
                for key, value in self.optimizer.state.get(param, {}).items():
                    if torch.is_tensor(value):
                        tensors[f"optim.{i}.{j}.{key}"] = value.detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.data"] = self.data_generator.get_state()
        metadata = {
            "model_config": self.model.config.to_dict(),
            "train_config": asdict(self.config),
            "trainer": {
                "epoch": self.epoch,
                "step": self.step,
                "layers": {str(k): s.state_dict() for k, s in self.states.items()},
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
        for key, layer_state in state["layers"].items():
            trainer.states[int(key)].load_state_dict(layer_state)
        trainer.history = [
            EpochRecord(**{**r, **{k: {int(i) if i.isdigit() else i: v for i, v in r[k].items()} for k in ("objective", "sigma", "phase", "lr")}})
            for r in state["history"]
        ]
        trainer._apply_phases()
        for i, group in enumerate(trainer.optimizer.param_groups):
            for j, param in enumerate(group["params"]):
                prefix = f"optim.{i}.{j}."
                for key, value in tensors.items():
                    if key.startswith(prefix):
                        trainer.optimizer.state[param][key[len(prefix):]] = value.to(trainer.device)
        torch.set_rng_state(tensors["rng.torch"])
        trainer.data_generator.set_state(tensors["rng.data"])
        return trainer
