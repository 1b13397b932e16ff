"""Tests for jaxtricks.training.checkpoint: bit-exact round trips, keep-last-K, damaged and
unfinished checkpoints, fit's cadence and resume, and a training process killed and resumed."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from training_toys import TinyNet, host, toy_problem

from jaxtricks.cli import train as train_cli
from jaxtricks.cli.main import build_parser, main
from jaxtricks.data import datasets, write_idx
from jaxtricks.training import checkpoint
from jaxtricks.training.checkpoint import (
    MANIFEST,
    CheckpointHook,
    CheckpointManager,
    CheckpointSaveError,
    DamagedCheckpointError,
)
from jaxtricks.training.epochs import compile_epoch_runner, epoch_indices, run_epoch
from jaxtricks.training.fit import fit
from jaxtricks.training.history import History
from jaxtricks.training.hooks import MetricsFileHook
from jaxtricks.training.state import create_train_state
from jaxtricks.training.steps import make_train_step
from jaxtricks.tricks import optimizers

MODEL = TinyNet()  # batch norm and dropout: batch_stats and the dropout key both matter
OPTIMIZER = optimizers.adam(1e-2)  # Adam's moments and count are in the state
TRAIN_IMAGES, TRAIN_LABELS = toy_problem(seed=2, num_examples=260)  # 8 steps of 32
VAL_IMAGES, VAL_LABELS = toy_problem(seed=3, num_examples=70)
BATCH = 32
STEPS = len(TRAIN_IMAGES) // BATCH
METRICS_FILE = "metrics.json"
# What differs between two runs of the same computation: wall-clock measurements.
TIMINGS = {"epoch_time_s", "eval_time_s", "examples_per_s"}

# Orbax leaves the coroutines of a failed read (a damaged checkpoint) unawaited; Python reports
# them when they are collected, in whichever test that happens.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def state():
    """A TrainState after a few Adam steps: moments, counts and batch statistics not trivial."""
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(7), jnp.asarray(TRAIN_IMAGES[:1]))
    train_step = make_train_step(MODEL, OPTIMIZER)
    for i in range(3):
        rows = slice(i * BATCH, (i + 1) * BATCH)
        state, _ = train_step(state, (jnp.asarray(TRAIN_IMAGES[rows]), TRAIN_LABELS[rows]))
    return state


def assert_bits_equal(actual, expected):
    """Same structure, and every leaf of the same dtype, shape and bytes."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        if jnp.issubdtype(e.dtype, jax.dtypes.prng_key):
            assert str(jax.random.key_impl(a)) == str(jax.random.key_impl(e))
    for a, e in zip(jax.tree.leaves(host(actual)), jax.tree.leaves(host(expected)), strict=True):
        assert a.tobytes() == e.tobytes()


def abstract(tree):
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), tree)


def without_timings(records):
    """Epoch records (EpochRecord objects or their dicts) without wall-clock measurements: the
    timing fields, and metrics in seconds (``elapsed_s``, ``averaged_eval_time_s``)."""
    result = []
    for record in records:
        record = record if isinstance(record, dict) else record.to_dict()
        kept = {k: v for k, v in record.items() if k not in TIMINGS}
        kept["metrics"] = {k: v for k, v in record["metrics"].items() if not k.endswith("_s")}
        result.append(kept)
    return result


def array_file(directory, step):
    """The largest file of a checkpoint's arrays."""
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(os.path.join(directory, str(step), "state"))
        for name in names
    ]
    return max(files, key=os.path.getsize)


def metadata_file(directory, step):
    return os.path.join(directory, str(step), "metadata", "metadata")


# --------------------------------------------------------------------------- CheckpointManager


