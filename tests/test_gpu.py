"""The GPU path: everything runs with the model on CUDA and agrees with the CPU. Skipped without a GPU."""

import numpy as np
import pytest
import torch

from dcgmm import DCGMM, TrainConfig, Trainer
from dcgmm.inpainting import inpaint
from dcgmm.outliers import fit_statistics, image_scores
from dcgmm.sampling import Sharpening, sample

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SPEC = "F(4,4,2,2) G(4) F(3,3,1,1) G(4)"


def _trained(images, device):
    model = DCGMM.from_spec(SPEC, input_shape=(8, 8, 1))
    Trainer(model, TrainConfig(epochs=2, batch_size=20, seed=2), images, device=device).fit(progress=False)
    return model


def test_training_on_the_gpu_agrees_with_the_cpu(digits):
    images = digits[0][:400]
    cpu, gpu = _trained(images, "cpu"), _trained(images, "cuda")
    assert next(gpu.parameters()).is_cuda
    for key, value in cpu.state_dict().items():
        torch.testing.assert_close(gpu.state_dict()[key].cpu(), value, rtol=1e-3, atol=1e-3)


def test_statistics_sampling_sharpening_and_inpainting_on_the_gpu(digits):
    images = digits[0][:400]
    model = _trained(images, "cuda")
    fit_statistics(model, images)
    tops, windows = model.statistics.top_factors, model.statistics.windows  # the fill's factors, fitted on the GPU
    assert tops is not None and windows is not None and tops.finite() and windows.finite()
    scores = image_scores(model, images[:50])
    assert scores.shape == (50,) and np.isfinite(scores).all()
    generator = torch.Generator(device="cuda").manual_seed(0)
    samples = sample(model, 10, top_s=2, sharpening=Sharpening(steps=5), generator=generator)
    assert samples.is_cuda and samples.shape == (10, 8, 8, 1) and torch.isfinite(samples).all()
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:5, 2:5] = True
    result = inpaint(model, images[:5], mask=mask, generator=generator)
    np.testing.assert_array_equal(result.images[:, ~mask], images[:5][:, ~mask])
    assert model.clusters(images[:20]).shape == (20,)
