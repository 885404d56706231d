"""Run folders: the lock, stale temporaries, clearing an old run, and checks that create nothing."""

import os
import subprocess
import sys

import pytest

from dcgmm.errors import InputError
from dcgmm.runs import LOCK_FILE, clear_run, lock_run, remove_stale_temporaries, writable_file, writable_folder


def test_the_lock_is_exclusive_across_processes_and_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from dcgmm.runs import lock_run; import sys, time\nwith lock_run({str(tmp_path)!r}):\n print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"in use by another dcgmm train \\(pid {holder.pid}\\)"):
            with lock_run(tmp_path):
                pass
    finally:
        holder.kill()  # like kill -9: the kernel releases the lock
        holder.wait()
        holder.stdout.close()
    with lock_run(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())


def test_stale_temporaries_go_and_others_stay(tmp_path):
    dead = tmp_path / ".model.safetensors.tmp4194399"  # above the default pid_max
    alive = tmp_path / f".model.safetensors.tmp{os.getppid()}"
    mine = tmp_path / "model.safetensors.tmp5"  # not the pattern of dcgmm's temporaries (no leading dot)
    for path in (dead, alive, mine):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert alive.exists() and mine.exists()


def test_clear_run_removes_only_what_runs_write(tmp_path):
    names = ["model.safetensors", "checkpoint.safetensors", "centroids_layer3.png", "eval-x.npy.json", "samples.npy", "notes.txt", "data.npy"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = {p.name for p in clear_run(tmp_path)}
    assert removed == set(names) - {"notes.txt", "data.npy"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npy", "notes.txt"]


def test_writability_checks_create_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    assert writable_folder(target, "--out") == target
    assert writable_file(tmp_path / "c" / "x.png", "--out", (".png",)) == tmp_path / "c" / "x.png"
    assert sorted(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=r"must end in \.npy"):
        writable_file(tmp_path / "x.txt", "--out", (".npy",))