@pytest.mark.slow
def test_round_trip_is_bit_exact(tmp_path, state):
    odd = {
        "bf16": jnp.linspace(-1, 1, 7, dtype=jnp.bfloat16),
        "mask": jnp.array([True, False, True]),
        "int8": np.arange(-3, 3, dtype=np.int8),  # a NumPy leaf comes back as a jax.Array
        "rbg": jax.random.key(3, impl="rbg"),
        "keys": jax.random.split(jax.random.key(4), 3),
        "nothing": {},
        "nan": jnp.array([jnp.nan, -jnp.inf, -0.0], jnp.float32),
    }
    tree = (state, odd)
    metadata = {"epoch": 2, "history": [{"loss": float("nan")}], "config": {"seed": 0}}
    manager = CheckpointManager(tmp_path)
    path = manager.save(5, tree, metadata)
    assert path == os.path.join(str(tmp_path), "5")
    for like in (tree, abstract(tree)):
        restored = manager.restore(like)
        assert restored.step == 5
        assert_bits_equal(restored.tree, tree)
        assert isinstance(restored.tree[0], type(state))
        assert json.dumps(restored.metadata) == json.dumps(metadata)  # NaN survives
    assert_bits_equal(manager.restore(tree, step=5).tree, tree)


def test_restored_state_trains_on_identically(tmp_path, state):
    manager = CheckpointManager(tmp_path)
    manager.save(3, state)
    restored = manager.restore(state).tree
    train_step = make_train_step(MODEL, OPTIMIZER)
    batch = (jnp.asarray(TRAIN_IMAGES[:BATCH]), TRAIN_LABELS[:BATCH])
    expected, _ = train_step(jax.tree.map(jnp.copy, state), batch)
    actual, _ = train_step(restored, batch)
    assert_bits_equal(actual, expected)


def test_keeps_the_last_k_and_refuses_older_steps(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=2)
    assert manager.steps() == []
    assert manager.restore({"x": jnp.zeros(2)}) is None
    for step in (1, 2, 3, 4):
        manager.save(step, {"x": jnp.full(2, float(step))}, {"step": step})
    assert manager.steps() == [3, 4]
    assert sorted(os.listdir(tmp_path)) == ["3", "4"]
    restored = manager.restore({"x": jnp.zeros(2)})
    assert restored.step == 4 and restored.tree["x"].tolist() == [4.0, 4.0]
    assert restored.metadata == {"step": 4}
    with pytest.raises(ValueError, match="step must be newer than the latest checkpoint"):
        manager.save(4, {"x": jnp.zeros(2)})
    manager.delete(4)
    assert manager.steps() == [3]


def damage(directory, step, how):
    if how == "flip a bit in an array file":
        path = array_file(directory, step)
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0x01
        open(path, "wb").write(bytes(data))
    elif how == "truncate an array file":
        path = array_file(directory, step)
        os.truncate(path, os.path.getsize(path) // 2)
    elif how == "delete an array file":
        os.remove(array_file(directory, step))
    elif how == "garbage metadata":
        open(metadata_file(directory, step), "w").write('{"sha256": "0", "cont')
    elif how == "edited metadata":
        sealed = json.load(open(metadata_file(directory, step)))
        sealed["content"]["metadata"]["epoch"] += 1
        json.dump(sealed, open(metadata_file(directory, step), "w"))
    elif how == "an empty step directory":
        os.mkdir(os.path.join(directory, str(step)))
    elif how == "delete the manifest":
        os.remove(os.path.join(directory, str(step), MANIFEST))
    elif how == "add a file":
        with open(os.path.join(directory, str(step), "state", "extra"), "wb") as file:
            file.write(b"\0")
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "flip a bit in an array file",
        "truncate an array file",
        "delete an array file",
        "garbage metadata",
        "edited metadata",
        "an empty step directory",
        "delete the manifest",
        "add a file",
    ],
)
def test_a_damaged_latest_checkpoint_is_skipped_with_a_warning(tmp_path, state, how):
    manager = CheckpointManager(tmp_path, max_to_keep=5)
    for step in (10, 20):
        state = state._replace(step=jnp.array(step, jnp.int32))
        manager.save(step, state, {"epoch": step})
    # A step directory with nothing in it (not made by a save) is newer than the good 20.
    damaged, good = (30, 20) if how == "an empty step directory" else (20, 10)
    damage(tmp_path, damaged, how)
    with pytest.warns(UserWarning, match=f"checkpoint {tmp_path}/{damaged} is damaged"):
        restored = manager.restore(state)
    assert restored.step == good and restored.metadata == {"epoch": good}
    assert_bits_equal(restored.tree, state._replace(step=jnp.array(good, jnp.int32)))
    with pytest.raises(DamagedCheckpointError, match=f"{tmp_path}/{damaged}"):
        manager.restore(state, step=damaged)


