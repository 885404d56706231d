"""Model files and checkpoints: reloading, atomic writes under a kill, missing and corrupt files."""

import os

import numpy as np
import pytest

from dcgmm import DCGMM, CheckpointError, TrainConfig, Trainer, load_model
from dcgmm.checkpoint import CHECKPOINT_FILE, MODEL_FILE, read_file, save_file, save_model

SMALL = "F(4,4,2,2) G(9) F(3,3,1,1) G(4)"


def test_model_file_reloads(digits, tmp_path):
    images, _ = digits
    trainer = Trainer(DCGMM.from_spec(SMALL, input_shape=(8, 8, 1)), TrainConfig(epochs=1, batch_size=50), images)
    trainer.fit(progress=False)
    trainer.save_checkpoint(tmp_path)
    loaded = load_model(tmp_path)
    np.testing.assert_array_equal(loaded.log_likelihoods(images)[-1].per_position, trainer.model.log_likelihoods(images)[-1].per_position)


def test_the_top_floor_survives_a_reload_and_files_from_before_it_keep_one_floor(digits, tmp_path):
    images, _ = digits
    model = DCGMM.from_spec(SMALL, input_shape=(8, 8, 1), top_variance_floor=0.003)
    Trainer(model, TrainConfig(epochs=1, batch_size=50), images).fit(progress=False)
    save_model(model, tmp_path / "new.safetensors")
    loaded = load_model(tmp_path / "new.safetensors")
    assert [layer.variance_floor for _, layer in loaded.gmm_layers()] == [0.05, 0.003]
    np.testing.assert_array_equal(loaded.log_likelihoods(images)[-1].per_position, model.log_likelihoods(images)[-1].per_position)
    # a file written before top_variance_floor existed: its top layer was trained (and must be read) with 0.05
    tensors, metadata = read_file(tmp_path / "new.safetensors")
    del metadata["model_config"]["top_variance_floor"]
    save_file(tmp_path / "old.safetensors", tensors, metadata)
    old = load_model(tmp_path / "old.safetensors")
    assert old.config.floors == (0.05, 0.05) and [layer.variance_floor for _, layer in old.gmm_layers()] == [0.05, 0.05]


def test_killed_write_leaves_previous_checkpoint_intact(digits, tmp_path, monkeypatch):
    images, _ = digits
    trainer = Trainer(DCGMM.from_spec(SMALL, input_shape=(8, 8, 1)), TrainConfig(epochs=2, batch_size=50), images)
    trainer.fit(progress=False)
    trainer.save_checkpoint(tmp_path)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()

    def killed(*args):
        raise KeyboardInterrupt  # the process dies between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE, MODEL_FILE]  # no temporary left
    Trainer.resume(tmp_path, images)


def test_missing_and_corrupt_checkpoints_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        load_model(tmp_path)
    model = DCGMM.from_spec("1L")
    from dcgmm import save_model

    file = save_model(model, tmp_path)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path)
    file.write_bytes(b"garbage that is not a safetensors file at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(file)
    with pytest.raises(CheckpointError, match="not a training checkpoint|does not exist"):
        Trainer.resume(tmp_path, np.zeros((200, 28, 28, 1), np.float32))
