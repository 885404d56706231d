"""Saving and loading models and training checkpoints: safetensors files, written atomically.

A run folder holds

* ``model.safetensors`` — the model: weights, plus its :class:`~dcgmm.model.ModelConfig` as JSON in the
  file header. Enough to rebuild the model; nothing is unpickled or executed when loading.
* ``checkpoint.safetensors`` — everything to resume training exactly: the model, the optimizer state,
  the annealing and phase state of every layer, the training config, and the random number generators.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over the old
one, so a killed run leaves either the previous file or the new one, never a truncated one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .errors import CheckpointError, SpecError
from .model import DCGMM, ModelConfig

MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "dcgmm-1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never seen half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode())


def _model_tensors(model: DCGMM) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, object]) -> None:
    """Write tensors and JSON-able metadata as one safetensors file, atomically."""
    header = {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    atomic_write_bytes(path, save_bytes(tensors, metadata=header))


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Read a file written by :func:`save_file`; raise CheckpointError if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: pass a run folder written by `dcgmm train` or its model file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror}): check its permissions") from None
    try:
        tensors = load_bytes(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        metadata = header.get("__metadata__", {})
        if metadata.get("format") != FORMAT:
            raise CheckpointError(f"{path} is a safetensors file but not a dcgmm model or checkpoint")
        return tensors, {k: json.loads(v) for k, v in metadata.items() if k != "format"}
    except (SafetensorError, ValueError, UnicodeDecodeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({exc}); retrain, or resume from an intact copy") from None


def save_model(model: DCGMM, path: str | Path, extra: dict | None = None) -> Path:
    """Save ``model`` (and its outlier statistics, if any) to ``path``: a run folder, or a .safetensors file."""
    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / MODEL_FILE
    tensors, metadata = _model_tensors(model), {"model_config": model.config.to_dict(), **(extra or {})}
    if model.statistics is not None:
        stats_tensors, metadata["statistics"] = model.statistics.to_tensors()
        tensors.update(stats_tensors)
    save_file(file, tensors, metadata)
    return file


def model_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict, source: Path) -> DCGMM:
    """Rebuild a model (with its outlier statistics, if saved) from the tensors and metadata of a file."""
    from .outliers import OutlierStatistics

    if not isinstance(metadata.get("model_config"), dict):
        raise CheckpointError(f"{source} has no model configuration; it was not written by dcgmm")
    # files written before top_variance_floor existed trained every layer with the one variance_floor
    settings = {"top_variance_floor": None, **metadata["model_config"]}
    try:
        model = DCGMM(ModelConfig(**settings))
    except TypeError as exc:
        raise CheckpointError(f"{source}: unknown model configuration ({exc}); it was written by another dcgmm version") from None
    except SpecError as exc:
        raise CheckpointError(f"{source}: its model configuration is invalid ({exc}); the file is damaged or was not written by dcgmm") from None
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    bad = [name for name, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise CheckpointError(
            f"{source} holds NaN or inf weights ({', '.join(bad[:3])}): the run that wrote it diverged; retrain, with "
            f"images scaled to [0, 1]"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not match the saved configuration ({exc})") from None
    if "statistics" in metadata:
        try:
            model.statistics = OutlierStatistics.from_tensors(tensors, metadata["statistics"])
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{source}: outlier statistics are incomplete ({exc}); recompute them with `dcgmm stats`") from None
        stats = model.statistics
        factors = [f for f in (stats.windows, stats.top_factors) if f is not None]
        if not all(f.finite() for f in factors) or not all(np.isfinite(s.mean).all() and np.isfinite(s.variance).all() for s in stats.layers.values()):
            raise CheckpointError(f"{source}: its outlier statistics hold NaN or inf; recompute them with `dcgmm stats`")
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> DCGMM:
    """Load a model from a run folder (its ``model.safetensors``, else its checkpoint) or from a file."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / MODEL_FILE, path / CHECKPOINT_FILE]
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise CheckpointError(f"{path} holds no {MODEL_FILE} or {CHECKPOINT_FILE}: train a model into it with `dcgmm train --out {path}`")
    else:
        file = path
    tensors, metadata = read_file(file)
    return model_from_tensors(tensors, metadata, file).to(device)