def test_a_bit_flip_is_caught_by_the_digests_where_orbax_alone_sees_nothing(tmp_path):
    tree = {"w": jnp.arange(4096, dtype=jnp.float32)}
    manager = CheckpointManager(tmp_path)
    manager.save(1, tree)
    damage(tmp_path, 1, "flip a bit in an array file")
    # The manifest of the checkpoint's files catches it before Orbax reads the file.
    with pytest.raises(DamagedCheckpointError, match=r"its file state/\S+ changed since it was"):
        manager.restore(tree, step=1)
    # Had the bit flipped before the manifest was written, the leaf's own digest catches it.
    manifest_path = tmp_path / "1" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    flipped = os.path.relpath(array_file(tmp_path, 1), tmp_path / "1")
    assert flipped in manifest["files"]
    manifest["files"][flipped] = hashlib.sha256(open(array_file(tmp_path, 1), "rb").read()
                                                ).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DamagedCheckpointError, match=r"the bytes of \['w'\] changed"):
        manager.restore(tree, step=1)
    # Orbax on its own hands the flipped bits back without an error.
    options = ocp.CheckpointManagerOptions(create=False)
    with ocp.CheckpointManager(tmp_path, options=options) as orbax:
        target = [jax.ShapeDtypeStruct((4096,), jnp.float32, sharding=tree["w"].sharding)]
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        (unchecked,) = orbax.restore(1, args=args).state
    assert unchecked.shape == (4096,) and not np.array_equal(unchecked, tree["w"])


def test_an_unfinished_checkpoint_is_ignored_and_then_removed(tmp_path):
    tree = {"x": jnp.ones(3)}
    manager = CheckpointManager(tmp_path)
    manager.save(1, tree)
    # What a save killed before its rename leaves behind.
    unfinished = tmp_path / "2.orbax-checkpoint-tmp-1712345678"
    (unfinished / "state").mkdir(parents=True)
    (unfinished / "state" / "garbage").write_bytes(b"\0" * 10)
    assert manager.steps() == [1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert manager.restore(tree).step == 1
    manager.save(2, tree)
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_restoring_into_another_structure_fails_loudly(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(1, {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"\['w'\] with shape \(2, 3\).*shape \(3, 2\)"):
        manager.restore({"w": jnp.zeros((3, 2)), "b": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"float32.*int32"):
        manager.restore({"w": jnp.zeros((2, 3)), "b": jnp.zeros(3, jnp.int32)})
    with pytest.raises(ValueError, match="like has 1 leaves"):
        manager.restore({"b": jnp.zeros(3)})


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda d: CheckpointManager(d, max_to_keep=0), "max_to_keep"),
        (lambda d: CheckpointManager(3), "directory"),
        (lambda d: CheckpointManager(d).save(-1, {"x": jnp.ones(1)}), "step"),
        (lambda d: CheckpointManager(d).save(1, {"x": 1.0}), "tree"),
        (lambda d: CheckpointManager(d).save(1, {"x": jnp.ones(1)}, [1]), "metadata"),
        (lambda d: CheckpointManager(d).restore({"x": jnp.ones(1)}, step=4), "step"),
        (lambda d: CheckpointManager(d).delete(4), "step"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, call, name):
    with pytest.raises(ValueError, match=name):
        call(tmp_path)


def test_a_save_the_disk_has_no_room_for_is_refused_whole(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    manager.save(1, {"x": jnp.ones(3)})
    free = type("Usage", (), {"free": 1000})()
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: free)
    with pytest.raises(CheckpointSaveError, match=r"in \S+: the disk has 0\.0 MiB free and the "
                                                  r"checkpoint needs about 1\.0 MiB"):
        manager.save(2, {"x": jnp.ones(3)})
    assert sorted(os.listdir(tmp_path)) == ["1"]
    assert manager.restore({"x": jnp.zeros(3)}).step == 1


# ------------------------------------------------------------------ CheckpointHook with fit


def run(*callbacks, **overrides):
    arguments = {
        "epochs": 3, "batch_size": BATCH, "seed": 0, "runner": "loop", "progress": False,
    } | overrides  # fmt: skip
    return fit(MODEL, OPTIMIZER, TRAIN_IMAGES, TRAIN_LABELS,
               validation_data=(VAL_IMAGES, VAL_LABELS), callbacks=list(callbacks), **arguments)


@pytest.fixture(scope="module")
def reference():
    state, history = run()
    return state, history


@pytest.fixture(scope="module")
def zero_totals():
    """The running totals of an epoch of ``run``'s steps at its start, as a checkpoint holds
    them (loss, accuracy, grad_norm, skipped, steps)."""
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), jnp.asarray(TRAIN_IMAGES[:1]))
    data = (jnp.asarray(TRAIN_IMAGES), jnp.asarray(TRAIN_LABELS))
    indices = epoch_indices(jax.random.key(1), 1, len(TRAIN_IMAGES), BATCH)
    runner = compile_epoch_runner(make_train_step(MODEL, OPTIMIZER), "loop", state, data, indices)
    return runner.zero_totals()


def like(state, totals):
    """What CheckpointHook saves for a run without stateful hooks: (state, totals, {})."""
    return state, totals, {}


@pytest.mark.slow
def test_an_epoch_run_in_parts_equals_one_run():
    train_step = make_train_step(MODEL, OPTIMIZER)
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), jnp.asarray(TRAIN_IMAGES[:1]))
    data = (jnp.asarray(TRAIN_IMAGES), jnp.asarray(TRAIN_LABELS))
    indices = epoch_indices(jax.random.key(1), 1, len(TRAIN_IMAGES), BATCH)
    for name in ("loop", "scan"):
        runner = compile_epoch_runner(train_step, name, state, data, indices)
        whole = run_epoch(runner, jax.tree.map(jnp.copy, state), data, indices)
        parts, totals, start = jax.tree.map(jnp.copy, state), None, 0
        for stop in (3, 5, STEPS):
            parts, totals = run_epoch(runner, parts, data, indices, start=start, stop=stop,
                                      totals=totals)
            start = stop
        assert_bits_equal((parts, totals), whole)
    with pytest.raises(ValueError, match="totals"):
        run_epoch(runner, state, data, indices, start=2)
    with pytest.raises(ValueError, match="start and stop"):
        run_epoch(runner, state, data, indices, start=3, stop=2, totals=runner.zero_totals())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("every_steps", "every_epochs", "expected"),
    [
        (3, None, [3, 6, 9, 12, 15, 18, 21, 24]),  # and the last epoch's end, 24
        (None, 2, [16, 24]),  # epoch 2, and the last
        (5, 1, [5, 8, 10, 15, 16, 20, 24]),
        (None, None, [24]),
    ],
)
def test_cadence(tmp_path, reference, zero_totals, every_steps, every_epochs, expected):
    state, history = run(CheckpointHook(tmp_path, every_steps=every_steps,
                                        every_epochs=every_epochs, keep=100))
    manager = CheckpointManager(tmp_path)
    assert manager.steps() == expected
    assert_bits_equal(state, reference[0])  # checkpointing changes nothing
    assert without_timings(history.epochs) == without_timings(reference[1].epochs)
    last = manager.restore(like(state, zero_totals))
    assert_bits_equal(last.tree[0], state)
    assert last.metadata["history"] == json.loads(json.dumps(history.to_dict()["epochs"]))
    assert last.metadata["step"] == 3 * STEPS
    assert (last.metadata["first_epoch"], last.metadata["epochs"]) == (0, 3)
    assert last.metadata["config"] == {
        "seed": 0, "batch_size": BATCH, "train_examples": len(TRAIN_IMAGES),
        "validation_examples": len(VAL_IMAGES), "skip_nonfinite": True, "precision": None,
        "batch_transform": None,
    }  # fmt: skip
    assert last.metadata["hooks"] == {}  # no hook with a state of its own
    if every_steps == 5:
        middle = manager.restore(like(state, zero_totals), step=10)  # epoch 2, 2 steps done
        assert middle.metadata["step"] == 10 and len(middle.metadata["history"]) == 1
        assert int(middle.tree[1]["steps"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("resume_from", [3, 8, 21])  # inside epoch 1, at its end, inside epoch 3
def test_resuming_in_process_equals_the_uninterrupted_run(tmp_path, reference, resume_from):
    checkpoints = tmp_path / "checkpoints"
    run(CheckpointHook(checkpoints, every_steps=3, keep=100))
    manager = CheckpointManager(checkpoints)
    for step in manager.steps():
        if step > resume_from:
            manager.delete(step)
    metrics = tmp_path / "out" / METRICS_FILE
    state, history = run(CheckpointHook(checkpoints, every_steps=3, resume=True),
                         MetricsFileHook(metrics))
    assert_bits_equal(state, reference[0])
    assert without_timings(history.epochs) == without_timings(reference[1].epochs)
    written = History.from_json(metrics.read_text())
    assert [r.epoch for r in written.epochs] == [1, 2, 3]
    assert without_timings(written.epochs) == without_timings(reference[1].epochs)
    assert manager.steps() == [18, 21, 24]  # keep=3 from here on


def test_resume_skips_a_damaged_checkpoint_and_deletes_it(tmp_path, reference, zero_totals):
    run(CheckpointHook(tmp_path, every_steps=5, keep=100))
    manager = CheckpointManager(tmp_path)
    assert manager.steps() == [5, 8, 10, 15, 16, 20, 24]
    for step in (20, 24):  # as if the run had been killed after saving step 16
        manager.delete(step)
    damage(tmp_path, 16, "truncate an array file")
    with pytest.warns(UserWarning, match=f"{tmp_path}/16 is damaged") as warned:
        state, history = run(CheckpointHook(tmp_path, every_steps=5, resume=True))
    assert len([w for w in warned if "is damaged" in str(w.message)]) == 1
    assert_bits_equal(state, reference[0])
    assert without_timings(history.epochs) == without_timings(reference[1].epochs)
    assert manager.steps() == [16, 20, 24]  # 16 saved again, whole; keep=3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = manager.restore(like(state, zero_totals), step=16)
    assert again.metadata["step"] == 16


def test_resume_without_checkpoints_starts_afresh_and_a_finished_run_stays(tmp_path, reference):
    state, history = run(CheckpointHook(tmp_path, resume=True))
    assert_bits_equal(state, reference[0])
    steps = CheckpointManager(tmp_path).steps()
    assert steps == [8, 16, 24]
    again, again_history = run(CheckpointHook(tmp_path, resume=True))
    assert_bits_equal(again, reference[0])
    assert again_history.epochs == history.epochs  # read back, timings included
    assert CheckpointManager(tmp_path).steps() == steps


@pytest.mark.slow
def test_a_resumed_run_trains_the_epochs_its_call_asks_for(tmp_path, reference):
    """A run of 3 epochs interrupted after step 12 and resumed by a call asking for 5 epochs
    goes on to epoch 5, as a run of 5 epochs never interrupted; resumed by a call asking for
    3 once more, a finished run trains nothing."""
    run(CheckpointHook(tmp_path, every_steps=4, keep=100))
    manager = CheckpointManager(tmp_path)
    for step in manager.steps():
        if step > 12:
            manager.delete(step)
    state, history = run(CheckpointHook(tmp_path, every_steps=4, resume=True), epochs=5)
    assert [r.epoch for r in history.epochs] == [1, 2, 3, 4, 5]
    longer, longer_history = run(epochs=5)
    assert_bits_equal(state, longer)
    assert without_timings(history.epochs) == without_timings(longer_history.epochs)
    assert without_timings(history.epochs[:3]) == without_timings(reference[1].epochs)


def test_resume_continues_a_run_that_began_from_a_given_state(tmp_path, reference):
    first, _ = run(epochs=1)
    run(CheckpointHook(tmp_path, every_steps=3), epochs=2, initial_state=first)
    manager = CheckpointManager(tmp_path)
    for step in manager.steps():
        if step > 12:
            manager.delete(step)
    first, _ = run(epochs=1)
    # The same call plus resume: the given state is replaced by the checkpoint's, and the run
    # still ends at its first epoch (1) plus epochs (2).
    state, history = run(CheckpointHook(tmp_path, resume=True), epochs=2, initial_state=first)
    assert_bits_equal(state, reference[0])
    assert [r.epoch for r in history.epochs] == [2, 3]
    assert without_timings(history.epochs) == without_timings(reference[1].epochs)[1:]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"every_steps": 0}, "every_steps"),
        ({"every_steps": 2.0}, "every_steps"),
        ({"every_epochs": 0}, "every_epochs"),
        ({"keep": 0}, "max_to_keep"),
        ({"resume": 1}, "resume"),
        ({"directory": 3}, "directory"),
    ],
)
def test_bad_hook_arguments_are_refused(tmp_path, kwargs, name):
    arguments = {"directory": tmp_path / "x"} | kwargs
    directory = arguments.pop("directory")
    with pytest.raises(ValueError, match=name):
        CheckpointHook(directory, **arguments)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_used_directory_or_another_run_is_refused(tmp_path):
    run(CheckpointHook(tmp_path), epochs=1)
    with pytest.raises(ValueError, match="already holds the checkpoints of steps \\[8\\]"):
        run(CheckpointHook(tmp_path), epochs=1)
    with pytest.raises(ValueError, match="seed=0, this one has seed=1"):
        run(CheckpointHook(tmp_path, resume=True), epochs=1, seed=1)
    with pytest.raises(ValueError, match="batch_size=32, this one has batch_size=64"):
        run(CheckpointHook(tmp_path, resume=True), epochs=1, batch_size=64)
    assert CheckpointManager(tmp_path).steps() == [8]  # the checkpoint is kept


# ------------------------------------------------------------------------- kill and resume

# Runs `jaxtricks train` with the checksum table patched for the fake data (argv[1]).
TRAIN_SCRIPT = """
import json, sys
from jaxtricks.data import datasets
datasets.SHA256 = {**datasets.SHA256, "mnist": json.loads(sys.argv[1])}
from jaxtricks.cli.main import main
sys.exit(main(sys.argv[2:]))
"""
FAKE_TRAIN, FAKE_VALIDATION = 256, 32


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    """IDX files of 288 train (256 to train on, 32 held out) and 64 test 28×28 images of two
    classes, and their checksums."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    arrays = []
    for n in (FAKE_TRAIN + FAKE_VALIDATION, 64):
        labels = (np.arange(n) % 2).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        images[labels == 1, 8:20, 8:20] = 250
        arrays += [images, labels]
    table = {}
    for name, array in zip(datasets.FILES, arrays, strict=True):
        write_idx(folder / name, array)
        table[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    return folder, table


def train_flags(data, out, epochs, *extra):
    return [
        "train", "--data-dir", str(data), "--out", str(out), "--epochs", str(epochs),
        "--batch-size", "32", "--model", "mlp", "--no-progress", "--no-plot", "--runner",
        "loop", "--seed", "5", "--validation-examples", str(FAKE_VALIDATION), *extra,
    ]  # fmt: skip


def exit_status(argv):
    """``main(argv)``'s exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def start_training(table, flags, log):
    """`jaxtricks train` in a new process, its output going to the file ``log``."""
    with open(log, "w") as output:
        return subprocess.Popen(
            [sys.executable, "-c", TRAIN_SCRIPT, json.dumps(table), *flags],
            stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )  # fmt: skip


