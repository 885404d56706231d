"""SGD training: likelihood rises, no NaN, classifier, refused settings, exact resume, memory-mapped data."""


import numpy as np
import pytest
import torch

from dcgmm import DCGMM, InputError, TrainConfig, Trainer
from dcgmm.em import fit_em

SMALL = "F(4,4,2,2) G(9) F(3,3,1,1) G(4)"  # a 2-layer convolutional DCGMM for 8x8 digits


def test_sgd_raises_the_likelihood_and_approaches_em(digits):
    images, _ = digits
    model = DCGMM.from_spec("F(8,8,1,1) G(10)", input_shape=(8, 8, 1))
    before = model.log_likelihoods(images)[0].per_image.mean()
    # 36 steps per epoch: the annealing window is scaled down from MNIST's 100 steps accordingly
    Trainer(model, TrainConfig(epochs=30, batch_size=50, window=20), images).fit(progress=False)
    after = model.log_likelihoods(images)[0].per_image.mean()
    em = fit_em(torch.from_numpy(images.reshape(len(images), -1)), 10, 0.05)
    assert after > before + 50
    assert after > 0.75 * em.history[-1], (after, em.history[-1])


@pytest.mark.parametrize("seed", range(3))
def test_deep_model_trains_without_nan(digits, seed):
    images, _ = digits
    model = DCGMM.from_spec(SMALL, input_shape=(8, 8, 1))
    history = Trainer(model, TrainConfig(epochs=4, batch_size=50, seed=seed), images).fit(progress=False)
    assert all(np.isfinite(list(r.objective.values())).all() for r in history)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert history[-1].objective[3] > history[0].objective[3]


def test_classifier_trains_alongside(digits):
    images, labels = digits
    model = DCGMM.from_spec("F(4,4,2,2) G(16) F(3,3,1,1) G(25) C(10)", input_shape=(8, 8, 1))
    history = Trainer(model, TrainConfig(epochs=15, batch_size=50, window=10), images, labels).fit(progress=False)
    assert history[-1].classifier_loss < history[0].classifier_loss - 0.1
    accuracy = (model.predict(images) == labels).mean()
    assert accuracy > 0.2, accuracy  # chance is 0.1


