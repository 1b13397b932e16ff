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
from training_toys import TinyNet, toy_problem

from jaxtricks.cli import train as train_cli
from jaxtricks.cli.main import build_parser, main
from jaxtricks.data import datasets, write_idx
from jaxtricks.training.checkpoint import CheckpointManager, DamagedCheckpointError
from jaxtricks.training.epochs import (
    compile_epoch_runner,
    epoch_indices,
    run_epoch,
    zero_totals,
)
from jaxtricks.training.fit import METRICS_FILE, fit
from jaxtricks.training.state import create_train_state
from jaxtricks.training.steps import make_train_step
from jaxtricks.tricks import optimizers

MODEL = TinyNet()  # batch norm and dropout: batch_stats and the dropout key both matter
OPTIMIZER = optimizers.adam(1e-2)  # Adam's moments and count are in the state
TRAIN_IMAGES, TRAIN_LABELS = toy_problem(seed=2, num_examples=260)  # 8 steps of 32
TEST_IMAGES, TEST_LABELS = toy_problem(seed=3, num_examples=70)
BATCH = 32
STEPS = len(TRAIN_IMAGES) // BATCH
TIMINGS = {"epoch_time_s", "eval_time_s", "images_per_s", "runner"}

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


def host(tree):
    """The tree on the host, PRNG keys as their raw data."""

    def to_host(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.asarray(leaf)

    return jax.tree.map(to_host, tree)


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


def without_timings(history):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in history["epochs"]]


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


def test_a_bit_flip_is_caught_by_the_digest_where_orbax_alone_sees_nothing(tmp_path):
    tree = {"w": jnp.arange(4096, dtype=jnp.float32)}
    manager = CheckpointManager(tmp_path)
    manager.save(1, tree)
    damage(tmp_path, 1, "flip a bit in an array file")
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


# --------------------------------------------------------------------------------------- fit


def run(**overrides):
    arguments = {
        "epochs": 3, "batch_size": BATCH, "seed": 0, "runner": "loop", "progress": False,
    } | overrides  # fmt: skip
    return fit(MODEL, OPTIMIZER, TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS, **arguments)


@pytest.fixture(scope="module")
def reference():
    state, history = run()
    return state, history


def test_an_epoch_run_in_parts_equals_one_run():
    train_step = make_train_step(MODEL, OPTIMIZER)
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), jnp.asarray(TRAIN_IMAGES[:1]))
    images, labels = jnp.asarray(TRAIN_IMAGES), jnp.asarray(TRAIN_LABELS)
    indices = epoch_indices(jax.random.key(1), 1, len(images), BATCH)
    for name in ("loop", "scan"):
        runner = compile_epoch_runner(train_step, name, state, images, labels, indices)
        whole = run_epoch(runner, jax.tree.map(jnp.copy, state), images, labels, indices)
        parts, totals, start = jax.tree.map(jnp.copy, state), None, 0
        for stop in (3, 5, STEPS):
            parts, totals = run_epoch(
                runner, parts, images, labels, indices, start=start, stop=stop, totals=totals
            )
            start = stop
        assert_bits_equal((parts, totals), whole)
    with pytest.raises(ValueError, match="totals"):
        run_epoch(runner, state, images, labels, indices, start=2)
    with pytest.raises(ValueError, match="start and stop"):
        run_epoch(runner, state, images, labels, indices, start=3, stop=2, totals=zero_totals())


@pytest.mark.parametrize(
    ("every_steps", "every_epochs", "expected"),
    [
        (3, None, [3, 6, 9, 12, 15, 18, 21, 24]),  # and the last epoch's end, 24
        (None, 2, [16, 24]),  # epoch 2, and the last
        (5, 1, [5, 8, 10, 15, 16, 20, 24]),
        (None, None, [24]),
    ],
)
def test_cadence(tmp_path, reference, every_steps, every_epochs, expected):
    state, history = run(
        checkpoint_dir=tmp_path,
        checkpoint_every_steps=every_steps,
        checkpoint_every_epochs=every_epochs,
        keep_checkpoints=100,
    )
    manager = CheckpointManager(tmp_path)
    assert manager.steps() == expected
    assert_bits_equal(state, reference[0])  # checkpointing changes nothing
    assert without_timings(history) == without_timings(reference[1])
    like = (state, zero_totals())
    last = manager.restore(like)
    assert_bits_equal(last.tree[0], state)
    assert last.metadata["history"] == json.loads(json.dumps(history["epochs"]))
    assert last.metadata["epoch"] == 3 and last.metadata["step"] == 3 * STEPS
    assert last.metadata["config"] == {
        "seed": 0, "batch_size": BATCH, "train_examples": len(TRAIN_IMAGES),
        "skip_nonfinite": True,
    }  # fmt: skip
    assert last.metadata["extra"] == {}
    if every_steps == 5:
        middle = manager.restore(like, step=10)  # epoch 2, 2 of its steps done
        assert middle.metadata["epoch"] == 1 and len(middle.metadata["history"]) == 1
        assert int(middle.tree[1]["steps"]) == 2


