"""Sampling, conditional sampling, components and variants: shapes, draws, top-S, the CLI."""

import numpy as np
import pytest
import torch

from dcgmm import DCGMM, PRESETS, InputError, TrainConfig, Trainer, save_model
from dcgmm.cli import main
from dcgmm.sampling import Sharpening, clamp_range, sample, sample_classes, sample_components, variants

SMALL = "F(4,4,2,2) G(9) F(3,3,1,1) G(4)"


@pytest.fixture(scope="module")
def small_model(digits):
    images, labels = digits
    model = DCGMM.from_spec(SMALL + " C(10)", input_shape=(8, 8, 1))
    Trainer(model, TrainConfig(epochs=6, batch_size=50, window=10), images, labels).fit(progress=False)
    return model


@pytest.mark.parametrize("arch", list(PRESETS))
def test_sample_shapes_for_every_table_one_architecture(arch):
    model = DCGMM.from_spec(arch)
    gen = torch.Generator().manual_seed(0)
    for top_s in (1, 3, None):
        out = sample(model, 5, top_s=top_s, sharpening=Sharpening(steps=2), generator=gen)
        assert out.shape == (5, 28, 28, 1) and torch.isfinite(out).all()
    templates = torch.rand(3, 28, 28, 1)
    assert variants(model, templates, top_s=2, generator=gen).shape == (3, 28, 28, 1)


def test_one_layer_top_one_samples_are_exactly_centroids():
    model = DCGMM.from_spec("F(8,8,1,1) G(10)", input_shape=(8, 8, 1))
    out = sample(model, 200, top_s=1, noise=0.0, generator=torch.Generator().manual_seed(0)).reshape(200, 64)
    centroids = model.layers[1].centroids.detach()
    nearest = torch.cdist(out, centroids).argmin(1)  # [200]
    assert torch.equal(out, centroids[nearest])  # bit for bit
    # drawn from pi, not only its largest entry: more than one centroid shows up
    assert len(nearest.unique()) > 1


def test_tiling_windows_emit_whole_centroids_and_overlapping_ones_average():
    """2L-b's 7x7 windows tile the image: every tile of a noise-free sample is one lower centroid, bit for bit
    (nothing averaged, the reason 2L-b samples vary, docs/sampling.md); 2L-c's overlapping windows average."""
    gen = torch.Generator().manual_seed(0)
    model = DCGMM.from_spec("2L-b")
    with torch.no_grad():
        model.layers[1].centroids.uniform_(0, 1, generator=gen)
    out = sample(model, 20, top_s=None, noise=0.0, generator=gen)  # (20, 28, 28, 1)
    tiles = out.reshape(20, 4, 7, 4, 7).permute(0, 1, 3, 2, 4).reshape(-1, 49)
    centroids = model.layers[1].centroids.detach()
    assert torch.equal(tiles, centroids[torch.cdist(tiles, centroids).argmin(1)])
    overlapping = DCGMM.from_spec("2L-c")
    with torch.no_grad():
        overlapping.layers[1].centroids.uniform_(0, 1, generator=gen)
    windows = overlapping.layers[0](sample(overlapping, 20, top_s=None, noise=0.0, generator=gen)).reshape(-1, 64)
    centroids = overlapping.layers[1].centroids.detach()
    assert torch.cdist(windows, centroids).min(1).values.min() > 0.1  # no window is a centroid


def test_top_layer_draws_follow_the_mixing_weights():
    model = DCGMM.from_spec("F(2,2,1,1) G(4)", input_shape=(2, 2, 1))
    layer = model.layers[1]
    with torch.no_grad():
        layer.centroids.copy_(torch.arange(4.0)[:, None].expand(4, 4))
        layer.weight_logits.copy_(torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])))
    out = sample(model, 20000, noise=0.0, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(out[:, 0, 0, 0].long(), minlength=4).double() / 20000
    torch.testing.assert_close(counts, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), atol=0.015, rtol=0)


def test_sampling_is_reproducible_with_a_seeded_generator(small_model):
    a = sample(small_model, 20, top_s=2, generator=torch.Generator().manual_seed(3))
    b = sample(small_model, 20, top_s=2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_lower_layers_never_select_outside_the_top_s(small_model):
    # the lower GMM receives control from the top; with S = 1 it must use the control's argmax everywhere
    model = small_model
    top, fold, gmm = model.layers[3], model.layers[2], model.layers[1]
    gen = torch.Generator().manual_seed(0)
    control = fold.sample(top.sample(torch.exp(top.log_weights).expand(50, *top.out_shape), generator=gen))
    emitted = gmm.sample(control, top_s=2, generator=gen)  # [50, 3, 3, 16]
    chosen = torch.cdist(emitted.reshape(-1, 16), gmm.centroids.detach()).argmin(1)
    allowed = control.reshape(-1, 9).topk(2, dim=1).indices
    assert (chosen[:, None] == allowed).any(1).all()


def test_conditional_sampling_shapes_and_errors(small_model):
    out = sample_classes(small_model, [0, 3, 7, 7], top_s=1, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 8, 8, 1) and torch.isfinite(out).all()
    with pytest.raises(InputError, match="0..9"):
        sample_classes(small_model, [10])
    with pytest.raises(InputError, match="no class labels"):
        sample_classes(small_model, [])
    with pytest.raises(InputError, match="needs a classifier"):
        sample_classes(DCGMM.from_spec(SMALL, input_shape=(8, 8, 1)), [1])


def test_variant_clamping(small_model, digits):
    images, _ = digits
    templates = torch.from_numpy(images[:30])
    low, high = clamp_range(small_model)
    assert (low, high) == (1, 5)  # 2 GMM layers: F G F G, O = 4
    torch.testing.assert_close(variants(small_model, templates, clamp_layer=1), templates)
    gen = torch.Generator().manual_seed(0)
    distances = []
    for clamp in (3, high):
        out = variants(small_model, templates, top_s=1, clamp_layer=clamp, generator=gen)
        assert out.shape == templates.shape
        distances.append(float(((out - templates) ** 2).mean()))
    assert distances[0] <= distances[1] + 1e-6  # clamping lower keeps variants closer to their templates
    with pytest.raises(InputError, match="clamp layer must lie in 1..5"):
        variants(small_model, templates, clamp_layer=6)
    with pytest.raises(InputError, match="shape"):
        variants(small_model, torch.rand(2, 9, 9, 1))
    with pytest.raises(InputError, match="top-S"):
        sample(small_model, 3, top_s=0)
    assert np.isfinite(variants(small_model, templates[:2, ..., 0].numpy()).numpy()).all()  # (N, H, W) works


def test_cli_sample_and_variants(small_model, digits, tmp_path, capsys):
    save_model(small_model, tmp_path / "run" / "model.safetensors")
    run = str(tmp_path / "run")
    assert main(["sample", "--model", run, "--n", "12", "--S", "2", "--steps", "20", "--npy", str(tmp_path / "s.npy"), "--quiet"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (12, 8, 8, 1) and (tmp_path / "run" / "samples.png").is_file()
    assert main(["sample", "--model", run, "--n", "3", "--classes", "0,3,7", "--out", str(tmp_path / "c.png"), "--npy", str(tmp_path / "c.npy"), "--quiet"]) == 0
    assert (tmp_path / "c.png").is_file()
    # without options, the CLI draws what the library's defaults draw (sample_classes has its own)
    expected = sample_classes(small_model, [0, 0, 0, 3, 3, 3, 7, 7, 7], generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), expected.numpy())
    assert main(["sample", "--model", run, "--n", "4", "--npy", str(tmp_path / "u.npy"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "u.npy"), sample(small_model, 4, generator=torch.Generator().manual_seed(0)).numpy())
    templates = tmp_path / "t.npy"
    np.save(templates, digits[0][:4, ..., 0])
    out = tmp_path / "variants"
    assert main(["variants", "--model", run, "--npy", str(templates), "--S", "2", "--clamp-layer", "3", "--per-template", "5", "--steps", "10", "--out", str(out), "--quiet"]) == 0
    assert np.load(out / "variants.npy").shape == (4, 5, 8, 8, 1) and (out / "variants.png").is_file()
    capsys.readouterr()
    assert main(["variants", "--model", run, "--npy", str(templates), "--clamp-layer", "9", "--out", str(out), "--quiet"]) == 2
    assert "clamp layer must lie in 1..5" in capsys.readouterr().err
    assert main(["sample", "--model", run, "--classes", "12", "--quiet"]) == 2
    assert "0..9" in capsys.readouterr().err


def test_sample_components_emits_the_fixed_component(digits):
    model = DCGMM.from_spec("F(8,8,1,1) G(5)", input_shape=(8, 8, 1))
    Trainer(model, TrainConfig(epochs=1), digits[0][:300]).fit(progress=False)
    images = sample_components(model, [3, 1, 3])
    centroids = model.layers[1].centroids.detach()
    torch.testing.assert_close(images.reshape(3, -1), centroids[[3, 1, 3]])
    with pytest.raises(InputError, match="components must be"):
        sample_components(model, [5])


def test_lower_layer_draws_follow_the_control_restricted_to_the_top_s():
    """Chi-square test of 40 000 draws against the control signal renormalised over its S largest entries."""
    from scipy.stats import chisquare

    layer = DCGMM.from_spec("F(1,1,1,1) G(5)", input_shape=(1, 1, 1)).layers[1]
    with torch.no_grad():
        layer.centroids.copy_(torch.arange(5.0)[:, None])  # component k emits the value k
    control = torch.tensor([0.05, 0.3, 0.1, 0.4, 0.15]).expand(40000, 1, 1, 5)
    for top_s, kept in ((3, [1, 3, 4]), (None, [0, 1, 2, 3, 4])):
        drawn = layer.sample(control, top_s=top_s, generator=torch.Generator().manual_seed(5))[:, 0, 0, 0].long()
        counts = torch.bincount(drawn, minlength=5).numpy()
        assert set(np.flatnonzero(counts)) == set(kept)
        expected = control[0, 0, 0, kept].numpy() / control[0, 0, 0, kept].sum().item() * 40000
        assert chisquare(counts[kept], expected).pvalue > 1e-3


def test_default_sampling_draws_distinct_images(small_model):
    out = sample(small_model, 200, generator=torch.Generator().manual_seed(0)).reshape(200, -1).double()
    distances = torch.cdist(out, out) ** 2 / out.shape[1]
    distances.fill_diagonal_(float("inf"))
    assert int((distances.min(1).values > 1e-3).sum()) >= 190  # the default draws; top-1 repeats templates
    paper = sample(small_model, 200, top_s=1, noise=0.0, control_noise=0.0, generator=torch.Generator().manual_seed(0)).reshape(200, -1).double()
    assert len(torch.unique(paper, dim=0)) <= small_model.layers[small_model.top_gmm].n_components


def test_pixel_noise_has_the_learned_variance_and_spares_the_control(small_model):
    """With ``control_noise=0`` a fixed top component sends its exact centroid down, so top-1 choices below are
    fixed and the samples scatter around the noiseless image with the closed-form variance of folded noise."""
    from dcgmm.layers.base import scatter_sum

    model = small_model
    fold_low, low, fold_top, top = model.layers[:4]
    k, n, scale = 2, 4000, 0.5
    with torch.no_grad():
        control = fold_top.sample(top.centroids[k].expand(1, 1, 1, -1))  # [1, 3, 3, 9]
        chosen = control.argmax(-1)  # [1, 3, 3]
        clean = fold_low.sample(low.centroids[chosen])
        patches = lambda t: t.reshape(1, 3, 3, 4, 4, 1)  # noqa: E731
        counts = scatter_sum(patches(torch.ones(1, 3, 3, 16)), (8, 8), (4, 4), (2, 2))
        variance = scatter_sum(patches(scale**2 * torch.exp(-low.log_precisions[chosen])), (8, 8), (4, 4), (2, 2)) / counts**2
    out = sample_components(model, [k] * n, top_s=1, noise=scale, control_noise=0.0, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out.mean(0), clean[0], atol=float(5 * (variance.max() / n) ** 0.5))
    ratio = out.var(0) / variance[0]
    assert 0.85 < ratio.min() and ratio.max() < 1.15  # relative standard error of a variance from 4000 draws: 2.2%
    # noise on the control signal changes the choices below: more than one noiseless picture
    noisy_control = sample_components(model, [k] * 200, top_s=1, noise=0.0, control_noise=1.0, generator=torch.Generator().manual_seed(3))
    assert len(torch.unique(noisy_control.reshape(200, -1), dim=0)) > 1
    calm = sample_components(model, [k] * 200, top_s=1, noise=0.0, control_noise=0.0, generator=torch.Generator().manual_seed(3))
    assert len(torch.unique(calm.reshape(200, -1), dim=0)) == 1


def test_sampling_options_reject_negative_noise(small_model):
    with pytest.raises(InputError, match="control noise must be >= 0"):
        sample(small_model, 2, control_noise=-0.1)
    with pytest.raises(InputError, match="noise must be >= 0"):
        sample_classes(small_model, [1], noise=-1.0)
