"""Hostile conditions, probed as docs/reliability.md counts them: extreme values injected into
training, and I/O faults (a read-only or full disk, missing and corrupt files) met by the
command line. Every probe must hold: a clear one-line outcome, nothing lost, no poisoned state.
"""

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtricks as jt
from jaxtricks.models import CNN, MLP
from jaxtricks.training import fit

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = ["--model", "mlp", "--train-examples", "512", "--validation-examples", "256",
         "--batch-size", "128", "--no-progress", "--no-plot"]


def _finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree)
               if jnp.issubdtype(leaf.dtype, jnp.inexact))


ADAM = jt.adam(1e-3)
# Each injection: (where, value). Rows 3 and 40 of the training set, or every label.
INJECTIONS = [
    ("pixel", 3e38), ("pixel", -3e38), ("pixel", 1e30), ("pixel", 1e20), ("pixel", np.nan),
    ("pixel", np.inf), ("pixel", -np.inf), ("row", 3e38), ("row", 1e19), ("row", np.nan),
    ("pixel", np.finfo(np.float32).max), ("pixel", np.finfo(np.float32).tiny),
]


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize(("where", "value"), INJECTIONS)
def test_an_extreme_value_in_training_data_never_poisons_the_state(model_name, where, value):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 256).astype(np.int32)
    images = (rng.normal(size=(256, 28, 28, 1)) + labels[:, None, None, None] / 3).astype(
        np.float32)
    for row in (3, 40):
        if where == "pixel":
            images[row, 10, 10, 0] = value
        else:
            images[row] = value
    model = MLP(features=(32,)) if model_name == "mlp" else CNN(features=(4, 8), hidden=16,
                                                                  use_batch_norm=True)
    # runner="loop": choosing a runner compiles a lax.scan one too, and XLA:CPU's compiler
    # segfaulted there twice in long-lived test workers (not reproduced alone; see the notes).
    # One optimizer for every case: fit's steps for an equal model and optimizer are built and
    # compiled once, and the cases differ only in their data.
    state, history = fit(model, ADAM, images, labels, epochs=2, batch_size=32,
                         progress=False, runner="loop")
    assert _finite((state.params, state.model_state, state.opt_state))
    skipped = sum(record.skipped_steps for record in history.epochs)
    # At most the two poisoned batches of each epoch are skipped; all others train.
    assert skipped <= 4
    assert all(np.isfinite(loss) for loss in history["loss"])


def _train(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "jaxtricks", "train", *args],
                          capture_output=True, text=True, cwd=cwd or ROOT, env=env,
                          timeout=600)


@contextlib.contextmanager
def _tmpfs(size: str, read_only: bool = False):
    """A small tmpfs mounted for the test (skips where mounting is not allowed)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    folder = tempfile.mkdtemp(prefix="jaxtricks-tmpfs-")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder],
                            capture_output=True, text=True)
    if result.returncode:
        os.rmdir(folder)
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", folder], check=True)
        yield pathlib.Path(folder)
    finally:
        subprocess.run(["umount", folder], check=False)
        os.rmdir(folder)


def _error_lines(stderr: str) -> list[str]:
    """The lines of stderr but the one naming the data source."""
    return [line for line in stderr.splitlines() if not line.startswith("mnist: ")]


@pytest.mark.slow
def test_a_full_checkpoint_disk_is_one_line_and_loses_no_epoch(tmp_path):
    with _tmpfs("600k") as disk:
        result = _train(*SMALL, "--epochs", "2", "--out", str(tmp_path / "out"),
                        "--checkpoint-dir", str(disk / "checkpoints"))
    assert result.returncode == 2
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and "--checkpoint-dir" in lines[0] and "free" in lines[0], lines
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1  # the epoch trained before the save is kept


@pytest.mark.slow
def test_a_read_only_checkpoint_disk_fails_before_training(tmp_path):
    with _tmpfs("1m", read_only=True) as disk:
        result = _train(*SMALL, "--epochs", "1", "--out", str(tmp_path / "out"),
                        "--checkpoint-dir", str(disk / "checkpoints"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxtricks train: error: --checkpoint-dir")
    assert "cannot be written" in lines[0]
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_a_damaged_checkpoint_is_one_warning_and_the_run_ends_as_it_would_have(tmp_path):
    out = tmp_path / "run"
    first = _train(*SMALL, "--epochs", "2", "--out", str(out), "--checkpoint-every-epochs", "1")
    assert first.returncode == 0, first.stderr
    expected = json.loads(first.stdout)
    newest = max((out / "checkpoints").iterdir(), key=lambda p: p.name.isdigit() and int(p.name))
    data = sorted((newest / "state" / "d").iterdir())[0]
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    resumed = _train("--out", str(out), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    lines = _error_lines(resumed.stderr)
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint "), lines
    assert "damaged" in lines[0] and newest.name in lines[0]
    summary = json.loads(resumed.stdout)
    assert summary["test_accuracy"] == expected["test_accuracy"]
    assert summary["test_loss"] == expected["test_loss"]