@pytest.mark.parametrize("resume_from", [3, 8, 21])  # inside epoch 1, at its end, inside epoch 3
def test_resuming_in_process_equals_the_uninterrupted_run(tmp_path, reference, resume_from):
    run(checkpoint_dir=tmp_path, checkpoint_every_steps=3, keep_checkpoints=100)
    manager = CheckpointManager(tmp_path)
    for step in manager.steps():
        if step > resume_from:
            manager.delete(step)
    out_dir = tmp_path / "out"
    state, history = run(
        checkpoint_dir=tmp_path, checkpoint_every_steps=3, resume=True, out_dir=out_dir
    )
    assert_bits_equal(state, reference[0])
    assert without_timings(history) == without_timings(reference[1])
    written = json.loads((out_dir / METRICS_FILE).read_text())
    assert [r["epoch"] for r in written["epochs"]] == [1, 2, 3]
    assert manager.steps() == [18, 21, 24]  # keep_checkpoints=3 from here on


def test_resume_skips_a_damaged_checkpoint_and_deletes_it(tmp_path, reference):
    run(checkpoint_dir=tmp_path, checkpoint_every_steps=5, epochs=2, keep_checkpoints=100)
    manager = CheckpointManager(tmp_path)
    assert manager.steps() == [5, 8, 10, 15, 16]
    damage(tmp_path, 16, "truncate an array file")
    with pytest.warns(UserWarning, match=f"{tmp_path}/16 is damaged"):
        state, history = run(checkpoint_dir=tmp_path, checkpoint_every_steps=5, resume=True)
    assert_bits_equal(state, reference[0])
    assert without_timings(history) == without_timings(reference[1])
    assert 16 in manager.steps()  # saved again, whole
    assert_bits_equal(manager.restore((state, zero_totals())).tree[0], state)


def test_resume_without_checkpoints_starts_afresh_and_a_finished_run_stays(tmp_path, reference):
    state, history = run(checkpoint_dir=tmp_path, resume=True)
    assert_bits_equal(state, reference[0])
    steps = CheckpointManager(tmp_path).steps()
    again, again_history = run(checkpoint_dir=tmp_path, resume=True)
    assert_bits_equal(again, reference[0])
    assert again_history["epochs"] == history["epochs"]  # read back, timings included
    assert CheckpointManager(tmp_path).steps() == steps


def test_resume_continues_a_run_that_began_from_a_given_state(tmp_path, reference):
    first, _ = run(epochs=1)
    run(epochs=2, state=first, checkpoint_dir=tmp_path, checkpoint_every_steps=3)
    manager = CheckpointManager(tmp_path)
    for step in manager.steps():
        if step > 12:
            manager.delete(step)
    first, _ = run(epochs=1)
    # The same call plus resume: the given state is replaced by the checkpoint's, and the run
    # still ends at its first epoch (1) plus epochs (2).
    state, history = run(epochs=2, state=first, checkpoint_dir=tmp_path, resume=True)
    assert_bits_equal(state, reference[0])
    assert [r["epoch"] for r in history["epochs"]] == [2, 3]
    assert without_timings(history) == without_timings(reference[1])[1:]


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"resume": True}, "checkpoint_dir"),
        ({"checkpoint_every_steps": 0, "checkpoint_dir": "x"}, "checkpoint_every_steps"),
        ({"checkpoint_every_epochs": 0, "checkpoint_dir": "x"}, "checkpoint_every_epochs"),
        ({"keep_checkpoints": 0, "checkpoint_dir": "x"}, "keep_checkpoints"),
        ({"resume": 1, "checkpoint_dir": "x"}, "resume"),
        ({"checkpoint_dir": 3}, "checkpoint_dir"),
    ],
)
def test_bad_fit_arguments_are_refused(tmp_path, overrides, name):
    with pytest.raises(ValueError, match=name):
        run(**overrides)
    assert not os.path.exists("x")


