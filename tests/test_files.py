"""Tests for jaxtricks.files: strict JSON, and files written whole or not at all."""

import json
import math
import os

import numpy as np
import pytest

from jaxtricks import files
from jaxtricks.files import atomic_write, strict_json, write_json


def test_write_json_is_strict_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "results.json"
    value = {"a": math.nan, "b": [np.float32(1.5), math.inf], "c": np.arange(3), "d": (1, None),
             3: -math.inf}
    assert write_json(path, value) == str(path)
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None], "c": [0, 1, 2],
                                            "d": [1, None], "3": None}
    assert os.listdir(path.parent) == ["results.json"]
    write_json(path, {"a": 1})  # replaces the old file
    assert json.loads(path.read_text()) == {"a": 1}


def test_strict_json_converts_arrays_and_scalars_of_every_kind():
    import jax.numpy as jnp

    assert strict_json({"x": jnp.array([1.0, jnp.nan]), "n": np.int64(3), "b": np.bool_(True)}) == {
        "x": [1.0, None], "n": 3, "b": True,
    }  # fmt: skip
    json.dumps(strict_json({"y": np.array([[np.inf]])}), allow_nan=False)


@pytest.mark.parametrize("content", [b"bytes", "text ü", lambda file: file.write(b"by a function")])
def test_atomic_write_writes_every_kind_of_content(tmp_path, content):
    path = tmp_path / "out.bin"
    atomic_write(path, content)
    expected = {bytes: content, str: "text ü".encode()}.get(type(content), b"by a function")
    assert path.read_bytes() == expected


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def fails_half_way(file):
        file.write(b"new, but not all of it")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fails_half_way)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json(path, {"a": {1, 2}})
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_bad_content_is_refused(tmp_path):
    with pytest.raises(ValueError, match="content must be bytes, a string or a function"):
        atomic_write(tmp_path / "x", 3)
    assert os.listdir(tmp_path) == []


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "data"
    path.write_bytes(b"old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, b"new content")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["data"]


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640
