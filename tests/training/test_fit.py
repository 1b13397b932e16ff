"""Tests for jaxtricks.training.fit: history, metrics.json, determinism, resuming, validation."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from training_toys import TinyNet, toy_problem

from jaxtricks.training import epochs
from jaxtricks.training.epochs import RUNNERS, epoch_indices
from jaxtricks.training.fit import METRICS_FILE, fit
from jaxtricks.training.state import create_train_state

MODEL = TinyNet()
OPTIMIZER = optax.sgd(0.05, momentum=0.9)
TRAIN_IMAGES, TRAIN_LABELS = toy_problem(seed=2, num_examples=260)  # 8 steps of 32, 4 dropped
TEST_IMAGES, TEST_LABELS = toy_problem(seed=3, num_examples=70)
BATCH = 32
STEPS = len(TRAIN_IMAGES) // BATCH

HEADER_KEYS = {
    "seed", "batch_size", "epochs", "train_examples", "test_examples", "steps_per_epoch",
    "backend", "device_kind", "device_count", "jax_version", "xla_flags", "runner_requested",
    "runner", "runner_step_time_s", "runner_cached", "compile_time_s", "skip_nonfinite",
    "data_parallel_devices", "shard_optimizer_state",
}  # fmt: skip
EPOCH_KEYS = {
    "epoch", "step", "train_loss", "train_accuracy", "train_grad_norm", "test_loss",
    "test_accuracy", "learning_rate", "epoch_time_s", "eval_time_s", "images_per_s",
    "skipped_steps", "runner",
}  # fmt: skip
# What may differ between two runs of the same training: timings and the runner that was timed.
TIMING_KEYS = {
    "runner_requested", "runner", "runner_step_time_s", "runner_cached", "compile_time_s",
    "epoch_time_s", "eval_time_s", "images_per_s",
}  # fmt: skip


def run(**overrides):
    arguments = {
        "epochs": 2, "batch_size": BATCH, "seed": 0, "runner": "loop", "progress": False,
    } | overrides  # fmt: skip
    return fit(MODEL, OPTIMIZER, TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS, **arguments)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("reference")
    state, history = run(out_dir=out_dir)
    return host(state), history, out_dir


def host(tree):
    """The tree on the host, PRNG keys as their raw integer data."""

    def to_host(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.asarray(leaf)

    return jax.tree.map(to_host, tree)


def assert_trees_equal(actual, expected):
    actual_leaves, actual_def = jax.tree.flatten(actual)
    expected_leaves, expected_def = jax.tree.flatten(expected)
    assert actual_def == expected_def
    for a, e in zip(actual_leaves, expected_leaves, strict=True):
        np.testing.assert_array_equal(a, e)


def without_timings(history):
    return {
        "header": {k: v for k, v in history["header"].items() if k not in TIMING_KEYS},
        "epochs": [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history["epochs"]],
    }


def test_history_has_every_key_and_learns(reference):
    state, history, _ = reference
    assert set(history["header"]) == HEADER_KEYS
    assert history["header"]["seed"] == 0 and history["header"]["steps_per_epoch"] == STEPS
    assert history["header"]["compile_time_s"] > 0
    assert [record["epoch"] for record in history["epochs"]] == [1, 2]
    for record in history["epochs"]:
        assert set(record) == EPOCH_KEYS
        assert record["skipped_steps"] == 0 and record["runner"] == "loop"
        assert record["learning_rate"] is None
        assert record["images_per_s"] > 0 and record["epoch_time_s"] > 0
    first, last = history["epochs"]
    assert int(state.step) == last["step"] == 2 * STEPS
    assert last["train_loss"] < first["train_loss"]
    assert last["test_accuracy"] > 0.9


def test_metrics_json_is_the_history(reference):
    _, history, out_dir = reference
    written = json.loads((out_dir / METRICS_FILE).read_text())
    assert written == json.loads(json.dumps(history))
    assert [path.name for path in out_dir.iterdir()] == [METRICS_FILE]  # no temporary left


@pytest.mark.parametrize("runner", ["loop", "scan", "auto"])
def test_same_seed_gives_bit_identical_training_with_every_runner(reference, runner, monkeypatch):
    monkeypatch.setattr(epochs, "_CHOICES", {})
    expected_state, expected_history, _ = reference
    state, history = run(runner=runner)
    assert_trees_equal(host(state), expected_state)
    assert without_timings(history) == without_timings(expected_history)
    assert history["header"]["runner_requested"] == runner
    assert history["header"]["runner"] in RUNNERS
    if runner == "auto":
        times = history["header"]["runner_step_time_s"]
        assert set(times) == set(RUNNERS) and all(value > 0 for value in times.values())
        assert history["header"]["runner"] == min(times, key=times.get)
        assert history["header"]["runner_cached"] is False


def test_other_seed_gives_other_training(reference):
    expected_state, expected_history, _ = reference
    state, history = run(seed=1)
    kernel = host(state.params["Dense_0"]["kernel"])
    assert not np.array_equal(kernel, expected_state.params["Dense_0"]["kernel"])
    assert history["epochs"][0]["train_loss"] != expected_history["epochs"][0]["train_loss"]


def test_resuming_from_a_state_continues_the_same_run(reference):
    expected_state, expected_history, _ = reference
    state, first = run(epochs=1)
    state, second = run(epochs=1, state=state)
    assert_trees_equal(host(state), expected_state)
    assert [record["epoch"] for record in second["epochs"]] == [2]
    assert without_timings(first)["epochs"] + without_timings(second)["epochs"] == (
        without_timings(expected_history)["epochs"]
    )


def test_nonfinite_examples_are_skipped_and_counted():
    _, data_key = jax.random.split(jax.random.key(0))
    order = [np.asarray(epoch_indices(data_key, e, len(TRAIN_IMAGES), BATCH)) for e in (1, 2, 3)]
    poisoned = int(order[0][2, 5])
    images = TRAIN_IMAGES.copy()
    images[poisoned] = np.nan
    state, history = fit(
        MODEL, OPTIMIZER, images, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS,
        epochs=3, batch_size=BATCH, runner="loop", progress=False,
    )  # fmt: skip
    expected = [int(poisoned in indices) for indices in order]
    assert [record["skipped_steps"] for record in history["epochs"]] == expected
    assert all(np.isfinite(record["train_loss"]) for record in history["epochs"])
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(host(state.params)))
    assert history["epochs"][-1]["test_accuracy"] > 0.9


def test_schedule_logging_callbacks_and_progress_bar(capsys):
    schedule = optax.linear_schedule(0.05, 0.01, transition_steps=3 * STEPS)
    calls = []

    def record_calls(state, record):
        calls.append((int(state.step), record["epoch"]))

    def stop_after_two(state, record):
        return record["epoch"] == 2

    _, history = fit(
        MODEL, optax.sgd(schedule, momentum=0.9),
        TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS,
        epochs=3, batch_size=BATCH, runner="loop", learning_rate=schedule, progress=True,
        callbacks=[stop_after_two, record_calls], chunk_steps=3,
    )  # fmt: skip
    assert calls == [(STEPS, 1), (2 * STEPS, 2)]
    assert len(history["epochs"]) == 2
    for record in history["epochs"]:
        assert record["learning_rate"] == pytest.approx(float(schedule(record["step"] - 1)))
    assert history["epochs"][0]["learning_rate"] > history["epochs"][1]["learning_rate"]
    err = capsys.readouterr().err
    assert "epoch 1/3" in err and "epoch 2/3" in err and "test_acc" in err


def test_progress_without_tqdm_fails_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match="progress=False"):
        run(progress=True)


def test_a_state_in_the_middle_of_an_epoch_is_refused():
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), jnp.asarray(TRAIN_IMAGES[:2]))
    state = state._replace(step=jnp.array(STEPS // 2, jnp.int32))
    with pytest.raises(ValueError, match="state"):
        run(state=state)


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -3}, "batch_size"),
        ({"batch_size": len(TRAIN_IMAGES) + 1}, "batch_size"),
        ({"batch_size": 8.0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"seed": -1}, "seed"),
        ({"runner": "unrolled"}, "runner"),
        ({"chunk_steps": 0}, "chunk_steps"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"callbacks": [3]}, "callbacks"),
        ({"skip_nonfinite": None}, "skip_nonfinite"),
        ({"state": {"params": {}}}, "state"),
        ({"train_labels": TRAIN_LABELS[:-1]}, "train_labels"),
        ({"test_labels": TEST_LABELS[:-1]}, "test_labels"),
        ({"train_labels": TRAIN_LABELS.astype(np.float32)}, "train_labels"),
        ({"test_labels": TEST_LABELS.astype(np.float32)}, "test_labels"),
        ({"train_images": TRAIN_IMAGES[:0], "train_labels": TRAIN_LABELS[:0]}, "train_images"),
        ({"test_images": TEST_IMAGES[:0], "test_labels": TEST_LABELS[:0]}, "test_images"),
        ({"train_images": (TRAIN_IMAGES * 50).astype(np.uint8)}, "train_images"),
        ({"test_images": TEST_IMAGES[:, :4]}, "test_images"),
        ({"train_labels": TRAIN_LABELS + 3}, "train_labels"),
        ({"test_labels": TEST_LABELS - 1}, "test_labels"),
        ({"model": lambda x: x}, "model"),
        ({"optimizer": optax.sgd}, "optimizer"),
    ],
)
def test_bad_arguments_are_refused(overrides, name):
    arguments = {
        "model": MODEL, "optimizer": OPTIMIZER,
        "train_images": TRAIN_IMAGES, "train_labels": TRAIN_LABELS,
        "test_images": TEST_IMAGES, "test_labels": TEST_LABELS,
        "epochs": 1, "batch_size": BATCH, "runner": "loop", "progress": False,
    } | overrides  # fmt: skip
    with pytest.raises(ValueError, match=name):
        fit(**arguments)