def final_checkpoint(directory, flags):
    """The newest checkpoint of a `jaxtricks train` run, restored."""
    args = build_parser().parse_args(flags)
    optimizer = train_cli.build_optimizer(args, train_cli.build_schedule(args, FAKE_TRAIN // 32))
    model = train_cli.build_model(args)
    data = (jnp.zeros((32, 28, 28, 1)), jnp.zeros(32, jnp.int32))
    state = create_train_state(model, optimizer, jax.random.key(0), data[0][:1])
    indices = epoch_indices(jax.random.key(0), 1, 32, 32)
    runner = compile_epoch_runner(make_train_step(model, optimizer), "loop", state, data, indices)
    return CheckpointManager(directory).restore(like(state, runner.zero_totals()))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--checkpoint-every-steps", "0"], "--checkpoint-every-steps must be an integer >= 1, "
                                            "got 0"),
        (["--checkpoint-every-epochs", "-1"], "--checkpoint-every-epochs must be an integer >= "
                                              "0, got -1"),
        (["--keep-checkpoints", "0"], "--keep-checkpoints must be an integer >= 1, got 0"),
    ],
)
def test_bad_checkpoint_flags_fail_with_a_message(fake_mnist, tmp_path, capsys, flags, message):
    assert exit_status(train_flags(fake_mnist[0], tmp_path / "out", 1, *flags)) == 2
    assert capsys.readouterr().err == f"jaxtricks train: error: {message}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_command_line_checkpoints_into_out_and_resumes(fake_mnist, tmp_path, monkeypatch,
                                                            capsys):
    data, table = fake_mnist
    monkeypatch.setattr(datasets, "SHA256", {**datasets.SHA256, "mnist": table})
    flags = train_flags(data, tmp_path, 2, "--train-examples", "64", "--keep-checkpoints", "1")
    assert main(flags) == 0
    assert CheckpointManager(tmp_path / "checkpoints").steps() == [4]  # 2 epochs of 2 steps
    first = json.loads((tmp_path / METRICS_FILE).read_text())["epochs"]
    capsys.readouterr()
    assert exit_status(flags) == 2  # the run is there: continue it or start elsewhere
    assert "pass --resume" in capsys.readouterr().err
    assert main([*flags, "--resume"]) == 0  # finished already: nothing left to train
    assert json.loads((tmp_path / METRICS_FILE).read_text())["epochs"] == first


