"""Run folders: one writer at a time, no stale files, and paths checked before any work starts.

* :func:`lock_run` holds an exclusive ``flock`` on ``RUN/.dcgmm.lock`` while a training run writes into the
  folder; a second run into the same folder is refused at once. The kernel drops the lock when the process
  dies, however it dies, so a killed run never leaves the folder locked.
* :func:`remove_stale_temporaries` deletes the temporary files (``.NAME.tmpPID``) of writes that a killed
  process never finished; files of processes still running are left alone.
* :func:`clear_run` removes what an earlier run wrote, for ``dcgmm train --overwrite``.
* :func:`writable_folder` / :func:`writable_file` check, before the work, that the results can be written.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import InputError

LOCK_FILE = ".dcgmm.lock"
RUN_OUTPUTS = (
    "model.safetensors", "checkpoint.safetensors", "history.json", "training.png", "centroids_layer*.png",
    "samples.png", "samples.npy", "eval.json", "eval-*.json", "outliers.json", "outliers.png",
)
"""The files ``dcgmm train`` and ``dcgmm eval`` write into a run folder (glob patterns)."""
_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")


def writable_folder(path: str | Path, what: str) -> Path:
    """Make sure files can be written in folder ``path`` (created when the first file is written); InputError otherwise.

    Nothing is created: an existing folder gets a temporary file written and removed, a missing one needs
    its nearest existing parent to be a writable folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder: give the path of a folder (it is created if missing)")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InputError(f"{what} {path} cannot be created: {blocker} is a file, not a folder")
    if path.is_dir():
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise InputError(f"{what} {path} is not writable ({exc.strerror}): choose another folder or fix its permissions") from None
        return path
    parent = next(p for p in path.parents if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path} cannot be created: {parent} is not writable; choose another folder or fix its permissions")
    return path


def writable_file(path: str | Path, what: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """Make sure file ``path`` can be written (its folder is created if needed); InputError otherwise.

    ``suffixes``: the allowed file name endings (lower case, with the dot), if only some are.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder: give a file name")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InputError(f"{what} {path}: the name must end in {', '.join(suffixes)}")
    writable_folder(path.parent, f"the folder of {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{what} {path} exists and is not writable: choose another name or fix its permissions")
    return path


@contextmanager
def lock_run(folder: str | Path) -> Iterator[None]:
    """Hold the run folder's lock for the duration of the ``with`` block; InputError if another process has it."""
    folder = Path(folder)
    handle = open(folder / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise InputError(
                f"{folder} is in use by another dcgmm train (pid {owner}): wait for it to finish, or use another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.NAME.tmpPID`` files left in ``folder`` by processes that no longer run; returns them."""
    removed = []
    for path in Path(folder).iterdir():
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and (int(match.group(1)) == os.getpid() or not _alive(int(match.group(1)))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def clear_run(folder: str | Path) -> list[Path]:
    """Delete what an earlier run wrote into ``folder`` (:data:`RUN_OUTPUTS`); other files are kept."""
    removed = []
    for pattern in RUN_OUTPUTS:
        for path in Path(folder).glob(pattern):
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed
