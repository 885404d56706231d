"""Data-parallel training under torchrun (gloo, CPU) equals a single process with the same global batch."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import distributed as dist

from dcgmm import DCGMM, InputError, TrainConfig, Trainer, load_model

SPEC = "F(4,4,2,2) G(4) F(3,3,1,1) G(4)"
FLOORS = ["--top-variance-floor", "0.05"]
"""One variance floor for both layers. With the default finer floor of the top layer, this 4-component toy
model's precision steps amplify the last-bit differences of the two summation orders (measured: top-layer
precision parameters 8 apart after 3 epochs, the first layer still equal to 1e-6); the test is about the
arithmetic of data-parallel training, which this model shows to 1e-5."""
RTOL, ATOL = 1e-4, 1e-5
"""Allowed difference between the parameters of the two runs, |a - b| <= ATOL + RTOL |a|: float32 sums taken
in another order (measured: at most about 1e-5 on parameters up to about 10, after 60 steps)."""


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=RTOL, atol=ATOL, msg=lambda m: f"{key}: {m}")


def _train(args, tmp_path, *launcher):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*launcher, "-m", "dcgmm.cli", "train", "--data", str(tmp_path / "digits.npy"), "--arch", SPEC, *args, "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def digits_file(digits, tmp_path):
    np.save(tmp_path / "digits.npy", digits[0][:400])
    return tmp_path


def test_torchrun_two_processes_equal_one_process(digits_file):
    tmp_path = digits_file
    common = ["--epochs", "3", "--batch-size", "20", "--seed", "3", *FLOORS]
    _train(common + ["--out", str(tmp_path / "single")], tmp_path, sys.executable)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    stdout = _train(common + ["--out", str(tmp_path / "ddp")], tmp_path, *torchrun)
    assert "2 processes (global batch 20)" in stdout
    single, ddp = load_model(tmp_path / "single"), load_model(tmp_path / "ddp")
    a, b = single.state_dict(), ddp.state_dict()
    _assert_same(a, b)
    assert any(float((a[k] - DCGMM.from_spec(SPEC, input_shape=(8, 8, 1)).state_dict()[k]).abs().max()) > 0.01 for k in a)  # it trained
    # resume under torchrun: two more epochs continue the run exactly like a single process does
    _train(["--epochs", "5", "--resume", "--out", str(tmp_path / "single")], tmp_path, sys.executable)
    _train(["--epochs", "5", "--resume", "--out", str(tmp_path / "ddp")], tmp_path, *torchrun)
    _assert_same(load_model(tmp_path / "single").state_dict(), load_model(tmp_path / "ddp").state_dict())


def test_batch_must_split_over_the_processes(digits, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        Trainer(DCGMM.from_spec(SPEC, input_shape=(8, 8, 1)), TrainConfig(batch_size=21), digits[0][:100])  # world 1: fine
    finally:
        dist.destroy_process_group()
    trainer_cls = Trainer
    with pytest.raises(InputError, match="does not split evenly over 2 processes"):
        original = trainer_cls.__init__.__globals__["process_group"]
        trainer_cls.__init__.__globals__["process_group"] = lambda: (0, 2)
        try:
            Trainer(DCGMM.from_spec(SPEC, input_shape=(8, 8, 1)), TrainConfig(batch_size=21), digits[0][:100])
        finally:
            trainer_cls.__init__.__globals__["process_group"] = original
    assert torch.distributed.is_initialized() is False