EVERY_4_STEPS = ("--checkpoint-every-steps", "4")


def newest_finished(checkpoints):
    return max((int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()), default=-1)


@pytest.mark.slow  # three processes that import JAX and compile: 40 s to 2 min on 2 cores
def test_a_killed_training_resumes_to_the_same_bits(fake_mnist, tmp_path, monkeypatch):
    """Killed with SIGKILL twice, each time soon after a new checkpoint (the second time at a
    later moment, which may fall in training, evaluation or a save), then resumed to the end:
    the final state and the history equal an uninterrupted run's, bit for bit. The metrics
    file, written after each epoch, is whole JSON whenever the process is killed."""
    data, table = fake_mnist
    epochs = 8  # 64 steps, a checkpoint every 4
    steps = epochs * FAKE_TRAIN // 32
    reference_flags = train_flags(data, tmp_path / "reference", epochs, *EVERY_4_STEPS)
    monkeypatch.setattr(datasets, "SHA256", {**datasets.SHA256, "mnist": table})
    assert main(reference_flags) == 0  # uninterrupted, in this process
    killed_flags = train_flags(data, tmp_path / "killed", epochs, *EVERY_4_STEPS)
    checkpoints = tmp_path / "killed" / "checkpoints"
    checkpoints.mkdir(parents=True)
    log = tmp_path / "log.txt"
    for kill, delay_s in enumerate((0.0, 0.15)):
        before = newest_finished(checkpoints)
        process = start_training(table, [*killed_flags, *["--resume"] * (kill > 0)], log)
        deadline = time.monotonic() + 300
        while newest_finished(checkpoints) <= before:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(delay_s)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL, log.read_text()  # not finished
        assert newest_finished(checkpoints) < steps
        metrics = tmp_path / "killed" / METRICS_FILE
        if metrics.exists():
            written = History.from_json(metrics.read_text())
            assert len(written.epochs) < epochs

    resumed = start_training(table, [*killed_flags, "--resume"], log)
    assert resumed.wait(timeout=300) == 0, log.read_text()
    expected = final_checkpoint(tmp_path / "reference" / "checkpoints", reference_flags)
    actual = final_checkpoint(checkpoints, killed_flags)
    assert actual.step == expected.step == steps
    assert_bits_equal(actual.tree, expected.tree)

    def epochs_of(folder):
        return without_timings(json.loads((folder / METRICS_FILE).read_text())["epochs"])

    assert epochs_of(tmp_path / "killed") == epochs_of(tmp_path / "reference")