def test_learning_rates_that_overshoot_are_refused(digits):
    """lr x rate_centroids / variance_floor above 2 diverges; the message says which lr works, and it does."""
    images, _ = digits
    model = DCGMM.from_spec("F(8,8,1,1) G(10)", input_shape=(8, 8, 1), variance_floor=0.01)
    with pytest.raises(InputError, match=r"overshoot.*at most 0\.02\b"):
        Trainer(model, TrainConfig(), images)
    before = model.log_likelihoods(images)[0].per_image.mean()
    history = Trainer(model, TrainConfig(epochs=10, batch_size=50, window=20, lr=0.02), images).fit(progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.log_likelihoods(images)[0].per_image.mean() > before + 50
    assert history[-1].objective[1] > history[0].objective[1]


def test_layers_with_a_finer_floor_take_proportionally_smaller_centroid_steps(digits):
    """The overshoot bound lr x rate / floor holds for every layer: a top floor ten times finer than the
    others gets a tenth of the centroid rate, and the default settings are accepted."""
    images, _ = digits
    model = DCGMM.from_spec(SMALL, input_shape=(8, 8, 1), variance_floor=0.05, top_variance_floor=0.005)
    trainer = Trainer(model, TrainConfig(epochs=2, batch_size=50), images)
    rates = {g["layer"]: g["rate"] for g in trainer.optimizer.param_groups if g["params"][0] is model.layers[g["layer"]].centroids}
    assert rates == {1: pytest.approx(1.0), 3: pytest.approx(0.1)}
    coarse = DCGMM.from_spec(SMALL, input_shape=(8, 8, 1), variance_floor=0.05, top_variance_floor=0.1)
    rates = {g["layer"]: g["rate"] for g in Trainer(coarse, TrainConfig(), images).optimizer.param_groups
             if g["params"][0] is coarse.layers[g["layer"]].centroids}
    assert rates == {1: pytest.approx(1.0), 3: pytest.approx(1.0)}  # a coarser floor needs no smaller steps
    history = trainer.fit(progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert history[-1].objective[3] > history[0].objective[3]


def test_an_empty_batch_is_refused(digits):
    images, _ = digits
    trainer = Trainer(DCGMM.from_spec(SMALL, input_shape=(8, 8, 1)), TrainConfig(batch_size=50), images)
    with pytest.raises(InputError, match="empty batch"):
        trainer.train_step(torch.zeros(0, 8, 8, 1), None)
    assert trainer.step == 0


def test_classifier_needs_labels(digits):
    images, _ = digits
    with pytest.raises(Exception, match="needs labels"):
        Trainer(DCGMM.from_spec(SMALL + " C(10)", input_shape=(8, 8, 1)), TrainConfig(), images)


def test_resume_is_exact(digits, tmp_path):
    images, _ = digits
    config = TrainConfig(epochs=4, batch_size=50, window=5, seed=3)
    straight = Trainer(DCGMM.from_spec(SMALL, input_shape=(8, 8, 1)), config, images)
    straight.fit(progress=False)

    def checkpoint_then_die_after_two(trainer):
        trainer.save_checkpoint(tmp_path)
        if trainer.epoch == 2:
            raise KeyboardInterrupt

    killed = Trainer(DCGMM.from_spec(SMALL, input_shape=(8, 8, 1)), config, images)
    with pytest.raises(KeyboardInterrupt):
        killed.fit(progress=False, on_epoch_end=checkpoint_then_die_after_two)
    resumed = Trainer.resume(tmp_path, images)
    assert resumed.epoch == 2
    resumed.fit(progress=False)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight.schedule.state_dict() == resumed.schedule.state_dict()


def test_training_from_a_memory_mapped_npy_equals_training_in_memory(digits, tmp_path):
    from dcgmm.data import open_npy

    images = (digits[0][:300, :, :, 0] * 255).round().astype(np.uint8)  # (N, H, W) bytes, as datasets come
    np.save(tmp_path / "images.npy", images)
    mapped = open_npy(tmp_path / "images.npy")
    assert isinstance(mapped, np.memmap) and mapped.shape == (300, 8, 8, 1)
    spec, config = "F(4,4,2,2) G(4) F(3,3,1,1) G(4)", TrainConfig(epochs=2, batch_size=20, seed=1)
    streamed = Trainer(DCGMM.from_spec(spec, input_shape=(8, 8, 1)), config, mapped)
    assert streamed.images.images is mapped  # not read into memory
    streamed.fit(progress=False)
    loaded = Trainer(DCGMM.from_spec(spec, input_shape=(8, 8, 1)), config, images[..., None].astype(np.float32) / 255.0)
    loaded.fit(progress=False)
    assert streamed.model.config.value_range == loaded.model.config.value_range == (0.0, 1.0)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(streamed.model.state_dict()[key], value), key


def test_overlapping_folds_train_as_convolutions_with_the_same_step(digits):
    """A Folding whose windows overlap a lot trains with its GMM layer as one convolution (fused_layers); a
    step then moves the parameters as the unfolded path does (float64, so that no near-tie of two components
    goes another way on one of the paths)."""
    images, _ = digits
    spec = "F(3,3,1,1) G(9) F(6,6,1,1) G(4)"  # 9 windows per pixel below; one window at the top
    batch = torch.as_tensor(images[:50], dtype=torch.float64)
    trainers = []
    for fused in (True, False):
        model = DCGMM.from_spec(spec, input_shape=(8, 8, 1)).double()
        trainer = Trainer(model, TrainConfig(epochs=1, batch_size=50), images)
        assert trainer._fused == {1}
        if not fused:
            trainer._fused = set()
        start = model.layers[1].centroids.detach().clone()
        for _ in range(3):
            trainer.train_step(batch, None)
        assert not torch.equal(model.layers[1].centroids, start)
        trainers.append(trainer)
    (a, b) = (dict(t.model.named_parameters()) for t in trainers)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_training_reproduces_bit_for_bit_at_a_thread_count(digits, threads):
    """Same seed, same thread count: the same parameters, with the native loops split over the threads (winners,
    window sums of the convolution path) as without them."""
    images, _ = digits
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = []
        for _ in range(2):
            model = DCGMM.from_spec("F(3,3,1,1) G(9) F(6,6,1,1) G(4)", input_shape=(8, 8, 1))
            Trainer(model, TrainConfig(epochs=2, batch_size=50, seed=5), images).fit(progress=False)
            runs.append(model.state_dict())
    finally:
        torch.set_num_threads(before)
    for name, tensor in runs[0].items():
        assert torch.equal(tensor, runs[1][name]), name