def test_a_used_directory_or_another_run_is_refused(tmp_path):
    run(epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="already holds the checkpoints of steps \\[8\\]"):
        run(epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="seed=0, this one has seed=1"):
        run(epochs=1, checkpoint_dir=tmp_path, resume=True, seed=1)


# ------------------------------------------------------------------------- kill and resume

# Runs `jaxtricks train` with the checksum table patched for the fake data (argv[1]).
TRAIN_SCRIPT = """
import json, sys
from jaxtricks.data import datasets
datasets.SHA256 = {**datasets.SHA256, "mnist": json.loads(sys.argv[1])}
from jaxtricks.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    """IDX files of 256 train and 64 test 28×28 images of two classes, and their checksums."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    arrays = []
    for n in (256, 64):
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
        "loop", "--seed", "5", *extra,
    ]  # fmt: skip


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
    optimizer = train_cli.build_optimizer(args, train_cli.build_schedule(args, 256 // 32))
    model = train_cli.build_model(args)
    state = create_train_state(model, optimizer, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    return CheckpointManager(directory).restore((state, zero_totals()))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--checkpoint-every-steps", "0"], "--checkpoint-every-steps must be >= 1, got 0"),
        (["--checkpoint-every-epochs", "-1"], "--checkpoint-every-epochs must be >= 0, got -1"),
        (["--keep-checkpoints", "0"], "--keep-checkpoints must be >= 1, got 0"),
    ],
)
def test_bad_checkpoint_flags_fail_with_a_message(fake_mnist, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(train_flags(fake_mnist[0], tmp_path, 1, *flags))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_checkpoints_into_out_and_resumes(fake_mnist, tmp_path, monkeypatch):
    data, table = fake_mnist
    monkeypatch.setattr(datasets, "SHA256", {**datasets.SHA256, "mnist": table})
    flags = train_flags(data, tmp_path, 2, "--train-examples", "64", "--keep-checkpoints", "1")
    assert main(flags) == 0
    assert CheckpointManager(tmp_path / "checkpoints").steps() == [4]  # 2 epochs of 2 steps
    first = json.loads((tmp_path / METRICS_FILE).read_text())["epochs"]
    with pytest.raises(SystemExit):  # the run is there: continue it or start elsewhere
        main(flags)
    assert main([*flags, "--resume"]) == 0  # finished already: nothing left to train
    assert json.loads((tmp_path / METRICS_FILE).read_text())["epochs"] == first


EVERY_4_STEPS = ("--checkpoint-every-steps", "4")


def newest_finished(checkpoints):
    return max((int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()), default=-1)


@pytest.mark.slow  # three processes that import JAX and compile: 40 s to 2 min on 2 cores
def test_a_killed_training_resumes_to_the_same_bits(fake_mnist, tmp_path, monkeypatch):
    """Killed with SIGKILL twice, each time soon after a new checkpoint (the second time at a
    later moment, which may fall in training, evaluation or a save), then resumed to the end:
    the final state and the history equal an uninterrupted run's, bit for bit."""
    data, table = fake_mnist
    epochs = 8  # 64 steps, a checkpoint every 4
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
        assert newest_finished(checkpoints) < epochs * 8
        assert not (tmp_path / "killed" / METRICS_FILE).exists()

    resumed = start_training(table, [*killed_flags, "--resume"], log)
    assert resumed.wait(timeout=300) == 0, log.read_text()
    expected = final_checkpoint(tmp_path / "reference" / "checkpoints", reference_flags)
    actual = final_checkpoint(checkpoints, killed_flags)
    assert actual.step == expected.step == epochs * 8
    assert_bits_equal(actual.tree, expected.tree)

    def epochs_of(folder):
        history = json.loads((folder / METRICS_FILE).read_text())
        return without_timings({"epochs": [
            {k: v for k, v in r.items() if k != "elapsed_s"} for r in history["epochs"]
        ]})  # fmt: skip

    assert epochs_of(tmp_path / "killed") == epochs_of(tmp_path / "reference")
